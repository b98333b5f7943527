//! The record accumulator: records collected per partition into batches, and the choice
//! of which batches to send when. Pure: no I/O and no clock of its own (callers pass
//! `now`), so the batching rules are unit-tested directly.
//!
//! Rules (Kafka's): a partition has at most one *open* batch that records join, and a
//! queue of *full* ones. A batch is full when the next record would take it over
//! `batch_bytes` (a record larger than that travels alone). A partition with no request in
//! flight sends its full batches at once, and its open batch once `linger` has passed since
//! the batch's first record, or when a flush (or close) covers it. A partition has at
//! most `max_in_flight` requests in flight (its sender keeps them in order, retries
//! included); while it has that many, its batches wait, the open one gathering records.
//! A request carries every sendable batch, up to `request_bytes`.
//!
//! Memory: a batch is built in a buffer of the pool. A partition that fills batches back
//! to back (one waits full, or it has requests in flight) builds them in a *chunk*
//! instead, each batch in the room the one before left, so that its requests' batches
//! lie end to end and are sent as one piece. At most a few partitions hold a chunk at a
//! time: a chunk is larger than a batch, and a thousand partitions must not each hold one.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fjord_protocol::BatchBuilder;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::pool::BufferPool;
use crate::TopicPartition;
use crate::hash::FastMap;

/// Bytes of a RecordBatch v2 header.
pub(crate) const BATCH_OVERHEAD: usize = fjord_protocol::batch::HEADER_SIZE;
/// The most a batch's buffer holds before it grows (a larger `batch_bytes` grows it).
const MAX_BATCH_CAPACITY: usize = 1 << 20;
/// The size of a chunk that batches are built in one after the other: about one request
/// (a request whose batches straddle two chunks goes out as two pieces).
const CHUNK_BYTES: usize = 1 << 20;
/// The most a record's framing can take: length, attributes, timestamp and offset deltas,
/// key and value lengths, header count (varints at their widest).
const RECORD_OVERHEAD: usize = 5 + 1 + 10 + 5 + 5 + 5 + 5;

/// A record on its way into a batch (its bytes are shared, not copied, until the batch
/// encodes them).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct PendingRecord {
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Bytes of the producer's buffer it holds (taken from the buffer's semaphore), which
    /// its batch gives back.
    pub room: u32,
}

impl PendingRecord {
    /// An upper bound of the record's encoded size (uncompressed).
    pub(crate) fn size(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| 10 + k.len() + v.as_ref().map_or(0, Bytes::len))
            .sum();
        RECORD_OVERHEAD
            + self.key.as_ref().map_or(0, Bytes::len)
            + self.value.as_ref().map_or(0, Bytes::len)
            + headers
    }
}

/// A batch being built or sent; `T` is what completes each record (a reply channel).
#[derive(Debug)]
pub(crate) struct Batch<T> {
    pub id: u64,
    /// The records, encoded as they joined.
    pub records: BatchBuilder,
    pub replies: Vec<T>,
    /// The encoded size so far.
    pub size: usize,
    pub created: Instant,
    /// Its records' share of the producer's buffer, given back when the batch is dropped.
    pub room: Room,
}

/// Bytes of the producer's buffer (permits of its semaphore) that a batch holds for its
/// records, given back when the batch is dropped: answered, failed or abandoned. One
/// release per batch instead of one per record, which each took the semaphore's lock.
#[derive(Debug)]
pub(crate) struct Room {
    buffer: Arc<Semaphore>,
    bytes: usize,
}

impl Drop for Room {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.buffer.add_permits(std::mem::take(&mut self.bytes));
        }
    }
}

#[derive(Debug)]
struct Queue<T> {
    open: Option<Batch<T>>,
    full: VecDeque<Batch<T>>,
    /// Requests sent and not yet completed.
    in_flight: usize,
    /// Whether its batches are built in a chunk (the open one, or the next one in `room`).
    chunked: bool,
    /// The room its last batch left in their chunk, where the next one is built.
    room: Option<BytesMut>,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Queue {
            open: None,
            full: VecDeque::new(),
            in_flight: 0,
            chunked: false,
            room: None,
        }
    }
}

