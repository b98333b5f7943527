//! The native gRPC API (`fjord.v1.Fjord`), one handler per RPC.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fjord_protocol::v1::{self, fjord_server::Fjord};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::cluster::{TopicError, TopicManager};
use crate::group::coordinator::CoordinatorError;
use crate::group::{GroupError, GroupState, Heartbeat, TopicPartition};
use crate::partition::{Acks, DurableWait, OffsetSpec, Partition};
use crate::storage::StorageError;

use super::metrics::Metrics;
use super::stopped;

/// The largest `max_bytes` of one fetch.
pub const FETCH_BYTES_MAX: u32 = crate::config::MESSAGE_BYTES_MAX as u32;
/// The longest long poll.
pub const FETCH_WAIT_MS_MAX: u32 = 60_000;

#[derive(Clone)]
pub struct FjordService {
    pub topics: Arc<TopicManager>,
    pub groups: Arc<crate::group::coordinator::Coordinator>,
    pub metrics: Arc<Metrics>,
    /// Becomes true when the broker shuts down: long polls return and subscriptions end,
    /// so that graceful shutdown does not wait on them.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

pub(super) fn storage_status(e: StorageError) -> Status {
    match e {
        StorageError::OffsetOutOfRange {
            offset,
            log_start_offset,
            log_end_offset,
        } => {
            let mut status = Status::out_of_range(format!(
                "offset {offset} is out of range: the log holds \
                 [{log_start_offset}, {log_end_offset})"
            ));
            let md = status.metadata_mut();
            md.insert(
                "fjord-log-start-offset",
                log_start_offset.to_string().parse().expect("ascii"),
            );
            md.insert(
                "fjord-log-end-offset",
                log_end_offset.to_string().parse().expect("ascii"),
            );
            with_kind(status, "offset-out-of-range")
        }
        StorageError::BatchTooLarge { .. } => {
            with_kind(Status::invalid_argument(e.to_string()), "record-too-large")
        }
        StorageError::InvalidBatch { .. } => {
            with_kind(Status::invalid_argument(e.to_string()), "corrupt-record")
        }
        StorageError::InvalidConfig { .. } => {
            with_kind(Status::invalid_argument(e.to_string()), "invalid-config")
        }
        StorageError::DeleteBeyondHighWatermark {
            offset,
            high_watermark,
        } => {
            let mut status = Status::out_of_range(format!(
                "cannot delete records before {offset}: above the high watermark \
                 {high_watermark}"
            ));
            status.metadata_mut().insert(
                "fjord-high-watermark",
                high_watermark.to_string().parse().expect("ascii"),
            );
            with_kind(status, "offset-out-of-range")
        }
        StorageError::OutOfOrderSequence { .. }
        | StorageError::InvalidProducerEpoch { .. }
        | StorageError::DuplicateSequence { .. } => with_kind(
            Status::failed_precondition(e.to_string()),
            "producer-sequence",
        ),
        StorageError::LogOffline { .. } => Status::unavailable(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

fn topic_status(e: TopicError) -> Status {
    let status = match e {
        TopicError::UnknownTopic(_) => with_kind(Status::not_found(e.to_string()), "unknown-topic"),
        TopicError::UnknownPartition { .. } => {
            with_kind(Status::not_found(e.to_string()), "unknown-partition")
        }
        TopicError::AlreadyExists(_) => {
            with_kind(Status::already_exists(e.to_string()), "topic-exists")
        }
        TopicError::InvalidName { .. }
        | TopicError::InvalidPartitions(_)
        | TopicError::PartitionsNotIncreased { .. } => {
            with_kind(Status::invalid_argument(e.to_string()), "invalid-topic")
        }
        TopicError::Config(_) => {
            with_kind(Status::invalid_argument(e.to_string()), "invalid-config")
        }
        TopicError::Storage(e) => storage_status(e),
    };
    tracing::warn!(code = ?status.code(), message = status.message(), "request refused");
    status
}

fn group_status(e: CoordinatorError) -> Status {
    let status = match e {
        CoordinatorError::Group(e) => match e {
            GroupError::UnknownMember(_) => {
                with_kind(Status::not_found(e.to_string()), "unknown-member-id")
            }
            GroupError::FencedMemberEpoch { .. } => with_kind(
                Status::failed_precondition(e.to_string()),
                "fenced-member-epoch",
            ),
            GroupError::NotOwner { .. } => {
                with_kind(Status::failed_precondition(e.to_string()), "not-owner")
            }
            GroupError::NotEmpty(_) => with_kind(
                Status::failed_precondition(e.to_string()),
                "group-not-empty",
            ),
            GroupError::InconsistentProtocol(_) => with_kind(
                Status::failed_precondition(e.to_string()),
                "inconsistent-group-protocol",
            ),
            // Answers of the classic protocol of Kafka clients; not met through gRPC.
            GroupError::MemberIdRequired(_)
            | GroupError::IllegalGeneration { .. }
            | GroupError::RebalanceInProgress(_)
            | GroupError::FencedInstance(_)
            | GroupError::InvalidSessionTimeout(_) => Status::failed_precondition(e.to_string()),
        },
        CoordinatorError::UnknownGroup(_) => {
            with_kind(Status::not_found(e.to_string()), "unknown-group")
        }
        CoordinatorError::Topic(e) => return topic_status(e),
        CoordinatorError::Storage(e) => storage_status(e),
        CoordinatorError::Record(e) => Status::internal(e.to_string()),
        CoordinatorError::InvalidOffset { .. } => Status::invalid_argument(e.to_string()),
        CoordinatorError::RebalanceTimeout { .. } => {
            with_kind(Status::aborted(e.to_string()), "rebalance-timeout")
        }
    };
    refuse(status)
}

fn to_tp(p: v1::GroupPartition) -> TopicPartition {
    TopicPartition::new(&p.topic, p.partition)
}

fn from_tp(tp: &TopicPartition) -> v1::GroupPartition {
    v1::GroupPartition {
        topic: tp.topic.clone(),
        partition: tp.partition,
    }
}

pub(super) fn refuse(status: Status) -> Status {
    tracing::warn!(code = ?status.code(), message = status.message(), "request refused");
    status
}

impl FjordService {
    /// Appends one produce request. `pipelined` (a produce stream): an acks=all append
    /// returns at once with what waits for its fsync (the answer is due after it);
    /// otherwise the fsync is waited for here, on the durable-offset watch.
    async fn append(
        &self,
        r: v1::ProduceRequest,
        pipelined: bool,
    ) -> Result<(v1::ProduceResponse, Option<DurableWait>), Status> {
        let partition = self.partition(&r.topic, r.partition)?;
        let acks = match v1::Acks::try_from(r.acks) {
            Ok(v1::Acks::Leader) => Acks::Leader,
            Ok(v1::Acks::All) => Acks::All,
            Ok(v1::Acks::None) => Acks::None,
            Err(_) => {
                return Err(refuse(Status::invalid_argument(format!(
                    "unknown acks value {}",
                    r.acks
                ))));
            }
        };
        let bytes = r.records.len() as u64;
        let produced = if pipelined {
            partition.produce_pipelined(r.records, acks).await
        } else {
            partition.produce(r.records, acks).await.map(|p| (p, None))
        };
        let (produced, durable) = produced.map_err(|e| refuse(storage_status(e)))?;
        let (info, log_start_offset) = (produced.info, produced.log_start_offset);
        self.metrics
            .produced(&r.topic, bytes, info.last_offset - info.first_offset + 1);
        let answer = v1::ProduceResponse {
            base_offset: info.first_offset,
            last_offset: info.last_offset,
            log_append_time_ms: info.log_append_time_ms.unwrap_or(-1),
            log_start_offset,
        };
        Ok((answer, durable))
    }

    fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>, Status> {
        self.topics
            .partition(topic, partition)
            .map_err(topic_status)
    }
}

/// Runs `work` (which takes log locks or does I/O) on a blocking thread, never on the
/// async runtime's workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Status::internal(e.to_string()))?
}

/// How long a `Subscribe` stream at the end of its partition waits for appends before it
/// sends another empty answer (a keepalive that carries the high watermark).
const SUBSCRIBE_IDLE_WAIT: Duration = Duration::from_secs(30);

/// The largest gRPC request (Kafka's `socket.request.max.bytes` default).
pub const REQUEST_BYTES_MAX: usize = 100 * 1024 * 1024;

/// Machine-readable error kinds in the `fjord-error` status metadata, so clients need not
/// parse messages.
fn with_kind(mut status: Status, kind: &'static str) -> Status {
    status.metadata_mut().insert(
        "fjord-error",
        tonic::metadata::MetadataValue::from_static(kind),
    );
    status
}

fn next_offset(records: &Bytes, requested: i64) -> i64 {
    let mut next = requested;
    for header in fjord_protocol::BatchIter::headers_only(records).map_while(Result::ok) {
        next = next.max(header.next_offset());
    }
    next
}

type SubscribeStream =
    Pin<Box<dyn Stream<Item = Result<v1::FetchResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Fjord for FjordService {
    async fn create_topic(
        &self,
        request: Request<v1::CreateTopicRequest>,
    ) -> Result<Response<v1::CreateTopicResponse>, Status> {
        let r = request.into_inner();
        let overrides: BTreeMap<String, String> =
            r.configs.into_iter().map(|c| (c.key, c.value)).collect();
        let topics = self.topics.clone();
        let partitions = if r.partitions == 0 {
            u32::MAX
        } else {
            r.partitions
        };
        tokio::task::spawn_blocking(move || {
            let partitions = if partitions == u32::MAX {
                topics.default_partitions()
            } else {
                partitions
            };
            topics.create(&r.name, partitions, overrides)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(topic_status)?;
        Ok(Response::new(v1::CreateTopicResponse {}))
    }

    async fn delete_topic(
        &self,
        request: Request<v1::DeleteTopicRequest>,
    ) -> Result<Response<v1::DeleteTopicResponse>, Status> {
        let name = request.into_inner().name;
        let topics = self.topics.clone();
        let groups = self.groups.clone();
        tokio::task::spawn_blocking(move || {
            topics.delete(&name).map_err(topic_status)?;
            // Its committed offsets go with it (as Kafka).
            if let Err(e) = groups.forget_topic(&name) {
                let reason = "could not drop the deleted topic's offsets";
                tracing::warn!(topic = %name, error = %e, "{reason}");
            }
            Ok::<(), Status>(())
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(v1::DeleteTopicResponse {}))
    }

    async fn list_topics(
        &self,
        _: Request<v1::ListTopicsRequest>,
    ) -> Result<Response<v1::ListTopicsResponse>, Status> {
        let topics = self
            .topics
            .list()
            .iter()
            // Internal topics (`__consumer_offsets`) are listed only by name lookups, as
            // Kafka's admin client hides them by default.
            .filter(|t| !t.name.starts_with("__"))
            .map(|t| v1::TopicSummary {
                name: t.name.clone(),
                partitions: t.partitions.len() as u32,
            })
            .collect();
        Ok(Response::new(v1::ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<v1::DescribeTopicRequest>,
    ) -> Result<Response<v1::DescribeTopicResponse>, Status> {
        let topic = self
            .topics
            .get(&request.into_inner().name)
            .map_err(topic_status)?;
        let described = topic.clone();
        let partitions = blocking(move || {
            Ok(described
                .partitions
                .iter()
                .map(|p| {
                    let log = p.log();
                    v1::PartitionInfo {
                        partition: p.id(),
                        log_start_offset: log.log_start_offset(),
                        high_watermark: log.high_watermark(),
                        log_end_offset: log.log_end_offset(),
                        size_bytes: log.size_bytes(),
                        segments: log.segments().len() as u32,
                    }
                })
                .collect())
        })
        .await?;
        let entry = |(key, value): (String, String)| v1::ConfigEntry { key, value };
        Ok(Response::new(v1::DescribeTopicResponse {
            name: topic.name.clone(),
            partitions,
            configs: topic.overrides.clone().into_iter().map(entry).collect(),
            effective_configs: topic.config.entries().into_iter().map(entry).collect(),
        }))
    }

    async fn alter_topic_config(
        &self,
        request: Request<v1::AlterTopicConfigRequest>,
    ) -> Result<Response<v1::AlterTopicConfigResponse>, Status> {
        let r = request.into_inner();
        let set: Vec<(String, String)> = r.set.into_iter().map(|c| (c.key, c.value)).collect();
        let topics = self.topics.clone();
        tokio::task::spawn_blocking(move || topics.alter(&r.name, &set, &r.delete))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(topic_status)?;
        Ok(Response::new(v1::AlterTopicConfigResponse {}))
    }

    async fn produce(
        &self,
        request: Request<v1::ProduceRequest>,
    ) -> Result<Response<v1::ProduceResponse>, Status> {
        let (answer, _) = self.append(request.into_inner(), false).await?;
        Ok(Response::new(answer))
    }

    type ProduceStreamStream = super::produce_stream::Answers;

    async fn produce_stream(
        &self,
        request: Request<tonic::Streaming<v1::ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        let service = self.clone();
        Ok(Response::new(super::produce_stream::pipeline(
            request.into_inner(),
            move |request| {
                let service = service.clone();
                async move { service.append(request, true).await }
            },
            super::produce_stream::LIMITS,
            self.shutdown.clone(),
        )))
    }

    async fn fetch(
        &self,
        request: Request<v1::FetchRequest>,
    ) -> Result<Response<v1::FetchResponse>, Status> {
        let r = request.into_inner();
        let partition = self.partition(&r.topic, r.partition)?;
        let max_bytes = r.max_bytes.clamp(1, FETCH_BYTES_MAX) as usize;
        let wait = Duration::from_millis(r.max_wait_ms.min(FETCH_WAIT_MS_MAX) as u64);
        let mut shutdown = self.shutdown.clone();
        let fetched = tokio::select! {
            fetched = partition.fetch(r.offset, max_bytes, r.min_bytes as usize, wait) => fetched,
            _ = stopped(&mut shutdown) => partition.read_async(r.offset, max_bytes).await,
        };
        let result = fetched.map_err(|e| refuse(storage_status(e)))?;
        self.metrics.fetched(&r.topic, result.records.len() as u64);
        Ok(Response::new(v1::FetchResponse {
            partition: r.partition,
            next_offset: next_offset(&result.records, r.offset),
            records: result.records,
            high_watermark: result.high_watermark,
            log_start_offset: result.log_start_offset,
        }))
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let r = request.into_inner();
        let partition = self.partition(&r.topic, r.partition)?;
        let max_bytes = r.max_bytes.clamp(1, FETCH_BYTES_MAX) as usize;
        // Check the start offset now so a bad one is an error, not an empty stream.
        partition
            .read_async(r.offset, 1)
            .await
            .map_err(|e| refuse(storage_status(e)))?;
        let metrics = self.metrics.clone();
        let topic = r.topic.clone();
        let mut shutdown = self.shutdown.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut offset = r.offset;
            loop {
                let result = tokio::select! {
                    result = partition.read_async(offset, max_bytes) => result,
                    _ = stopped(&mut shutdown) => return,
                };
                let result = match result {
                    Ok(result) => result,
                    Err(e) => {
                        let _ = tx.send(Err(storage_status(e))).await;
                        return;
                    }
                };
                let at_end = result.records.is_empty();
                if at_end && partition.is_deleted() {
                    let gone = Status::not_found(format!("topic {topic} was deleted"));
                    let _ = tx.send(Err(gone)).await;
                    return;
                }
                metrics.fetched(&topic, result.records.len() as u64);
                // At the end the answer has no records: it tells the reader it caught up
                // (with the high watermark), on reaching the end and after every idle
                // wait, which keeps a quiet stream's reader informed.
                let next = next_offset(&result.records, offset);
                let response = v1::FetchResponse {
                    partition: r.partition,
                    records: result.records,
                    high_watermark: result.high_watermark,
                    log_start_offset: result.log_start_offset,
                    next_offset: next,
                };
                // A client that stops reading must not hold up shutdown (flow control
                // would block this send forever).
                tokio::select! {
                    sent = tx.send(Ok(response)) => if sent.is_err() { return },
                    _ = stopped(&mut shutdown) => return,
                }
                if at_end {
                    // Until the high watermark moves past what this read saw: nothing
                    // came below it either (a gap below the high watermark, as a
                    // compaction can leave, must not turn into a flood of answers).
                    let seen = offset.max(result.high_watermark);
                    tokio::select! {
                        _ = partition.wait_for_data(seen, SUBSCRIBE_IDLE_WAIT) => {}
                        _ = tx.closed() => return,
                        _ = stopped(&mut shutdown) => {
                            let closing = Status::unavailable("the broker is shutting down");
                            let _ = tx.try_send(Err(closing));
                            return;
                        }
                    }
                }
                offset = next;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn list_offsets(
        &self,
        request: Request<v1::ListOffsetsRequest>,
    ) -> Result<Response<v1::ListOffsetsResponse>, Status> {
        let r = request.into_inner();
        let topic = self.topics.get(&r.topic).map_err(topic_status)?;
        let wanted: Vec<u32> = if r.partitions.is_empty() {
            (0..topic.partitions.len() as u32).collect()
        } else {
            r.partitions.clone()
        };
        let spec = v1::OffsetSpec::try_from(r.spec).map_err(|_| {
            refuse(Status::invalid_argument(format!(
                "unknown offset spec {}",
                r.spec
            )))
        })?;
        let partitions = wanted
            .into_iter()
            .map(|p| self.partition(&r.topic, p))
            .collect::<Result<Vec<_>, _>>()?;
        let offsets = blocking(move || {
            let mut offsets = Vec::new();
            for partition in partitions {
                let spec = match spec {
                    v1::OffsetSpec::Earliest => OffsetSpec::Earliest,
                    v1::OffsetSpec::Latest => OffsetSpec::Latest,
                    v1::OffsetSpec::Timestamp => OffsetSpec::Timestamp(r.timestamp_ms),
                };
                let (offset, timestamp_ms) = partition.list_offset(spec).map_err(storage_status)?;
                let log = partition.log();
                offsets.push(v1::PartitionOffset {
                    partition: partition.id(),
                    offset,
                    timestamp_ms,
                    log_start_offset: log.log_start_offset(),
                    high_watermark: log.high_watermark(),
                });
            }
            Ok(offsets)
        })
        .await?;
        Ok(Response::new(v1::ListOffsetsResponse { offsets }))
    }

    async fn delete_records(
        &self,
        request: Request<v1::DeleteRecordsRequest>,
    ) -> Result<Response<v1::DeleteRecordsResponse>, Status> {
        let r = request.into_inner();
        let partition = self.partition(&r.topic, r.partition)?;
        let log_start_offset = tokio::task::spawn_blocking(move || {
            let mut log = partition.log_mut();
            let before = if r.before_offset < 0 {
                log.high_watermark()
            } else {
                r.before_offset
            };
            if before < log.log_start_offset() {
                return Ok(log.log_start_offset());
            }
            log.delete_records(before)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| refuse(storage_status(e)))?;
        Ok(Response::new(v1::DeleteRecordsResponse {
            log_start_offset,
        }))
    }

    async fn group_heartbeat(
        &self,
        request: Request<v1::GroupHeartbeatRequest>,
    ) -> Result<Response<v1::GroupHeartbeatResponse>, Status> {
        let r = request.into_inner();
        let heartbeat = Heartbeat {
            member_id: r.member_id,
            member_epoch: r.member_epoch,
            subscriptions: (r.subscriptions_changed || r.member_epoch == 0)
                .then(|| r.subscriptions.into_iter().collect()),
            owned: Some(r.owned.into_iter().map(to_tp).collect()),
        };
        let groups = self.groups.clone();
        let group = r.group_id;
        let response =
            blocking(move || groups.heartbeat(&group, heartbeat).map_err(group_status)).await?;
        Ok(Response::new(v1::GroupHeartbeatResponse {
            member_id: response.member_id,
            member_epoch: response.member_epoch,
            assignment: response.assignment.iter().map(from_tp).collect(),
            heartbeat_interval_ms: response.heartbeat_interval_ms.max(0) as u32,
            reconciling: response.reconciling,
        }))
    }

    async fn commit_offsets(
        &self,
        request: Request<v1::CommitOffsetsRequest>,
    ) -> Result<Response<v1::CommitOffsetsResponse>, Status> {
        let r = request.into_inner();
        let offsets: Vec<(TopicPartition, i64, String)> = r
            .offsets
            .into_iter()
            .map(|o| {
                (
                    TopicPartition::new(&o.topic, o.partition),
                    o.offset,
                    o.metadata,
                )
            })
            .collect();
        let groups = self.groups.clone();
        blocking(move || {
            groups
                .commit(&r.group_id, &r.member_id, r.member_epoch, &offsets)
                .map_err(group_status)
        })
        .await?;
        Ok(Response::new(v1::CommitOffsetsResponse {}))
    }

    async fn fetch_offsets(
        &self,
        request: Request<v1::FetchOffsetsRequest>,
    ) -> Result<Response<v1::FetchOffsetsResponse>, Status> {
        let r = request.into_inner();
        let wanted: Vec<TopicPartition> = r.partitions.into_iter().map(to_tp).collect();
        let offsets = self
            .groups
            .fetch_offsets(&r.group_id, &wanted)
            .into_iter()
            .map(|(tp, c)| v1::OffsetCommit {
                topic: tp.topic,
                partition: tp.partition,
                offset: c.offset,
                metadata: c.metadata,
            })
            .collect();
        Ok(Response::new(v1::FetchOffsetsResponse { offsets }))
    }

    async fn list_groups(
        &self,
        _: Request<v1::ListGroupsRequest>,
    ) -> Result<Response<v1::ListGroupsResponse>, Status> {
        let groups = self.groups.list_groups().into_iter().collect();
        Ok(Response::new(v1::ListGroupsResponse { groups }))
    }

    async fn describe_group(
        &self,
        request: Request<v1::DescribeGroupRequest>,
    ) -> Result<Response<v1::DescribeGroupResponse>, Status> {
        let id = request.into_inner().group_id;
        let group = self
            .groups
            .describe(&id)
            .ok_or_else(|| group_status(CoordinatorError::UnknownGroup(id.clone())))?;
        let mut members: Vec<v1::GroupMember> = group
            .members()
            .iter()
            .map(|(member_id, m)| v1::GroupMember {
                member_id: member_id.clone(),
                member_epoch: m.epoch,
                subscriptions: m.subscriptions.iter().cloned().collect(),
                assignment: m.assigned.difference(&m.revoking).map(from_tp).collect(),
            })
            .collect();
        // Kafka clients' members (classic protocol): their epoch is the generation.
        let classic = group.classic();
        members.extend(classic.members().iter().map(|(member_id, m)| {
            let assigned: BTreeSet<TopicPartition> = m.assigned_partitions().into_iter().collect();
            v1::GroupMember {
                member_id: member_id.clone(),
                member_epoch: classic.generation(),
                subscriptions: m.subscribed_topics(),
                assignment: assigned.iter().map(from_tp).collect(),
            }
        }));
        let groups = self.groups.clone();
        let lag = blocking(move || Ok((groups.lag(&group), group))).await?;
        let (lag, group) = lag;
        let partitions = lag
            .into_iter()
            .map(|l| v1::GroupPartitionLag {
                topic: l.tp.topic,
                partition: l.tp.partition,
                committed_offset: l.committed_offset,
                high_watermark: l.high_watermark,
                lag: l.lag_records,
                lag_ms: l.lag_ms,
            })
            .collect();
        let state = match group.state() {
            GroupState::Empty => "EMPTY",
            GroupState::Reconciling => "RECONCILING",
            GroupState::Stable => "STABLE",
        };
        Ok(Response::new(v1::DescribeGroupResponse {
            group_id: id,
            state: state.into(),
            group_epoch: if group.classic().is_empty() {
                group.epoch()
            } else {
                group.classic().generation()
            },
            members,
            partitions,
        }))
    }

    async fn delete_group(
        &self,
        request: Request<v1::DeleteGroupRequest>,
    ) -> Result<Response<v1::DeleteGroupResponse>, Status> {
        let id = request.into_inner().group_id;
        let groups = self.groups.clone();
        blocking(move || groups.delete_group(&id).map_err(group_status)).await?;
        Ok(Response::new(v1::DeleteGroupResponse {}))
    }

    async fn reset_offsets(
        &self,
        request: Request<v1::ResetOffsetsRequest>,
    ) -> Result<Response<v1::ResetOffsetsResponse>, Status> {
        let r = request.into_inner();
        let offsets: Vec<(TopicPartition, i64)> = r
            .offsets
            .into_iter()
            .map(|o| (TopicPartition::new(&o.topic, o.partition), o.offset))
            .collect();
        let groups = self.groups.clone();
        let revoked = blocking(move || {
            groups
                .reset_offsets(&r.group_id, &offsets)
                .map_err(group_status)
        })
        .await?;
        Ok(Response::new(v1::ResetOffsetsResponse { revoked }))
    }
}
