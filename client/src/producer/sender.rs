//! A partition's sender: the task that sends the requests of one partition, several in
//! flight at once, on one `ProduceStream` call.
//!
//! The broker appends a stream's requests in the order sent and answers them in that
//! order, and ends the stream at the first request that fails without appending anything
//! sent after it. So the requests in flight are a queue: an answer completes the oldest,
//! and a failure is the oldest's. After a failure the oldest is retried (retriable error,
//! attempts left) or failed, and every request still in flight is sent again, in order,
//! on a new stream. A failure the broker reports leaves the log in send order. After a
//! lost connection or an answer that never came (`REQUEST_TIMEOUT`), the broker may
//! have appended some of the requests sent again, and they are then written twice: at
//! least once, as Kafka's producer without idempotence, with the first copies in send
//! order.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fjord_protocol::ProduceParts;
use fjord_protocol::codec::ProducerFields;
use fjord_protocol::v1;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use super::accumulator::Batch;
use super::pool::{BufferPool, push_joined};
use super::{Acks, Done, ProducerConfig, RecordMetadata, Reply};
use crate::TopicPartition;
use crate::connection::{REQUEST_TIMEOUT, raw_streaming};
use crate::error::ClientError;

/// The gRPC method of `ProduceStream`.
const PRODUCE_STREAM: &str = "/fjord.v1.Fjord/ProduceStream";

/// How long a stream with nothing in flight stays open for the partition's next request.
const IDLE_STREAM: Duration = Duration::from_secs(10);

/// A request sent and not yet answered.
struct InFlight {
    request: ProduceParts,
    /// The batches it carries, in order.
    batches: Vec<Batch<Reply>>,
    /// Every batch id the dispatcher handed over with it (including batches that failed
    /// to encode), reported back when it is done.
    ids: Vec<u64>,
    /// Retries so far.
    attempt: u32,
}

/// An open `ProduceStream` call.
struct Stream {
    requests: mpsc::UnboundedSender<ProduceParts>,
    answers: tonic::Streaming<v1::ProduceResponse>,
}

pub(super) struct Sender {
    pub channel: Channel,
    /// Where answered batches' buffers go back to.
    pub pool: BufferPool,
    pub config: ProducerConfig,
    pub tp: TopicPartition,
    pub done: mpsc::UnboundedSender<Done>,
}

enum Event {
    Answer(Result<v1::ProduceResponse, ClientError>),
    Work(Option<Vec<Batch<Reply>>>),
    Idle,
}

impl Sender {
    /// Sends the requests handed over on `work` until the dispatcher drops its end and
    /// every request is answered.
    pub async fn run(self, mut work: mpsc::UnboundedReceiver<Vec<Batch<Reply>>>) {
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut stream: Option<Stream> = None;
        let mut open = true;
        while open || !in_flight.is_empty() {
            let idle = in_flight.is_empty() && stream.is_some();
            let event = tokio::select! {
                biased;
                // Read while idle too: a stream the broker ends then (a restart) is
                // dropped at once, not found dead by the next request's first attempt.
                answer = next_answer(&mut stream), if stream.is_some() => {
                    Event::Answer(answer)
                }
                batches = work.recv(), if open => Event::Work(batches),
                _ = tokio::time::sleep(IDLE_STREAM), if idle => Event::Idle,
            };
            match event {
                Event::Answer(Ok(answer)) => {
                    let Some(done) = in_flight.pop_front() else {
                        // An answer to nothing sent: not this protocol; start afresh.
                        tracing::warn!(topic = %self.tp.topic, partition = self.tp.partition,
                            "a produce answer with no request in flight");
                        stream = None;
                        continue;
                    };
                    self.succeeded(done, &answer);
                }
                Event::Answer(Err(_)) if in_flight.is_empty() => stream = None,
                Event::Answer(Err(e)) => {
                    stream = None;
                    self.failed(e, &mut in_flight).await;
                    self.resend(&mut in_flight, &mut stream).await;
                }
                Event::Work(Some(batches)) => {
                    let Some(request) = self.encode(batches) else {
                        continue;
                    };
                    let sent = stream
                        .as_ref()
                        .is_some_and(|s| s.requests.send(request.request.clone()).is_ok());
                    in_flight.push_back(request);
                    if !sent {
                        // No stream yet, or its request side is gone (its answers tell why).
                        if stream.is_none() {
                            self.resend(&mut in_flight, &mut stream).await;
                        }
                    }
                }
                Event::Work(None) => open = false,
                Event::Idle => stream = None,
            }
        }
    }

    /// The request of `batches`; a batch that cannot be encoded fails alone. `None` when
    /// none could be (the dispatcher has been told).
    fn encode(&self, batches: Vec<Batch<Reply>>) -> Option<InFlight> {
        let ids: Vec<u64> = batches.iter().map(|b| b.id).collect();
        let mut encoded: Vec<BytesMut> = Vec::with_capacity(batches.len());
        let mut sent = Vec::with_capacity(batches.len());
        for mut batch in batches {
            let built = std::mem::take(&mut batch.records);
            match built.finish_mut(self.config.compression, ProducerFields::default()) {
                Ok(bytes) => {
                    push_joined(&mut encoded, bytes);
                    sent.push(batch);
                }
                Err(e) => fail(batch, ClientError::from(e)),
            }
        }
        if sent.is_empty() {
            self.report(ids, false);
            return None;
        }
        let acks = match self.config.acks {
            Acks::None => v1::Acks::None,
            Acks::Leader => v1::Acks::Leader,
            Acks::All => v1::Acks::All,
        };
        Some(InFlight {
            // The batches are sent as they are, after the message's other fields.
            request: ProduceParts {
                topic: self.tp.topic.clone(),
                partition: self.tp.partition,
                acks: acks as i32,
                records: encoded.into_iter().map(BytesMut::freeze).collect(),
            },
            batches: sent,
            ids,
            attempt: 0,
        })
    }

