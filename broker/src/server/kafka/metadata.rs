//! Metadata: this broker leads every partition; topics are not created by lookups.

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::KafkaService;
use crate::cluster::Topic;

/// The cluster id Metadata reports (one node, no controller quorum yet).
pub const CLUSTER_ID: &str = "fjord";

/// The leader epoch Metadata reports: the epoch the broker stamps on every batch.
pub const LEADER_EPOCH: i32 = 0;

impl KafkaService {
    pub(super) fn metadata(&self, request: MetadataRequest, version: i16) -> MetadataResponse {
        let mut response = MetadataResponse::default();
        let mut broker = MetadataResponseBroker::default();
        broker.node_id = BrokerId(self.node_id);
        broker.host = StrBytes::from_string(self.advertised_host.clone());
        broker.port = self.advertised_port;
        response.brokers = vec![broker];
        response.cluster_id = Some(StrBytes::from_static_str(CLUSTER_ID));
        response.controller_id = BrokerId(self.node_id);
        // v0: an empty list means every topic; v1+: null does.
        let names: Option<Vec<String>> = match request.topics {
            Some(topics) if !(version == 0 && topics.is_empty()) => Some(
                topics
                    .into_iter()
                    .map(|t| t.name.map(|n| n.0.to_string()).unwrap_or_default())
                    .collect(),
            ),
            _ => None,
        };
        response.topics = match names {
            None => {
                let mut all = self.topics.list();
                all.sort_by(|a, b| a.name.cmp(&b.name));
                all.iter().map(|t| self.topic_metadata(t)).collect()
            }
            Some(names) => names
                .into_iter()
                .map(|name| match self.topics.get(&name) {
                    Ok(topic) => self.topic_metadata(&topic),
                    Err(e) => {
                        let mut missing = MetadataResponseTopic::default();
                        missing.error_code = super::topic_error_code(&e);
                        missing.name = Some(TopicName(StrBytes::from_string(name)));
                        missing
                    }
                })
                .collect(),
        };
        response
    }

    fn topic_metadata(&self, topic: &Topic) -> MetadataResponseTopic {
        let mut metadata = MetadataResponseTopic::default();
        metadata.name = Some(TopicName(StrBytes::from_string(topic.name.clone())));
        metadata.topic_id = super::topic_id(&topic.name);
        metadata.is_internal = super::is_internal(&topic.name);
        metadata.partitions = topic
            .partitions
            .iter()
            .map(|p| {
                let mut partition = MetadataResponsePartition::default();
                partition.partition_index = p.id() as i32;
                partition.leader_id = BrokerId(self.node_id);
                partition.leader_epoch = LEADER_EPOCH;
                partition.replica_nodes = vec![BrokerId(self.node_id)];
                partition.isr_nodes = vec![BrokerId(self.node_id)];
                partition
            })
            .collect();
        metadata
    }
}
