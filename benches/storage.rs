//! Storage-engine benchmarks (criterion 0.5).
//!
//! Groups and IDs:
//! - `append/{no_fsync,fsync_every_append,group_commit_16}`: `Log::append` of a ~16.6 KiB
//!   batch (16 x 1 KiB records, uncompressed), without fsync, with `Log::flush` after each
//!   append, and with one flush per 16 appends (one iteration = 16 appends + 1 flush).
//! - `read/{sealed_mmap,sealed_mmap_crc,active_pread}`: a sequential scan of the whole
//!   sealed segment (~256 MiB) or active segment (~64 MiB) with 1 MiB `Log::read`s.
//! - `lookup/{offset_index_floor,time_index_floor,segment_find,read_one_batch_sealed,
//!   read_one_batch_active}`: point lookups of random keys / offsets.
//! - `codec/{encode,decode}/{none,lz4,zstd}`, `codec/crc32c_validate`: batch codec costs.
//!
//! Run everything with `cargo bench --bench storage`; `-- <filter>` selects by ID
//! (e.g. `-- append/`), `-- --test` runs every benchmark once as a smoke test.
//!
//! Files go to a fresh temporary directory under `$TMPDIR` (default `/tmp`); point it at
//! the disk you want to measure: on a tmpfs, fsync costs nothing. The read and lookup
//! benchmarks read data that was just written, so they measure the page cache, not the disk.

use std::cell::OnceCell;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use fjord::broker::storage::index::{OffsetEntry, OffsetIndex, TimeEntry, TimeIndex};
use fjord::broker::storage::{Log, LogConfig, ReadLimit, SystemClock};
use fjord::protocol::batch::{BatchHeader, BatchIter};
use fjord::protocol::codec::{Compression, RecordInput, decode_records, encode_batch};
use tempfile::TempDir;

/// Records per batch.
const RECORDS_PER_BATCH: usize = 16;
/// Value size of each record.
const RECORD_BYTES: usize = 1024;
/// Leader epoch passed to every append.
const EPOCH: i32 = 0;
/// The append benchmarks start a new log once this much was written to the current one.
const APPEND_RESET_BYTES: u64 = 512 * 1024 * 1024;
/// Appends per fsync in `append/group_commit_16`.
const GROUP_COMMIT_APPENDS: usize = 16;
/// Data in the sealed segment of the read fixture.
const READ_SEALED_BYTES: u64 = 256 * 1024 * 1024;
/// Data in the active segment of the read fixture.
const READ_ACTIVE_BYTES: u64 = 64 * 1024 * 1024;
/// `max_bytes` of each read of the sequential scans.
const READ_CHUNK_BYTES: usize = 1024 * 1024;
/// Entries of the standalone index files of the lookup benchmarks.
const INDEX_ENTRIES: u32 = 100_000;
/// Pre-generated random lookup keys (a power of two, cycled through).
const RANDOM_KEYS: usize = 4096;
const FIRST_TIMESTAMP_MS: i64 = 1_700_000_000_000;

/// SplitMix64: a small deterministic generator, so every run uses the same data.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (bound > 0; the modulo bias is irrelevant here).
    fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    /// `RANDOM_KEYS` keys uniform in `lo..hi`.
    fn keys(&mut self, lo: i64, hi: i64) -> Vec<i64> {
        (0..RANDOM_KEYS)
            .map(|_| lo + self.below((hi - lo) as u64) as i64)
            .collect()
    }
}

/// 16 records with a short key and a 1 KiB value of random characters from a 16-letter
/// alphabet (about 2:1 compressible, so lz4 and zstd have real work to do).
fn sample_records() -> Vec<RecordInput> {
    const ALPHABET: &[u8; 16] = b"abcdefghijklmnop";
    let mut rng = Rng(42);
    (0..RECORDS_PER_BATCH)
        .map(|i| {
            let value = (0..RECORD_BYTES)
                .map(|_| ALPHABET[rng.below(16) as usize])
                .collect();
            RecordInput::new(
                Some(format!("key-{i:04}").into_bytes()),
                Some(value),
                FIRST_TIMESTAMP_MS + i as i64,
            )
        })
        .collect()
}

