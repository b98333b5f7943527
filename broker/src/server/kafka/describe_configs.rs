//! DescribeConfigs: a topic's configs (every key Fjord knows, its effective value and
//! whether the topic overrides it) and this broker's topic defaults under Kafka's broker
//! names.
//!
//! TOPIC (2): every key of `TOPIC_CONFIG_KEYS`, or those of `configuration_keys` (unknown
//! ones are left out, as Kafka does), with source DYNAMIC_TOPIC_CONFIG (1) when overridden
//! and DEFAULT_CONFIG (5) otherwise; with `include_synonyms`, the override and the broker
//! default it shadows. An unknown topic is UNKNOWN_TOPIC_OR_PARTITION. BROKER (4) named
//! by this broker's id: the defaults (`log.retention.ms`, ...), read-only, as the Kafka
//! listener cannot change them; an empty name (the cluster-wide dynamic defaults) has
//! none. Other resource types, or another broker's id, are INVALID_REQUEST.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::protocol::StrBytes;

use super::{KafkaService, topic_error_code};

/// Kafka's ConfigResource.Type of a topic.
pub const RESOURCE_TOPIC: i8 = 2;
/// Kafka's ConfigResource.Type of a broker.
pub const RESOURCE_BROKER: i8 = 4;

/// Kafka's ConfigSource: a topic's override.
pub const CONFIG_SOURCE_TOPIC: i8 = 1;
/// Kafka's ConfigSource: the broker's value (not a dynamic or topic one).
pub const CONFIG_SOURCE_DEFAULT: i8 = 5;

/// Each topic config's broker-wide default (Kafka's names, as `fjord-broker` takes them)
/// and Kafka's ConfigType of its value (3 INT, 2 STRING, 5 LONG, 6 DOUBLE, 7 LIST).
const KEYS: &[(&str, &str, i8)] = &[
    ("cleanup.policy", "log.cleanup.policy", 7),
    ("delete.retention.ms", "log.cleaner.delete.retention.ms", 5),
    ("flush.messages", "log.flush.interval.messages", 5),
    ("flush.ms", "log.flush.interval.ms", 5),
    ("index.interval.bytes", "log.index.interval.bytes", 3),
    ("max.message.bytes", "message.max.bytes", 3),
    ("message.timestamp.type", "log.message.timestamp.type", 2),
    (
        "min.cleanable.dirty.ratio",
        "log.cleaner.min.cleanable.ratio",
        6,
    ),
    ("retention.bytes", "log.retention.bytes", 5),
    ("retention.ms", "log.retention.ms", 5),
    ("segment.bytes", "log.segment.bytes", 3),
    ("segment.index.bytes", "log.index.size.max.bytes", 3),
    ("segment.ms", "log.roll.ms", 5),
];

/// Kafka's ConfigType of a list (comma-separated) config.
pub const CONFIG_TYPE_LIST: i8 = 7;

/// The broker default's name and the ConfigType of a topic config.
pub fn key_info(key: &str) -> Option<(&'static str, i8)> {
    KEYS.iter()
        .find(|(topic_key, _, _)| *topic_key == key)
        .map(|&(_, broker_key, config_type)| (broker_key, config_type))
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

impl KafkaService {
    pub(super) fn describe_configs(
        &self,
        request: DescribeConfigsRequest,
    ) -> DescribeConfigsResponse {
        let mut response = DescribeConfigsResponse::default();
        for resource in request.resources {
            let result = self.describe_resource(resource, request.include_synonyms);
            response.results.push(result);
        }
        response
    }

    fn describe_resource(
        &self,
        resource: DescribeConfigsResource,
        include_synonyms: bool,
    ) -> DescribeConfigsResult {
        let mut result = DescribeConfigsResult::default();
        result.resource_type = resource.resource_type;
        result.resource_name = resource.resource_name.clone();
        let name = resource.resource_name.to_string();
        let wanted = |key: &str| {
            resource
                .configuration_keys
                .as_ref()
                .is_none_or(|keys| keys.iter().any(|k| k.as_str() == key))
        };
        let defaults = self.topics.defaults().entries();
        let default_of = |key: &str| {
            defaults
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        match resource.resource_type {
            RESOURCE_TOPIC => match self.topics.get(&name) {
                Ok(topic) => {
                    for (key, value) in topic.config.entries() {
                        if !wanted(&key) {
                            continue;
                        }
                        let (broker_key, config_type) = key_info(&key).unwrap_or(("", 0));
                        let mut entry = DescribeConfigsResourceResult::default();
                        let overridden = topic.overrides.contains_key(&key);
                        entry.config_source = if overridden {
                            CONFIG_SOURCE_TOPIC
                        } else {
                            CONFIG_SOURCE_DEFAULT
                        };
                        entry.config_type = config_type;
                        if include_synonyms {
                            if overridden {
                                let mut synonym = DescribeConfigsSynonym::default();
                                synonym.name = str_bytes(&key);
                                synonym.value = Some(str_bytes(&value));
                                synonym.source = CONFIG_SOURCE_TOPIC;
                                entry.synonyms.push(synonym);
                            }
                            let mut synonym = DescribeConfigsSynonym::default();
                            synonym.name = str_bytes(broker_key);
                            synonym.value = default_of(&key).map(|v| str_bytes(&v));
                            synonym.source = CONFIG_SOURCE_DEFAULT;
                            entry.synonyms.push(synonym);
                        }
                        entry.name = str_bytes(&key);
                        entry.value = Some(str_bytes(&value));
                        result.configs.push(entry);
                    }
                }
                Err(e) => {
                    result.error_code = topic_error_code(&e);
                    result.error_message = Some(StrBytes::from_string(e.to_string()));
                }
            },
            RESOURCE_BROKER if name == self.node_id.to_string() => {
                for (key, value) in &defaults {
                    let Some((broker_key, config_type)) = key_info(key) else {
                        continue;
                    };
                    if !wanted(broker_key) {
                        continue;
                    }
                    let mut entry = DescribeConfigsResourceResult::default();
                    entry.name = str_bytes(broker_key);
                    entry.value = Some(str_bytes(value));
                    entry.config_source = CONFIG_SOURCE_DEFAULT;
                    entry.config_type = config_type;
                    entry.read_only = true;
                    result.configs.push(entry);
                }
            }
            // The cluster-wide dynamic broker defaults: Fjord has none.
            RESOURCE_BROKER if name.is_empty() => {}
            RESOURCE_BROKER => {
                result.error_code = ResponseError::InvalidRequest.code();
                result.error_message = Some(StrBytes::from_string(format!(
                    "broker {name} is not this broker ({})",
                    self.node_id
                )));
            }
            other => {
                result.error_code = ResponseError::InvalidRequest.code();
                result.error_message = Some(StrBytes::from_string(format!(
                    "resource type {other} is not supported (topic 2 and broker 4 are)"
                )));
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_config_has_a_broker_default_and_a_type() {
        for key in crate::config::TOPIC_CONFIG_KEYS {
            assert!(key_info(key).is_some(), "{key}");
        }
        assert_eq!(KEYS.len(), crate::config::TOPIC_CONFIG_KEYS.len());
    }
}
