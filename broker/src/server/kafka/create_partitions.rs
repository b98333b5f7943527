//! CreatePartitions (KIP-195): grows a topic to `count` partitions
//! ([`TopicManager::add_partitions`](crate::cluster::TopicManager::add_partitions)).
//!
//! A count not larger than the current one, or over the limit, is INVALID_PARTITIONS; an
//! unknown topic UNKNOWN_TOPIC_OR_PARTITION; an internal topic (`__consumer_offsets`,
//! whose partition count fixes where each group lives) TOPIC_AUTHORIZATION_FAILED; a topic
//! twice INVALID_REQUEST. Assignments, when given, must name one new partition each, on
//! this broker alone (else INVALID_REPLICA_ASSIGNMENT). `validate_only` checks and
//! changes nothing.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{BrokerId, CreatePartitionsRequest, CreatePartitionsResponse};
use kafka_protocol::protocol::StrBytes;

use super::{
    KafkaService, Refusal, blocking, is_internal, named_twice, named_twice_refusal, refusal,
};
use crate::cluster::TopicError;
use crate::cluster::topics::PARTITIONS_MAX;

impl KafkaService {
    pub(super) async fn create_partitions(
        &self,
        request: CreatePartitionsRequest,
    ) -> CreatePartitionsResponse {
        let duplicates = named_twice(request.topics.iter().map(|t| t.name.0.to_string()));
        let checked: Vec<(CreatePartitionsTopic, Result<u32, Refusal>)> = request
            .topics
            .into_iter()
            .map(|t| {
                let name = t.name.0.to_string();
                let checked = if duplicates.contains(&name) {
                    Err(named_twice_refusal("topic", &name))
                } else {
                    self.check_growth(&t)
                };
                (t, checked)
            })
            .collect();
        let validate_only = request.validate_only;
        let topics = self.topics.clone();
        // Opening logs and writing metadata: on a blocking thread.
        let grown = blocking(move || {
            checked
                .into_iter()
                .map(|(t, checked)| {
                    let outcome = checked.and_then(|count| {
                        if validate_only {
                            return Ok(());
                        }
                        topics
                            .add_partitions(t.name.0.as_str(), count)
                            .map(drop)
                            .map_err(refusal)
                    });
                    (t.name, outcome)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let mut response = CreatePartitionsResponse::default();
        for (name, outcome) in grown {
            let mut result = CreatePartitionsTopicResult::default();
            result.name = name;
            if let Err((code, message)) = outcome {
                result.error_code = code;
                result.error_message = Some(StrBytes::from_string(message));
            }
            response.results.push(result);
        }
        response
    }

    /// The new partition count a request entry asks for, if it can be granted now.
    fn check_growth(&self, t: &CreatePartitionsTopic) -> Result<u32, Refusal> {
        let name = t.name.0.as_str();
        if is_internal(name) {
            return Err((
                ResponseError::TopicAuthorizationFailed.code(),
                format!("{name} is an internal topic: its partitions cannot be changed"),
            ));
        }
        let topic = self.topics.get(name).map_err(refusal)?;
        let current = topic.partitions.len() as u32;
        let count = u32::try_from(t.count)
            .ok()
            .filter(|&c| c <= PARTITIONS_MAX)
            .ok_or_else(|| {
                (
                    ResponseError::InvalidPartitions.code(),
                    format!(
                        "invalid partition count {}: at most {PARTITIONS_MAX}",
                        t.count
                    ),
                )
            })?;
        if count <= current {
            return Err(refusal(TopicError::PartitionsNotIncreased {
                topic: name.to_owned(),
                current,
                requested: count,
            }));
        }
        if let Some(assignments) = &t.assignments {
            let this_broker = [BrokerId(self.node_id)];
            if assignments.len() != (count - current) as usize
                || assignments.iter().any(|a| a.broker_ids != this_broker)
            {
                return Err((
                    ResponseError::InvalidReplicaAssignment.code(),
                    format!(
                        "{} new partitions need one assignment each, naming broker {} alone",
                        count - current,
                        self.node_id
                    ),
                ));
            }
        }
        Ok(count)
    }
}
