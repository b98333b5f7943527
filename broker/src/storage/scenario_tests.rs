//! Scenario tests of `Log`, the cleaner and group commit, through their public API and
//! the files on disk.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use fjord_protocol::batch::{BatchHeader, CRC_AT, LENGTH_AT, MAGIC_AT};
use fjord_protocol::codec::{Compression, RecordInput, decode_records, encode_batch};

use super::cleaner::{self, Cleaner, CleanerConfig};
use super::log::{CLEAN_SHUTDOWN_MARKER, ReadLimit};
use super::segment::{INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX, segment_file};
use super::test_util::read_from;
use super::*;

fn records(pairs: &[(&str, Option<&str>)], ts: i64) -> Vec<u8> {
    let inputs: Vec<RecordInput> = pairs
        .iter()
        .map(|(k, v)| {
            RecordInput::new(
                Some(k.as_bytes().to_vec()),
                v.map(|v| v.as_bytes().to_vec()),
                ts,
            )
        })
        .collect();
    encode_batch(&inputs, Compression::None).unwrap().to_vec()
}

fn values(log: &Log) -> Vec<(i64, String, Option<String>)> {
    let text = |b: bytes::Bytes| String::from_utf8(b.to_vec()).unwrap();
    read_from(log, 0)
        .into_iter()
        .map(|r| (r.offset, text(r.key.unwrap()), r.value.map(text)))
        .collect()
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 400,
        index_interval_bytes: 100,
        segment_index_bytes: 1200,
        ..LogConfig::default()
    }
}

fn open(dir: &Path, config: LogConfig, clock: &ManualClock) -> Log {
    Log::open(dir, config, Arc::new(clock.clone())).unwrap()
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[test]
fn bad_batches_are_refused_and_leave_the_log_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(
        dir.path(),
        LogConfig {
            max_message_bytes: 200,
            ..config()
        },
        &clock,
    );
    log.append(&records(&[("a", Some("1"))], 0), 0).unwrap();
    let size = dir_size(dir.path());
    let good = records(&[("b", Some("2"))], 0);

    let mut bad_crc = good.clone();
    *bad_crc.last_mut().unwrap() ^= 1;
    let mut bad_magic = good.clone();
    bad_magic[MAGIC_AT] = 1;
    let mut bad_length = good.clone();
    bad_length[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&((good.len() as i32) + 10).to_be_bytes());
    let mut trailing = good.clone();
    trailing.extend_from_slice(&[0u8; 5]);
    let mut good_then_bad = good.clone();
    good_then_bad.extend_from_slice(&bad_crc);
    let too_large = records(&[("big", Some(&"x".repeat(300)))], 0);
    // lastOffsetDelta 0 for a 1-record batch is right; 3 is not (CRC fixed up).
    let mut bad_range = good.clone();
    bad_range[23..27].copy_from_slice(&3i32.to_be_bytes());
    let crc = crc32c::crc32c(&bad_range[21..]);
    bad_range[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    let mut huge_count = good.clone();
    huge_count[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
    let crc = crc32c::crc32c(&huge_count[21..]);
    huge_count[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    let mut empty = Vec::new();

    for (name, bytes) in [
        ("crc", &mut bad_crc),
        ("magic", &mut bad_magic),
        ("length", &mut bad_length),
        ("trailing", &mut trailing),
        ("second batch", &mut good_then_bad),
        ("offset range", &mut bad_range),
        ("record count", &mut huge_count),
        ("empty", &mut empty),
    ] {
        let err = log.append(bytes, 0).unwrap_err();
        assert!(
            matches!(err, StorageError::InvalidBatch { .. }),
            "{name}: {err}"
        );
    }
    assert!(matches!(
        log.append(&too_large, 0),
        Err(StorageError::BatchTooLarge {
            size: _,
            limit: 200
        })
    ));
    assert_eq!(log.log_end_offset(), 1);
    assert_eq!(dir_size(dir.path()), size, "nothing was written");
    assert_eq!(values(&log).len(), 1);
    // The CRC error names what was wrong.
    let msg = log.append(&bad_crc, 0).unwrap_err().to_string();
    assert!(msg.contains("CRC"), "{msg}");
}

#[test]
fn corruption_below_the_recovery_point_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(
        dir.path(),
        LogConfig {
            segment_bytes: 1 << 20,
            ..config()
        },
        &clock,
    );
    for i in 0..5 {
        log.append(&records(&[("k", Some(&format!("v{i}")))], 0), 0)
            .unwrap();
    }
    log.flush().unwrap();
    log.append(&records(&[("k", Some("unflushed"))], 0), 0)
        .unwrap();
    log.checkpoint().unwrap();
    drop(log); // crash
    let path = segment_file(dir.path(), 0, LOG_SUFFIX, "");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[CRC_AT + 30] ^= 0xff; // inside the first batch, which was fsync'd
    std::fs::write(&path, &bytes).unwrap();
    let err = Log::open(dir.path(), config(), Arc::new(clock)).unwrap_err();
    match &err {
        StorageError::CorruptHead {
            path: p,
            position,
            recovery_point,
            ..
        } => {
            assert_eq!(p, &path);
            assert_eq!(*position, 0);
            assert_eq!(*recovery_point, 5);
        }
        other => panic!("expected CorruptHead, got {other}"),
    }
    assert!(
        err.to_string().contains("00000000000000000000.log"),
        "{err}"
    );
    // The file is left as it was for the operator.
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

/// A log of 40 one-record batches spread over several segments.
fn forty_records_over_several_segments(dir: &Path, clock: &ManualClock) -> Log {
    let mut log = open(dir, config(), clock);
    for i in 0..40 {
        log.append(&records(&[("k", Some(&format!("value-{i:03}")))], 0), 0)
            .unwrap();
    }
    assert!(log.segments().len() > 3);
    log
}

/// Flips a CRC-covered byte of the first batch of segment 0.
fn damage_first_segment(dir: &Path) {
    let path = segment_file(dir, 0, LOG_SUFFIX, "");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[CRC_AT + 30] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
}

#[test]
fn a_clean_open_does_not_scan_the_data() {
    // Restart time after a clean shutdown must not grow with the data: the open reads only
    // each segment's last index entry onwards. Proof: corruption in the middle of a sealed
    // segment is not even looked at.
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let log = forty_records_over_several_segments(dir.path(), &clock);
    log.close().unwrap();
    assert!(dir.path().join(CLEAN_SHUTDOWN_MARKER).exists());
    damage_first_segment(dir.path());
    let log = open(dir.path(), config(), &clock);
    assert_eq!(log.log_end_offset(), 40);
    assert!(
        !dir.path().join(CLEAN_SHUTDOWN_MARKER).exists(),
        "marker removed on open"
    );
    drop(log);
    // After a crash the segment holding the recovery point is scanned, the rest trusted.
    let log = open(dir.path(), config(), &clock);
    assert_eq!(log.log_end_offset(), 40);
}

#[test]
fn a_roll_checkpoints_the_recovery_point_so_a_crash_scans_only_the_last_segment() {
    // Restart time after a crash must not grow with the data either: every roll fsyncs
    // the sealed segment and checkpoints the recovery point at once, without waiting for
    // the periodic checkpoint. Proof: corruption in a sealed segment is not looked at.
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let log = forty_records_over_several_segments(dir.path(), &clock);
    drop(log); // a crash: no close, no periodic checkpoint
    damage_first_segment(dir.path());
    let log = open(dir.path(), config(), &clock);
    assert_eq!(log.log_end_offset(), 40, "the sealed segments were trusted");
    drop(log);
    // Without the checkpoint (data from before it was written on roll) the scan starts at
    // the first segment, meets the damaged first batch and truncates there: no panic.
    std::fs::remove_file(dir.path().join(super::log::META_CHECKPOINT)).unwrap();
    let log = open(dir.path(), config(), &clock);
    assert_eq!(log.log_end_offset(), 0);
}

#[test]
fn missing_or_broken_indexes_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), config(), &clock);
    for i in 0..40 {
        log.append(&records(&[("k", Some(&format!("value-{i:03}")))], i), 0)
            .unwrap();
    }
    log.flush().unwrap();
    log.update_high_watermark(40);
    let before = values(&log);
    log.checkpoint().unwrap();
    drop(log);
    std::fs::remove_file(segment_file(dir.path(), 0, INDEX_SUFFIX, "")).unwrap();
    std::fs::write(
        segment_file(dir.path(), 0, TIME_INDEX_SUFFIX, ""),
        [0xffu8; 24],
    )
    .unwrap();
    let log = open(dir.path(), config(), &clock);
    assert_eq!(values(&log), before);
    assert_eq!(log.offset_for_timestamp(3).unwrap(), Some((3, 3)));
    assert!(
        !log.segments()
            .iter()
            .next()
            .unwrap()
            .offset_index()
            .is_empty()
    );
}

