//! IncrementalAlterConfigs (KIP-339): changes some of a topic's overrides, key by key.
//!
//! SET (0) overrides a key, DELETE (1) returns it to the broker default (an unknown key
//! is INVALID_CONFIG), APPEND (2) and SUBTRACT (3) add values to or remove them from a
//! list config (`cleanup.policy`), starting from its current value; on any other key they
//! are INVALID_CONFIG. The result is checked as a whole before anything changes; the
//! refusals are [`alter_configs`](super::alter_configs)'s, and an unknown operation or a
//! null value to set is INVALID_REQUEST. `validate_only` checks and changes nothing.

use std::collections::BTreeSet;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::incremental_alter_configs_request::AlterableConfig;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};
use kafka_protocol::protocol::StrBytes;

use super::alter_configs::duplicate_key;
use super::describe_configs::{CONFIG_TYPE_LIST, key_info};
use super::{KafkaService, Refusal};
use crate::cluster::Topic;
use crate::config::{ConfigError, TOPIC_CONFIG_KEYS};

const SET: i8 = 0;
const DELETE: i8 = 1;
const APPEND: i8 = 2;
const SUBTRACT: i8 = 3;

impl KafkaService {
    pub(super) async fn incremental_alter_configs(
        &self,
        request: IncrementalAlterConfigsRequest,
    ) -> IncrementalAlterConfigsResponse {
        let mut response = IncrementalAlterConfigsResponse::default();
        let duplicates = super::named_twice(
            request
                .resources
                .iter()
                .map(|r| (r.resource_type, r.resource_name.to_string())),
        );
        for resource in request.resources {
            let name = resource.resource_name.to_string();
            let duplicate = duplicates.contains(&(resource.resource_type, name.clone()));
            let configs = resource.configs;
            let outcome = self
                .alter_resource(
                    duplicate,
                    resource.resource_type,
                    &name,
                    request.validate_only,
                    |topic| self.apply_ops(topic, configs),
                )
                .await;
            let mut answer = AlterConfigsResourceResponse::default();
            answer.resource_type = resource.resource_type;
            answer.resource_name = resource.resource_name;
            if let Err((code, message)) = outcome {
                answer.error_code = code;
                answer.error_message = Some(StrBytes::from_string(message));
            }
            response.responses.push(answer);
        }
        response
    }

    /// The topic's overrides after `ops`.
    fn apply_ops(
        &self,
        topic: &Topic,
        ops: Vec<AlterableConfig>,
    ) -> Result<std::collections::BTreeMap<String, String>, Refusal> {
        let mut overrides = topic.overrides.clone();
        let mut seen = BTreeSet::new();
        for op in ops {
            let key = op.name.to_string();
            if !seen.insert(key.clone()) {
                return Err(duplicate_key(&key));
            }
            if !TOPIC_CONFIG_KEYS.contains(&key.as_str()) {
                let e = ConfigError::UnknownKey { key };
                return Err((ResponseError::InvalidConfig.code(), e.to_string()));
            }
            let value = op.value.map(|v| v.to_string());
            match (op.config_operation, value) {
                (DELETE, _) => {
                    overrides.remove(&key);
                }
                (SET | APPEND | SUBTRACT, None) => {
                    return Err((
                        ResponseError::InvalidRequest.code(),
                        format!("config {key} has a null value"),
                    ));
                }
                (SET, Some(value)) => {
                    overrides.insert(key, value);
                }
                (op @ (APPEND | SUBTRACT), Some(value)) => {
                    if key_info(&key).map(|(_, t)| t) != Some(CONFIG_TYPE_LIST) {
                        return Err((
                            ResponseError::InvalidConfig.code(),
                            format!("config {key} is not a list: no APPEND or SUBTRACT"),
                        ));
                    }
                    let current = match overrides.get(&key) {
                        Some(v) => v.clone(),
                        None => self
                            .topics
                            .defaults()
                            .entries()
                            .into_iter()
                            .find(|(k, _)| *k == key)
                            .map(|(_, v)| v)
                            .unwrap_or_default(),
                    };
                    let mut list: Vec<String> = split(&current);
                    for item in split(&value) {
                        if op == APPEND {
                            if !list.contains(&item) {
                                list.push(item);
                            }
                        } else {
                            list.retain(|v| *v != item);
                        }
                    }
                    overrides.insert(key, list.join(","));
                }
                (other, _) => {
                    return Err((
                        ResponseError::InvalidRequest.code(),
                        format!("unknown config operation {other} for {key}"),
                    ));
                }
            }
        }
        Ok(overrides)
    }
}

fn split(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}
