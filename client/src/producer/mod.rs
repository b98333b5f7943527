//! [`Producer`]: batching, partitioning and retrying sends.
//!
//! `send` only queues a command to a background task (the *dispatcher*), so the order of
//! `send` calls is the order of the records in their partition, whenever the returned
//! futures are awaited. The dispatcher places each record (explicit partition, murmur2 of
//! the key, or sticky for keyless records), adds it to the [`accumulator`], and starts one
//! request task per partition with sendable batches; the task retries retriable errors with
//! backoff, completes the records' futures, and reports back so the partition's next
//! request can go.

pub(crate) mod accumulator;
mod pool;
mod sender;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
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

/// Sends records in batches. Cheap to clone (clones share the batches and the
/// connection). Dropping every clone sends what is pending in the background; call
/// [`Producer::flush`] (or [`Producer::close`]) to wait for it.
#[derive(Debug, Clone)]
pub struct Producer {
    commands: mpsc::UnboundedSender<Command>,
    /// `buffer_memory` bytes of permits.
    room: Arc<tokio::sync::Semaphore>,
    max_block: Duration,
    buffer_memory: usize,
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
        let dispatcher = Dispatcher {
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
            client,
            channel,
            config,
            sticky: StickyPartitioner::new(seed),
            counts: FastMap::default(),
            unknown: FastMap::default(),
            probe: TopicPartition::new("", 0),
            flush_waiters: Vec::new(),
            senders: FastMap::default(),
            done_tx,
            done_rx,
        };
        tokio::spawn(dispatcher.run(rx));
        Producer {
            commands,
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
    ) -> impl Future<Output = Result<RecordMetadata>> + Send + 'static {
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
    ) -> impl Future<Output = Result<RecordMetadata>> + Send + 'static {
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
    ) -> impl Future<Output = Result<RecordMetadata>> + Send + 'static {
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
    ) -> Option<impl Future<Output = Result<()>> + Send + 'static> {
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
                queue_command(&self.commands, &self.room, command);
                None
            }
            Err(_) => {
                let (room, commands, max_block) =
                    (self.room.clone(), self.commands.clone(), self.max_block);
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
                    queue_command(&commands, &room, command);
                    Ok(())
                })
            }
        }
    }

    /// Sends every record queued so far without waiting for linger, and waits until all
    /// of them are acknowledged or failed (each one's own future tells which).
    pub async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Flush(tx))
            .map_err(|_| ClientError::ProducerClosed)?;
        rx.await.map_err(|_| ClientError::ProducerClosed)
    }

    /// Flushes, then drops this handle.
    pub async fn close(self) -> Result<()> {
        self.flush().await
    }
}

