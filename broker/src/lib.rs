//! The Fjord broker.
//!
//! - [`storage`]: the on-disk log of one partition (segments, indexes, recovery, retention,
//!   compaction). No networking.
pub mod storage;
