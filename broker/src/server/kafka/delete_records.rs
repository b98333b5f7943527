//! DeleteRecords (KIP-107): moves each partition's log start offset up to the requested
//! offset, as the gRPC API does, and answers the new start (the low watermark).
//!
//! Offset -1 means the high watermark; an offset below the log start changes nothing;
//! above the high watermark, or below -1, is OFFSET_OUT_OF_RANGE. An unknown partition is
//! UNKNOWN_TOPIC_OR_PARTITION and an internal topic (`__consumer_offsets`)
//! TOPIC_AUTHORIZATION_FAILED; a refused partition answers low watermark -1.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

use super::{KafkaService, blocking, is_internal, storage_error_code};

/// The offset that means "the high watermark".
const HIGH_WATERMARK: i64 = -1;

impl KafkaService {
    pub(super) async fn delete_records(
        &self,
        request: DeleteRecordsRequest,
    ) -> DeleteRecordsResponse {
        let mut work = Vec::new();
        for topic in request.topics {
            let internal = is_internal(topic.name.0.as_str());
            let partitions: Vec<_> = topic
                .partitions
                .into_iter()
                .map(|p| {
                    let partition = if internal {
                        Err(ResponseError::TopicAuthorizationFailed.code())
                    } else {
                        self.partition(topic.name.0.as_str(), p.partition_index)
                    };
                    (p.partition_index, p.offset, partition)
                })
                .collect();
            work.push((topic.name, partitions));
        }
        // Deleting takes the log's write lock and removes segment files: blocking.
        blocking(move || {
            let mut response = DeleteRecordsResponse::default();
            for (name, partitions) in work {
                let mut topic = DeleteRecordsTopicResult::default();
                topic.name = name;
                for (index, offset, partition) in partitions {
                    let mut answer = DeleteRecordsPartitionResult::default();
                    answer.partition_index = index;
                    answer.low_watermark = -1;
                    let deleted = partition.and_then(|partition| {
                        let mut log = partition.log_mut();
                        let before = match offset {
                            HIGH_WATERMARK => log.high_watermark(),
                            o if o < 0 || o > log.high_watermark() => {
                                return Err(ResponseError::OffsetOutOfRange.code());
                            }
                            o => o,
                        };
                        if before <= log.log_start_offset() {
                            return Ok(log.log_start_offset());
                        }
                        log.delete_records(before)
                            .map_err(|e| storage_error_code(&e))
                    });
                    match deleted {
                        Ok(low_watermark) => answer.low_watermark = low_watermark,
                        Err(code) => answer.error_code = code,
                    }
                    topic.partitions.push(answer);
                }
                response.topics.push(topic);
            }
            response
        })
        .await
    }
}
