//! Per-log settings (Kafka's topic configs) and the storage limits, in one place.

use super::{Result, StorageError};

/// Largest `segment.bytes`: file positions in the offset index are u32.
pub const SEGMENT_BYTES_MAX: u64 = i32::MAX as u64;
const _: () = assert!(SEGMENT_BYTES_MAX <= u32::MAX as u64);
/// Smallest `segment.bytes` (Kafka's lower bound is 14 bytes; one batch header is 61).
pub const SEGMENT_BYTES_MIN: u64 = 64;
/// Largest preallocated index file.
pub const SEGMENT_INDEX_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Largest `max.message.bytes`: one batch must fit in one segment.
pub const MESSAGE_BYTES_MAX: usize = SEGMENT_BYTES_MAX as usize;
/// Default cleaner offset map size (Kafka's `log.cleaner.dedupe.buffer.size` is 128 MiB).
pub const CLEANER_DEDUPE_BUFFER_BYTES_DEFAULT: usize = 128 * 1024 * 1024;

/// `cleanup.policy`: `delete`, `compact`, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupPolicy {
    pub delete: bool,
    pub compact: bool,
}

impl CleanupPolicy {
    pub const DELETE: CleanupPolicy = CleanupPolicy {
        delete: true,
        compact: false,
    };
    pub const COMPACT: CleanupPolicy = CleanupPolicy {
        delete: false,
        compact: true,
    };
    pub const COMPACT_DELETE: CleanupPolicy = CleanupPolicy {
        delete: true,
        compact: true,
    };

    /// Parses Kafka's list form: `delete`, `compact`, `compact,delete` (any order).
    pub fn parse(value: &str) -> Result<Self> {
        let mut policy = CleanupPolicy {
            delete: false,
            compact: false,
        };
        for part in value.split(',').map(str::trim) {
            match part {
                "delete" => policy.delete = true,
                "compact" => policy.compact = true,
                _ => {
                    return Err(StorageError::InvalidConfig {
                        key: "cleanup.policy",
                        value: value.to_owned(),
                        reason: "expected delete, compact or compact,delete".into(),
                    });
                }
            }
        }
        Ok(policy)
    }
}

/// `message.timestamp.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

/// The settings of one log. Defaults are Kafka's.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// `segment.bytes`: roll when the active segment would grow past this.
    pub segment_bytes: u64,
    /// `segment.ms`: roll when the active segment is older than this.
    pub segment_ms: i64,
    /// `segment.index.bytes`: preallocated size of each index file.
    pub segment_index_bytes: usize,
    /// `index.interval.bytes`: bytes of log between two offset-index entries.
    pub index_interval_bytes: u64,
    /// `retention.ms`: delete sealed segments whose newest record is older; -1 = forever.
    pub retention_ms: i64,
    /// `retention.bytes`: delete the oldest sealed segments while the log is larger; -1 = no limit.
    pub retention_bytes: i64,
    pub cleanup_policy: CleanupPolicy,
    /// `delete.retention.ms`: how long a tombstone survives compaction.
    pub delete_retention_ms: i64,
    /// `min.cleanable.dirty.ratio`
    pub min_cleanable_dirty_ratio: f64,
    /// `max.message.bytes`: the largest batch accepted.
    pub max_message_bytes: usize,
    /// `message.timestamp.type`
    pub message_timestamp_type: TimestampType,
    /// Kafka's broker-level `producer.id.expiration.ms`: an idempotent producer silent
    /// this long is forgotten (not a topic config).
    pub producer_id_expiration_ms: i64,
    /// The broker's `log.drop.behind.bytes` (not a topic config): an active segment keeps
    /// only its newest this many bytes in the page cache; 0 keeps all (Kafka's way, and
    /// this type's default; the broker's is 128 MiB).
    pub drop_behind_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1024 * 1024 * 1024,
            segment_ms: 7 * 24 * 60 * 60 * 1000,
            segment_index_bytes: 10 * 1024 * 1024,
            index_interval_bytes: 4096,
            retention_ms: 7 * 24 * 60 * 60 * 1000,
            retention_bytes: -1,
            cleanup_policy: CleanupPolicy::DELETE,
            delete_retention_ms: 24 * 60 * 60 * 1000,
            min_cleanable_dirty_ratio: 0.5,
            max_message_bytes: 1024 * 1024 + 12,
            message_timestamp_type: TimestampType::CreateTime,
            producer_id_expiration_ms: 24 * 60 * 60 * 1000,
            drop_behind_bytes: 0,
        }
    }
}

