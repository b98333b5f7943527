//! A replica of one partition: its [`Log`], group commit, the high watermark and the
//! long-poll wakeups. On a single node the replica is the leader and the only in-sync
//! replica, so the high watermark follows the log end offset.
//!
//! Threading: `Partition` is `Sync` and shared (`Arc`). Appends and fsyncs block: call
//! them from a blocking task. Reads are short (maps and positioned reads) and may run on
//! the async runtime.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use crate::storage::{AppendInfo, GroupCommit, Log, ReadLimit, ReadResult, StorageError};

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// acks=0: the caller does not wait.
    None,
    /// acks=1: after the leader's append.
    Leader,
    /// acks=all: after the batch is fsync'd (group commit).
    All,
}

pub use fjord_protocol::OffsetSpec;

/// What a produce appended, with the log start offset after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Produced {
    pub info: AppendInfo,
    pub log_start_offset: i64,
}

/// What waits for an append to be fsync'd (see [`Partition::produce_pipelined`]).
pub type DurableWait =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StorageError>> + Send>>;

/// The flush settings of the partition's topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushPolicy {
    pub flush_messages: i64,
    pub flush_ms: i64,
}

/// The largest append [`Partition::produce`] makes on the calling task rather than on a
/// blocking thread (when it waits for no fsync): a page-cache write, typically a few
/// hundred microseconds (longer when the kernel throttles a writer for its dirty
/// pages). 2 MiB takes the 1 MiB requests of the Fjord producer and of
/// librdkafka (`batch.size` 1,000,000): W5 alternating, 571-608 -> 656-691 MB/s with
/// 256 KiB before (the hop to a blocking thread and back woke two threads per request).
pub const INLINE_APPEND_BYTES: usize = 2 * 1024 * 1024;

/// The background flush that [`Partition::durable`] starts: the highest offset asked to be
/// made durable, and whether a blocking thread is flushing towards it.
#[derive(Debug, Default)]
struct FlushWanted {
    target: i64,
    running: bool,
}

/// Clears the flusher's `running` and wakes the durable waiters if the flusher unwinds
/// (a panic); disarmed (`None`) on its normal ways out, which clear `running` themselves.
struct FlusherRunning<'a>(Option<&'a Partition>);

impl Drop for FlusherRunning<'_> {
    fn drop(&mut self) {
        if let Some(partition) = self.0 {
            partition
                .flush_wanted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .running = false;
            partition.commit.wake();
        }
    }
}

/// One partition. See the module docs.
#[derive(Debug)]
pub struct Partition {
    topic: String,
    id: u32,
    /// The log's directory, for errors raised without taking the log's lock.
    dir: std::path::PathBuf,
    log: Arc<RwLock<Log>>,
    commit: GroupCommit,
    flush_wanted: Mutex<FlushWanted>,
    high_watermark: watch::Sender<i64>,
    flush_policy: Mutex<FlushPolicy>,
    /// Records appended since the last flush.
    unflushed: AtomicI64,
    last_flush: Mutex<Instant>,
    deleted: AtomicBool,
}

