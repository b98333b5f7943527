//! [`Consumer`]: reads assigned partitions from positions the caller chooses, or, with a
//! `group_id` and [`Consumer::subscribe`], the partitions its consumer group assigns it
//! (see [`crate::group`]), from the group's committed offsets.
//!
//! Every assigned partition with a position reads through one `Subscribe` stream from the
//! broker: the broker sends batch after batch without waiting to be asked, bounded by
//! HTTP/2 flow control (the stream's window), so it reads and sends the next answers
//! while the caller works through these. A request and its answer per `max_bytes` (the
//! `Fetch` RPC) left the broker and the consumer each idle while the other worked, and
//! replay ran at half the speed. At the end of the partition the broker sends an empty
//! answer with the high watermark. The streams have a connection of their own, apart
//! from the admin and group calls. `poll` takes at most one answer per partition, so
//! what it returns is bounded by `max_bytes` per partition. A seek bumps the partition's
//! *epoch* and drops its stream: the answer of a read already in flight is void. A
//! stream that fails with a retriable error is opened again after a backoff (up to
//! [`FETCH_RETRIES`] failures in a row) before `poll` reports the error.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use fjord_protocol::{BatchIter, decode_batch, v1};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, Stream, StreamExt};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::TopicPartition;
use crate::admin::{Admin, OffsetSpec};
use crate::connection::{GrpcClient, connect};
use crate::error::{ClientError, Result};
use crate::group::{Membership, RebalanceListener};

fn not_in_group() -> ClientError {
    ClientError::InvalidArgument("this consumer is not a group member (no group_id)".into())
}

/// Retriable fetch errors in a row on one partition that are retried silently.
pub const FETCH_RETRIES: u32 = 5;
/// The wait before retrying a fetch that failed with a retriable error.
const FETCH_BACKOFF: Duration = Duration::from_millis(100);

/// Where a group member starts reading a partition its group has no committed offset
/// for (or whose position fell out of the log), as Kafka's `auto.offset.reset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AutoOffsetReset {
    /// The log start offset.
    Earliest,
    /// The high watermark: only new records.
    #[default]
    Latest,
}

/// Consumer settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// The most bytes one answer of a partition's stream carries (at least one whole
    /// batch is always sent); a poll takes at most one answer per partition.
    pub max_bytes: u32,
    /// How long [`Consumer::poll`] waits for records before it returns empty.
    pub max_wait_ms: u32,
    /// The consumer group to join on [`Consumer::subscribe`] (Kafka's `group.id`).
    pub group_id: Option<String>,
    /// Group members only: see [`AutoOffsetReset`].
    pub auto_offset_reset: AutoOffsetReset,
    /// Group members only: commit the positions every `auto_commit_interval_ms` (at the
    /// start of a poll, so what earlier polls returned counts as processed), on a
    /// rebalance and on [`Consumer::close`].
    pub enable_auto_commit: bool,
    pub auto_commit_interval_ms: u64,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            max_bytes: 1024 * 1024,
            max_wait_ms: 500,
            group_id: None,
            auto_offset_reset: AutoOffsetReset::Latest,
            enable_auto_commit: true,
            auto_commit_interval_ms: 5_000,
        }
    }
}

/// Where [`Consumer::seek`] moves a partition's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seek {
    /// The log start offset.
    Beginning,
    /// The high watermark: only records produced from now on.
    End,
    /// An explicit offset.
    Offset(i64),
    /// The first record whose timestamp is at or after this time (ms since the epoch);
    /// the end when there is none.
    Timestamp(i64),
}

/// A record read from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    pub topic: String,
    pub partition: u32,
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// A partition's open `Subscribe` stream.
type ReadStream = tonic::Streaming<v1::FetchResponse>;

#[derive(Debug, Default)]
struct PartitionState {
    /// The next offset to read; `None` until a seek or the first poll (then: the end).
    position: Option<i64>,
    epoch: u64,
    /// The read in flight (waiting for the stream's next answer, or opening it): aborted
    /// when the position moves or the partition goes, which drops its stream.
    in_flight: Option<ReadInFlight>,
    /// The open stream, between reads: it answers from `position` on.
    stream: Option<ReadStream>,
    /// Retriable failures in a row.
    failures: u32,
    /// The high watermark of the last answer.
    high_watermark: Option<i64>,
}

