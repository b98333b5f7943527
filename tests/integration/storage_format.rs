//! Storage format fixtures, so the on-disk format never drifts, and an independent parser
//! that proves the files are Kafka's format.
//!
//! `tests/fixtures/log-v1/` holds a log written by [`write_fixture_log`]: a fixed set of
//! uncompressed batches, appended with a fixed clock and a small config so that it rolls into
//! several segments with index entries, then closed cleanly. The tests:
//! - [`fixture_is_byte_identical`]: writes the same log again and compares every file byte
//!   for byte. With `FJORD_REGENERATE_FIXTURES=1` it rewrites the fixture instead:
//!   `FJORD_REGENERATE_FIXTURES=1 cargo test --test integration fixture_is_byte_identical`
//!   (then review the diff: a changed fixture is a changed on-disk format);
//! - [`fixture_opens_and_reads_back`]: opens a copy of the fixture with `Log::open` and reads
//!   every record back through `Log::read` and `decode_records`;
//! - [`fixture_is_kafka_format`]: walks the checked-in `.log`, `.index` and `.timeindex`
//!   files with the minimal parser below (no Fjord or `kafka-protocol` code), checking every
//!   field, CRC-32C, and every record against the inputs;
//! - [`compressed_batches_are_stored_as_sent`]: gzip, snappy, lz4 and zstd batches come back
//!   with only baseOffset and partitionLeaderEpoch rewritten;
//! - [`recovery_rebuilds_identical_files`]: after a crash, recovery rebuilds byte-identical
//!   indexes;
//! - [`missing_timeindex_keeps_the_segment_max_timestamp`]: regression test for a lost
//!   `.timeindex` making a segment look older than it is.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use fjord::broker::storage::{Log, LogConfig, ManualClock, ReadLimit};
use fjord::protocol::codec::{
    Compression, DecodedRecord, ProducerFields, RecordInput, decode_records, encode_batch_with,
};

/// Set to `1` to rewrite `tests/fixtures/log-v1/` instead of comparing against it.
const REGENERATE_ENV: &str = "FJORD_REGENERATE_FIXTURES";
const FIXTURE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/log-v1");

/// The broker's (fixed) clock while the fixture is written.
const FIXTURE_NOW_MS: i64 = 1_700_000_000_000;
/// Record timestamps start here (before the clock: CreateTime from producers).
const T0: i64 = 1_699_999_000_000;
const SEGMENT_BYTES: u64 = 2048;
const INDEX_INTERVAL_BYTES: u64 = 256;
const SEGMENT_INDEX_BYTES: usize = 4096;

/// Global record number (= offset) of the one tombstone and of the one empty value.
const TOMBSTONE_AT: usize = 23;
const EMPTY_VALUE_AT: usize = 17;
/// Batches per append call (22 batches in 17 writes; some writes carry several batches).
const BATCHES_PER_APPEND: [usize; 17] = [1, 1, 2, 1, 1, 1, 3, 1, 1, 2, 1, 1, 1, 1, 2, 1, 1];

/// Serializes the tests that read the fixture directory with the one that may rewrite it.
static FIXTURE_LOCK: Mutex<()> = Mutex::new(());

fn fixture_lock() -> MutexGuard<'static, ()> {
    FIXTURE_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn fixture_config() -> LogConfig {
    LogConfig {
        segment_bytes: SEGMENT_BYTES,
        segment_index_bytes: SEGMENT_INDEX_BYTES,
        index_interval_bytes: INDEX_INTERVAL_BYTES,
        ..LogConfig::default()
    }
}

fn fixture_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(FIXTURE_NOW_MS))
}

// ---------------------------------------------------------------------------------------
// The fixture's inputs
// ---------------------------------------------------------------------------------------

struct FixtureBatch {
    records: Vec<RecordInput>,
    producer: ProducerFields,
}

struct FixtureAppend {
    leader_epoch: i32,
    batches: Vec<FixtureBatch>,
}

/// A batch as it must be found in the log.
struct ExpectedBatch {
    base_offset: i64,
    leader_epoch: i32,
    producer: ProducerFields,
    records: Vec<RecordInput>,
}

impl ExpectedBatch {
    fn last_offset(&self) -> i64 {
        self.base_offset + self.records.len() as i64 - 1
    }
    fn max_timestamp(&self) -> i64 {
        self.records
            .iter()
            .map(|r| r.timestamp_ms)
            .max()
            .expect("records")
    }
}

fn fixture_key(g: usize) -> Option<Vec<u8>> {
    if g == TOMBSTONE_AT {
        return Some(b"user-2".to_vec());
    }
    match g % 6 {
        0 => None,
        // An empty key, which is not a null key.
        5 => Some(Vec::new()),
        _ => Some(format!("user-{}", g % 9).into_bytes()),
    }
}

fn fixture_value(b: usize, g: usize) -> Option<Vec<u8>> {
    if g == TOMBSTONE_AT {
        return None;
    }
    if g == EMPTY_VALUE_AT {
        return Some(Vec::new());
    }
    if g % 10 == 3 {
        return Some(vec![0x00, 0xff, 0x80, 0x7f, g as u8, b'\n']);
    }
    let mut value = format!("event-{g:03} batch-{b:02} ").into_bytes();
    // Lengths from 0 to 60 bytes of filler; one large value of its own.
    let filler = if g == 40 { 400 } else { g * 37 % 61 };
    value.extend((0..filler).map(|i| b'a' + ((g + i) % 26) as u8));
    Some(value)
}

fn fixture_headers(g: usize) -> Vec<(String, Option<Vec<u8>>)> {
    match g % 4 {
        1 => vec![
            (
                "trace-id".into(),
                Some(format!("{:016x}", g * 7919).into_bytes()),
            ),
            ("retry".into(), None),
        ],
        2 => vec![
            ("content-type".into(), Some(b"text/plain".to_vec())),
            ("empty".into(), Some(Vec::new())),
            // A multi-byte UTF-8 key: lengths are in bytes.
            ("région".into(), Some("ü".as_bytes().to_vec())),
        ],
        _ => Vec::new(),
    }
}

