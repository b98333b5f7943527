//! CreateTopics: topics created as the gRPC API creates them, one node's rules applied.
//!
//! `num_partitions` -1 means `num.partitions`; `replication_factor` -1 or 1 is accepted
//! (one node: anything else is INVALID_REPLICATION_FACTOR); manual replica assignments
//! are INVALID_REQUEST; configs are the topic's overrides (checked, INVALID_CONFIG with
//! the reason); `validate_only` runs every check and creates nothing. A name twice in one
//! request is INVALID_REQUEST for each. v5+ answers carry the partition count, the
//! replication factor and every config with its source; v7 the topic id.

use std::collections::BTreeMap;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::describe_configs::{CONFIG_SOURCE_DEFAULT, CONFIG_SOURCE_TOPIC};
use super::{
    KafkaService, Refusal, blocking, named_twice, named_twice_refusal, refusal, topic_error_code,
};
use crate::cluster::topics::{PARTITIONS_MAX, validate_name};
use crate::cluster::{Topic, TopicError, TopicManager};
use crate::config::TopicConfig;

/// What a request checked, ready to create.
struct Creation {
    name: String,
    partitions: u32,
    overrides: BTreeMap<String, String>,
}

impl KafkaService {
    pub(super) async fn create_topics(&self, request: CreateTopicsRequest) -> CreateTopicsResponse {
        let duplicates = named_twice(request.topics.iter().map(|t| t.name.0.to_string()));
        let validate_only = request.validate_only;
        let topics = self.topics.clone();
        let requested: Vec<(String, Result<Creation, Refusal>)> = request
            .topics
            .into_iter()
            .map(|t| {
                let name = t.name.0.to_string();
                let checked = if duplicates.contains(&name) {
                    Err(named_twice_refusal("topic", &name))
                } else {
                    check(&topics, t)
                };
                (name, checked)
            })
            .collect();
        // Creating opens logs and writes files: on a blocking thread.
        let results = blocking(move || {
            requested
                .into_iter()
                .map(|(name, checked)| {
                    let outcome = checked.and_then(|c| {
                        if validate_only {
                            // Every check create makes, without the side effects.
                            if topics.get(&c.name).is_ok() {
                                let e = TopicError::AlreadyExists(c.name.clone());
                                return Err((topic_error_code(&e), e.to_string()));
                            }
                            let config =
                                TopicConfig::with_overrides(topics.defaults(), &c.overrides)
                                    .map_err(|e| refusal(TopicError::Config(e)))?;
                            Ok((c.partitions, c.overrides, config))
                        } else {
                            topics
                                .create(&c.name, c.partitions, c.overrides)
                                .map(|t: std::sync::Arc<Topic>| {
                                    let count = t.partitions.len() as u32;
                                    (count, t.overrides.clone(), t.config.clone())
                                })
                                .map_err(refusal)
                        }
                    });
                    (name, outcome)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let mut response = CreateTopicsResponse::default();
        for (name, outcome) in results {
            let mut result = CreatableTopicResult::default();
            result.name = TopicName(StrBytes::from_string(name.clone()));
            match outcome {
                Ok((partitions, overrides, config)) => {
                    result.topic_id = super::topic_id(&name);
                    result.num_partitions = partitions as i32;
                    result.replication_factor = 1;
                    result.configs = Some(configs(&overrides, &config));
                }
                Err((code, message)) => {
                    result.error_code = code;
                    result.error_message = Some(StrBytes::from_string(message));
                    result.num_partitions = -1;
                    result.replication_factor = -1;
                }
            }
            response.topics.push(result);
        }
        response
    }
}

/// The checks that need no disk: name, counts, assignments, configs.
fn check(topics: &TopicManager, topic: CreatableTopic) -> Result<Creation, Refusal> {
    let name = topic.name.0.to_string();
    validate_name(&name).map_err(refusal)?;
    if !topic.assignments.is_empty() {
        return Err((
            ResponseError::InvalidRequest.code(),
            "manual replica assignments are not supported".into(),
        ));
    }
    if !matches!(topic.replication_factor, -1 | 1) {
        return Err((
            ResponseError::InvalidReplicationFactor.code(),
            format!(
                "replication factor {} is not possible: this cluster has one broker",
                topic.replication_factor
            ),
        ));
    }
    let partitions = match topic.num_partitions {
        -1 => topics.default_partitions(),
        n if n >= 1 && n as u32 <= PARTITIONS_MAX => n as u32,
        n => {
            return Err((
                ResponseError::InvalidPartitions.code(),
                format!("invalid partition count {n}: must be 1 to {PARTITIONS_MAX}, or -1"),
            ));
        }
    };
    let mut overrides = BTreeMap::new();
    for config in topic.configs {
        let key = config.name.to_string();
        let Some(value) = config.value else {
            return Err((
                ResponseError::InvalidConfig.code(),
                format!("config {key} has a null value"),
            ));
        };
        if overrides.insert(key.clone(), value.to_string()).is_some() {
            return Err(super::named_twice_refusal("config", &key));
        }
    }
    TopicConfig::with_overrides(topics.defaults(), &overrides)
        .map_err(|e| refusal(TopicError::Config(e)))?;
    Ok(Creation {
        name,
        partitions,
        overrides,
    })
}

/// Every config of a created topic, as v5+ answers carry them.
fn configs(
    overrides: &BTreeMap<String, String>,
    config: &TopicConfig,
) -> Vec<CreatableTopicConfigs> {
    config
        .entries()
        .into_iter()
        .map(|(key, value)| {
            let mut entry = CreatableTopicConfigs::default();
            entry.config_source = if overrides.contains_key(&key) {
                CONFIG_SOURCE_TOPIC
            } else {
                CONFIG_SOURCE_DEFAULT
            };
            entry.name = StrBytes::from_string(key);
            entry.value = Some(StrBytes::from_string(value));
            entry
        })
        .collect()
}