#[test]
fn only_the_active_segment_can_be_torn_and_its_tail_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), config(), &clock);
    for i in 0..30 {
        log.append(&records(&[("k", Some(&format!("value-{i}")))], 0), 0)
            .unwrap();
    }
    // Every roll fsync'd the segment it sealed: all but the active one are durable.
    let layout = log.durable_layout();
    let (active_path, durable, size) = layout.last().unwrap().clone();
    assert!(layout[..layout.len() - 1].iter().all(|(_, d, s)| d == s));
    assert_eq!(durable, 0);
    let active_base = log.segments().active().base_offset();
    assert_eq!(log.recovery_point(), active_base);
    drop(log);
    // Cut the active segment in the middle of its second batch.
    let bytes = std::fs::read(&active_path).unwrap();
    let first = BatchHeader::parse(&bytes).unwrap().size();
    assert!(size as usize > first + 20);
    std::fs::write(&active_path, &bytes[..first + 20]).unwrap();
    let log = open(dir.path(), config(), &clock);
    assert_eq!(log.log_end_offset(), active_base + 1);
    let vals: Vec<_> = values(&log).into_iter().map(|v| v.2.unwrap()).collect();
    assert_eq!(vals.len() as i64, active_base + 1);
    assert_eq!(vals.last().unwrap(), &format!("value-{active_base}"));
}

#[test]
fn a_second_log_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let log = open(dir.path(), config(), &clock);
    let err = Log::open(dir.path(), config(), Arc::new(clock.clone())).unwrap_err();
    assert!(matches!(err, StorageError::Locked { .. }), "{err}");
    drop(log);
    open(dir.path(), config(), &clock);
}

#[test]
fn the_leader_epoch_cache_is_rebuilt_from_recovered_batches() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let big = LogConfig {
        segment_bytes: 1 << 20,
        ..config()
    };
    let mut log = open(dir.path(), big.clone(), &clock);
    log.append(&records(&[("k", Some("a"))], 0), 1).unwrap();
    log.append(&records(&[("k", Some("b"))], 0), 2).unwrap();
    log.append(&records(&[("k", Some("c"))], 0), 2).unwrap();
    log.append(&records(&[("k", Some("d"))], 0), 5).unwrap();
    // Appends change the cache in memory only: a crash before any flush finds no file.
    drop(log);
    assert!(!dir.path().join(super::epoch::FILE_NAME).exists());
    let log = open(dir.path(), big, &clock);
    assert_eq!(log.leader_epochs(), &[(1, 0), (2, 1), (5, 3)]);
    assert_eq!(log.end_offset_for_epoch(2), Some((2, 3)));
}

