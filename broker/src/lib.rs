//! The Fjord broker.
//!
//! Layers, lower ones never importing higher ones:
//! - [`storage`]: the on-disk log of one partition (segments, indexes, recovery,
//!   retention, compaction). No networking.
//! - [`partition`]: a replica of one partition: log, group commit, high watermark,
//!   long-poll wakeups.
//! - [`group`]: consumer groups (KIP-848 membership and assignment; the coordinator is
//!   in progress).
//! - [`cluster`]: metadata: topics, partitions, configs.
//! - [`server`]: the gRPC and HTTP servers and the broker's life cycle.
//! - [`config`]: broker settings (flags, `FJORD_*`, TOML) and topic configs.
//! - [`malloc`]: the glibc malloc settings the `fjord-broker` binary starts itself with.

pub mod cluster;
pub mod config;
pub mod group;
pub mod malloc;
pub mod partition;
pub mod server;
pub mod storage;

pub use config::BrokerConfig;
pub use server::{Broker, BrokerError, BrokerHandle};