/// The uncompressed batch that the log benchmarks append.
fn sample_batch() -> Vec<u8> {
    encode_batch(&sample_records(), Compression::None)
        .expect("encode the sample batch")
        .to_vec()
}

fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("fjord-bench-")
        .tempdir()
        .expect("create a temporary directory")
}

fn open_log(dir: &Path) -> Log {
    Log::open(dir, LogConfig::default(), Arc::new(SystemClock)).expect("open the log")
}

/// A log being appended to, replaced by a fresh one every `APPEND_RESET_BYTES`.
struct AppendState {
    log: Log,
    batch: Vec<u8>,
    written: u64,
    generation: u32,
    dir: TempDir,
}

impl AppendState {
    fn new() -> Self {
        let dir = temp_dir();
        AppendState {
            log: open_log(&dir.path().join("log-0")),
            batch: sample_batch(),
            written: 0,
            generation: 0,
            dir,
        }
    }

    fn reset(&mut self) {
        self.generation += 1;
        let fresh = open_log(&self.dir.path().join(format!("log-{}", self.generation)));
        std::mem::replace(&mut self.log, fresh)
            .delete()
            .expect("delete the full log");
        self.written = 0;
    }

    /// Runs `iters` iterations of `appends` appends followed, if `fsync`, by one flush.
    /// The time spent replacing a full log is not counted.
    fn run(&mut self, iters: u64, appends: usize, fsync: bool) -> Duration {
        let mut elapsed = Duration::ZERO;
        let mut start = Instant::now();
        for _ in 0..iters {
            if self.written >= APPEND_RESET_BYTES {
                elapsed += start.elapsed();
                self.reset();
                start = Instant::now();
            }
            for _ in 0..appends {
                black_box(self.log.append(&self.batch, EPOCH).expect("append"));
            }
            if fsync {
                black_box(self.log.flush().expect("flush"));
            }
            self.written += (appends * self.batch.len()) as u64;
        }
        elapsed + start.elapsed()
    }
}

/// A log with ~256 MiB in one sealed segment followed by ~64 MiB in the active segment,
/// flushed so that writeback does not disturb the reads.
struct ReadFixture {
    log: Log,
    /// Base offset of the active segment (the end of the sealed one).
    active_base: i64,
    sealed_bytes: u64,
    active_bytes: u64,
    _dir: TempDir,
}

impl ReadFixture {
    fn new() -> Self {
        let dir = temp_dir();
        let mut log = open_log(&dir.path().join("read-0"));
        let mut batch = sample_batch();
        let fill = |log: &mut Log, batch: &mut Vec<u8>, bytes: u64| {
            for _ in 0..bytes.div_ceil(batch.len() as u64) {
                log.append(batch, EPOCH).expect("append");
            }
        };
        fill(&mut log, &mut batch, READ_SEALED_BYTES);
        log.roll().expect("roll");
        let active_base = log.log_end_offset();
        fill(&mut log, &mut batch, READ_ACTIVE_BYTES);
        log.flush().expect("flush");
        let segments: Vec<_> = log.segments().iter().collect();
        assert_eq!(segments.len(), 2, "one sealed and one active segment");
        assert!(segments[0].is_sealed() && !segments[1].is_sealed());
        let (sealed_bytes, active_bytes) = (segments[0].size(), segments[1].size());
        ReadFixture {
            log,
            active_base,
            sealed_bytes,
            active_bytes,
            _dir: dir,
        }
    }

    /// Reads offsets `from..to` in `READ_CHUNK_BYTES` reads, moving on to the offset after
    /// the last batch of each chunk; with `check_crc` every batch's CRC is validated too.
    /// Returns the bytes read.
    fn scan(&self, from: i64, to: i64, check_crc: bool) -> u64 {
        let mut offset = from;
        let mut bytes = 0;
        while offset < to {
            let result = self
                .log
                .read(offset, READ_CHUNK_BYTES, ReadLimit::LogEnd)
                .expect("read");
            let records = &result.records;
            let batches = if check_crc {
                BatchIter::new(records)
            } else {
                BatchIter::headers_only(records)
            };
            let last = batches
                .last()
                .expect("a read returns at least one batch")
                .expect("valid batch");
            offset = last.next_offset();
            bytes += records.len() as u64;
        }
        bytes
    }
}