/// Which partitions build their batches in chunks (see the module docs).
#[derive(Debug)]
struct Chunks {
    /// The room a batch needs (its buffer's capacity): a chunk's rest with less is left
    /// unused. 0: no chunks.
    batch_room: usize,
    /// Partitions building batches in a chunk.
    held: usize,
    max_held: usize,
}

impl Chunks {
    /// The buffer for `queue`'s next batch: the room its chunk has left, else a new chunk
    /// if it fills batches back to back and few partitions hold one, else a buffer.
    fn buffer<T>(&mut self, queue: &mut Queue<T>, pool: &BufferPool) -> BytesMut {
        if let Some(room) = queue.room.take() {
            return room;
        }
        let busy = !queue.full.is_empty() || queue.in_flight > 0;
        if self.batch_room > 0 && busy && !queue.chunked && self.held < self.max_held {
            self.held += 1;
            queue.chunked = true;
            return pool.take_chunk();
        }
        pool.take()
    }

    /// Takes `queue`'s open batch, which then takes no more records; what is left of its
    /// chunk is kept for the next batch (or the chunk is done with).
    fn close<T>(&mut self, queue: &mut Queue<T>) -> Batch<T> {
        let mut batch = queue.open.take().expect("an open batch");
        if queue.chunked {
            if batch.records.room() >= self.batch_room {
                queue.room = Some(batch.records.split_room());
            } else {
                self.release(queue);
            }
        }
        batch
    }

    /// `queue` gives up its chunk.
    fn release<T>(&mut self, queue: &mut Queue<T>) {
        if queue.chunked {
            queue.chunked = false;
            queue.room = None;
            self.held -= 1;
        }
    }
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Accumulator<T> {
    batch_bytes: usize,
    linger: Duration,
    request_bytes: usize,
    max_in_flight: usize,
    queues: FastMap<TopicPartition, Queue<T>>,
    next_id: u64,
    /// Ids of the batches not yet completed (open, full or in flight).
    outstanding: BTreeSet<u64>,
    /// Where new batches take their buffers from.
    pool: BufferPool,
    /// Where batches give their records' room back to.
    buffer: Arc<Semaphore>,
    chunks: Chunks,
    /// Whether batches are compressed when sent (their CRC is then taken afterwards).
    compressed: bool,
}

impl<T> Accumulator<T> {
    /// `pool_bytes`: how much of answered batches' buffers the pool keeps for new batches.
    pub(crate) fn new(
        batch_bytes: usize,
        linger: Duration,
        request_bytes: usize,
        max_in_flight: usize,
        pool_bytes: usize,
    ) -> Self {
        let (batch_bytes, request_bytes) = (batch_bytes.max(1), request_bytes.max(1));
        let max_in_flight = max_in_flight.max(1);
        let pool = BufferPool::new(
            BATCH_OVERHEAD + batch_bytes.min(MAX_BATCH_CAPACITY),
            pool_bytes,
        )
        .with_chunks(CHUNK_BYTES);
        Accumulator {
            batch_bytes,
            linger,
            request_bytes,
            max_in_flight,
            queues: FastMap::default(),
            next_id: 0,
            outstanding: BTreeSet::new(),
            buffer: Arc::new(Semaphore::new(0)),
            chunks: Chunks {
                // A batch larger than a buffer travels in one of its own anyway.
                batch_room: if pool.chunk() > 0 && batch_bytes < MAX_BATCH_CAPACITY {
                    pool.capacity()
                } else {
                    0
                },
                held: 0,
                // A quarter of what the pool keeps: the chunks partitions hold stay small
                // beside the buffer.
                max_held: (pool_bytes / (4 * CHUNK_BYTES)).max(1),
            },
            pool,
            compressed: false,
        }
    }

    /// Batches that will be compressed when sent: their records' CRC is not kept as
    /// they are added, since the batch's CRC covers the compressed bytes.
    pub(crate) fn compressing(mut self, compressed: bool) -> Self {
        self.compressed = compressed;
        if compressed {
            // A compressed batch is written anew: it leaves its chunk behind.
            self.chunks.batch_room = 0;
        }
        self
    }

