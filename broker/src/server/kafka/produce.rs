//! Produce: each partition's records are appended as they are (RecordBatch v2, the
//! client's compression kept), through the same path as the gRPC API. Under acks=all the
//! answer waits for the fsync while the connection goes on with its next requests
//! (answered in order), so a client's pipelined requests share group commits.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};

use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;

use super::{KafkaService, storage_error_code};
use crate::partition::{Acks, DurableWait};
use crate::storage::StorageError;

/// A produce request's answer once its records are appended: under acks=all it resolves
/// once they are also fsync'd, so the connection handles its next requests meanwhile and
/// writes this answer in its turn.
pub(super) type ProduceAnswer = Pin<Box<dyn Future<Output = ProduceResponse> + Send>>;

/// One partition's part of a request, appended.
struct Appended {
    response: PartitionProduceResponse,
    /// acks=all: the wait for the records to be fsync'd.
    durable: Option<DurableWait>,
    /// For the produced metrics once acknowledged: bytes and records (none for a retried
    /// idempotent batch, which was written before).
    produced: Option<(u64, i64)>,
}

impl KafkaService {
    /// Appends the request's records and returns what answers it; `None` for acks=0,
    /// which gets no response.
    ///
    /// The records are slices of the request's frame, appended as they are: the log
    /// writes each batch's patched header beside them, so they are never copied.
    pub(super) async fn produce(&self, request: ProduceRequest) -> Option<ProduceAnswer> {
        let (acks, topic_data) = take_apart(request);
        let acks = match acks {
            0 => Some(Acks::None),
            1 => Some(Acks::Leader),
            -1 => Some(Acks::All),
            _ => None,
        };
        // The partitions of one request are appended concurrently; a partition appears
        // once per request, and this returns once every append is done, so the order
        // within a partition is the order of the requests.
        let mut topics = Vec::with_capacity(topic_data.len());
        for (topic_name, name, partition_data) in topic_data {
            let mut partitions = Vec::with_capacity(partition_data.len());
            for (index, records) in partition_data {
                let target = self.partition(&name, index);
                let topic = name.clone();
                let append = tokio::spawn(async move {
                    let mut response = PartitionProduceResponse::default();
                    response.index = index;
                    response.base_offset = -1;
                    let refused = |response: PartitionProduceResponse| Appended {
                        response,
                        durable: None,
                        produced: None,
                    };
                    let Some(acks) = acks else {
                        response.error_code = ResponseError::InvalidRequiredAcks.code();
                        return refused(response);
                    };
                    let partition = match target {
                        Ok(partition) => partition,
                        Err(code) => {
                            response.error_code = code;
                            return refused(response);
                        }
                    };
                    let Some(records) = records else {
                        response.error_code = ResponseError::CorruptMessage.code();
                        return refused(response);
                    };
                    let bytes = records.len() as u64;
                    match partition.produce_pipelined(records, acks).await {
                        Ok((produced, durable)) => {
                            let info = produced.info;
                            response.base_offset = info.first_offset;
                            response.log_append_time_ms = info.log_append_time_ms.unwrap_or(-1);
                            response.log_start_offset = produced.log_start_offset;
                            let records = info.last_offset - info.first_offset + 1;
                            Appended {
                                response,
                                durable,
                                produced: (info.batches > 0).then_some((bytes, records)),
                            }
                        }
                        Err(e) => {
                            let partition = index;
                            tracing::warn!(topic, partition, error = %e, "Kafka produce refused");
                            refuse(&mut response, &e);
                            refused(response)
                        }
                    }
                });
                partitions.push((index, append));
            }
            topics.push((topic_name, name, partitions));
        }
        let mut appended = Vec::with_capacity(topics.len());
        for (name, topic, partitions) in topics {
            let mut done = Vec::with_capacity(partitions.len());
            for (index, append) in partitions {
                done.push(append.await.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "Kafka produce task failed");
                    let mut failed = PartitionProduceResponse::default();
                    failed.index = index;
                    failed.base_offset = -1;
                    failed.error_code = -1; // UNKNOWN_SERVER_ERROR
                    Appended {
                        response: failed,
                        durable: None,
                        produced: None,
                    }
                }));
            }
            appended.push((name, topic, done));
        }
        let metrics = self.metrics.clone();
        if acks == Some(Acks::None) {
            // No answer, and nothing to wait for: counted now.
            for (_, topic, partitions) in &appended {
                for (bytes, records) in partitions.iter().filter_map(|p| p.produced) {
                    metrics.produced(topic, bytes, records);
                }
            }
            return None;
        }
        Some(Box::pin(async move {
            let mut response = ProduceResponse::default();
            for (name, topic_name, partitions) in appended {
                let mut topic = TopicProduceResponse::default();
                topic.name = name;
                for mut part in partitions {
                    if let Some(durable) = part.durable.take()
                        && let Err(e) = durable.await
                    {
                        let partition = part.response.index;
                        tracing::warn!(topic = topic_name, partition, error = %e,
                            "Kafka produce appended but not made durable");
                        refuse(&mut part.response, &e);
                        part.produced = None;
                    }
                    if let Some((bytes, records)) = part.produced {
                        metrics.produced(&topic_name, bytes, records);
                    }
                    topic.partition_responses.push(part.response);
                }
                response.responses.push(topic);
            }
            response
        }))
    }
}