/// A sealed offset index of `INDEX_ENTRIES` entries, with random keys over its range.
fn build_offset_index(dir: &Path) -> (OffsetIndex, Vec<i64>) {
    let path = dir.join("00000000000000000000.index");
    let mut index =
        OffsetIndex::open_writable(&path, INDEX_ENTRIES as usize * 8).expect("open index");
    for i in 0..INDEX_ENTRIES {
        assert!(index.append(OffsetEntry {
            relative_offset: i * RECORDS_PER_BATCH as u32,
            position: i * 16_600,
        }));
    }
    index.seal().expect("seal index");
    assert_eq!(index.len(), INDEX_ENTRIES as usize);
    let keys = Rng(1).keys(0, (INDEX_ENTRIES * RECORDS_PER_BATCH as u32) as i64);
    (index, keys)
}

/// A sealed time index of `INDEX_ENTRIES` entries, with random timestamps over its range.
fn build_time_index(dir: &Path) -> (TimeIndex, Vec<i64>) {
    let path = dir.join("00000000000000000000.timeindex");
    let mut index =
        TimeIndex::open_writable(&path, INDEX_ENTRIES as usize * 12).expect("open index");
    for i in 0..INDEX_ENTRIES {
        assert!(index.append(TimeEntry {
            timestamp: FIRST_TIMESTAMP_MS + i as i64 * 10,
            relative_offset: i * RECORDS_PER_BATCH as u32,
        }));
    }
    index.seal().expect("seal index");
    assert_eq!(index.len(), INDEX_ENTRIES as usize);
    let keys = Rng(2).keys(
        FIRST_TIMESTAMP_MS,
        FIRST_TIMESTAMP_MS + INDEX_ENTRIES as i64 * 10,
    );
    (index, keys)
}

/// Append throughput of 16 x 1 KiB batches: without fsync, fsync per append, fsync per 16.
fn bench_append(c: &mut Criterion) {
    let batch_bytes = sample_batch().len() as u64;
    let mut group = c.benchmark_group("append");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    let cases: [(&str, usize, bool); 3] = [
        ("no_fsync", 1, false),
        ("fsync_every_append", 1, true),
        ("group_commit_16", GROUP_COMMIT_APPENDS, true),
    ];
    for (name, appends, fsync) in cases {
        // fsync'd iterations are slow (milliseconds on many disks): keep their count flat.
        group.sampling_mode(if fsync {
            SamplingMode::Flat
        } else {
            SamplingMode::Auto
        });
        group.throughput(Throughput::Bytes(appends as u64 * batch_bytes));
        let mut state: Option<AppendState> = None;
        group.bench_function(name, |b| {
            let state = state.get_or_insert_with(AppendState::new);
            b.iter_custom(|iters| state.run(iters, appends, fsync));
        });
    }
    group.finish();
}

/// Sequential read throughput with 1 MiB reads: sealed (mmap) and active (pread) segments.
fn bench_read(c: &mut Criterion, fixture: &OnceCell<ReadFixture>) {
    let mut group = c.benchmark_group("read");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    // Throughput needs the sizes before the fixture exists; they are checked below.
    let batch_bytes = sample_batch().len() as u64;
    let sealed_estimate = READ_SEALED_BYTES.div_ceil(batch_bytes) * batch_bytes;
    let active_estimate = READ_ACTIVE_BYTES.div_ceil(batch_bytes) * batch_bytes;

    let cases: [(&str, bool, bool, u64); 3] = [
        ("sealed_mmap", true, false, sealed_estimate),
        ("sealed_mmap_crc", true, true, sealed_estimate),
        ("active_pread", false, false, active_estimate),
    ];
    for (name, sealed, check_crc, bytes) in cases {
        group.throughput(Throughput::Bytes(bytes));
        group.bench_function(name, |b| {
            let f = fixture.get_or_init(ReadFixture::new);
            assert_eq!(
                (f.sealed_bytes, f.active_bytes),
                (sealed_estimate, active_estimate)
            );
            let (from, to) = if sealed {
                (0, f.active_base)
            } else {
                (f.active_base, f.log.log_end_offset())
            };
            b.iter(|| {
                let read = f.scan(from, to, check_crc);
                assert_eq!(read, bytes);
                read
            });
        });
    }
    group.finish();
}

