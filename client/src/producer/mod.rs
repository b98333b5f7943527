//! [`Producer`]: batching, partitioning and retrying sends.
//!
//! A send whose topic's partition count is known is placed (explicit partition, murmur2
//! of the key, or sticky for keyless records) and added to its batch in the
//! [`accumulator`] on the sending thread, under a lock shared with a background task (the
//! *dispatcher*), as Kafka's `RecordAccumulator` does. Any other send (its topic not yet
//! looked up, or a partition beyond the known count) is queued to the dispatcher as a
//! command, which looks it up; while such commands are queued, later sends queue behind
//! them. So the order of `send` calls is the order of the records in their partition,
//! whenever the returned futures are awaited. The dispatcher, woken when a batch opens or
//! fills, starts one request task per partition with sendable batches; the task retries
//! retriable errors with backoff, completes the records' futures, and reports back so the
//! partition's next request can go.

pub(crate) mod accumulator;
mod pool;
mod sender;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use crate::TopicPartition;
use crate::admin::Admin;
use crate::connection::{GrpcClient, connect_channel, grpc_client};
use crate::error::{ClientError, Result};
use crate::hash::FastMap;
use crate::partitioner::{StickyPartitioner, partition_for_key};
use accumulator::{Accumulator, Batch, PendingRecord};
use sender::Sender;
use tonic::transport::Channel;

pub use fjord_protocol::Compression;

/// When the broker acknowledges a produce request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acks {
    /// acks=0: do not wait; records get no offset (-1).
    None,
    /// acks=1: after the leader's append.
    Leader,
    /// acks=all: after the batch is durable on every in-sync replica.
    #[default]
    All,
}

/// Producer settings. `ProducerConfig::default()`: acks all, linger 5 ms, 16 KiB batches,
/// no compression, 5 retries 100 ms apart, 1,024 requests of up to 1 MiB in flight
/// per partition (32 MiB of records in all at most).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerConfig {
    pub acks: Acks,
    /// How long a batch waits for more records before it is sent.
    pub linger_ms: u64,
    /// A batch is sent once it holds this many bytes.
    pub batch_bytes: usize,
    pub compression: Compression,
    /// How many times a request failing with a retriable error is tried again.
    pub retries: u32,
    /// The wait before each retry.
    pub retry_backoff_ms: u64,
    /// Kafka's `buffer.memory`: bytes of records queued or in flight at most; more
    /// sends wait for room.
    pub buffer_memory: usize,
    /// Kafka's `max.block.ms`: how long a send waits for room in the buffer before it
    /// fails with [`ClientError::BufferFull`].
    pub max_block_ms: u64,
    /// Kafka's `max.in.flight.requests.per.connection`: unanswered requests per
    /// partition at most. They travel on one stream that the broker appends in order
    /// and stops at the first failure, so retries keep the send order; after a lost
    /// connection some records may be written twice (at least once).
    ///
    /// 1,024 by default (Java's client has 5, librdkafka 1,000,000; the bytes in flight
    /// are bounded by `buffer_memory` either way). With acks=all an answer waits for an
    /// fsync, and this project's VM holds one for up to half a second now and then: with
    /// too few requests in flight the producer stopped sending, and every record of the
    /// hold arrived late at the consumers, who see records once appended, not once
    /// fsync'd. `fjord perf e2e` at 50 MB/s makes about 1,800 requests a second, so a
    /// 500 ms hold meets about 900. Alternating runs with disk holds of 140–555 ms: p99
    /// 9.7–257 ms with 32 in flight, 1.3–12.6 ms with 1,024. The broker appends up to
    /// 4,096 requests of a stream (64 MiB of acks=all records) ahead of their fsyncs; the
    /// rest wait in the HTTP/2 window. The price: after a lost connection or a request
    /// timeout, every request in flight is sent again, so up to `buffer_memory` of
    /// records may be written twice.
    pub max_in_flight: usize,
    /// The most one produce request carries (Kafka's `max.request.size`): the batches
    /// of a partition ready to go share requests up to this size (never less than
    /// `batch_bytes`; a larger batch goes alone).
    pub request_bytes: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::All,
            linger_ms: 5,
            batch_bytes: 16 * 1024,
            compression: Compression::None,
            retries: 5,
            retry_backoff_ms: 100,
            buffer_memory: 32 * 1024 * 1024,
            max_block_ms: 60_000,
            max_in_flight: 1024,
            request_bytes: 1024 * 1024,
        }
    }
}