    /// Opens a stream and sends every request in flight on it, in order; retries (or
    /// fails the oldest request) when the stream cannot be opened.
    async fn resend(&self, in_flight: &mut VecDeque<InFlight>, stream: &mut Option<Stream>) {
        while stream.is_none() && !in_flight.is_empty() {
            let requests = in_flight.iter().map(|f| f.request.clone()).collect();
            match self.open(requests).await {
                Ok(opened) => *stream = Some(opened),
                Err(e) => self.failed(e, in_flight).await,
            }
        }
    }

    /// Opens a stream, with `first` sent on it.
    async fn open(&self, first: Vec<ProduceParts>) -> Result<Stream, ClientError> {
        let (requests, rx) = mpsc::unbounded_channel();
        for request in first {
            let _ = requests.send(request);
        }
        let body = RequestBody {
            requests: rx,
            pieces: VecDeque::new(),
        };
        let decoder = tonic::codec::Codec::decoder(&mut tonic_prost::ProstCodec::<
            v1::ProduceResponse,
            v1::ProduceResponse,
        >::default());
        let answers = raw_streaming(&self.channel, PRODUCE_STREAM, body, decoder)
            .await
            .map_err(produce_error)?;
        Ok(Stream { requests, answers })
    }

    /// The oldest request in flight failed with `e`: it waits to be tried again, or fails.
    async fn failed(&self, e: ClientError, in_flight: &mut VecDeque<InFlight>) {
        let oldest = in_flight.front_mut().expect("a failure is of a request");
        if e.is_retriable() && oldest.attempt < self.config.retries {
            oldest.attempt += 1;
            tracing::debug!(topic = %self.tp.topic, partition = self.tp.partition,
                attempt = oldest.attempt, error = %e, "retrying produce");
            tokio::time::sleep(Duration::from_millis(self.config.retry_backoff_ms)).await;
            return;
        }
        let oldest = in_flight.pop_front().expect("checked");
        let stale_metadata = matches!(
            e,
            ClientError::UnknownPartition(_) | ClientError::UnknownTopic(_)
        );
        for batch in oldest.batches {
            fail(batch, e.clone());
        }
        self.report(oldest.ids, stale_metadata);
    }

    fn succeeded(&self, done: InFlight, answer: &v1::ProduceResponse) {
        let mut base = answer.base_offset;
        for batch in done.batches {
            let n = batch.replies.len() as i64;
            for (i, reply) in batch.replies.into_iter().enumerate() {
                let offset = match self.config.acks {
                    Acks::None => -1,
                    _ => base + i as i64,
                };
                reply.send(Ok(RecordMetadata {
                    partition: self.tp.partition,
                    offset,
                }));
            }
            base += n;
        }
        for batch in done.request.records {
            self.pool.give(batch);
        }
        self.report(done.ids, false);
    }

    fn report(&self, ids: Vec<u64>, stale_metadata: bool) {
        let _ = self.done.send(Done {
            tp: self.tp.clone(),
            ids,
            stale_metadata,
        });
    }
}

/// `ProduceStream`'s request body: each request sent on the stream, as its gRPC frame's
/// pieces (the head, then the batches as they are: no copy into a message buffer). Ends
/// when the sender drops the stream.
struct RequestBody {
    requests: mpsc::UnboundedReceiver<ProduceParts>,
    /// The rest of the request being sent.
    pieces: VecDeque<Bytes>,
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            if let Some(piece) = this.pieces.pop_front() {
                return Poll::Ready(Some(Ok(http_body::Frame::data(piece))));
            }
            match this.requests.poll_recv(cx) {
                Poll::Ready(Some(request)) => this.pieces.extend(request.grpc_frame()),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The next answer on the stream; a stream that ends with requests in flight is a
/// (retriable) failure of the oldest.
async fn next_answer(stream: &mut Option<Stream>) -> Result<v1::ProduceResponse, ClientError> {
    let Some(stream) = stream else {
        return Err(ClientError::Unavailable("no produce stream".into()));
    };
    // As long as a unary call may take: a broker that is up but never answers (a stuck
    // disk) fails the oldest request instead of holding the producer forever.
    let answer = tokio::time::timeout(REQUEST_TIMEOUT, stream.answers.message()).await;
    match answer {
        Ok(Ok(Some(answer))) => Ok(answer),
        Ok(Ok(None)) => Err(ClientError::Unavailable(
            "the broker ended the produce stream".into(),
        )),
        Ok(Err(status)) => Err(produce_error(status)),
        Err(_) => Err(ClientError::Transport(format!(
            "no answer to a produce request within {} s",
            REQUEST_TIMEOUT.as_secs()
        ))),
    }
}

fn produce_error(status: tonic::Status) -> ClientError {
    match ClientError::from_status(status, None) {
        // A produce names no offset: OUT_OF_RANGE is gRPC's message size limit refusing
        // the request.
        ClientError::OffsetOutOfRange { message, .. } => ClientError::RecordTooLarge(message),
        e => e,
    }
}

pub(super) fn fail(batch: Batch<Reply>, e: ClientError) {
    for reply in batch.replies {
        reply.send(Err(e.clone()));
    }
}