/// Point-lookup latency: index floor() of random keys, and finding/reading one random offset.
fn bench_lookup(c: &mut Criterion, fixture: &OnceCell<ReadFixture>) {
    let mut group = c.benchmark_group("lookup");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));

    // Standalone sealed (read-only mapped) indexes of INDEX_ENTRIES entries, one entry per
    // 16-record batch of ~16.6 KiB, as the log writes them. Criterion calls a benchmark's
    // closure once per sample, so the indexes are built on the first call only.
    let index_dir = temp_dir();
    let offset_index = OnceCell::new();
    group.bench_function("offset_index_floor", |b| {
        let (index, keys) = offset_index.get_or_init(|| build_offset_index(index_dir.path()));
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % RANDOM_KEYS;
            index.floor(black_box(keys[i]))
        });
    });
    let time_index = OnceCell::new();
    group.bench_function("time_index_floor", |b| {
        let (index, keys) = time_index.get_or_init(|| build_time_index(index_dir.path()));
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % RANDOM_KEYS;
            index.floor(black_box(keys[i]))
        });
    });

    // On the read fixture: Segment::find (index floor + header read from the map) of a
    // random offset in the sealed segment, and Log::read of one batch (max_bytes 1: one
    // whole batch, as KIP-74) at a random offset, sealed (zero-copy) and active (pread).
    group.bench_function("segment_find", |b| {
        let f = fixture.get_or_init(ReadFixture::new);
        let segment = f.log.segments().floor(0).expect("sealed segment");
        let keys = Rng(3).keys(0, f.active_base);
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % RANDOM_KEYS;
            segment
                .find(black_box(keys[i]))
                .expect("find")
                .expect("offset present")
        });
    });
    for (name, sealed) in [
        ("read_one_batch_sealed", true),
        ("read_one_batch_active", false),
    ] {
        group.bench_function(name, |b| {
            let f = fixture.get_or_init(ReadFixture::new);
            let keys = if sealed {
                Rng(4).keys(0, f.active_base)
            } else {
                Rng(5).keys(f.active_base, f.log.log_end_offset())
            };
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % RANDOM_KEYS;
                let result = f
                    .log
                    .read(black_box(keys[i]), 1, ReadLimit::LogEnd)
                    .expect("read");
                debug_assert!(!result.records.is_empty());
                result
            });
        });
    }
    group.finish();
}

/// Batch codec cost of 16 x 1 KiB records: encode and decode (none, lz4, zstd), CRC check.
fn bench_codec(c: &mut Criterion) {
    let records = sample_records();
    let plain = sample_batch();
    let mut group = c.benchmark_group("codec");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    // Throughput is always the uncompressed batch size, so codecs compare directly.
    group.throughput(Throughput::Bytes(plain.len() as u64));

    let codecs = [
        ("none", Compression::None),
        ("lz4", Compression::Lz4),
        ("zstd", Compression::Zstd),
    ];
    for (name, compression) in codecs {
        group.bench_with_input(BenchmarkId::new("encode", name), &records, |b, records| {
            b.iter(|| encode_batch(black_box(records), compression).expect("encode"));
        });
    }
    for (name, compression) in codecs {
        let batch = encode_batch(&records, compression).expect("encode");
        group.bench_with_input(BenchmarkId::new("decode", name), &batch, |b, batch| {
            b.iter(|| {
                let decoded = decode_records(black_box(batch)).expect("decode");
                assert_eq!(decoded.len(), RECORDS_PER_BATCH);
                decoded
            });
        });
    }
    group.bench_function("crc32c_validate", |b| {
        b.iter(|| {
            BatchHeader::validate(black_box(&plain))
                .expect("valid batch")
                .crc()
        });
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    // Built by the first read or lookup benchmark that runs (not at all if filtered out),
    // shared by the others, and removed from disk at the end.
    let read_fixture = OnceCell::new();
    bench_append(&mut c);
    bench_read(&mut c, &read_fixture);
    bench_lookup(&mut c, &read_fixture);
    bench_codec(&mut c);
    drop(read_fixture);
    c.final_summary();
}
