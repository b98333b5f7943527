//! The leader-epoch cache: for each leader epoch, the first offset written in it
//! (Kafka's `LeaderEpochFileCache`), persisted in `leader-epoch-checkpoint`. Replication
//! uses it to find where a follower's history diverges from the leader's.
//!
//! An append that starts a new epoch changes the cache in memory only: the file is
//! written by the next flush, before the recovery point passes the data (Kafka's
//! KAFKA-15046), not with an fsync under the log's lock in the append's path (the first
//! append of every new partition, and of every new epoch). Recovery rebuilds the entries
//! of everything after the recovery point from the batches it scans.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{Result, StorageError, checkpoint};

pub const FILE_NAME: &str = "leader-epoch-checkpoint";

/// `(epoch, start_offset)` pairs, both strictly increasing. Single owner (the `Log`).
#[derive(Debug)]
pub struct LeaderEpochCache {
    path: PathBuf,
    entries: Vec<(i32, i64)>,
    /// Counts the changes of `entries`.
    version: u64,
    file: Arc<FileState>,
}

/// What the file holds, shared by the cache and its pending writes.
#[derive(Debug, Default)]
struct FileState {
    /// The newest version in the file; read without waiting for a writer.
    version: AtomicU64,
    /// Serializes the writers (a flush job runs without the log's lock, and the writers
    /// share a temporary file name). True once the log is retired: its directory may be
    /// deleted or reused by a new log of the same name, and nothing writes there again.
    retired: Mutex<bool>,
}

/// A version of the entries that the file does not hold yet: written by
/// [`EpochWrite::run`], unless a newer one got there first.
#[derive(Debug)]
pub struct EpochWrite {
    path: PathBuf,
    entries: Vec<(i32, i64)>,
    version: u64,
    file: Arc<FileState>,
}

impl EpochWrite {
    /// Writes the file (atomically, fsync'd) if it holds an older version, unless the log
    /// was retired.
    pub fn run(&self) -> Result<()> {
        let retired = self.file.retired.lock().unwrap_or_else(|p| p.into_inner());
        if *retired || self.file.version.load(Ordering::SeqCst) >= self.version {
            return Ok(());
        }
        let lines: Vec<(String, String)> = self
            .entries
            .iter()
            .map(|(e, o)| (e.to_string(), o.to_string()))
            .collect();
        let refs: Vec<(&str, String)> =
            lines.iter().map(|(e, o)| (e.as_str(), o.clone())).collect();
        checkpoint::write(&self.path, &refs)?;
        self.file.version.store(self.version, Ordering::SeqCst);
        Ok(())
    }
}