/// Hands a send (whose room is taken) to the dispatcher. If the dispatcher is gone, the
/// room goes back and the reply is dropped: the caller hears ProducerClosed.
fn queue_command(
    commands: &mpsc::UnboundedSender<Command>,
    room: &tokio::sync::Semaphore,
    command: Command,
) {
    if let Err(unsent) = commands.send(command)
        && let Command::Send { record, .. } = unsent.0
    {
        room.add_permits(record.room as usize);
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
    acc: Accumulator<Reply>,
    sticky: StickyPartitioner,
    /// Partition counts per topic.
    counts: FastMap<String, u32>,
    /// Topics whose lookup failed lately, with the error and until when it stands.
    unknown: FastMap<String, (ClientError, Instant)>,
    /// A partition of the last topic whose sticky partition was looked up (its name kept
    /// for the next lookup).
    probe: TopicPartition,
    /// Flushes waiting for every batch with an id below theirs.
    flush_waiters: Vec<(u64, oneshot::Sender<()>)>,
    /// Each partition's sender task, fed the batches of one request at a time.
    senders: FastMap<TopicPartition, mpsc::UnboundedSender<Vec<Batch<Reply>>>>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
}

impl Dispatcher {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut closing = false;
        loop {
            let deadline = self.acc.next_deadline();
            tokio::select! {
                biased;
                Some(done) = self.done_rx.recv() => {
                    self.acc.complete(&done.tp, &done.ids);
                    if done.stale_metadata {
                        self.counts.remove(&done.tp.topic);
                        self.sticky.forget(&done.tp.topic);
                    }
                }
                command = commands.recv(), if !closing => match command {
                    Some(command) => {
                        // One clock reading per turn: the records of a turn join their
                        // batches within microseconds of each other.
                        let now = Instant::now();
                        if let Some(command) = self.join_sticky_batch(command) {
                            self.handle(command, now).await;
                        }
                        for _ in 1..COMMANDS_PER_TURN {
                            let Ok(command) = commands.try_recv() else { break };
                            if let Some(command) = self.join_sticky_batch(command) {
                                self.handle(command, now).await;
                            }
                        }
                    }
                    None => closing = true,
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)),
                    if deadline.is_some() => {}
            }
            let force_below = if closing {
                u64::MAX
            } else {
                self.flush_waiters.iter().map(|w| w.0).max().unwrap_or(0)
            };
            for (tp, batches) in self.acc.drain(Instant::now(), force_below) {
                self.send(tp, batches);
            }
            let acc = &self.acc;
            for (_, tx) in self
                .flush_waiters
                .extract_if(.., |w| acc.completed_below(w.0))
            {
                let _ = tx.send(());
            }
            if closing && self.acc.is_idle() {
                break;
            }
        }
    }

    /// Hands one request's batches to the partition's sender task (started on first use).
    fn send(&mut self, tp: TopicPartition, batches: Vec<Batch<Reply>>) {
        let sender = self.senders.entry(tp.clone()).or_insert_with_key(|tp| {
            let (tx, rx) = mpsc::unbounded_channel();
            let sender = Sender {
                channel: self.channel.clone(),
                pool: self.acc.pool().clone(),
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
            self.acc.complete(&tp, &ids);
        }
    }

    async fn handle(&mut self, command: Command, now: Instant) {
        match command {
            Command::Flush(tx) => {
                let below = self.acc.next_id();
                if self.acc.completed_below(below) {
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
            } => {
                let size = record.size();
                let placed = self.place(&topic, partition, record.key.as_deref(), size);
                let partition = match placed.await {
                    Ok(p) => p,
                    Err(e) => {
                        reply.send(Err(e));
                        self.acc.give_room(record.room);
                        return;
                    }
                };
                let keyless = record.key.is_none();
                let tp = TopicPartition { topic, partition };
                let batch = self.acc.append(&tp, record, reply, now);
                if keyless {
                    self.sticky.joined(&tp.topic, partition, batch);
                }
            }
        }
    }

    /// Adds a keyless record to the open batch that its topic's keyless records stick to,
    /// if it fits there: two map lookups, outside the async [`Dispatcher::handle`],
    /// instead of the five of the way through [`Dispatcher::place`] and
    /// [`Accumulator::append`]. Else hands the command back, as does any other command.
    /// (A sticky partition exists only while the topic's partition count is known and
    /// covers it: the partitioner forgets a topic whose count changes or goes stale.)
    fn join_sticky_batch(&mut self, command: Command) -> Option<Command> {
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
            return Some(command);
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
        if self.probe.topic != topic {
            topic.clone_into(&mut self.probe.topic);
        }
        self.probe.partition = partition;
        let (record, reply) = self
            .acc
            .append_to_open(&self.probe, batch, record, reply)
            .err()?;
        Some(Command::Send {
            topic,
            partition: None,
            record,
            reply,
        })
    }

    /// The partition of a record (of `size` encoded bytes at most).
    async fn place(
        &mut self,
        topic: &str,
        partition: Option<u32>,
        key: Option<&[u8]>,
        size: usize,
    ) -> Result<u32> {
        let mut count = self.partition_count(topic, false).await?;
        if let Some(p) = partition {
            if p >= count {
                // The topic may have been re-created with more partitions.
                count = self.partition_count(topic, true).await?;
            }
            if p >= count {
                return Err(ClientError::UnknownPartition(format!(
                    "topic {topic} has no partition {p} (it has {count})"
                )));
            }
            return Ok(p);
        }
        Ok(match key {
            Some(key) => partition_for_key(key, count),
            None => {
                // The partitions asked about, named without a new string per record.
                if self.probe.topic != topic {
                    topic.clone_into(&mut self.probe.topic);
                }
                let (acc, probe) = (&self.acc, &mut self.probe);
                self.sticky.partition(topic, count, |p| {
                    probe.partition = p;
                    // A record that would not fit starts a new batch: time to move on.
                    acc.open_batch_with_room(probe, size)
                })
            }
        })
    }

    async fn partition_count(&mut self, topic: &str, refresh: bool) -> Result<u32> {
        if !refresh && let Some(&n) = self.counts.get(topic) {
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
                if self.counts.insert(topic.to_string(), n) != Some(n) {
                    self.sticky.forget(topic);
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
