//! Topics: create, delete, list, describe, alter configs; persisted so a restart keeps
//! them. Each topic's metadata is a checkpoint file `<data-dir>/__topics/<name>.topic`
//! (partition count and config overrides, CRC-32 protected); each partition's log is
//! `<data-dir>/<name>-<partition>/`.
//!
//! Threading: `Sync`; the topic map is behind a `RwLock`, partitions are `Arc`s that
//! requests keep while they run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use thiserror::Error;

use crate::config::{ConfigError, TopicConfig};
use crate::partition::{FlushPolicy, Partition};
use crate::storage::{Clock, Log, StorageError, checkpoint};

/// The longest topic name (Kafka's limit).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
/// The most partitions a topic may have.
pub const PARTITIONS_MAX: u32 = 10_000;

const TOPICS_DIR: &str = "__topics";

#[derive(Debug, Error)]
pub enum TopicError {
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    #[error("topic {topic} has no partition {partition} (it has {count})")]
    UnknownPartition {
        topic: String,
        partition: u32,
        count: u32,
    },
    #[error("topic {0} already exists")]
    AlreadyExists(String),
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid partition count {0}: must be 1 to {PARTITIONS_MAX}")]
    InvalidPartitions(u32),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// One topic.
#[derive(Debug)]
pub struct Topic {
    pub name: String,
    pub partitions: Vec<Arc<Partition>>,
    pub overrides: BTreeMap<String, String>,
    pub config: TopicConfig,
}

/// All topics of the broker. See the module docs.
#[derive(Debug)]
pub struct TopicManager {
    data_dir: PathBuf,
    defaults: TopicConfig,
    default_partitions: u32,
    clock: Arc<dyn Clock>,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Names being created: reserved while their logs open outside the `topics` lock.
    creating: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

/// Kafka's rules: 1-249 of `[a-zA-Z0-9._-]`, not `.` or `..`; `__` is reserved.
pub fn validate_name(name: &str) -> Result<(), TopicError> {
    let bad = |reason| {
        Err(TopicError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > TOPIC_NAME_BYTES_MAX {
        return bad("longer than 249 characters");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not allowed");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return bad("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    if name.starts_with("__") {
        return bad("names starting with '__' are reserved");
    }
    Ok(())
}

fn flush_policy(config: &TopicConfig) -> FlushPolicy {
    FlushPolicy {
        flush_messages: config.flush_messages,
        flush_ms: config.flush_ms,
    }
}

impl TopicManager {
    /// Opens every topic found under `data_dir` (recovering their logs).
    pub fn open(
        data_dir: &Path,
        defaults: TopicConfig,
        default_partitions: u32,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, TopicError> {
        let meta_dir = data_dir.join(TOPICS_DIR);
        std::fs::create_dir_all(&meta_dir).map_err(|source| StorageError::Io {
            path: meta_dir.clone(),
            source,
        })?;
        let manager = TopicManager {
            data_dir: data_dir.to_path_buf(),
            defaults,
            default_partitions,
            clock,
            topics: RwLock::new(BTreeMap::new()),
            creating: std::sync::Mutex::new(Default::default()),
        };
        manager.sweep_deleted()?;
        let entries = std::fs::read_dir(&meta_dir).map_err(|source| StorageError::Io {
            path: meta_dir.clone(),
            source,
        })?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| StorageError::Io {
                path: meta_dir.clone(),
                source,
            })?;
            let file = entry.file_name().to_string_lossy().into_owned();
            if let Some(name) = file.strip_suffix(".topic") {
                names.push(name.to_owned());
            }
        }
        names.sort();
        for name in names {
            let (count, overrides) = manager.read_meta(&name)?;
            let topic = manager.open_topic(&name, count, overrides)?;
            tracing::info!(topic = %name, partitions = count, "loaded topic");
            manager.write_topics().insert(name, Arc::new(topic));
        }
        Ok(manager)
    }

    fn write_topics(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Topic>>> {
        self.topics.write().unwrap_or_else(|p| p.into_inner())
    }
    fn read_topics(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Topic>>> {
        self.topics.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes partition directories that a deletion renamed (`<name>-<p>.<n>-delete`) but
    /// did not finish removing before a crash.
    fn sweep_deleted(&self) -> Result<(), TopicError> {
        let io = |source| StorageError::Io {
            path: self.data_dir.clone(),
            source,
        };
        for entry in std::fs::read_dir(&self.data_dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.is_dir() && path.to_string_lossy().ends_with("-delete") {
                tracing::info!(dir = %path.display(), "removing the data of a deleted topic");
                std::fs::remove_dir_all(&path)
                    .map_err(|source| StorageError::Io { path, source })?;
            }
        }
        Ok(())
    }

    fn meta_path(&self, name: &str) -> PathBuf {
        self.data_dir.join(TOPICS_DIR).join(format!("{name}.topic"))
    }

    fn partition_dir(&self, name: &str, partition: u32) -> PathBuf {
        self.data_dir.join(format!("{name}-{partition}"))
    }

    fn read_meta(&self, name: &str) -> Result<(u32, BTreeMap<String, String>), TopicError> {
        let path = self.meta_path(name);
        let corrupt = |reason: &str| StorageError::CorruptCheckpoint {
            path: path.clone(),
            reason: reason.into(),
        };
        let entries = checkpoint::read(&path)?.ok_or_else(|| corrupt("missing"))?;
        let mut count = None;
        let mut overrides = BTreeMap::new();
        for (key, value) in entries {
            if key == "partitions" {
                count = Some(value.parse().map_err(|_| corrupt("bad partitions"))?);
            } else if let Some(config) = key.strip_prefix("config:") {
                overrides.insert(config.to_owned(), value);
            }
        }
        Ok((count.ok_or_else(|| corrupt("no partitions"))?, overrides))
    }

    fn write_meta(
        &self,
        name: &str,
        count: u32,
        overrides: &BTreeMap<String, String>,
    ) -> Result<(), TopicError> {
        let keys: Vec<String> = overrides.keys().map(|k| format!("config:{k}")).collect();
        let mut entries: Vec<(&str, String)> = vec![("partitions", count.to_string())];
        for (key, value) in keys.iter().zip(overrides.values()) {
            entries.push((key.as_str(), value.clone()));
        }
        checkpoint::write(&self.meta_path(name), &entries)?;
        Ok(())
    }

    fn open_topic(
        &self,
        name: &str,
        count: u32,
        overrides: BTreeMap<String, String>,
    ) -> Result<Topic, TopicError> {
        let config = TopicConfig::with_overrides(&self.defaults, &overrides)?;
        let mut partitions = Vec::with_capacity(count as usize);
        for p in 0..count {
            let log = Log::open(
                &self.partition_dir(name, p),
                config.log.clone(),
                self.clock.clone(),
            )?;
            partitions.push(Arc::new(Partition::new(
                name,
                p,
                log,
                flush_policy(&config),
            )));
        }
        Ok(Topic {
            name: name.to_owned(),
            partitions,
            overrides,
            config,
        })
    }

    pub fn defaults(&self) -> &TopicConfig {
        &self.defaults
    }

    /// `num.partitions`: the count of a topic created without one.
    pub fn default_partitions(&self) -> u32 {
        self.default_partitions
    }

    /// Creates a topic; `partitions == 0` means `default_partitions`.
    pub fn create(
        &self,
        name: &str,
        partitions: u32,
        overrides: BTreeMap<String, String>,
    ) -> Result<Arc<Topic>, TopicError> {
        validate_name(name)?;
        self.create_unchecked(name, partitions, overrides)
    }

    /// Creates an internal topic (`__consumer_offsets`): a reserved name is allowed.
    pub fn create_internal(
        &self,
        name: &str,
        partitions: u32,
        overrides: BTreeMap<String, String>,
    ) -> Result<Arc<Topic>, TopicError> {
        self.create_unchecked(name, partitions, overrides)
    }

    fn create_unchecked(
        &self,
        name: &str,
        partitions: u32,
        overrides: BTreeMap<String, String>,
    ) -> Result<Arc<Topic>, TopicError> {
        if partitions == 0 || partitions > PARTITIONS_MAX {
            return Err(TopicError::InvalidPartitions(partitions));
        }
        // Check the configs before anything touches the disk.
        TopicConfig::with_overrides(&self.defaults, &overrides)?;
        // Reserve the name, then open the logs without holding the topic map's lock (a
        // large topic takes a while to create; other requests go on meanwhile).
        {
            let topics = self.read_topics();
            let mut creating = self.creating.lock().unwrap_or_else(|p| p.into_inner());
            if topics.contains_key(name) || !creating.insert(name.to_owned()) {
                return Err(TopicError::AlreadyExists(name.to_owned()));
            }
        }
        let created = self.create_reserved(name, partitions, overrides);
        self.creating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        created
    }

    fn create_reserved(
        &self,
        name: &str,
        partitions: u32,
        overrides: BTreeMap<String, String>,
    ) -> Result<Arc<Topic>, TopicError> {
        // A directory left under this name belongs to no topic: start empty.
        for p in 0..partitions {
            let dir = self.partition_dir(name, p);
            if dir.exists() {
                let stale = dir.display();
                tracing::warn!(dir = %stale, "removing stale data before creating the topic");
                std::fs::remove_dir_all(&dir)
                    .map_err(|source| StorageError::Io { path: dir, source })?;
            }
        }
        let topic = Arc::new(self.open_topic(name, partitions, overrides)?);
        self.write_meta(name, partitions, &topic.overrides)?;
        self.write_topics().insert(name.to_owned(), topic.clone());
        tracing::info!(topic = %name, partitions, "created topic");
        Ok(topic)
    }

    /// Deletes a topic and its data. Requests in flight finish on the old partitions.
    pub fn delete(&self, name: &str) -> Result<(), TopicError> {
        let topic = self
            .write_topics()
            .remove(name)
            .ok_or_else(|| TopicError::UnknownTopic(name.to_owned()))?;
        // Retire every log under its lock: requests, the cleaner and background tasks
        // that still hold a partition can no longer write anything.
        for partition in &topic.partitions {
            partition.mark_deleted();
        }
        // Move the data out of the way before answering, so a topic created again under
        // this name starts in fresh directories; what a crash leaves is swept at startup.
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mut renamed = Vec::new();
        for partition in &topic.partitions {
            let dir = self.partition_dir(name, partition.id());
            let gone = self
                .data_dir
                .join(format!("{name}-{}.{stamp}-delete", partition.id()));
            match std::fs::rename(&dir, &gone) {
                Ok(()) => renamed.push(gone),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(StorageError::Io { path: dir, source }.into()),
            }
        }
        let path = self.meta_path(name);
        std::fs::remove_file(&path).map_err(|source| StorageError::Io { path, source })?;
        checkpoint::sync_dir(&self.data_dir)?;
        for dir in renamed {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove deleted data");
            }
        }
        tracing::info!(topic = %name, "deleted topic");
        Ok(())
    }

    pub fn get(&self, name: &str) -> Result<Arc<Topic>, TopicError> {
        self.read_topics()
            .get(name)
            .cloned()
            .ok_or_else(|| TopicError::UnknownTopic(name.to_owned()))
    }

    pub fn partition(&self, name: &str, partition: u32) -> Result<Arc<Partition>, TopicError> {
        let topic = self.get(name)?;
        topic
            .partitions
            .get(partition as usize)
            .cloned()
            .ok_or(TopicError::UnknownPartition {
                topic: name.to_owned(),
                partition,
                count: topic.partitions.len() as u32,
            })
    }

    pub fn list(&self) -> Vec<Arc<Topic>> {
        self.read_topics().values().cloned().collect()
    }

    /// Every partition of every topic.
    pub fn all_partitions(&self) -> Vec<Arc<Partition>> {
        self.read_topics()
            .values()
            .flat_map(|t| t.partitions.iter().cloned())
            .collect()
    }

    /// Sets and removes overrides; takes effect at once on every partition.
    pub fn alter(
        &self,
        name: &str,
        set: &[(String, String)],
        delete: &[String],
    ) -> Result<(), TopicError> {
        let mut topics = self.write_topics();
        let topic = topics
            .get(name)
            .ok_or_else(|| TopicError::UnknownTopic(name.to_owned()))?;
        let mut overrides = topic.overrides.clone();
        for key in delete {
            if !crate::config::TOPIC_CONFIG_KEYS.contains(&key.as_str()) {
                return Err(ConfigError::UnknownKey { key: key.clone() }.into());
            }
            overrides.remove(key);
        }
        for (key, value) in set {
            overrides.insert(key.clone(), value.clone());
        }
        let config = TopicConfig::with_overrides(&self.defaults, &overrides)?;
        self.write_meta(name, topic.partitions.len() as u32, &overrides)?;
        for partition in &topic.partitions {
            partition.log_mut().set_config(config.log.clone())?;
            partition.set_flush_policy(flush_policy(&config));
        }
        let updated = Topic {
            name: topic.name.clone(),
            partitions: topic.partitions.clone(),
            overrides,
            config,
        };
        topics.insert(name.to_owned(), Arc::new(updated));
        tracing::info!(topic = %name, "altered topic configs");
        Ok(())
    }

    /// Clean shutdown of every log: flush, checkpoint, clean-shutdown marker.
    pub fn close_all(&self) -> Result<(), TopicError> {
        let topics = std::mem::take(&mut *self.write_topics());
        let mut first_error = None;
        for (_, topic) in topics {
            let topic = Arc::try_unwrap(topic).unwrap_or_else(|shared| Topic {
                name: shared.name.clone(),
                partitions: shared.partitions.clone(),
                overrides: shared.overrides.clone(),
                config: shared.config.clone(),
            });
            for partition in topic.partitions {
                let log = partition.shared_log();
                drop(partition);
                let result = match Arc::try_unwrap(log) {
                    Ok(lock) => lock.into_inner().unwrap_or_else(|p| p.into_inner()).close(),
                    // Still shared (a request or the cleaner holds it): flush and checkpoint.
                    Err(shared) => {
                        let log = shared.read().unwrap_or_else(|p| p.into_inner());
                        log.flush().and_then(|_| log.checkpoint())
                    }
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "closing a log failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}
