//! DeleteTopics: topics deleted as the gRPC API deletes them (data gone before the
//! answer).
//!
//! v1-5 name topics; v6 names or topic ids (the id Metadata gives, derived from the name):
//! an unknown name is UNKNOWN_TOPIC_OR_PARTITION, an unknown id UNKNOWN_TOPIC_ID, both or
//! neither INVALID_REQUEST, a topic twice INVALID_REQUEST. Internal topics
//! (`__consumer_offsets`) are refused with TOPIC_AUTHORIZATION_FAILED.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::{
    KafkaService, Refusal, blocking, is_internal, named_twice, named_twice_refusal, refusal,
    topic_id,
};

impl KafkaService {
    pub(super) async fn delete_topics(
        &self,
        request: DeleteTopicsRequest,
        version: i16,
    ) -> DeleteTopicsResponse {
        // (name if known, id if asked by id, what was resolved)
        let asked: Vec<(Option<String>, uuid::Uuid)> = if version >= 6 {
            request
                .topics
                .into_iter()
                .map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id))
                .collect()
        } else {
            request
                .topic_names
                .into_iter()
                .map(|n| (Some(n.0.to_string()), uuid::Uuid::nil()))
                .collect()
        };
        let mut resolved: Vec<(Option<String>, uuid::Uuid, Result<String, Refusal>)> = asked
            .into_iter()
            .map(|(name, id)| {
                let target = self.resolve(name.as_deref(), id);
                (name, id, target)
            })
            .collect();
        // A topic named twice (by name, id, or both) is refused each time.
        let duplicates = named_twice(
            resolved
                .iter()
                .filter_map(|(_, _, target)| target.as_ref().ok().cloned()),
        );
        for (_, _, target) in &mut resolved {
            if let Ok(name) = target
                && duplicates.contains(name)
            {
                *target = Err(named_twice_refusal("topic", name));
            }
        }
        let topics = self.topics.clone();
        let groups = self.groups.clone();
        // Deleting renames and removes directories: on a blocking thread.
        let deleted = blocking(move || {
            resolved
                .into_iter()
                .map(|(asked_name, id, target)| {
                    let outcome = target.and_then(|name| {
                        topics.delete(&name).map_err(refusal)?;
                        // Its committed offsets go with it (as Kafka).
                        if let Err(e) = groups.forget_topic(&name) {
                            let reason = "could not drop the deleted topic's offsets";
                            tracing::warn!(topic = %name, error = %e, "{reason}");
                        }
                        Ok(name)
                    });
                    (asked_name, id, outcome)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let mut response = DeleteTopicsResponse::default();
        for (asked_name, id, outcome) in deleted {
            let mut result = DeletableTopicResult::default();
            let name = match &outcome {
                Ok(name) => Some(name.clone()),
                Err(_) => asked_name,
            };
            result.name = name.map(|n| TopicName(StrBytes::from_string(n)));
            result.topic_id = match (&outcome, version >= 6) {
                (Ok(name), true) => topic_id(name),
                _ => id,
            };
            if let Err((code, message)) = outcome {
                result.error_code = code;
                result.error_message = Some(StrBytes::from_string(message));
            }
            response.responses.push(result);
        }
        response
    }

    /// The name of the topic a request entry means, or why it cannot be deleted.
    fn resolve(&self, name: Option<&str>, id: uuid::Uuid) -> Result<String, Refusal> {
        let name = match (name, id.is_nil()) {
            (Some(name), true) => name.to_owned(),
            (None, false) => self
                .topics
                .list()
                .into_iter()
                .find(|t| topic_id(&t.name) == id)
                .map(|t| t.name.clone())
                .ok_or((
                    ResponseError::UnknownTopicId.code(),
                    format!("no topic has id {id}"),
                ))?,
            (Some(_), false) => {
                return Err((
                    ResponseError::InvalidRequest.code(),
                    "a topic is named by its name or its id, not both".into(),
                ));
            }
            (None, true) => {
                return Err((
                    ResponseError::InvalidRequest.code(),
                    "a topic needs a name or an id".into(),
                ));
            }
        };
        if is_internal(&name) {
            return Err((
                ResponseError::TopicAuthorizationFailed.code(),
                format!("{name} is an internal topic: it cannot be deleted"),
            ));
        }
        self.topics.get(&name).map_err(refusal)?;
        Ok(name)
    }
}
