//! Key compaction (`cleanup.policy=compact`), as Kafka's log cleaner.
//!
//! A pass over one log has three phases, so that appends and reads go on meanwhile:
//! 1. [`plan`] (read lock, no I/O): the sealed segments, the first dirty offset (the
//!    cleaner offset), and the dirty ratio = dirty bytes / sealed bytes. Below
//!    `min.cleanable.dirty.ratio` there is nothing to do. The active segment is never
//!    part of a pass, nor any segment not yet wholly below the recovery point (fsync'd).
//! 2. [`build`] (no lock): an offset map `hash(key) -> latest offset` over the dirty
//!    records, bounded by the configured buffer (when it fills, the pass stops at that
//!    offset and the rest waits for the next pass); then every sealed segment below that
//!    offset is rewritten into `N.log.cleaned` keeping, in order and at their offsets, the
//!    records whose key has no later offset in the map, records without a key, and
//!    tombstones (null value) younger than `delete.retention.ms` (by the batch's max
//!    timestamp). Untouched batches are copied byte for byte; filtered ones are re-encoded
//!    with their original compression and producer fields.
//! 3. [`commit`] (write lock): for each rewritten segment still present, the swap:
//!    `.index.cleaned`/`.timeindex.cleaned` -> `.swap`, then `.log.cleaned` -> `.log.swap`
//!    (the commit point), then each `.swap` renamed over its original. A crash before the
//!    commit point leaves the original (open deletes `.cleaned` and stray `.swap`); after
//!    it, open finishes the renames (`log::finish_interrupted_operations`). A segment left
//!    with no records is deleted. Then the cleaner offset moves to the end of the pass.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use fjord_protocol::batch::{BatchHeader, BatchIter};
use fjord_protocol::codec::{Compression, DecodedRecord, decode_records, reencode_records};

use super::checkpoint;
use super::config::CLEANER_DEDUPE_BUFFER_BYTES_DEFAULT;
use super::log::Log;
use super::mmap::ReadMap;
use super::segment::{
    BatchMeta, INDEX_SUFFIX, LOG_SUFFIX, Segment, SegmentOptions, TIME_INDEX_SUFFIX, segment_file,
};
use super::{IoContext, Result, StorageError};

/// Bytes one offset-map entry is budgeted (16-byte key hash + 8-byte offset, as Kafka).
pub const OFFSET_MAP_ENTRY_BYTES: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanerConfig {
    /// `log.cleaner.dedupe.buffer.size`: memory for the offset map.
    pub dedupe_buffer_bytes: usize,
    /// `log.cleaner.backoff.ms`: pause between passes of the background thread.
    pub backoff_ms: u64,
}

impl Default for CleanerConfig {
    fn default() -> Self {
        CleanerConfig {
            dedupe_buffer_bytes: CLEANER_DEDUPE_BUFFER_BYTES_DEFAULT,
            backoff_ms: 15_000,
        }
    }
}

impl CleanerConfig {
    pub fn map_entries_max(&self) -> usize {
        (self.dedupe_buffer_bytes / OFFSET_MAP_ENTRY_BYTES).max(1)
    }
}

/// Progress counters for metrics. Shared; updated by the cleaner.
#[derive(Debug, Default)]
pub struct CleanerStats {
    pub passes: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub records_removed: AtomicU64,
    /// f64 bits of the dirty ratio of the last log looked at.
    last_dirty_ratio_bits: AtomicU64,
}

impl CleanerStats {
    pub fn last_dirty_ratio(&self) -> f64 {
        f64::from_bits(self.last_dirty_ratio_bits.load(Ordering::Relaxed))
    }
}

/// What one pass did.
#[derive(Debug, Clone, PartialEq)]
pub struct CleanSummary {
    pub dirty_ratio: f64,
    pub first_dirty_offset: i64,
    pub end_offset: i64,
    pub segments_rewritten: usize,
    pub segments_deleted: usize,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub records_removed: u64,
}

/// A sealed segment as the cleaner sees it.
#[derive(Debug, Clone)]
struct SealedView {
    log_path: PathBuf,
    base_offset: i64,
    next_offset: i64,
    size: u64,
    map: ReadMap,
}

/// Phase 1's result.
#[derive(Debug)]
pub struct CleanPlan {
    dir: PathBuf,
    options: SegmentOptions,
    segments: Vec<SealedView>,
    first_dirty: i64,
    dirty_ratio: f64,
    now_ms: i64,
    delete_retention_ms: i64,
    truncations: u64,
}

/// Phase 2's result.
#[derive(Debug)]
pub struct Built {
    truncations: u64,
    end_offset: i64,
    first_dirty: i64,
    dirty_ratio: f64,
    outputs: Vec<Output>,
    bytes_read: u64,
    records_removed: u64,
}