/// `b`: batch number, `i`: record in the batch, `g`: record number in the log.
fn fixture_timestamp(b: usize, i: usize, g: usize, first_g: usize) -> i64 {
    let g = g as i64;
    match b {
        // Out of order within the batch.
        5 => T0 + g * 1000 + if i.is_multiple_of(2) { 700 } else { -700 },
        // A late batch: older than everything since its first records.
        11 => T0 + 3000 + i as i64,
        // One timestamp for the whole batch.
        14 => T0 + first_g as i64 * 1000,
        _ => T0 + g * 1000,
    }
}

fn fixture_appends() -> Vec<FixtureAppend> {
    let mut appends = Vec::new();
    let mut b = 0usize;
    let mut g = 0usize;
    let mut sequence = 0i32;
    for (a, &count) in BATCHES_PER_APPEND.iter().enumerate() {
        let leader_epoch = match a {
            0..=5 => 0,
            6..=11 => 3,
            _ => 7,
        };
        let mut batches = Vec::new();
        for _ in 0..count {
            let n = 1 + (b * 5) % 7;
            let first_g = g;
            let records = (0..n)
                .map(|i| RecordInput {
                    key: fixture_key(first_g + i),
                    value: fixture_value(b, first_g + i),
                    headers: fixture_headers(first_g + i),
                    timestamp_ms: fixture_timestamp(b, i, first_g + i, first_g),
                })
                .collect();
            // Batches 8 to 10 come from an idempotent producer.
            let producer = if (8..=10).contains(&b) {
                let fields = ProducerFields {
                    producer_id: 4242,
                    producer_epoch: 1,
                    base_sequence: sequence,
                };
                sequence += n as i32;
                fields
            } else {
                ProducerFields::default()
            };
            batches.push(FixtureBatch { records, producer });
            b += 1;
            g += n;
        }
        appends.push(FixtureAppend {
            leader_epoch,
            batches,
        });
    }
    appends
}

fn expected_batches() -> Vec<ExpectedBatch> {
    let mut next = 0i64;
    let mut out = Vec::new();
    for append in fixture_appends() {
        for batch in append.batches {
            let n = batch.records.len() as i64;
            out.push(ExpectedBatch {
                base_offset: next,
                leader_epoch: append.leader_epoch,
                producer: batch.producer,
                records: batch.records,
            });
            next += n;
        }
    }
    out
}

/// (offset, record) of every record of the fixture.
fn expected_records() -> Vec<(i64, RecordInput)> {
    expected_batches()
        .into_iter()
        .flat_map(|b| {
            let base = b.base_offset;
            b.records
                .into_iter()
                .enumerate()
                .map(move |(i, r)| (base + i as i64, r))
        })
        .collect()
}

/// The fixture's log end offset.
fn fixture_log_end() -> i64 {
    expected_batches().last().expect("batches").last_offset() + 1
}

/// The high watermark the fixture is closed with: the start of the last append.
fn fixture_high_watermark() -> i64 {
    let appends = fixture_appends();
    let last: usize = appends
        .last()
        .expect("appends")
        .batches
        .iter()
        .map(|b| b.records.len())
        .sum();
    fixture_log_end() - last as i64
}

/// (epoch, start offset) of each leader epoch of the fixture.
fn expected_leader_epochs() -> Vec<(i32, i64)> {
    let mut out: Vec<(i32, i64)> = Vec::new();
    for batch in expected_batches() {
        if out.last().is_none_or(|&(e, _)| e < batch.leader_epoch) {
            out.push((batch.leader_epoch, batch.base_offset));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Writing and comparing the fixture
// ---------------------------------------------------------------------------------------

/// Writes the fixture log into `dir` (which must not hold a log yet) and closes it.
fn write_fixture_log(dir: &Path) {
    let mut log = Log::open(dir, fixture_config(), fixture_clock()).expect("open a new log");
    for append in fixture_appends() {
        let mut bytes = Vec::new();
        for batch in &append.batches {
            let encoded = encode_batch_with(&batch.records, Compression::None, batch.producer)
                .expect("encode a fixture batch");
            bytes.extend_from_slice(&encoded);
        }
        let info = log.append(&bytes, append.leader_epoch).expect("append");
        assert_eq!(info.batches, append.batches.len());
    }
    log.update_high_watermark(fixture_high_watermark());
    log.close().expect("close");
}

/// Names of the files in `dir`, sorted, without the `.lock` file (a runtime lock, not part
/// of the format); panics on a subdirectory.
fn list_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| {
            let entry = entry.expect("directory entry");
            assert!(
                entry.file_type().expect("file type").is_file(),
                "{:?} is not a file",
                entry.path()
            );
            entry.file_name().to_string_lossy().into_owned()
        })
        .filter(|name| name != ".lock")
        .collect();
    names.sort();
    names
}

/// Why `fixture` and `generated` differ, if they do.
fn describe_difference(name: &str, fixture: &[u8], generated: &[u8]) -> Option<String> {
    if fixture == generated {
        return None;
    }
    let first = fixture
        .iter()
        .zip(generated)
        .position(|(a, b)| a != b)
        .unwrap_or(fixture.len().min(generated.len()));
    Some(format!(
        "{name}: fixture has {} bytes, generated {} bytes; first difference at byte {first} \
         (fixture {}, generated {})",
        fixture.len(),
        generated.len(),
        fixture
            .get(first)
            .map_or("end of file".into(), |b| format!("{b:#04x}")),
        generated
            .get(first)
            .map_or("end of file".into(), |b| format!("{b:#04x}")),
    ))
}

#[test]
fn fixture_is_byte_identical() {
    let _guard = fixture_lock();
    let tmp = tempfile::tempdir().expect("temp dir");
    let generated = tmp.path().join("log");
    write_fixture_log(&generated);
    let fixture = Path::new(FIXTURE_DIR);

    if std::env::var(REGENERATE_ENV).is_ok_and(|v| v == "1") {
        if fixture.exists() {
            for name in list_files(fixture) {
                fs::remove_file(fixture.join(name)).expect("remove old fixture file");
            }
        }
        fs::create_dir_all(fixture).expect("create fixture dir");
        for name in list_files(&generated) {
            fs::copy(generated.join(&name), fixture.join(&name)).expect("copy fixture file");
        }
        eprintln!("regenerated {}", fixture.display());
        return;
    }

    assert!(
        fixture.is_dir(),
        "{} is missing; create it with {REGENERATE_ENV}=1 cargo test --test integration \
         fixture_is_byte_identical",
        fixture.display()
    );
    let fixture_files = list_files(fixture);
    let generated_files = list_files(&generated);
    let mut problems = Vec::new();
    for name in &generated_files {
        if !fixture_files.contains(name) {
            problems.push(format!("{name}: written now but not in the fixture"));
        }
    }
    for name in &fixture_files {
        if !generated_files.contains(name) {
            problems.push(format!("{name}: in the fixture but not written now"));
            continue;
        }
        let want = fs::read(fixture.join(name)).expect("read fixture file");
        let got = fs::read(generated.join(name)).expect("read generated file");
        problems.extend(describe_difference(name, &want, &got));
    }
    assert!(
        problems.is_empty(),
        "the storage format drifted from {}:\n  {}\n(if the change is intended, regenerate with \
         {REGENERATE_ENV}=1 and review the diff)",
        fixture.display(),
        problems.join("\n  ")
    );
}

/// Copies the checked-in fixture into a new temp dir (opening a log rewrites its files).
fn copy_fixture() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("topic-0");
    fs::create_dir_all(&dir).expect("create log dir");
    let _guard = fixture_lock();
    for name in list_files(Path::new(FIXTURE_DIR)) {
        fs::copy(Path::new(FIXTURE_DIR).join(&name), dir.join(&name)).expect("copy fixture");
    }
    (tmp, dir)
}

