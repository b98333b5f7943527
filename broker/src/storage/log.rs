//! [`Log`]: one partition's log: ordered [`Segments`], the log start offset, log end
//! offset, high watermark and recovery point, the leader-epoch cache, and the checkpoint
//! files, all under `<data-dir>/<topic>-<partition>/`.
//!
//! Threading: a `Log` has one owner; the broker wraps it in a `RwLock`. Reads, flush jobs
//! and checkpoints take `&self`; appends, truncation, retention and the cleaner's swap
//! take `&mut self`. The fsync of a flush runs without any lock (see [`FlushJob`]).

use std::collections::BTreeMap;
use std::fs;
use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use fjord_protocol::batch::{self, BatchHeader};

use super::checkpoint;
use super::clock::Clock;
use super::config::{LogConfig, TimestampType};
use super::epoch::{EpochWrite, LeaderEpochCache};
use super::producers::{
    self, BatchSeq, ProducerBatch, ProducerEntry, Producers, SeqCheck, SeqError,
};
use super::retention::{self, RetentionPolicy, SegmentSummary};
use super::segment::{
    self, BatchMeta, LOG_SUFFIX, Segment, SegmentOptions, remove_if_exists, segment_file,
};
use super::{IoContext, Result, StorageError};

/// The idempotent producers' batches that recovery collected from the last segment it
/// scanned (the active one after a crash), so that the open need not read it again: the
/// producers' state is rebuilt from the newest snapshot, written at every roll, so it
/// normally starts in that segment. Other segments are read as before.
struct Scanned {
    base: i64,
    batches: Vec<ProducerBatch>,
}

/// Log start offset, recovery point, high watermark and cleaner offset.
pub const META_CHECKPOINT: &str = "meta.checkpoint";
/// Present only between a clean close and the next open.
pub const CLEAN_SHUTDOWN_MARKER: &str = "clean-shutdown";
/// Locked (flock) while a `Log` has the directory open.
pub const LOCK_FILE: &str = ".lock";

/// The segments of a log, ordered by base offset; the last one is the active segment.
#[derive(Debug, Default)]
pub struct Segments {
    map: BTreeMap<i64, Segment>,
}

impl Segments {
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Segment> {
        self.map.values()
    }
    pub fn active(&self) -> &Segment {
        self.map
            .values()
            .next_back()
            .expect("a log always has an active segment")
    }
    fn active_mut(&mut self) -> &mut Segment {
        self.map
            .values_mut()
            .next_back()
            .expect("a log always has an active segment")
    }
    /// The segment that would hold `offset`: the last one whose base is <= `offset`.
    pub fn floor(&self, offset: i64) -> Option<&Segment> {
        self.map.range(..=offset).next_back().map(|(_, s)| s)
    }
    /// Segments from the one holding `offset` onwards.
    pub fn from(&self, offset: i64) -> impl Iterator<Item = &Segment> {
        let start = self
            .map
            .range(..=offset)
            .next_back()
            .map(|(&b, _)| b)
            .unwrap_or(i64::MIN);
        self.map.range(start..).map(|(_, s)| s)
    }
    pub fn get(&self, base_offset: i64) -> Option<&Segment> {
        self.map.get(&base_offset)
    }
    pub(super) fn insert(&mut self, segment: Segment) -> Option<Segment> {
        self.map.insert(segment.base_offset(), segment)
    }
    pub(super) fn remove(&mut self, base_offset: i64) -> Option<Segment> {
        self.map.remove(&base_offset)
    }
    pub fn size_bytes(&self) -> u64 {
        self.map.values().map(Segment::size).sum()
    }
}

/// Which offsets a read may return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadLimit {
    /// Consumers: only below the high watermark.
    HighWatermark,
    /// Followers and tools: everything appended.
    LogEnd,
}

/// Whole batches, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    /// Concatenated RecordBatch v2 bytes (empty when there is nothing to read).
    pub records: Bytes,
    pub log_start_offset: i64,
    pub high_watermark: i64,
    pub log_end_offset: i64,
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub first_offset: i64,
    pub last_offset: i64,
    /// The timestamp written when the log uses LogAppendTime.
    pub log_append_time_ms: Option<i64>,
    pub batches: usize,
    pub bytes: usize,
}

/// What retention deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    pub deleted_segments: usize,
    pub deleted_bytes: u64,
}

/// The fsync part of a flush, taken under a read lock and run without one.
#[derive(Debug)]
pub struct FlushJob {
    files: Vec<(PathBuf, Arc<fs::File>)>,
    up_to: i64,
    truncations: u64,
    /// Leader epochs the appends started that the checkpoint file does not hold yet.
    epochs: Option<EpochWrite>,
}

impl FlushJob {
    /// Writes the leader epochs if they changed, then fdatasyncs every segment that may
    /// hold unflushed data; returns the offset below which everything is then durable.
    pub fn run(&self) -> Result<i64> {
        if let Some(epochs) = &self.epochs {
            epochs.run()?;
        }
        for (path, file) in &self.files {
            file.sync_data().at(path)?;
        }
        Ok(self.up_to)
    }
}

/// One partition's log. See the module docs.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    config: LogConfig,
    clock: Arc<dyn Clock>,
    segments: Segments,
    log_start_offset: i64,
    log_end_offset: i64,
    high_watermark: i64,
    recovery_point: AtomicI64,
    cleaner_offset: i64,
    epochs: LeaderEpochCache,
    truncations: AtomicU64,
    flushes: AtomicU64,
    /// Set by an I/O error on a write path or a failed fsync: the log refuses every
    /// change until it is reopened (recovery then decides what survived). A failed fsync
    /// is never retried: the kernel may have dropped the dirty pages it could not write.
    offline: AtomicBool,
    /// A compaction pass is running on this log.
    cleaning: AtomicBool,
    /// Serializes checkpoint writes (they share a temporary file name).
    meta_lock: Mutex<()>,
    /// Idempotent producers' sequence state ([`super::producers`]).
    producers: Producers,
    /// Holds the directory's lock for the life of the `Log`.
    _dir_lock: fs::File,
}