impl PartitionState {
    /// Voids the read in flight and closes the stream: the next read starts afresh.
    fn reset_reads(&mut self) {
        self.in_flight = None;
        self.stream = None;
    }
}

/// A read in flight (a task of its own), aborted when this is dropped (with its
/// partition's state, or on a seek): the runtime drops the task and its stream at once,
/// and the broker stops reading ahead for it.
#[derive(Debug)]
struct ReadInFlight(AbortHandle);

impl Drop for ReadInFlight {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct FetchDone {
    tp: TopicPartition,
    epoch: u64,
    offset: i64,
    result: Result<v1::FetchResponse>,
    /// The stream the answer came from, to read the next one (`None` after an error).
    stream: Option<ReadStream>,
}

/// Reads the partitions assigned to it. Not a group member: the caller chooses what to
/// read ([`Consumer::assign`]) and from where ([`Consumer::seek`]).
pub struct Consumer {
    /// Unary calls: admin, group and commits.
    client: GrpcClient,
    /// The partitions' `Subscribe` streams, on a connection of their own: data read
    /// ahead and not yet polled holds the connection's HTTP/2 window, and on a shared
    /// connection a backlog of a few partitions would leave no window for the answer of
    /// a commit or a heartbeat.
    streams: GrpcClient,
    admin: Admin,
    config: ConsumerConfig,
    assigned: BTreeMap<TopicPartition, PartitionState>,
    /// The reads in flight (each a task); an aborted one yields `None`.
    fetches: FuturesUnordered<BoxFuture<'static, Option<FetchDone>>>,
    /// An error met while other partitions returned records; reported by the next poll.
    pending_error: Option<ClientError>,
    /// Gives every partition state a fresh epoch (a stale fetch never matches).
    epochs: u64,
    group: Option<Membership>,
    listener: Option<Box<dyn RebalanceListener>>,
    /// The positions last committed (auto-commit skips unchanged ones).
    committed: BTreeMap<TopicPartition, i64>,
    last_auto_commit: Instant,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("config", &self.config)
            .field("assigned", &self.assigned)
            .field("fetches_in_flight", &self.fetches.len())
            .field("group", &self.group)
            .finish()
    }
}

impl Consumer {
    /// Connects to the broker at `addr`.
    pub async fn connect(addr: &str, config: ConsumerConfig) -> Result<Consumer> {
        let client = connect(addr).await?;
        let streams = connect(addr).await?;
        Ok(Consumer {
            admin: Admin::from_client(client.clone()),
            client,
            streams,
            config,
            assigned: BTreeMap::new(),
            fetches: FuturesUnordered::new(),
            pending_error: None,
            epochs: 0,
            group: None,
            listener: None,
            committed: BTreeMap::new(),
            last_auto_commit: Instant::now(),
        })
    }

    /// Joins the consumer group of `group_id` (see [`ConsumerConfig`]) subscribed to
    /// `topics`, or changes the subscription. The group's coordinator assigns partitions;
    /// [`Consumer::poll`] takes them up (from the committed offsets) and gives them back.
    pub async fn subscribe(&mut self, topics: &[&str]) -> Result<()> {
        let Some(group_id) = self.config.group_id.clone() else {
            return Err(ClientError::InvalidArgument(
                "subscribe needs a group_id in the consumer's config".into(),
            ));
        };
        if topics.is_empty() {
            return Err(ClientError::InvalidArgument(
                "subscribe to at least one topic".into(),
            ));
        }
        for topic in topics {
            // Fails with UnknownTopic for a topic that does not exist.
            self.admin.partition_count(topic).await?;
        }
        let topics: BTreeSet<String> = topics.iter().map(|t| t.to_string()).collect();
        match &self.group {
            Some(group) => group.subscribe(topics),
            None => {
                self.group = Some(Membership::join(self.client.clone(), &group_id, topics));
            }
        }
        Ok(())
    }

    /// Called when the group moves partitions (see [`RebalanceListener`]).
    pub fn set_rebalance_listener(&mut self, listener: Box<dyn RebalanceListener>) {
        self.listener = Some(listener);
    }

    /// The member id the group's coordinator gave this consumer, once it answered.
    pub fn member_id(&self) -> Option<String> {
        let id = self.group.as_ref()?.member_id();
        (!id.is_empty()).then_some(id)
    }