#[test]
fn a_flush_or_a_roll_writes_the_leader_epochs_before_the_recovery_point_passes_their_data() {
    // Both move the recovery point past the two epochs' data (a roll fsyncs the segment).
    let durable: [fn(&mut Log); 2] = [
        |log| assert_eq!(log.flush().unwrap(), 2),
        |log| log.roll().unwrap(),
    ];
    for make_durable in durable {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(0);
        let mut log = open(dir.path(), config(), &clock);
        log.append(&records(&[("k", Some("a"))], 0), 1).unwrap();
        log.append(&records(&[("k", Some("b"))], 0), 4).unwrap();
        make_durable(&mut log);
        let written = super::epoch::LeaderEpochCache::load(dir.path()).unwrap();
        assert_eq!(written.entries(), &[(1, 0), (4, 1)]);
        // A crash now rescans nothing (the recovery point is the log end): the entries
        // come from the file.
        drop(log);
        let reopened = open(dir.path(), config(), &clock);
        assert_eq!(reopened.leader_epochs(), &[(1, 0), (4, 1)]);
    }
}

#[test]
fn segments_without_timestamps_are_neither_rescanned_nor_expired_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(SystemClock.now_ms());
    let mut log = open(dir.path(), config(), &clock);
    for i in 0..20 {
        log.append(&records(&[("k", Some(&format!("value-{i:03}")))], -1), 0)
            .unwrap();
    }
    log.update_high_watermark(20);
    let sealed = log.segments().len() - 1;
    assert!(sealed >= 2);
    assert!(
        log.segments()
            .iter()
            .take(sealed)
            .all(|s| !s.time_index().is_empty())
    );
    log.close().unwrap();
    let mut log = open(dir.path(), config(), &clock);
    assert!(
        log.segments()
            .iter()
            .all(|s| s.indexes_look_consistent(true))
    );
    log.update_high_watermark(20);
    // Retention falls back to the file's modification time (just now), as Kafka does.
    log.set_config(LogConfig {
        retention_ms: 60_000,
        ..config()
    })
    .unwrap();
    assert_eq!(log.apply_retention().unwrap().deleted_segments, 0);
    clock.advance_ms(120_000);
    assert_eq!(log.apply_retention().unwrap().deleted_segments, sealed);
}

#[test]
fn an_expired_tombstone_past_a_full_offset_map_does_not_resurrect_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let cfg = LogConfig {
        segment_bytes: 1 << 20,
        ..compacting()
    };
    let mut log = open(dir.path(), cfg, &clock);
    log.append(&records(&[("victim", Some("old"))], 0), 0)
        .unwrap();
    for k in 0..5 {
        log.append(&records(&[(&format!("other{k}"), Some("x"))], 0), 0)
            .unwrap();
    }
    log.append(&records(&[("victim", None)], 0), 0).unwrap();
    log.roll().unwrap();
    log.update_high_watermark(log.log_end_offset());
    clock.advance_ms(10_000);
    // A 3-entry map fills long before the tombstone at offset 6.
    let small = Cleaner::new(CleanerConfig {
        dedupe_buffer_bytes: 3 * cleaner::OFFSET_MAP_ENTRY_BYTES,
        backoff_ms: 0,
    });
    let first = small.clean_now(&mut log).unwrap().unwrap();
    assert!(first.end_offset <= 6, "{first:?}");
    let victim: Vec<_> = values(&log)
        .into_iter()
        .filter(|v| v.1 == "victim")
        .collect();
    assert_eq!(
        victim.last().unwrap().2,
        None,
        "the key stays deleted: {victim:?}"
    );
    while small.clean_now(&mut log).unwrap().is_some() {}
    let victim: Vec<_> = values(&log)
        .into_iter()
        .filter(|v| v.1 == "victim")
        .collect();
    assert!(
        victim.is_empty() || victim.last().unwrap().2.is_none(),
        "{victim:?}"
    );
}

#[test]
fn a_compaction_pass_across_a_truncation_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), compacting(), &clock);
    for i in 0..20 {
        log.append(&records(&[("same", Some(&format!("v{i}")))], 0), 0)
            .unwrap();
    }
    log.roll().unwrap();
    log.update_high_watermark(20);
    let (_, plan) = cleaner::plan(&log);
    let built = cleaner::build(&plan.unwrap(), &CleanerConfig::default()).unwrap();
    log.truncate_to(10).unwrap();
    let summary = cleaner::commit(&mut log, built).unwrap();
    assert_eq!(summary.segments_rewritten + summary.segments_deleted, 0);
    assert_eq!(
        values(&log).len(),
        10,
        "nothing compacted away against lost values"
    );
}

#[test]
fn group_commit_shares_fsyncs_between_concurrent_appenders() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(RwLock::new(
        Log::open(dir.path(), LogConfig::default(), Arc::new(SystemClock)).unwrap(),
    ));
    let commit = Arc::new(GroupCommit::new(0));
    let threads = 8;
    let per_thread = 25;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let log = log.clone();
            let commit = commit.clone();
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    let batch = records(&[("k", Some(&format!("{t}-{i}")))], 0);
                    let end = log.write().unwrap().append(&batch, 0).unwrap().last_offset + 1;
                    commit
                        .wait_durable(end, || Log::flush_shared(&log))
                        .unwrap();
                    assert!(log.read().unwrap().recovery_point() >= end);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let total = (threads * per_thread) as i64;
    let log = log.read().unwrap();
    assert_eq!(log.recovery_point(), total);
    assert_eq!(commit.durable_offset(), total);
    assert_eq!(commit.flushes(), log.flushes());
    // Every append waited for durability, yet fewer fsyncs ran than appends (with 8
    // threads some always queue behind a running flush).
    assert!(
        commit.flushes() < total as u64,
        "{} flushes for {total} appends",
        commit.flushes()
    );
}

