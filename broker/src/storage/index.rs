//! Sparse, preallocated, memory-mapped indexes, as Kafka's `AbstractIndex`.
//!
//! One generic [`Index`] serves both files:
//! - [`OffsetIndex`] (`.index`): 8-byte entries, relative offset u32 -> file position u32;
//! - [`TimeIndex`] (`.timeindex`): 12-byte entries, timestamp i64 -> relative offset u32.
//!
//! Both are big-endian, sorted by their key, strictly increasing. The active segment's
//! index is preallocated to `segment.index.bytes` and mapped writable; when the segment is
//! sealed the file is trimmed to its entries and mapped read-only. Unused slots are zero, so
//! the number of entries of a preallocated file is the number of leading entries before
//! the first zero slot after entry 0 (entries after the first always have a relative offset
//! above 0).
//!
//! Threading: an `Index` has one owner (its `Segment`); `&mut self` for every change.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use super::mmap::{ReadMap, WriteMap};
use super::{IoContext, Result};

/// One fixed-size index entry.
pub trait IndexEntry: Copy + std::fmt::Debug + PartialEq {
    const SIZE: usize;
    fn read(bytes: &[u8]) -> Self;
    fn write(&self, bytes: &mut [u8]);
    /// The key entries are sorted and searched by.
    fn key(&self) -> i64;
    /// The relative offset of the entry.
    fn relative_offset(&self) -> u32;
}

/// Offset index entry: the batch at `relative_offset` starts at `position`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

impl IndexEntry for OffsetEntry {
    const SIZE: usize = 8;
    fn read(b: &[u8]) -> Self {
        OffsetEntry {
            relative_offset: u32::from_be_bytes(b[0..4].try_into().expect("4 bytes")),
            position: u32::from_be_bytes(b[4..8].try_into().expect("4 bytes")),
        }
    }
    fn write(&self, b: &mut [u8]) {
        b[0..4].copy_from_slice(&self.relative_offset.to_be_bytes());
        b[4..8].copy_from_slice(&self.position.to_be_bytes());
    }
    fn key(&self) -> i64 {
        self.relative_offset as i64
    }
    fn relative_offset(&self) -> u32 {
        self.relative_offset
    }
}

/// Time index entry: every record up to `relative_offset` has a timestamp <= `timestamp`,
/// and `timestamp` is the largest seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub timestamp: i64,
    pub relative_offset: u32,
}

impl IndexEntry for TimeEntry {
    const SIZE: usize = 12;
    fn read(b: &[u8]) -> Self {
        TimeEntry {
            timestamp: i64::from_be_bytes(b[0..8].try_into().expect("8 bytes")),
            relative_offset: u32::from_be_bytes(b[8..12].try_into().expect("4 bytes")),
        }
    }
    fn write(&self, b: &mut [u8]) {
        b[0..8].copy_from_slice(&self.timestamp.to_be_bytes());
        b[8..12].copy_from_slice(&self.relative_offset.to_be_bytes());
    }
    fn key(&self) -> i64 {
        self.timestamp
    }
    fn relative_offset(&self) -> u32 {
        self.relative_offset
    }
}

pub type OffsetIndex = Index<OffsetEntry>;
pub type TimeIndex = Index<TimeEntry>;

#[derive(Debug)]
enum Map {
    Writable(WriteMap),
    ReadOnly(ReadMap),
}

/// A sparse index file. See the module docs.
#[derive(Debug)]
pub struct Index<E: IndexEntry> {
    path: PathBuf,
    file: File,
    map: Map,
    entries: usize,
    capacity: usize,
    _entry: std::marker::PhantomData<E>,
}