    /// Group members: whether more partitions may still come or go (the coordinator has
    /// not reached this member's target assignment yet, or `poll` has not applied the
    /// latest assignment).
    pub fn assignment_pending(&self) -> bool {
        self.group.as_ref().is_some_and(|g| {
            let owned: BTreeSet<TopicPartition> = self.assigned.keys().cloned().collect();
            g.is_reconciling(&owned)
        })
    }

    /// Commits the position of every owned partition: everything earlier polls returned
    /// counts as processed (Kafka's `commitSync()`).
    pub async fn commit(&mut self) -> Result<()> {
        let owned = self.assignment();
        self.commit_positions(&owned).await
    }

    /// Commits explicit offsets (each the offset of the next record to read). Offsets
    /// this consumer committed last time are not sent again.
    pub async fn commit_offsets(&mut self, offsets: &[(TopicPartition, i64)]) -> Result<()> {
        let changed: Vec<(TopicPartition, i64, String)> = offsets
            .iter()
            .filter(|(tp, offset)| self.committed.get(tp) != Some(offset))
            .map(|(tp, offset)| (tp.clone(), *offset, String::new()))
            .collect();
        self.commit_offsets_with_metadata(&changed).await
    }

    /// Commits explicit offsets, each with a metadata string kept beside it (as Kafka's
    /// `OffsetAndMetadata`; read back with [`Admin::group_offsets`]).
    pub async fn commit_offsets_with_metadata(
        &mut self,
        offsets: &[(TopicPartition, i64, String)],
    ) -> Result<()> {
        let group = self.group.as_ref().ok_or_else(not_in_group)?;
        group.commit(offsets).await?;
        self.committed
            .extend(offsets.iter().map(|(tp, offset, _)| (tp.clone(), *offset)));
        Ok(())
    }

    /// Commits the positions of `partitions`.
    async fn commit_positions(&mut self, partitions: &[TopicPartition]) -> Result<()> {
        let offsets: Vec<(TopicPartition, i64)> = partitions
            .iter()
            .filter_map(|tp| Some((tp.clone(), self.assigned.get(tp)?.position?)))
            .collect();
        self.commit_offsets(&offsets).await
    }

    /// Leaves the group, so its partitions move to the other members at once: first
    /// `on_revoked` for every owned partition, then (with auto-commit on) a commit.
    /// Without a group: nothing to do.
    pub async fn close(mut self) -> Result<()> {
        if self.group.is_none() {
            return Ok(());
        }
        // As on a rebalance: the callback first (the caller flushes what it built), then
        // the commit, so nothing is committed that was not flushed.
        let owned = self.assignment();
        if !owned.is_empty()
            && let Some(listener) = &mut self.listener
        {
            listener.on_revoked(&owned);
        }
        let committed = if self.config.enable_auto_commit {
            self.commit().await
        } else {
            Ok(())
        };
        let left = match &self.group {
            Some(group) => group.leave().await,
            None => Ok(()),
        };
        committed.and(left)
    }

    /// Applies what the heartbeats brought: gives up revoked partitions (callback, then
    /// commit), then takes up new ones (from the committed offsets), then the callback.
    async fn rebalance(&mut self) -> Result<()> {
        let Some(group) = &self.group else {
            return Ok(());
        };
        let update = group.take_update();
        if let Some(e) = update.error {
            return Err(e);
        }
        if update.lost {
            let owned = self.assignment();
            if !owned.is_empty() {
                if let Some(listener) = &mut self.listener {
                    listener.on_revoked(&owned);
                }
                self.assigned.clear();
                self.committed.clear();
            }
        }
        let Some(target) = update.target else {
            return Ok(());
        };
        let revoked: Vec<TopicPartition> = self
            .assigned
            .keys()
            .filter(|tp| !target.contains(*tp))
            .cloned()
            .collect();
        if !revoked.is_empty() {
            if let Some(listener) = &mut self.listener {
                listener.on_revoked(&revoked);
            }
            if let Err(e) = self.commit_positions(&revoked).await {
                tracing::warn!(error = %e, "commit of revoked partitions failed");
            }
            for tp in &revoked {
                self.assigned.remove(tp);
                self.committed.remove(tp);
            }
        }
        let added: Vec<TopicPartition> = target
            .iter()
            .filter(|tp| !self.assigned.contains_key(*tp))
            .cloned()
            .collect();
        if !added.is_empty() {
            self.take_up(&added).await?;
        }
        if let Some(group) = &self.group {
            group.set_owned(self.assigned.keys().cloned().collect());
        }
        if !added.is_empty()
            && let Some(listener) = &mut self.listener
        {
            listener.on_assigned(&added);
        }
        Ok(())
    }