// ---------------------------------------------------------------------------------------
// Reading the fixture back through Fjord
// ---------------------------------------------------------------------------------------

/// Splits concatenated batches by their batchLength field.
fn split_batches(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let length = i32::from_be_bytes(bytes[8..12].try_into().expect("4 bytes"));
        let (batch, rest) = bytes.split_at(12 + length as usize);
        out.push(batch);
        bytes = rest;
    }
    out
}

fn assert_record_matches(
    got: &DecodedRecord,
    offset: i64,
    want: &RecordInput,
    batch: &ExpectedBatch,
) {
    assert_eq!(got.offset, offset);
    assert_eq!(got.key.as_deref(), want.key.as_deref(), "key at {offset}");
    assert_eq!(
        got.value.as_deref(),
        want.value.as_deref(),
        "value at {offset}"
    );
    assert_eq!(got.timestamp_ms, want.timestamp_ms, "timestamp at {offset}");
    let headers: Vec<(String, Option<Vec<u8>>)> = got
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.as_ref().map(|v| v.to_vec())))
        .collect();
    assert_eq!(headers, want.headers, "headers at {offset}");
    assert_eq!(
        got.partition_leader_epoch, batch.leader_epoch,
        "epoch at {offset}"
    );
    assert_eq!(
        got.producer_id, batch.producer.producer_id,
        "producer id at {offset}"
    );
    assert_eq!(
        got.producer_epoch, batch.producer.producer_epoch,
        "producer epoch at {offset}"
    );
    if batch.producer.base_sequence >= 0 {
        let sequence = batch.producer.base_sequence + (offset - batch.base_offset) as i32;
        assert_eq!(got.sequence, sequence, "sequence at {offset}");
    }
    assert!(!got.log_append_time && !got.control && !got.transactional);
}

/// Kafka's ListOffsets by time, by brute force: the first record (in offset order) whose
/// timestamp is at or after `target`, if it is below `high_watermark`.
fn expected_offset_for_timestamp(target: i64, high_watermark: i64) -> Option<(i64, i64)> {
    expected_records()
        .into_iter()
        .find(|(_, r)| r.timestamp_ms >= target)
        .filter(|&(offset, _)| offset < high_watermark)
        .map(|(offset, r)| (offset, r.timestamp_ms))
}