impl LeaderEpochCache {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(FILE_NAME);
        let mut entries = Vec::new();
        if let Some(lines) = checkpoint::read(&path)? {
            for (epoch, offset) in lines {
                let corrupt = || StorageError::CorruptCheckpoint {
                    path: path.clone(),
                    reason: format!("bad entry {epoch:?} {offset:?}"),
                };
                let epoch: i32 = epoch.parse().map_err(|_| corrupt())?;
                let offset: i64 = offset.parse().map_err(|_| corrupt())?;
                entries.push((epoch, offset));
            }
        }
        Ok(LeaderEpochCache {
            path,
            entries,
            version: 0,
            file: Arc::default(),
        })
    }

    pub fn entries(&self) -> &[(i32, i64)] {
        &self.entries
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|e| e.0)
    }

    /// Records that `epoch` starts at `start_offset`, if it is newer than the latest.
    /// In memory only: [`pending`](Self::pending) has it written.
    pub fn assign(&mut self, epoch: i32, start_offset: i64) {
        if epoch < 0 {
            return;
        }
        match self.entries.last() {
            Some(&(last, _)) if last >= epoch => {}
            _ => {
                self.entries.push((epoch, start_offset));
                self.version += 1;
            }
        }
    }

    /// The write that brings the file up to date, if it is behind.
    pub fn pending(&self) -> Option<EpochWrite> {
        let written = self.file.version.load(Ordering::SeqCst);
        (written < self.version).then(|| EpochWrite {
            path: self.path.clone(),
            entries: self.entries.clone(),
            version: self.version,
            file: Arc::clone(&self.file),
        })
    }

    /// No write touches the file from now on, not even one already pending (waits for
    /// one under way).
    pub fn retire(&self) {
        *self.file.retired.lock().unwrap_or_else(|p| p.into_inner()) = true;
    }

    /// Brings the file up to date now.
    pub fn persist(&self) -> Result<()> {
        self.pending().map_or(Ok(()), |write| write.run())
    }

    /// Forgets epochs that start at or after `end_offset` (after a truncation).
    pub fn truncate_from_end(&mut self, end_offset: i64) -> Result<()> {
        let before = self.entries.len();
        self.entries.retain(|&(_, start)| start < end_offset);
        if self.entries.len() != before {
            self.version += 1;
        }
        self.persist()
    }

    /// Drops epochs wholly below `start_offset` and moves the first one up to it.
    pub fn truncate_from_start(&mut self, start_offset: i64) -> Result<()> {
        let keep_from = self
            .entries
            .iter()
            .rposition(|&(_, start)| start <= start_offset)
            .unwrap_or(0);
        if keep_from == 0 && self.entries.first().is_none_or(|e| e.1 >= start_offset) {
            return Ok(());
        }
        self.entries.drain(..keep_from);
        if let Some(first) = self.entries.first_mut() {
            first.1 = first.1.max(start_offset);
        }
        self.version += 1;
        self.persist()
    }

    /// Kafka's OffsetForLeaderEpoch: the largest epoch <= `epoch` and the offset where the
    /// epoch after it starts (or `log_end_offset` for the latest epoch).
    pub fn end_offset_for(&self, epoch: i32, log_end_offset: i64) -> Option<(i32, i64)> {
        let i = self.entries.iter().rposition(|&(e, _)| e <= epoch)?;
        let end = self
            .entries
            .get(i + 1)
            .map(|e| e.1)
            .unwrap_or(log_end_offset);
        Some((self.entries[i].0, end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigns_truncates_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = LeaderEpochCache::load(dir.path()).unwrap();
        cache.assign(0, 0);
        cache.assign(0, 5);
        cache.assign(2, 10);
        cache.assign(5, 30);
        assert_eq!(cache.end_offset_for(0, 40), Some((0, 10)));
        assert_eq!(cache.end_offset_for(3, 40), Some((2, 30)));
        assert_eq!(cache.end_offset_for(9, 40), Some((5, 40)));
        cache.truncate_from_end(30).unwrap();
        cache.truncate_from_start(12).unwrap();
        let reloaded = LeaderEpochCache::load(dir.path()).unwrap();
        assert_eq!(reloaded.entries(), &[(2, 12)]);
    }

    #[test]
    fn an_assignment_is_written_by_its_pending_write_and_only_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = LeaderEpochCache::load(dir.path()).unwrap();
        assert!(cache.pending().is_none());
        cache.assign(3, 0);
        // Not in the file until the write runs.
        assert!(!dir.path().join(FILE_NAME).exists());
        let older = cache.pending().expect("a write is due");
        cache.assign(4, 7);
        let newer = cache.pending().expect("a write is due");
        newer.run().unwrap();
        assert!(cache.pending().is_none());
        // A write of an older version, run late, leaves the newer file alone.
        older.run().unwrap();
        let reloaded = LeaderEpochCache::load(dir.path()).unwrap();
        assert_eq!(reloaded.entries(), &[(3, 0), (4, 7)]);
        // Once retired, even a pending write leaves the directory alone.
        cache.assign(5, 9);
        let late = cache.pending().expect("a write is due");
        cache.retire();
        late.run().unwrap();
        let reloaded = LeaderEpochCache::load(dir.path()).unwrap();
        assert_eq!(reloaded.entries(), &[(3, 0), (4, 7)]);
    }
}
