//! Broker settings and topic configs.
//!
//! Every broker setting is a flag `--kebab-name`, an environment variable
//! `FJORD_UPPER_SNAKE_NAME` and a key in the TOML file given by `--config`, named after
//! Kafka's broker setting where one exists (`--log-retention-check-interval-ms`,
//! `FJORD_LOG_RETENTION_CHECK_INTERVAL_MS`, `log.retention.check.interval.ms`). Flags win
//! over the environment, which wins over the file, which wins over the defaults.
//!
//! Topic configs (`retention.ms`, `cleanup.policy`, ...) are Kafka's names; a topic's
//! overrides fall back to the broker's `log.*` defaults.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, parser::ValueSource};
use thiserror::Error;

use crate::storage::{CleanupPolicy, LogConfig, TimestampType};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("invalid value {value:?} for config {key}: {reason}")]
    InvalidValue {
        key: String,
        value: String,
        reason: String,
    },
    #[error("unknown config {key}")]
    UnknownKey { key: String },
    #[error("cannot read config file {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {source}")]
    Toml {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{0}")]
    Args(#[from] clap::Error),
}

/// The broker's settings. See the module docs for how they are given.
#[derive(Debug, Clone, Parser)]
#[command(name = "fjord-broker", version, about = "The Fjord broker")]
pub struct BrokerConfig {
    /// TOML file of settings, keyed by their dotted names (`log.retention.ms = 1000`).
    #[arg(long, env = "FJORD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where partitions are stored.
    #[arg(long, env = "FJORD_DATA_DIR", default_value = "./fjord-data")]
    pub data_dir: PathBuf,
    /// gRPC listener (the native API).
    #[arg(long, env = "FJORD_GRPC_ADDR", default_value = "127.0.0.1:9192")]
    pub grpc_addr: String,
    /// HTTP listener: /health and /metrics.
    #[arg(long, env = "FJORD_HTTP_ADDR", default_value = "127.0.0.1:9644")]
    pub http_addr: String,
    /// Kafka wire-protocol listener.
    #[arg(long, env = "FJORD_KAFKA_ADDR", default_value = "127.0.0.1:9092")]
    pub kafka_addr: String,
    /// The host:port Kafka clients are told to connect to (Metadata); default: the
    /// address the Kafka listener is bound to.
    #[arg(long, env = "FJORD_ADVERTISED_KAFKA_ADDR")]
    pub advertised_kafka_addr: Option<String>,
    /// The largest Kafka request frame; a larger one closes its connection.
    #[arg(
        long,
        env = "FJORD_SOCKET_REQUEST_MAX_BYTES",
        default_value_t = 104_857_600
    )]
    pub socket_request_max_bytes: usize,
    /// This broker's id in the cluster.
    #[arg(long, env = "FJORD_NODE_ID", default_value_t = 0)]
    pub node_id: u32,
    /// Partitions of a topic created without a count.
    #[arg(long, env = "FJORD_NUM_PARTITIONS", default_value_t = 1)]
    pub num_partitions: u32,
    /// Default max.message.bytes: the largest record batch accepted.
    #[arg(long, env = "FJORD_MESSAGE_MAX_BYTES", default_value_t = 1_048_588)]
    pub message_max_bytes: usize,
    /// Default segment.bytes.
    #[arg(long, env = "FJORD_LOG_SEGMENT_BYTES", default_value_t = 1 << 30)]
    pub log_segment_bytes: u64,
    /// Default segment.ms.
    #[arg(long, env = "FJORD_LOG_ROLL_MS", default_value_t = 7 * 24 * 3_600_000)]
    pub log_roll_ms: i64,
    /// Default retention.ms (-1: forever).
    #[arg(long, env = "FJORD_LOG_RETENTION_MS", default_value_t = 7 * 24 * 3_600_000)]
    pub log_retention_ms: i64,
    /// Default retention.bytes (-1: no limit).
    #[arg(
        long,
        env = "FJORD_LOG_RETENTION_BYTES",
        default_value_t = -1,
        allow_negative_numbers = true
    )]
    pub log_retention_bytes: i64,
    /// Default cleanup.policy.
    #[arg(long, env = "FJORD_LOG_CLEANUP_POLICY", default_value = "delete")]
    pub log_cleanup_policy: String,
    /// Default delete.retention.ms.
    #[arg(
        long,
        env = "FJORD_LOG_CLEANER_DELETE_RETENTION_MS",
        default_value_t = 86_400_000
    )]
    pub log_cleaner_delete_retention_ms: i64,
    /// Default min.cleanable.dirty.ratio.
    #[arg(
        long,
        env = "FJORD_LOG_CLEANER_MIN_CLEANABLE_RATIO",
        default_value_t = 0.5
    )]
    pub log_cleaner_min_cleanable_ratio: f64,
    /// Default message.timestamp.type (CreateTime or LogAppendTime).
    #[arg(
        long,
        env = "FJORD_LOG_MESSAGE_TIMESTAMP_TYPE",
        default_value = "CreateTime"
    )]
    pub log_message_timestamp_type: String,
    /// Default flush.messages: fsync after this many records (acks=all fsyncs anyway).
    #[arg(long, env = "FJORD_LOG_FLUSH_INTERVAL_MESSAGES", default_value_t = i64::MAX)]
    pub log_flush_interval_messages: i64,
    /// Default flush.ms: fsync at least this often (acks=all fsyncs anyway).
    #[arg(long, env = "FJORD_LOG_FLUSH_INTERVAL_MS", default_value_t = i64::MAX)]
    pub log_flush_interval_ms: i64,
    /// Default index.interval.bytes.
    #[arg(long, env = "FJORD_LOG_INDEX_INTERVAL_BYTES", default_value_t = 4096)]
    pub log_index_interval_bytes: u64,
    /// Default segment.index.bytes.
    #[arg(long, env = "FJORD_LOG_INDEX_SIZE_MAX_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub log_index_size_max_bytes: usize,
    /// Page cache an active segment keeps: only its newest this many bytes; older pages
    /// are written back as they go and dropped, so that appends reuse them instead of
    /// taking new memory (0 = keep all, as Kafka does; at least 4 MiB otherwise). A reader
    /// further behind reads from the disk. See `storage::drop_behind` for why.
    #[arg(long, env = "FJORD_LOG_DROP_BEHIND_BYTES", default_value_t = DROP_BEHIND_BYTES_DEFAULT)]
    pub log_drop_behind_bytes: u64,
    /// How often retention runs.
    #[arg(
        long,
        env = "FJORD_LOG_RETENTION_CHECK_INTERVAL_MS",
        default_value_t = 300_000
    )]
    pub log_retention_check_interval_ms: u64,
    /// Pause between compaction passes.
    #[arg(long, env = "FJORD_LOG_CLEANER_BACKOFF_MS", default_value_t = 15_000)]
    pub log_cleaner_backoff_ms: u64,
    /// Memory for the compaction offset map.
    #[arg(long, env = "FJORD_LOG_CLEANER_DEDUPE_BUFFER_SIZE", default_value_t = 128 * 1024 * 1024)]
    pub log_cleaner_dedupe_buffer_size: usize,
    /// How often recovery points are checkpointed.
    #[arg(
        long,
        env = "FJORD_LOG_FLUSH_OFFSET_CHECKPOINT_INTERVAL_MS",
        default_value_t = 60_000
    )]
    pub log_flush_offset_checkpoint_interval_ms: u64,
    /// Partitions of the internal `__consumer_offsets` topic (set when it is created).
    #[arg(long, env = "FJORD_OFFSETS_TOPIC_NUM_PARTITIONS", default_value_t = 16)]
    pub offsets_topic_num_partitions: u32,
    /// Consumer-group session timeout: a member silent this long is removed.
    #[arg(
        long,
        env = "FJORD_GROUP_CONSUMER_SESSION_TIMEOUT_MS",
        default_value_t = 45_000
    )]
    pub group_consumer_session_timeout_ms: i64,
    /// How often consumer-group members are asked to heartbeat.
    #[arg(
        long,
        env = "FJORD_GROUP_CONSUMER_HEARTBEAT_INTERVAL_MS",
        default_value_t = 5_000
    )]
    pub group_consumer_heartbeat_interval_ms: i64,
    /// The server-side assignor of consumer groups: range or uniform.
    #[arg(long, env = "FJORD_GROUP_CONSUMER_ASSIGNOR", default_value = "range")]
    pub group_consumer_assignor: String,
    /// How long an empty group of Kafka clients (classic protocol) waits for more
    /// members before its first generation (Kafka's group.initial.rebalance.delay.ms).
    #[arg(
        long,
        env = "FJORD_GROUP_INITIAL_REBALANCE_DELAY_MS",
        default_value_t = 3_000
    )]
    pub group_initial_rebalance_delay_ms: i64,
    /// How often the flush.ms policy is checked.
    #[arg(
        long,
        env = "FJORD_LOG_FLUSH_SCHEDULER_INTERVAL_MS",
        default_value_t = 1_000
    )]
    pub log_flush_scheduler_interval_ms: u64,
}

