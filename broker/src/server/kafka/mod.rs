//! The Kafka wire-protocol listener, so that Kafka clients work unchanged.
//!
//! - [`serve`]: the accept loop (a semaphore on connections; stops on shutdown).
//! - `Connection` handling: 4-byte big-endian size-prefixed frames, read ahead by a
//!   reader task (within a byte budget) while one request at a time is handled (as
//!   Kafka, which handles a connection's requests in order), and responses go out in
//!   request order. A produce's answer can wait for its fsync (acks=all) while the next
//!   requests are handled: a writer task writes the answers in order, each when ready.
//!   Unlike Kafka, which reads a connection's next request only once the answer is sent,
//!   a later request may so take effect before an earlier acks=all produce is answered:
//!   a fetch on the same connection may return its records first (they are appended; as
//!   in Kafka the high watermark does not wait for fsync), and a DeleteTopics right
//!   behind it may retire the log before its fsync, which is then answered
//!   KAFKA_STORAGE_ERROR.
//! - One handler file per API: [`api_versions`], [`metadata`], [`produce`], [`fetch`],
//!   [`list_offsets`], [`offset_for_leader_epoch`], [`describe_cluster`], the admin APIs
//!   ([`create_topics`], [`delete_topics`], [`create_partitions`], [`describe_configs`],
//!   [`alter_configs`], [`incremental_alter_configs`], [`delete_records`]), and
//!   [`init_producer_id`] for idempotent producers; [`groups`] holds the group APIs
//!   (FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit,
//!   OffsetFetch, ListGroups, DescribeGroups, DeleteGroups) on the broker's coordinator.
//!
//! Every codec is the `kafka-protocol` crate's. A frame that cannot be served (a
//! negative or oversized length, a truncated or undecodable body, an unknown API key or
//! an unsupported version) closes its connection with a log line; ApiVersions at an
//! unsupported version is answered with UNSUPPORTED_VERSION, as Kafka does, so the
//! client can retry with a version from the list.

pub mod alter_configs;
pub mod api_versions;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_cluster;
pub mod describe_configs;
pub mod fetch;
pub mod groups;
pub mod incremental_alter_configs;
pub mod init_producer_id;
pub mod list_offsets;
pub mod metadata;
pub mod offset_for_leader_epoch;
pub mod produce;

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::cluster::{TopicError, TopicManager};
use crate::group::coordinator::Coordinator;
use crate::partition::Partition;
use crate::storage::StorageError;

use super::metrics::Metrics;
use super::{BrokerError, stopped};

/// The most Kafka connections served at once; more wait in the accept backlog.
pub const CONNECTIONS_MAX: usize = 4096;

/// What a frame is read into at first, unless the peer has sent a larger frame whole
/// before; it grows as its bytes arrive, so a peer that declares a large frame and sends
/// nothing holds little memory.
const FRAME_CHUNK_BYTES: usize = 64 * 1024;

/// Why a connection is closed.
#[derive(Debug, Error)]
pub enum KafkaError {
    #[error("connection I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame size {size} is negative or over socket.request.max.bytes ({max})")]
    FrameSize { size: i32, max: usize },
    #[error("the connection ended inside a frame")]
    Truncated,
    #[error("a frame of {0} bytes is too short for a request header")]
    ShortFrame(usize),
    #[error("unknown API key {0}")]
    UnknownApiKey(i16),
    #[error("API {api:?} is not supported")]
    UnsupportedApi { api: ApiKey },
    #[error("{api:?} version {version} is not supported (supported: {min}-{max})")]
    UnsupportedVersion {
        api: ApiKey,
        version: i16,
        min: i16,
        max: i16,
    },
    #[error("cannot decode {api:?} v{version}: {reason}")]
    Decode {
        api: ApiKey,
        version: i16,
        reason: String,
    },
    #[error("cannot encode the {api:?} response: {reason}")]
    Encode { api: ApiKey, reason: String },
}

/// The state every Kafka connection shares.
pub struct KafkaService {
    pub topics: Arc<TopicManager>,
    /// The group coordinator, shared with the gRPC API.
    pub groups: Arc<Coordinator>,
    /// Hands out idempotent producers' ids.
    pub producer_ids: Arc<init_producer_id::ProducerIds>,
    pub metrics: Arc<Metrics>,
    /// Becomes true when the broker shuts down: connections close after the request in
    /// hand, and long polls return at once.
    pub shutdown: watch::Receiver<bool>,
    /// This broker's id: the leader of every partition, and the controller.
    pub node_id: i32,
    /// What Metadata tells clients to connect to.
    pub advertised_host: String,
    pub advertised_port: i32,
    /// socket.request.max.bytes.
    pub request_bytes_max: usize,
}

