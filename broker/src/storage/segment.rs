//! [`Segment`]: one `.log` file of whole RecordBatch v2 batches, with its sparse
//! `.index` and `.timeindex`.
//!
//! The active segment is appended to with ordinary positioned writes and read with
//! positioned reads; a sealed segment is read through a read-only map and never written
//! again. Threading: one owner (the `Log`); reads take `&self`, changes `&mut self`.

use std::fs::{self, File, OpenOptions};
use std::io::IoSlice;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use fjord_protocol::batch::{BatchHeader, HEADER_SIZE, LOG_OVERHEAD};

use super::drop_behind;
use super::index::{OffsetEntry, OffsetIndex, TimeEntry, TimeIndex};
use super::mmap::ReadMap;
use super::producers::ProducerBatch;
use super::{IoContext, Result, StorageError};

/// The most an active segment reserves ahead of its appends: as much as it already holds,
/// up to this. Blocks reserved with `fallocate(KEEP_SIZE)` leave the file's size (all
/// that readers and recovery see) unchanged, and an append into them skips ext4's
/// delayed allocation of each new block: 500 MB in 175 KiB writes took 0.12 s of system
/// time into reserved blocks against 0.17 s into new ones, on this project's machine.
/// Kafka reserves whole segments where `file.preallocate` is set; a step keeps an idle
/// partition's reservation small.
pub const PREALLOCATE_BYTES: u64 = 4 << 20;

/// Timestamp of an empty segment (Kafka's `NO_TIMESTAMP`).
pub const NO_TIMESTAMP: i64 = -1;

pub const LOG_SUFFIX: &str = "log";
pub const INDEX_SUFFIX: &str = "index";
pub const TIME_INDEX_SUFFIX: &str = "timeindex";

/// `<dir>/<20-digit base offset>.<kind><extra>`, e.g. `00000000000000000042.log.swap`.
pub fn segment_file(dir: &Path, base_offset: i64, kind: &str, extra: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}.{kind}{extra}"))
}

/// Index settings a segment needs.
#[derive(Debug, Clone, Copy)]
pub struct SegmentOptions {
    pub index_bytes: usize,
    pub index_interval_bytes: u64,
    /// `log.drop.behind.bytes`: an active segment keeps only its newest this many bytes
    /// in the page cache (0 = all). See [`drop_behind`](super::drop_behind).
    pub drop_behind_bytes: u64,
}

impl SegmentOptions {
    pub fn of(config: &super::LogConfig) -> Self {
        SegmentOptions {
            index_bytes: config.segment_index_bytes,
            index_interval_bytes: config.index_interval_bytes,
            drop_behind_bytes: config.drop_behind_bytes,
        }
    }
}

/// What the log needs to know of each appended batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMeta {
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    pub size: u32,
}

impl BatchMeta {
    pub fn of(header: &BatchHeader<'_>) -> Self {
        BatchMeta {
            base_offset: header.base_offset(),
            last_offset: header.last_offset(),
            max_timestamp: header.max_timestamp(),
            size: header.size() as u32,
        }
    }
}

/// The outcome of scanning a segment during recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanOutcome {
    /// Bytes of valid batches from the start of the file.
    pub valid_bytes: u64,
    /// `(leader epoch, first offset)` each time the epoch changed between valid batches.
    pub epochs: Vec<(i32, i64)>,
    /// The first invalid batch, if the scan stopped before the end of the file.
    pub invalid: Option<InvalidTail>,
    /// The idempotent producers' batches among the valid ones, in order: the open
    /// replays them instead of reading the segment again. `None` past
    /// [`PRODUCER_BATCHES_MAX`] (the open then reads the segment's headers again).
    pub producer_batches: Option<Vec<ProducerBatch>>,
}

/// The most producer batches one recovery scan collects (40 bytes each: 40 MiB; a few
/// in the unit tests, so that they also take the way past it).
#[cfg(not(test))]
pub const PRODUCER_BATCHES_MAX: usize = 1 << 20;
#[cfg(test)]
pub const PRODUCER_BATCHES_MAX: usize = 24;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidTail {
    pub position: u64,
    pub reason: String,
}

