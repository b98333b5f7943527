//! Model-based tests of the storage engine (see the bottom of this file) and scenario
//! tests of `Log`.

use std::sync::Arc;

use fjord_protocol::codec::{Compression, RecordInput, encode_batch};

use super::test_util::read_from;
use super::*;

fn batch(keys_values: &[(Option<&str>, Option<&str>)], ts: i64) -> Vec<u8> {
    let records: Vec<RecordInput> = keys_values
        .iter()
        .map(|(k, v)| {
            RecordInput::new(
                k.map(|k| k.as_bytes().to_vec()),
                v.map(|v| v.as_bytes().to_vec()),
                ts,
            )
        })
        .collect();
    encode_batch(&records, Compression::None).unwrap().to_vec()
}

/// Every record readable from `from`, as (offset, key, value).
fn read_all(log: &Log, from: i64) -> Vec<(i64, Option<Vec<u8>>)> {
    read_from(log, from)
        .into_iter()
        .map(|r| (r.offset, r.value.map(|v| v.to_vec())))
        .collect()
}

fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        index_interval_bytes: 128,
        segment_index_bytes: 4096,
        ..LogConfig::default()
    }
}

#[test]
fn append_read_roll_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let mut log = Log::open(dir.path(), small_config(), Arc::new(clock.clone())).unwrap();
    for i in 0..100 {
        let value = format!("value-{i}");
        let b = batch(&[(Some("k"), Some(&value)), (None, Some("x"))], 1_000 + i);
        let info = log.append(&b, 3).unwrap();
        assert_eq!(info.first_offset, i * 2);
        assert_eq!(info.last_offset, i * 2 + 1);
    }
    assert_eq!(log.log_end_offset(), 200);
    assert!(log.segments().len() > 3, "rolled: {}", log.segments().len());
    let all = read_all(&log, 0);
    assert_eq!(all.len(), 200);
    assert_eq!(all[57].0, 57);
    assert_eq!(all[56].1.as_deref(), Some(&b"value-28"[..]));
    assert_eq!(read_all(&log, 77)[0].0, 77);
    assert_eq!(
        log.offset_for_timestamp(1_050).unwrap(),
        None,
        "above the high watermark"
    );
    log.update_high_watermark(200);
    assert_eq!(log.offset_for_timestamp(1_050).unwrap(), Some((100, 1_050)));
    assert_eq!(log.offset_for_timestamp(5_000).unwrap(), None);
    log.close().unwrap();
    let log = Log::open(dir.path(), small_config(), Arc::new(clock.clone())).unwrap();
    assert_eq!(log.log_end_offset(), 200);
    assert_eq!(log.high_watermark(), 200);
    assert_eq!(read_all(&log, 0).len(), 200);
    assert_eq!(log.offset_for_timestamp(1_050).unwrap(), Some((100, 1_050)));
    assert_eq!(log.leader_epochs(), &[(3, 0)]);
    drop(log); // a crash: no clean-shutdown marker
    let log = Log::open(dir.path(), small_config(), Arc::new(clock)).unwrap();
    assert_eq!(read_all(&log, 0).len(), 200);
}

// ---------------------------------------------------------------------------------------
// Model-based test: random operations against the real log and an in-memory model.
// ---------------------------------------------------------------------------------------

use std::collections::BTreeMap;
use std::path::PathBuf;

use proptest::prelude::*;

type Rec = (Option<Vec<u8>>, Option<Vec<u8>>, i64);

/// What the log must hold: records by offset, the start and end offsets, batch bases.
#[derive(Debug, Default, Clone)]
struct Model {
    records: BTreeMap<i64, Rec>,
    log_start: i64,
    log_end: i64,
    /// The append each record came from (compaction keeps a batch's records together).
    batch_of: BTreeMap<i64, u64>,
    appends: u64,
}

impl Model {
    fn visible(&self) -> Vec<(i64, Rec)> {
        self.records
            .range(self.log_start..self.log_end)
            .map(|(&o, r)| (o, r.clone()))
            .collect()
    }
    fn truncate_to(&mut self, offset: i64) {
        self.records.retain(|&o, _| o < offset);
        self.batch_of.retain(|&o, _| o < offset);
        self.log_end = offset;
        self.log_start = self.log_start.min(offset);
    }
    fn advance_start(&mut self, offset: i64) {
        self.log_start = self.log_start.max(offset);
        self.records.retain(|&o, _| o >= self.log_start);
        self.batch_of.retain(|&o, _| o >= self.log_start);
    }
}

fn read_records(log: &Log) -> Vec<(i64, Rec)> {
    read_from(log, log.log_start_offset())
        .into_iter()
        .map(|r| {
            let rec = (
                r.key.map(|b| b.to_vec()),
                r.value.map(|b| b.to_vec()),
                r.timestamp_ms,
            );
            (r.offset, rec)
        })
        .collect()
}