impl LogConfig {
    /// Checks every value against its limits; the error names the key.
    pub fn validate(&self) -> Result<()> {
        fn bad(key: &'static str, value: impl ToString, reason: &str) -> Result<()> {
            Err(StorageError::InvalidConfig {
                key,
                value: value.to_string(),
                reason: reason.into(),
            })
        }
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return bad(
                "segment.bytes",
                self.segment_bytes,
                "out of range [64, 2147483647]",
            );
        }
        if self.segment_ms < 1 {
            return bad("segment.ms", self.segment_ms, "must be at least 1");
        }
        if !(64..=SEGMENT_INDEX_BYTES_MAX).contains(&self.segment_index_bytes) {
            return bad(
                "segment.index.bytes",
                self.segment_index_bytes,
                "out of range",
            );
        }
        if self.index_interval_bytes == 0 {
            return bad("index.interval.bytes", 0, "must be positive");
        }
        if self.retention_ms < -1 {
            return bad("retention.ms", self.retention_ms, "must be -1 or positive");
        }
        if self.retention_bytes < -1 {
            return bad(
                "retention.bytes",
                self.retention_bytes,
                "must be -1 or positive",
            );
        }
        if self.delete_retention_ms < 0 {
            return bad(
                "delete.retention.ms",
                self.delete_retention_ms,
                "must be >= 0",
            );
        }
        if !(0.0..=1.0).contains(&self.min_cleanable_dirty_ratio) {
            return bad(
                "min.cleanable.dirty.ratio",
                self.min_cleanable_dirty_ratio,
                "must be within [0, 1]",
            );
        }
        if self.max_message_bytes < fjord_protocol::batch::HEADER_SIZE
            || self.max_message_bytes > MESSAGE_BYTES_MAX
        {
            return bad("max.message.bytes", self.max_message_bytes, "out of range");
        }
        let step = super::drop_behind::STEP;
        if self.drop_behind_bytes != 0 && self.drop_behind_bytes < step {
            return bad(
                "log.drop.behind.bytes",
                self.drop_behind_bytes,
                "must be 0 (keep all) or at least 4194304",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_behind_is_off_or_at_least_one_step() {
        for (bytes, ok) in [(0, true), (4 << 20, true), (1 << 30, true), (1, false)] {
            let config = LogConfig {
                drop_behind_bytes: bytes,
                ..LogConfig::default()
            };
            assert_eq!(config.validate().is_ok(), ok, "{bytes}");
        }
        let config = LogConfig {
            drop_behind_bytes: (4 << 20) - 1,
            ..LogConfig::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("log.drop.behind.bytes"), "{error}");
    }

    #[test]
    fn parses_cleanup_policies() {
        assert_eq!(
            CleanupPolicy::parse("delete").unwrap(),
            CleanupPolicy::DELETE
        );
        assert_eq!(
            CleanupPolicy::parse("compact").unwrap(),
            CleanupPolicy::COMPACT
        );
        assert_eq!(
            CleanupPolicy::parse("compact,delete").unwrap(),
            CleanupPolicy::COMPACT_DELETE
        );
        let err = CleanupPolicy::parse("shred").unwrap_err().to_string();
        assert!(err.contains("cleanup.policy"), "{err}");
    }

    #[test]
    fn validation_names_the_key() {
        let config = LogConfig {
            min_cleanable_dirty_ratio: 1.5,
            ..LogConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("min.cleanable.dirty.ratio"), "{err}");
        assert!(LogConfig::default().validate().is_ok());
    }
}