fn compacting() -> LogConfig {
    LogConfig {
        cleanup_policy: CleanupPolicy::COMPACT,
        min_cleanable_dirty_ratio: 0.0,
        delete_retention_ms: 1000,
        ..config()
    }
}

#[test]
fn compaction_keeps_the_latest_value_per_key_and_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(10_000);
    let mut log = open(dir.path(), compacting(), &clock);
    for i in 0..30 {
        let key = format!("k{}", i % 3);
        log.append(&records(&[(&key, Some(&format!("v{i}")))], 10_000), 0)
            .unwrap();
    }
    log.append(&records(&[("k0", None)], 10_000), 0).unwrap(); // tombstone at 30
    log.roll().unwrap();
    log.append(&records(&[("k1", Some("active"))], 10_000), 0)
        .unwrap(); // 31
    log.flush().unwrap();
    log.update_high_watermark(log.log_end_offset());
    let cleaner = Cleaner::new(CleanerConfig::default());
    let summary = cleaner.clean_now(&mut log).unwrap().unwrap();
    assert!(summary.records_removed > 20, "{summary:?}");
    assert_eq!(summary.end_offset, 31);
    assert!(summary.dirty_ratio > 0.9);
    let stats = cleaner.stats();
    assert!(stats.bytes_read.load(std::sync::atomic::Ordering::Relaxed) > 0);
    assert_eq!(
        values(&log),
        vec![
            (28, "k1".into(), Some("v28".into())),
            (29, "k2".into(), Some("v29".into())),
            (30, "k0".into(), None),
            (31, "k1".into(), Some("active".into())),
        ]
    );
    // Nothing dirty now: a second pass does nothing.
    assert!(cleaner.clean_now(&mut log).unwrap().is_none());
    // After delete.retention.ms the tombstone goes too, once its segment is cleaned again.
    clock.advance_ms(2_000);
    for i in 0..3 {
        log.append(&records(&[("k2", Some(&format!("w{i}")))], 12_000), 0)
            .unwrap();
    }
    log.roll().unwrap();
    log.flush().unwrap();
    log.update_high_watermark(log.log_end_offset());
    log.set_config(LogConfig {
        min_cleanable_dirty_ratio: 0.0,
        ..compacting()
    })
    .unwrap();
    cleaner.clean_now(&mut log).unwrap().unwrap();
    assert_eq!(
        values(&log),
        vec![
            (31, "k1".into(), Some("active".into())),
            (34, "k2".into(), Some("w2".into()))
        ]
    );
    // Offsets survive a reopen with the gaps.
    log.close().unwrap();
    let log = open(dir.path(), compacting(), &clock);
    assert_eq!(values(&log).len(), 2);
    assert_eq!(log.log_end_offset(), 35);
}

#[test]
fn compaction_respects_the_dirty_ratio_and_never_touches_the_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(
        dir.path(),
        LogConfig {
            min_cleanable_dirty_ratio: 0.99,
            ..compacting()
        },
        &clock,
    );
    for i in 0..10 {
        log.append(&records(&[("same", Some(&format!("v{i}")))], 0), 0)
            .unwrap();
    }
    log.flush().unwrap();
    log.update_high_watermark(log.log_end_offset());
    let cleaner = Cleaner::new(CleanerConfig::default());
    log.roll().unwrap();
    log.append(&records(&[("same", Some("active"))], 0), 0)
        .unwrap();
    log.flush().unwrap();
    log.update_high_watermark(log.log_end_offset());
    // Some sealed segments are dirty; ratio 1.0 >= 0.99, so it cleans the sealed ones only.
    cleaner.clean_now(&mut log).unwrap().unwrap();
    let vals = values(&log);
    assert_eq!(vals.len(), 2, "{vals:?}");
    assert_eq!(vals[1].2.as_deref(), Some("active"));
    // Now the clean part dominates: a few dirty bytes stay below the ratio.
    log.roll().unwrap();
    log.append(&records(&[("same", Some("x"))], 0), 0).unwrap();
    log.roll().unwrap();
    log.flush().unwrap();
    log.update_high_watermark(log.log_end_offset());
    let (ratio, plan) = cleaner::plan(&log);
    assert!(
        plan.is_none() && ratio < 0.99 && ratio > 0.0,
        "ratio {ratio}"
    );
    assert!((cleaner.stats().last_dirty_ratio() - 1.0).abs() < 1e-9);
}

#[test]
fn the_offset_map_limit_bounds_a_pass() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), compacting(), &clock);
    for round in 0..3 {
        for k in 0..10 {
            log.append(
                &records(&[(&format!("k{k}"), Some(&format!("r{round}")))], 0),
                0,
            )
            .unwrap();
        }
    }
    log.roll().unwrap();
    log.flush().unwrap();
    log.update_high_watermark(log.log_end_offset());
    let small = Cleaner::new(CleanerConfig {
        dedupe_buffer_bytes: 4 * cleaner::OFFSET_MAP_ENTRY_BYTES,
        backoff_ms: 0,
    });
    let first = small.clean_now(&mut log).unwrap().unwrap();
    assert!(first.end_offset < 30, "a 4-key map stops early: {first:?}");
    let mut passes = 1;
    while small.clean_now(&mut log).unwrap().is_some() {
        passes += 1;
        assert!(passes < 20);
    }
    // Fewer than 10 keys' worth per pass, still correct: every key keeps its latest.
    let vals = values(&log);
    for k in 0..10 {
        let latest: Vec<_> = vals.iter().filter(|v| v.1 == format!("k{k}")).collect();
        assert_eq!(latest.last().unwrap().2.as_deref(), Some("r2"));
    }
    let tiny = Cleaner::new(CleanerConfig {
        dedupe_buffer_bytes: 0,
        backoff_ms: 0,
    });
    log.append(&records(&[("k1", Some("a")), ("k2", Some("b"))], 0), 0)
        .unwrap();
    log.roll().unwrap();
    log.flush().unwrap();
    log.update_high_watermark(log.log_end_offset());
    assert!(
        tiny.clean_now(&mut log).is_ok(),
        "one entry is the floor: progress, no error"
    );
}