/// Where a record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMetadata {
    pub partition: u32,
    /// -1 with [`Acks::None`].
    pub offset: i64,
}

/// A record to send, with every optional field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerRecord {
    pub topic: String,
    /// `None`: chosen by the partitioner.
    pub partition: Option<u32>,
    pub key: Option<Bytes>,
    /// `None` is a tombstone.
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Creation time (ms since the epoch); `None`: now.
    pub timestamp_ms: Option<i64>,
}

/// Commands handled in one go before the dispatcher looks at completions and timers.
const COMMANDS_PER_TURN: usize = 1024;

/// A callback of [`Producer::send_with`].
pub type SendCallback = Box<dyn FnOnce(Result<RecordMetadata>) + Send>;

/// Where a record's outcome goes.
enum Outcome {
    Future(oneshot::Sender<Result<RecordMetadata>>),
    Callback(SendCallback),
}

/// Where a record's outcome goes. (Its share of the buffer is held by its batch: see
/// [`accumulator::Room`].)
struct Reply {
    to: Outcome,
}

impl Reply {
    fn send(self, result: Result<RecordMetadata>) {
        match self.to {
            // A dropped future does not want the outcome.
            Outcome::Future(tx) => drop(tx.send(result)),
            // A panicking callback must not take the partition's sender task with it
            // (its other records would never be answered, and flush would wait forever).
            Outcome::Callback(callback) => {
                let call = std::panic::AssertUnwindSafe(|| callback(result));
                if std::panic::catch_unwind(call).is_err() {
                    tracing::error!("a send_with callback panicked");
                }
            }
        }
    }
}

enum Command {
    Send {
        topic: String,
        partition: Option<u32>,
        record: PendingRecord,
        reply: Reply,
    },
    Flush(oneshot::Sender<()>),
}

/// What the producer's handles and its dispatcher share. A send whose topic's partition
/// count is known is placed and added to its batch on the sending thread, as in Kafka's
/// `RecordAccumulator`, without a command to the dispatcher, its wake-up, and the frees
/// of the command on the dispatcher's thread; the dispatcher hears only of batches that
/// opened or filled.
struct Shared {
    acc: Accumulator<Reply>,
    sticky: StickyPartitioner,
    /// A partition of the last topic whose sticky partition was looked up (its name kept
    /// for the next lookup).
    probe: TopicPartition,
    /// Partition counts per topic (looked up by the dispatcher).
    counts: FastMap<String, u32>,
    /// The dispatcher has ended: records go no more into batches that nobody will send.
    closed: bool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

/// The shared state. A panic while it is held leaves it whole (a batch's buffer grows
/// before a record is written into it), so a poisoned lock is taken as it is.
fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What became of a send offered to [`Shared`].
enum Appended {
    /// It is in its batch; `true` when a batch opened or filled (news for the dispatcher).
    Here(bool),
    /// It needs the dispatcher.
    NotHere(Command),
}

impl Shared {
    /// Adds a send to its batch if that needs no lookup: the topic's partition count is
    /// known (and covers an explicit partition). Tells whether a batch opened or filled.
    /// Else hands the command back, as any other command.
    fn append_known(&mut self, command: Command) -> Appended {
        if self.closed {
            return Appended::NotHere(command);
        }
        let command = match self.join_sticky_batch(command) {
            Appended::NotHere(command) => command,
            here => return here,
        };
        let count = match &command {
            Command::Send {
                topic, partition, ..
            } => match (self.counts.get(topic), partition) {
                (Some(&count), Some(p)) if *p < count => Some(count),
                (Some(&count), None) => Some(count),
                _ => None,
            },
            Command::Flush(_) => None,
        };
        let Some(count) = count else {
            return Appended::NotHere(command);
        };
        let Command::Send {
            topic,
            partition,
            record,
            reply,
        } = command
        else {
            unreachable!("a count only for a send");
        };
        Appended::Here(self.add(topic, partition, record, reply, count, Instant::now))
    }