#[derive(Debug)]
struct Output {
    base_offset: i64,
    original: ReadMap,
    /// `None`: every record of the segment was removed.
    cleaned: Option<u64>,
}

/// The dirty ratio and the plan, or `None` when the log is not compacted or not dirty
/// enough. Pure: reads only in-memory state.
pub fn plan(log: &Log) -> (f64, Option<CleanPlan>) {
    let config = log.config();
    if !config.cleanup_policy.compact || log.is_offline() {
        return (0.0, None);
    }
    // Only durable, committed segments (below the recovery point and the high watermark)
    // are cleaned: a value is never removed in favour of a newer one that a crash or a
    // replication truncation could still take away.
    let upper_bound = log.recovery_point().min(log.high_watermark());
    let segments: Vec<SealedView> = log
        .segments()
        .iter()
        .filter(|s| s.next_offset() <= upper_bound)
        .filter_map(|s| {
            s.map().map(|map| SealedView {
                log_path: s.log_path().to_path_buf(),
                base_offset: s.base_offset(),
                next_offset: s.next_offset(),
                size: s.size(),
                map: map.clone(),
            })
        })
        .collect();
    let first_dirty = log.cleaner_offset().max(log.log_start_offset());
    let (mut clean, mut dirty) = (0u64, 0u64);
    for s in &segments {
        if s.next_offset <= first_dirty {
            clean += s.size;
        } else {
            dirty += s.size;
        }
    }
    if dirty == 0 {
        return (0.0, None);
    }
    let ratio = dirty as f64 / (clean + dirty) as f64;
    if ratio < config.min_cleanable_dirty_ratio {
        return (ratio, None);
    }
    let (options, dir) = log.options_and_dir();
    (
        ratio,
        Some(CleanPlan {
            dir,
            options,
            segments,
            first_dirty,
            dirty_ratio: ratio,
            now_ms: log.clock().now_ms(),
            delete_retention_ms: config.delete_retention_ms,
            truncations: log.truncations(),
        }),
    )
}

fn key_hash(key: &[u8]) -> u128 {
    let mut a = std::collections::hash_map::DefaultHasher::new();
    0u8.hash(&mut a);
    key.hash(&mut a);
    let mut b = std::collections::hash_map::DefaultHasher::new();
    1u8.hash(&mut b);
    key.hash(&mut b);
    ((a.finish() as u128) << 64) | b.finish() as u128
}

/// The batches of a sealed segment; a batch that does not parse is reported with the
/// segment's path (it was valid when written, so the disk changed under it).
fn batches_of(view: &SealedView) -> Result<Vec<BatchHeader<'_>>> {
    let mut position = 0u64;
    let mut batches = Vec::new();
    for header in BatchIter::headers_only(view.map.as_slice()) {
        let header = header.map_err(|e| StorageError::CorruptSegment {
            path: view.log_path.clone(),
            position,
            reason: e.to_string(),
        })?;
        position += header.size() as u64;
        batches.push(header);
    }
    Ok(batches)
}

fn codec(e: fjord_protocol::ProtocolError) -> StorageError {
    StorageError::Codec(e)
}