    /// Starts reading newly assigned partitions from the group's committed offsets, else
    /// from `auto_offset_reset`.
    async fn take_up(&mut self, added: &[TopicPartition]) -> Result<()> {
        let group_id = self.group.as_ref().ok_or_else(not_in_group)?.group_id();
        let committed = self.admin.group_offsets(group_id, added).await?;
        let reset = match self.config.auto_offset_reset {
            AutoOffsetReset::Earliest => OffsetSpec::Earliest,
            AutoOffsetReset::Latest => OffsetSpec::Latest,
        };
        for tp in added {
            let position = match committed.get(tp) {
                Some(c) => c.offset,
                None => Self::lookup(&self.admin, tp, reset).await?,
            };
            self.epochs += 1;
            self.assigned.insert(
                tp.clone(),
                PartitionState {
                    position: Some(position),
                    epoch: self.epochs,
                    ..PartitionState::default()
                },
            );
            if committed.contains_key(tp) {
                self.committed.insert(tp.clone(), position);
            }
        }
        Ok(())
    }

    async fn auto_commit(&mut self) {
        if self.group.is_none()
            || !self.config.enable_auto_commit
            || self.last_auto_commit.elapsed()
                < Duration::from_millis(self.config.auto_commit_interval_ms)
        {
            return;
        }
        self.last_auto_commit = Instant::now();
        if let Err(e) = self.commit().await {
            tracing::warn!(error = %e, "auto-commit failed");
        }
    }

    /// Adds partitions of `topic` to the assignment (empty: every partition). A partition
    /// already assigned keeps its position; a new one starts at the end unless sought.
    pub async fn assign(&mut self, topic: &str, partitions: &[u32]) -> Result<()> {
        let count = self.admin.partition_count(topic).await?;
        let wanted: Vec<u32> = if partitions.is_empty() {
            (0..count).collect()
        } else {
            partitions.to_vec()
        };
        if let Some(&p) = wanted.iter().find(|&&p| p >= count) {
            return Err(ClientError::UnknownPartition(format!(
                "topic {topic} has no partition {p} (it has {count})"
            )));
        }
        for p in wanted {
            self.assigned
                .entry(TopicPartition::new(topic, p))
                .or_default();
        }
        Ok(())
    }

    /// Removes a partition from the assignment (its stream is closed).
    pub fn unassign(&mut self, topic: &str, partition: u32) {
        self.assigned.remove(&TopicPartition::new(topic, partition));
    }