/// A topic's name, as the answer carries it and as a string, and its partitions' records.
type TopicRecords = (TopicName, String, Vec<(i32, Option<Bytes>)>);

/// The request's acks and records, with nothing else of it kept.
fn take_apart(request: ProduceRequest) -> (i16, Vec<TopicRecords>) {
    let topics = request.topic_data.into_iter().map(|topic| {
        let name = topic.name.0.to_string();
        let partitions = topic.partition_data.into_iter();
        (
            topic.name,
            name,
            partitions.map(|data| (data.index, data.records)).collect(),
        )
    });
    (request.acks, topics.collect())
}

/// A partition's answer refused with the storage error `e`.
fn refuse(response: &mut PartitionProduceResponse, e: &StorageError) {
    response.base_offset = -1;
    response.log_append_time_ms = -1;
    response.error_code = storage_error_code(e);
    response.error_message = Some(e.to_string().into());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::kafka::decode;
    use bytes::BytesMut;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, TransactionalId};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    /// A produce request's frame as a client sends it (without the size prefix), with a
    /// client id, a transactional id and a topic name.
    fn frame(partitions: &[(i32, &[u8])]) -> Bytes {
        let version = 9;
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::Produce as i16)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_static_str("rdkafka")));
        let data = partitions.iter().map(|&(index, records)| {
            PartitionProduceData::default()
                .with_index(index)
                .with_records(Some(Bytes::copy_from_slice(records)))
        });
        let request = ProduceRequest::default()
            .with_acks(1)
            .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str("tx"))))
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str("orders")))
                    .with_partition_data(data.collect()),
            ]);
        let mut frame = BytesMut::new();
        let header_version = ApiKey::Produce.request_header_version(version);
        header.encode(&mut frame, header_version).unwrap();
        request.encode(&mut frame, version).unwrap();
        frame.freeze()
    }

    #[test]
    fn a_request_is_taken_apart_into_its_acks_topics_and_records() {
        let request = frame(&[(0, b"first"), (1, b"second")]);
        let (header, RequestKind::Produce(request)) = decode(request, ApiKey::Produce, 9).unwrap()
        else {
            panic!("not a produce request");
        };
        assert_eq!(header.client_id.as_deref(), Some("rdkafka"));
        let (acks, topics) = take_apart(request);
        assert_eq!(acks, 1);
        let [(name, topic, partitions)] = <[_; 1]>::try_from(topics).unwrap();
        assert_eq!((&*name.0, topic.as_str()), ("orders", "orders"));
        let partitions: Vec<(i32, &[u8])> = partitions
            .iter()
            .map(|(index, records)| (*index, records.as_deref().unwrap()))
            .collect();
        assert_eq!(partitions, [(0, &b"first"[..]), (1, &b"second"[..])]);
    }
}
