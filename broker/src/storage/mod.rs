//! The on-disk log of one partition. No networking, no async runtime.
//!
//! - [`log`]: [`Log`], one partition's ordered [`Segments`], offsets, high watermark,
//!   append / read / truncate / delete-records, recovery on open, clean shutdown.
//! - [`segment`]: [`Segment`], one `.log` file with its `.index` and `.timeindex`.
//! - [`index`]: the sparse, preallocated, memory-mapped [`OffsetIndex`] and [`TimeIndex`].
//! - [`mmap`]: the only module with `unsafe`: read-only and writable memory maps.
//! - [`checkpoint`]: Fjord's small checkpoint files (CRC-32 protected).
//! - [`epoch`]: the persisted leader-epoch cache.
//! - [`group_commit`]: many appenders, one fsync.
//! - [`retention`]: the pure retention planner (the executor is `Log::apply_retention`).
//! - [`cleaner`]: key compaction: the planner, the bounded offset map, the background
//!   [`Cleaner`] and the crash-safe segment swap.
//! - [`config`]: per-log settings and the limits (`*_MAX`) in one place.
//! - [`clock`]: the [`Clock`] seam so tests control time.
//! - [`drop_behind`]: `log.drop.behind.bytes`, the page cache an active segment keeps,
//!   and the broker-wide thread that drops the rest.

pub mod checkpoint;
pub mod cleaner;
pub mod clock;
pub mod config;
pub mod drop_behind;
pub mod epoch;
pub mod group_commit;
pub mod index;
pub mod log;
pub mod mmap;
pub mod producers;
pub mod retention;
pub mod segment;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod scenario_tests;
#[cfg(test)]
mod test_util;

use std::path::PathBuf;

use thiserror::Error;

pub use cleaner::{Cleaner, CleanerConfig, CleanerStats};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{CleanupPolicy, LogConfig, TimestampType};
pub use group_commit::GroupCommit;
pub use index::{OffsetIndex, TimeIndex};
pub use log::{AppendInfo, Log, ReadLimit, ReadResult, Segments};
pub use segment::Segment;

/// Errors of the storage layer. Operating conditions (I/O errors, corrupt files, bad
/// batches, offsets out of range) are errors; broken invariants are panics.
#[derive(Debug, Error)]
pub enum StorageError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid record batch at position {position} of the request: {source}")]
    InvalidBatch {
        position: usize,
        #[source]
        source: fjord_protocol::ProtocolError,
    },
    #[error("record batch of {size} bytes is larger than max.message.bytes ({limit})")]
    BatchTooLarge { size: usize, limit: usize },
    #[error(
        "offset {offset} is out of range: the log holds [{log_start_offset}, {log_end_offset})"
    )]
    OffsetOutOfRange {
        offset: i64,
        log_start_offset: i64,
        log_end_offset: i64,
    },
    #[error(
        "replicated batch at offset {base_offset} does not follow the log end offset \
         {log_end_offset}"
    )]
    NonMonotonicOffset {
        base_offset: i64,
        log_end_offset: i64,
    },
    #[error(
        "corrupt data in {path} at position {position}, below the recovery point \
         {recovery_point}: {reason}"
    )]
    CorruptHead {
        path: PathBuf,
        position: u64,
        recovery_point: i64,
        reason: String,
    },
    #[error("corrupt data in sealed segment {path} at position {position}: {reason}")]
    CorruptSegment {
        path: PathBuf,
        position: u64,
        reason: String,
    },
    #[error("log {dir} is offline after an I/O error; restart to recover it")]
    LogOffline { dir: PathBuf },
    #[error("log {dir} is in use by another process or log instance")]
    Locked { dir: PathBuf },
    #[error("corrupt checkpoint file {path}: {reason}")]
    CorruptCheckpoint { path: PathBuf, reason: String },
    #[error("out of order sequence from producer {producer_id}: expected {expected}, got {got}")]
    OutOfOrderSequence {
        producer_id: i64,
        expected: i32,
        got: i32,
    },
    #[error("producer {producer_id} epoch {epoch} is older than its current epoch {current}")]
    InvalidProducerEpoch {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    #[error(
        "a batch of producer {producer_id} was already written (a retry), in a request \
         of several batches"
    )]
    DuplicateSequence { producer_id: i64 },
    #[error("cannot delete records before {offset}: above the high watermark {high_watermark}")]
    DeleteBeyondHighWatermark { offset: i64, high_watermark: i64 },
    #[error("invalid value {value:?} for config {key}: {reason}")]
    InvalidConfig {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("the cleaner's offset map ({entries} entries) cannot hold the keys of one batch")]
    CleanerMapTooSmall { entries: usize },
    #[error("record codec error: {0}")]
    Codec(#[source] fjord_protocol::ProtocolError),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Attaches the path to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| StorageError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}
