//! InitProducerId: hands idempotent producers their id and epoch. Ids are never handed
//! out twice, across restarts too: they come from blocks of [`BLOCK`] ids whose end is
//! made durable (`producer_ids.checkpoint` in the data directory) before the first id of
//! a block is used. A producer that asks again with its id and epoch (KIP-360, after a
//! sequence error) keeps its id with the next epoch. Transactions are not supported: a
//! transactional id is refused.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use super::KafkaService;
use crate::storage::{StorageError, checkpoint};

/// Ids reserved per durable write.
pub const BLOCK: i64 = 1000;

/// The producer id allocator. See the module docs.
#[derive(Debug)]
pub struct ProducerIds {
    path: PathBuf,
    /// (next id, end of the durable block).
    state: Mutex<(i64, i64)>,
}

impl ProducerIds {
    /// Opens the allocator of `data_dir`: ids continue after every block handed out
    /// before.
    pub fn open(data_dir: &Path) -> Result<ProducerIds, StorageError> {
        let path = data_dir.join("producer_ids.checkpoint");
        let next = match checkpoint::read(&path)? {
            Some(entries) => entries
                .iter()
                .find(|(k, _)| k == "next_block")
                .and_then(|(_, v)| v.parse::<i64>().ok())
                .ok_or_else(|| StorageError::CorruptCheckpoint {
                    path: path.clone(),
                    reason: "no next_block".into(),
                })?,
            None => 0,
        };
        Ok(ProducerIds {
            path,
            state: Mutex::new((next, next)),
        })
    }

    /// A new producer id. Blocking (fsyncs once per block).
    pub fn next(&self) -> Result<i64, StorageError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (next, end) = *state;
        if next >= end {
            let new_end = next + BLOCK;
            checkpoint::write(&self.path, &[("next_block", new_end.to_string())])?;
            state.1 = new_end;
        }
        state.0 = next + 1;
        Ok(next)
    }
}

impl KafkaService {
    pub(super) async fn init_producer_id(
        &self,
        request: InitProducerIdRequest,
    ) -> InitProducerIdResponse {
        let mut response = InitProducerIdResponse::default();
        response.producer_id = ProducerId(-1);
        response.producer_epoch = -1;
        if request
            .transactional_id
            .as_ref()
            .is_some_and(|t| t.is_empty())
        {
            response.error_code = ResponseError::InvalidRequest.code();
            return response;
        }
        if request.transactional_id.is_some() {
            tracing::info!(
                "InitProducerId with a transactional id: transactions are not supported"
            );
            response.error_code = ResponseError::TransactionalIdAuthorizationFailed.code();
            return response;
        }
        let (id, epoch) = (request.producer_id.0, request.producer_epoch);
        if id >= 0 && (0..i16::MAX - 1).contains(&epoch) {
            // An idempotent producer bumping its epoch after a sequence error.
            response.producer_id = ProducerId(id);
            response.producer_epoch = epoch + 1;
            return response;
        }
        let ids = self.producer_ids.clone();
        match tokio::task::spawn_blocking(move || ids.next()).await {
            Ok(Ok(id)) => {
                response.producer_id = ProducerId(id);
                response.producer_epoch = 0;
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot hand out a producer id");
                response.error_code = super::storage_error_code(&e);
            }
            Err(_) => response.error_code = -1,
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_never_handed_out_twice_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let ids = ProducerIds::open(dir.path()).unwrap();
        let first: Vec<i64> = (0..3).map(|_| ids.next().unwrap()).collect();
        assert_eq!(first, [0, 1, 2]);
        drop(ids);
        let ids = ProducerIds::open(dir.path()).unwrap();
        let after = ids.next().unwrap();
        assert_eq!(after, BLOCK, "a reopen starts after the reserved block");
        for _ in 0..BLOCK {
            ids.next().unwrap();
        }
        drop(ids);
        assert_eq!(
            ProducerIds::open(dir.path()).unwrap().next().unwrap(),
            3 * BLOCK
        );
    }
}