    /// The assigned partitions, sorted.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.assigned.keys().cloned().collect()
    }

    /// Moves the position of an assigned partition.
    pub async fn seek(&mut self, topic: &str, partition: u32, to: Seek) -> Result<()> {
        let tp = TopicPartition::new(topic, partition);
        if !self.assigned.contains_key(&tp) {
            return Err(ClientError::NotAssigned {
                topic: topic.to_string(),
                partition,
            });
        }
        let offset = match to {
            Seek::Offset(n) => n,
            Seek::Beginning => Self::lookup(&self.admin, &tp, OffsetSpec::Earliest).await?,
            Seek::End => Self::lookup(&self.admin, &tp, OffsetSpec::Latest).await?,
            Seek::Timestamp(ms) => {
                Self::lookup(&self.admin, &tp, OffsetSpec::Timestamp(ms)).await?
            }
        };
        let state = self
            .assigned
            .get_mut(&tp)
            .ok_or_else(|| ClientError::NotAssigned {
                topic: topic.to_string(),
                partition,
            })?;
        self.epochs += 1;
        state.position = Some(offset);
        state.epoch = self.epochs;
        state.reset_reads();
        state.failures = 0;
        Ok(())
    }

    /// The offset `spec` names in `tp` (a free function of the admin, so that the
    /// futures of `poll` do not hold `&self`: the consumer is `Send`, not `Sync`).
    async fn lookup(admin: &Admin, tp: &TopicPartition, spec: OffsetSpec) -> Result<i64> {
        let offsets = admin
            .list_partition_offsets(&tp.topic, &[tp.partition], spec)
            .await?;
        let found = offsets
            .into_iter()
            .find(|o| o.partition == tp.partition)
            .ok_or_else(|| {
                ClientError::UnknownPartition(format!(
                    "topic {} has no partition {}",
                    tp.topic, tp.partition
                ))
            })?;
        // No record at or after the time: the end, as Kafka's consumer.
        Ok(found.offset.unwrap_or(found.high_watermark))
    }

    /// The next offset `poll` reads from a partition; `None` if it is not assigned or has
    /// no position yet (neither sought nor polled).
    pub fn position(&self, topic: &str, partition: u32) -> Option<i64> {
        self.assigned
            .get(&TopicPartition::new(topic, partition))?
            .position
    }

    /// The high watermark of the last answer taken for a partition (the broker reads
    /// ahead, so a newer one may be on its way).
    pub fn high_watermark(&self, topic: &str, partition: u32) -> Option<i64> {
        self.assigned
            .get(&TopicPartition::new(topic, partition))?
            .high_watermark
    }

    /// The current high watermark of every assigned partition.
    pub async fn end_offsets(&self) -> Result<BTreeMap<TopicPartition, i64>> {
        let mut by_topic: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        for tp in self.assigned.keys() {
            by_topic.entry(&tp.topic).or_default().push(tp.partition);
        }
        let mut out = BTreeMap::new();
        for (topic, partitions) in by_topic {
            let offsets = self
                .admin
                .list_partition_offsets(topic, &partitions, OffsetSpec::Latest)
                .await?;
            for o in offsets {
                out.insert(TopicPartition::new(topic, o.partition), o.high_watermark);
            }
        }
        Ok(out)
    }

    /// Waits for records from any assigned partition (up to about `max_wait_ms` when
    /// none come) and returns them, each partition's in offset order; positions move past
    /// them. Records before a partition's position (the first batch of a fetch may start
    /// earlier) are skipped, as are control batches.
    pub async fn poll(&mut self) -> Result<Vec<ConsumerRecord>> {
        if let Some(e) = self.pending_error.take() {
            return Err(e);
        }
        self.rebalance().await?;
        self.auto_commit().await;
        let wait = Duration::from_millis(u64::from(self.config.max_wait_ms));
        // A group member wakes up early when the group moves partitions.
        let changed = self.group.as_ref().map(|g| g.changed());
        let group_news = async {
            match &changed {
                Some(changed) => changed.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(group_news);
        if self.assigned.is_empty() {
            let _ = tokio::time::timeout(wait, &mut group_news).await;
            self.rebalance().await?;
            return Ok(Vec::new());
        }
        self.resolve_positions().await?;
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        loop {
            self.start_fetches();
            let next = tokio::time::timeout_at(deadline, self.fetches.next());
            let done = tokio::select! {
                done = next => match done {
                    Ok(Some(Some(done))) => done,
                    Ok(Some(None)) => continue, // a read voided by a seek
                    Ok(None) | Err(_) => return Ok(out),
                },
                _ = &mut group_news => return Ok(out),
            };
            // The answers already here, at most one per partition (a partition's next
            // read starts below): what a poll returns is bounded.
            let mut result = self.complete(done, &mut out);
            while result.is_ok() {
                match self.fetches.next().now_or_never() {
                    Some(Some(Some(done))) => result = self.complete(done, &mut out),
                    Some(Some(None)) => {}
                    _ => break,
                }
            }
            if let Err(e) = result {
                if out.is_empty() {
                    return Err(e);
                }
                self.pending_error = Some(e);
            }
            if !out.is_empty() {
                // The next reads wait on their streams, which the broker keeps filling
                // while the caller works through these records.
                self.start_fetches();
                return Ok(out);
            }
        }
    }

    /// The records as a stream (endless: it polls again whenever its buffer is empty).
    /// An error is yielded as an item and the stream goes on.
    pub fn into_stream(self) -> impl Stream<Item = Result<ConsumerRecord>> + Send {
        futures_util::stream::unfold(
            (self, VecDeque::new()),
            |(mut consumer, mut buffer)| async move {
                loop {
                    if let Some(record) = buffer.pop_front() {
                        return Some((Ok(record), (consumer, buffer)));
                    }
                    match consumer.poll().await {
                        Ok(records) => buffer.extend(records),
                        Err(e) => return Some((Err(e), (consumer, buffer))),
                    }
                }
            },
        )
    }

    /// Partitions with no position yet start at the end.
    async fn resolve_positions(&mut self) -> Result<()> {
        let unset: Vec<TopicPartition> = self
            .assigned
            .iter()
            .filter(|(_, s)| s.position.is_none())
            .map(|(tp, _)| tp.clone())
            .collect();
        let topics: BTreeSet<&str> = unset.iter().map(|tp| tp.topic.as_str()).collect();
        let mut ends = BTreeMap::new();
        for topic in topics {
            let partitions: Vec<u32> = unset
                .iter()
                .filter(|tp| tp.topic == topic)
                .map(|tp| tp.partition)
                .collect();
            for o in self
                .admin
                .list_partition_offsets(topic, &partitions, OffsetSpec::Latest)
                .await?
            {
                ends.insert(TopicPartition::new(topic, o.partition), o.high_watermark);
            }
        }
        for (tp, end) in ends {
            if let Some(state) = self.assigned.get_mut(&tp)
                && state.position.is_none()
            {
                state.position = Some(end);
            }
        }
        Ok(())
    }

    fn start_fetches(&mut self) {
        for (tp, state) in &mut self.assigned {
            start_fetch(&mut self.fetches, &self.streams, &self.config, tp, state);
        }
    }

    /// Takes in a finished read: its records go to `out` and the position moves.
    fn complete(&mut self, done: FetchDone, out: &mut Vec<ConsumerRecord>) -> Result<()> {
        let Some(state) = self.assigned.get_mut(&done.tp) else {
            return Ok(()); // unassigned since
        };
        if state.epoch != done.epoch {
            return Ok(()); // sought since: that reset the reads
        }
        state.in_flight = None;
        if state.position != Some(done.offset) {
            // Not where this partition reads from: the stream starts again from there.
            state.reset_reads();
            return Ok(());
        }
        // The stream reads on from where this answer ends (gone after an error).
        state.stream = done.stream;
        match done.result {
            Ok(response) => {
                state.failures = 0;
                state.high_watermark = Some(response.high_watermark);
                let next = response.next_offset.max(done.offset);
                state.position = Some(next);
                let before = out.len();
                let decoded = decode_into(&done.tp, &response.records, done.offset, out);
                let last = out[before..].last().map_or(done.offset, |r| r.offset + 1);
                if decoded.is_ok() && last <= next {
                    return Ok(());
                }
                // A bad batch (the records before it were handed out: move past them, so
                // they are not delivered again, and report the error), or records past
                // the broker's next offset: the stream reads from the wrong place, so it
                // is dropped (a new epoch) and the next one starts from here.
                self.epochs += 1;
                state.epoch = self.epochs;
                state.reset_reads();
                state.position = Some(last);
                decoded
            }
            Err(ClientError::OffsetOutOfRange {
                log_start_offset,
                log_end_offset,
                ..
            }) if self.group.is_some() && log_start_offset >= 0 => {
                let to = match self.config.auto_offset_reset {
                    AutoOffsetReset::Earliest => log_start_offset,
                    AutoOffsetReset::Latest => log_end_offset,
                };
                tracing::warn!(topic = %done.tp.topic, partition = done.tp.partition,
                    from = done.offset, to, "position out of range: auto.offset.reset");
                self.epochs += 1;
                state.epoch = self.epochs;
                state.position = Some(to);
                Ok(())
            }
            Err(e) if e.is_retriable() && state.failures < FETCH_RETRIES => {
                tracing::debug!(topic = %done.tp.topic, partition = done.tp.partition,
                    error = %e, "retrying read");
                state.failures += 1;
                Ok(())
            }
            Err(e) => {
                state.failures = 0;
                Err(e)
            }
        }
    }
}

/// Starts `tp`'s next read, from its position, unless one is in flight (or it has no
/// position yet): the next answer of its stream, opened first if it has none (after a
/// backoff if the last read failed).
fn start_fetch(
    fetches: &mut FuturesUnordered<BoxFuture<'static, Option<FetchDone>>>,
    client: &GrpcClient,
    config: &ConsumerConfig,
    tp: &TopicPartition,
    state: &mut PartitionState,
) {
    let Some(offset) = state.position else {
        return;
    };
    if state.in_flight.is_some() {
        return;
    }
    let delay = (state.failures > 0).then_some(FETCH_BACKOFF);
    let stream = state.stream.take();
    let request = v1::SubscribeRequest {
        topic: tp.topic.clone(),
        partition: tp.partition,
        offset,
        max_bytes: config.max_bytes,
    };
    let mut client = client.clone();
    let tp = tp.clone();
    let epoch = state.epoch;
    let read = tokio::spawn(async move {
        let done = |result, stream| FetchDone {
            tp,
            epoch,
            offset,
            result,
            stream,
        };
        let mut stream = match stream {
            Some(stream) => stream,
            None => {
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
                match client.subscribe(request).await {
                    Ok(response) => response.into_inner(),
                    Err(s) => return done(Err(ClientError::from_status(s, Some(offset))), None),
                }
            }
        };
        match stream.message().await {
            Ok(Some(response)) => done(Ok(response), Some(stream)),
            Ok(None) => done(
                Err(ClientError::Unavailable(
                    "the broker ended the partition's stream".into(),
                )),
                None,
            ),
            Err(s) => done(Err(ClientError::from_status(s, Some(offset))), None),
        }
    });
    state.in_flight = Some(ReadInFlight(read.abort_handle()));
    // An aborted read yields None; a read that panicked is a failure of the consumer.
    fetches.push(Box::pin(read.map(|joined| match joined {
        Ok(done) => Some(done),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => None,
    })));
}

/// Decodes the records at or after `from` of whole batches `bytes`.
pub(crate) fn decode_into(
    tp: &TopicPartition,
    bytes: &Bytes,
    from: i64,
    out: &mut Vec<ConsumerRecord>,
) -> Result<()> {
    for header in BatchIter::headers_only(bytes) {
        let header = header?;
        if header.is_control() || header.next_offset() <= from {
            continue;
        }
        // Keys and values are slices of the fetched bytes: no copies.
        for r in decode_batch(&bytes.slice_ref(header.as_bytes()))? {
            if r.offset < from {
                continue;
            }
            out.push(ConsumerRecord {
                topic: tp.topic.clone(),
                partition: tp.partition,
                offset: r.offset,
                timestamp_ms: r.timestamp_ms,
                key: r.key,
                value: r.value,
                headers: r.headers,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjord_protocol::batch::assign_offsets;
    use fjord_protocol::codec::{Compression, RecordInput, encode_batch};

    fn batch(base: i64, values: &[&str]) -> Vec<u8> {
        let records: Vec<RecordInput> = values
            .iter()
            .map(|v| RecordInput::new(Some(b"k".to_vec()), Some(v.as_bytes().to_vec()), 7))
            .collect();
        let mut bytes = encode_batch(&records, Compression::Lz4).unwrap().to_vec();
        assign_offsets(&mut bytes, base, 0);
        bytes
    }

    #[test]
    fn skips_records_before_the_position_in_the_first_batch() {
        let mut bytes = batch(10, &["a", "b", "c"]);
        bytes.extend(batch(13, &["d", "e"]));
        let bytes = Bytes::from(bytes);
        let tp = TopicPartition::new("t", 2);
        let mut out = Vec::new();
        decode_into(&tp, &bytes, 12, &mut out).unwrap();
        let got: Vec<(i64, &[u8])> = out
            .iter()
            .map(|r| (r.offset, r.value.as_deref().unwrap()))
            .collect();
        assert_eq!(got, vec![(12, &b"c"[..]), (13, b"d"), (14, b"e")]);
        assert!(out.iter().all(|r| r.partition == 2 && r.timestamp_ms == 7));
        // A batch wholly before the position is skipped without decoding.
        out.clear();
        decode_into(&tp, &bytes, 13, &mut out).unwrap();
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn a_corrupt_batch_is_a_codec_error() {
        let mut bytes = batch(0, &["a"]);
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        let bytes = Bytes::from(bytes);
        let mut out = Vec::new();
        let e = decode_into(&TopicPartition::new("t", 0), &bytes, 0, &mut out).unwrap_err();
        assert!(matches!(e, ClientError::Codec(_)), "{e:?}");
    }
}