impl BrokerConfig {
    /// Parses flags and environment, then fills what neither gave from the TOML file.
    pub fn load<I, T>(args: I) -> Result<BrokerConfig, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let matches = Self::command().try_get_matches_from(args.clone())?;
        let first = Self::from_arg_matches(&matches)?;
        let Some(path) = first.config.clone() else {
            return Ok(first);
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::File {
            path: path.clone(),
            source,
        })?;
        let table: toml::Table = text.parse().map_err(|source| ConfigError::Toml {
            path: path.clone(),
            source,
        })?;
        // `a.b = 1` and `"a.b" = 1` and `[a] b = 1` all name setting `a.b`.
        fn flatten(prefix: &str, table: toml::Table, out: &mut Vec<(String, toml::Value)>) {
            for (key, value) in table {
                let key = if prefix.is_empty() {
                    key
                } else {
                    format!("{prefix}.{key}")
                };
                match value {
                    toml::Value::Table(inner) => flatten(&key, inner, out),
                    value => out.push((key, value)),
                }
            }
        }
        let mut settings = Vec::new();
        flatten("", table, &mut settings);
        let command = Self::command();
        for (key, value) in settings {
            let id = key.replace(['.', '-'], "_");
            if id == "config" || !command.get_arguments().any(|a| a.get_id().as_str() == id) {
                return Err(ConfigError::UnknownKey { key });
            }
            if matches.value_source(&id) != Some(ValueSource::DefaultValue) {
                continue; // a flag or the environment gave it
            }
            let value = match value {
                toml::Value::String(s) => s,
                other => other.to_string(),
            };
            args.push(format!("--{}={value}", id.replace('_', "-")).into());
        }
        let matches = Self::command().try_get_matches_from(args)?;
        Ok(Self::from_arg_matches(&matches)?)
    }

    /// Defaults, with the data directory and listeners given (embedding and tests; use
    /// port 0 for an ephemeral port). The Kafka listener takes an ephemeral port.
    pub fn embedded(data_dir: &std::path::Path, grpc_addr: &str, http_addr: &str) -> BrokerConfig {
        let mut config = BrokerConfig::parse_from(["fjord-broker"]);
        config.data_dir = data_dir.to_path_buf();
        config.grpc_addr = grpc_addr.to_owned();
        config.http_addr = http_addr.to_owned();
        config.kafka_addr = "127.0.0.1:0".to_owned();
        config
    }

    /// The topic config defaults these settings give.
    pub fn topic_defaults(&self) -> Result<TopicConfig, ConfigError> {
        let mut c = TopicConfig::default();
        let entries = [
            ("segment.bytes", self.log_segment_bytes.to_string()),
            ("segment.ms", self.log_roll_ms.to_string()),
            ("retention.ms", self.log_retention_ms.to_string()),
            ("retention.bytes", self.log_retention_bytes.to_string()),
            ("cleanup.policy", self.log_cleanup_policy.clone()),
            (
                "delete.retention.ms",
                self.log_cleaner_delete_retention_ms.to_string(),
            ),
            (
                "min.cleanable.dirty.ratio",
                self.log_cleaner_min_cleanable_ratio.to_string(),
            ),
            ("max.message.bytes", self.message_max_bytes.to_string()),
            (
                "message.timestamp.type",
                self.log_message_timestamp_type.clone(),
            ),
            (
                "flush.messages",
                self.log_flush_interval_messages.to_string(),
            ),
            ("flush.ms", self.log_flush_interval_ms.to_string()),
            (
                "index.interval.bytes",
                self.log_index_interval_bytes.to_string(),
            ),
            (
                "segment.index.bytes",
                self.log_index_size_max_bytes.to_string(),
            ),
        ];
        for (key, value) in entries {
            c.set(key, &value)?;
        }
        c.log.drop_behind_bytes = self.log_drop_behind_bytes;
        let value = self.log_drop_behind_bytes.to_string();
        c.log
            .validate()
            .map_err(|e| invalid_log_config(e, "log.drop.behind.bytes", &value))?;
        Ok(c)
    }
}