/// Each crash point of the swap leaves a complete, readable log.
#[test]
fn a_crash_at_any_step_of_the_compaction_swap_leaves_a_complete_log() {
    let cleaned_values = vec![
        (8, "k0".to_string(), Some("v8".to_string())),
        (9, "k1".to_string(), Some("v9".to_string())),
    ];
    // (steps to perform after build, expect the cleaned result)
    let cases: [(&[&str], bool); 4] = [
        (&[], false),                           // only .cleaned files written
        (&["index", "timeindex"], false),       // index swaps, no log swap: not committed
        (&["index", "timeindex", "log"], true), // the commit point passed
        (&["log"], true),                       // log swap without index swaps
    ];
    for (steps, committed) in cases {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(0);
        let config = LogConfig {
            segment_bytes: 1 << 20,
            ..compacting()
        };
        let mut log = open(dir.path(), config.clone(), &clock);
        for i in 0..10 {
            log.append(
                &records(&[(&format!("k{}", i % 2), Some(&format!("v{i}")))], 0),
                0,
            )
            .unwrap();
        }
        log.roll().unwrap();
        log.flush().unwrap();
        log.update_high_watermark(log.log_end_offset());
        let original = values(&log);
        let (_, plan) = cleaner::plan(&log);
        let built = cleaner::build(&plan.unwrap(), &CleanerConfig::default()).unwrap();
        drop(built);
        for kind in steps {
            std::fs::rename(
                segment_file(dir.path(), 0, kind, ".cleaned"),
                segment_file(dir.path(), 0, kind, ".swap"),
            )
            .unwrap();
        }
        drop(log); // crash
        let log = open(dir.path(), config, &clock);
        let expected = if committed {
            cleaned_values.clone()
        } else {
            original.clone()
        };
        assert_eq!(values(&log), expected, "steps {steps:?}");
        let leftovers: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".cleaned") || n.ends_with(".swap") || n.ends_with(".deleted"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        assert_eq!(log.log_end_offset(), 10);
    }
}

#[test]
fn retention_by_size_and_time_deletes_old_segments_and_moves_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(100_000);
    let mut log = open(dir.path(), config(), &clock);
    for i in 0..40 {
        log.append(
            &records(&[("k", Some(&format!("value-{i:03}")))], 100_000 + i),
            0,
        )
        .unwrap();
    }
    log.update_high_watermark(40);
    let segments = log.segments().len();
    assert!(segments >= 4);
    // Size: keep at least 800 bytes.
    log.set_config(LogConfig {
        retention_bytes: 800,
        ..config()
    })
    .unwrap();
    let outcome = log.apply_retention().unwrap();
    assert!(outcome.deleted_segments > 0);
    assert!(log.size_bytes() >= 800);
    assert!(log.size_bytes() - log.segments().iter().next().unwrap().size() < 800);
    let start = log.log_start_offset();
    assert!(start > 0);
    assert_eq!(log.segments().iter().next().unwrap().base_offset(), start);
    let err = log
        .read(start - 1, 100, ReadLimit::HighWatermark)
        .unwrap_err();
    assert!(
        matches!(err, StorageError::OffsetOutOfRange { log_start_offset, log_end_offset: 40, .. }
            if log_start_offset == start),
        "{err}"
    );
    // Time: everything sealed is older than 1 s at t+10 s; the active segment stays.
    clock.advance_ms(10_000);
    log.set_config(LogConfig {
        retention_ms: 1_000,
        ..config()
    })
    .unwrap();
    log.apply_retention().unwrap();
    assert_eq!(log.segments().len(), 1);
    assert_eq!(
        log.log_start_offset(),
        log.segments().active().base_offset()
    );
    assert_eq!(log.log_end_offset(), 40);
    // The start survives a crash.
    let start = log.log_start_offset();
    drop(log);
    let log = open(dir.path(), config(), &clock);
    assert_eq!(log.log_start_offset(), start);
}

#[test]
fn delete_records_moves_the_start_within_the_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), config(), &clock);
    for i in 0..20 {
        log.append(&records(&[("k", Some(&format!("value-{i:03}")))], 0), 0)
            .unwrap();
    }
    assert!(matches!(
        log.delete_records(5),
        Err(StorageError::DeleteBeyondHighWatermark { .. })
    ));
    log.update_high_watermark(20);
    let segments = log.segments().len();
    assert_eq!(log.delete_records(15).unwrap(), 15);
    assert!(
        log.segments().len() < segments,
        "segments below the start are deleted"
    );
    assert_eq!(values(&log)[0].0, 15);
    assert_eq!(log.delete_records(3).unwrap(), 15, "never moves back");
    log.close().unwrap();
    let log = open(dir.path(), config(), &clock);
    assert_eq!(log.log_start_offset(), 15);
}

#[test]
fn segments_roll_on_time_and_on_a_full_index() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(
        dir.path(),
        LogConfig {
            segment_ms: 1_000,
            segment_bytes: 1 << 20,
            index_interval_bytes: 1,
            segment_index_bytes: 64,
            ..config()
        },
        &clock,
    );
    log.append(&records(&[("k", Some("a"))], 0), 0).unwrap();
    log.append(&records(&[("k", Some("b"))], 0), 0).unwrap();
    assert_eq!(log.segments().len(), 1);
    clock.advance_ms(1_000);
    log.append(&records(&[("k", Some("c"))], 0), 0).unwrap();
    assert_eq!(log.segments().len(), 2, "segment.ms rolled");
    // 64-byte index: 5 time entries of 12 bytes; an entry per batch fills it quickly.
    for i in 0..20 {
        log.append(&records(&[("k", Some(&format!("{i}")))], i + 1), 0)
            .unwrap();
    }
    assert!(
        log.segments().len() > 4,
        "full indexes rolled: {}",
        log.segments().len()
    );
    assert_eq!(values(&log).len(), 23);
}