struct Meta {
    log_start_offset: i64,
    recovery_point: i64,
    high_watermark: i64,
    cleaner_offset: i64,
}

impl Log {
    /// Opens the log in `dir` (creating it if missing), recovering after a crash: if the
    /// last close was not clean, every segment from the one holding the recovery point is
    /// scanned, CRCs are checked, indexes rebuilt and a torn or corrupt tail truncated.
    /// Corruption below the recovery point is reported with its path, never dropped.
    pub fn open(dir: &Path, config: LogConfig, clock: Arc<dyn Clock>) -> Result<Log> {
        config.validate()?;
        fs::create_dir_all(dir).at(dir)?;
        let lock_path = dir.join(LOCK_FILE);
        let dir_lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .at(&lock_path)?;
        match dir_lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StorageError::Locked {
                    dir: dir.to_path_buf(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(e).at(&lock_path),
        }
        let now = clock.now_ms();
        let options = SegmentOptions::of(&config);
        // First: a compaction swap that passed its commit point also clears the marker.
        finish_interrupted_operations(dir)?;
        let marker = dir.join(CLEAN_SHUTDOWN_MARKER);
        let mut clean = marker.exists();
        let bases = list_segments(dir)?;
        let meta = match read_meta(dir) {
            Ok(meta) => meta,
            Err(e @ StorageError::CorruptCheckpoint { .. }) => {
                tracing::warn!(error = %e, "ignoring corrupt checkpoint; recovering the whole log");
                clean = false;
                None
            }
            Err(e) => return Err(e),
        };
        let meta = meta.unwrap_or(Meta {
            log_start_offset: bases.first().copied().unwrap_or(0),
            recovery_point: 0,
            high_watermark: 0,
            cleaner_offset: 0,
        });
        let recovery_point = if clean { i64::MAX } else { meta.recovery_point };
        let mut segments = Segments::default();
        let last_base = bases.last().copied();
        for &base in &bases {
            let sealed = Some(base) != last_base;
            segments.insert(Segment::open(dir, base, options, sealed, now)?);
        }
        let mut log = Log {
            dir: dir.to_path_buf(),
            config,
            clock,
            segments,
            log_start_offset: meta.log_start_offset,
            log_end_offset: 0,
            high_watermark: meta.high_watermark,
            recovery_point: AtomicI64::new(0),
            cleaner_offset: meta.cleaner_offset,
            epochs: LeaderEpochCache::load(dir)?,
            truncations: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            offline: AtomicBool::new(false),
            cleaning: AtomicBool::new(false),
            meta_lock: Mutex::new(()),
            producers: Producers::default(),
            _dir_lock: dir_lock,
        };
        let scanned = log.load_segments(recovery_point, clean)?;
        if log.segments.is_empty() {
            let base = log.log_start_offset.max(0);
            log.segments
                .insert(Segment::create(dir, base, options, now)?);
            checkpoint::sync_dir(dir)?;
        }
        log.log_end_offset = log.segments.active().next_offset();
        if !clean && log.log_end_offset < meta.recovery_point {
            return Err(StorageError::CorruptHead {
                path: log.segments.active().log_path().to_path_buf(),
                position: log.segments.active().size(),
                recovery_point: meta.recovery_point,
                reason: format!("the log ends at offset {}", log.log_end_offset),
            });
        }
        // The start may lie below the first segment's base: compaction can empty and
        // delete the first segments without moving the start (reads skip the gap).
        log.log_start_offset = log.log_start_offset.min(log.log_end_offset);
        log.high_watermark = log
            .high_watermark
            .clamp(log.log_start_offset, log.log_end_offset);
        log.cleaner_offset = log.cleaner_offset.min(log.log_end_offset);
        log.epochs.truncate_from_end(log.log_end_offset)?;
        log.rebuild_producers_from(scanned.as_ref())?;
        drop(scanned);
        if !clean {
            // Everything kept was verified; make it durable before calling it recovered.
            for segment in log.segments.from(meta.recovery_point) {
                segment.flush()?;
            }
        }
        log.recovery_point = AtomicI64::new(log.log_end_offset);
        log.write_meta()?;
        remove_if_exists(&marker)?;
        checkpoint::sync_dir(dir)?;
        Ok(log)
    }

    /// Rebuilds the producer state: the newest snapshot at or below the log end, then the
    /// batch headers after it (snapshots above the log end are removed). Without a
    /// snapshot only the active segment is replayed: snapshots are written at every roll
    /// once an idempotent producer has written, so none means none wrote before the active
    /// segment (or the data predates snapshots, whose producers then start afresh). So an
    /// open never reads more than the active segment's headers.
    fn rebuild_producers(&mut self) -> Result<()> {
        self.rebuild_producers_from(None)
    }

    /// [`rebuild_producers`](Self::rebuild_producers), with the producer batches that
    /// recovery collected from a segment it scanned replayed as they are instead of read
    /// again.
    fn rebuild_producers_from(&mut self, scanned: Option<&Scanned>) -> Result<()> {
        producers::remove_snapshots_above(&self.dir, self.log_end_offset)?;
        let now = self.clock.now_ms();
        let active = self
            .segments
            .active()
            .base_offset()
            .max(self.log_start_offset);
        let (mut offset, mut state) =
            match producers::load_snapshot(&self.dir, self.log_end_offset)? {
                Some((at, state)) => (at.max(self.log_start_offset), state),
                None => (active, Producers::default()),
            };
        // Headers only: their CRCs were checked when appended (and by recovery after a
        // crash). A batch damaged on disk since then is a reader's error, not a reason to
        // refuse to open: the replay stops there, with the state up to it.
        'replay: while offset < self.log_end_offset {
            if let Some(scanned) = scanned
                && scanned.base <= offset
                && let Some(segment) = self.segments.map.get(&scanned.base)
                && offset < segment.next_offset()
            {
                let end = segment.next_offset().min(self.log_end_offset);
                for batch in &scanned.batches {
                    if batch.batch.last_offset >= offset && batch.batch.first_offset < end {
                        state.replay_batch(batch, now);
                    }
                }
                offset = end;
                continue;
            }
            let read = self.read(offset, 8 << 20, ReadLimit::LogEnd)?;
            if read.records.is_empty() {
                break;
            }
            for header in fjord_protocol::BatchIter::headers_only(&read.records) {
                let header = match header {
                    Ok(header) => header,
                    Err(e) => {
                        tracing::warn!(dir = %self.dir.display(), offset, error = %e,
                            "producer state rebuilt up to an unreadable batch");
                        break 'replay;
                    }
                };
                if header.last_offset() >= offset {
                    state.replay(&header, now);
                }
                offset = offset.max(header.next_offset());
            }
        }
        state.expire(now, self.config.producer_id_expiration_ms);
        self.producers = state;
        Ok(())
    }