    /// Batches give their records' room back to `buffer` (by default to a semaphore of
    /// their own).
    pub(crate) fn giving_room_to(mut self, buffer: Arc<Semaphore>) -> Self {
        self.buffer = buffer;
        self
    }

    /// Gives back the room of a record that joins no batch.
    pub(crate) fn give_room(&self, bytes: u32) {
        self.buffer.add_permits(bytes as usize);
    }

    /// The pool that new batches take their buffers from; senders give them back.
    pub(crate) fn pool(&self) -> &BufferPool {
        &self.pool
    }

    /// [`append_telling`](Self::append_telling) for tests: the batch's id only.
    #[cfg(test)]
    pub(crate) fn append(
        &mut self,
        tp: &TopicPartition,
        record: PendingRecord,
        reply: T,
        now: Instant,
    ) -> u64 {
        self.append_telling(tp, record, reply, || now).0
    }

    /// Adds a record to `tp`'s open batch (opening one if needed, created `now()`: the
    /// clock is read only then). Returns the id of the batch it joined, and whether a
    /// batch opened or filled (so that whoever sends batches has a new linger deadline or
    /// a batch to send).
    pub(crate) fn append_telling(
        &mut self,
        tp: &TopicPartition,
        record: PendingRecord,
        reply: T,
        now: impl FnOnce() -> Instant,
    ) -> (u64, bool) {
        let size = record.size();
        // Looked up before it is inserted: no copy of the topic name per record.
        if !self.queues.contains_key(tp) {
            self.queues.insert(tp.clone(), Queue::default());
        }
        let queue = self.queues.get_mut(tp).expect("just inserted");
        if let Some(open) = &queue.open
            && open.size + size > self.batch_bytes
        {
            let full = self.chunks.close(queue);
            queue.full.push_back(full);
        }
        let opened = queue.open.is_none();
        if opened {
            let id = self.next_id;
            self.next_id += 1;
            self.outstanding.insert(id);
            let records = BatchBuilder::with_buffer(self.chunks.buffer(queue, &self.pool));
            queue.open = Some(Batch {
                id,
                records: if self.compressed {
                    records.without_running_crc()
                } else {
                    records
                },
                // Room for as many records of this size as fill the batch.
                replies: Vec::with_capacity((self.batch_bytes / size.max(1)).clamp(1, 1024)),
                size: BATCH_OVERHEAD,
                created: now(),
                room: Room {
                    buffer: Arc::clone(&self.buffer),
                    bytes: 0,
                },
            });
        }
        let id = Self::push(queue, &mut self.chunks, self.batch_bytes, record, reply);
        (id, opened || queue.open.is_none())
    }

    /// Adds a record to `tp`'s open batch if that is batch `id` and the record fits in it
    /// (the sticky partitioner's common case: one lookup, no batch to open), and tells
    /// whether that filled the batch (it is then ready to send); else hands the record
    /// back.
    pub(crate) fn append_to_open(
        &mut self,
        tp: &TopicPartition,
        id: u64,
        record: PendingRecord,
        reply: T,
    ) -> Result<bool, (PendingRecord, T)> {
        let fits = |queue: &Queue<T>| {
            queue
                .open
                .as_ref()
                .is_some_and(|open| open.id == id && open.size + record.size() <= self.batch_bytes)
        };
        match self.queues.get_mut(tp) {
            Some(queue) if fits(queue) => {
                Self::push(queue, &mut self.chunks, self.batch_bytes, record, reply);
                Ok(queue.open.is_none())
            }
            _ => Err((record, reply)),
        }
    }

    /// Adds a record to `queue`'s open batch (there is one, with room for it), which
    /// joins the full ones once it reaches `batch_bytes`. Returns the batch's id.
    fn push(
        queue: &mut Queue<T>,
        chunks: &mut Chunks,
        batch_bytes: usize,
        record: PendingRecord,
        reply: T,
    ) -> u64 {
        let batch = queue.open.as_mut().expect("an open batch");
        batch.room.bytes += record.room as usize;
        batch.records.push(
            record.timestamp_ms,
            record.key.as_deref(),
            record.value.as_deref(),
            &record.headers,
        );
        batch.replies.push(reply);
        batch.size = batch.records.size();
        let id = batch.id;
        if batch.size >= batch_bytes {
            let full = chunks.close(queue);
            queue.full.push_back(full);
        }
        id
    }

