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
    #[error("topic {topic} has {current} partitions, so {requested} would not add any")]
    PartitionsNotIncreased {
        topic: String,
        current: u32,
        requested: u32,
    },
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
    /// Names being created or grown: reserved while their logs open outside the `topics`
    /// lock.
    creating: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Serializes [`TopicManager::add_partitions`] calls.
    resizing: std::sync::Mutex<()>,
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
            resizing: std::sync::Mutex::new(()),
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
        let partitions = self.open_partitions(name, 0..count, &config)?;
        Ok(Topic {
            name: name.to_owned(),
            partitions,
            overrides,
            config,
        })
    }

    fn open_partitions(
        &self,
        name: &str,
        ids: std::ops::Range<u32>,
        config: &TopicConfig,
    ) -> Result<Vec<Arc<Partition>>, TopicError> {
        // Opening a log after a crash scans its tail (CRCs): the partitions are opened on
        // as many threads as there are cores, so a restart takes the longest one's time
        // rather than the sum.
        let ids: Vec<u32> = ids.collect();
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(ids.len())
            .max(1);
        let next = std::sync::atomic::AtomicUsize::new(0);
        let open_one = |p: u32| -> Result<Arc<Partition>, TopicError> {
            let log = Log::open(
                &self.partition_dir(name, p),
                config.log.clone(),
                self.clock.clone(),
            )?;
            Ok(Arc::new(Partition::new(name, p, log, flush_policy(config))))
        };
        let mut opened: Vec<(usize, Result<Arc<Partition>, TopicError>)> =
            std::thread::scope(|scope| {
                let workers: Vec<_> = (0..threads)
                    .map(|_| {
                        scope.spawn(|| {
                            let mut done = Vec::new();
                            loop {
                                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                let Some(&p) = ids.get(i) else { break done };
                                done.push((i, open_one(p)));
                            }
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .flat_map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                    .collect()
            });
        opened.sort_by_key(|(i, _)| *i);
        opened.into_iter().map(|(_, partition)| partition).collect()
    }

    /// Removes directories under partition ids that no topic owns (left by a crash
    /// between opening logs and writing the topic's metadata).
    fn remove_stale(&self, name: &str, ids: std::ops::Range<u32>) -> Result<(), TopicError> {
        for p in ids {
            let dir = self.partition_dir(name, p);
            if dir.exists() {
                let stale = dir.display();
                tracing::warn!(dir = %stale, "removing stale data before opening the partition");
                std::fs::remove_dir_all(&dir)
                    .map_err(|source| StorageError::Io { path: dir, source })?;
            }
        }
        Ok(())
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
        self.remove_stale(name, 0..partitions)?;
        let topic = Arc::new(self.open_topic(name, partitions, overrides)?);
        self.write_meta(name, partitions, &topic.overrides)?;
        self.write_topics().insert(name.to_owned(), topic.clone());
        tracing::info!(topic = %name, partitions, "created topic");
        Ok(topic)
    }

    /// Grows `name` to `new_total` partitions (Kafka's CreatePartitions): the new
    /// partitions' logs are opened outside the topic map's lock, then the metadata is
    /// rewritten and the grown topic swapped in. Existing partitions and their data are
    /// untouched. Blocking.
    pub fn add_partitions(&self, name: &str, new_total: u32) -> Result<Arc<Topic>, TopicError> {
        let _resizing = self.resizing.lock().unwrap_or_else(|p| p.into_inner());
        let before = self.get(name)?;
        let current = before.partitions.len() as u32;
        if new_total <= current {
            return Err(TopicError::PartitionsNotIncreased {
                topic: name.to_owned(),
                current,
                requested: new_total,
            });
        }
        if new_total > PARTITIONS_MAX {
            return Err(TopicError::InvalidPartitions(new_total));
        }
        // Reserve the name: a delete and re-create under it cannot then reuse the
        // directories being opened here.
        if !self
            .creating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned())
        {
            return Err(TopicError::UnknownTopic(name.to_owned()));
        }
        let grown = self.add_partitions_reserved(&before, new_total);
        self.creating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        grown
    }

    fn add_partitions_reserved(
        &self,
        before: &Arc<Topic>,
        new_total: u32,
    ) -> Result<Arc<Topic>, TopicError> {
        let name = before.name.as_str();
        let current = before.partitions.len() as u32;
        self.remove_stale(name, current..new_total)?;
        let added = self.open_partitions(name, current..new_total, &before.config)?;
        let mut topics = self.write_topics();
        // The topic may have been deleted meanwhile (its configs may have changed: they
        // are taken from the map, under its lock).
        let now = match topics.get(name) {
            Some(now)
                if now.partitions.len() == before.partitions.len()
                    && Arc::ptr_eq(&now.partitions[0], &before.partitions[0]) =>
            {
                now.clone()
            }
            _ => {
                drop(topics);
                for partition in &added {
                    partition.mark_deleted();
                }
                self.remove_stale(name, current..new_total)?;
                return Err(TopicError::UnknownTopic(name.to_owned()));
            }
        };
        for partition in &added {
            partition.log_mut().set_config(now.config.log.clone())?;
            partition.set_flush_policy(flush_policy(&now.config));
        }
        self.write_meta(name, new_total, &now.overrides)?;
        let mut partitions = now.partitions.clone();
        partitions.extend(added);
        let grown = Arc::new(Topic {
            name: now.name.clone(),
            partitions,
            overrides: now.overrides.clone(),
            config: now.config.clone(),
        });
        topics.insert(name.to_owned(), grown.clone());
        tracing::info!(topic = %name, from = current, partitions = new_total, "added partitions");
        Ok(grown)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::Acks;
    use crate::storage::ManualClock;
    use fjord_protocol::codec::{Compression, RecordInput, encode_batch};

    fn open(dir: &Path) -> TopicManager {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(0));
        TopicManager::open(dir, TopicConfig::default(), 1, clock).unwrap()
    }

    fn append(topics: &TopicManager, name: &str, partition: u32, value: &str) {
        let input = RecordInput::new(None, Some(value.as_bytes().to_vec()), 0);
        let batch = encode_batch(&[input], Compression::None).unwrap().to_vec();
        let partition = topics.partition(name, partition).unwrap();
        partition.append(&batch, Acks::Leader).unwrap();
    }

    #[test]
    fn a_grown_topic_keeps_its_count_configs_and_old_data_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let topics = open(dir.path());
        let overrides = BTreeMap::from([("retention.ms".to_owned(), "60000".to_owned())]);
        topics.create("orders", 2, overrides).unwrap();
        append(&topics, "orders", 0, "a");
        append(&topics, "orders", 1, "b");

        assert_eq!(
            topics.add_partitions("orders", 5).unwrap().partitions.len(),
            5
        );
        assert_eq!(topics.get("orders").unwrap().partitions.len(), 5);
        {
            let added = topics.partition("orders", 4).unwrap();
            assert_eq!(added.log().log_end_offset(), 0);
            assert_eq!(added.log().config().retention_ms, 60000);
        }
        append(&topics, "orders", 4, "c");
        topics.close_all().unwrap();
        drop(topics);

        let topics = open(dir.path());
        let topic = topics.get("orders").unwrap();
        assert_eq!(topic.partitions.len(), 5);
        assert_eq!(topic.overrides.get("retention.ms").unwrap(), "60000");
        let ends: Vec<i64> = topic
            .partitions
            .iter()
            .map(|p| p.log().log_end_offset())
            .collect();
        assert_eq!(ends, vec![1, 1, 0, 0, 1]);
    }

    #[test]
    fn adding_partitions_must_grow_the_topic() {
        let dir = tempfile::tempdir().unwrap();
        let topics = open(dir.path());
        topics.create("orders", 3, BTreeMap::new()).unwrap();
        for requested in [0, 2, 3] {
            let e = topics.add_partitions("orders", requested).unwrap_err();
            assert!(
                matches!(e, TopicError::PartitionsNotIncreased { current: 3, .. }),
                "{e}"
            );
        }
        let e = topics
            .add_partitions("orders", PARTITIONS_MAX + 1)
            .unwrap_err();
        assert!(matches!(e, TopicError::InvalidPartitions(_)), "{e}");
        let e = topics.add_partitions("missing", 4).unwrap_err();
        assert!(matches!(e, TopicError::UnknownTopic(_)), "{e}");
        assert_eq!(topics.get("orders").unwrap().partitions.len(), 3);
        // A delete leaves nothing behind that a later grow of a new topic would pick up.
        topics.add_partitions("orders", 4).unwrap();
        topics.delete("orders").unwrap();
        topics.create("orders", 1, BTreeMap::new()).unwrap();
        topics.add_partitions("orders", 4).unwrap();
        assert_eq!(
            topics
                .partition("orders", 3)
                .unwrap()
                .log()
                .log_end_offset(),
            0
        );
    }
}