/// Phase 2: builds the offset map and writes the cleaned segments (`.cleaned` files).
pub fn build(plan: &CleanPlan, config: &CleanerConfig) -> Result<Built> {
    let entries_max = config.map_entries_max();
    let mut map: HashMap<u128, i64> = HashMap::new();
    let mut bytes_read = 0u64;
    let sealed_end = plan
        .segments
        .last()
        .map(|s| s.next_offset)
        .unwrap_or(plan.first_dirty);
    let mut end_offset = sealed_end;
    'segments: for view in plan
        .segments
        .iter()
        .filter(|s| s.next_offset > plan.first_dirty)
    {
        bytes_read += view.size;
        for header in batches_of(view)? {
            // Control and transactional batches are kept as they are and never supersede
            // anything (an aborted write must not delete a committed value).
            if header.last_offset() < plan.first_dirty
                || header.is_control()
                || header.is_transactional()
            {
                continue;
            }
            for record in decode_records(header.as_bytes()).map_err(codec)? {
                let Some(key) = &record.key else { continue };
                if record.offset < plan.first_dirty {
                    continue;
                }
                let full = map.len() >= entries_max;
                match map.entry(key_hash(key)) {
                    Entry::Occupied(mut e) => {
                        e.insert(record.offset);
                    }
                    Entry::Vacant(_) if full => {
                        end_offset = record.offset;
                        break 'segments;
                    }
                    Entry::Vacant(e) => {
                        e.insert(record.offset);
                    }
                }
            }
        }
    }
    if end_offset <= plan.first_dirty {
        return Err(StorageError::CleanerMapTooSmall {
            entries: entries_max,
        });
    }
    let tombstone_horizon = plan.now_ms.saturating_sub(plan.delete_retention_ms);
    let mut outputs = Vec::new();
    let mut records_removed = 0u64;
    for view in plan.segments.iter().filter(|s| s.base_offset < end_offset) {
        let mut kept: Vec<(Vec<u8>, BatchMeta)> = Vec::new();
        let mut changed = false;
        for header in batches_of(view)? {
            if header.is_control() || header.is_transactional() {
                kept.push((header.as_bytes().to_vec(), BatchMeta::of(&header)));
                continue;
            }
            let records = decode_records(header.as_bytes()).map_err(codec)?;
            let total = records.len();
            let old_tombstone = header.max_timestamp() < tombstone_horizon;
            let retained: Vec<DecodedRecord> = records
                .into_iter()
                .filter(|r| {
                    let Some(key) = &r.key else { return true };
                    let latest = map.get(&key_hash(key)).copied();
                    if latest.is_some_and(|latest| latest > r.offset) {
                        return false;
                    }
                    // An expired tombstone goes only when no older value of its key can be
                    // left behind: it is the latest the map saw in this pass, or it lies in
                    // the clean part, whose older values earlier passes removed. Past the
                    // end of the pass (the map filled) it always stays.
                    let is_latest = latest == Some(r.offset)
                        || (latest.is_none() && r.offset < plan.first_dirty);
                    !(r.value.is_none() && old_tombstone && is_latest && r.offset < end_offset)
                })
                .collect();
            records_removed += (total - retained.len()) as u64;
            if retained.len() == total {
                kept.push((header.as_bytes().to_vec(), BatchMeta::of(&header)));
            } else {
                changed = true;
                if !retained.is_empty() {
                    let compression =
                        Compression::from_id(header.compression_id()).map_err(codec)?;
                    let bytes = reencode_records(&retained, compression).map_err(codec)?;
                    let meta = BatchMeta::of(&BatchHeader::parse(&bytes).map_err(codec)?);
                    kept.push((bytes.to_vec(), meta));
                }
            }
        }
        if !changed {
            continue;
        }
        let cleaned = if kept.is_empty() {
            None
        } else {
            let mut segment = Segment::create_with_suffix(
                &plan.dir,
                view.base_offset,
                plan.options,
                plan.now_ms,
                ".cleaned",
            )?;
            for (bytes, meta) in &kept {
                segment.append(&[std::io::IoSlice::new(bytes)], std::slice::from_ref(meta))?;
            }
            segment.seal()?;
            segment.flush()?;
            Some(segment.size())
        };
        outputs.push(Output {
            base_offset: view.base_offset,
            original: view.map.clone(),
            cleaned,
        });
    }
    Ok(Built {
        truncations: plan.truncations,
        end_offset,
        first_dirty: plan.first_dirty,
        dirty_ratio: plan.dirty_ratio,
        outputs,
        bytes_read,
        records_removed,
    })
}

/// Renames the index, time index and then log file of segment `base` from suffix `from`
/// to suffix `to`, then fsyncs the directory.
fn rename_segment_files(dir: &Path, base: i64, from: &str, to: &str) -> Result<()> {
    for kind in [INDEX_SUFFIX, TIME_INDEX_SUFFIX, LOG_SUFFIX] {
        let target = segment_file(dir, base, kind, to);
        std::fs::rename(segment_file(dir, base, kind, from), &target).at(&target)?;
    }
    checkpoint::sync_dir(dir)
}

