//! Cluster metadata. On one node: the topics, their partitions and configs
//! ([`TopicManager`]). Later: the controller quorum and replication.

pub mod topics;

pub use topics::{Topic, TopicError, TopicManager};