impl<E: IndexEntry> Index<E> {
    /// Opens (creating if missing) a writable index preallocated to `max_bytes`.
    pub fn open_writable(path: &Path, max_bytes: usize) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .at(path)?;
        let existing = file.metadata().at(path)?.len() as usize;
        let capacity = (max_bytes / E::SIZE).max(existing / E::SIZE);
        file.set_len((capacity * E::SIZE) as u64).at(path)?;
        let map = WriteMap::open(&file, capacity * E::SIZE).at(path)?;
        let mut index = Index {
            path: path.to_path_buf(),
            file,
            map: Map::Writable(map),
            entries: 0,
            capacity,
            _entry: std::marker::PhantomData,
        };
        index.entries = index.count_entries(existing / E::SIZE);
        Ok(index)
    }

    /// Opens an existing sealed index read-only. A sealed file was trimmed to its entries,
    /// so every slot counts; an untrimmed one (a crash during the trim) has zero slots after
    /// its entries, which [`is_consistent`](Self::is_consistent) rejects, and recovery
    /// rebuilds it.
    pub fn open_read_only(path: &Path) -> Result<Self> {
        let file = File::open(path).at(path)?;
        let len = file.metadata().at(path)?.len() as usize;
        let map = ReadMap::open(&file, len).at(path)?;
        let capacity = len / E::SIZE;
        let mut index = Index {
            path: path.to_path_buf(),
            file,
            map: Map::ReadOnly(map),
            entries: 0,
            capacity,
            _entry: std::marker::PhantomData,
        };
        index.entries = capacity;
        Ok(index)
    }

    fn bytes(&self) -> &[u8] {
        match &self.map {
            Map::Writable(m) => m.as_slice(),
            Map::ReadOnly(m) => m.as_slice(),
        }
    }

    /// Leading entries before the first unused (zero) slot, among the first `limit` slots.
    fn count_entries(&self, limit: usize) -> usize {
        let limit = limit.min(self.capacity);
        if limit == 0 {
            return 0;
        }
        // Slot 0 is used unless it is all zero with an unused slot 1 (a lone all-zero first
        // entry is then not counted: the index stays correct, only sparser). Slots 1.. are
        // used iff their relative offset is non-zero, and used slots come first.
        let slot0_used =
            !self.is_zero_slot(0) || (limit > 1 && self.entry(1).relative_offset() != 0);
        if !slot0_used {
            return 0;
        }
        let (mut lo, mut hi) = (1usize, limit);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.entry(mid).relative_offset() != 0 {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    fn is_zero_slot(&self, i: usize) -> bool {
        self.bytes()[i * E::SIZE..(i + 1) * E::SIZE]
            .iter()
            .all(|&b| b == 0)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    pub fn is_full(&self) -> bool {
        self.entries >= self.capacity
    }

    pub fn entry(&self, i: usize) -> E {
        E::read(&self.bytes()[i * E::SIZE..(i + 1) * E::SIZE])
    }

    pub fn last(&self) -> Option<E> {
        self.entries.checked_sub(1).map(|i| self.entry(i))
    }

    /// Appends an entry. Panics if keys would not increase (a bug) or the index is
    /// read-only; returns `false` when full.
    pub fn append(&mut self, entry: E) -> bool {
        if let Some(last) = self.last() {
            assert!(
                entry.key() > last.key() && entry.relative_offset() >= last.relative_offset(),
                "index {} entries must increase: {last:?} then {entry:?}",
                self.path.display()
            );
        }
        if self.is_full() {
            return false;
        }
        let at = self.entries * E::SIZE;
        match &mut self.map {
            Map::Writable(m) => entry.write(&mut m.as_mut_slice()[at..at + E::SIZE]),
            Map::ReadOnly(_) => panic!("append to read-only index {}", self.path.display()),
        }
        self.entries += 1;
        true
    }

    /// The last entry whose key is <= `key`, if any.
    pub fn floor(&self, key: i64) -> Option<E> {
        // First index whose key is > key.
        let (mut lo, mut hi) = (0usize, self.entries);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.entry(mid).key() <= key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo.checked_sub(1).map(|i| self.entry(i))
    }

    /// Drops every entry whose relative offset is >= `relative_offset`.
    pub fn truncate_to_offset(&mut self, relative_offset: u32) {
        let keep = (0..self.entries)
            .take_while(|&i| self.entry(i).relative_offset() < relative_offset)
            .count();
        self.truncate_entries(keep);
    }

    /// Keeps the first `keep` entries; zeroes the rest so a reopen counts correctly.
    pub fn truncate_entries(&mut self, keep: usize) {
        let keep = keep.min(self.entries);
        match &mut self.map {
            Map::Writable(m) => {
                m.as_mut_slice()[keep * E::SIZE..self.entries * E::SIZE].fill(0);
            }
            Map::ReadOnly(_) => panic!("truncate of read-only index {}", self.path.display()),
        }
        self.entries = keep;
    }

    /// Checks the entries: keys strictly increasing, relative offsets non-decreasing, and
    /// `check` true for each. Linear in the number of entries.
    pub fn is_consistent(&self, check: impl Fn(&E) -> bool) -> bool {
        let mut prev: Option<E> = None;
        for i in 0..self.entries {
            let e = self.entry(i);
            if !check(&e) {
                return false;
            }
            if let Some(p) = prev
                && (e.key() <= p.key() || e.relative_offset() < p.relative_offset())
            {
                return false;
            }
            prev = Some(e);
        }
        true
    }

    /// Trims the file to its entries, flushes it and maps it read-only (on seal and close).
    pub fn seal(&mut self) -> Result<()> {
        if let Map::Writable(m) = &self.map {
            m.flush().at(&self.path)?;
        }
        // Unmap before resizing.
        self.map = Map::ReadOnly(ReadMap::open(&self.file, 0).at(&self.path)?);
        self.file
            .set_len((self.entries * E::SIZE) as u64)
            .at(&self.path)?;
        let reopened = Self::open_read_only(&self.path)?;
        assert_eq!(reopened.entries, self.entries, "sealed index lost entries");
        *self = reopened;
        Ok(())
    }

    /// Reopens a sealed index writable, preallocated to `max_bytes` (a sealed segment that
    /// becomes active again after a truncation).
    pub fn unseal(&mut self, max_bytes: usize) -> Result<()> {
        let entries = self.entries;
        self.map = Map::ReadOnly(ReadMap::open(&self.file, 0).at(&self.path)?);
        let mut reopened = Self::open_writable(&self.path, max_bytes)?;
        reopened.entries = entries.min(reopened.entries);
        *self = reopened;
        Ok(())
    }

    /// msync of a writable index.
    pub fn flush(&self) -> Result<()> {
        match &self.map {
            Map::Writable(m) => m.flush().at(&self.path),
            Map::ReadOnly(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn off(relative_offset: u32, position: u32) -> OffsetEntry {
        OffsetEntry {
            relative_offset,
            position,
        }
    }

    #[test]
    fn append_lookup_seal_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.index");
        let mut index = OffsetIndex::open_writable(&path, 80).unwrap();
        assert!(index.floor(5).is_none());
        for i in 0..10u32 {
            assert!(index.append(off(i * 10, i * 100)));
        }
        assert!(index.is_full());
        assert!(!index.append(off(1000, 10_000)));
        assert_eq!(index.floor(35), Some(off(30, 300)));
        assert_eq!(index.floor(30), Some(off(30, 300)));
        assert_eq!(index.floor(1000), Some(off(90, 900)));
        index.truncate_to_offset(50);
        assert_eq!(index.len(), 5);
        drop(index);
        // A preallocated file with a zeroed tail counts its entries again on reopen.
        let mut index = OffsetIndex::open_writable(&path, 80).unwrap();
        assert_eq!(index.len(), 5);
        index.seal().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 40);
        let index = OffsetIndex::open_read_only(&path).unwrap();
        assert_eq!(index.len(), 5);
        assert_eq!(index.last(), Some(off(40, 400)));
    }

    #[test]
    fn first_entry_at_zero_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.timeindex");
        let mut index = TimeIndex::open_writable(&path, 120).unwrap();
        assert_eq!(index.len(), 0);
        index.append(TimeEntry {
            timestamp: 0,
            relative_offset: 0,
        });
        index.append(TimeEntry {
            timestamp: 5,
            relative_offset: 3,
        });
        drop(index);
        let index = TimeIndex::open_writable(&path, 120).unwrap();
        assert_eq!(index.len(), 2);
        assert_eq!(index.floor(4).unwrap().relative_offset, 0);
        assert_eq!(index.floor(5).unwrap().relative_offset, 3);
    }

    #[test]
    #[should_panic(expected = "must increase")]
    fn decreasing_entries_are_a_bug() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = OffsetIndex::open_writable(&dir.path().join("0.index"), 80).unwrap();
        index.append(off(5, 50));
        index.append(off(4, 60));
    }
}
