//! Fetch: whole batches straight from the log as `Bytes` (slices of the segment maps
//! when sealed), by topic name; a long poll over every partition of the request.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse};
use tokio::task::JoinSet;

use super::{KafkaService, storage_error_code};
use crate::partition::Partition;
use crate::server::grpc::{FETCH_BYTES_MAX, FETCH_WAIT_MS_MAX};
use crate::server::stopped;
use crate::storage::StorageError;

/// READ_COMMITTED: aborted transactions are listed (none yet: there are no
/// transactions), and reads stop at the last stable offset (the high watermark).
const READ_COMMITTED: i8 = 1;

/// One partition of a fetch: where it reads from, or why it cannot.
struct Wanted {
    partition: Result<Arc<Partition>, i16>,
    index: i32,
    offset: i64,
    max_bytes: usize,
}

impl KafkaService {
    pub(super) async fn fetch(&self, request: FetchRequest) -> FetchResponse {
        let max_bytes = request.max_bytes.clamp(1, FETCH_BYTES_MAX as i32) as usize;
        let min_bytes = request.min_bytes.max(0) as usize;
        let wait_ms = request.max_wait_ms.clamp(0, FETCH_WAIT_MS_MAX as i32) as u64;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
        let read_committed = request.isolation_level == READ_COMMITTED;
        let wanted: Vec<(kafka_protocol::messages::TopicName, Vec<Wanted>)> = request
            .topics
            .into_iter()
            .map(|topic| {
                let name = topic.topic.0.to_string();
                let partitions = topic
                    .partitions
                    .into_iter()
                    .map(|p| Wanted {
                        partition: self.partition(&name, p.partition),
                        index: p.partition,
                        offset: p.fetch_offset,
                        max_bytes: p.partition_max_bytes.clamp(0, FETCH_BYTES_MAX as i32) as usize,
                    })
                    .collect();
                (topic.topic, partitions)
            })
            .collect();
        let mut changes: Vec<_> = wanted
            .iter()
            .flat_map(|(_, partitions)| partitions)
            .filter_map(|w| w.partition.as_ref().ok())
            .map(|p| p.high_watermark_changes())
            .collect();
        let mut shutdown = self.shutdown.clone();
        loop {
            for change in &mut changes {
                change.mark_unchanged();
            }
            let (response, bytes, errors) = self.read_all(&wanted, max_bytes, read_committed).await;
            // min_bytes 0 answers at once, as in Kafka.
            let done = (min_bytes == 0 || bytes >= min_bytes)
                || errors
                || tokio::time::Instant::now() >= deadline
                || *shutdown.borrow();
            if done {
                for topic in &response.responses {
                    let bytes = topic
                        .partitions
                        .iter()
                        .map(|p| p.records.as_ref().map_or(0, Bytes::len) as u64)
                        .sum();
                    self.metrics.fetched(&topic.topic.0, bytes);
                }
                return response;
            }
            // Wait for an append to any of the partitions (or a deletion), the deadline,
            // or shutdown; then read again.
            let mut woken = JoinSet::new();
            for change in &changes {
                let mut change = change.clone();
                woken.spawn(async move {
                    let _ = change.changed().await;
                });
            }
            tokio::select! {
                // No partition to wait on (none of them exists): only the deadline.
                _ = woken.join_next(), if !woken.is_empty() => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = stopped(&mut shutdown) => {}
            }
        }
    }

    /// One pass over the partitions: the response, the record bytes in it, and whether
    /// a partition answered with an error (which ends the long poll, as in Kafka).
    async fn read_all(
        &self,
        wanted: &[(kafka_protocol::messages::TopicName, Vec<Wanted>)],
        max_bytes: usize,
        read_committed: bool,
    ) -> (FetchResponse, usize, bool) {
        let mut response = FetchResponse::default();
        let mut total = 0usize;
        let mut errors = false;
        for (name, partitions) in wanted {
            let mut topic = FetchableTopicResponse::default();
            topic.topic = name.clone();
            for w in partitions {
                let mut data = PartitionData::default();
                data.partition_index = w.index;
                data.aborted_transactions = read_committed.then(Vec::new);
                data.records = Some(Bytes::new());
                match &w.partition {
                    Err(code) => {
                        data.error_code = *code;
                        errors = true;
                    }
                    Ok(partition) => {
                        // KIP-74: the first non-empty partition returns at least one
                        // whole batch, whatever the limits; the others only what fits.
                        let budget = w.max_bytes.min(max_bytes.saturating_sub(total));
                        let read = if total > 0 && budget == 0 {
                            partition.read_async(w.offset, 1).await.map(|mut r| {
                                r.records = Bytes::new();
                                r
                            })
                        } else {
                            partition.read_async(w.offset, budget.max(1)).await
                        };
                        match read {
                            Ok(mut read) => {
                                if total > 0 && read.records.len() > budget {
                                    read.records = Bytes::new();
                                }
                                total += read.records.len();
                                data.high_watermark = read.high_watermark;
                                data.last_stable_offset = read.high_watermark;
                                data.log_start_offset = read.log_start_offset;
                                data.records = Some(read.records);
                            }
                            Err(e) => {
                                // No log lock here (an async worker): the watermark from
                                // its watch, the start offset from the error when it has it.
                                data.high_watermark = partition.high_watermark();
                                data.last_stable_offset = partition.high_watermark();
                                if let StorageError::OffsetOutOfRange {
                                    log_start_offset, ..
                                } = e
                                {
                                    data.log_start_offset = log_start_offset;
                                }
                                data.error_code = storage_error_code(&e);
                                errors = true;
                            }
                        }
                    }
                }
                topic.partitions.push(data);
            }
            response.responses.push(topic);
        }
        (response, total, errors)
    }
}