#[derive(Debug, Clone)]
enum Fault {
    None,
    /// Cut the first not-yet-durable file at a point between its durable and current size.
    Cut(u16),
    /// Zero a range of the not-yet-durable part (a torn sector).
    Zero(u16, u16),
    /// Flip one CRC-covered byte of the not-yet-durable part.
    Flip(u16),
}

#[derive(Debug, Clone)]
enum Op {
    Append {
        records: Vec<(Option<u8>, Option<u16>)>,
        compression: usize,
        ts_back: u16,
    },
    Read,
    Roll,
    Flush,
    Truncate(u16),
    DeleteRecords(u16),
    Retention {
        bytes: i64,
        ms: bool,
    },
    Compact {
        map_entries: usize,
        ratio: u8,
        flush_first: bool,
    },
    AdvanceTime(u32),
    Crash(Fault),
    CleanReopen,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let record = (
        proptest::option::weighted(0.9, 0u8..8),
        proptest::option::weighted(0.9, 0u16..400),
    );
    prop_oneof![
        12 => (proptest::collection::vec(record, 1..6), 0usize..5, 0u16..3000)
            .prop_map(|(records, compression, ts_back)| Op::Append {
                records,
                compression,
                ts_back,
            }),
        2 => Just(Op::Read),
        1 => Just(Op::Roll),
        2 => Just(Op::Flush),
        1 => any::<u16>().prop_map(Op::Truncate),
        1 => any::<u16>().prop_map(Op::DeleteRecords),
        1 => (-1i64..4000, any::<bool>()).prop_map(|(bytes, ms)| Op::Retention { bytes, ms }),
        2 => (1usize..40, 0u8..8, any::<bool>())
            .prop_map(|(map_entries, ratio, flush_first)| Op::Compact {
                map_entries,
                ratio,
                flush_first,
            }),
        1 => (0u32..5000).prop_map(Op::AdvanceTime),
        2 => prop_oneof![
            Just(Fault::None),
            any::<u16>().prop_map(Fault::Cut),
            (any::<u16>(), 1u16..200).prop_map(|(a, b)| Fault::Zero(a, b)),
            any::<u16>().prop_map(Fault::Flip),
        ].prop_map(Op::Crash),
        1 => Just(Op::CleanReopen),
    ]
}

fn pick(range_lo: i64, range_hi: i64, at: u16) -> i64 {
    if range_hi <= range_lo {
        return range_lo;
    }
    range_lo + (at as i64 * (range_hi - range_lo + 1)) / (u16::MAX as i64 + 1)
}

/// Batch start positions in `bytes` from `from` (a batch boundary), structure only.
fn batch_starts(bytes: &[u8], from: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut pos = from;
    while let Some(Ok(size)) = fjord_protocol::BatchHeader::peek_size(&bytes[pos..]) {
        if pos + size > bytes.len() {
            break;
        }
        out.push((pos, size));
        pos += size;
    }
    out
}

/// Simulates what the disk may hold after a power cut: only the first file with
/// unflushed bytes is damaged (later ones keep their bytes, which recovery must drop if
/// they no longer follow). Damage never reaches below the durable length.
fn inject(layout: &[(PathBuf, u64, u64)], fault: &Fault) {
    let Some((path, durable, current)) = layout.iter().find(|(_, d, c)| d < c) else {
        return;
    };
    let (durable, current) = (*durable as usize, *current as usize);
    let mut bytes = std::fs::read(path).unwrap();
    assert_eq!(bytes.len(), current);
    let span = current - durable;
    match fault {
        Fault::None => return,
        Fault::Cut(at) => bytes.truncate(durable + (*at as usize * span) / (u16::MAX as usize + 1)),
        Fault::Zero(at, len) => {
            let start = durable + (*at as usize * span) / (u16::MAX as usize + 1);
            let end = (start + *len as usize).min(current);
            bytes[start..end].fill(0);
        }
        Fault::Flip(at) => {
            // CRC-covered bytes only: baseOffset and partitionLeaderEpoch are outside the
            // CRC in Kafka's format, so no reader can detect a flip there.
            let covered: Vec<usize> = batch_starts(&bytes, durable)
                .into_iter()
                .flat_map(|(p, size)| (p + 17..p + size).collect::<Vec<_>>())
                .collect();
            if covered.is_empty() {
                return;
            }
            let i = covered[(*at as usize * covered.len()) / (u16::MAX as usize + 1)];
            bytes[i] ^= 0x5a;
        }
    }
    std::fs::write(path, bytes).unwrap();
}

fn check(log: &Log, model: &Model) {
    assert!(log.log_start_offset() <= log.high_watermark());
    assert!(log.high_watermark() <= log.log_end_offset());
    assert!(log.recovery_point() <= log.log_end_offset());
    assert_eq!(log.log_end_offset(), model.log_end, "log end offset");
    assert_eq!(log.log_start_offset(), model.log_start, "log start offset");
    assert_eq!(read_records(log), model.visible(), "records");
}