/// Accepts Kafka connections until shutdown, then waits for the open ones to finish the
/// request in hand.
pub async fn serve(listener: TcpListener, service: Arc<KafkaService>) -> Result<(), BrokerError> {
    let mut shutdown = service.shutdown.clone();
    let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("never closed"),
            _ = stopped(&mut shutdown) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a Kafka connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        while connections.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        connections.spawn(async move {
            let _permit = permit;
            if let Err(e) = connection(stream, peer, &service).await {
                tracing::warn!(%peer, error = %e, "closing Kafka connection");
            }
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Frames read ahead of the one being handled hold at most this many bytes (a larger
/// frame is read alone).
const READ_AHEAD_BYTES: usize = 16 << 20;

/// A read frame, with its share of the connection's read-ahead budget (returned when
/// the frame has been handled).
type ReadFrame = (Bytes, OwnedSemaphorePermit);

/// How many answers of a connection may wait to be written (acks=all produces waiting for
/// their fsync, and the answers behind them) before it handles no more requests.
const PENDING_ANSWERS: usize = 32;

/// How many bytes of encoded answers a connection may hold unwritten (a client that
/// pipelines fetches and does not read); a larger answer takes the whole budget.
const PENDING_ANSWER_BYTES: usize = 64 << 20;

/// A request's answer: encoded, or still to come (a produce waiting for its fsync).
enum Answer {
    Ready(BytesMut),
    Later(Pin<Box<dyn Future<Output = Result<BytesMut, KafkaError>> + Send>>),
}

/// Serves one connection until the peer closes it, a frame cannot be served, or shutdown.
/// A reader task reads the next frames while one is handled (clients such as librdkafka
/// pipeline their requests), within [`READ_AHEAD_BYTES`]; requests are still handled one
/// at a time, and a writer task writes their answers in request order, each once ready,
/// within [`PENDING_ANSWERS`].
async fn connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    service: &KafkaService,
) -> Result<(), KafkaError> {
    let client_host = format!("/{}", peer.ip());
    let mut shutdown = service.shutdown.clone();
    let (mut reader, mut writer) = stream.into_split();
    let (frames, mut next) = mpsc::channel::<Result<ReadFrame, KafkaError>>(64);
    let max = service.request_bytes_max;
    // Aborted when this returns, whatever the reason.
    let _read_ahead = AbortOnDrop(tokio::spawn(async move {
        let budget = Arc::new(Semaphore::new(READ_AHEAD_BYTES));
        let mut largest = 0;
        loop {
            match read_frame(&mut reader, max, &budget, &mut largest).await {
                Ok(Some(frame)) => {
                    if frames.send(Ok(frame)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = frames.send(Err(e)).await;
                    return;
                }
            }
        }
    }));
    let (answers, mut queued) = mpsc::channel::<(Answer, OwnedSemaphorePermit)>(PENDING_ANSWERS);
    let answer_bytes = Arc::new(Semaphore::new(PENDING_ANSWER_BYTES));
    // Aborted if this future is dropped; awaited (and so finished) on every way out below.
    let mut write_answers = AbortOnDrop(tokio::spawn(async move {
        while let Some((answer, _bytes)) = queued.recv().await {
            let frame = match answer {
                Answer::Ready(frame) => frame,
                Answer::Later(frame) => frame.await?,
            };
            writer.write_all(&frame).await?;
        }
        Ok::<(), KafkaError>(())
    }));
    let served = async {
        loop {
            let frame = tokio::select! {
                frame = next.recv() => frame,
                _ = stopped(&mut shutdown) => return Ok(()),
            };
            // `None`: the peer closed the connection between frames.
            let Some(frame) = frame else {
                return Ok(());
            };
            let (frame, _budget) = frame?;
            let Some(answer) = service.handle(frame, &client_host).await? else {
                continue;
            };
            // A ready answer (a fetch's may be 64 MiB) holds its size of the budget until it
            // is written; one still to come (a produce's) is small.
            let size = match &answer {
                Answer::Ready(frame) => frame.len(),
                Answer::Later(_) => 1,
            };
            let share = size.clamp(1, PENDING_ANSWER_BYTES) as u32;
            let Ok(bytes) = answer_bytes.clone().acquire_many_owned(share).await else {
                return Ok(()); // never closed
            };
            if answers.send((answer, bytes)).await.is_err() {
                return Ok(()); // the writer stopped: its error ends the connection
            }
        }
    };
    // The writer stops at a write error (the peer is gone): stop reading then too.
    let served: Result<(), KafkaError> = tokio::select! {
        served = served => served,
        written = &mut write_answers.0 => return written.unwrap_or_else(panic_or_cancelled),
    };
    // Closed, stopping, or a frame that cannot be served: the answers to the requests
    // handled so far are written first (their records are in the log either way).
    drop(answers);
    let written = (&mut write_answers.0)
        .await
        .unwrap_or_else(panic_or_cancelled);
    served.and(written)
}

/// The writer task's outcome when it did not return: its panic goes on; a cancelled one
/// (the runtime shutting down) ends the connection quietly.
fn panic_or_cancelled(e: tokio::task::JoinError) -> Result<(), KafkaError> {
    match e.try_into_panic() {
        Ok(panic) => std::panic::resume_unwind(panic),
        Err(_) => Ok(()),
    }
}

/// Aborts the task when dropped (the reader or writer of a connection being closed).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads one size-prefixed frame, taking its size (at most the whole budget) from
/// `budget` first; `None` when the peer closed the connection between frames.
///
/// `largest` is the largest frame this peer has sent whole so far. A frame up to that
/// size is read into a buffer of its size at once: growing it as the bytes arrive copies
/// what came before at each step, as much again as the frame for a 1 MB produce, and a
/// peer that has sent such a frame could hold as much by sending another slowly.
async fn read_frame(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    max: usize,
    budget: &Arc<Semaphore>,
    largest: &mut usize,
) -> Result<Option<ReadFrame>, KafkaError> {
    let mut size = [0u8; 4];
    match stream.read_exact(&mut size).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let size = i32::from_be_bytes(size);
    if size < 0 || size as usize > max {
        return Err(KafkaError::FrameSize { size, max });
    }
    let size = size as usize;
    let share = size.clamp(1, READ_AHEAD_BYTES) as u32;
    let permit = budget
        .clone()
        .acquire_many_owned(share)
        .await
        .expect("never closed");
    let mut frame = BytesMut::with_capacity(size.min(FRAME_CHUNK_BYTES.max(*largest)));
    while frame.len() < size {
        if frame.len() == frame.capacity() {
            frame.reserve((size - frame.len()).min(FRAME_CHUNK_BYTES));
        }
        let want = size - frame.len();
        let read = stream.read_buf(&mut (&mut frame).limit(want)).await?;
        if read == 0 {
            return Err(KafkaError::Truncated);
        }
    }
    *largest = (*largest).max(size);
    Ok(Some((frame.freeze(), permit)))
}

/// The APIs this listener serves, with the versions it advertises in ApiVersions.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 6),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
];

fn supported(api: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(key, _, _)| *key == api)
        .map(|&(_, min, max)| (min, max))
}

impl KafkaService {
    /// Decodes one request frame, serves it, and returns the response frame (`None` for
    /// acks=0 produces, which get none).
    async fn handle(&self, frame: Bytes, client_host: &str) -> Result<Option<Answer>, KafkaError> {
        if frame.len() < 8 {
            return Err(KafkaError::ShortFrame(frame.len()));
        }
        let key = i16::from_be_bytes([frame[0], frame[1]]);
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let api = ApiKey::try_from(key).map_err(|()| KafkaError::UnknownApiKey(key))?;
        let Some((min, max)) = supported(api) else {
            // Not advertised: refused with UNSUPPORTED_VERSION where the API's response
            // can carry it, else the connection is closed.
            return match unsupported_answer(api, version, correlation_id) {
                Some(frame) => {
                    tracing::info!(?api, version, "refused a request for an API not served");
                    Ok(Some(Answer::Ready(frame)))
                }
                None => Err(KafkaError::UnsupportedApi { api }),
            };
        };
        if !(min..=max).contains(&version) {
            if api == ApiKey::ApiVersions {
                tracing::info!(version, "ApiVersions at an unsupported version");
                let response = api_versions::unsupported_version();
                return encode(api, 0, correlation_id, &ResponseKind::ApiVersions(response))
                    .map(|frame| Some(Answer::Ready(frame)));
            }
            if let Some(frame) = unsupported_answer(api, version, correlation_id) {
                tracing::info!(?api, version, "refused a request at a version not served");
                return Ok(Some(Answer::Ready(frame)));
            }
            return Err(KafkaError::UnsupportedVersion {
                api,
                version,
                min,
                max,
            });
        }
        let (header, request) = decode(frame, api, version)?;
        let response = match request {
            RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(api_versions::handle()),
            RequestKind::Metadata(r) => ResponseKind::Metadata(self.metadata(r, version)),
            RequestKind::Produce(r) => {
                let correlation_id = header.correlation_id;
                let Some(answer) = self.produce(r).await else {
                    return Ok(None);
                };
                return Ok(Some(Answer::Later(Box::pin(async move {
                    let response = ResponseKind::Produce(answer.await);
                    encode(api, version, correlation_id, &response)
                }))));
            }
            RequestKind::Fetch(r) => ResponseKind::Fetch(self.fetch(r).await),
            RequestKind::ListOffsets(r) => {
                ResponseKind::ListOffsets(self.list_offsets(r, version).await)
            }
            RequestKind::InitProducerId(r) => {
                ResponseKind::InitProducerId(self.init_producer_id(r).await)
            }
            RequestKind::FindCoordinator(r) => {
                ResponseKind::FindCoordinator(self.find_coordinator(r, version))
            }
            RequestKind::JoinGroup(r) => {
                let client_id = header.client_id.as_deref().unwrap_or_default();
                let joined = self.join_group(r, version, client_id, client_host).await;
                ResponseKind::JoinGroup(joined)
            }
            RequestKind::SyncGroup(r) => ResponseKind::SyncGroup(self.sync_group(r).await),
            RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(self.heartbeat(r)),
            RequestKind::LeaveGroup(r) => ResponseKind::LeaveGroup(self.leave_group(r, version)),
            RequestKind::OffsetCommit(r) => ResponseKind::OffsetCommit(self.offset_commit(r).await),
            RequestKind::OffsetFetch(r) => ResponseKind::OffsetFetch(self.offset_fetch(r, version)),
            RequestKind::ListGroups(r) => ResponseKind::ListGroups(self.list_groups(r)),
            RequestKind::DescribeGroups(r) => ResponseKind::DescribeGroups(self.describe_groups(r)),
            RequestKind::DeleteGroups(r) => ResponseKind::DeleteGroups(self.delete_groups(r).await),
            RequestKind::OffsetForLeaderEpoch(r) => {
                ResponseKind::OffsetForLeaderEpoch(self.offset_for_leader_epoch(r))
            }
            RequestKind::DescribeCluster(r) => {
                ResponseKind::DescribeCluster(self.describe_cluster(r, version))
            }
            RequestKind::CreateTopics(r) => ResponseKind::CreateTopics(self.create_topics(r).await),
            RequestKind::DeleteTopics(r) => {
                ResponseKind::DeleteTopics(self.delete_topics(r, version).await)
            }
            RequestKind::CreatePartitions(r) => {
                ResponseKind::CreatePartitions(self.create_partitions(r).await)
            }
            RequestKind::DescribeConfigs(r) => {
                ResponseKind::DescribeConfigs(self.describe_configs(r))
            }
            RequestKind::AlterConfigs(r) => ResponseKind::AlterConfigs(self.alter_configs(r).await),
            RequestKind::IncrementalAlterConfigs(r) => {
                ResponseKind::IncrementalAlterConfigs(self.incremental_alter_configs(r).await)
            }
            RequestKind::DeleteRecords(r) => {
                ResponseKind::DeleteRecords(self.delete_records(r).await)
            }
            _ => return Err(KafkaError::UnsupportedApi { api }),
        };
        encode(api, version, header.correlation_id, &response)
            .map(|frame| Some(Answer::Ready(frame)))
    }
}

/// The answer to a request the broker does not serve, for the APIs whose response has a
/// top-level error code: that response with UNSUPPORTED_VERSION, at the request's version
/// (when the codec knows it and the field exists there). `None`: close the connection.
fn unsupported_answer(api: ApiKey, version: i16, correlation_id: i32) -> Option<BytesMut> {
    use kafka_protocol::messages::*;
    let known = api.valid_versions();
    if !(known.min..=known.max).contains(&version) {
        return None;
    }
    let code = ResponseError::UnsupportedVersion.code();
    macro_rules! refuse {
        ($($api:ident => $response:ident),* $(,)?) => {
            match api {
                $(ApiKey::$api => {
                    let mut response = $response::default();
                    response.error_code = code;
                    ResponseKind::$api(response)
                })*
                _ => return None,
            }
        };
    }
    let response = refuse!(
        // Transactions, security and the newer group and admin APIs.
        EndTxn => EndTxnResponse,
        AddOffsetsToTxn => AddOffsetsToTxnResponse,
        ListTransactions => ListTransactionsResponse,
        SaslHandshake => SaslHandshakeResponse,
        SaslAuthenticate => SaslAuthenticateResponse,
        DescribeAcls => DescribeAclsResponse,
        ConsumerGroupHeartbeat => ConsumerGroupHeartbeatResponse,
        GetTelemetrySubscriptions => GetTelemetrySubscriptionsResponse,
        PushTelemetry => PushTelemetryResponse,
        DescribeClientQuotas => DescribeClientQuotasResponse,
        DescribeUserScramCredentials => DescribeUserScramCredentialsResponse,
        ElectLeaders => ElectLeadersResponse,
        ListPartitionReassignments => ListPartitionReassignmentsResponse,
        AlterPartitionReassignments => AlterPartitionReassignmentsResponse,
        DescribeLogDirs => DescribeLogDirsResponse,
    );
    encode(api, version, correlation_id, &response).ok()
}

/// A request frame's header and request, decoded; the frame itself is dropped, so what
/// holds its bytes afterwards is only the slices the two keep (names, records).
fn decode(
    mut frame: Bytes,
    api: ApiKey,
    version: i16,
) -> Result<(RequestHeader, RequestKind), KafkaError> {
    let header = RequestHeader::decode(&mut frame, api.request_header_version(version))
        .map_err(decode_error(api, version))?;
    let request =
        RequestKind::decode(api, &mut frame, version).map_err(decode_error(api, version))?;
    Ok((header, request))
}

fn decode_error<E: std::fmt::Display>(api: ApiKey, version: i16) -> impl Fn(E) -> KafkaError {
    move |e| KafkaError::Decode {
        api,
        version,
        reason: format!("{e:#}"),
    }
}

fn encode_error<E: std::fmt::Display>(api: ApiKey) -> impl Fn(E) -> KafkaError {
    move |e| KafkaError::Encode {
        api,
        reason: format!("{e:#}"),
    }
}

/// A size-prefixed response frame: the header at the version the API's version calls
/// for, then the body.
fn encode(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    response: &ResponseKind,
) -> Result<BytesMut, KafkaError> {
    let mut frame = BytesMut::new();
    frame.put_i32(0);
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    header
        .encode(&mut frame, api.response_header_version(version))
        .map_err(encode_error(api))?;
    response
        .encode(&mut frame, version)
        .map_err(encode_error(api))?;
    let size = (frame.len() - 4) as i32;
    frame[..4].copy_from_slice(&size.to_be_bytes());
    Ok(frame)
}

/// The Kafka error code of a storage error.
pub fn storage_error_code(e: &StorageError) -> i16 {
    let error = match e {
        StorageError::OffsetOutOfRange { .. } | StorageError::DeleteBeyondHighWatermark { .. } => {
            ResponseError::OffsetOutOfRange
        }
        StorageError::BatchTooLarge { .. } => ResponseError::MessageTooLarge,
        StorageError::InvalidBatch { .. } => ResponseError::CorruptMessage,
        StorageError::LogOffline { .. } | StorageError::Io { .. } => {
            ResponseError::KafkaStorageError
        }
        StorageError::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber,
        StorageError::InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch,
        StorageError::DuplicateSequence { .. } => ResponseError::DuplicateSequenceNumber,
        _ => return -1, // UNKNOWN_SERVER_ERROR
    };
    error.code()
}

/// The Kafka error code of a topic lookup error.
pub fn topic_error_code(e: &TopicError) -> i16 {
    match e {
        TopicError::UnknownTopic(_) | TopicError::UnknownPartition { .. } => {
            ResponseError::UnknownTopicOrPartition.code()
        }
        TopicError::InvalidName { .. } => ResponseError::InvalidTopicException.code(),
        TopicError::AlreadyExists(_) => ResponseError::TopicAlreadyExists.code(),
        TopicError::InvalidPartitions(_) | TopicError::PartitionsNotIncreased { .. } => {
            ResponseError::InvalidPartitions.code()
        }
        TopicError::Config(_) => ResponseError::InvalidConfig.code(),
        TopicError::Storage(e) => storage_error_code(e),
    }
}

/// Why an admin request entry is refused: its Kafka error code and a message for the
/// client.
pub type Refusal = (i16, String);

/// The items a request names more than once (each such entry is refused, as Kafka does).
pub fn named_twice<T: Ord + Clone>(items: impl IntoIterator<Item = T>) -> BTreeSet<T> {
    let mut seen = BTreeSet::new();
    items
        .into_iter()
        .filter(|item| !seen.insert(item.clone()))
        .collect()
}

/// The refusal of a `what` (topic, resource, config) that a request names more than once.
pub fn named_twice_refusal(what: &str, name: &str) -> Refusal {
    (
        ResponseError::InvalidRequest.code(),
        format!("{what} {name} appears more than once in the request"),
    )
}

/// The refusal of a topic error: its code and its text.
pub fn refusal(e: TopicError) -> Refusal {
    (topic_error_code(&e), e.to_string())
}

/// Internal topics (`__consumer_offsets`): listed as internal by Metadata, and never
/// deleted, grown, truncated or reconfigured through the Kafka API.
pub fn is_internal(name: &str) -> bool {
    name.starts_with("__")
}

/// Runs `f` (file I/O, log locks) on a blocking thread; a panic in it is resumed here.
async fn blocking<T, F>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

impl KafkaService {
    /// The partition a request names, or the Kafka error code of why there is none.
    fn partition(&self, topic: &str, index: i32) -> Result<Arc<Partition>, i16> {
        let index =
            u32::try_from(index).map_err(|_| ResponseError::UnknownTopicOrPartition.code())?;
        self.topics
            .partition(topic, index)
            .map_err(|e| topic_error_code(&e))
    }
}

/// A topic's id in Metadata v10+: stable, derived from its name (Fjord does not store
/// topic ids yet), never the zero UUID.
pub fn topic_id(name: &str) -> uuid::Uuid {
    let mut bytes = [0u8; 16];
    for (i, chunk) in bytes.chunks_mut(4).enumerate() {
        let crc = crc32c::crc32c_append(i as u32 + 1, name.as_bytes());
        chunk.copy_from_slice(&crc.to_be_bytes());
    }
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_ids_are_stable_distinct_and_never_zero() {
        assert_eq!(topic_id("orders"), topic_id("orders"));
        assert_ne!(topic_id("orders"), topic_id("payments"));
        assert!(!topic_id("").is_nil());
    }

    #[test]
    fn every_advertised_version_is_one_the_codecs_know() {
        for &(api, min, max) in SUPPORTED {
            let known = api.valid_versions();
            assert!(known.min <= min && max <= known.max, "{api:?} {min}-{max}");
        }
    }

    /// Two 1 MB frames, each arriving in 64 KiB pieces: the first grows as it arrives,
    /// the second is read into one buffer of its size.
    #[tokio::test]
    async fn a_frame_no_larger_than_one_sent_before_is_read_into_one_buffer() {
        let size = 1_000_000;
        let (mut peer, mut stream) = tokio::io::duplex(64 * 1024);
        let sent = tokio::spawn(async move {
            for fill in [1u8, 2] {
                peer.write_all(&(size as i32).to_be_bytes()).await.unwrap();
                peer.write_all(&vec![fill; size]).await.unwrap();
            }
        });
        let budget = Arc::new(Semaphore::new(READ_AHEAD_BYTES));
        let mut largest = 0;
        let mut capacities = Vec::new();
        for fill in [1u8, 2] {
            let (frame, _permit) = read_frame(&mut stream, size, &budget, &mut largest)
                .await
                .unwrap()
                .unwrap();
            assert!(frame.len() == size && frame.iter().all(|&b| b == fill));
            capacities.push(frame.try_into_mut().unwrap().capacity());
        }
        sent.await.unwrap();
        assert_eq!(largest, size);
        assert!(capacities[0] > size, "grown by doubling: {capacities:?}");
        assert_eq!(capacities[1], size);
        assert!(
            read_frame(&mut stream, size, &budget, &mut largest)
                .await
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn storage_errors_map_to_kafka_codes() {
        let out_of_range = StorageError::OffsetOutOfRange {
            offset: 9,
            log_start_offset: 0,
            log_end_offset: 5,
        };
        assert_eq!(storage_error_code(&out_of_range), 1);
        let too_large = StorageError::BatchTooLarge { size: 2, limit: 1 };
        assert_eq!(storage_error_code(&too_large), 10);
        let unknown = TopicError::UnknownTopic("t".into());
        assert_eq!(topic_error_code(&unknown), 3);
    }
}
