//! AlterConfigs: replaces the whole set of a topic's overrides with the request's (a key
//! left out returns to the broker default), as Kafka's legacy API does.
//!
//! Each resource is checked and applied on its own: an unknown key or a bad value is
//! INVALID_CONFIG with the reason, a null value or a key twice INVALID_REQUEST, an
//! unknown topic UNKNOWN_TOPIC_OR_PARTITION, an internal topic (`__consumer_offsets`)
//! TOPIC_AUTHORIZATION_FAILED; broker configs cannot be changed here and other resource
//! types are not served (INVALID_REQUEST). `validate_only` checks and changes nothing.
//! Also the shared checks and apply step of [`incremental_alter_configs`].
//!
//! [`incremental_alter_configs`]: super::incremental_alter_configs

use std::collections::BTreeMap;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse};
use kafka_protocol::protocol::StrBytes;

use super::describe_configs::{RESOURCE_BROKER, RESOURCE_TOPIC};
use super::{
    KafkaService, Refusal, blocking, is_internal, named_twice, named_twice_refusal, refusal,
};
use crate::cluster::{Topic, TopicError};
use crate::config::TopicConfig;

impl KafkaService {
    pub(super) async fn alter_configs(&self, request: AlterConfigsRequest) -> AlterConfigsResponse {
        let mut response = AlterConfigsResponse::default();
        let duplicates = named_twice(
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
                    |_| replacement(configs),
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

    /// One resource of AlterConfigs or IncrementalAlterConfigs: refused if the request
    /// names it twice or it is not a topic that may be changed; else the overrides
    /// `overrides` computes from the topic replace its own (unless `validate_only`).
    pub(super) async fn alter_resource(
        &self,
        duplicate: bool,
        resource_type: i8,
        name: &str,
        validate_only: bool,
        overrides: impl FnOnce(&Topic) -> Result<BTreeMap<String, String>, Refusal>,
    ) -> Result<(), Refusal> {
        if duplicate {
            return Err(named_twice_refusal("resource", name));
        }
        let topic = self.alterable_topic(resource_type, name)?;
        let overrides = overrides(&topic)?;
        self.replace_overrides(name, overrides, validate_only).await
    }

    /// The topic a config change names, or why it cannot be changed.
    pub(super) fn alterable_topic(
        &self,
        resource_type: i8,
        name: &str,
    ) -> Result<std::sync::Arc<Topic>, Refusal> {
        match resource_type {
            RESOURCE_TOPIC => {}
            RESOURCE_BROKER => {
                return Err((
                    ResponseError::InvalidRequest.code(),
                    "broker configs cannot be changed through the Kafka API".into(),
                ));
            }
            other => {
                return Err((
                    ResponseError::InvalidRequest.code(),
                    format!("resource type {other} is not supported (topic 2 is)"),
                ));
            }
        }
        if is_internal(name) {
            return Err((
                ResponseError::TopicAuthorizationFailed.code(),
                format!("{name} is an internal topic: its configs cannot be changed"),
            ));
        }
        self.topics.get(name).map_err(refusal)
    }

    /// Makes `overrides` the topic's whole set of overrides (checked first); with
    /// `validate_only`, only checks.
    pub(super) async fn replace_overrides(
        &self,
        name: &str,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), Refusal> {
        TopicConfig::with_overrides(self.topics.defaults(), &overrides)
            .map_err(|e| refusal(TopicError::Config(e)))?;
        if validate_only {
            return Ok(());
        }
        let topics = self.topics.clone();
        let name = name.to_owned();
        blocking(move || {
            let current = topics.get(&name)?;
            let delete: Vec<String> = current
                .overrides
                .keys()
                .filter(|k| !overrides.contains_key(*k))
                .cloned()
                .collect();
            let set: Vec<(String, String)> = overrides
                .into_iter()
                .filter(|(k, v)| current.overrides.get(k) != Some(v))
                .collect();
            if set.is_empty() && delete.is_empty() {
                return Ok(());
            }
            topics.alter(&name, &set, &delete)
        })
        .await
        .map_err(refusal)
    }
}

/// The overrides an AlterConfigs resource asks for.
fn replacement(
    configs: Vec<kafka_protocol::messages::alter_configs_request::AlterableConfig>,
) -> Result<BTreeMap<String, String>, Refusal> {
    let mut overrides = BTreeMap::new();
    for config in configs {
        let key = config.name.to_string();
        let Some(value) = config.value else {
            return Err((
                ResponseError::InvalidRequest.code(),
                format!("config {key} has a null value"),
            ));
        };
        if overrides.insert(key.clone(), value.to_string()).is_some() {
            return Err(duplicate_key(&key));
        }
    }
    Ok(overrides)
}

pub(super) fn duplicate_key(key: &str) -> Refusal {
    named_twice_refusal("config", key)
}