    /// The idempotent producers' state.
    pub fn producers(&self) -> &Producers {
        &self.producers
    }

    /// Loads every segment's offsets; recovers those at or after `recovery_point`, and
    /// returns the producer batches that the last scan found.
    fn load_segments(&mut self, recovery_point: i64, clean: bool) -> Result<Option<Scanned>> {
        let mut scanned = None;
        let bases: Vec<i64> = self.segments.iter().map(Segment::base_offset).collect();
        for (i, &base) in bases.iter().enumerate() {
            let next_base = bases.get(i + 1).copied();
            let below_recovery_point = next_base.is_some_and(|n| n <= recovery_point);
            let segment = self.segments.map.get_mut(&base).expect("listed");
            let trusted = if clean || below_recovery_point {
                segment.indexes_look_consistent(!clean) && segment.load_tail()?
            } else {
                false
            };
            if trusted {
                continue;
            }
            if !clean && !below_recovery_point {
                tracing::info!(segment = %segment.log_path().display(), "recovering segment");
            } else {
                let path = segment.log_path().display();
                tracing::warn!(segment = %path, "rebuilding inconsistent indexes");
            }
            let mut outcome = segment.recover()?;
            scanned = outcome
                .producer_batches
                .take()
                .map(|batches| Scanned { base, batches });
            // The file lags the appends until the next flush or roll: what the scan saw
            // is the truth.
            for &(epoch, start) in &outcome.epochs {
                self.epochs.assign(epoch, start);
            }
            let Some(invalid) = outcome.invalid else {
                continue;
            };
            if below_recovery_point
                || segment.next_offset() < recovery_point.min(i64::MAX - 1) && !clean
            {
                return Err(StorageError::CorruptHead {
                    path: segment.log_path().to_path_buf(),
                    position: invalid.position,
                    recovery_point,
                    reason: invalid.reason,
                });
            }
            if clean {
                // A clean shutdown promised this data; a bad batch here is disk corruption.
                return Err(StorageError::CorruptHead {
                    path: segment.log_path().to_path_buf(),
                    position: invalid.position,
                    recovery_point: segment.next_offset(),
                    reason: invalid.reason,
                });
            }
            tracing::warn!(
                segment = %segment.log_path().display(),
                position = invalid.position,
                reason = %invalid.reason,
                "truncating a torn or corrupt tail"
            );
            segment.truncate_file_to(outcome.valid_bytes)?;
            // Everything after the bad batch goes, as in Kafka.
            for &later in &bases[i + 1..] {
                if let Some(s) = self.segments.remove(later) {
                    s.delete()?;
                }
            }
            break;
        }
        // The last segment must be active (writable).
        if !self.segments.is_empty() && self.segments.active().is_sealed() {
            let active = self.segments.active_mut();
            let size = active.size();
            active.unseal(size)?;
            if !active.load_tail()? {
                active.recover_or_report()?;
            }
        }
        Ok(scanned)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn config(&self) -> &LogConfig {
        &self.config
    }
    /// Applies new settings; they take effect from the next operation.
    pub fn set_config(&mut self, config: LogConfig) -> Result<()> {
        config.validate()?;
        self.config = config;
        Ok(())
    }
    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }
    pub fn log_end_offset(&self) -> i64 {
        self.log_end_offset
    }
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }
    /// Every offset below this was fsync'd.
    pub fn recovery_point(&self) -> i64 {
        self.recovery_point.load(Ordering::SeqCst)
    }
    pub fn cleaner_offset(&self) -> i64 {
        self.cleaner_offset
    }
    pub fn segments(&self) -> &Segments {
        &self.segments
    }
    pub fn size_bytes(&self) -> u64 {
        self.segments.size_bytes()
    }
    pub fn leader_epochs(&self) -> &[(i32, i64)] {
        self.epochs.entries()
    }
    /// Takes the log out of service for good (its topic is being deleted): every later
    /// read, write, flush, checkpoint or compaction of this instance fails, so nothing it
    /// does can touch a directory that a new topic of the same name may own.
    pub fn retire(&mut self) {
        self.offline.store(true, Ordering::SeqCst);
        // A flush job already taken writes the epochs by path: not into a directory that
        // is about to go (or to hold a new log of the same name).
        self.epochs.retire();
    }

    /// Whether an I/O error took the log offline (see [`StorageError::LogOffline`]).
    pub fn is_offline(&self) -> bool {
        self.offline.load(Ordering::SeqCst)
    }

    fn check_online(&self) -> Result<()> {
        if self.is_offline() {
            return Err(StorageError::LogOffline {
                dir: self.dir.clone(),
            });
        }
        Ok(())
    }

    /// Takes the log offline if `result` is an I/O failure.
    fn offline_on_io<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(StorageError::Io { path, source }) = &result {
            tracing::error!(path = %path.display(), error = %source, "I/O error: log offline");
            self.offline.store(true, Ordering::SeqCst);
        }
        result
    }

    /// How many flushes have completed.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }
    /// OffsetForLeaderEpoch: the largest epoch <= `epoch` and its end offset.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, i64)> {
        self.epochs.end_offset_for(epoch, self.log_end_offset)
    }
    pub(super) fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
    pub(super) fn segment_options(&self) -> SegmentOptions {
        SegmentOptions::of(&self.config)
    }

    /// Moves the high watermark (the replication layer decides where); clamped to the log.
    pub fn update_high_watermark(&mut self, offset: i64) {
        self.high_watermark = offset.clamp(self.log_start_offset, self.log_end_offset);
    }

    /// Validates every batch of `batches` (magic, length, CRC-32C, size) before anything
    /// is written, then assigns offsets from the log end: each batch is written with a
    /// patched header (its baseOffset and partitionLeaderEpoch, and LogAppendTime
    /// timestamps if the log uses them; [`batch::patched_prefix`]) beside the rest of
    /// its bytes, all with one vectored write. `batches` itself is not changed, so the
    /// caller's buffer is never copied. On error the log is unchanged.
    pub fn append(&mut self, batches: &[u8], leader_epoch: i32) -> Result<AppendInfo> {
        self.check_online()?;
        let sizes = self.validate(batches)?;
        let now = self.clock.now_ms();
        let log_append_time = self.config.message_timestamp_type == TimestampType::LogAppendTime;
        let mut next = self.log_end_offset;
        let mut metas = Vec::with_capacity(sizes.len());
        let mut position = 0;
        let single = sizes.len() == 1;
        // Idempotent batches, checked in order against the state as the earlier batches
        // of this request leave it (`touched`: the producers' entries as updated here);
        // applied once the write succeeded.
        let mut touched: Vec<(i64, ProducerEntry)> = Vec::new();
        let mut prefixes = Vec::with_capacity(sizes.len());
        for size in sizes {
            let bytes = &batches[position..position + size];
            let header = BatchHeader::parse(bytes)
                .map_err(|source| StorageError::InvalidBatch { position, source })?;
            // A producer's batch holds exactly its offset range (Kafka: "inconsistent
            // batch offset range").
            if header.record_count() < 1 || header.last_offset_delta() != header.record_count() - 1
            {
                return Err(StorageError::InvalidBatch {
                    position,
                    source: fjord_protocol::ProtocolError::InvalidCounts,
                });
            }
            let meta = BatchMeta {
                base_offset: next,
                last_offset: next + header.last_offset_delta() as i64,
                max_timestamp: if log_append_time {
                    now
                } else {
                    header.max_timestamp()
                },
                size: size as u32,
            };
            if header.producer_id() >= 0 && header.base_sequence() >= 0 {
                let id = header.producer_id();
                let epoch = header.producer_epoch();
                let first_seq = header.base_sequence();
                let last_seq = producers::last_sequence(first_seq, header.record_count());
                let at = touched.iter().position(|(t, _)| *t == id);
                let current = match at {
                    Some(i) => Some(&touched[i].1),
                    None => self.producers.get(id),
                };
                match producers::check_entry(current, epoch, first_seq, last_seq) {
                    Ok(SeqCheck::Append) => {
                        let mut entry = current.cloned().unwrap_or_default();
                        let batch = BatchSeq {
                            first_seq,
                            last_seq,
                            first_offset: meta.base_offset,
                            last_offset: meta.last_offset,
                        };
                        producers::record_entry(&mut entry, epoch, batch, now);
                        match at {
                            Some(i) => touched[i].1 = entry,
                            None => touched.push((id, entry)),
                        }
                    }
                    // A retry of a batch already written: answered with its offsets,
                    // not written again.
                    Ok(SeqCheck::Duplicate(seen)) if single => {
                        return Ok(AppendInfo {
                            first_offset: seen.first_offset,
                            last_offset: seen.last_offset,
                            log_append_time_ms: None,
                            batches: 0,
                            bytes: 0,
                        });
                    }
                    Ok(SeqCheck::Duplicate(_)) => {
                        return Err(StorageError::DuplicateSequence { producer_id: id });
                    }
                    Err(SeqError::OutOfOrder { expected }) => {
                        return Err(StorageError::OutOfOrderSequence {
                            producer_id: id,
                            expected,
                            got: first_seq,
                        });
                    }
                    Err(SeqError::InvalidEpoch { current }) => {
                        return Err(StorageError::InvalidProducerEpoch {
                            producer_id: id,
                            epoch,
                            current,
                        });
                    }
                }
            }
            prefixes.push(batch::patched_prefix(
                bytes,
                next,
                leader_epoch,
                log_append_time.then_some(now),
            ));
            next = meta.last_offset + 1;
            metas.push(meta);
            position += size;
        }
        let first_offset = self.log_end_offset;
        // In memory: the next flush writes it before the recovery point passes the data,
        // and recovery rebuilds it from the batches after the recovery point.
        self.epochs.assign(leader_epoch, first_offset);
        let mut parts = Vec::with_capacity(2 * metas.len());
        let mut position = 0;
        for (prefix, meta) in prefixes.iter().zip(&metas) {
            let end = position + meta.size as usize;
            parts.push(IoSlice::new(prefix));
            parts.push(IoSlice::new(
                &batches[position + batch::PATCHED_PREFIX..end],
            ));
            position = end;
        }
        let written = self.write(&parts, &metas);
        self.offline_on_io(written)?;
        for (id, entry) in touched {
            self.producers.insert(id, entry);
        }
        Ok(AppendInfo {
            first_offset,
            last_offset: next - 1,
            log_append_time_ms: log_append_time.then_some(now),
            batches: metas.len(),
            bytes: batches.len(),
        })
    }

    /// Appends batches that already carry their offsets and epochs (a follower copying
    /// its leader). Offsets must increase from the log end; gaps are allowed.
    pub fn append_replicated(&mut self, batches: &[u8]) -> Result<AppendInfo> {
        self.check_online()?;
        let sizes = self.validate(batches)?;
        let mut metas = Vec::with_capacity(sizes.len());
        let mut expected = self.log_end_offset;
        let mut position = 0;
        let mut epochs = Vec::new();
        for size in sizes {
            let header = BatchHeader::parse(&batches[position..position + size])
                .map_err(|source| StorageError::InvalidBatch { position, source })?;
            if header.base_offset() < expected {
                return Err(StorageError::NonMonotonicOffset {
                    base_offset: header.base_offset(),
                    log_end_offset: expected,
                });
            }
            epochs.push((header.partition_leader_epoch(), header.base_offset()));
            let meta = BatchMeta::of(&header);
            expected = meta.last_offset + 1;
            metas.push(meta);
            position += size;
        }
        let first_offset = metas[0].base_offset;
        for (epoch, offset) in epochs {
            self.epochs.assign(epoch, offset);
        }
        let written = self.write(&[IoSlice::new(batches)], &metas);
        self.offline_on_io(written)?;
        Ok(AppendInfo {
            first_offset,
            last_offset: expected - 1,
            log_append_time_ms: None,
            batches: metas.len(),
            bytes: batches.len(),
        })
    }

    /// Checks every batch; returns their sizes.
    fn validate(&self, batches: &[u8]) -> Result<Vec<usize>> {
        if batches.is_empty() {
            return Err(StorageError::InvalidBatch {
                position: 0,
                source: fjord_protocol::ProtocolError::Truncated {
                    needed: batch::HEADER_SIZE,
                    available: 0,
                },
            });
        }
        let mut sizes = Vec::new();
        let mut position = 0;
        while position < batches.len() {
            let header = BatchHeader::validate(&batches[position..])
                .map_err(|source| StorageError::InvalidBatch { position, source })?;
            if header.size() > self.config.max_message_bytes {
                return Err(StorageError::BatchTooLarge {
                    size: header.size(),
                    limit: self.config.max_message_bytes,
                });
            }
            sizes.push(header.size());
            position += header.size();
        }
        Ok(sizes)
    }

    /// Writes `parts`, the bytes of the batches `metas` one after the other.
    fn write(&mut self, parts: &[IoSlice<'_>], metas: &[BatchMeta]) -> Result<()> {
        let len: u64 = metas.iter().map(|m| m.size as u64).sum();
        let last_offset = metas.last().expect("at least one batch").last_offset;
        if last_offset - metas[0].base_offset > u32::MAX as i64 {
            // Not even a new segment could index it.
            return Err(StorageError::InvalidBatch {
                position: 0,
                source: fjord_protocol::ProtocolError::InvalidCounts,
            });
        }
        if self.should_roll(len, last_offset) {
            self.roll_at(metas[0].base_offset)?;
        }
        self.segments.active_mut().append(parts, metas)?;
        self.log_end_offset = last_offset + 1;
        Ok(())
    }

    /// Whether appending `bytes` now would roll the segment first (a roll fsyncs; callers
    /// that must not block long check this first). An estimate of [`Self::should_roll`]:
    /// the batches' offsets are not known yet.
    pub fn would_roll(&self, bytes: u64) -> bool {
        self.should_roll(
            bytes,
            self.log_end_offset + bytes.min(u32::MAX as u64) as i64 / 8,
        )
    }

    fn should_roll(&self, bytes: u64, last_offset: i64) -> bool {
        let active = self.segments.active();
        if active.is_empty() {
            return !active.can_hold_offset(last_offset);
        }
        active.size() + bytes > self.config.segment_bytes
            || self.clock.now_ms() - active.created_ms() >= self.config.segment_ms
            || active.index_is_full()
            || !active.can_hold_offset(last_offset)
    }

    /// Seals the active segment and starts a new one at the log end offset (no-op when
    /// the active segment is empty).
    pub fn roll(&mut self) -> Result<()> {
        self.check_online()?;
        if self.segments.active().is_empty() {
            return Ok(());
        }
        let rolled = self.roll_at(self.log_end_offset);
        self.offline_on_io(rolled)
    }

    /// Seals the active segment, fsyncs it, and only then creates the next one: so every
    /// sealed segment is durable and complete, and only the last segment of a log can
    /// ever have a torn tail. The recovery point moves to the log end and is checkpointed.
    fn roll_at(&mut self, base_offset: i64) -> Result<()> {
        let options = self.segment_options();
        let now = self.clock.now_ms();
        let active = self.segments.active_mut();
        let old = active.base_offset();
        if active.is_empty() {
            // Nothing to seal: start the (empty) active segment at the new base instead.
            if old == base_offset {
                return Ok(());
            }
            let new = Segment::create(&self.dir, base_offset, options, now)?;
            if let Some(s) = self.segments.remove(old) {
                s.delete()?;
            }
            self.segments.insert(new);
        } else {
            active.seal()?;
            active.flush()?;
            let durable = self.log_end_offset;
            // The epochs of the data the recovery point is about to pass.
            self.epochs.persist()?;
            // The producer state below the new segment, before the segment exists: a
            // restart replays only the headers written after it.
            self.producers
                .expire(now, self.config.producer_id_expiration_ms);
            self.producers.write_snapshot(&self.dir, base_offset)?;
            self.segments
                .insert(Segment::create(&self.dir, base_offset, options, now)?);
            self.recovery_point.fetch_max(durable, Ordering::SeqCst);
            // Checkpointed now, not at the next periodic checkpoint: a restart after a
            // crash then scans only the segment written since (a small file per roll).
            self.write_meta()?;
        }
        checkpoint::sync_dir(&self.dir)
    }

    /// Whole batches from the one holding `offset`, at most `max_bytes` (at least one
    /// whole batch, as Kafka's KIP-74), never past `limit`. Records are not decoded.
    pub fn read(&self, offset: i64, max_bytes: usize, limit: ReadLimit) -> Result<ReadResult> {
        self.check_online()?;
        if offset < self.log_start_offset || offset > self.log_end_offset {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start_offset: self.log_start_offset,
                log_end_offset: self.log_end_offset,
            });
        }
        let limit_offset = match limit {
            ReadLimit::HighWatermark => self.high_watermark,
            ReadLimit::LogEnd => self.log_end_offset,
        };
        let mut records = Bytes::new();
        if offset < limit_offset {
            for segment in self.segments.from(offset) {
                if segment.base_offset() >= limit_offset {
                    break;
                }
                if let Some(bytes) =
                    segment.read(offset.max(segment.base_offset()), max_bytes, limit_offset)?
                {
                    records = bytes;
                    break;
                }
            }
        }
        Ok(ReadResult {
            records,
            log_start_offset: self.log_start_offset,
            high_watermark: self.high_watermark,
            log_end_offset: self.log_end_offset,
        })
    }

    /// The first offset, below the high watermark, of a record whose timestamp is at or
    /// after `timestamp_ms`, with that record's timestamp (Kafka's ListOffsets by time).
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<(i64, i64)>> {
        self.check_online()?;
        for segment in self.segments.iter() {
            if segment.next_offset() <= self.log_start_offset
                || segment.max_timestamp() < timestamp_ms
            {
                continue;
            }
            if let Some(found) =
                segment.offset_for_timestamp(timestamp_ms, self.log_start_offset)?
            {
                return Ok((found.0 < self.high_watermark).then_some(found));
            }
        }
        Ok(None)
    }

    /// Removes every record at or after `offset` (replication: a follower dropping
    /// divergent history). A batch that straddles `offset` is removed whole, and the log
    /// end becomes the end of the kept data (at most `offset`). Truncating below the log
    /// start offset empties the log and restarts it at `offset`.
    pub fn truncate_to(&mut self, offset: i64) -> Result<()> {
        assert!(offset >= 0, "truncate to negative offset {offset}");
        self.check_online()?;
        if offset >= self.log_end_offset {
            return Ok(());
        }
        let truncated = self.truncate_files(offset);
        self.offline_on_io(truncated)
    }

    fn truncate_files(&mut self, offset: i64) -> Result<()> {
        *self.truncations.get_mut() += 1;
        // Where the kept data will end: before a batch that straddles `offset`, or at the
        // end of the data when `offset` falls in a gap.
        let new_end = match self.segments.floor(offset - 1) {
            Some(segment) if offset >= self.log_start_offset => match segment.find(offset)? {
                Some((_, straddler)) => straddler.base_offset.min(offset),
                None => segment.next_offset().min(offset),
            },
            _ => offset,
        };
        // Persist the lower recovery point before any file changes, so a crash midway
        // never leaves a log that ends below its checkpointed recovery point.
        let rp = self.recovery_point.get_mut();
        *rp = (*rp).min(new_end);
        self.cleaner_offset = self.cleaner_offset.min(offset);
        self.write_meta()?;
        if offset < self.log_start_offset {
            return self.truncate_fully_and_start_at(offset);
        }
        let keeps_one = self.segments.iter().any(|s| s.base_offset() < offset);
        if !keeps_one {
            return self.truncate_fully_and_start_at(offset);
        }
        // Newest first, so a crash midway leaves a prefix, never a hole.
        let later: Vec<i64> = self
            .segments
            .iter()
            .map(Segment::base_offset)
            .filter(|&b| b >= offset)
            .rev()
            .collect();
        for base in later {
            if let Some(s) = self.segments.remove(base) {
                s.delete()?;
            }
        }
        self.segments.active_mut().truncate_to(offset)?;
        // The new end is where the kept data ends, which is what a reopen finds on disk;
        // it is below `offset` when `offset` fell in a compaction gap or inside a batch.
        let new_end = self.segments.active().next_offset();
        assert!(
            new_end <= offset,
            "truncation to {offset} kept data up to {new_end}"
        );
        self.after_truncation(new_end)
    }

    fn truncate_fully_and_start_at(&mut self, offset: i64) -> Result<()> {
        // No batch survives: neither does any producer's state.
        producers::remove_snapshots_above(&self.dir, -1)?;
        let bases: Vec<i64> = self
            .segments
            .iter()
            .map(Segment::base_offset)
            .rev()
            .collect();
        for base in bases {
            if let Some(s) = self.segments.remove(base) {
                s.delete()?;
            }
        }
        let options = self.segment_options();
        self.segments.insert(Segment::create(
            &self.dir,
            offset,
            options,
            self.clock.now_ms(),
        )?);
        checkpoint::sync_dir(&self.dir)?;
        // Below the start (Kafka's truncateFullyAndStartAt) the log restarts at `offset`;
        // otherwise the kept part was empty (compacted away) and the start stays.
        self.log_start_offset = self.log_start_offset.min(offset);
        self.after_truncation(offset)
    }

    fn after_truncation(&mut self, new_end: i64) -> Result<()> {
        self.log_end_offset = new_end;
        self.log_start_offset = self.log_start_offset.min(new_end);
        self.high_watermark = self.high_watermark.min(new_end);
        let rp = self.recovery_point.get_mut();
        *rp = (*rp).min(new_end);
        self.cleaner_offset = self.cleaner_offset.min(new_end);
        self.epochs.truncate_from_end(new_end)?;
        self.write_meta()?;
        self.rebuild_producers()
    }

    /// Kafka's DeleteRecords: moves the log start offset up to `offset` (at most the high
    /// watermark) and deletes the segments wholly below it.
    pub fn delete_records(&mut self, offset: i64) -> Result<i64> {
        self.check_online()?;
        if offset > self.high_watermark {
            return Err(StorageError::DeleteBeyondHighWatermark {
                offset,
                high_watermark: self.high_watermark,
            });
        }
        if offset > self.log_start_offset {
            self.log_start_offset = offset;
            let persisted = self
                .epochs
                .truncate_from_start(offset)
                .and_then(|()| self.write_meta());
            self.offline_on_io(persisted)?;
            let deleted = self.execute_retention(&RetentionPolicy {
                retention_ms: -1,
                retention_bytes: -1,
                delete_enabled: false,
            });
            self.offline_on_io(deleted)?;
        }
        Ok(self.log_start_offset)
    }

    /// What the retention planner needs to know of each segment.
    pub fn segment_summaries(&self) -> Vec<SegmentSummary> {
        let count = self.segments.len();
        self.segments
            .iter()
            .enumerate()
            .map(|(i, s)| SegmentSummary {
                base_offset: s.base_offset(),
                next_offset: s.next_offset(),
                size_bytes: s.size(),
                max_timestamp: if s.max_timestamp() == segment::NO_TIMESTAMP {
                    s.last_modified_ms()
                } else {
                    s.max_timestamp()
                },
                sealed: i + 1 < count,
            })
            .collect()
    }

    /// Applies `retention.ms`, `retention.bytes` (when `cleanup.policy` has `delete`) and
    /// the log start offset: deletes whole sealed segments, oldest first.
    pub fn apply_retention(&mut self) -> Result<RetentionOutcome> {
        self.check_online()?;
        let policy = RetentionPolicy {
            retention_ms: self.config.retention_ms,
            retention_bytes: self.config.retention_bytes,
            delete_enabled: self.config.cleanup_policy.delete,
        };
        let outcome = self.execute_retention(&policy);
        self.offline_on_io(outcome)
    }

    fn execute_retention(&mut self, policy: &RetentionPolicy) -> Result<RetentionOutcome> {
        let position = retention::LogPosition {
            log_start_offset: self.log_start_offset,
            high_watermark: self.high_watermark,
            now_ms: self.clock.now_ms(),
        };
        let plan = retention::plan(&self.segment_summaries(), position, policy);
        let mut outcome = RetentionOutcome::default();
        if plan.delete.is_empty() {
            return Ok(outcome);
        }
        if let Some(start) = plan.new_log_start_offset {
            // Persist the new start first: a crash after it leaves segments that the next
            // open deletes again; the reverse order could resurrect deleted records.
            self.log_start_offset = self.log_start_offset.max(start);
            assert!(
                self.log_start_offset <= self.high_watermark,
                "retention above the HW"
            );
            self.cleaner_offset = self.cleaner_offset.max(self.log_start_offset);
            self.epochs.truncate_from_start(self.log_start_offset)?;
            self.write_meta()?;
        }
        for (base, reason) in plan.delete {
            if let Some(segment) = self.segments.remove(base) {
                let path = segment.log_path().display();
                tracing::info!(segment = %path, ?reason, "retention deletes segment");
                outcome.deleted_segments += 1;
                outcome.deleted_bytes += segment.size();
                segment.delete()?;
            }
        }
        Ok(outcome)
    }

    /// The fsync work of a flush, to run without holding the log's lock.
    pub fn flush_job(&self) -> Result<FlushJob> {
        self.check_online()?;
        let recovery_point = self.recovery_point();
        Ok(FlushJob {
            files: self
                .segments
                .from(recovery_point)
                .map(|s| (s.log_path().to_path_buf(), s.file()))
                .collect(),
            up_to: self.log_end_offset,
            truncations: self.truncations.load(Ordering::SeqCst),
            epochs: self.epochs.pending(),
        })
    }

    /// Publishes a finished flush: moves the recovery point, unless the log was truncated
    /// meanwhile (then the job's offset may name data that is gone or rewritten). A failed
    /// job takes the log offline. Returns the recovery point, the offset below which data
    /// is durable, which is what a [`GroupCommit`](super::GroupCommit) may publish.
    pub fn complete_flush(&self, job: &FlushJob, outcome: Result<i64>) -> Result<i64> {
        let durable = self.offline_on_io(outcome)?;
        self.flushes.fetch_add(1, Ordering::SeqCst);
        if self.truncations.load(Ordering::SeqCst) == job.truncations {
            self.recovery_point
                .fetch_max(durable.min(self.log_end_offset), Ordering::SeqCst);
        }
        Ok(self.recovery_point())
    }

    /// fsync everything appended so far; returns the new recovery point.
    pub fn flush(&self) -> Result<i64> {
        let job = self.flush_job()?;
        self.complete_flush(&job, job.run())
    }

    /// [`flush`](Self::flush) of a shared log: the job is taken and published under the
    /// read lock, the fsync runs with no lock held, so appends go on meanwhile.
    pub fn flush_shared(log: &RwLock<Log>) -> Result<i64> {
        let read = || log.read().unwrap_or_else(|p| p.into_inner());
        let job = read().flush_job()?;
        let outcome = job.run();
        read().complete_flush(&job, outcome)
    }

    /// Persists the log start offset, recovery point, high watermark and cleaner offset.
    /// The broker calls it periodically; the log calls it when the start offset moves.
    pub fn checkpoint(&self) -> Result<()> {
        self.check_online()?;
        self.write_meta()
    }

    fn write_meta(&self) -> Result<()> {
        let _serialized = self.meta_lock.lock().unwrap_or_else(|p| p.into_inner());
        checkpoint::write(
            &self.dir.join(META_CHECKPOINT),
            &[
                ("log_start_offset", self.log_start_offset.to_string()),
                ("recovery_point", self.recovery_point().to_string()),
                ("high_watermark", self.high_watermark.to_string()),
                ("cleaner_offset", self.cleaner_offset.to_string()),
            ],
        )
    }

    /// Clean shutdown: flush, trim the indexes, checkpoint, and write the marker that lets
    /// the next open skip recovery.
    pub fn close(mut self) -> Result<()> {
        self.check_online()?;
        self.flush()?;
        self.segments.active_mut().seal()?;
        self.write_meta()?;
        self.producers
            .write_snapshot(&self.dir, self.log_end_offset)?;
        let marker = self.dir.join(CLEAN_SHUTDOWN_MARKER);
        fs::File::create(&marker)
            .at(&marker)?
            .sync_all()
            .at(&marker)?;
        checkpoint::sync_dir(&self.dir)
    }

    /// Deletes the whole log directory (topic deletion).
    pub fn delete(self) -> Result<()> {
        let dir = self.dir.clone();
        drop(self);
        fs::remove_dir_all(&dir).at(&dir)
    }

    /// For crash tests: each segment's log file with its durable length (the bytes below
    /// the recovery point) and its current length.
    #[cfg(test)]
    pub(crate) fn durable_layout(&self) -> Vec<(PathBuf, u64, u64)> {
        let rp = self.recovery_point();
        self.segments
            .iter()
            .map(|s| {
                let durable = if s.next_offset() <= rp {
                    s.size()
                } else if s.base_offset() >= rp {
                    0
                } else {
                    s.find(rp)
                        .expect("find")
                        .map(|(p, _)| p)
                        .unwrap_or(s.size())
                };
                (s.log_path().to_path_buf(), durable, s.size())
            })
            .collect()
    }

    // --- for the cleaner ---

    /// Marks a compaction pass as running; `false` if one already is.
    pub(super) fn try_start_cleaning(&self) -> bool {
        !self.cleaning.swap(true, Ordering::SeqCst)
    }

    pub(super) fn finish_cleaning(&self) {
        self.cleaning.store(false, Ordering::SeqCst);
    }

    /// Changes each time the log is truncated (the cleaner aborts a pass across one).
    pub(super) fn truncations(&self) -> u64 {
        self.truncations.load(Ordering::SeqCst)
    }

    pub(super) fn set_cleaner_offset(&mut self, offset: i64) -> Result<()> {
        self.cleaner_offset = offset.min(self.log_end_offset);
        self.write_meta()
    }

    /// Replaces (or, with `None`, deletes) the sealed segment at `base_offset`.
    pub(super) fn replace_segment_with(
        &mut self,
        base_offset: i64,
        replacement: Option<Segment>,
    ) -> Result<()> {
        let old = self
            .segments
            .remove(base_offset)
            .expect("segment to replace exists");
        assert!(
            old.is_sealed(),
            "the cleaner never touches the active segment"
        );
        match replacement {
            Some(segment) => {
                // The new files were renamed over the old names; just drop the old handles.
                drop(old);
                self.segments.insert(segment);
            }
            None => old.delete()?,
        }
        Ok(())
    }

    pub(super) fn options_and_dir(&self) -> (SegmentOptions, PathBuf) {
        (self.segment_options(), self.dir.clone())
    }
}