    /// Adds a keyless record to the open batch that its topic's keyless records stick
    /// to, if it fits there: two map lookups, and no clock reading. Tells whether that
    /// filled the batch. Else hands the command back.
    /// (A sticky partition exists only while the topic's partition count is known and
    /// covers it: the partitioner forgets a topic whose count changes or goes stale.)
    fn join_sticky_batch(&mut self, command: Command) -> Appended {
        let sticking = match &command {
            Command::Send {
                topic,
                partition: None,
                record,
                ..
            } if record.key.is_none() => self.sticky.sticking_to(topic),
            _ => None,
        };
        let Some((partition, batch)) = sticking else {
            return Appended::NotHere(command);
        };
        let Command::Send {
            topic,
            record,
            reply,
            ..
        } = command
        else {
            unreachable!("matched above");
        };
        aim(&mut self.probe, &topic, partition);
        match self.acc.append_to_open(&self.probe, batch, record, reply) {
            Ok(filled) => Appended::Here(filled),
            Err((record, reply)) => Appended::NotHere(Command::Send {
                topic,
                partition: None,
                record,
                reply,
            }),
        }
    }

    /// Places a record (explicit partition, murmur2 of its key, or sticky) of a topic with
    /// `count` partitions (an explicit `partition` is below it) and adds it to the
    /// partition's batch. Tells whether a batch opened or filled. `now` is read only if a
    /// batch opens.
    fn add(
        &mut self,
        topic: String,
        partition: Option<u32>,
        record: PendingRecord,
        reply: Reply,
        count: u32,
        now: impl FnOnce() -> Instant,
    ) -> bool {
        let keyless = record.key.is_none();
        let partition = match (partition, &record.key) {
            (Some(p), _) => p,
            (None, Some(key)) => partition_for_key(key, count),
            (None, None) => {
                let (acc, probe, size) = (&self.acc, &mut self.probe, record.size());
                self.sticky.partition(&topic, count, |p| {
                    aim(probe, &topic, p);
                    // A record that would not fit starts a new batch: time to move on.
                    acc.open_batch_with_room(probe, size)
                })
            }
        };
        let tp = TopicPartition { topic, partition };
        let (batch, news) = self.acc.append_telling(&tp, record, reply, now);
        if keyless {
            self.sticky.joined(&tp.topic, partition, batch);
        }
        news
    }
}

/// Points `probe` at a partition of `topic`, copying the name only when it changes: the
/// partitions asked about are named without a new string per record.
fn aim(probe: &mut TopicPartition, topic: &str, partition: u32) {
    if probe.topic != topic {
        topic.clone_into(&mut probe.topic);
    }
    probe.partition = partition;
}

/// Sends records in batches. Cheap to clone (clones share the batches and the
/// connection). Dropping every clone sends what is pending in the background; call
/// [`Producer::flush`] (or [`Producer::close`]) to wait for it.
#[derive(Debug, Clone)]
pub struct Producer {
    intake: Intake,
    /// `buffer_memory` bytes of permits.
    room: Arc<tokio::sync::Semaphore>,
    max_block: Duration,
    buffer_memory: usize,
}

/// Where a producer's sends go: into their batches on the sending thread when no lookup
/// is needed, else to the dispatcher.
#[derive(Debug, Clone)]
struct Intake {
    commands: mpsc::UnboundedSender<Command>,
    /// Send commands queued and not yet handled by the dispatcher: while there are any,
    /// a record must queue behind them rather than join a batch itself.
    unhandled: Arc<AtomicUsize>,
    /// The batches and the partitioners' state, shared with the dispatcher.
    shared: Arc<Mutex<Shared>>,
    /// Wakes the dispatcher when a batch opened (a new linger deadline) or filled.
    wake: Arc<Notify>,
}

impl Intake {
    /// Adds a send (whose room is taken) to its batch, or hands it to the dispatcher.
    fn send(&self, room: &tokio::sync::Semaphore, command: Command) {
        if let Some(command) = self.append_here(command) {
            self.queue(room, command);
        }
    }