#[test]
fn log_append_time_replaces_the_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(777_000);
    let mut log = open(
        dir.path(),
        LogConfig {
            message_timestamp_type: TimestampType::LogAppendTime,
            ..config()
        },
        &clock,
    );
    let info = log
        .append(&records(&[("k", Some("a")), ("j", Some("b"))], 5), 0)
        .unwrap();
    assert_eq!(info.log_append_time_ms, Some(777_000));
    let read = log.read(0, 1000, ReadLimit::LogEnd).unwrap();
    let header = BatchHeader::validate(&read.records).unwrap();
    assert!(header.is_log_append_time());
    let recs = decode_records(&read.records).unwrap();
    assert!(recs.iter().all(|r| r.timestamp_ms == 777_000));
    log.update_high_watermark(2);
    assert_eq!(log.offset_for_timestamp(6).unwrap(), Some((0, 777_000)));
}

#[test]
fn an_append_writes_patched_batches_and_leaves_the_callers_bytes_alone() {
    // 600 batches in one append: 1,200 buffers for the vectored write, more than one
    // pwritev takes (1,024). With LogAppendTime, each header's CRC is computed anew.
    for timestamp_type in [TimestampType::CreateTime, TimestampType::LogAppendTime] {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(777_000);
        let mut log = open(
            dir.path(),
            LogConfig {
                message_timestamp_type: timestamp_type,
                ..LogConfig::default()
            },
            &clock,
        );
        log.append(&records(&[("first", Some("0"))], 5), 3).unwrap();
        let mut sent = Vec::new();
        for i in 0..600 {
            sent.extend_from_slice(&records(&[("k", Some(&format!("v{i}")))], 5));
        }
        let before = sent.clone();
        let info = log.append(&sent, 4).unwrap();
        assert_eq!(sent, before, "the caller's bytes are not changed");
        assert_eq!((info.first_offset, info.last_offset), (1, 600));
        log.update_high_watermark(log.log_end_offset());
        let read = log.read(1, usize::MAX, ReadLimit::LogEnd).unwrap();
        assert_eq!(read.records.len(), sent.len());
        let mut rest = &read.records[..];
        for offset in 1..=600 {
            let header = BatchHeader::validate(rest).unwrap();
            assert_eq!(header.base_offset(), offset);
            assert_eq!(header.partition_leader_epoch(), 4);
            let log_append_time = timestamp_type == TimestampType::LogAppendTime;
            assert_eq!(header.is_log_append_time(), log_append_time);
            assert_eq!(
                header.max_timestamp(),
                if log_append_time { 777_000 } else { 5 }
            );
            rest = &rest[header.size()..];
        }
        let values = values(&log);
        assert_eq!(values.len(), 601);
        assert_eq!(values[600], (600, "k".into(), Some("v599".into())));
    }
}

#[test]
fn reads_stop_at_the_high_watermark_and_return_whole_batches() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), config(), &clock);
    log.append(
        &records(&[("a", Some("1")), ("b", Some("2")), ("c", Some("3"))], 0),
        0,
    )
    .unwrap();
    log.append(&records(&[("d", Some("4"))], 0), 0).unwrap();
    assert!(
        log.read(0, 1000, ReadLimit::HighWatermark)
            .unwrap()
            .records
            .is_empty()
    );
    log.update_high_watermark(3);
    let r = log.read(1, 1, ReadLimit::HighWatermark).unwrap();
    let h = BatchHeader::validate(&r.records).unwrap();
    assert_eq!(
        (h.base_offset(), h.last_offset(), h.size()),
        (0, 2, r.records.len()),
        "a whole batch even over max_bytes"
    );
    assert!(
        log.read(3, 1000, ReadLimit::HighWatermark)
            .unwrap()
            .records
            .is_empty()
    );
    assert_eq!(
        log.read(3, 1000, ReadLimit::LogEnd).unwrap().records.len(),
        records(&[("d", Some("4"))], 0).len()
    );
}

#[test]
fn truncation_into_a_sealed_segment_keeps_readers_valid() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), config(), &clock);
    for i in 0..30 {
        log.append(&records(&[("k", Some(&format!("value-{i:03}")))], 0), 3)
            .unwrap();
    }
    let held = log.read(0, 1 << 20, ReadLimit::LogEnd).unwrap().records; // a reader's bytes
    let snapshot = held.to_vec();
    log.truncate_to(2).unwrap();
    assert_eq!(log.log_end_offset(), 2);
    assert_eq!(
        held.to_vec(),
        snapshot,
        "bytes held by a reader do not change"
    );
    log.append(&records(&[("k", Some("new"))], 0), 4).unwrap();
    assert_eq!(
        values(&log)
            .iter()
            .map(|v| v.2.clone().unwrap())
            .collect::<Vec<_>>(),
        ["value-000", "value-001", "new"]
    );
    assert_eq!(log.leader_epochs(), &[(3, 0), (4, 2)]);
    assert_eq!(log.end_offset_for_epoch(3), Some((3, 2)));
    drop(log);
    let log = open(dir.path(), config(), &clock);
    assert_eq!(log.log_end_offset(), 3);
}