/// One segment. See the module docs.
#[derive(Debug)]
pub struct Segment {
    dir: PathBuf,
    base_offset: i64,
    log_path: PathBuf,
    file: Arc<File>,
    size: u64,
    map: Option<ReadMap>,
    offset_index: OffsetIndex,
    time_index: TimeIndex,
    next_offset: i64,
    max_timestamp: i64,
    max_timestamp_offset: i64,
    bytes_since_index_entry: u64,
    created_ms: i64,
    options: SegmentOptions,
    /// An index file did not exist when the segment was opened.
    indexes_were_missing: bool,
    /// Blocks past `size` are reserved for appends up to here (see [`PREALLOCATE_BYTES`]);
    /// `None` where the file system cannot reserve them.
    reserved: Option<u64>,
    /// Drop-behind: writeback has been started for the bytes before this...
    written_back: u64,
    /// ...and the pages before this have been dropped from the page cache.
    dropped: u64,
}

impl Segment {
    /// Creates a new, empty, active segment (replacing files of the same name).
    pub fn create(
        dir: &Path,
        base_offset: i64,
        options: SegmentOptions,
        now_ms: i64,
    ) -> Result<Self> {
        Self::create_with_suffix(dir, base_offset, options, now_ms, "")
    }

    /// [`create`](Self::create) with an extra suffix on every file name (`.cleaned`).
    pub fn create_with_suffix(
        dir: &Path,
        base_offset: i64,
        options: SegmentOptions,
        now_ms: i64,
        extra: &str,
    ) -> Result<Self> {
        for kind in [INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
            remove_if_exists(&segment_file(dir, base_offset, kind, extra))?;
        }
        let log_path = segment_file(dir, base_offset, LOG_SUFFIX, extra);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&log_path)
            .at(&log_path)?;
        Ok(Segment {
            dir: dir.to_path_buf(),
            base_offset,
            file: Arc::new(file),
            size: 0,
            map: None,
            offset_index: OffsetIndex::open_writable(
                &segment_file(dir, base_offset, INDEX_SUFFIX, extra),
                options.index_bytes,
            )?,
            time_index: TimeIndex::open_writable(
                &segment_file(dir, base_offset, TIME_INDEX_SUFFIX, extra),
                options.index_bytes,
            )?,
            log_path,
            next_offset: base_offset,
            max_timestamp: NO_TIMESTAMP,
            max_timestamp_offset: base_offset,
            bytes_since_index_entry: 0,
            created_ms: now_ms,
            options,
            indexes_were_missing: false,
            reserved: Some(0),
            written_back: 0,
            dropped: 0,
        })
    }

    /// Opens an existing segment. Its indexes are trusted here; call [`load_tail`]
    /// (clean open) or [`recover`] (after a crash) before using it.
    ///
    /// [`load_tail`]: Self::load_tail
    /// [`recover`]: Self::recover
    pub fn open(
        dir: &Path,
        base_offset: i64,
        options: SegmentOptions,
        sealed: bool,
        now_ms: i64,
    ) -> Result<Self> {
        let log_path = segment_file(dir, base_offset, LOG_SUFFIX, "");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&log_path)
            .at(&log_path)?;
        let metadata = file.metadata().at(&log_path)?;
        let size = metadata.len();
        // Blocks reserved before a crash are past the end: counted, so that the seal
        // gives them back.
        let allocated = std::os::unix::fs::MetadataExt::blocks(&metadata) * 512;
        let index_path = segment_file(dir, base_offset, INDEX_SUFFIX, "");
        let time_path = segment_file(dir, base_offset, TIME_INDEX_SUFFIX, "");
        let indexes_were_missing = !index_path.exists() || !time_path.exists();
        let (offset_index, time_index, map) = if sealed {
            for path in [&index_path, &time_path] {
                if !path.exists() {
                    File::create(path).at(path)?;
                }
            }
            (
                OffsetIndex::open_read_only(&index_path)?,
                TimeIndex::open_read_only(&time_path)?,
                Some(ReadMap::open(&file, size as usize).at(&log_path)?),
            )
        } else {
            (
                OffsetIndex::open_writable(&index_path, options.index_bytes)?,
                TimeIndex::open_writable(&time_path, options.index_bytes)?,
                None,
            )
        };
        let created_ms = file
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64)
            .unwrap_or(now_ms);
        Ok(Segment {
            dir: dir.to_path_buf(),
            base_offset,
            log_path,
            file: Arc::new(file),
            size,
            map,
            offset_index,
            time_index,
            next_offset: base_offset,
            max_timestamp: NO_TIMESTAMP,
            max_timestamp_offset: base_offset,
            bytes_since_index_entry: 0,
            created_ms: created_ms.min(now_ms),
            options,
            indexes_were_missing,
            reserved: Some(size.max(allocated)),
            written_back: size,
            dropped: size,
        })
    }

    pub fn base_offset(&self) -> i64 {
        self.base_offset
    }
    /// The offset after the last batch of this segment (`base_offset` when empty).
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }
    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }
    pub fn is_sealed(&self) -> bool {
        self.map.is_some()
    }
    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }
    pub fn created_ms(&self) -> i64 {
        self.created_ms
    }
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
    /// The log file, shared so a flusher can fsync it without holding the log's lock.
    pub fn file(&self) -> Arc<File> {
        self.file.clone()
    }
    /// The read-only map of a sealed segment.
    pub fn map(&self) -> Option<&ReadMap> {
        self.map.as_ref()
    }
    pub fn index_is_full(&self) -> bool {
        self.offset_index.is_full() || self.time_index.is_full()
    }
    pub fn offset_index(&self) -> &OffsetIndex {
        &self.offset_index
    }
    pub fn time_index(&self) -> &TimeIndex {
        &self.time_index
    }

    /// Whether `last_offset` still fits the u32 relative offsets of this segment.
    pub fn can_hold_offset(&self, last_offset: i64) -> bool {
        last_offset - self.base_offset <= u32::MAX as i64
    }

    fn relative(&self, offset: i64) -> u32 {
        let rel = offset - self.base_offset;
        assert!(
            (0..=u32::MAX as i64).contains(&rel),
            "offset {offset} outside segment {}",
            self.base_offset
        );
        rel as u32
    }

    /// Appends validated batches, described by `batches`, whose bytes are `parts` one
    /// after the other (the log writes each batch's patched header beside the rest of the
    /// caller's bytes), with one vectored write.
    pub fn append(&mut self, parts: &[IoSlice<'_>], batches: &[BatchMeta]) -> Result<()> {
        assert!(
            !self.is_sealed(),
            "append to sealed segment {}",
            self.log_path.display()
        );
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        self.reserve_for(self.size + len);
        if let Err(e) = write_all_vectored_at(&self.file, parts, self.size) {
            // Leave the file as it was: a partial write must not stay behind. If even
            // that fails, the caller takes the log offline and recovery cuts the tail.
            let rollback = self.cut_file(self.size);
            if let Err(rollback) = rollback {
                let path = self.log_path.display();
                tracing::error!(path = %path, error = %rollback, "cannot undo a partial write");
            }
            return Err(StorageError::Io {
                path: self.log_path.clone(),
                source: e,
            });
        }
        let mut position = self.size;
        for meta in batches {
            self.index_batch(meta, position);
            position += meta.size as u64;
        }
        debug_assert_eq!(position, self.size + len);
        self.size = position;
        self.drop_behind();
        Ok(())
    }

    /// With `log.drop.behind.bytes` set: asks for the writeback of each whole step
    /// written, and for the pages more than the window behind to be dropped (see
    /// [`drop_behind`](super::drop_behind)). A request the drop-behind thread cannot
    /// take now is asked again, wider, at the next append.
    fn drop_behind(&mut self) {
        let window = self.options.drop_behind_bytes;
        if window == 0 {
            return;
        }
        let whole_steps = self.size - self.size % drop_behind::STEP;
        let (from, len) = (
            self.written_back,
            whole_steps.saturating_sub(self.written_back),
        );
        if len > 0 && drop_behind::advise_dont_need(&self.file, from, len) {
            self.written_back = whole_steps;
        }
        let until = drop_behind::drop_until(self.written_back, window);
        if until >= self.dropped + drop_behind::STEP
            && drop_behind::advise_dont_need(&self.file, 0, until)
        {
            self.dropped = until;
        }
    }

    /// Reserves blocks ahead when an append to `end` would pass the reservation. Best
    /// effort: where the file system cannot, appends go on without.
    fn reserve_for(&mut self, end: u64) {
        let Some(reserved) = self.reserved else {
            return;
        };
        if end <= reserved {
            return;
        }
        let from = reserved.max(self.size);
        let to = end + end.min(PREALLOCATE_BYTES);
        let mode = rustix::fs::FallocateFlags::KEEP_SIZE;
        match rustix::fs::fallocate(&*self.file, mode, from, to - from) {
            Ok(()) => self.reserved = Some(to),
            Err(e) => {
                tracing::debug!(path = %self.log_path.display(), error = %e,
                    "cannot reserve blocks ahead of appends; appending without");
                self.reserved = None;
            }
        }
    }

    /// Gives back the blocks reserved past the end of the file (a sealed segment grows
    /// no more). Truncating to its own size frees them; the modification time, which
    /// retention may go by, is kept. Best effort: a failure costs disk space, not data,
    /// so it does not fail the roll.
    fn release_reserved(&mut self) {
        if self.reserved.is_none_or(|r| r <= self.size) {
            return;
        }
        let modified = self.file.metadata().and_then(|m| m.modified());
        if let Err(e) = self.file.set_len(self.size) {
            tracing::warn!(path = %self.log_path.display(), error = %e,
                "cannot give back the blocks reserved past a sealed segment");
            return;
        }
        if let Ok(modified) = modified {
            let _ = self.file.set_modified(modified);
        }
        self.reserved = Some(self.size);
    }

    /// Cuts the file at `position` (which also frees any reservation past it).
    fn cut_file(&mut self, position: u64) -> std::io::Result<()> {
        self.file.set_len(position)?;
        self.reserved = self.reserved.map(|_| position);
        self.written_back = self.written_back.min(position);
        self.dropped = self.dropped.min(position);
        Ok(())
    }

    /// Updates offsets, timestamps and indexes for a batch at `position`.
    fn index_batch(&mut self, meta: &BatchMeta, position: u64) {
        assert!(
            meta.base_offset >= self.next_offset,
            "offsets must increase in segment {}: {} after {}",
            self.log_path.display(),
            meta.base_offset,
            self.next_offset
        );
        if meta.max_timestamp > self.max_timestamp {
            self.max_timestamp = meta.max_timestamp;
            self.max_timestamp_offset = meta.last_offset;
        }
        if self.bytes_since_index_entry >= self.options.index_interval_bytes {
            self.offset_index.append(OffsetEntry {
                relative_offset: self.relative(meta.base_offset),
                position: position as u32,
            });
            self.maybe_append_time_entry();
            self.bytes_since_index_entry = 0;
        }
        self.bytes_since_index_entry += meta.size as u64;
        self.next_offset = meta.last_offset + 1;
    }

    /// On seal: the time index ends with the segment's newest timestamp, so that a reopen
    /// knows it without reading the log. A segment whose batches carry no timestamp gets
    /// one entry with `NO_TIMESTAMP`.
    fn append_last_time_entry(&mut self) {
        // Nothing valid (a scan may stop at a damaged first batch): nothing to index.
        if self.time_index.is_full() || self.size == 0 || self.next_offset == self.base_offset {
            return;
        }
        if self.time_index.is_empty() && self.max_timestamp == NO_TIMESTAMP {
            let rel = self.relative(self.next_offset - 1);
            self.time_index.append(TimeEntry {
                timestamp: NO_TIMESTAMP,
                relative_offset: rel,
            });
            return;
        }
        self.maybe_append_time_entry();
    }

    fn maybe_append_time_entry(&mut self) {
        if self.max_timestamp == NO_TIMESTAMP {
            return;
        }
        let rel = self.relative(self.max_timestamp_offset);
        match self.time_index.last() {
            Some(last) if last.timestamp >= self.max_timestamp || last.relative_offset > rel => {}
            _ => {
                self.time_index.append(TimeEntry {
                    timestamp: self.max_timestamp,
                    relative_offset: rel,
                });
            }
        }
    }

    /// Bytes `range` of the log file: zero-copy from the map when sealed, a positioned
    /// read otherwise.
    pub fn slice(&self, start: u64, end: u64) -> Result<Bytes> {
        assert!(
            start <= end && end <= self.size,
            "slice {start}..{end} of {}",
            self.size
        );
        if let Some(map) = &self.map {
            return Ok(map.bytes(start as usize..end as usize));
        }
        let mut buf = vec![0u8; (end - start) as usize];
        self.file
            .read_exact_at(&mut buf, start)
            .at(&self.log_path)?;
        Ok(Bytes::from(buf))
    }

    /// The header of the batch at `position` (structure only; no CRC check).
    pub fn header_at(&self, position: u64) -> Result<Option<BatchMeta>> {
        if position + LOG_OVERHEAD as u64 > self.size {
            return Ok(None);
        }
        let mut buf = [0u8; HEADER_SIZE];
        let len = (HEADER_SIZE as u64).min(self.size - position) as usize;
        match &self.map {
            Some(map) => buf[..len]
                .copy_from_slice(&map.as_slice()[position as usize..position as usize + len]),
            None => self
                .file
                .read_exact_at(&mut buf[..len], position)
                .at(&self.log_path)?,
        }
        let size = match BatchHeader::peek_size(&buf[..len]) {
            Some(Ok(size)) => size,
            _ => return Ok(None),
        };
        if len < HEADER_SIZE || position + size as u64 > self.size {
            return Ok(None);
        }
        // parse() wants the whole batch; read the fields straight from the header bytes.
        let base_offset = i64::from_be_bytes(buf[0..8].try_into().expect("8"));
        let delta = i32::from_be_bytes(buf[23..27].try_into().expect("4"));
        let max_timestamp = i64::from_be_bytes(buf[35..43].try_into().expect("8"));
        Ok(Some(BatchMeta {
            base_offset,
            // Saturating: the base offset is outside the CRC, so a damaged file can hold
            // any value here; callers compare, and `load_tail` rejects such a segment.
            last_offset: base_offset.saturating_add(delta as i64),
            max_timestamp,
            size: size as u32,
        }))
    }

    /// The position and header of the first batch whose last offset is >= `offset`.
    pub fn find(&self, offset: i64) -> Result<Option<(u64, BatchMeta)>> {
        if offset >= self.next_offset {
            return Ok(None);
        }
        let start = if offset <= self.base_offset {
            0
        } else {
            self.offset_index
                .floor((offset - self.base_offset).min(u32::MAX as i64))
                .map(|e| e.position as u64)
                .unwrap_or(0)
        };
        let mut position = start;
        while let Some(meta) = self.header_at(position)? {
            if meta.last_offset >= offset {
                return Ok(Some((position, meta)));
            }
            position += meta.size as u64;
        }
        Ok(None)
    }

    /// Whole batches from the one holding `offset`, at most `max_bytes` (but at least one
    /// batch), stopping before any batch whose base offset is >= `limit_offset`.
    pub fn read(&self, offset: i64, max_bytes: usize, limit_offset: i64) -> Result<Option<Bytes>> {
        let Some((start, first)) = self.find(offset)? else {
            return Ok(None);
        };
        if first.base_offset >= limit_offset && first.base_offset >= offset {
            return Ok(None);
        }
        if first.last_offset >= limit_offset {
            return Ok(None);
        }
        let mut end = start + first.size as u64;
        if limit_offset >= self.next_offset && self.size - start <= max_bytes as u64 {
            end = self.size;
        } else {
            while let Some(meta) = self.header_at(end)? {
                if meta.last_offset >= limit_offset
                    || (end - start) + meta.size as u64 > max_bytes as u64
                {
                    break;
                }
                end += meta.size as u64;
            }
        }
        Ok(Some(self.slice(start, end)?))
    }

    /// The first record at or after `timestamp` with offset >= `min_offset`:
    /// (offset, its timestamp).
    pub fn offset_for_timestamp(
        &self,
        timestamp: i64,
        min_offset: i64,
    ) -> Result<Option<(i64, i64)>> {
        if self.max_timestamp < timestamp || self.next_offset <= min_offset {
            return Ok(None);
        }
        let from_time = self
            .time_index
            .floor(timestamp)
            .map(|e| self.base_offset + e.relative_offset as i64)
            .unwrap_or(self.base_offset);
        let mut position = match self.find(from_time.max(min_offset))? {
            Some((position, _)) => position,
            None => return Ok(None),
        };
        while let Some(meta) = self.header_at(position)? {
            if meta.max_timestamp >= timestamp && meta.last_offset >= min_offset {
                let bytes = self.slice(position, position + meta.size as u64)?;
                let records =
                    fjord_protocol::decode_records(&bytes).map_err(StorageError::Codec)?;
                if let Some(r) = records
                    .iter()
                    .find(|r| r.timestamp_ms >= timestamp && r.offset >= min_offset)
                {
                    return Ok(Some((r.offset, r.timestamp_ms)));
                }
            }
            position += meta.size as u64;
        }
        Ok(None)
    }

    /// After a clean open: finds the log end of this segment by walking the batches after
    /// the last index entry (at most about `index.interval.bytes`), trusting everything
    /// before it. Returns `false` if the tail does not parse (then call `recover`).
    pub fn load_tail(&mut self) -> Result<bool> {
        let (mut position, mut next_offset) = match self.offset_index.last() {
            Some(e) if (e.position as u64) < self.size => (
                e.position as u64,
                self.base_offset + e.relative_offset as i64,
            ),
            Some(_) => return Ok(false),
            None => (0, self.base_offset),
        };
        if let Some(last) = self.time_index.last() {
            self.max_timestamp = last.timestamp;
            self.max_timestamp_offset = self.base_offset + last.relative_offset as i64;
        }
        let index_position = position;
        while position < self.size {
            let Some(meta) = self.header_at(position)? else {
                return Ok(false);
            };
            if meta.base_offset < next_offset || !self.can_hold_offset(meta.last_offset) {
                return Ok(false);
            }
            if meta.max_timestamp > self.max_timestamp {
                self.max_timestamp = meta.max_timestamp;
                self.max_timestamp_offset = meta.last_offset;
            }
            next_offset = meta.last_offset + 1;
            position += meta.size as u64;
        }
        self.next_offset = next_offset;
        self.bytes_since_index_entry = self.size - index_position;
        Ok(true)
    }

    /// Whether the indexes can be trusted without reading the log: both files existed, a
    /// segment with data has a time index (sealing always writes its last entry; without
    /// it the segment's newest timestamp is unknown), and, when `full_check`, every entry
    /// is in order and in range (linear in the number of entries).
    pub fn indexes_look_consistent(&self, full_check: bool) -> bool {
        if self.indexes_were_missing || (self.size > 0 && self.time_index.is_empty()) {
            return false;
        }
        if !full_check {
            return true;
        }
        let size = self.size;
        self.offset_index
            .is_consistent(|e| (e.position as u64) < size.max(1))
            && self.time_index.is_consistent(|_| true)
    }

    /// Rebuilds both indexes and the segment's offsets by reading every batch and checking
    /// its CRC; stops at the first invalid batch and reports it (the caller decides whether
    /// to truncate there or to report corruption). A sealed segment stays sealed: its
    /// indexes are written anew and sealed again.
    pub fn recover(&mut self) -> Result<ScanOutcome> {
        let sealed = self.is_sealed();
        if sealed {
            let index_path = self.offset_index.path().to_path_buf();
            let time_path = self.time_index.path().to_path_buf();
            remove_if_exists(&index_path)?;
            remove_if_exists(&time_path)?;
            self.offset_index = OffsetIndex::open_writable(&index_path, self.options.index_bytes)?;
            self.time_index = TimeIndex::open_writable(&time_path, self.options.index_bytes)?;
        } else {
            self.offset_index.truncate_entries(0);
            self.time_index.truncate_entries(0);
        }
        self.next_offset = self.base_offset;
        self.max_timestamp = NO_TIMESTAMP;
        self.max_timestamp_offset = self.base_offset;
        self.bytes_since_index_entry = 0;
        let map = match &self.map {
            Some(map) => map.clone(),
            None => ReadMap::open(&self.file, self.size as usize).at(&self.log_path)?,
        };
        let bytes = map.as_slice();
        let mut position = 0usize;
        let mut invalid = None;
        let mut epochs: Vec<(i32, i64)> = Vec::new();
        let mut producer_batches = Some(Vec::new());
        // With drop-behind, what the scan has passed leaves the page cache as it goes
        // (but a window's worth before its end): after a crash the unflushed tail is
        // read again, mostly from the disk, and it is then read into the pages just
        // freed rather than into new ones (on this project's VM, new ones cost about a
        // second of CPU per GB). The open does not read the segment again (its producers'
        // state comes from `producer_batches`). As on appends, each drop covers the
        // segment from its start: pages still dirty when passed go at a later one.
        let window = self.options.drop_behind_bytes;
        let mut dropped = 0u64;
        while position < bytes.len() {
            let until = drop_behind::drop_until(position as u64, window);
            if until >= dropped + drop_behind::STEP {
                map.unmap_pages(dropped as usize..until as usize);
                drop_behind::advise_now(&self.file, 0, until);
                dropped = until;
            }
            let header = match BatchHeader::validate(&bytes[position..]) {
                Ok(header) => header,
                Err(e) => {
                    invalid = Some(InvalidTail {
                        position: position as u64,
                        reason: e.to_string(),
                    });
                    break;
                }
            };
            let meta = BatchMeta::of(&header);
            if meta.base_offset < self.next_offset || !self.can_hold_offset(meta.last_offset) {
                invalid = Some(InvalidTail {
                    position: position as u64,
                    reason: format!(
                        "batch base offset {} does not follow {} in segment {}",
                        meta.base_offset, self.next_offset, self.base_offset
                    ),
                });
                break;
            }
            let epoch = header.partition_leader_epoch();
            if epochs.last().is_none_or(|&(e, _)| e != epoch) {
                epochs.push((epoch, meta.base_offset));
            }
            if let Some(batches) = &mut producer_batches
                && let Some(batch) = ProducerBatch::of(&header)
            {
                if batches.len() < PRODUCER_BATCHES_MAX {
                    batches.push(batch);
                } else {
                    producer_batches = None;
                }
            }
            self.index_batch(&meta, position as u64);
            position += meta.size as usize;
        }
        if sealed {
            self.append_last_time_entry();
            self.offset_index.seal()?;
            self.time_index.seal()?;
        }
        self.indexes_were_missing = false;
        Ok(ScanOutcome {
            valid_bytes: position as u64,
            epochs,
            invalid,
            producer_batches,
        })
    }

    /// [`recover`](Self::recover) for a segment that must be wholly valid: an invalid
    /// batch is an error naming the file and position.
    pub fn recover_or_report(&mut self) -> Result<()> {
        match self.recover()?.invalid {
            None => Ok(()),
            Some(invalid) => Err(StorageError::CorruptSegment {
                path: self.log_path.clone(),
                position: invalid.position,
                reason: invalid.reason,
            }),
        }
    }

    /// Opens a sealed segment that must be wholly valid (after a compaction swap).
    pub fn open_sealed_checked(
        dir: &Path,
        base_offset: i64,
        options: SegmentOptions,
        now_ms: i64,
    ) -> Result<Self> {
        let mut segment = Self::open(dir, base_offset, options, true, now_ms)?;
        if !segment.indexes_look_consistent(false) || !segment.load_tail()? {
            segment.recover_or_report()?;
        }
        Ok(segment)
    }

    /// The log file's modification time (retention's fallback for segments without
    /// timestamps, as Kafka's).
    pub fn last_modified_ms(&self) -> i64 {
        self.file
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64)
            .unwrap_or(self.created_ms)
    }

    /// Cuts the active segment's file at `position` (a batch boundary found by a scan).
    pub fn truncate_file_to(&mut self, position: u64) -> Result<()> {
        if self.is_sealed() {
            return self.unseal(position);
        }
        self.cut_file(position).at(&self.log_path)?;
        self.size = position;
        Ok(())
    }

    /// Removes every batch whose last offset is >= `offset`. A sealed segment becomes
    /// active again (its kept prefix is copied to a new file first, see [`unseal`]).
    /// Returns the base offset of the first removed batch, if any was removed.
    ///
    /// [`unseal`]: Self::unseal
    pub fn truncate_to(&mut self, offset: i64) -> Result<Option<i64>> {
        let found = self.find(offset)?;
        if let Some((position, first_removed)) = found
            && !(self.base_offset..=self.base_offset + u32::MAX as i64)
                .contains(&first_removed.base_offset)
        {
            return Err(StorageError::CorruptSegment {
                path: self.log_path.clone(),
                position,
                reason: format!(
                    "batch base offset {} outside the segment",
                    first_removed.base_offset
                ),
            });
        }
        let position = found.map(|(p, _)| p).unwrap_or(self.size);
        if self.is_sealed() {
            self.unseal(position)?;
        } else if position < self.size {
            self.cut_file(position).at(&self.log_path)?;
            self.size = position;
        }
        let Some((_, first_removed)) = found else {
            return Ok(None);
        };
        let rel = self.relative(first_removed.base_offset);
        self.offset_index.truncate_to_offset(rel);
        self.time_index.truncate_to_offset(rel);
        self.max_timestamp = NO_TIMESTAMP;
        self.max_timestamp_offset = self.base_offset;
        if !self.load_tail()? {
            // The kept part was written by us and has parsed before; if it does not now,
            // rebuild the indexes from the file, and report what does not parse.
            self.recover_or_report()?;
        }
        Ok(Some(first_removed.base_offset))
    }

    /// Makes this segment read-only: final time-index entry, indexes trimmed and flushed,
    /// the log mapped read-only.
    pub fn seal(&mut self) -> Result<()> {
        if self.is_sealed() {
            return Ok(());
        }
        self.release_reserved();
        self.append_last_time_entry();
        self.offset_index.seal()?;
        self.time_index.seal()?;
        self.map = Some(ReadMap::open(&self.file, self.size as usize).at(&self.log_path)?);
        Ok(())
    }

    /// Makes a sealed segment active again, keeping its first `keep_bytes` (a batch
    /// boundary). The kept bytes are copied to a new file renamed over the old name, so
    /// maps that readers still hold keep the old inode and its bytes.
    pub fn unseal(&mut self, keep_bytes: u64) -> Result<()> {
        let Some(map) = self.map.take() else {
            return Ok(());
        };
        let keep_bytes = keep_bytes.min(self.size);
        let tmp = segment_file(&self.dir, self.base_offset, LOG_SUFFIX, ".unsealing");
        {
            let mut out = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .at(&tmp)?;
            std::io::Write::write_all(&mut out, &map.as_slice()[..keep_bytes as usize]).at(&tmp)?;
            out.sync_data().at(&tmp)?;
        }
        fs::rename(&tmp, &self.log_path).at(&self.log_path)?;
        super::checkpoint::sync_dir(&self.dir)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.log_path)
            .at(&self.log_path)?;
        self.file = Arc::new(file);
        self.size = keep_bytes;
        self.reserved = Some(keep_bytes);
        self.written_back = keep_bytes;
        self.dropped = keep_bytes;
        self.offset_index.unseal(self.options.index_bytes)?;
        self.time_index.unseal(self.options.index_bytes)?;
        Ok(())
    }

    /// fdatasync of the log file (indexes are rebuilt after a crash, so they are not).
    pub fn flush(&self) -> Result<()> {
        self.file.sync_data().at(&self.log_path)
    }

    /// Deletes the segment's files: renamed to `.deleted` first, then unlinked. Readers
    /// that still hold a map of a sealed log keep its bytes until they drop it (Linux keeps
    /// an unlinked inode alive while it is mapped).
    pub fn delete(self) -> Result<()> {
        let paths = [
            self.log_path.clone(),
            self.offset_index.path().to_path_buf(),
            self.time_index.path().to_path_buf(),
        ];
        drop(self);
        for path in paths {
            let mut deleted = path.clone().into_os_string();
            deleted.push(".deleted");
            match fs::rename(&path, &deleted) {
                Ok(()) => remove_if_exists(Path::new(&deleted))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::Io { path, source: e }),
            }
        }
        Ok(())
    }
}

/// Writes all of `parts`, one after the other, at `offset`, with `pwritev` again after a
/// short write (rustix passes at most `IOV_MAX`, 1,024, buffers to one call).
fn write_all_vectored_at(
    file: &File,
    parts: &[IoSlice<'_>],
    mut offset: u64,
) -> std::io::Result<()> {
    let mut owned: Vec<IoSlice<'_>> = parts.iter().filter(|p| !p.is_empty()).copied().collect();
    let mut rest: &mut [IoSlice<'_>] = &mut owned;
    while !rest.is_empty() {
        let written = match rustix::io::pwritev(file, rest, offset) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        offset += written as u64;
        IoSlice::advance_slices(&mut rest, written);
    }
    Ok(())
}

pub(crate) fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}
