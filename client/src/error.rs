//! [`ClientError`]: every way a client call fails, mapped from gRPC statuses.

use tonic::{Code, Status};

/// The client's result type.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Metadata key of an `OUT_OF_RANGE` status: the log's first offset.
pub const LOG_START_OFFSET_KEY: &str = "fjord-log-start-offset";
/// Status metadata key: the machine-readable error kind (`unknown-topic`,
/// `unknown-partition`, `record-too-large`, ...).
pub const ERROR_KIND_KEY: &str = "fjord-error";
/// Metadata key of an `OUT_OF_RANGE` status: the log's end offset.
pub const LOG_END_OFFSET_KEY: &str = "fjord-log-end-offset";

/// Why a client call failed. Messages from the broker are kept as they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The broker address does not parse.
    #[error("invalid broker address {addr:?}: {reason}")]
    InvalidAddress { addr: String, reason: String },
    /// No connection could be made (broker not running, unreachable). Retriable.
    #[error("cannot connect to the broker at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// `NOT_FOUND` about a topic.
    #[error("{0}")]
    UnknownTopic(String),
    /// `NOT_FOUND` about a partition of an existing topic.
    #[error("{0}")]
    UnknownPartition(String),
    /// `ALREADY_EXISTS`: the topic to create exists.
    #[error("{0}")]
    TopicAlreadyExists(String),
    /// `INVALID_ARGUMENT`: bad config key or value, bad topic name, bad batch.
    #[error("{0}")]
    InvalidArgument(String),
    /// `INVALID_ARGUMENT` for a batch over the topic's `max.message.bytes`.
    #[error("{0}")]
    RecordTooLarge(String),
    /// `OUT_OF_RANGE`: an offset outside the log. The bounds are -1 when the broker did
    /// not send them (a delete-records offset above the high watermark).
    #[error("{message}")]
    OffsetOutOfRange {
        offset: i64,
        log_start_offset: i64,
        log_end_offset: i64,
        message: String,
    },
    /// `UNAVAILABLE`: the broker is shutting down, the log is offline, or the connection
    /// could not be (re)established. Retriable.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The connection failed in the middle of a call. Retriable.
    #[error("connection to the broker failed: {0}")]
    Transport(String),
    /// Records the broker sent could not be decoded.
    #[error("cannot decode records: {0}")]
    Codec(String),
    /// A consumer call named a partition it was not assigned.
    #[error("partition {partition} of topic {topic} is not assigned to this consumer")]
    NotAssigned { topic: String, partition: u32 },
    /// The producer's background task is gone (the runtime shut down).
    #[error("the producer is closed")]
    ProducerClosed,
    /// The producer's buffer (`buffer_memory`) stayed full for `max_block_ms`: the
    /// broker is not acknowledging as fast as records are sent.
    #[error("the producer's buffer stayed full for {waited_ms} ms")]
    BufferFull { waited_ms: u64 },
    /// `NOT_FOUND` about a consumer group.
    #[error("{0}")]
    UnknownGroup(String),
    /// The group no longer knows this member (it left, or its session timed out): it
    /// must join again. Its partitions may have moved.
    #[error("{0}")]
    UnknownMember(String),
    /// A group call with an old member epoch, or a commit for a partition the member no
    /// longer owns: refused.
    #[error("{0}")]
    FencedMember(String),
    /// The group still has members (delete, or a commit without a member).
    #[error("{0}")]
    GroupNotEmpty(String),
    /// A live offset reset whose partitions the members did not give up in time.
    #[error("{0}")]
    RebalanceTimeout(String),
    /// Any other status.
    #[error("broker error ({code:?}): {message}")]
    Broker { code: Code, message: String },
}

impl ClientError {
    /// Whether trying the same call again later may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. } | ClientError::Unavailable(_) | ClientError::Transport(_)
        )
    }

    /// Maps a status; `offset` is the offset the request asked for, if any (it fills
    /// [`ClientError::OffsetOutOfRange::offset`]).
    pub fn from_status(status: Status, offset: Option<i64>) -> Self {
        let message = status.message().to_string();
        // The broker names the error kind in `fjord-error`; the message is for people.
        let kind = status
            .metadata()
            .get(ERROR_KIND_KEY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        match status.code() {
            Code::NotFound => match kind.as_str() {
                "unknown-partition" => ClientError::UnknownPartition(message),
                "unknown-group" => ClientError::UnknownGroup(message),
                "unknown-member-id" => ClientError::UnknownMember(message),
                _ => ClientError::UnknownTopic(message),
            },
            Code::FailedPrecondition | Code::Aborted => match kind.as_str() {
                "fenced-member-epoch" | "not-owner" => ClientError::FencedMember(message),
                "group-not-empty" => ClientError::GroupNotEmpty(message),
                "rebalance-timeout" => ClientError::RebalanceTimeout(message),
                _ => ClientError::Broker {
                    code: status.code(),
                    message,
                },
            },
            Code::AlreadyExists => ClientError::TopicAlreadyExists(message),
            Code::InvalidArgument => {
                if kind == "record-too-large" {
                    ClientError::RecordTooLarge(message)
                } else {
                    ClientError::InvalidArgument(message)
                }
            }
            Code::OutOfRange => {
                let md = |key: &str| -> Option<i64> {
                    status.metadata().get(key)?.to_str().ok()?.parse().ok()
                };
                ClientError::OffsetOutOfRange {
                    offset: offset.unwrap_or(-1),
                    log_start_offset: md(LOG_START_OFFSET_KEY).unwrap_or(-1),
                    log_end_offset: md(LOG_END_OFFSET_KEY).unwrap_or(-1),
                    message,
                }
            }
            Code::Unavailable => ClientError::Unavailable(message),
            // A status made on this side from a broken connection carries its cause; one
            // the broker sent never does.
            Code::Unknown | Code::Internal | Code::Cancelled
                if std::error::Error::source(&status).is_some() =>
            {
                ClientError::Transport(error_chain(&status))
            }
            code => ClientError::Broker { code, message },
        }
    }
}