    /// The id of `tp`'s open batch if a record of `size` bytes would still join it (it
    /// would not if it takes the batch over `batch_bytes`: a new batch starts).
    pub(crate) fn open_batch_with_room(&self, tp: &TopicPartition, size: usize) -> Option<u64> {
        let open = self.queues.get(tp)?.open.as_ref()?;
        (open.size + size <= self.batch_bytes).then_some(open.id)
    }

    /// Takes the batches to send now, per partition, and marks those partitions in flight.
    /// Open batches with an id below `force_below` are sent regardless of linger.
    pub(crate) fn drain(
        &mut self,
        now: Instant,
        force_below: u64,
    ) -> Vec<(TopicPartition, Vec<Batch<T>>)> {
        let mut out = Vec::new();
        for (tp, queue) in &mut self.queues {
            if queue.in_flight >= self.max_in_flight {
                continue;
            }
            let mut batches = Vec::new();
            let mut bytes = 0;
            while let Some(front) = queue.full.front() {
                if !batches.is_empty() && bytes + front.size > self.request_bytes {
                    break;
                }
                bytes += front.size;
                batches.push(queue.full.pop_front().expect("checked"));
            }
            if queue.full.is_empty()
                && let Some(open) = &queue.open
            {
                let due = open.created + self.linger <= now || open.id < force_below;
                let fits = batches.is_empty() || bytes + open.size <= self.request_bytes;
                if due && fits {
                    batches.push(self.chunks.close(queue));
                }
            }
            if !batches.is_empty() {
                queue.in_flight += 1;
                out.push((tp.clone(), batches));
            }
        }
        // Deterministic order (tests, and fairness does not depend on hashing).
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// A request for `tp` carrying the batches `ids` completed (either way).
    pub(crate) fn complete(&mut self, tp: &TopicPartition, ids: &[u64]) {
        for id in ids {
            self.outstanding.remove(id);
        }
        if let Some(queue) = self.queues.get_mut(tp) {
            queue.in_flight = queue.in_flight.saturating_sub(1);
            if queue.in_flight == 0 && queue.open.is_none() && queue.full.is_empty() {
                self.chunks.release(queue);
                self.queues.remove(tp);
            }
        }
    }

    /// When the next open batch becomes due, if any is waiting for its linger. (A
    /// partition with its most requests in flight is woken by a request's completion.)
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.queues
            .values()
            .filter(|q| q.in_flight < self.max_in_flight)
            .filter_map(|q| {
                if q.full.is_empty() {
                    q.open.as_ref().map(|b| b.created + self.linger)
                } else {
                    Some(q.full[0].created)
                }
            })
            .min()
    }

    /// The id the next batch will get: every batch so far has a lower one.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Whether no batch below `id` is outstanding.
    pub(crate) fn completed_below(&self, id: u64) -> bool {
        self.outstanding.first().is_none_or(|&first| first >= id)
    }

    /// Whether nothing is pending or in flight.
    pub(crate) fn is_idle(&self) -> bool {
        self.outstanding.is_empty()
    }

    /// Takes every batch not yet sent (full or open), for a producer that is going away.
    pub(crate) fn take_unsent(&mut self) -> Vec<Batch<T>> {
        let mut unsent = Vec::new();
        for queue in self.queues.values_mut() {
            unsent.extend(queue.full.drain(..));
            unsent.extend(queue.open.take());
            self.chunks.release(queue);
        }
        for batch in &unsent {
            self.outstanding.remove(&batch.id);
        }
        unsent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: u32) -> TopicPartition {
        TopicPartition::new("t", p)
    }

    fn record(value_len: usize) -> PendingRecord {
        PendingRecord {
            value: Some(Bytes::from(vec![b'v'; value_len])),
            ..PendingRecord::default()
        }
    }

    fn sizes(batches: &[Batch<u32>]) -> Vec<Vec<u32>> {
        batches.iter().map(|b| b.replies.clone()).collect()
    }