fn read_meta(dir: &Path) -> Result<Option<Meta>> {
    let path = dir.join(META_CHECKPOINT);
    let Some(entries) = checkpoint::read(&path)? else {
        return Ok(None);
    };
    let get = |key: &str| -> Result<i64> {
        entries
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.parse().ok())
            .ok_or_else(|| StorageError::CorruptCheckpoint {
                path: path.clone(),
                reason: format!("missing or bad {key}"),
            })
    };
    Ok(Some(Meta {
        log_start_offset: get("log_start_offset")?,
        recovery_point: get("recovery_point")?,
        high_watermark: get("high_watermark")?,
        cleaner_offset: get("cleaner_offset")?,
    }))
}

/// Base offsets of the `.log` files in `dir`, sorted.
fn list_segments(dir: &Path) -> Result<Vec<i64>> {
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        let name = entry.at(dir)?.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".log")
            && stem.len() == 20
            && let Ok(base) = stem.parse::<i64>()
        {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Cleans up after a crash in the middle of a file operation:
/// - `*.deleted`, `*.tmp`, `*.unsealing`, `*.cleaned`: an operation that had not reached
///   its commit point (or had passed it and was only tidying); removed;
/// - `N.log.swap`: a compaction that had committed (the swap file is renamed over the
///   original); its `.index.swap` / `.timeindex.swap` follow it, or, if missing, the old
///   index files are removed so that recovery rebuilds them;
/// - `*.index` / `*.timeindex` without a `.log`: removed.
pub(super) fn finish_interrupted_operations(dir: &Path) -> Result<()> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        names.push(entry.at(dir)?.file_name().to_string_lossy().into_owned());
    }
    for name in &names {
        let path = dir.join(name);
        if [".deleted", ".tmp", ".unsealing", ".cleaned"]
            .iter()
            .any(|s| name.ends_with(s))
        {
            remove_if_exists(&path)?;
        }
    }
    for name in &names {
        let Some(stem) = name.strip_suffix(".log.swap") else {
            continue;
        };
        let Ok(base) = stem.parse::<i64>() else {
            continue;
        };
        for kind in [segment::INDEX_SUFFIX, segment::TIME_INDEX_SUFFIX] {
            let swap = segment_file(dir, base, kind, ".swap");
            let target = segment_file(dir, base, kind, "");
            if swap.exists() {
                fs::rename(&swap, &target).at(&target)?;
            } else {
                remove_if_exists(&target)?;
            }
        }
        let target = segment_file(dir, base, LOG_SUFFIX, "");
        fs::rename(dir.join(name), &target).at(&target)?;
        // The swapped-in segment's indexes may not match: rebuild them on open by
        // treating the log as not cleanly shut down.
        remove_if_exists(&dir.join(CLEAN_SHUTDOWN_MARKER))?;
    }
    for name in &names {
        if name.ends_with(".swap") && !name.ends_with(".log.swap") {
            let path = dir.join(name);
            if path.exists() {
                remove_if_exists(&path)?;
            }
        }
    }
    for entry in fs::read_dir(dir).at(dir)? {
        let name = entry.at(dir)?.file_name().to_string_lossy().into_owned();
        for kind in [".index", ".timeindex"] {
            if let Some(stem) = name.strip_suffix(kind)
                && !dir.join(format!("{stem}.log")).exists()
            {
                remove_if_exists(&dir.join(&name))?;
            }
        }
    }
    checkpoint::sync_dir(dir)
}
