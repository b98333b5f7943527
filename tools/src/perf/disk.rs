//! `fjord perf disk`: the limits of the disk under a directory, for reading the broker's
//! figures against: sequential buffered write speed into a new file (fdatasync at the end
//! included); a write into new page-cache pages without fdatasync (what an acks=1 append
//! costs; on a VM whose host has taken the guest's free pages back they are slow to
//! touch first; at most 256 MiB, and first, so the sequential write may reuse its
//! pages); the fdatasync latency of 4 KiB appends; and the page-cache read speed of the
//! file just written. The files are removed afterwards, also on an error.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;

use super::load::SplitMix;
use super::stats::{Json, Latencies, LatencySummary};
use super::{at_least, join_failure};
use crate::output::{Failure, Out};

/// Bytes of each write and read call of the sequential phases.
const CHUNK: usize = 1024 * 1024;
/// MiB written into new page-cache pages at most.
const PAGE_CACHE_MB: u64 = 256;
/// Bytes of each append of the fdatasync phase.
const APPEND: usize = 4096;

#[derive(Debug, Args)]
pub struct DiskArgs {
    /// The directory to measure (on the disk of the broker's data directory).
    #[arg(long, value_name = "D")]
    dir: PathBuf,
    /// MiB to write sequentially (and read back).
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    size_mb: u64,
    /// 4 KiB appends, each followed by an fdatasync, to time.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    fsyncs: u32,
    /// Print one JSON object instead of the summary line.
    #[arg(long)]
    json: bool,
}

struct DiskReport {
    write_mb_per_sec: f64,
    page_cache_write_mb_per_sec: f64,
    fdatasync: LatencySummary,
    read_mb_per_sec: f64,
}

pub async fn run(args: DiskArgs) -> Result<(), Failure> {
    at_least("size-mb", args.size_mb, 1)?;
    at_least("fsyncs", args.fsyncs, 1)?;
    let (dir, size_mb, fsyncs) = (args.dir.clone(), args.size_mb, args.fsyncs);
    let report = tokio::task::spawn_blocking(move || measure(&dir, size_mb, fsyncs))
        .await
        .map_err(join_failure)??;
    let line = if args.json {
        Json::new()
            .num("write_mb_per_sec", report.write_mb_per_sec)
            .num(
                "page_cache_write_mb_per_sec",
                report.page_cache_write_mb_per_sec,
            )
            .num("fdatasync_ms_p50", report.fdatasync.p50_ms)
            .num("fdatasync_ms_p99", report.fdatasync.p99_ms)
            .num("read_mb_per_sec", report.read_mb_per_sec)
            .finish()
    } else {
        format!(
            "sequential write {:.1} MB/sec ({} MiB, fdatasync included), {:.1} MB/sec \
             into new page-cache pages (no fdatasync, {} MiB), fdatasync after a 4 KiB append \
             {:.2} ms 50th, {:.2} ms 99th, {:.2} ms max ({} appends), page-cache read \
             {:.1} MB/sec.",
            report.write_mb_per_sec,
            args.size_mb,
            report.page_cache_write_mb_per_sec,
            args.size_mb.min(PAGE_CACHE_MB),
            report.fdatasync.p50_ms,
            report.fdatasync.p99_ms,
            report.fdatasync.max_ms,
            args.fsyncs,
            report.read_mb_per_sec
        )
    };
    let mut out = Out::new();
    out.line(&line)?;
    out.flush()
}

/// A file this command created, removed when dropped (or by [`Scratch::remove`], which
/// reports a failure).
struct Scratch {
    path: PathBuf,
    file: File,
    removed: bool,
}

