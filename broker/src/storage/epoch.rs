//! The leader-epoch cache: for each leader epoch, the first offset written in it
//! (Kafka's `LeaderEpochFileCache`), persisted in `leader-epoch-checkpoint`. Replication
//! uses it to find where a follower's history diverges from the leader's.

use std::path::{Path, PathBuf};

use super::{Result, StorageError, checkpoint};

pub const FILE_NAME: &str = "leader-epoch-checkpoint";

/// `(epoch, start_offset)` pairs, both strictly increasing. Single owner (the `Log`).
#[derive(Debug)]
pub struct LeaderEpochCache {
    path: PathBuf,
    entries: Vec<(i32, i64)>,
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
        Ok(LeaderEpochCache { path, entries })
    }

    pub fn entries(&self) -> &[(i32, i64)] {
        &self.entries
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|e| e.0)
    }

    /// Records that `epoch` starts at `start_offset`, if it is newer than the latest.
    pub fn assign(&mut self, epoch: i32, start_offset: i64) -> Result<()> {
        if epoch < 0 {
            return Ok(());
        }
        match self.entries.last() {
            Some(&(last, _)) if last >= epoch => Ok(()),
            _ => {
                self.entries.push((epoch, start_offset));
                self.persist()
            }
        }
    }

    /// Forgets epochs that start at or after `end_offset` (after a truncation).
    pub fn truncate_from_end(&mut self, end_offset: i64) -> Result<()> {
        let before = self.entries.len();
        self.entries.retain(|&(_, start)| start < end_offset);
        if self.entries.len() != before {
            self.persist()?;
        }
        Ok(())
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

    fn persist(&self) -> Result<()> {
        let lines: Vec<(String, String)> = self
            .entries
            .iter()
            .map(|(e, o)| (e.to_string(), o.to_string()))
            .collect();
        let refs: Vec<(&str, String)> =
            lines.iter().map(|(e, o)| (e.as_str(), o.clone())).collect();
        checkpoint::write(&self.path, &refs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigns_truncates_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = LeaderEpochCache::load(dir.path()).unwrap();
        cache.assign(0, 0).unwrap();
        cache.assign(0, 5).unwrap();
        cache.assign(2, 10).unwrap();
        cache.assign(5, 30).unwrap();
        assert_eq!(cache.end_offset_for(0, 40), Some((0, 10)));
        assert_eq!(cache.end_offset_for(3, 40), Some((2, 30)));
        assert_eq!(cache.end_offset_for(9, 40), Some((5, 40)));
        cache.truncate_from_end(30).unwrap();
        cache.truncate_from_start(12).unwrap();
        let reloaded = LeaderEpochCache::load(dir.path()).unwrap();
        assert_eq!(reloaded.entries(), &[(2, 12)]);
    }
}