    /// [`Shared::append_known`] on the sending thread, when the dispatcher has handled
    /// every send queued before (else the record queues behind them, to keep the order of
    /// the calls). Once the dispatcher has ended, `Shared` takes nothing more.
    fn append_here(&self, command: Command) -> Option<Command> {
        if self.unhandled.load(Ordering::Acquire) != 0 {
            return Some(command);
        }
        let appended = lock(&self.shared).append_known(command);
        match appended {
            Appended::Here(news) => {
                if news {
                    self.wake.notify_one();
                }
                None
            }
            Appended::NotHere(command) => Some(command),
        }
    }

    /// Hands a send to the dispatcher, counted in `unhandled` until it is handled. If the
    /// dispatcher is gone, the room goes back and the reply is dropped: the caller hears
    /// ProducerClosed.
    fn queue(&self, room: &tokio::sync::Semaphore, command: Command) {
        self.unhandled.fetch_add(1, Ordering::AcqRel);
        if let Err(unsent) = self.commands.send(command)
            && let Command::Send { record, .. } = unsent.0
        {
            self.unhandled.fetch_sub(1, Ordering::AcqRel);
            room.add_permits(record.room as usize);
        }
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Send {
                topic, partition, ..
            } => write!(f, "Send({topic}, {partition:?})"),
            Command::Flush(_) => write!(f, "Flush"),
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Producer {
    /// Connects to the broker at `addr` and starts the dispatcher task (on the current
    /// tokio runtime).
    pub async fn connect(addr: &str, config: ProducerConfig) -> Result<Producer> {
        let channel = connect_channel(addr).await?;
        Ok(Producer::start(channel, config))
    }

    fn start(channel: Channel, config: ProducerConfig) -> Producer {
        let client = grpc_client(channel.clone());
        let buffer_memory = config
            .buffer_memory
            .clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        let room = Arc::new(tokio::sync::Semaphore::new(buffer_memory));
        let max_block = Duration::from_millis(config.max_block_ms);
        let (commands, rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        let shared = Arc::new(Mutex::new(Shared {
            acc: Accumulator::new(
                config.batch_bytes,
                Duration::from_millis(config.linger_ms),
                config.request_bytes.max(config.batch_bytes),
                config.max_in_flight,
                // Idle buffers of batches that `buffer_memory` bounded while they were in
                // use (without compression, and up to 1 MiB batches: a compressed batch
                // is a new buffer, and a larger one grows past what the pool keeps).
                buffer_memory,
            )
            .giving_room_to(Arc::clone(&room))
            .compressing(config.compression != Compression::None),
            sticky: StickyPartitioner::new(seed),
            probe: TopicPartition::new("", 0),
            counts: FastMap::default(),
            closed: false,
        }));
        let (unhandled, wake) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
        let dispatcher = Dispatcher {
            shared: Arc::clone(&shared),
            unhandled: Arc::clone(&unhandled),
            wake: Arc::clone(&wake),
            client,
            channel,
            config,
            unknown: FastMap::default(),
            flush_waiters: Vec::new(),
            senders: FastMap::default(),
            done_tx,
            done_rx,
        };
        tokio::spawn(dispatcher.run(rx));
        Producer {
            intake: Intake {
                commands,
                unhandled,
                shared,
                wake,
            },
            room,
            max_block,
            buffer_memory,
        }
    }

    /// Sends a record to the partition the partitioner picks. The future resolves once
    /// the record's batch is acknowledged, with its partition and offset.
    pub fn send(
        &self,
        topic: &str,
        key: Option<Bytes>,
        value: Option<Bytes>,
        headers: Vec<(String, Option<Bytes>)>,
    ) -> impl Future<Output = Result<RecordMetadata>> + Send + 'static + use<> {
        self.send_record(ProducerRecord {
            topic: topic.to_string(),
            partition: None,
            key,
            value,
            headers,
            timestamp_ms: None,
        })
    }

    /// [`Producer::send`] to an explicit partition.
    pub fn send_to_partition(
        &self,
        topic: &str,
        partition: u32,
        key: Option<Bytes>,
        value: Option<Bytes>,
        headers: Vec<(String, Option<Bytes>)>,
    ) -> impl Future<Output = Result<RecordMetadata>> + Send + 'static + use<> {
        self.send_record(ProducerRecord {
            topic: topic.to_string(),
            partition: Some(partition),
            key,
            value,
            headers,
            timestamp_ms: None,
        })
    }

    /// Sends a record with every field given. The record is queued before this returns:
    /// records of one partition are written in the order of these calls.
    pub fn send_record(
        &self,
        record: ProducerRecord,
    ) -> impl Future<Output = Result<RecordMetadata>> + Send + 'static + use<> {
        let (tx, rx) = oneshot::channel();
        let queued = self.queue(record, Outcome::Future(tx));
        async move {
            if let Some(waiting) = queued {
                waiting.await?;
            }
            rx.await.unwrap_or(Err(ClientError::ProducerClosed))
        }
    }

