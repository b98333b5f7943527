//! ListOffsets: earliest (-2), latest (-1) and the first offset at or after a timestamp,
//! through the same lookup as the gRPC API.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use super::{KafkaService, storage_error_code};
use crate::partition::OffsetSpec;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;

impl KafkaService {
    pub(super) async fn list_offsets(
        &self,
        request: ListOffsetsRequest,
        version: i16,
    ) -> ListOffsetsResponse {
        let mut lookups = Vec::new();
        for topic in request.topics {
            let name = topic.name.0.to_string();
            let partitions: Vec<_> = topic
                .partitions
                .into_iter()
                .map(|p| {
                    (
                        p.partition_index,
                        p.timestamp,
                        self.partition(&name, p.partition_index),
                    )
                })
                .collect();
            lookups.push((topic.name, partitions));
        }
        // The lookups take log locks: on a blocking thread.
        let looked_up = tokio::task::spawn_blocking(move || {
            let mut response = ListOffsetsResponse::default();
            for (name, partitions) in lookups {
                let mut topic = ListOffsetsTopicResponse::default();
                topic.name = name;
                for (index, timestamp, partition) in partitions {
                    let mut answer = ListOffsetsPartitionResponse::default();
                    answer.partition_index = index;
                    answer.offset = -1;
                    answer.timestamp = -1;
                    let spec = match timestamp {
                        LATEST => Some(OffsetSpec::Latest),
                        EARLIEST => Some(OffsetSpec::Earliest),
                        t if t >= 0 => Some(OffsetSpec::Timestamp(t)),
                        // -3 (max timestamp) comes at v7, which is not advertised;
                        // -4 (KIP-734 local start) neither.
                        _ => None,
                    };
                    match (partition, spec) {
                        (Err(code), _) => answer.error_code = code,
                        (Ok(_), None) => answer.error_code = ResponseError::InvalidRequest.code(),
                        (Ok(partition), Some(spec)) => match partition.list_offset(spec) {
                            Ok((offset, timestamp_ms)) => {
                                answer.offset = offset;
                                answer.timestamp = timestamp_ms;
                                // The field exists from v4 (set below that, the
                                // answer cannot be encoded).
                                if version >= 4 && offset >= 0 {
                                    answer.leader_epoch = 0;
                                }
                            }
                            Err(e) => answer.error_code = storage_error_code(&e),
                        },
                    }
                    topic.partitions.push(answer);
                }
                response.topics.push(topic);
            }
            response
        })
        .await;
        looked_up.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }
}
