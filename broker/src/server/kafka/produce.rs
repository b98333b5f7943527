//! Produce: each partition's records are appended as they are (RecordBatch v2, the
//! client's compression kept), through the same path as the gRPC API. Under acks=all the
//! answer waits for the fsync while the connection goes on with its next requests
//! (answered in order), so a client's pipelined requests share group commits.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};

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
    pub(super) async fn produce(&self, request: ProduceRequest) -> Option<ProduceAnswer> {
        let acks = match request.acks {
            0 => Some(Acks::None),
            1 => Some(Acks::Leader),
            -1 => Some(Acks::All),
            _ => None,
        };
        // The partitions of one request are appended concurrently; a partition appears
        // once per request, and this returns once every append is done, so the order
        // within a partition is the order of the requests.
        let mut topics = Vec::with_capacity(request.topic_data.len());
        for topic in request.topic_data {
            let name = topic.name.0.to_string();
            let mut partitions = Vec::with_capacity(topic.partition_data.len());
            for data in topic.partition_data {
                let index = data.index;
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
                    let Some(records) = data.records else {
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
            topics.push((topic.name, name, partitions));
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

/// A partition's answer refused with the storage error `e`.
fn refuse(response: &mut PartitionProduceResponse, e: &StorageError) {
    response.base_offset = -1;
    response.log_append_time_ms = -1;
    response.error_code = storage_error_code(e);
    response.error_message = Some(e.to_string().into());
}