#[test]
fn the_background_cleaner_compacts_registered_logs() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), compacting(), &clock);
    for i in 0..20 {
        log.append(&records(&[("same", Some(&format!("v{i}")))], 0), 0)
            .unwrap();
    }
    log.roll().unwrap();
    log.flush().unwrap();
    log.update_high_watermark(log.log_end_offset());
    let log = Arc::new(RwLock::new(log));
    let registered = log.clone();
    let cleaner = Arc::new(Cleaner::new(CleanerConfig {
        backoff_ms: 10,
        ..CleanerConfig::default()
    }));
    let stats = cleaner.stats();
    let handle = cleaner.spawn(move || vec![registered.clone()]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while values(&log.read().unwrap()).len() > 1 {
        assert!(
            Instant::now() < deadline,
            "the background cleaner did not run"
        );
        std::thread::yield_now();
    }
    handle.shutdown();
    assert!(stats.passes.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    assert_eq!(values(&log.read().unwrap())[0].2.as_deref(), Some("v19"));
}

/// A batch of `n` records from idempotent producer `id`, epoch `epoch`, from `seq`.
fn idempotent(id: i64, epoch: i16, seq: i32, n: usize) -> Vec<u8> {
    let inputs: Vec<RecordInput> = (0..n)
        .map(|i| RecordInput::new(Some(b"k".to_vec()), Some(format!("v{i}").into_bytes()), 0))
        .collect();
    let producer = fjord_protocol::codec::ProducerFields {
        producer_id: id,
        producer_epoch: epoch,
        base_sequence: seq,
    };
    fjord_protocol::codec::encode_batch_with(&inputs, Compression::None, producer)
        .unwrap()
        .to_vec()
}

#[test]
fn a_retried_idempotent_batch_is_written_once_and_gaps_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), config(), &clock);
    let first = log.append(&idempotent(7, 0, 0, 3), 0).unwrap();
    let second = log.append(&idempotent(7, 0, 3, 2), 0).unwrap();
    assert_eq!((first.first_offset, second.last_offset), (0, 4));
    // The retry of the first batch: its offsets again, nothing written.
    let retry = log.append(&idempotent(7, 0, 0, 3), 0).unwrap();
    assert_eq!(
        (retry.first_offset, retry.last_offset, retry.bytes),
        (0, 2, 0)
    );
    assert_eq!(log.log_end_offset(), 5);
    // A gap, and an old epoch, are refused and change nothing.
    assert!(matches!(
        log.append(&idempotent(7, 0, 9, 1), 0),
        Err(StorageError::OutOfOrderSequence {
            expected: 5,
            got: 9,
            ..
        })
    ));
    // A new epoch starts at 0; the old one is fenced from then on.
    log.append(&idempotent(7, 1, 0, 1), 0).unwrap();
    assert!(matches!(
        log.append(&idempotent(7, 0, 5, 1), 0),
        Err(StorageError::InvalidProducerEpoch {
            epoch: 0,
            current: 1,
            ..
        })
    ));
    // Two batches of one request: the second must follow the first.
    let mut two = idempotent(8, 0, 0, 1);
    two.extend(idempotent(8, 0, 1, 1));
    log.append(&two, 0).unwrap();
    let mut gap = idempotent(8, 0, 2, 1);
    gap.extend(idempotent(8, 0, 4, 1));
    assert!(log.append(&gap, 0).is_err());
    assert_eq!(log.log_end_offset(), 8);
    // Non-idempotent batches are not checked.
    log.append(&records(&[("x", Some("1"))], 0), 0).unwrap();
    log.append(&records(&[("x", Some("1"))], 0), 0).unwrap();
    assert_eq!(log.log_end_offset(), 10);
}

#[test]
fn producer_state_survives_a_clean_close_a_crash_and_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), config(), &clock);
    // Enough batches to roll segments (400 bytes each): snapshots are written at rolls.
    let mut seq = 0;
    for _ in 0..20 {
        log.append(&idempotent(3, 0, seq, 2), 0).unwrap();
        seq += 2;
    }
    assert!(log.segments().iter().count() > 2, "rolled");
    let end = log.log_end_offset();
    log.close().unwrap();
    let mut log = open(dir.path(), config(), &clock);
    let retry = log.append(&idempotent(3, 0, seq - 2, 2), 0).unwrap();
    assert_eq!(
        (retry.first_offset, retry.bytes),
        (end - 2, 0),
        "after a clean close"
    );
    log.append(&idempotent(3, 0, seq, 2), 0).unwrap();
    seq += 2;
    drop(log); // crash: the last batch is after the newest snapshot
    let mut log = open(dir.path(), config(), &clock);
    let retry = log.append(&idempotent(3, 0, seq - 2, 2), 0).unwrap();
    assert_eq!((retry.first_offset, retry.bytes), (end, 0), "after a crash");
    assert!(matches!(
        log.append(&idempotent(3, 0, seq + 1, 1), 0),
        Err(StorageError::OutOfOrderSequence { .. })
    ));
    // Truncation (a follower dropping divergent history) forgets the dropped batches.
    log.truncate_to(end).unwrap();
    let again = log.append(&idempotent(3, 0, seq - 2, 2), 0).unwrap();
    assert_eq!((again.first_offset, again.bytes > 0), (end, true));
    // Every snapshot file is named by its offset and readable.
    let snapshots = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".producers")
        })
        .count();
    assert!((1..=3).contains(&snapshots), "{snapshots} snapshots");
}