#[test]
fn fixture_opens_and_reads_back() {
    let (_tmp, dir) = copy_fixture();
    let log_files: Vec<String> = list_files(&dir)
        .into_iter()
        .filter(|n| n.ends_with(".log"))
        .collect();
    let mut log = Log::open(&dir, fixture_config(), fixture_clock()).expect("open the fixture");
    let batches = expected_batches();
    let log_end = fixture_log_end();
    let high_watermark = fixture_high_watermark();
    assert_eq!(log.log_start_offset(), 0);
    assert_eq!(log.log_end_offset(), log_end);
    assert_eq!(log.high_watermark(), high_watermark);
    assert_eq!(log.recovery_point(), log_end);
    assert_eq!(log.cleaner_offset(), 0);
    assert_eq!(log.segments().len(), log_files.len());
    assert!(
        log.segments().len() >= 3,
        "the fixture rolls into at least 3 segments"
    );
    assert_eq!(log.leader_epochs(), &expected_leader_epochs()[..]);
    assert_eq!(log.end_offset_for_epoch(7), Some((7, log_end)));
    assert_eq!(
        log.end_offset_for_epoch(5),
        Some((3, expected_leader_epochs()[2].1))
    );

    // Read everything in small steps (at least one whole batch each time).
    let mut offset = 0;
    let mut read_bytes = Vec::new();
    let mut decoded = Vec::new();
    while offset < log_end {
        let result = log.read(offset, 700, ReadLimit::LogEnd).expect("read");
        assert!(!result.records.is_empty(), "nothing read at {offset}");
        assert_eq!(result.log_end_offset, log_end);
        read_bytes.extend_from_slice(&result.records);
        for batch in split_batches(&result.records) {
            let records = decode_records(batch).expect("decode");
            offset = records.last().expect("records").offset + 1;
            decoded.push(records);
        }
    }
    assert_eq!(offset, log_end);
    assert_eq!(decoded.len(), batches.len());
    for (got, want) in decoded.iter().zip(&batches) {
        assert_eq!(
            got.len(),
            want.records.len(),
            "batch at {}",
            want.base_offset
        );
        for (i, (g, w)) in got.iter().zip(&want.records).enumerate() {
            assert_record_matches(g, want.base_offset + i as i64, w, want);
        }
    }
    // Reads return the stored bytes: the segments' files, concatenated.
    let mut files = Vec::new();
    for name in &log_files {
        files.extend(fs::read(dir.join(name)).expect("read segment"));
    }
    assert!(
        read_bytes == files,
        "the bytes read differ from the .log files"
    );

    // Any offset finds the batch that holds it, through the offset index.
    for want in &batches {
        for offset in want.base_offset..=want.last_offset() {
            let result = log.read(offset, 1, ReadLimit::LogEnd).expect("read");
            let got = split_batches(&result.records);
            assert_eq!(got.len(), 1, "read at {offset} returns one batch");
            assert_eq!(
                got[0][..8],
                want.base_offset.to_be_bytes(),
                "batch holding {offset}"
            );
        }
    }
    assert!(
        log.read(log_end, 1000, ReadLimit::LogEnd)
            .expect("read")
            .records
            .is_empty()
    );
    assert!(log.read(log_end + 1, 1000, ReadLimit::LogEnd).is_err());

    // Consumers stop at the high watermark.
    let mut offset = 0;
    loop {
        let result = log
            .read(offset, 100_000, ReadLimit::HighWatermark)
            .expect("read");
        let Some(last) = split_batches(&result.records).last().copied() else {
            break;
        };
        offset = decode_records(last)
            .expect("decode")
            .last()
            .expect("records")
            .offset
            + 1;
    }
    assert_eq!(offset, high_watermark);

    // ListOffsets by time, below the high watermark, then below the log end.
    let mut targets: Vec<i64> = expected_records()
        .iter()
        .flat_map(|(_, r)| [r.timestamp_ms - 1, r.timestamp_ms, r.timestamp_ms + 1])
        .collect();
    targets.extend([i64::MIN, -1, 0, T0 - 1_000_000, i64::MAX]);
    targets.sort_unstable();
    targets.dedup();
    for &target in &targets {
        assert_eq!(
            log.offset_for_timestamp(target)
                .expect("offset_for_timestamp"),
            expected_offset_for_timestamp(target, high_watermark),
            "offset_for_timestamp({target}) with the high watermark at {high_watermark}"
        );
    }
    log.update_high_watermark(log.log_end_offset());
    assert_eq!(log.high_watermark(), log_end);
    for &target in &targets {
        assert_eq!(
            log.offset_for_timestamp(target)
                .expect("offset_for_timestamp"),
            expected_offset_for_timestamp(target, log_end),
            "offset_for_timestamp({target}) with the high watermark at the log end"
        );
    }
}

// ---------------------------------------------------------------------------------------
// An independent minimal parser of Kafka's log format (no Fjord, no kafka-protocol)
// ---------------------------------------------------------------------------------------

/// Big-endian fields and Kafka's zigzag varints, panicking with the position on short input.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        assert!(
            n <= self.remaining(),
            "need {n} bytes at {}, {} left",
            self.pos,
            self.remaining()
        );
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        out
    }
    fn array<const N: usize>(&mut self) -> [u8; N] {
        self.take(N).try_into().expect("N bytes")
    }
    fn i8(&mut self) -> i8 {
        i8::from_be_bytes(self.array())
    }
    fn i16(&mut self) -> i16 {
        i16::from_be_bytes(self.array())
    }
    fn i32(&mut self) -> i32 {
        i32::from_be_bytes(self.array())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.array())
    }
    fn i64(&mut self) -> i64 {
        i64::from_be_bytes(self.array())
    }
    /// Unsigned LEB128 of at most `max_bytes` bytes.
    fn unsigned_varint(&mut self, max_bytes: usize) -> u64 {
        let mut value = 0u64;
        for i in 0..max_bytes {
            let byte = self.take(1)[0];
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return value;
            }
        }
        panic!("varint longer than {max_bytes} bytes before {}", self.pos);
    }
    /// Kafka's `varint`: zigzag-encoded i32.
    fn varint(&mut self) -> i32 {
        let raw = self.unsigned_varint(5);
        assert!(raw <= u64::from(u32::MAX), "varint overflows 32 bits");
        let raw = raw as u32;
        (raw >> 1) as i32 ^ -((raw & 1) as i32)
    }
    /// Kafka's `varlong`: zigzag-encoded i64.
    fn varlong(&mut self) -> i64 {
        let raw = self.unsigned_varint(10);
        (raw >> 1) as i64 ^ -((raw & 1) as i64)
    }
    /// A varint length (-1 = null) and that many bytes.
    fn nullable_bytes(&mut self) -> Option<&'a [u8]> {
        let length = self.varint();
        assert!(length >= -1, "negative length {length}");
        (length >= 0).then(|| self.take(length as usize))
    }
}

/// One RecordBatch v2, every header field as read.
#[derive(Debug)]
struct RawBatch<'a> {
    /// Where the batch starts in its file.
    position: usize,
    bytes: &'a [u8],
    base_offset: i64,
    batch_length: i32,
    partition_leader_epoch: i32,
    magic: i8,
    crc: u32,
    attributes: i16,
    last_offset_delta: i32,
    base_timestamp: i64,
    max_timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    record_count: i32,
    records: &'a [u8],
}

impl RawBatch<'_> {
    fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }
}

/// One record of an uncompressed batch.
#[derive(Debug)]
struct RawRecord<'a> {
    attributes: i8,
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    headers: Vec<(&'a [u8], Option<&'a [u8]>)>,
}

