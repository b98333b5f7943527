//! OffsetForLeaderEpoch (KIP-101, KIP-320): where a leader epoch ends, so a consumer (or a
//! follower, later) can tell whether its position survived a leader change.
//!
//! Fjord's leader epoch is always 0. `current_leader_epoch` -1 is not checked; older than
//! 0 it is FENCED_LEADER_EPOCH, newer UNKNOWN_LEADER_EPOCH (Kafka's check). A requested
//! `leader_epoch` of 0 ends at the high watermark (Kafka's leader answers its log end
//! offset; on one node the high watermark follows it, and is read without the log lock,
//! and no client can hold a position above it); an epoch above 0 or below 0 is UNDEFINED
//! (epoch -1, offset -1). An unknown partition is UNKNOWN_TOPIC_OR_PARTITION.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};

use super::KafkaService;
use super::metadata::LEADER_EPOCH;

/// Kafka's UNDEFINED_EPOCH and UNDEFINED_EPOCH_OFFSET.
const UNDEFINED: i32 = -1;
const UNDEFINED_OFFSET: i64 = -1;

impl KafkaService {
    pub(super) fn offset_for_leader_epoch(
        &self,
        request: OffsetForLeaderEpochRequest,
    ) -> OffsetForLeaderEpochResponse {
        let mut response = OffsetForLeaderEpochResponse::default();
        for topic in request.topics {
            let mut result = OffsetForLeaderTopicResult::default();
            for p in topic.partitions {
                let mut answer = EpochEndOffset::default();
                answer.partition = p.partition;
                answer.leader_epoch = UNDEFINED;
                answer.end_offset = UNDEFINED_OFFSET;
                match self.partition(topic.topic.0.as_str(), p.partition) {
                    Err(code) => answer.error_code = code,
                    Ok(_)
                        if p.current_leader_epoch != UNDEFINED
                            && p.current_leader_epoch < LEADER_EPOCH =>
                    {
                        answer.error_code = ResponseError::FencedLeaderEpoch.code();
                    }
                    Ok(_) if p.current_leader_epoch > LEADER_EPOCH => {
                        answer.error_code = ResponseError::UnknownLeaderEpoch.code();
                    }
                    Ok(partition) if p.leader_epoch == LEADER_EPOCH => {
                        answer.leader_epoch = LEADER_EPOCH;
                        answer.end_offset = partition.high_watermark();
                    }
                    // An epoch this broker never had: newer, or below the first.
                    Ok(_) => {}
                }
                result.partitions.push(answer);
            }
            result.topic = topic.topic;
            response.topics.push(result);
        }
        response
    }
}