    #[test]
    fn a_full_open_batch_has_no_room_for_the_next_record() {
        let mut acc: Accumulator<u32> = Accumulator::new(1000, Duration::ZERO, 10_000, 1, 1 << 20);
        let now = Instant::now();
        let id = acc.append(&tp(0), record(400), 0, now);
        assert_eq!(
            acc.open_batch_with_room(&tp(0), record(400).size()),
            Some(id)
        );
        acc.append(&tp(0), record(400), 1, now);
        assert_eq!(acc.open_batch_with_room(&tp(0), 0), Some(id), "still open");
        assert_eq!(
            acc.open_batch_with_room(&tp(0), record(400).size()),
            None,
            "a third record would start a new batch"
        );
    }

    #[test]
    fn a_new_batch_encodes_into_the_buffer_an_answered_batch_gave_back() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(16 * 1024, Duration::ZERO, 1 << 20, 1, 1 << 20);
        let finish = |batch| finish_mut(batch).freeze();
        let first = acc.append(&tp(0), record(100), 1u32, t0);
        let mut sent = acc.drain(t0, 0);
        let bytes = finish(sent.remove(0).1.remove(0));
        let (ptr, copy) = (bytes.as_ptr(), bytes.clone());
        acc.complete(&tp(0), &[first]);
        // While the sender still holds a copy, the buffer is not kept.
        acc.pool().give(copy);
        assert_eq!(acc.pool().len(), 0);
        // Given back once nothing else refers to it: the next batch writes into it.
        acc.pool().give(bytes);
        acc.append(&tp(0), record(200), 3, t0);
        let reused = finish(acc.drain(t0, 0).remove(0).1.remove(0));
        assert_eq!(reused.as_ptr(), ptr);
        let records = fjord_protocol::decode_records(&reused).expect("a whole batch");
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].value.as_ref().map(|v| v.len()), Some(200));
    }

    fn finish_mut(batch: Batch<u32>) -> BytesMut {
        batch
            .records
            .finish_mut(
                fjord_protocol::Compression::None,
                fjord_protocol::codec::ProducerFields::default(),
            )
            .expect("records")
    }

    #[test]
    fn a_partition_filling_batches_back_to_back_builds_them_end_to_end() {
        let t0 = Instant::now();
        // Three records of 100 bytes fill a batch of 500.
        let mut acc = Accumulator::new(500, Duration::from_secs(60), 1 << 20, 8, 32 << 20);
        for i in 0..7 {
            acc.append(&tp(0), record(100), i, t0);
        }
        let queue = &acc.queues[&tp(0)];
        assert!(
            queue.chunked,
            "a full batch waits: the next ones go in a chunk"
        );
        assert_eq!(acc.chunks.held, 1);
        let batches = acc.drain(t0, u64::MAX).remove(0).1;
        assert_eq!(sizes(&batches), vec![vec![0, 1, 2], vec![3, 4, 5], vec![6]]);
        let mut pieces = Vec::new();
        for batch in batches {
            super::super::pool::push_joined(&mut pieces, finish_mut(batch));
        }
        // The first batch opened in a buffer of its own; the two after it lie end to end.
        assert_eq!(pieces.len(), 2);
        let counts = |piece: &BytesMut| -> Vec<i32> {
            fjord_protocol::batch::BatchIter::new(piece)
                .map(|b| b.expect("a whole batch, CRC right").record_count())
                .collect()
        };
        assert_eq!(counts(&pieces[0]), vec![3]);
        assert_eq!(counts(&pieces[1]), vec![3, 1]);
        // The chunk's room is kept for the next batch while requests are in flight.
        assert!(acc.queues[&tp(0)].room.is_some());
        let next = acc.append(&tp(0), record(100), 7, t0);
        acc.complete(&tp(0), &[0, 1, 2]);
        assert_eq!(acc.chunks.held, 1, "the open batch is in the chunk");
        let last = acc.drain(t0, u64::MAX).remove(0).1.remove(0);
        assert_eq!(last.id, next);
        let at = finish_mut(last).as_ptr();
        assert_eq!(at, pieces[1].as_ptr().wrapping_add(pieces[1].len()));
        // Nothing left to send: the partition gives its chunk up.
        acc.complete(&tp(0), &[next]);
        assert!(acc.is_idle());
        assert_eq!(acc.chunks.held, 0);
    }

    #[test]
    fn few_partitions_hold_a_chunk_at_a_time() {
        let t0 = Instant::now();
        // A pool of 4 MiB: one partition at a time builds in a chunk.
        let mut acc = Accumulator::new(500, Duration::from_secs(60), 1 << 20, 8, 4 << 20);
        for p in 0..3 {
            for i in 0..7 {
                acc.append(&tp(p), record(100), i, t0);
            }
        }
        let chunked: Vec<bool> = (0..3).map(|p| acc.queues[&tp(p)].chunked).collect();
        assert_eq!(chunked, vec![true, false, false]);
        assert_eq!(acc.chunks.held, 1);
        // Partition 0 done with: partition 1's next batch goes in a chunk.
        let sent = acc.drain(t0, u64::MAX);
        for (tp, batches) in &sent {
            let ids: Vec<u64> = batches.iter().map(|b| b.id).collect();
            if tp.partition == 0 {
                acc.complete(tp, &ids);
            }
        }
        assert_eq!(acc.chunks.held, 0);
        acc.append(&tp(1), record(100), 7, t0);
        assert!(acc.queues[&tp(1)].chunked);
        assert_eq!(acc.chunks.held, 1);
        // Compressed batches are written anew, so they take no chunks.
        let mut acc =
            Accumulator::new(500, Duration::from_secs(60), 1 << 20, 8, 32 << 20).compressing(true);
        for i in 0..7 {
            acc.append(&tp(0), record(100), i, t0);
        }
        assert!(!acc.queues[&tp(0)].chunked);
        // Nor do batches as large as a buffer.
        let mut acc = Accumulator::new(4 << 20, Duration::ZERO, 8 << 20, 8, 32 << 20);
        for i in 0..3 {
            acc.append(&tp(0), record(3 << 20), i, t0);
        }
        assert!(!acc.queues[&tp(0)].chunked);
    }

    #[test]
    fn open_batch_waits_for_linger() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(16 * 1024, Duration::from_millis(5), 1 << 20, 1, 1 << 20);
        let id = acc.append(&tp(0), record(10), 1u32, t0);
        acc.append(&tp(0), record(10), 2, t0 + Duration::from_millis(1));
        assert_eq!(acc.open_batch_with_room(&tp(0), 0), Some(id));
        assert!(acc.drain(t0 + Duration::from_millis(4), 0).is_empty());
        assert_eq!(acc.next_deadline(), Some(t0 + Duration::from_millis(5)));
        let sent = acc.drain(t0 + Duration::from_millis(5), 0);
        assert_eq!(sent.len(), 1);
        assert_eq!(sizes(&sent[0].1), vec![vec![1, 2]]);
        assert!(!acc.is_idle());
        acc.complete(&tp(0), &[id]);
        assert!(acc.is_idle());
        assert_eq!(acc.next_deadline(), None);
    }

    #[test]
    fn batch_bytes_closes_a_batch_and_sends_it_without_waiting() {
        let t0 = Instant::now();
        // Each record is ~36 + 100 bytes; three fit in 500 with the header, four do not.
        let mut acc = Accumulator::new(500, Duration::from_secs(60), 1 << 20, 1, 1 << 20);
        for i in 0..7 {
            acc.append(&tp(0), record(100), i, t0);
        }
        let sent = acc.drain(t0, 0);
        assert_eq!(sent.len(), 1);
        let (_, batches) = &sent[0];
        // Two full batches go now; the open one (record 6) waits for linger.
        assert_eq!(sizes(batches), vec![vec![0, 1, 2], vec![3, 4, 5]]);
        assert!(batches.iter().all(|b| b.size <= 500));
        assert_eq!(acc.open_batch_with_room(&tp(0), 0), Some(2));
    }

    #[test]
    fn append_to_open_joins_only_the_named_open_batch_with_room() {
        let t0 = Instant::now();
        // As above: three records of 100 bytes fit in a batch, four do not.
        let mut acc = Accumulator::new(500, Duration::from_secs(60), 1 << 20, 1, 1 << 20);
        // No queue, no open batch: the record comes back.
        let back = acc.append_to_open(&tp(0), 0, record(100), 9u32);
        assert_eq!(back.map_err(|(r, reply)| (r.size(), reply)), Err((136, 9)));
        let roomy = || PendingRecord {
            room: 7,
            ..record(100)
        };
        let id = acc.append(&tp(0), roomy(), 0, t0);
        // Another batch's id, or another partition: back.
        assert!(acc.append_to_open(&tp(0), id + 1, record(100), 9).is_err());
        assert!(acc.append_to_open(&tp(1), id, record(100), 9).is_err());
        assert_eq!(acc.append_to_open(&tp(0), id, roomy(), 1).ok(), Some(false));
        assert_eq!(acc.append_to_open(&tp(0), id, roomy(), 2).ok(), Some(false));
        // A fourth would take the batch over batch_bytes: it does not join.
        assert_eq!(acc.open_batch_with_room(&tp(0), 136), None);
        assert!(acc.append_to_open(&tp(0), id, record(100), 3).is_err());
        let next = acc.append(&tp(0), record(100), 3, t0);
        assert_ne!(next, id);
        let sent = acc.drain(t0, 0);
        assert_eq!(sizes(&sent[0].1), vec![vec![0, 1, 2]]);
        assert!(sent[0].1[0].size <= 500);
        // The records' room is held by their batch, however they joined it.
        assert_eq!(sent[0].1[0].room.bytes, 21);
    }

    #[test]
    fn an_append_tells_when_a_batch_opens_or_fills() {
        let t0 = Instant::now();
        // As above: three records of 100 bytes fit in a batch, four do not.
        let mut acc = Accumulator::new(500, Duration::from_secs(60), 1 << 20, 1, 1 << 20);
        let (first, news) = acc.append_telling(&tp(0), record(100), 0u32, || t0);
        assert!(news, "the first record opens a batch");
        assert_eq!(
            acc.append_telling(&tp(0), record(100), 1, || t0),
            (first, false)
        );
        assert_eq!(
            acc.append_telling(&tp(0), record(100), 2, || t0),
            (first, false)
        );
        let (second, news) = acc.append_telling(&tp(0), record(100), 3, || t0);
        assert!(
            second != first && news,
            "a record that does not fit opens a batch"
        );
        // A record that takes its batch to batch_bytes fills it: ready without linger.
        let (third, news) = acc.append_telling(&tp(1), record(1000), 4, || t0);
        assert!(news);
        assert_eq!(acc.open_batch_with_room(&tp(1), 0), None);
        let sent = acc.drain(t0, 0);
        let mut ready: Vec<u64> = sent
            .iter()
            .flat_map(|(_, b)| b.iter().map(|b| b.id))
            .collect();
        ready.sort_unstable();
        assert_eq!(ready, vec![first, third]);
    }

    #[test]
    fn a_record_larger_than_batch_bytes_travels_alone() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(200, Duration::from_secs(60), 1 << 20, 1, 1 << 20);
        acc.append(&tp(0), record(10), 0u32, t0);
        acc.append(&tp(0), record(1000), 1, t0);
        acc.append(&tp(0), record(10), 2, t0);
        let sent = acc.drain(t0, 0);
        assert_eq!(sizes(&sent[0].1), vec![vec![0], vec![1]]);
        assert_eq!(acc.open_batch_with_room(&tp(0), 0), Some(2));
    }

    #[test]
    fn one_request_in_flight_per_partition_and_records_keep_joining() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(16 * 1024, Duration::ZERO, 1 << 20, 1, 1 << 20);
        let first = acc.append(&tp(0), record(1), 0u32, t0);
        let sent = acc.drain(t0, 0);
        assert_eq!(sizes(&sent[0].1), vec![vec![0]]);
        // In flight: later records gather in one batch, even with linger 0.
        for i in 1..5 {
            acc.append(&tp(0), record(1), i, t0);
        }
        acc.append(&tp(1), record(1), 99, t0);
        let sent = acc.drain(t0, 0);
        assert_eq!(sent.len(), 1, "partition 1 only");
        assert_eq!(sent[0].0, tp(1));
        acc.complete(&tp(0), &[first]);
        let sent = acc.drain(t0, 0);
        assert_eq!(sent[0].0, tp(0));
        assert_eq!(sizes(&sent[0].1), vec![vec![1, 2, 3, 4]]);
    }

    #[test]
    fn up_to_max_in_flight_requests_per_partition() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(16 * 1024, Duration::ZERO, 1 << 20, 2, 1 << 20);
        let first = acc.append(&tp(0), record(1), 0u32, t0);
        assert_eq!(sizes(&acc.drain(t0, 0)[0].1), vec![vec![0]]);
        let second = acc.append(&tp(0), record(1), 1, t0);
        assert_eq!(
            sizes(&acc.drain(t0, 0)[0].1),
            vec![vec![1]],
            "a second one goes"
        );
        // Two in flight: the third request waits, gathering records.
        acc.append(&tp(0), record(1), 2, t0);
        acc.append(&tp(0), record(1), 3, t0);
        assert!(acc.drain(t0, 0).is_empty());
        assert_eq!(
            acc.next_deadline(),
            None,
            "woken by a completion, not a timer"
        );
        acc.complete(&tp(0), &[first]);
        assert_eq!(sizes(&acc.drain(t0, 0)[0].1), vec![vec![2, 3]]);
        acc.complete(&tp(0), &[second]);
        assert!(!acc.is_idle(), "the third is in flight");
    }

    #[test]
    fn request_bytes_splits_a_backlog_into_requests() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(200, Duration::ZERO, 450, 1, 1 << 20);
        for i in 0..8 {
            acc.append(&tp(0), record(100), i, t0);
        }
        let mut requests = Vec::new();
        loop {
            let mut sent = acc.drain(t0, 0);
            if sent.is_empty() {
                break;
            }
            let (tp0, batches) = sent.remove(0);
            let ids: Vec<u64> = batches.iter().map(|b| b.id).collect();
            requests.push(sizes(&batches));
            acc.complete(&tp0, &ids);
        }
        // One record per batch (two would pass 200), two batches per request (three would
        // pass 450).
        assert_eq!(requests.len(), 4, "{requests:?}");
        assert!(requests.iter().all(|r| r.len() == 2), "{requests:?}");
        let all: Vec<u32> = requests.into_iter().flatten().flatten().collect();
        assert_eq!(all, (0..8).collect::<Vec<_>>(), "order kept");
        assert!(acc.is_idle());
    }

    #[test]
    fn flush_forces_open_batches_created_before_it() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(16 * 1024, Duration::from_secs(60), 1 << 20, 1, 1 << 20);
        let a = acc.append(&tp(0), record(1), 0u32, t0);
        let b = acc.append(&tp(1), record(1), 1, t0);
        let flush_below = acc.next_id();
        assert!(!acc.completed_below(flush_below));
        let sent = acc.drain(t0, flush_below);
        assert_eq!(sent.len(), 2);
        // A batch opened after the flush is not forced.
        let c = acc.append(&tp(2), record(1), 2, t0);
        assert!(c >= flush_below);
        assert!(acc.drain(t0, flush_below).is_empty());
        acc.complete(&tp(0), &[a]);
        assert!(!acc.completed_below(flush_below));
        acc.complete(&tp(1), &[b]);
        assert!(acc.completed_below(flush_below));
        assert!(!acc.is_idle());
    }

    #[test]
    fn batches_give_their_records_room_back_when_dropped() {
        let t0 = Instant::now();
        let buffer = Arc::new(Semaphore::new(0));
        let mut acc = Accumulator::new(500, Duration::ZERO, 1 << 20, 1024, 1 << 20)
            .giving_room_to(Arc::clone(&buffer));
        let holding = |room| PendingRecord {
            room,
            ..record(100)
        };
        for i in 0..5 {
            acc.append(&tp(0), holding(10 + i), i, t0);
        }
        acc.give_room(7);
        assert_eq!(
            buffer.available_permits(),
            7,
            "a record that joined no batch"
        );
        let mut batches = acc.drain(t0, 0).remove(0).1;
        assert_eq!(batches.len(), 2);
        let second = batches.pop().expect("two");
        drop(batches);
        assert_eq!(buffer.available_permits(), 7 + 10 + 11 + 12);
        drop(second);
        assert_eq!(buffer.available_permits(), 7 + 10 + 11 + 12 + 13 + 14);
    }
}