/// A log config that failed its checks, as the key it names (else the key being set).
fn invalid_log_config(e: crate::storage::StorageError, key: &str, value: &str) -> ConfigError {
    match e {
        crate::storage::StorageError::InvalidConfig { key, value, reason } => {
            ConfigError::InvalidValue {
                key: key.into(),
                value,
                reason,
            }
        }
        other => ConfigError::InvalidValue {
            key: key.into(),
            value: value.into(),
            reason: other.to_string(),
        },
    }
}

/// `log.drop.behind.bytes` by default: 128 MiB of each active segment stay in the page
/// cache (W1 ran as fast with 32, 64 and 128 MiB; the more, the further a reader may fall
/// behind before it reads from the disk).
pub const DROP_BEHIND_BYTES_DEFAULT: u64 = 128 * 1024 * 1024;

/// The largest `max.message.bytes`: one batch must fit in one fetch response.
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The topic configs Fjord knows, Kafka's names.
pub const TOPIC_CONFIG_KEYS: &[&str] = &[
    "cleanup.policy",
    "delete.retention.ms",
    "flush.messages",
    "flush.ms",
    "index.interval.bytes",
    "max.message.bytes",
    "message.timestamp.type",
    "min.cleanable.dirty.ratio",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.index.bytes",
    "segment.ms",
];