/// Walks a buffer of whole batches: header fields, magic 2, and the CRC-32C of everything
/// from the attributes to the end of the batch. The buffer must end at a batch boundary.
fn parse_batches<'a>(file: &'a [u8], name: &str) -> Vec<RawBatch<'a>> {
    let mut out = Vec::new();
    let mut position = 0;
    while position < file.len() {
        let mut r = Reader::new(&file[position..]);
        let base_offset = r.i64();
        let batch_length = r.i32();
        // The fixed header after batchLength is 49 bytes.
        assert!(
            batch_length >= 49,
            "{name}@{position}: batchLength {batch_length}"
        );
        let size = 12 + batch_length as usize;
        assert!(
            position + size <= file.len(),
            "{name}@{position}: batch of {size} bytes is cut off"
        );
        let bytes = &file[position..position + size];
        let mut r = Reader::new(bytes);
        r.take(12);
        let partition_leader_epoch = r.i32();
        let magic = r.i8();
        assert_eq!(magic, 2, "{name}@{position}: magic");
        let crc = r.u32();
        assert_eq!(r.pos, 21);
        let computed = crc32c::crc32c(&bytes[21..]);
        assert_eq!(
            computed, crc,
            "{name}@{position}: CRC-32C of attributes..end"
        );
        let batch = RawBatch {
            position,
            bytes,
            base_offset,
            batch_length,
            partition_leader_epoch,
            magic,
            crc,
            attributes: r.i16(),
            last_offset_delta: r.i32(),
            base_timestamp: r.i64(),
            max_timestamp: r.i64(),
            producer_id: r.i64(),
            producer_epoch: r.i16(),
            base_sequence: r.i32(),
            record_count: r.i32(),
            records: &bytes[61..],
        };
        assert_eq!(r.pos, 61, "the v2 header is 61 bytes");
        out.push(batch);
        position += size;
    }
    out
}

/// Decodes the records of an uncompressed batch.
fn parse_records<'a>(batch: &RawBatch<'a>) -> Vec<RawRecord<'a>> {
    assert_eq!(batch.attributes & 0x07, 0, "uncompressed");
    let mut r = Reader::new(batch.records);
    let mut out = Vec::new();
    for _ in 0..batch.record_count {
        let length = r.varint();
        assert!(length > 0, "record length {length}");
        let mut body = Reader::new(r.take(length as usize));
        let attributes = body.i8();
        let timestamp_delta = body.varlong();
        let offset_delta = body.varint();
        let key = body.nullable_bytes();
        let value = body.nullable_bytes();
        let header_count = body.varint();
        assert!(header_count >= 0, "header count {header_count}");
        let headers = (0..header_count)
            .map(|_| {
                let key = body.nullable_bytes().expect("a header key is never null");
                (key, body.nullable_bytes())
            })
            .collect();
        assert_eq!(
            body.remaining(),
            0,
            "the record length covers the record exactly"
        );
        out.push(RawRecord {
            attributes,
            timestamp_delta,
            offset_delta,
            key,
            value,
            headers,
        });
    }
    assert_eq!(
        r.remaining(),
        0,
        "recordCount records fill the batch exactly"
    );
    out
}

/// (relative offset, position) entries of a `.index` file.
type OffsetEntries = Vec<(u32, u32)>;
/// (timestamp, relative offset) entries of a `.timeindex` file.
type TimeEntries = Vec<(i64, u32)>;

fn parse_offset_index(bytes: &[u8], name: &str) -> OffsetEntries {
    assert_eq!(bytes.len() % 8, 0, "{name}: 8-byte entries");
    let mut r = Reader::new(bytes);
    (0..bytes.len() / 8).map(|_| (r.u32(), r.u32())).collect()
}

fn parse_time_index(bytes: &[u8], name: &str) -> TimeEntries {
    assert_eq!(bytes.len() % 12, 0, "{name}: 12-byte entries");
    let mut r = Reader::new(bytes);
    (0..bytes.len() / 12).map(|_| (r.i64(), r.u32())).collect()
}