/// Phase 3: swaps the cleaned segments in, crash-safely (module docs).
pub fn commit(log: &mut Log, built: Built) -> Result<CleanSummary> {
    let (options, dir) = log.options_and_dir();
    let now = log.clock().now_ms();
    let mut summary = CleanSummary {
        dirty_ratio: built.dirty_ratio,
        first_dirty_offset: built.first_dirty,
        end_offset: built.end_offset,
        segments_rewritten: 0,
        segments_deleted: 0,
        bytes_read: built.bytes_read,
        bytes_written: 0,
        records_removed: built.records_removed,
    };
    if log.truncations() != built.truncations || log.is_offline() {
        // A truncation may have removed the newer values the pass relied on.
        for output in &built.outputs {
            for kind in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
                super::segment::remove_if_exists(&segment_file(
                    &dir,
                    output.base_offset,
                    kind,
                    ".cleaned",
                ))?;
            }
        }
        return Ok(summary);
    }
    for output in built.outputs {
        let base = output.base_offset;
        let current = log
            .segments()
            .get(base)
            .filter(|s| s.map().is_some_and(|m| m.same_as(&output.original)))
            .is_some();
        if !current {
            // Retention deleted the segment meanwhile (one pass runs per log at a time and
            // truncations abort above): drop that part of the work.
            for kind in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
                super::segment::remove_if_exists(&segment_file(&dir, base, kind, ".cleaned"))?;
            }
            continue;
        }
        match output.cleaned {
            None => {
                let old = log.segments().get(base).map(|s| s.log_path().to_path_buf());
                log.replace_segment_with(base, None)?;
                summary.segments_deleted += 1;
                tracing::debug!(segment = ?old, "compaction removed every record of the segment");
            }
            Some(size) => {
                // The log's rename to `.swap` (last) is the commit point.
                rename_segment_files(&dir, base, ".cleaned", ".swap")?;
                rename_segment_files(&dir, base, ".swap", "")?;
                let segment = Segment::open_sealed_checked(&dir, base, options, now)?;
                log.replace_segment_with(base, Some(segment))?;
                summary.segments_rewritten += 1;
                summary.bytes_written += size;
            }
        }
    }
    log.set_cleaner_offset(built.end_offset)?;
    Ok(summary)
}

/// Runs compaction passes, on demand or on a background thread.
#[derive(Debug, Default)]
pub struct Cleaner {
    config: CleanerConfig,
    stats: Arc<CleanerStats>,
}

/// Stops the background cleaner when dropped.
#[derive(Debug)]
pub struct CleanerHandle {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl CleanerHandle {
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }
    fn stop_and_join(&mut self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for CleanerHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

impl Cleaner {
    pub fn new(config: CleanerConfig) -> Self {
        Cleaner {
            config,
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> Arc<CleanerStats> {
        self.stats.clone()
    }

    fn record(&self, ratio: f64, summary: Option<&CleanSummary>) {
        self.stats
            .last_dirty_ratio_bits
            .store(ratio.to_bits(), Ordering::Relaxed);
        if let Some(s) = summary {
            self.stats.passes.fetch_add(1, Ordering::Relaxed);
            self.stats
                .bytes_read
                .fetch_add(s.bytes_read, Ordering::Relaxed);
            self.stats
                .bytes_written
                .fetch_add(s.bytes_written, Ordering::Relaxed);
            self.stats
                .records_removed
                .fetch_add(s.records_removed, Ordering::Relaxed);
        }
    }

    /// One pass over a shared log: plans under the read lock, builds without a lock,
    /// swaps under the write lock.
    pub fn clean(&self, log: &RwLock<Log>) -> Result<Option<CleanSummary>> {
        let read = || log.read().unwrap_or_else(|p| p.into_inner());
        if !read().try_start_cleaning() {
            return Ok(None);
        }
        let result = (|| {
            let (ratio, plan) = plan(&read());
            let Some(plan) = plan else {
                self.record(ratio, None);
                return Ok(None);
            };
            let built = build(&plan, &self.config)?;
            let summary = commit(&mut log.write().unwrap_or_else(|p| p.into_inner()), built)?;
            self.record(ratio, Some(&summary));
            Ok(Some(summary))
        })();
        read().finish_cleaning();
        result
    }

    /// One pass with exclusive access.
    pub fn clean_now(&self, log: &mut Log) -> Result<Option<CleanSummary>> {
        let (ratio, plan) = plan(log);
        let Some(plan) = plan else {
            self.record(ratio, None);
            return Ok(None);
        };
        let built = build(&plan, &self.config)?;
        let summary = commit(log, built)?;
        self.record(ratio, Some(&summary));
        Ok(Some(summary))
    }

    /// Starts a thread that cleans every log `logs()` returns, then waits
    /// `log.cleaner.backoff.ms` (or until the handle is dropped), and again.
    pub fn spawn<F>(self: Arc<Self>, logs: F) -> CleanerHandle
    where
        F: Fn() -> Vec<Arc<RwLock<Log>>> + Send + 'static,
    {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("fjord-cleaner".into())
            .spawn(move || {
                let backoff = Duration::from_millis(self.config.backoff_ms);
                loop {
                    for log in logs() {
                        if let Err(e) = self.clean(&log) {
                            tracing::warn!(error = %e, "compaction pass failed");
                        }
                    }
                    let (lock, cv) = &*thread_stop;
                    let stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
                    let (stopped, _) = cv
                        .wait_timeout_while(stopped, backoff, |s| !*s)
                        .unwrap_or_else(|p| p.into_inner());
                    if *stopped {
                        return;
                    }
                }
            })
            .expect("spawn the cleaner thread");
        CleanerHandle {
            stop,
            thread: Some(thread),
        }
    }
}
