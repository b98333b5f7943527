//! Consumer groups.
//!
//! - [`assignor`]: the server-side assignors (range, uniform).
//! - [`classic`]: the classic protocol of Kafka clients (JoinGroup/SyncGroup, client-side
//!   assignment, static membership), pure; kept inside the group it belongs to.
//! - [`state`]: one group's membership, epochs, incremental assignment and committed
//!   offsets (KIP-848), pure.
//! - [`records`]: the records of `__consumer_offsets` (Kafka's layout) and the group ->
//!   partition mapping.
//! - [`coordinator`]: the groups of this broker; commits appended (acks=all) to
//!   `__consumer_offsets` and replayed from it on start.
//!
//! Later in this layer: the gRPC API, offset resets on live groups, lag metrics.

pub mod assignor;
pub mod classic;
pub mod coordinator;
pub mod records;
pub mod state;

pub use assignor::{Assignor, TopicPartition};
pub use state::{Group, GroupConfig, GroupError, GroupState, Heartbeat, HeartbeatResponse};