    /// Sends a record and calls `callback` with its outcome once its batch is answered
    /// (Kafka's `send(record, callback)`), from the producer's own task: keep it short.
    /// Cheaper than [`Producer::send_record`]'s future when records are many. Returns
    /// once the record is queued (waiting, up to `max_block_ms`, for room in the
    /// buffer): records of one partition are written in the order of these calls.
    pub async fn send_with(
        &self,
        record: ProducerRecord,
        callback: impl FnOnce(Result<RecordMetadata>) + Send + 'static,
    ) -> Result<()> {
        match self.queue(record, Outcome::Callback(Box::new(callback))) {
            Some(waiting) => waiting.await,
            None => Ok(()),
        }
    }

    /// Queues a record now if the buffer has room; else returns what queues it once
    /// there is room (or fails after `max_block_ms`).
    fn queue(
        &self,
        record: ProducerRecord,
        to: Outcome,
    ) -> Option<impl Future<Output = Result<()>> + Send + 'static + use<>> {
        let mut input = PendingRecord {
            timestamp_ms: record.timestamp_ms.unwrap_or_else(now_ms),
            key: record.key,
            value: record.value,
            headers: record.headers,
            room: 0,
        };
        let want = input.size().min(self.buffer_memory) as u32;
        input.room = want;
        let command = Command::Send {
            topic: record.topic,
            partition: record.partition,
            record: input,
            reply: Reply { to },
        };
        // Room now: queued before this returns, so call order is write order. No room:
        // wait (up to max_block_ms) for acknowledgements to free some. The permits are
        // taken out of the semaphore here and given back by the record's batch (one
        // release per batch, not per record).
        match self.room.try_acquire_many(want) {
            Ok(permit) => {
                permit.forget();
                self.intake.send(&self.room, command);
                None
            }
            Err(_) => {
                let (room, intake, max_block) =
                    (self.room.clone(), self.intake.clone(), self.max_block);
                Some(async move {
                    match tokio::time::timeout(max_block, room.acquire_many(want)).await {
                        Ok(Ok(permit)) => permit.forget(),
                        Ok(Err(_)) => return Err(ClientError::ProducerClosed),
                        Err(_) => {
                            return Err(ClientError::BufferFull {
                                waited_ms: max_block.as_millis() as u64,
                            });
                        }
                    }
                    intake.send(&room, command);
                    Ok(())
                })
            }
        }
    }

