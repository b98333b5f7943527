//! Drop-behind (`log.drop.behind.bytes`, 128 MiB by default): an active segment keeps
//! only its newest bytes in the page cache, so that appends reuse the pages just freed
//! instead of taking more of the machine's free memory, and writes back as it goes. On a
//! VM whose host takes free pages back (virtio-balloon free page reporting), the first
//! touch of such a page is slow: `fjord perf disk` wrote into new page-cache pages at
//! 0.44–0.47 GB/s there, and at 6.5 GB/s into pages freed a moment before. Kafka's way
//! (keep everything; 0 here) produced 3 GB into one partition at 0.42–0.54 GB/s on that
//! VM, with 0.9 GB left dirty and the broker at 4.5–6.6 s of CPU; with a 32 or 128 MiB
//! window, 1.08–1.30 GB/s and 1.9–2.4 s (docs/BENCHMARKS.md, nineteenth sitting). The
//! price: a reader further behind than the window reads from the disk.
//!
//! The segment decides what to advise ([`Segment::append`] asks for each whole
//! [`STEP`] written, and for everything older than the window); one broker-wide thread
//! makes the calls, so the append path pays neither for the writeback they start nor for
//! the pages they free (both were 15% of the broker's samples under W1 when the append
//! made them itself).
//!
//! Both are `posix_fadvise(DONTNEED)`: on dirty pages it starts their writeback and
//! leaves them; clean ones it drops. Neither waits, and neither takes a writeback error
//! from the file (`sync_file_range` with a wait flag would, and the next fsync would then
//! not report it). Pages still under writeback when their range is dropped stay; each
//! drop covers the segment from its start, so a later one takes them. Best effort
//! throughout: a call not made costs page cache, never data. (A page whose writeback
//! failed is clean to the kernel, so a drop can free it, as the kernel's own reclaim
//! could; the error stays on the file and the next fsync reports it, which takes the
//! log offline.)
//!
//! A sealed segment keeps the last window it wrote cached until the kernel needs the
//! memory: tailing readers are still reading it when the next segment starts.
//!
//! [`Segment::append`]: super::segment::Segment::append

use std::fs::File;
use std::num::NonZeroU64;
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, OnceLock};

/// Drop-behind works in steps of this many bytes: writeback is started for each step an
/// append completes, and pages are dropped once a whole step is past the window.
pub const STEP: u64 = 4 << 20;

/// Where the pages to drop end, `window` behind `end`, in whole steps (0 when `window` is
/// 0: drop-behind off).
pub fn drop_until(end: u64, window: u64) -> u64 {
    if window == 0 {
        return 0;
    }
    let until = end.saturating_sub(window);
    until - until % STEP
}

/// Calls waiting for the thread at most; a segment whose call is refused asks again
/// with a wider range at its next append.
const QUEUE: usize = 256;

/// `posix_fadvise(DONTNEED)` over `len` bytes of `file` from `from`.
struct Job {
    file: Arc<File>,
    from: u64,
    len: NonZeroU64,
}

fn worker() -> Option<&'static SyncSender<Job>> {
    static WORKER: OnceLock<Option<SyncSender<Job>>> = OnceLock::new();
    WORKER
        .get_or_init(|| {
            let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE);
            let spawned = std::thread::Builder::new()
                .name("fjord-drop-behind".into())
                .spawn(move || {
                    for job in rx {
                        advise(&job.file, job.from, job.len);
                    }
                });
            match spawned {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the drop-behind thread; \
                        log.drop.behind.bytes has no effect");
                    None
                }
            }
        })
        .as_ref()
}

/// `posix_fadvise(DONTNEED)` now, on the caller's thread (recovery, which has its own).
pub fn advise_now(file: &File, from: u64, len: u64) {
    if let Some(len) = NonZeroU64::new(len) {
        advise(file, from, len);
    }
}

fn advise(file: &File, from: u64, len: NonZeroU64) {
    let advice = rustix::fs::Advice::DontNeed;
    if let Err(e) = rustix::fs::fadvise(file, from, Some(len), advice) {
        tracing::debug!(error = %e, "cannot drop written pages from the page cache");
    }
}

/// Asks for `posix_fadvise(DONTNEED)` over `len` bytes of `file` from `from`. False when
/// the thread cannot take it now: the caller asks again later. An empty range is done.
pub fn advise_dont_need(file: &Arc<File>, from: u64, len: u64) -> bool {
    let Some(len) = NonZeroU64::new(len) else {
        return true;
    };
    let Some(worker) = worker() else {
        return false;
    };
    let file = file.clone();
    worker.try_send(Job { file, from, len }).is_ok()
}