/// Fjord's checkpoint file: `fjord-checkpoint 1`, `key value` lines, `crc32 <hex>` of the
/// text before it (CRC-32/IEEE, computed here bit by bit).
fn parse_checkpoint(path: &Path) -> Vec<(String, String)> {
    fn crc32_ieee(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let text = fs::read_to_string(path).expect("read checkpoint");
    let crc_at = text.rfind("crc32 ").expect("a crc32 line");
    let (body, crc_line) = text.split_at(crc_at);
    assert!(
        crc_line.ends_with('\n') && crc_line.lines().count() == 1,
        "{crc_line:?}"
    );
    let stored = u32::from_str_radix(crc_line["crc32 ".len()..].trim_end(), 16).expect("hex crc");
    assert_eq!(
        crc32_ieee(body.as_bytes()),
        stored,
        "{}: crc32",
        path.display()
    );
    let mut lines = body.lines();
    assert_eq!(lines.next(), Some("fjord-checkpoint 1"));
    lines
        .map(|line| {
            let (k, v) = line.split_once(' ').expect("key value");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// The offset and time index entries Fjord's rule gives for `batches` (one segment): an
/// offset entry for each batch that starts at least `index.interval.bytes` after the
/// previous entry's batch (or the file start), keyed by its base offset; with it, a time
/// entry (largest timestamp so far, last offset of the first batch that reached it) if that
/// timestamp is new; and a last such time entry when the segment is sealed.
fn expected_index_entries(base: i64, batches: &[RawBatch<'_>]) -> (OffsetEntries, TimeEntries) {
    let mut offsets = Vec::new();
    let mut times: Vec<(i64, u32)> = Vec::new();
    let mut max: Option<(i64, u32)> = None;
    let mut since_entry = 0u64;
    fn maybe_time(times: &mut Vec<(i64, u32)>, max: Option<(i64, u32)>) {
        if let Some((ts, rel)) = max
            && times.last().is_none_or(|&(last, _)| ts > last)
        {
            times.push((ts, rel));
        }
    }
    for batch in batches {
        if max.is_none_or(|(ts, _)| batch.max_timestamp > ts) {
            max = Some((batch.max_timestamp, (batch.last_offset() - base) as u32));
        }
        if since_entry >= INDEX_INTERVAL_BYTES {
            offsets.push(((batch.base_offset - base) as u32, batch.position as u32));
            maybe_time(&mut times, max);
            since_entry = 0;
        }
        since_entry += batch.bytes.len() as u64;
    }
    maybe_time(&mut times, max);
    (offsets, times)
}

#[test]
fn fixture_is_kafka_format() {
    let _guard = fixture_lock();
    let dir = Path::new(FIXTURE_DIR);
    let names = list_files(dir);

    // Segment files: <20-digit zero-padded base offset>.{log,index,timeindex}.
    let mut bases = Vec::new();
    for name in &names {
        if [
            "meta.checkpoint",
            "leader-epoch-checkpoint",
            "clean-shutdown",
        ]
        .contains(&name.as_str())
        {
            continue;
        }
        let Some((stem, kind)) = name.split_once('.') else {
            panic!("unexpected file {name}");
        };
        assert!(
            stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()),
            "{name}: not a 20-digit base offset"
        );
        assert!(
            ["log", "index", "timeindex", "producers"].contains(&kind),
            "unexpected file {name}"
        );
        if kind == "producers" {
            // Fjord's own (Kafka's `.snapshot` holds the same state in its own layout):
            // docs/design/on-disk-format.md.
            let bytes = std::fs::read(dir.join(name)).expect("read snapshot");
            assert_eq!(&bytes[..4], b"FJPS", "{name}");
        }
        if kind == "log" {
            bases.push(stem.parse::<i64>().expect("base offset"));
        }
    }
    assert!(
        bases.len() >= 3,
        "the fixture has at least 3 segments, found {}",
        bases.len()
    );
    let mut expected_names: Vec<String> = bases
        .iter()
        .flat_map(|b| ["log", "index", "timeindex"].map(|k| format!("{b:020}.{k}")))
        .collect();
    expected_names.extend(
        [
            "clean-shutdown",
            "leader-epoch-checkpoint",
            "meta.checkpoint",
        ]
        .map(String::from),
    );
    // Producer snapshots: the newest three rolls' and the close's (the fixture's batches
    // carry an idempotent producer).
    expected_names.extend(names.iter().filter(|n| n.ends_with(".producers")).cloned());
    expected_names.sort();
    assert_eq!(names, expected_names);
    assert_eq!(
        names.iter().filter(|n| n.ends_with(".producers")).count(),
        3,
        "the newest three producer snapshots are kept"
    );

    let expected = expected_batches();
    let mut next_batch = expected.iter();
    let mut next_offset = 0i64;
    let mut index_entries = 0;
    for &base in &bases {
        let log_name = format!("{base:020}.log");
        let file = fs::read(dir.join(&log_name)).expect("read .log");
        assert!(
            file.len() as u64 <= SEGMENT_BYTES,
            "{log_name}: {} bytes",
            file.len()
        );
        let batches = parse_batches(&file, &log_name);
        assert!(!batches.is_empty(), "{log_name} is empty");
        assert_eq!(
            batches[0].base_offset, base,
            "{log_name}: the first batch starts the segment"
        );
        assert_eq!(base, next_offset, "{log_name}: segments are contiguous");

        for batch in &batches {
            let want = next_batch
                .next()
                .expect("more batches in the log than appended");
            let at = format!("{log_name}@{}", batch.position);
            assert_eq!(batch.base_offset, want.base_offset, "{at}: baseOffset");
            assert_eq!(
                batch.batch_length as usize,
                batch.bytes.len() - 12,
                "{at}: batchLength"
            );
            assert_eq!(
                batch.partition_leader_epoch, want.leader_epoch,
                "{at}: leader epoch"
            );
            assert_eq!(batch.magic, 2);
            assert_eq!(batch.crc, crc32c::crc32c(&batch.bytes[21..]));
            // CreateTime, not transactional, not control, no delete horizon, uncompressed.
            assert_eq!(batch.attributes, 0, "{at}: attributes");
            assert_eq!(
                batch.last_offset_delta as usize,
                want.records.len() - 1,
                "{at}: lastOffsetDelta"
            );
            assert_eq!(
                batch.record_count as usize,
                want.records.len(),
                "{at}: recordCount"
            );
            // baseTimestamp is the first record's (as the Java producer writes it); the
            // deltas are from it, negative for older records.
            let first_ts = want.records[0].timestamp_ms;
            assert_eq!(batch.base_timestamp, first_ts, "{at}: baseTimestamp");
            assert_eq!(
                batch.max_timestamp,
                want.max_timestamp(),
                "{at}: maxTimestamp"
            );
            assert_eq!(
                batch.producer_id, want.producer.producer_id,
                "{at}: producerId"
            );
            assert_eq!(
                batch.producer_epoch, want.producer.producer_epoch,
                "{at}: producerEpoch"
            );
            assert_eq!(
                batch.base_sequence, want.producer.base_sequence,
                "{at}: baseSequence"
            );

            let records = parse_records(batch);
            assert_eq!(records.len(), want.records.len());
            for (i, (got, input)) in records.iter().zip(&want.records).enumerate() {
                let at = format!("{at} record {i}");
                assert_eq!(got.attributes, 0, "{at}: attributes");
                assert_eq!(got.offset_delta as usize, i, "{at}: offsetDelta");
                assert_eq!(
                    batch.base_timestamp + got.timestamp_delta,
                    input.timestamp_ms,
                    "{at}: timestamp"
                );
                assert_eq!(got.key, input.key.as_deref(), "{at}: key");
                assert_eq!(got.value, input.value.as_deref(), "{at}: value");
                let want_headers: Vec<(&[u8], Option<&[u8]>)> = input
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_bytes(), v.as_deref()))
                    .collect();
                assert_eq!(got.headers, want_headers, "{at}: headers");
            }
            next_offset = batch.last_offset() + 1;
        }

        // The offset index: strictly increasing; each entry names the start of the batch
        // whose baseOffset is base + relative offset.
        let index_name = format!("{base:020}.index");
        let offset_index = parse_offset_index(
            &fs::read(dir.join(&index_name)).expect("read .index"),
            &index_name,
        );
        for pair in offset_index.windows(2) {
            assert!(
                pair[0].0 < pair[1].0 && pair[0].1 < pair[1].1,
                "{index_name}: {pair:?} not increasing"
            );
        }
        for &(rel, position) in &offset_index {
            let batch = batches
                .iter()
                .find(|b| b.position == position as usize)
                .unwrap_or_else(|| {
                    panic!("{index_name}: position {position} is not a batch start")
                });
            assert_eq!(
                batch.base_offset,
                base + i64::from(rel),
                "{index_name}: entry ({rel}, {position})"
            );
        }

        // The time index: strictly increasing; each entry is a batch's maxTimestamp with that
        // batch's last offset, the largest timestamp of the segment up to it; the last entry
        // holds the segment's largest timestamp.
        let time_name = format!("{base:020}.timeindex");
        let time_index = parse_time_index(
            &fs::read(dir.join(&time_name)).expect("read .timeindex"),
            &time_name,
        );
        for pair in time_index.windows(2) {
            assert!(
                pair[0].0 < pair[1].0 && pair[0].1 < pair[1].1,
                "{time_name}: {pair:?} not increasing"
            );
        }
        for &(ts, rel) in &time_index {
            let offset = base + i64::from(rel);
            let upto = batches.iter().position(|b| b.last_offset() == offset);
            let upto =
                upto.unwrap_or_else(|| panic!("{time_name}: offset {offset} does not end a batch"));
            assert_eq!(
                batches[upto].max_timestamp, ts,
                "{time_name}: ({ts}, {rel})"
            );
            let max_so_far = batches[..=upto].iter().map(|b| b.max_timestamp).max();
            assert_eq!(
                max_so_far,
                Some(ts),
                "{time_name}: ({ts}, {rel}) is not the largest so far"
            );
        }
        let segment_max = batches.iter().map(|b| b.max_timestamp).max();
        assert_eq!(
            time_index.last().map(|e| e.0),
            segment_max,
            "{time_name}: last entry"
        );

        assert_eq!(
            (offset_index.clone(), time_index.clone()),
            expected_index_entries(base, &batches),
            "{base:020}: index entries"
        );
        assert!(!offset_index.is_empty(), "{index_name} has entries");
        index_entries += offset_index.len();
    }
    assert!(next_batch.next().is_none(), "batches missing from the log");
    assert_eq!(next_offset, fixture_log_end());
    assert!(index_entries >= bases.len());

    // Fjord's own files (not Kafka's formats): checkpoints and the clean-shutdown marker.
    let meta = parse_checkpoint(&dir.join("meta.checkpoint"));
    let want: Vec<(String, String)> = [
        ("log_start_offset", 0),
        ("recovery_point", fixture_log_end()),
        ("high_watermark", fixture_high_watermark()),
        ("cleaner_offset", 0),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(meta, want);
    let epochs = parse_checkpoint(&dir.join("leader-epoch-checkpoint"));
    let want: Vec<(String, String)> = expected_leader_epochs()
        .iter()
        .map(|(e, o)| (e.to_string(), o.to_string()))
        .collect();
    assert_eq!(epochs, want);
    assert_eq!(
        fs::read(dir.join("clean-shutdown")).expect("marker").len(),
        0
    );
}

// ---------------------------------------------------------------------------------------
// Compressed batches are stored as the client sent them
// ---------------------------------------------------------------------------------------

fn compressible_records(n: usize) -> Vec<RecordInput> {
    (0..n)
        .map(|i| RecordInput {
            key: (i % 3 != 0).then(|| format!("key-{}", i % 4).into_bytes()),
            value: (i != 7).then(|| {
                format!("{{\"n\":{i},\"payload\":\"{}\"}}", "abc".repeat(20)).into_bytes()
            }),
            headers: vec![("h".into(), Some(vec![i as u8])), ("null".into(), None)],
            timestamp_ms: T0 + (i as i64 * 37) % 500,
        })
        .collect()
}

/// `stored` is `sent` with baseOffset and partitionLeaderEpoch rewritten, nothing else.
fn assert_stored_as_sent(
    stored: &[u8],
    sent: &[u8],
    base_offset: i64,
    epoch: i32,
    codec: Compression,
) {
    assert_eq!(stored.len(), sent.len(), "{codec:?}: size");
    assert_eq!(
        stored[..8],
        base_offset.to_be_bytes(),
        "{codec:?}: baseOffset"
    );
    assert_eq!(stored[8..12], sent[8..12], "{codec:?}: batchLength");
    assert_eq!(
        stored[12..16],
        epoch.to_be_bytes(),
        "{codec:?}: partitionLeaderEpoch"
    );
    assert_eq!(stored[16], sent[16], "{codec:?}: magic");
    assert!(
        stored[17..] == sent[17..],
        "{codec:?}: bytes from the CRC on differ"
    );
    let parsed = parse_batches(stored, &format!("{codec:?}"));
    assert_eq!(parsed.len(), 1);
    let compression_id = match codec {
        Compression::None => 0,
        Compression::Gzip => 1,
        Compression::Snappy => 2,
        Compression::Lz4 => 3,
        Compression::Zstd => 4,
    };
    assert_eq!(
        parsed[0].attributes & 0x07,
        compression_id,
        "{codec:?}: attributes"
    );
    let decoded = decode_records(stored).expect("decode");
    let want = compressible_records(decoded.len());
    for (i, (got, input)) in decoded.iter().zip(&want).enumerate() {
        assert_eq!(got.offset, base_offset + i as i64);
        assert_eq!(got.key.as_deref(), input.key.as_deref());
        assert_eq!(got.value.as_deref(), input.value.as_deref());
        assert_eq!(got.timestamp_ms, input.timestamp_ms);
        assert_eq!(got.partition_leader_epoch, epoch);
    }
}

#[test]
fn compressed_batches_are_stored_as_sent() {
    const CODECS: [Compression; 4] = [
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];
    // An idempotent producer's batches: each continues the sequence of the one before.
    let mut sequence = 10;
    let mut producer = |records: usize| {
        let fields = ProducerFields {
            producer_id: 77,
            producer_epoch: 2,
            base_sequence: sequence,
        };
        sequence += records as i32;
        fields
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("compressed-0");
    let config = LogConfig {
        segment_bytes: 16 * 1024,
        ..fixture_config()
    };
    let mut log = Log::open(&dir, config.clone(), fixture_clock()).expect("open");
    // Something first, so that offsets are rewritten to non-zero values.
    let first = encode_batch_with(&compressible_records(3), Compression::None, producer(3))
        .expect("encode")
        .to_vec();
    log.append(&first, 1).expect("append");

    // (base offset, epoch, codec, bytes as sent)
    let mut sent = Vec::new();
    for (i, codec) in CODECS.into_iter().enumerate() {
        let batch = encode_batch_with(&compressible_records(20 + i), codec, producer(20 + i))
            .expect("encode");
        let epoch = 2 + i as i32;
        let info = log.append(&batch, epoch).expect("append");
        sent.push((info.first_offset, epoch, codec, batch));
    }
    // All four codecs in one write.
    let mut together = Vec::new();
    let mut sizes = Vec::new();
    for codec in CODECS {
        let batch =
            encode_batch_with(&compressible_records(30), codec, producer(30)).expect("encode");
        sizes.push((codec, batch.clone()));
        together.extend_from_slice(&batch);
    }
    let info = log.append(&together, 9).expect("append");
    assert_eq!(info.batches, 4);
    let mut offset = info.first_offset;
    for (codec, batch) in sizes {
        sent.push((offset, 9, codec, batch));
        offset += 30;
    }

    let check = |log: &Log| {
        for (base_offset, epoch, codec, bytes) in &sent {
            let result = log.read(*base_offset, 1, ReadLimit::LogEnd).expect("read");
            assert_stored_as_sent(&result.records, bytes, *base_offset, *epoch, *codec);
        }
    };
    check(&log);
    log.close().expect("close");
    let log = Log::open(&dir, config, fixture_clock()).expect("reopen");
    check(&log);
}

// ---------------------------------------------------------------------------------------
// Recovery rebuilds the same files
// ---------------------------------------------------------------------------------------

/// Differences between the checked-in fixture and `dir`, for the files `compare` accepts.
fn differences_from_fixture(dir: &Path, compare: impl Fn(&str) -> bool) -> Vec<String> {
    let fixture = Path::new(FIXTURE_DIR);
    let _guard = fixture_lock();
    let mut problems = Vec::new();
    for name in list_files(fixture).into_iter().filter(|n| compare(n)) {
        let want = fs::read(fixture.join(&name)).expect("read fixture file");
        match fs::read(dir.join(&name)) {
            Ok(got) => problems.extend(describe_difference(&name, &want, &got)),
            Err(e) => problems.push(format!("{name}: {e}")),
        }
    }
    problems
}

/// After a crash, recovery scans the segments and rebuilds their indexes: the files after
/// the next clean close are the fixture's again.
#[test]
fn recovery_rebuilds_identical_files() {
    // Only the clean-shutdown marker is gone: the active segment is recovered.
    let (_tmp, dir) = copy_fixture();
    fs::remove_file(dir.join("clean-shutdown")).expect("remove marker");
    let log = Log::open(&dir, fixture_config(), fixture_clock()).expect("recover");
    assert_eq!(log.log_end_offset(), fixture_log_end());
    log.close().expect("close");
    let problems = differences_from_fixture(&dir, |_| true);
    assert!(
        problems.is_empty(),
        "after recovering the active segment:\n  {}",
        problems.join("\n  ")
    );

    // No marker, no meta.checkpoint (so no recovery point) and no index files: every segment
    // is scanned and its indexes written anew. The high watermark is lost with the meta file.
    let (_tmp, dir) = copy_fixture();
    for name in list_files(&dir) {
        if name.ends_with(".index")
            || name.ends_with(".timeindex")
            || name == "clean-shutdown"
            || name == "meta.checkpoint"
        {
            fs::remove_file(dir.join(name)).expect("remove");
        }
    }
    let log = Log::open(&dir, fixture_config(), fixture_clock()).expect("recover");
    assert_eq!(log.log_end_offset(), fixture_log_end());
    assert_eq!(log.leader_epochs(), &expected_leader_epochs()[..]);
    log.close().expect("close");
    let problems = differences_from_fixture(&dir, |name| name != "meta.checkpoint");
    assert!(
        problems.is_empty(),
        "after a full recovery:\n  {}",
        problems.join("\n  ")
    );
}

/// A sealed segment whose `.timeindex` is missing (its `.index` intact) must still know its
/// largest timestamp: time-based lookups and retention depend on it.
///
/// Regression: `Segment::load_tail` took the largest timestamp from the (then empty) time
/// index and scanned only the batches after the last offset-index entry, so the segment's
/// `max_timestamp` was that of its tail; `offset_for_timestamp` skipped the segment and
/// time-based retention deleted it too early. Now a missing index means a rebuild.
#[test]
fn missing_timeindex_keeps_the_segment_max_timestamp() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("late-0");
    let config = LogConfig {
        retention_ms: 950_000,
        ..fixture_config()
    };
    let mut log = Log::open(&dir, config.clone(), fixture_clock()).expect("open");
    // The first batch has the segment's largest timestamp; later ones are older (late).
    for ts in [T0 + 100_000, T0, T0 + 1, T0 + 2, T0 + 3] {
        let records = [RecordInput::new(
            Some(b"k".to_vec()),
            Some(vec![b'v'; 300]),
            ts,
        )];
        let batch = encode_batch_with(&records, Compression::None, ProducerFields::default())
            .expect("encode")
            .to_vec();
        log.append(&batch, 0).expect("append");
    }
    log.roll().expect("roll");
    let records = [RecordInput::new(None, Some(b"v".to_vec()), T0 + 200_000)];
    let batch = encode_batch_with(&records, Compression::None, ProducerFields::default())
        .expect("encode")
        .to_vec();
    log.append(&batch, 0).expect("append");
    log.update_high_watermark(log.log_end_offset());
    assert_eq!(
        log.segments().iter().next().map(|s| s.max_timestamp()),
        Some(T0 + 100_000)
    );
    assert_eq!(
        log.offset_for_timestamp(T0 + 50_000).expect("lookup"),
        Some((0, T0 + 100_000))
    );
    log.close().expect("close");

    fs::remove_file(dir.join("00000000000000000000.timeindex")).expect("remove .timeindex");
    let mut log = Log::open(&dir, config, fixture_clock()).expect("reopen");
    assert_eq!(
        log.segments().iter().next().map(|s| s.max_timestamp()),
        Some(T0 + 100_000)
    );
    assert_eq!(
        log.offset_for_timestamp(T0 + 50_000).expect("lookup"),
        Some((0, T0 + 100_000))
    );
    // The segment's newest record is 900 s old, within retention.ms = 950 s.
    assert_eq!(
        log.apply_retention().expect("retention").deleted_segments,
        0
    );
    assert_eq!(log.log_start_offset(), 0);
}
