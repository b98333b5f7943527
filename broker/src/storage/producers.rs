//! Idempotent producers' state of one partition: per producer id, its epoch and the
//! sequence ranges (with their offsets) of its last five batches, as Kafka keeps them.
//! An append is checked against it: a batch seen before (same epoch and sequence range,
//! as a retry after a lost answer) is a duplicate and is not written again; a gap in the
//! sequence, or an older epoch, is refused.
//!
//! Persisted with the log: a snapshot `<offset>.producers` holds the state of every batch
//! below `offset` (written when a segment rolls and on a clean close); opening a log
//! loads the newest snapshot at or below the log end and replays the batch headers after
//! it. File layout (big-endian): magic `FJPS`, version u16 (2), count u32, then per
//! producer id i64, epoch i16, last seen (ms) i64, batch count u8, and per batch first
//! sequence i32, last sequence i32, first offset i64, last offset i64; last a CRC-32C of
//! everything before it. Producers silent for `producer.id.expiration.ms` are forgotten
//! at each roll and open.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

use fjord_protocol::BatchHeader;

use super::checkpoint;

/// How many recent batches of each producer are remembered for duplicate detection (as
/// Kafka: a producer has at most five requests in flight per partition).
pub const BATCHES_KEPT: usize = 5;

const SUFFIX: &str = ".producers";
const MAGIC: &[u8; 4] = b"FJPS";
const VERSION: u16 = 2;
/// Snapshots kept besides the newest (a truncation may need an older one).
const SNAPSHOTS_KEPT: usize = 2;

/// One batch of a producer: its sequence range and where it was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSeq {
    pub first_seq: i32,
    pub last_seq: i32,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// What replaying one idempotent batch needs of its header: recovery collects these as
/// it scans, so that the open replays them without reading the segment a second time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    pub producer_id: i64,
    pub epoch: i16,
    pub batch: BatchSeq,
}

impl ProducerBatch {
    /// `None` for a batch of no idempotent producer.
    pub fn of(header: &BatchHeader<'_>) -> Option<Self> {
        if header.producer_id() < 0 || header.base_sequence() < 0 {
            return None;
        }
        Some(ProducerBatch {
            producer_id: header.producer_id(),
            epoch: header.producer_epoch(),
            batch: BatchSeq {
                first_seq: header.base_sequence(),
                last_seq: last_sequence(header.base_sequence(), header.last_offset_delta() + 1),
                first_offset: header.base_offset(),
                last_offset: header.last_offset(),
            },
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: i16,
    /// Oldest first.
    pub batches: VecDeque<BatchSeq>,
    /// When it last wrote (the broker's clock; for batches replayed on open, the time of
    /// the open: an entry may be kept too long, never dropped too early).
    pub last_seen_ms: i64,
}

/// What an idempotent batch is, given the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    Append,
    /// Written before, at these offsets.
    Duplicate(BatchSeq),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqError {
    /// The batch's epoch is older than the producer's.
    InvalidEpoch { current: i16 },
    /// The batch does not follow the producer's last one.
    OutOfOrder { expected: i32 },
}

/// The last sequence of a batch of `count` records from `first` (sequences wrap to 0
/// after i32::MAX, as Kafka's).
pub fn last_sequence(first: i32, count: i32) -> i32 {
    let increment = count.max(1) - 1;
    if first > i32::MAX - increment {
        increment - (i32::MAX - first) - 1
    } else {
        first + increment
    }
}

fn follows(last: i32, next: i32) -> bool {
    next == last.wrapping_add(1) || (last == i32::MAX && next == 0)
}

/// See the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Producers {
    map: HashMap<i64, ProducerEntry>,
}

impl Producers {
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.map.get(&producer_id)
    }

    /// Checks a batch of producer `producer_id` against its state.
    pub fn check(
        &self,
        producer_id: i64,
        epoch: i16,
        first_seq: i32,
        last_seq: i32,
    ) -> Result<SeqCheck, SeqError> {
        check_entry(self.map.get(&producer_id), epoch, first_seq, last_seq)
    }

    /// Records an appended batch.
    pub fn record(&mut self, producer_id: i64, epoch: i16, batch: BatchSeq, now_ms: i64) {
        record_entry(
            self.map.entry(producer_id).or_default(),
            epoch,
            batch,
            now_ms,
        );
    }

    /// Forgets the producers silent for longer than `expiration_ms` (Kafka's
    /// `producer.id.expiration.ms`): memory stays bounded however many producers come
    /// and go; a batch of a forgotten producer is taken as from a new one. Returns how
    /// many were forgotten.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.map.len();
        self.map
            .retain(|_, e| now_ms.saturating_sub(e.last_seen_ms) <= expiration_ms);
        before - self.map.len()
    }