impl Scratch {
    fn create(dir: &Path, kind: &str) -> Result<Scratch, Failure> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("fjord-perf-disk-{}-{nanos}.{kind}", std::process::id());
        let path = dir.join(name);
        let file = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_failure("create", &path, e))?;
        Ok(Scratch {
            path,
            file,
            removed: false,
        })
    }

    fn remove(mut self) -> Result<(), Failure> {
        self.removed = true;
        std::fs::remove_file(&self.path).map_err(|e| io_failure("remove", &self.path, e))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.removed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn io_failure(what: &str, path: &Path, e: std::io::Error) -> Failure {
    Failure::Message(format!("cannot {what} {}: {e}", path.display()))
}

fn mb_per_sec(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64().max(1e-9) / 1e6
}

/// Writes `size_mb` MiB of `chunk` (each MiB numbered) to `scratch` from its start, then
/// fdatasync if `sync`: the bytes written and the time taken.
fn write_sequentially(
    scratch: &Scratch,
    chunk: &mut [u8],
    size_mb: u64,
    sync: bool,
) -> Result<(u64, Duration), Failure> {
    let mut file = &scratch.file;
    let start = Instant::now();
    for i in 0..size_mb {
        chunk[..8].copy_from_slice(&i.to_le_bytes());
        file.write_all(chunk)
            .map_err(|e| io_failure("write", &scratch.path, e))?;
    }
    if sync {
        file.sync_data()
            .map_err(|e| io_failure("fdatasync", &scratch.path, e))?;
    }
    Ok((size_mb * chunk.len() as u64, start.elapsed()))
}

fn measure(dir: &Path, size_mb: u64, fsyncs: u32) -> Result<DiskReport, Failure> {
    let meta = std::fs::metadata(dir).map_err(|e| io_failure("use", dir, e))?;
    if !meta.is_dir() {
        return Err(Failure::Message(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let mut rng = SplitMix::from_time();
    // Random-ish data, so that a compressing filesystem cannot cheat.
    let mut chunk = rng.alphanumeric(CHUNK);

    // First (before the other phases free pages that it could reuse): a buffered write
    // into new page-cache pages, without fdatasync, of at most PAGE_CACHE_MB (below the
    // kernel's dirty limits, which would make it wait for the disk). Deleted unwritten;
    // the sequential write that follows may then reuse its pages.
    let fresh = Scratch::create(dir, "pages")?;
    let fresh_mb = size_mb.min(PAGE_CACHE_MB);
    let (bytes, elapsed) = write_sequentially(&fresh, &mut chunk, fresh_mb, false)?;
    let page_cache_write_mb_per_sec = mb_per_sec(bytes, elapsed);
    fresh.remove()?;

    // Sequential buffered write into a new file, one fdatasync at the end.
    let data = Scratch::create(dir, "write")?;
    let (bytes, elapsed) = write_sequentially(&data, &mut chunk, size_mb, true)?;
    let write_mb_per_sec = mb_per_sec(bytes, elapsed);

    // fdatasync after each 4 KiB append (the file grows: its size is flushed too, as on
    // a log's append).
    let mut log = Scratch::create(dir, "fsync")?;
    let block = rng.alphanumeric(APPEND);
    let mut latencies = Latencies::with_capacity(fsyncs as usize);
    for _ in 0..fsyncs {
        log.file
            .write_all(&block)
            .map_err(|e| io_failure("write", &log.path, e))?;
        let start = Instant::now();
        log.file
            .sync_data()
            .map_err(|e| io_failure("fdatasync", &log.path, e))?;
        latencies.push(start.elapsed());
    }
    let fdatasync = latencies
        .summary()
        .ok_or_else(|| Failure::Message("no fdatasync timed".into()))?;
    log.remove()?;

    // Read the written file back: it is in the page cache.
    let mut reader = File::open(&data.path).map_err(|e| io_failure("open", &data.path, e))?;
    let start = Instant::now();
    let mut read = 0u64;
    loop {
        let n = reader
            .read(&mut chunk)
            .map_err(|e| io_failure("read", &data.path, e))?;
        if n == 0 {
            break;
        }
        read += n as u64;
    }
    let read_mb_per_sec = mb_per_sec(read, start.elapsed());
    if read != bytes {
        return Err(Failure::Message(format!(
            "read {read} bytes back from {}, wrote {bytes}",
            data.path.display()
        )));
    }
    drop(reader);
    data.remove()?;
    Ok(DiskReport {
        write_mb_per_sec,
        page_cache_write_mb_per_sec,
        fdatasync,
        read_mb_per_sec,
    })
}