impl Partition {
    pub fn new(topic: &str, id: u32, mut log: Log, flush_policy: FlushPolicy) -> Self {
        // The only replica is the whole ISR: everything it holds is committed (Kafka's
        // leader moves its high watermark to its log end the same way).
        let end = log.log_end_offset();
        log.update_high_watermark(end);
        let recovery_point = log.recovery_point();
        let hw = log.high_watermark();
        Partition {
            topic: topic.to_owned(),
            id,
            dir: log.dir().to_path_buf(),
            log: Arc::new(RwLock::new(log)),
            commit: GroupCommit::new(recovery_point),
            flush_wanted: Mutex::new(FlushWanted::default()),
            high_watermark: watch::Sender::new(hw),
            flush_policy: Mutex::new(flush_policy),
            unflushed: AtomicI64::new(0),
            last_flush: Mutex::new(Instant::now()),
            deleted: AtomicBool::new(false),
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }
    pub fn id(&self) -> u32 {
        self.id
    }
    pub fn log(&self) -> RwLockReadGuard<'_, Log> {
        self.log.read().unwrap_or_else(|p| p.into_inner())
    }
    pub fn log_mut(&self) -> RwLockWriteGuard<'_, Log> {
        self.log.write().unwrap_or_else(|p| p.into_inner())
    }
    pub fn shared_log(&self) -> Arc<RwLock<Log>> {
        self.log.clone()
    }
    pub fn set_flush_policy(&self, policy: FlushPolicy) {
        *self.flush_policy.lock().unwrap_or_else(|p| p.into_inner()) = policy;
    }
    /// The topic is being deleted: the log is retired under its lock (no later write,
    /// flush or compaction of it can touch the directory) and waiters are woken.
    pub fn mark_deleted(&self) {
        let mut log = self.log_mut();
        self.deleted.store(true, Ordering::SeqCst);
        log.retire();
        drop(log);
        self.high_watermark.send_modify(|_| {});
    }
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::SeqCst)
    }

    /// Appends `batches` as the leader and waits as `acks` says. Blocking.
    pub fn append(&self, batches: &[u8], acks: Acks) -> Result<AppendInfo, StorageError> {
        let policy = self.flush_policy();
        let info = self.append_locked(&mut self.log_mut(), batches)?;
        self.after_append(info, acks, policy)
    }

    /// The append itself, under the log's write lock.
    fn append_locked(&self, log: &mut Log, batches: &[u8]) -> Result<AppendInfo, StorageError> {
        if self.is_deleted() {
            return Err(StorageError::LogOffline {
                dir: log.dir().to_path_buf(),
            });
        }
        let info = log.append(batches, 0)?;
        // Single replica: the ISR is this broker, the high watermark is the log end.
        let end = log.log_end_offset();
        log.update_high_watermark(end);
        // Published under the lock, and never backwards, so waiters see every advance.
        self.high_watermark.send_if_modified(|hw| {
            let advanced = end > *hw;
            *hw = (*hw).max(end);
            advanced
        });
        Ok(info)
    }

    fn flush_policy(&self) -> FlushPolicy {
        *self.flush_policy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What follows an append: the flush.messages policy (as read before the append), and
    /// acks=all's wait.
    fn after_append(
        &self,
        info: AppendInfo,
        acks: Acks,
        policy: FlushPolicy,
    ) -> Result<AppendInfo, StorageError> {
        let records = info.last_offset - info.first_offset + 1;
        let unflushed = self.unflushed.fetch_add(records, Ordering::SeqCst) + records;
        if acks == Acks::All || unflushed >= policy.flush_messages {
            self.wait_durable(info.last_offset + 1)?;
        }
        Ok(info)
    }

    /// [`append`](Self::append) from async code. acks=all is appended as acks=1 is, then
    /// waits on the durable-offset watch ([`durable`](Self::durable)), holding no thread.
    pub async fn produce(
        self: &Arc<Self>,
        records: Bytes,
        acks: Acks,
    ) -> Result<Produced, StorageError> {
        if acks != Acks::All {
            return self.produce_appended(records, acks).await;
        }
        let produced = self.produce_appended(records, Acks::Leader).await?;
        self.durable(produced.info.last_offset + 1).await?;
        Ok(produced)
    }

    /// The append of [`produce`](Self::produce), for acks 0 or 1 (the flush.messages
    /// policy still applies), on a blocking thread unless it is small and the lock free.
    /// The records are written as they are, never copied: the log writes each batch's
    /// patched header beside them ([`Log::append`]).
    async fn produce_appended(
        self: &Arc<Self>,
        records: Bytes,
        acks: Acks,
    ) -> Result<Produced, StorageError> {
        debug_assert!(acks != Acks::All, "acks=all waits on the durable watch");
        // A small append that waits for no fsync (acks 0 or 1, no flush.messages policy) is
        // a page-cache write of microseconds: done here when the lock is free and no roll
        // (which fsyncs) is due, without the hop to a blocking thread and back.
        // The policy read once: the append on this task must not turn into a blocking
        // fsync because the policy changed meanwhile.
        let policy = self.flush_policy();
        if policy.flush_messages == i64::MAX
            && records.len() <= INLINE_APPEND_BYTES
            && let Ok(mut log) = self.log.try_write()
            && !log.would_roll(records.len() as u64)
        {
            let appended = self.append_locked(&mut log, &records);
            let log_start_offset = log.log_start_offset();
            drop(log);
            let info = appended.and_then(|info| self.after_append(info, acks, policy))?;
            return Ok(Produced {
                info,
                log_start_offset,
            });
        }
        let partition = self.clone();
        tokio::task::spawn_blocking(move || {
            let info = partition.append(&records, acks)?;
            let log_start_offset = partition.log().log_start_offset();
            Ok(Produced {
                info,
                log_start_offset,
            })
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// [`produce`](Self::produce) for a pipeline of produces: returns once the records are
    /// appended, with what waits for the fsync that acks=all needs (`None` for acks 0 and
    /// 1), so that the next produce is appended while this one's fsync runs.
    pub async fn produce_pipelined(
        self: &Arc<Self>,
        records: Bytes,
        acks: Acks,
    ) -> Result<(Produced, Option<DurableWait>), StorageError> {
        if acks != Acks::All {
            return Ok((self.produce(records, acks).await?, None));
        }
        let produced = self.produce_appended(records, Acks::Leader).await?;
        let (partition, end) = (self.clone(), produced.info.last_offset + 1);
        // The fsync starts now, not when the caller gets round to waiting for it.
        if self.commit.durable_offset() < end {
            self.want_flush(end);
        }
        let durable = Box::pin(async move { partition.durable(end).await });
        Ok((produced, Some(durable)))
    }

    /// The `(offset, timestamp_ms)` that `spec` names; the timestamp is -1 for
    /// [`OffsetSpec::Earliest`] and [`OffsetSpec::Latest`], and both are -1 when no
    /// record is at or after the timestamp asked for. Blocking (the log lock).
    pub fn list_offset(&self, spec: OffsetSpec) -> Result<(i64, i64), StorageError> {
        let log = self.log();
        Ok(match spec {
            OffsetSpec::Earliest => (log.log_start_offset(), -1),
            OffsetSpec::Latest => (log.high_watermark(), -1),
            OffsetSpec::Timestamp(timestamp_ms) => {
                log.offset_for_timestamp(timestamp_ms)?.unwrap_or((-1, -1))
            }
        })
    }

    /// Returns once every offset below `offset` is fsync'd (group commit). Blocking; async
    /// code waits with [`durable`](Self::durable) instead.
    pub fn wait_durable(&self, offset: i64) -> Result<(), StorageError> {
        self.commit.wait_durable(offset, || {
            let durable = Log::flush_shared(&self.log)?;
            self.unflushed.store(0, Ordering::SeqCst);
            *self.last_flush.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            Ok(durable)
        })
    }

    /// Returns once every offset below `offset` is fsync'd, without holding a thread: it
    /// waits on the group commit's durable-offset watch, which every flush moves, and asks
    /// the background flusher for `offset` (one blocking thread a partition at most, which
    /// group-commits what everyone asked for meanwhile).
    pub async fn durable(self: &Arc<Self>, offset: i64) -> Result<(), StorageError> {
        let mut durable = self.commit.subscribe();
        loop {
            let now = *durable.borrow_and_update();
            if now.offset >= offset {
                return Ok(());
            }
            if now.failed {
                return Err(StorageError::LogOffline {
                    dir: self.dir.clone(),
                });
            }
            self.want_flush(offset);
            // The sender lives as long as `self.commit`, which this borrows.
            let _ = durable.changed().await;
        }
    }

    /// Asks for everything below `offset` to be flushed: starts the background flusher on
    /// a blocking thread unless it is running (it then flushes again before it stops).
    fn want_flush(self: &Arc<Self>, offset: i64) {
        let mut wanted = self.flush_wanted.lock().unwrap_or_else(|p| p.into_inner());
        wanted.target = wanted.target.max(offset);
        if wanted.running {
            return;
        }
        wanted.running = true;
        drop(wanted);
        let partition = self.clone();
        tokio::task::spawn_blocking(move || partition.run_flusher());
    }

    /// The background flusher: flushes until what was asked for is durable, or a flush
    /// fails (the watch then says so) or moves nothing (an offset beyond the log's end
    /// after a truncation), then stops. The target is read and `running` cleared under one
    /// lock, so an offset asked for meanwhile is never left unflushed; a panic clears it
    /// too and wakes the waiters, so the next one starts a new flusher.
    fn run_flusher(&self) {
        let mut running = FlusherRunning(Some(self));
        let mut durable = self.commit.durable_offset();
        loop {
            let target = {
                let mut wanted = self.flush_wanted.lock().unwrap_or_else(|p| p.into_inner());
                if wanted.target <= durable {
                    wanted.running = false;
                    running.0 = None;
                    return;
                }
                wanted.target
            };
            let flushed = self.wait_durable(target);
            let before = std::mem::replace(&mut durable, self.commit.durable_offset());
            if flushed.is_err() || durable <= before {
                let mut wanted = self.flush_wanted.lock().unwrap_or_else(|p| p.into_inner());
                wanted.running = false;
                running.0 = None;
                return;
            }
        }
    }

    /// The flush.ms policy: fsync if the last one is older than `flush.ms`. Blocking.
    pub fn flush_if_due(&self) -> Result<(), StorageError> {
        let policy = self.flush_policy();
        let since = self
            .last_flush
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed();
        if policy.flush_ms != i64::MAX && since >= Duration::from_millis(policy.flush_ms as u64) {
            let end = self.log().log_end_offset();
            self.wait_durable(end)?;
        }
        Ok(())
    }

    /// Whole batches from `offset` below the high watermark. Blocking (the log lock).
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<ReadResult, StorageError> {
        self.log().read(offset, max_bytes, ReadLimit::HighWatermark)
    }

    /// [`read`](Self::read) from async code: without waiting when the lock is free (the
    /// common case), else on a blocking thread, so a roll's fsync under the write lock
    /// never stalls the runtime.
    pub async fn read_async(
        self: &Arc<Self>,
        offset: i64,
        max_bytes: usize,
    ) -> Result<ReadResult, StorageError> {
        if let Ok(log) = self.log.try_read() {
            return log.read(offset, max_bytes, ReadLimit::HighWatermark);
        }
        let partition = self.clone();
        tokio::task::spawn_blocking(move || partition.read(offset, max_bytes))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// A long poll: reads from `offset`; if fewer than `min_bytes` are there, waits for
    /// appends (woken by them, not by a timer) until `max_wait` has passed.
    pub async fn fetch(
        self: &Arc<Self>,
        offset: i64,
        max_bytes: usize,
        min_bytes: usize,
        max_wait: Duration,
    ) -> Result<ReadResult, StorageError> {
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut changes = self.high_watermark.subscribe();
        loop {
            changes.mark_unchanged();
            let result = self.read_async(offset, max_bytes).await?;
            let enough = !result.records.is_empty() && result.records.len() >= min_bytes.max(1);
            if enough || self.is_deleted() {
                return Ok(result);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                _ => return self.read_async(offset, max_bytes).await,
            }
        }
    }

    /// Waits until the high watermark passes `offset` or `timeout` ends.
    pub async fn wait_for_data(&self, offset: i64, timeout: Duration) {
        let mut changes = self.high_watermark.subscribe();
        let _ = tokio::time::timeout(
            timeout,
            changes.wait_for(|&hw| hw > offset || self.is_deleted()),
        )
        .await;
    }

    /// A receiver that changes whenever the high watermark advances or the partition is
    /// deleted (for long polls over several partitions).
    pub fn high_watermark_changes(&self) -> watch::Receiver<i64> {
        self.high_watermark.subscribe()
    }

    pub fn high_watermark(&self) -> i64 {
        *self.high_watermark.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{LogConfig, ManualClock};
    use fjord_protocol::codec::{Compression, RecordInput, encode_batch};

    fn batch(n: usize) -> Bytes {
        let records: Vec<RecordInput> = (0..n)
            .map(|i| RecordInput::new(None, Some(vec![i as u8; 10]), 0))
            .collect();
        encode_batch(&records, Compression::None).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn produce_gives_the_same_result_inline_and_on_a_blocking_thread() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(
            dir.path(),
            LogConfig::default(),
            Arc::new(ManualClock::new(0)),
        );
        let never = FlushPolicy {
            flush_messages: i64::MAX,
            flush_ms: i64::MAX,
        };
        let p = Arc::new(Partition::new("t", 0, log.unwrap(), never));
        let hw = p.high_watermark_changes();
        // The lock is free: appended on this task.
        let first = p.produce(batch(3), Acks::Leader).await.unwrap();
        assert_eq!((first.info.first_offset, first.info.last_offset), (0, 2));
        assert_eq!(*hw.borrow(), 3);
        // A reader holds the lock: the append waits for it on a blocking thread.
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let reader = p.clone();
        let holder = std::thread::spawn(move || {
            let _guard = reader.log();
            held_tx.send(()).unwrap();
            release_rx.recv().unwrap();
        });
        held_rx.recv().unwrap();
        let producer = p.clone();
        let second = tokio::spawn(async move { producer.produce(batch(2), Acks::Leader).await });
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        let second = second.await.unwrap().unwrap();
        assert_eq!((second.info.first_offset, second.info.last_offset), (3, 4));
        // acks=all is appended the same way, then waits on the durable watch.
        let third = p.produce(batch(1), Acks::All).await.unwrap();
        assert_eq!(third.info.first_offset, 5);
        assert!(p.log().recovery_point() >= 6);
        assert_eq!(*hw.borrow(), 6);
    }

    fn partition(dir: &std::path::Path) -> Arc<Partition> {
        let log = Log::open(dir, LogConfig::default(), Arc::new(ManualClock::new(0)));
        let never = FlushPolicy {
            flush_messages: i64::MAX,
            flush_ms: i64::MAX,
        };
        Arc::new(Partition::new("t", 0, log.unwrap(), never))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acks_all_returns_durable_and_a_failed_flush_wakes_its_waiters() {
        let dir = tempfile::tempdir().unwrap();
        let p = partition(dir.path());
        // Many acks=all produces at once, through the one background flusher: each
        // returns once its records are durable.
        let produces: Vec<_> = (0..32)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move { p.produce(batch(1), Acks::All).await })
            })
            .collect();
        for produce in produces {
            let produced = produce.await.unwrap().unwrap();
            assert!(p.log().recovery_point() > produced.info.last_offset);
        }
        assert_eq!(p.log().recovery_point(), 32);
        // Already durable: no flush.
        // (The log counts a flush before the watch moves, so the count is settled.)
        let flushes = p.log().flushes();
        p.durable(32).await.unwrap();
        assert_eq!(p.log().flushes(), flushes);
        // Appended, then the log goes away before its fsync: the waiter gets an error,
        // it does not wait forever.
        let appended = p.produce(batch(2), Acks::Leader).await.unwrap();
        p.mark_deleted();
        let waited = tokio::time::timeout(
            Duration::from_secs(30),
            p.durable(appended.info.last_offset + 1),
        )
        .await
        .expect("a failed flush wakes its waiters");
        assert!(
            matches!(waited, Err(StorageError::LogOffline { .. })),
            "{waited:?}"
        );
        // And a later waiter learns it at once.
        assert!(p.durable(34).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flusher_that_panics_lets_the_next_waiter_start_another() {
        let dir = tempfile::tempdir().unwrap();
        let p = partition(dir.path());
        let appended = p.produce(batch(2), Acks::Leader).await.unwrap();
        let end = appended.info.last_offset + 1;
        // A flusher that unwinds while it runs (what its guard does when a flush panics).
        p.flush_wanted.lock().unwrap().running = true;
        let woken = p.commit.subscribe();
        let unwound = std::panic::catch_unwind(|| {
            let _running = FlusherRunning(Some(&p));
            panic!("disk on fire");
        });
        assert!(unwound.is_err());
        assert!(!p.flush_wanted.lock().unwrap().running);
        assert!(woken.has_changed().unwrap(), "the waiters are woken");
        // The next waiter starts a new flusher, which makes the records durable.
        tokio::time::timeout(Duration::from_secs(30), p.durable(end))
            .await
            .expect("not stuck behind the dead flusher")
            .unwrap();
        assert!(p.log().recovery_point() >= end);
    }
}