    /// Replaces one producer's entry.
    pub fn insert(&mut self, producer_id: i64, entry: ProducerEntry) {
        self.map.insert(producer_id, entry);
    }

    /// Records a batch found in the log (replay); batches without a producer id or a
    /// sequence are not an idempotent producer's and are skipped.
    pub fn replay(&mut self, header: &BatchHeader<'_>, now_ms: i64) {
        if let Some(batch) = ProducerBatch::of(header) {
            self.replay_batch(&batch, now_ms);
        }
    }

    /// [`replay`](Self::replay) of a batch collected by recovery.
    pub fn replay_batch(&mut self, batch: &ProducerBatch, now_ms: i64) {
        self.record(batch.producer_id, batch.epoch, batch.batch, now_ms);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(10 + self.map.len() * 40);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&(self.map.len() as u32).to_be_bytes());
        let mut ids: Vec<&i64> = self.map.keys().collect();
        ids.sort();
        for id in ids {
            let entry = &self.map[id];
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&entry.epoch.to_be_bytes());
            out.extend_from_slice(&entry.last_seen_ms.to_be_bytes());
            out.push(entry.batches.len() as u8);
            for b in &entry.batches {
                out.extend_from_slice(&b.first_seq.to_be_bytes());
                out.extend_from_slice(&b.last_seq.to_be_bytes());
                out.extend_from_slice(&b.first_offset.to_be_bytes());
                out.extend_from_slice(&b.last_offset.to_be_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Producers, String> {
        if bytes.len() < 14 {
            return Err(format!("{} bytes is too short", bytes.len()));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        let crc = u32::from_be_bytes(crc.try_into().expect("4 bytes"));
        if crc32c::crc32c(body) != crc {
            return Err("checksum mismatch".into());
        }
        let mut r = Reader(body);
        if r.take(4)? != MAGIC {
            return Err("not a producer-state snapshot".into());
        }
        let version = u16::from_be_bytes(r.array()?);
        if version != VERSION {
            return Err(format!("unknown version {version}"));
        }
        let count = u32::from_be_bytes(r.array()?);
        let mut map = HashMap::new();
        for _ in 0..count {
            let id = i64::from_be_bytes(r.array()?);
            let epoch = i16::from_be_bytes(r.array()?);
            let last_seen_ms = i64::from_be_bytes(r.array()?);
            let n = r.take(1)?[0] as usize;
            let mut batches = VecDeque::with_capacity(n.min(BATCHES_KEPT));
            for _ in 0..n {
                batches.push_back(BatchSeq {
                    first_seq: i32::from_be_bytes(r.array()?),
                    last_seq: i32::from_be_bytes(r.array()?),
                    first_offset: i64::from_be_bytes(r.array()?),
                    last_offset: i64::from_be_bytes(r.array()?),
                });
            }
            map.insert(
                id,
                ProducerEntry {
                    epoch,
                    batches,
                    last_seen_ms,
                },
            );
        }
        if !r.0.is_empty() {
            return Err(format!("{} bytes after the last producer", r.0.len()));
        }
        Ok(Producers { map })
    }

    /// Writes the snapshot of the state below `offset` (atomically: a temporary file
    /// renamed into place) and removes all but the newest few.
    /// Nothing is written while no idempotent producer has written to the log.
    pub fn write_snapshot(&self, dir: &Path, offset: i64) -> super::Result<()> {
        if self.map.is_empty() && list_snapshots(dir)?.is_empty() {
            return Ok(());
        }
        let path = snapshot_path(dir, offset);
        checkpoint::write_atomically(&path, &self.encode())?;
        let snapshots = list_snapshots(dir)?;
        let excess = snapshots.len().saturating_sub(SNAPSHOTS_KEPT + 1);
        for (_, old) in snapshots.into_iter().take(excess) {
            remove(&old)?;
        }
        Ok(())
    }
}

/// [`Producers::check`] on one producer's entry (`None`: unknown producer).
pub fn check_entry(
    entry: Option<&ProducerEntry>,
    epoch: i16,
    first_seq: i32,
    last_seq: i32,
) -> Result<SeqCheck, SeqError> {
    let Some(entry) = entry else {
        // Unknown (new, or its state is gone with old data): any sequence starts it.
        return Ok(SeqCheck::Append);
    };
    if epoch < entry.epoch {
        return Err(SeqError::InvalidEpoch {
            current: entry.epoch,
        });
    }
    if epoch > entry.epoch {
        // A new epoch starts its sequences at 0.
        return if first_seq == 0 {
            Ok(SeqCheck::Append)
        } else {
            Err(SeqError::OutOfOrder { expected: 0 })
        };
    }
    if let Some(seen) = entry
        .batches
        .iter()
        .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
    {
        return Ok(SeqCheck::Duplicate(*seen));
    }
    match entry.batches.back() {
        Some(last) if !follows(last.last_seq, first_seq) => Err(SeqError::OutOfOrder {
            expected: last.last_seq.wrapping_add(1).max(0),
        }),
        _ => Ok(SeqCheck::Append),
    }
}

/// [`Producers::record`] on one producer's entry.
pub fn record_entry(entry: &mut ProducerEntry, epoch: i16, batch: BatchSeq, now_ms: i64) {
    entry.last_seen_ms = now_ms;
    if epoch != entry.epoch || entry.batches.is_empty() {
        entry.epoch = epoch;
        entry.batches.clear();
    }
    entry.batches.push_back(batch);
    while entry.batches.len() > BATCHES_KEPT {
        entry.batches.pop_front();
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated".into());
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }
}

fn snapshot_path(dir: &Path, offset: i64) -> PathBuf {
    dir.join(format!("{offset:020}{SUFFIX}"))
}

fn remove(path: &Path) -> super::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(super::StorageError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The snapshots in `dir`, oldest first.
fn list_snapshots(dir: &Path) -> super::Result<Vec<(i64, PathBuf)>> {
    let entries = fs::read_dir(dir).map_err(|source| super::StorageError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(SUFFIX)) else {
            continue;
        };
        if let Ok(offset) = stem.parse::<i64>() {
            out.push((offset, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Removes the snapshots above `offset` (they describe batches no longer in the log).
pub fn remove_snapshots_above(dir: &Path, offset: i64) -> super::Result<()> {
    for (at, path) in list_snapshots(dir)? {
        if at > offset {
            remove(&path)?;
        }
    }
    Ok(())
}

/// The newest readable snapshot at or below `max_offset`: (its offset, the state). A
/// damaged snapshot is skipped (an older one, or the log itself, is replayed instead).
pub fn load_snapshot(dir: &Path, max_offset: i64) -> super::Result<Option<(i64, Producers)>> {
    for (offset, path) in list_snapshots(dir)?.into_iter().rev() {
        if offset > max_offset {
            continue;
        }
        let bytes = fs::read(&path).map_err(|source| super::StorageError::Io {
            path: path.clone(),
            source,
        })?;
        match Producers::decode(&bytes) {
            Ok(producers) => return Ok(Some((offset, producers))),
            Err(reason) => {
                let path = path.display();
                tracing::warn!(%path, %reason, "skipping a damaged producer snapshot");
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(first_seq: i32, last_seq: i32, first_offset: i64) -> BatchSeq {
        BatchSeq {
            first_seq,
            last_seq,
            first_offset,
            last_offset: first_offset + (last_seq - first_seq) as i64,
        }
    }

    #[test]
    fn duplicates_gaps_and_epochs_are_told_apart() {
        let mut p = Producers::default();
        assert_eq!(
            p.check(7, 0, 5, 9),
            Ok(SeqCheck::Append),
            "unknown: any start"
        );
        p.record(7, 0, seq(0, 4, 100), 0);
        assert_eq!(p.check(7, 0, 5, 9), Ok(SeqCheck::Append));
        p.record(7, 0, seq(5, 9, 105), 0);
        // A retry of either batch is a duplicate with its offsets.
        assert_eq!(p.check(7, 0, 0, 4), Ok(SeqCheck::Duplicate(seq(0, 4, 100))));
        assert_eq!(p.check(7, 0, 5, 9), Ok(SeqCheck::Duplicate(seq(5, 9, 105))));
        assert_eq!(
            p.check(7, 0, 12, 13),
            Err(SeqError::OutOfOrder { expected: 10 })
        );
        assert_eq!(
            p.check(7, -1, 10, 10),
            Err(SeqError::InvalidEpoch { current: 0 })
        );
        assert_eq!(
            p.check(7, 1, 10, 10),
            Err(SeqError::OutOfOrder { expected: 0 })
        );
        assert_eq!(p.check(7, 1, 0, 3), Ok(SeqCheck::Append));
        p.record(7, 1, seq(0, 3, 200), 0);
        assert_eq!(
            p.get(7).unwrap().batches.len(),
            1,
            "a new epoch starts afresh"
        );
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut p = Producers::default();
        for i in 0..7 {
            p.record(1, 0, seq(i, i, i as i64), 0);
        }
        assert_eq!(p.get(1).unwrap().batches.len(), BATCHES_KEPT);
        assert_eq!(p.check(1, 0, 6, 6), Ok(SeqCheck::Duplicate(seq(6, 6, 6))));
        // Too old to tell: it does not follow the last one.
        assert!(matches!(
            p.check(1, 0, 0, 0),
            Err(SeqError::OutOfOrder { .. })
        ));
    }

    #[test]
    fn sequences_wrap_after_i32_max() {
        assert_eq!(last_sequence(i32::MAX - 1, 3), 0);
        assert_eq!(last_sequence(10, 1), 10);
        let mut p = Producers::default();
        p.record(1, 0, seq(i32::MAX - 1, i32::MAX, 0), 0);
        assert_eq!(p.check(1, 0, 0, 4), Ok(SeqCheck::Append));
    }

    #[test]
    fn snapshots_round_trip_and_damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Producers::default();
        p.record(1, 0, seq(0, 9, 0), 0);
        p.record(2, 3, seq(4, 4, 10), 0);
        p.write_snapshot(dir.path(), 11).unwrap();
        let (at, loaded) = load_snapshot(dir.path(), 100).unwrap().unwrap();
        assert_eq!((at, &loaded), (11, &p));
        assert!(load_snapshot(dir.path(), 10).unwrap().is_none());
        let path = snapshot_path(dir.path(), 11);
        let mut bytes = fs::read(&path).unwrap();
        bytes[12] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(load_snapshot(dir.path(), 100).unwrap().is_none());
        for cut in 0..bytes.len() {
            assert!(Producers::decode(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn silent_producers_are_forgotten_after_the_expiration() {
        let mut p = Producers::default();
        p.record(1, 0, seq(0, 0, 0), 1_000);
        p.record(2, 0, seq(0, 0, 1), 5_000);
        assert_eq!(p.expire(6_000, 4_000), 1);
        assert!(p.get(1).is_none() && p.get(2).is_some());
        // A forgotten producer's next batch is taken as a new producer's.
        assert_eq!(p.check(1, 0, 7, 7), Ok(SeqCheck::Append));
    }

    #[test]
    fn nothing_is_written_before_an_idempotent_producer_writes() {
        let dir = tempfile::tempdir().unwrap();
        Producers::default().write_snapshot(dir.path(), 10).unwrap();
        assert!(list_snapshots(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn old_snapshots_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Producers::default();
        p.record(1, 0, seq(0, 0, 0), 0);
        for offset in [10, 20, 30, 40, 50] {
            p.write_snapshot(dir.path(), offset).unwrap();
        }
        let left: Vec<i64> = list_snapshots(dir.path())
            .unwrap()
            .into_iter()
            .map(|(o, _)| o)
            .collect();
        assert_eq!(left, [30, 40, 50]);
        remove_snapshots_above(dir.path(), 35).unwrap();
        assert_eq!(list_snapshots(dir.path()).unwrap().len(), 1);
    }
}