#[test]
fn after_a_crash_the_producers_are_rebuilt_from_the_recovery_scan() {
    // No roll, so no snapshot: the state after the crash comes from the batches that
    // the recovery scan of the active segment collected (the open reads nothing else),
    // or, past the most it collects (24 in unit tests), from the segment read again.
    for (drop_behind_bytes, rounds) in [(0, 7), (4 << 20, 7), (4 << 20, 13)] {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(0);
        let config = LogConfig {
            drop_behind_bytes,
            ..LogConfig::default()
        };
        let mut log = open(dir.path(), config.clone(), &clock);
        for i in 0..rounds {
            log.append(&idempotent(3, 1, i * 2, 2), 0).unwrap();
            log.append(&records(&[("plain", Some("x"))], 0), 0).unwrap();
            log.append(&idempotent(4, 0, i * 3, 3), 0).unwrap();
        }
        let before = log.producers().clone();
        assert_eq!(before.len(), 2);
        let end = log.log_end_offset();
        drop(log); // crash
        let mut log = open(dir.path(), config, &clock);
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(log.producers(), &before);
        // The oldest batch still remembered is a duplicate; one past it is a gap.
        let oldest_kept = (rounds - producers::BATCHES_KEPT as i32) * 3;
        let retry = log.append(&idempotent(4, 0, oldest_kept, 3), 0).unwrap();
        assert_eq!(retry.bytes, 0, "a retry is not written again");
        assert!(matches!(
            log.append(&idempotent(3, 1, rounds * 2 + 1, 1), 0),
            Err(StorageError::OutOfOrderSequence { .. })
        ));
    }
}

#[test]
fn a_producer_silent_past_the_expiration_is_forgotten_at_the_next_roll() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let config = LogConfig {
        producer_id_expiration_ms: 60_000,
        ..config()
    };
    let mut log = open(dir.path(), config.clone(), &clock);
    log.append(&idempotent(5, 0, 0, 1), 0).unwrap();
    assert!(log.producers().get(5).is_some());
    clock.advance_ms(60_001);
    log.append(&idempotent(6, 0, 0, 1), 0).unwrap();
    log.roll().unwrap();
    assert!(
        log.producers().get(5).is_none(),
        "silent for longer than the expiration"
    );
    assert!(log.producers().get(6).is_some(), "wrote just now");
    // Forgotten for good: the reopened log does not bring it back.
    log.close().unwrap();
    let log = open(dir.path(), config, &clock);
    assert!(log.producers().get(5).is_none());
    assert!(log.producers().get(6).is_some());
}

/// Bytes the file system has allocated to `path`.
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn the_active_segment_reserves_blocks_ahead_and_gives_them_back_when_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let config = LogConfig {
        // Nine batches of 100 KiB fit, the tenth rolls.
        segment_bytes: 1_000_000,
        index_interval_bytes: 4096,
        ..LogConfig::default()
    };
    // Where the file system cannot reserve blocks, appends go on without (checked below
    // all the same); this machine's ext4 and tmpfs can.
    let probe = std::fs::File::create(dir.path().join("probe")).unwrap();
    let reserves =
        rustix::fs::fallocate(&probe, rustix::fs::FallocateFlags::KEEP_SIZE, 0, 1 << 20).is_ok();
    drop(probe);
    std::fs::remove_file(dir.path().join("probe")).unwrap();

    let value = "v".repeat(100 * 1024);
    let mut log = open(dir.path(), config.clone(), &clock);
    log.append(&records(&[("k", Some(&value))], 0), 0).unwrap();
    let active = log.segments().active().log_path().to_path_buf();
    let size = std::fs::metadata(&active).unwrap().len();
    assert_eq!(
        size,
        log.segments().active().size(),
        "the size is what was written"
    );
    if reserves {
        assert!(
            allocated(&active) >= 2 * size,
            "{} bytes allocated to a segment of {size}",
            allocated(&active)
        );
    }

    // Fill the segment; its modification time is an hour ago when the next append rolls.
    for i in 1..9 {
        log.append(&records(&[("k", Some(&format!("{i}{value}")))], 0), 0)
            .unwrap();
    }
    assert_eq!(log.segments().len(), 1);
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&active)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    log.append(&records(&[("k", Some(&format!("9{value}")))], 0), 0)
        .unwrap();
    assert_eq!(
        log.segments().len(),
        2,
        "the tenth batch rolled the segment"
    );
    let sealed_size = std::fs::metadata(&active).unwrap().len();
    assert!(
        allocated(&active) < sealed_size + 16 * 1024,
        "a sealed segment of {sealed_size} bytes keeps {} allocated",
        allocated(&active)
    );
    let modified = std::fs::metadata(&active).unwrap().modified().unwrap();
    assert_eq!(modified, hour_ago, "sealing keeps the modification time");

    // A crash with blocks reserved past the end of the active segment: the reopened log
    // holds exactly what was appended, the seal of a clean close gives the reservation
    // back, and appends go on.
    log.append(
        &records(&[("k", Some(&format!("after the roll{value}")))], 0),
        0,
    )
    .unwrap();
    let active = log.segments().active().log_path().to_path_buf();
    drop(log);
    let size = std::fs::metadata(&active).unwrap().len();
    if reserves {
        assert!(
            allocated(&active) >= 2 * size,
            "reserved when the log went away"
        );
    }
    let log = open(dir.path(), config.clone(), &clock);
    assert_eq!(log.log_end_offset(), 11);
    log.close().unwrap();
    let size = std::fs::metadata(&active).unwrap().len();
    assert!(
        allocated(&active) < size + 16 * 1024,
        "a segment of {size} bytes keeps {} allocated after a clean close",
        allocated(&active)
    );
    let mut log = open(dir.path(), config, &clock);
    log.append(&records(&[("k", Some("after the reopen"))], 0), 0)
        .unwrap();
    let vals: Vec<String> = values(&log).into_iter().map(|v| v.2.unwrap()).collect();
    assert_eq!(vals.len(), 12);
    assert_eq!(vals[0], value);
    assert_eq!(vals[9], format!("9{value}"));
    assert_eq!(vals[10], format!("after the roll{value}"));
    assert_eq!(vals[11], "after the reopen");
}