    /// Sends every record queued so far without waiting for linger, and waits until all
    /// of them are acknowledged or failed (each one's own future tells which).
    pub async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.intake
            .commands
            .send(Command::Flush(tx))
            .map_err(|_| ClientError::ProducerClosed)?;
        rx.await.map_err(|_| ClientError::ProducerClosed)
    }

    /// Flushes, then drops this handle.
    pub async fn close(self) -> Result<()> {
        self.flush().await
    }
}

/// What a partition's sender reports when a request is done (either way).
struct Done {
    tp: TopicPartition,
    ids: Vec<u64>,
    /// The partition or topic was not found: the cached partition count is stale.
    stale_metadata: bool,
}

struct Dispatcher {
    client: GrpcClient,
    /// The connection, for the partitions' produce streams.
    channel: Channel,
    config: ProducerConfig,
    /// The batches and the sticky partitioner, shared with the producer's handles. Never
    /// held across an await.
    shared: Arc<Mutex<Shared>>,
    /// Send commands queued and not yet handled (see [`Producer`]).
    unhandled: Arc<AtomicUsize>,
    /// Rung when a handle opened or filled a batch.
    wake: Arc<Notify>,
    /// Topics whose lookup failed lately, with the error and until when it stands.
    unknown: FastMap<String, (ClientError, Instant)>,
    /// Flushes waiting for every batch with an id below theirs.
    flush_waiters: Vec<(u64, oneshot::Sender<()>)>,
    /// Each partition's sender task, fed the batches of one request at a time.
    senders: FastMap<TopicPartition, mpsc::UnboundedSender<Vec<Batch<Reply>>>>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
}

impl Drop for Dispatcher {
    /// However the task ends (every handle dropped, a panic, its runtime shutting down),
    /// the records still in batches hear ProducerClosed rather than wait for the last
    /// handle to go, and the handles stop adding to batches.
    fn drop(&mut self) {
        let unsent = {
            let mut shared = lock(&self.shared);
            shared.closed = true;
            shared.acc.take_unsent()
        };
        for batch in unsent {
            sender::fail(batch, ClientError::ProducerClosed);
        }
    }
}