impl From<fjord_protocol::ProtocolError> for ClientError {
    fn from(e: fjord_protocol::ProtocolError) -> Self {
        ClientError::Codec(e.to_string())
    }
}

/// `error: cause: cause`, skipping causes whose text the previous one already holds.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_distinguishes_topic_and_partition() {
        let e = ClientError::from_status(Status::not_found("unknown topic t"), None);
        assert_eq!(e, ClientError::UnknownTopic("unknown topic t".into()));
        let msg = "topic t has no partition 7 (it has 2)";
        let mut status = Status::not_found(msg);
        status
            .metadata_mut()
            .insert(ERROR_KIND_KEY, "unknown-partition".parse().unwrap());
        let e = ClientError::from_status(status, None);
        assert_eq!(e, ClientError::UnknownPartition(msg.into()));
        assert_eq!(e.to_string(), msg);
        assert!(!e.is_retriable());
    }

    #[test]
    fn group_errors_are_told_apart_by_kind() {
        let with = |status: Status, kind: &str| {
            let mut status = status;
            status
                .metadata_mut()
                .insert(ERROR_KIND_KEY, kind.parse().unwrap());
            ClientError::from_status(status, None)
        };
        let fenced = with(
            Status::failed_precondition("m is fenced"),
            "fenced-member-epoch",
        );
        assert_eq!(fenced, ClientError::FencedMember("m is fenced".into()));
        let not_owner = with(
            Status::failed_precondition("m does not own t-0"),
            "not-owner",
        );
        assert!(matches!(not_owner, ClientError::FencedMember(_)));
        let gone = with(Status::not_found("unknown member m"), "unknown-member-id");
        assert!(matches!(gone, ClientError::UnknownMember(_)));
        let group = with(Status::not_found("unknown group g"), "unknown-group");
        assert!(matches!(group, ClientError::UnknownGroup(_)));
        let busy = with(
            Status::failed_precondition("g has members"),
            "group-not-empty",
        );
        assert!(matches!(busy, ClientError::GroupNotEmpty(_)));
        let slow = with(Status::aborted("did not give up"), "rebalance-timeout");
        assert!(matches!(slow, ClientError::RebalanceTimeout(_)));
    }

    #[test]
    fn out_of_range_reads_the_bounds_from_metadata() {
        let mut status = Status::out_of_range("offset 99 is out of range");
        status
            .metadata_mut()
            .insert(LOG_START_OFFSET_KEY, "5".parse().unwrap());
        status
            .metadata_mut()
            .insert(LOG_END_OFFSET_KEY, "20".parse().unwrap());
        match ClientError::from_status(status, Some(99)) {
            ClientError::OffsetOutOfRange {
                offset,
                log_start_offset,
                log_end_offset,
                ..
            } => assert_eq!((offset, log_start_offset, log_end_offset), (99, 5, 20)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn invalid_argument_and_retriable_codes() {
        let mut status = Status::invalid_argument(
            "record batch of 2000 bytes is larger than max.message.bytes (1000)",
        );
        status
            .metadata_mut()
            .insert(ERROR_KIND_KEY, "record-too-large".parse().unwrap());
        let e = ClientError::from_status(status, None);
        assert!(matches!(e, ClientError::RecordTooLarge(_)));
        let e = ClientError::from_status(Status::invalid_argument("unknown config x.y"), None);
        assert_eq!(e, ClientError::InvalidArgument("unknown config x.y".into()));
        assert!(ClientError::from_status(Status::unavailable("offline"), None).is_retriable());
        let e = ClientError::from_status(Status::internal("boom"), None);
        assert!(matches!(
            e,
            ClientError::Broker {
                code: Code::Internal,
                ..
            }
        ));
        assert!(!e.is_retriable());
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let e = ClientError::from_status(Status::from_error(Box::new(io)), None);
        assert!(e.is_retriable(), "{e:?}");
    }
}