fn run_model(config: LogConfig, ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let open = |config: &LogConfig| {
        Log::open(dir.path(), config.clone(), Arc::new(clock.clone())).unwrap()
    };
    let mut log = Some(open(&config));
    let mut model = Model::default();
    for op in ops {
        let l = log.as_mut().unwrap();
        match op {
            Op::Append {
                records,
                compression,
                ts_back,
            } => {
                let now = clock.now_ms();
                let inputs: Vec<RecordInput> = records
                    .iter()
                    .enumerate()
                    .map(|(i, (k, v))| {
                        let ts = now - ((ts_back as i64 * (i as i64 + 1)) % 3000);
                        RecordInput::new(
                            k.map(|k| format!("key-{k}").into_bytes()),
                            v.map(|v| vec![b'a' + (v % 26) as u8; v as usize]),
                            ts,
                        )
                    })
                    .collect();
                let bytes = encode_batch(&inputs, Compression::ALL[compression])
                    .unwrap()
                    .to_vec();
                let too_big = bytes.len() > config.max_message_bytes;
                match l.append(&bytes, 1) {
                    Ok(info) => {
                        assert!(!too_big);
                        assert_eq!(info.first_offset, model.log_end);
                        model.appends += 1;
                        for (i, r) in inputs.into_iter().enumerate() {
                            let offset = info.first_offset + i as i64;
                            model
                                .records
                                .insert(offset, (r.key, r.value, r.timestamp_ms));
                            model.batch_of.insert(offset, model.appends);
                        }
                        model.log_end = info.last_offset + 1;
                    }
                    Err(StorageError::BatchTooLarge { .. }) => assert!(too_big),
                    Err(e) => panic!("append failed: {e}"),
                }
            }
            Op::Read => {
                l.update_high_watermark(l.log_end_offset());
                // offset_for_timestamp against the model: first offset with ts >= target.
                for target in [
                    clock.now_ms() - 2500,
                    clock.now_ms() - 10,
                    clock.now_ms() + 1,
                ] {
                    let expected = model
                        .visible()
                        .into_iter()
                        .find(|(_, r)| r.2 >= target)
                        .map(|(o, r)| (o, r.2));
                    assert_eq!(
                        l.offset_for_timestamp(target).unwrap(),
                        expected,
                        "time lookup {target}"
                    );
                }
                // Out of range reads are errors that tell the valid range.
                if model.log_start > 0 {
                    assert!(matches!(
                        l.read(model.log_start - 1, 100, ReadLimit::LogEnd),
                        Err(StorageError::OffsetOutOfRange { .. })
                    ));
                }
                assert!(l.read(model.log_end + 1, 100, ReadLimit::LogEnd).is_err());
            }
            Op::Roll => l.roll().unwrap(),
            Op::Flush => {
                l.flush().unwrap();
                assert_eq!(l.recovery_point(), l.log_end_offset());
            }
            Op::Truncate(at) => {
                // Any record's offset (so also the middle of a batch), or the log end.
                let candidates: Vec<i64> = model
                    .records
                    .keys()
                    .copied()
                    .filter(|&o| o >= model.log_start)
                    .chain([model.log_end])
                    .collect();
                let offset = candidates[(at as usize * candidates.len()) / (u16::MAX as usize + 1)];
                l.truncate_to(offset).unwrap();
                let end = l.log_end_offset();
                assert!(end <= offset);
                // What went below `offset` belongs to the one batch that straddles it.
                let straddler = model.batch_of.range(offset..).next().map(|(_, &b)| b);
                for (o, b) in model.batch_of.range(end..offset) {
                    assert_eq!(
                        Some(*b),
                        straddler,
                        "truncate_to({offset}) removed offset {o}"
                    );
                }
                model.truncate_to(end);
            }
            Op::DeleteRecords(at) => {
                l.update_high_watermark(l.log_end_offset());
                let offset = pick(model.log_start, model.log_end, at);
                assert_eq!(
                    l.delete_records(offset).unwrap(),
                    offset.max(model.log_start)
                );
                model.advance_start(offset);
                assert!(matches!(
                    l.delete_records(model.log_end + 1),
                    Err(StorageError::DeleteBeyondHighWatermark { .. })
                ));
            }
            Op::Retention { bytes, ms } => {
                let active_base = l.segments().active().base_offset();
                let mut c = config.clone();
                c.retention_bytes = bytes;
                c.retention_ms = if ms { 1500 } else { -1 };
                l.set_config(c).unwrap();
                let outcome = l.apply_retention().unwrap();
                l.set_config(config.clone()).unwrap();
                assert_eq!(
                    l.segments().active().base_offset(),
                    active_base,
                    "active segment kept"
                );
                assert!(l.log_start_offset() >= model.log_start);
                assert!(
                    outcome.deleted_segments == 0
                        || l.log_start_offset() > model.log_start
                        || model.log_start >= l.log_start_offset()
                );
                model.advance_start(l.log_start_offset());
            }
            Op::Compact {
                map_entries,
                ratio,
                flush_first,
            } => {
                if flush_first {
                    l.flush().unwrap();
                }
                if ratio % 2 == 0 {
                    l.update_high_watermark(l.log_end_offset());
                }
                let mut c = config.clone();
                c.min_cleanable_dirty_ratio = ratio as f64 / 8.0;
                l.set_config(c).unwrap();
                let cleaner = Cleaner::new(CleanerConfig {
                    dedupe_buffer_bytes: map_entries * cleaner::OFFSET_MAP_ENTRY_BYTES,
                    backoff_ms: 0,
                });
                let before = model.visible();
                let active_base = l.segments().active().base_offset();
                match cleaner.clean_now(l) {
                    Ok(_) | Err(StorageError::CleanerMapTooSmall { .. }) => {}
                    Err(e) => panic!("compaction failed: {e}"),
                }
                l.set_config(config.clone()).unwrap();
                let after = read_records(l);
                let horizon = clock.now_ms() - config.delete_retention_ms;
                check_compaction(&before, &after, active_base, horizon);
                model.records = after.into_iter().collect();
                let kept = &model.records;
                model.batch_of.retain(|o, _| kept.contains_key(o));
            }
            Op::AdvanceTime(ms) => clock.advance_ms(ms as i64),
            Op::Crash(fault) => {
                let durable = l.recovery_point();
                let end = l.log_end_offset();
                let layout = l.durable_layout();
                drop(log.take());
                inject(&layout, &fault);
                let reopened = open(&config);
                let new_end = reopened.log_end_offset();
                assert!(
                    new_end >= durable,
                    "lost durable data: end {new_end} < recovery point {durable}"
                );
                assert!(new_end <= end);
                if matches!(fault, Fault::None) {
                    assert_eq!(new_end, end, "a crash without damage keeps everything");
                }
                model.truncate_to(new_end);
                log = Some(reopened);
            }
            Op::CleanReopen => {
                let hw = l.high_watermark();
                log.take().unwrap().close().unwrap();
                let reopened = open(&config);
                assert_eq!(reopened.high_watermark(), hw);
                assert_eq!(reopened.recovery_point(), model.log_end);
                log = Some(reopened);
            }
        }
        check(log.as_ref().unwrap(), &model);
    }
}