impl Dispatcher {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut closing = false;
        loop {
            let deadline = lock(&self.shared).acc.next_deadline();
            tokio::select! {
                biased;
                Some(done) = self.done_rx.recv() => {
                    let mut shared = lock(&self.shared);
                    shared.acc.complete(&done.tp, &done.ids);
                    if done.stale_metadata {
                        shared.counts.remove(&done.tp.topic);
                        shared.sticky.forget(&done.tp.topic);
                    }
                }
                command = commands.recv(), if !closing => match command {
                    Some(command) => {
                        // One clock reading per turn: the records of a turn join their
                        // batches within microseconds of each other.
                        let now = Instant::now();
                        self.take(command, now).await;
                        for _ in 1..COMMANDS_PER_TURN {
                            let Ok(command) = commands.try_recv() else { break };
                            self.take(command, now).await;
                        }
                    }
                    None => closing = true,
                },
                () = self.wake.notified() => {}
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)),
                    if deadline.is_some() => {}
            }
            let force_below = if closing {
                u64::MAX
            } else {
                self.flush_waiters.iter().map(|w| w.0).max().unwrap_or(0)
            };
            let ready = lock(&self.shared).acc.drain(Instant::now(), force_below);
            for (tp, batches) in ready {
                self.send(tp, batches);
            }
            let shared = lock(&self.shared);
            for (_, tx) in self
                .flush_waiters
                .extract_if(.., |w| shared.acc.completed_below(w.0))
            {
                let _ = tx.send(());
            }
            if closing && shared.acc.is_idle() {
                break;
            }
        }
    }

    /// Handles one command off the channel: a send that needs no lookup is added before
    /// the async [`Dispatcher::handle`] (whose state machine the common record would
    /// otherwise pay for). A send stops counting as unhandled once its record is in a
    /// batch (or answered).
    async fn take(&mut self, command: Command, now: Instant) {
        let is_send = matches!(command, Command::Send { .. });
        let appended = lock(&self.shared).append_known(command);
        if let Appended::NotHere(command) = appended {
            self.handle(command, now).await;
        }
        if is_send {
            self.unhandled.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Hands one request's batches to the partition's sender task (started on first use).
    fn send(&mut self, tp: TopicPartition, batches: Vec<Batch<Reply>>) {
        let sender = self.senders.entry(tp.clone()).or_insert_with_key(|tp| {
            let (tx, rx) = mpsc::unbounded_channel();
            let sender = Sender {
                channel: self.channel.clone(),
                pool: lock(&self.shared).acc.pool().clone(),
                config: self.config.clone(),
                tp: tp.clone(),
                done: self.done_tx.clone(),
            };
            tokio::spawn(sender.run(rx));
            tx
        });
        // The task lives until this sender is dropped (with the dispatcher), unless it
        // panicked: then its records fail rather than wait forever.
        if let Err(unsent) = sender.send(batches) {
            self.senders.remove(&tp);
            let ids: Vec<u64> = unsent.0.iter().map(|b| b.id).collect();
            for batch in unsent.0 {
                sender::fail(batch, ClientError::ProducerClosed);
            }
            lock(&self.shared).acc.complete(&tp, &ids);
        }
    }

    async fn handle(&mut self, command: Command, now: Instant) {
        match command {
            Command::Flush(tx) => {
                let shared = lock(&self.shared);
                let below = shared.acc.next_id();
                if shared.acc.completed_below(below) {
                    let _ = tx.send(());
                } else {
                    self.flush_waiters.push((below, tx));
                }
            }
            Command::Send {
                topic,
                partition,
                record,
                reply,
            } => match self.checked_count(&topic, partition).await {
                Ok(count) => {
                    lock(&self.shared).add(topic, partition, record, reply, count, || now);
                }
                Err(e) => {
                    reply.send(Err(e));
                    lock(&self.shared).acc.give_room(record.room);
                }
            },
        }
    }

    /// The partition count of `topic`, looked up if unknown, and looked up again if an
    /// explicit `partition` is beyond it (the topic may have been re-created with more).
    async fn checked_count(&mut self, topic: &str, partition: Option<u32>) -> Result<u32> {
        let mut count = self.partition_count(topic, false).await?;
        if let Some(p) = partition {
            if p >= count {
                count = self.partition_count(topic, true).await?;
            }
            if p >= count {
                return Err(ClientError::UnknownPartition(format!(
                    "topic {topic} has no partition {p} (it has {count})"
                )));
            }
        }
        Ok(count)
    }

    async fn partition_count(&mut self, topic: &str, refresh: bool) -> Result<u32> {
        if !refresh && let Some(&n) = lock(&self.shared).counts.get(topic) {
            return Ok(n);
        }
        if let Some((e, until)) = self.unknown.get(topic) {
            if Instant::now() < *until {
                return Err(e.clone());
            }
            self.unknown.remove(topic);
        }
        let admin = Admin::from_client(self.client.clone());
        let backoff = Duration::from_millis(self.config.retry_backoff_ms);
        let mut attempt = 0;
        let result = loop {
            match admin.partition_count(topic).await {
                Err(e) if e.is_retriable() && attempt < self.config.retries => {
                    attempt += 1;
                    tokio::time::sleep(backoff).await;
                }
                other => break other,
            }
        };
        match result {
            Ok(n) => {
                let mut shared = lock(&self.shared);
                if shared.counts.insert(topic.to_string(), n) != Some(n) {
                    shared.sticky.forget(topic);
                }
                Ok(n)
            }
            Err(e) => {
                let until = Instant::now() + backoff.max(Duration::from_millis(100));
                self.unknown.insert(topic.to_string(), (e.clone(), until));
                Err(e)
            }
        }
    }
}
