//! Produce: each partition's records are appended as they are (RecordBatch v2, the
//! client's compression kept), through the same path as the gRPC API.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};

use super::{KafkaService, storage_error_code};
use crate::partition::Acks;

impl KafkaService {
    /// `None` for acks=0, which gets no response.
    pub(super) async fn produce(&self, request: ProduceRequest) -> Option<ProduceResponse> {
        let acks = match request.acks {
            0 => Some(Acks::None),
            1 => Some(Acks::Leader),
            -1 => Some(Acks::All),
            _ => None,
        };
        // The partitions of one request are appended concurrently (each waits for its
        // own fsync under acks=all); a partition appears once per request, so the order
        // within a partition is the order of the requests.
        let mut topics = Vec::with_capacity(request.topic_data.len());
        for topic in request.topic_data {
            let name = topic.name.0.to_string();
            let mut partitions = Vec::with_capacity(topic.partition_data.len());
            for data in topic.partition_data {
                let index = data.index;
                let target = self.partition(&name, index);
                let metrics = self.metrics.clone();
                let topic = name.clone();
                let append = tokio::spawn(async move {
                    let mut response = PartitionProduceResponse::default();
                    response.index = index;
                    response.base_offset = -1;
                    let Some(acks) = acks else {
                        response.error_code = ResponseError::InvalidRequiredAcks.code();
                        return response;
                    };
                    let partition = match target {
                        Ok(partition) => partition,
                        Err(code) => {
                            response.error_code = code;
                            return response;
                        }
                    };
                    let Some(records) = data.records else {
                        response.error_code = ResponseError::CorruptMessage.code();
                        return response;
                    };
                    let bytes = records.len() as u64;
                    match partition.produce(records, acks).await {
                        Ok(produced) => {
                            let info = produced.info;
                            // A retried idempotent batch (written before) counts once.
                            if info.batches > 0 {
                                metrics.produced(
                                    &topic,
                                    bytes,
                                    info.last_offset - info.first_offset + 1,
                                );
                            }
                            response.base_offset = info.first_offset;
                            response.log_append_time_ms = info.log_append_time_ms.unwrap_or(-1);
                            response.log_start_offset = produced.log_start_offset;
                        }
                        Err(e) => {
                            let partition = index;
                            tracing::warn!(topic, partition, error = %e, "Kafka produce refused");
                            response.error_code = storage_error_code(&e);
                            response.error_message = Some(e.to_string().into());
                        }
                    }
                    response
                });
                partitions.push((index, append));
            }
            topics.push((topic.name, partitions));
        }
        let mut response = ProduceResponse::default();
        for (name, partitions) in topics {
            let mut topic = TopicProduceResponse::default();
            topic.name = name;
            for (index, append) in partitions {
                let partition = append.await.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "Kafka produce task failed");
                    let mut failed = PartitionProduceResponse::default();
                    failed.index = index;
                    failed.error_code = -1; // UNKNOWN_SERVER_ERROR
                    failed
                });
                topic.partition_responses.push(partition);
            }
            response.responses.push(topic);
        }
        (acks != Some(Acks::None)).then_some(response)
    }
}
