//! Fjord's Rust client: admin, producer and consumer over the broker's gRPC API
//! (`fjord.v1.Fjord`). Async, on tokio.
//!
//! # Map
//!
//! - [`admin`]: [`Admin`], topics (create, delete, list, describe), configs, offsets
//!   ([`OffsetSpec`]) and record deletion.
//! - [`producer`]: [`Producer`], which accumulates records per partition into RecordBatch
//!   v2 batches (`producer::accumulator` holds the pure batching rules) and sends them when
//!   `batch_bytes` is reached or `linger_ms` has passed, with up to `max_in_flight`
//!   requests in flight per partition on one ordered stream, retrying retriable errors
//!   without reordering a partition's records.
//! - [`partitioner`]: Kafka's murmur2 and default partitioner (keyed: murmur2 of the key;
//!   keyless: sticky until the batch closes).
//! - [`consumer`]: [`Consumer`], which reads assigned partitions from chosen positions
//!   ([`Seek`]) with long-polling fetches, as a `poll` loop or a `Stream`.
//! - [`group`]: consumer group membership: with a `group_id`, [`Consumer::subscribe`]
//!   joins the group, a background task heartbeats, and `poll` takes up and gives back
//!   the partitions the coordinator assigns ([`RebalanceListener`]), with auto-commit or
//!   [`Consumer::commit`].
//! - [`error`]: [`ClientError`], mapped from gRPC statuses, with
//!   [`ClientError::is_retriable`].
//! - [`connection`]: opening the channel (eagerly: a broker that is not running is a
//!   [`ClientError::Connect`] naming the address).
//!
//! Records travel as Kafka RecordBatch v2 bytes (`fjord_protocol::codec` builds and
//! decodes them); the broker never re-encodes them.
//!
//! ```no_run
//! # async fn demo() -> fjord_client::Result<()> {
//! use fjord_client::{Admin, Consumer, ConsumerConfig, Producer, ProducerConfig, Seek};
//! let admin = Admin::connect("127.0.0.1:9192").await?;
//! admin.create_topic("events", 3, &[("retention.ms", "3600000")]).await?;
//! let producer = Producer::connect("127.0.0.1:9192", ProducerConfig::default()).await?;
//! let sent = producer.send("events", Some("k".into()), Some("v".into()), vec![]).await?;
//! let mut consumer = Consumer::connect("127.0.0.1:9192", ConsumerConfig::default()).await?;
//! consumer.assign("events", &[sent.partition]).await?;
//! consumer.seek("events", sent.partition, Seek::Beginning).await?;
//! let records = consumer.poll().await?;
//! # Ok(()) }
//! ```

pub mod admin;
pub mod connection;
pub mod consumer;
pub mod error;
pub mod group;
mod hash;
pub mod partitioner;
pub mod producer;

pub use admin::{
    Admin, CommittedOffset, GroupDescription, GroupMemberInfo, GroupPartitionLag, OffsetSpec,
    PartitionInfo, PartitionOffset, TopicDescription, TopicSummary,
};
pub use consumer::{AutoOffsetReset, Consumer, ConsumerConfig, ConsumerRecord, Seek};
pub use error::{ClientError, Result};
pub use fjord_protocol::codec::{Compression, RecordInput};
pub use group::RebalanceListener;
pub use partitioner::{murmur2, partition_for_key};
pub use producer::{Acks, Producer, ProducerConfig, ProducerRecord, RecordMetadata, SendCallback};

pub use fjord_protocol::TopicPartition;
