//! Consumer groups.
//!
//! - [`assignor`]: the server-side assignors (range, uniform).
//! - [`state`]: one group's membership, epochs, incremental assignment and committed
//!   offsets (KIP-848), pure.
//!
//! Later in this layer: the coordinator that owns the groups of its partitions of
//! `__consumer_offsets`, persists commits and group metadata there, and rebuilds its
//! state from it after a restart.

pub mod assignor;
pub mod state;

pub use assignor::{Assignor, TopicPartition};
pub use state::{Group, GroupConfig, GroupError, GroupState, Heartbeat, HeartbeatResponse};