/// Compaction may only remove a record that has a later record with the same key, or an
/// expired tombstone; it keeps offsets, order and every record of the active segment.
fn check_compaction(
    before: &[(i64, Rec)],
    after: &[(i64, Rec)],
    active_base: i64,
    tombstone_horizon: i64,
) {
    let after_map: BTreeMap<i64, &Rec> = after.iter().map(|(o, r)| (*o, r)).collect();
    let before_map: BTreeMap<i64, &Rec> = before.iter().map(|(o, r)| (*o, r)).collect();
    for (offset, rec) in after {
        assert_eq!(
            before_map.get(offset),
            Some(&rec),
            "compaction changed or invented offset {offset}"
        );
    }
    for (offset, rec) in before {
        if after_map.contains_key(offset) {
            continue;
        }
        assert!(
            *offset < active_base,
            "compaction touched the active segment at {offset}"
        );
        let key = rec.0.as_ref().expect("records without a key are kept");
        let superseded = before
            .iter()
            .any(|(o, r)| o > offset && r.0.as_ref() == Some(key));
        let expired_tombstone = rec.1.is_none() && rec.2 < tombstone_horizon;
        if !superseded {
            // Removing a key's latest record (an expired tombstone) must not bring back
            // an older value of the key.
            assert!(
                after.iter().all(|(_, r)| r.0.as_ref() != Some(key)),
                "compaction resurrected a deleted key at {offset}"
            );
        }
        assert!(
            superseded || expired_tombstone,
            "compaction removed the latest value of a key at {offset}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(96),
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn log_matches_the_model(
        segment_bytes in 300u64..5000,
        index_interval_bytes in 1u64..600,
        index_entries in 2usize..64,
        ops in proptest::collection::vec(op_strategy(), 1..80),
    ) {
        let config = LogConfig {
            segment_bytes,
            index_interval_bytes,
            segment_index_bytes: (index_entries * 12).max(64),
            max_message_bytes: 2500,
            cleanup_policy: CleanupPolicy::COMPACT_DELETE,
            delete_retention_ms: 2000,
            retention_ms: -1,
            ..LogConfig::default()
        };
        run_model(config, ops);
    }
}