/// A topic's effective configuration: the log's settings plus the flush policy.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicConfig {
    pub log: LogConfig,
    /// fsync after this many records since the last fsync (acks=all fsyncs anyway).
    pub flush_messages: i64,
    /// fsync when the last fsync is older than this.
    pub flush_ms: i64,
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            log: LogConfig::default(),
            flush_messages: i64::MAX,
            flush_ms: i64::MAX,
        }
    }
}

fn parse<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    value
        .trim()
        .parse()
        .map_err(|e: T::Err| ConfigError::InvalidValue {
            key: key.to_owned(),
            value: value.to_owned(),
            reason: e.to_string(),
        })
}

impl TopicConfig {
    /// Sets one config by its Kafka name, checking the value; on error nothing changes.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let mut next = self.clone();
        next.apply(key, value)?;
        *self = next;
        Ok(())
    }

    fn apply(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let log = &mut self.log;
        match key {
            "cleanup.policy" => {
                log.cleanup_policy =
                    CleanupPolicy::parse(value).map_err(|e| ConfigError::InvalidValue {
                        key: key.into(),
                        value: value.into(),
                        reason: e.to_string(),
                    })?
            }
            "delete.retention.ms" => log.delete_retention_ms = parse(key, value)?,
            "flush.messages" => self.flush_messages = parse(key, value)?,
            "flush.ms" => self.flush_ms = parse(key, value)?,
            "index.interval.bytes" => log.index_interval_bytes = parse(key, value)?,
            "max.message.bytes" => log.max_message_bytes = parse(key, value)?,
            "message.timestamp.type" => {
                log.message_timestamp_type = match value.trim() {
                    "CreateTime" => TimestampType::CreateTime,
                    "LogAppendTime" => TimestampType::LogAppendTime,
                    _ => {
                        return Err(ConfigError::InvalidValue {
                            key: key.into(),
                            value: value.into(),
                            reason: "expected CreateTime or LogAppendTime".into(),
                        });
                    }
                }
            }
            "min.cleanable.dirty.ratio" => log.min_cleanable_dirty_ratio = parse(key, value)?,
            "retention.bytes" => log.retention_bytes = parse(key, value)?,
            "retention.ms" => log.retention_ms = parse(key, value)?,
            "segment.bytes" => log.segment_bytes = parse(key, value)?,
            "segment.index.bytes" => log.segment_index_bytes = parse(key, value)?,
            "segment.ms" => log.segment_ms = parse(key, value)?,
            _ => return Err(ConfigError::UnknownKey { key: key.into() }),
        }
        if self.log.max_message_bytes > MESSAGE_BYTES_MAX {
            return Err(ConfigError::InvalidValue {
                key: key.into(),
                value: value.into(),
                reason: format!("at most {MESSAGE_BYTES_MAX} (what one fetch can carry)"),
            });
        }
        if self.flush_messages < 1 || self.flush_ms < 0 {
            return Err(ConfigError::InvalidValue {
                key: key.into(),
                value: value.into(),
                reason: "must be positive".into(),
            });
        }
        self.log
            .validate()
            .map_err(|e| invalid_log_config(e, key, value))
    }

    /// The defaults with `overrides` applied.
    pub fn with_overrides(
        defaults: &TopicConfig,
        overrides: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut config = defaults.clone();
        for (key, value) in overrides {
            config.set(key, value)?;
        }
        Ok(config)
    }

    /// Every config with its effective value, Kafka's names and formats.
    pub fn entries(&self) -> Vec<(String, String)> {
        let log = &self.log;
        let policy = match (log.cleanup_policy.compact, log.cleanup_policy.delete) {
            (true, true) => "compact,delete",
            (true, false) => "compact",
            _ => "delete",
        };
        let ts = match log.message_timestamp_type {
            TimestampType::CreateTime => "CreateTime",
            TimestampType::LogAppendTime => "LogAppendTime",
        };
        vec![
            ("cleanup.policy".into(), policy.into()),
            (
                "delete.retention.ms".into(),
                log.delete_retention_ms.to_string(),
            ),
            ("flush.messages".into(), self.flush_messages.to_string()),
            ("flush.ms".into(), self.flush_ms.to_string()),
            (
                "index.interval.bytes".into(),
                log.index_interval_bytes.to_string(),
            ),
            (
                "max.message.bytes".into(),
                log.max_message_bytes.to_string(),
            ),
            ("message.timestamp.type".into(), ts.into()),
            (
                "min.cleanable.dirty.ratio".into(),
                log.min_cleanable_dirty_ratio.to_string(),
            ),
            ("retention.bytes".into(), log.retention_bytes.to_string()),
            ("retention.ms".into(), log.retention_ms.to_string()),
            ("segment.bytes".into(), log.segment_bytes.to_string()),
            (
                "segment.index.bytes".into(),
                log.segment_index_bytes.to_string(),
            ),
            ("segment.ms".into(), log.segment_ms.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_env_over_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fjord.toml");
        std::fs::write(
            &file,
            concat!(
                "\"log.retention.check.interval.ms\" = 500\n",
                "num.partitions = 3\n",
                "grpc.addr = \"127.0.0.1:1\"\n",
            ),
        )
        .unwrap();
        let config = BrokerConfig::load([
            "fjord-broker",
            "--config",
            file.to_str().unwrap(),
            "--grpc-addr",
            "127.0.0.1:2",
        ])
        .unwrap();
        assert_eq!(config.log_retention_check_interval_ms, 500);
        assert_eq!(config.num_partitions, 3);
        assert_eq!(config.grpc_addr, "127.0.0.1:2", "the flag wins");
        assert_eq!(config.http_addr, "127.0.0.1:9644", "default");
        std::fs::write(&file, "no.such.setting = 1\n").unwrap();
        let err =
            BrokerConfig::load(["fjord-broker", "--config", file.to_str().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("no.such.setting"), "{err}");
    }

    #[test]
    fn the_broker_keeps_128_mib_of_each_active_segment_cached_unless_told() {
        let defaults = |args: &[&str]| {
            let args = [&["fjord-broker"], args].concat();
            BrokerConfig::load(args).unwrap().topic_defaults()
        };
        assert_eq!(defaults(&[]).unwrap().log.drop_behind_bytes, 128 << 20);
        let off = defaults(&["--log-drop-behind-bytes", "0"]).unwrap();
        assert_eq!(off.log.drop_behind_bytes, 0, "Kafka's way");
        let err = defaults(&["--log-drop-behind-bytes", "4096"]).unwrap_err();
        assert!(err.to_string().contains("log.drop.behind.bytes"), "{err}");
    }

    #[test]
    fn topic_configs_are_checked_and_name_the_key() {
        let mut c = TopicConfig::default();
        c.set("retention.ms", "1000").unwrap();
        c.set("cleanup.policy", "compact,delete").unwrap();
        assert_eq!(c.log.retention_ms, 1000);
        let err = c.set("retention.ms", "soon").unwrap_err().to_string();
        assert!(err.contains("retention.ms"), "{err}");
        let err = c.set("retentoin.ms", "1").unwrap_err().to_string();
        assert!(err.contains("retentoin.ms"), "{err}");
        let err = c
            .set("min.cleanable.dirty.ratio", "2")
            .unwrap_err()
            .to_string();
        assert!(err.contains("min.cleanable.dirty.ratio"), "{err}");
        assert_eq!(c.entries().len(), TOPIC_CONFIG_KEYS.len());
    }
}
