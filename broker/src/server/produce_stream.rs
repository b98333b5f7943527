//! The pipeline of a `ProduceStream` call: requests are appended one at a time in the
//! order received, and answered in that order once due (acks=all: once the append is
//! fsync'd). The appends run ahead of the answers, so a slow fsync neither stops the
//! producer nor delays its records to consumers, who see them at append.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use fjord_protocol::v1;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use crate::partition::DurableWait;

use super::stopped;

/// The answers of a produce stream, in the order of its requests.
pub type Answers = Pin<Box<dyn Stream<Item = Result<v1::ProduceResponse, Status>> + Send>>;

/// How far a stream's appends may run ahead of its answers.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Appended requests whose answers are not yet sent, at most.
    pub pending: usize,
    /// Record bytes of appended acks=all requests not yet fsync'd, at most (a larger
    /// request goes alone).
    pub durable_bytes: usize,
}

/// A stream's limits in the broker. A disk that holds an fsync for half a second (this
/// project's VM does, see docs/BENCHMARKS.md, W4) meets about 900 requests at W4's 1,800 a
/// second, and the producer's own bound is 32 MiB (`buffer_memory`). The answers wait in
/// a queue of small entries: the records are in the log by then.
pub const LIMITS: Limits = Limits {
    pending: 4096,
    durable_bytes: 64 * 1024 * 1024,
};

/// An appended request, waiting for its turn to be answered.
enum Pending {
    Done(Result<v1::ProduceResponse, Status>),
    /// acks=all: answered once this fsync is done; holds its bytes of the durable budget
    /// until then.
    Durable(v1::ProduceResponse, DurableWait, OwnedSemaphorePermit),
}

/// Runs the pipeline of one stream: `append` appends a request and says what its answer
/// waits for (`None`: nothing). Appending stops at the first failure (nothing after a
/// failed request is appended), when the client has gone, and at shutdown; the answers
/// end with the first failure.
pub fn pipeline<S, A, F>(
    mut requests: S,
    mut append: A,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) -> Answers
where
    S: Stream<Item = Result<v1::ProduceRequest, Status>> + Send + Unpin + 'static,
    A: FnMut(v1::ProduceRequest) -> F + Send + 'static,
    F: Future<Output = Result<(v1::ProduceResponse, Option<DurableWait>), Status>> + Send,
{
    let (pending_tx, mut pending_rx) = mpsc::channel(limits.pending.max(1));
    // Answers due, waiting for the client (HTTP/2 flow control) to take them.
    let (answers_tx, answers_rx) = mpsc::channel(16);
    // u32 permits: one request takes at most the whole budget.
    let budget = limits.durable_bytes.clamp(1, u32::MAX as usize);
    let room = Arc::new(Semaphore::new(budget));
    let mut stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let Some(next) = unless_stopped(requests.next(), &mut stop, &pending_tx).await else {
                return;
            };
            let pending = match next {
                Some(Ok(request)) => {
                    // Only acks=all waits for an fsync; acks 0 and 1 take no room.
                    let want = if request.acks == v1::Acks::All as i32 {
                        request.records.len().clamp(1, budget) as u32
                    } else {
                        0
                    };
                    let room = Arc::clone(&room).acquire_many_owned(want);
                    let Some(permit) = unless_stopped(room, &mut stop, &pending_tx).await else {
                        return;
                    };
                    let permit = permit.expect("the semaphore is never closed");
                    match append(request).await {
                        Ok((answer, None)) => Pending::Done(Ok(answer)),
                        Ok((answer, Some(durable))) => Pending::Durable(answer, durable, permit),
                        Err(status) => Pending::Done(Err(status)),
                    }
                }
                // The client closed its side: the answers still due go out.
                None => return,
                // A request that could not be read (too large, say) fails in its turn.
                Some(Err(status)) => Pending::Done(Err(super::grpc::refuse(status))),
            };
            let failed = matches!(pending, Pending::Done(Err(_)));
            let sent = tokio::select! {
                sent = pending_tx.send(pending) => sent.is_ok(),
                _ = stopped(&mut stop) => false,
            };
            if !sent || failed {
                return;
            }
        }
    });
    // Answers, in order; the first failure ends the stream. A client that went away (its
    // answer stream dropped) ends it too, and with it the appends.
    let mut stop = shutdown;
    tokio::spawn(async move {
        loop {
            let pending = tokio::select! {
                pending = pending_rx.recv() => pending,
                _ = answers_tx.closed() => return,
            };
            let Some(pending) = pending else { return };
            let answer = match pending {
                Pending::Done(answer) => answer,
                Pending::Durable(answer, durable, _room) => tokio::select! {
                    durable = durable => durable
                        .map(|()| answer)
                        .map_err(|e| super::grpc::refuse(super::grpc::storage_status(e))),
                    // Nobody to tell: the appends end too (the fsync goes on regardless).
                    _ = answers_tx.closed() => return,
                },
            };
            let failed = answer.is_err();
            // Answers that can go now do; a client that does not read them must not hold
            // up shutdown.
            let sent = tokio::select! {
                biased;
                sent = answers_tx.send(answer) => sent.is_ok(),
                _ = stopped(&mut stop) => false,
            };
            if !sent || failed {
                return;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(answers_rx))
}

/// `work`'s output; `None` if the client has gone (the answers with it) or the broker
/// shuts down first (then the client is told, in the request's turn).
async fn unless_stopped<T>(
    work: impl Future<Output = T>,
    stop: &mut watch::Receiver<bool>,
    pending: &mpsc::Sender<Pending>,
) -> Option<T> {
    tokio::select! {
        biased;
        _ = stopped(stop) => {
            let closing = Err(Status::unavailable("the broker is shutting down"));
            let _ = pending.try_send(Pending::Done(closing));
            None
        }
        _ = pending.closed() => None,
        output = work => Some(output),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::storage::StorageError;

    /// What the fake appends saw, and the fsyncs the test lets finish.
    #[derive(Default)]
    struct Fake {
        appended: Mutex<Vec<i64>>,
        /// Fsyncs at or below this request number are done.
        durable: Mutex<Option<watch::Sender<i64>>>,
    }

    fn request(records: usize) -> Result<v1::ProduceRequest, Status> {
        request_with(records, v1::Acks::All)
    }

    fn request_with(records: usize, acks: v1::Acks) -> Result<v1::ProduceRequest, Status> {
        Ok(v1::ProduceRequest {
            topic: "t".into(),
            partition: 0,
            acks: acks as i32,
            records: Bytes::from(vec![0u8; records]),
        })
    }

    /// A running pipeline: its answers, the fake log, the count of appends, and the
    /// broker's shutdown switch.
    type Running = (
        Answers,
        Arc<Fake>,
        watch::Receiver<usize>,
        watch::Sender<bool>,
    );

    fn run(requests: Vec<Result<v1::ProduceRequest, Status>>, limits: Limits) -> Running {
        run_stream(tokio_stream::iter(requests), limits)
    }

    /// A pipeline over `requests` whose appends are recorded in `log`. An acks=all one
    /// is durable once the test moves the durable mark past it, and fails if the test
    /// drops the mark; the others are answered at once.
    fn run_stream(
        requests: impl Stream<Item = Result<v1::ProduceRequest, Status>> + Send + Unpin + 'static,
        limits: Limits,
    ) -> Running {
        let log = Arc::new(Fake::default());
        let (durable_tx, durable_rx) = watch::channel(-1i64);
        *log.durable.lock().unwrap() = Some(durable_tx);
        let (count_tx, count_rx) = watch::channel(0usize);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let seen = Arc::clone(&log);
        let append = move |request: v1::ProduceRequest| {
            let mut appended = seen.appended.lock().unwrap();
            let n = appended.len() as i64;
            appended.push(n);
            count_tx.send_replace(appended.len());
            let mut durable = durable_rx.clone();
            let wait: DurableWait = Box::pin(async move {
                durable
                    .wait_for(|&mark| mark >= n)
                    .await
                    .map(|_| ())
                    .map_err(|_| StorageError::LogOffline { dir: "gone".into() })
            });
            let answer = v1::ProduceResponse {
                base_offset: n,
                last_offset: n,
                ..v1::ProduceResponse::default()
            };
            let wait = (request.acks == v1::Acks::All as i32).then_some(wait);
            async move { Ok((answer, wait)) }
        };
        let answers = pipeline(requests, append, limits, shutdown_rx);
        (answers, log, count_rx, shutdown_tx)
    }

    fn make_durable(log: &Fake, through: i64) {
        log.durable
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .send_replace(through);
    }

    async fn appended(count: &mut watch::Receiver<usize>, n: usize) {
        let reached = count.wait_for(|&c| c >= n);
        tokio::time::timeout(Duration::from_secs(10), reached)
            .await
            .expect("the appends stopped short")
            .unwrap();
    }

    #[tokio::test]
    async fn appends_run_ahead_of_a_slow_fsync_and_answers_keep_their_order() {
        let requests = (0..1000).map(|_| request(100)).collect();
        let (mut answers, log, mut count, _shutdown) = run(requests, LIMITS);
        // No fsync is done, yet every request is appended (consumers see it).
        appended(&mut count, 1000).await;
        assert!(
            futures_now(answers.next()).is_none(),
            "answered before its fsync"
        );
        make_durable(&log, 999);
        answered_in_order(&mut answers, 0..1000).await;
        assert!(next(&mut answers).await.is_none());
    }

    #[tokio::test]
    async fn the_bytes_awaiting_an_fsync_hold_back_the_next_append() {
        let limits = Limits {
            pending: 100,
            durable_bytes: 10_000,
        };
        // 4,000 bytes each: two fit, the third waits; one larger than the budget goes alone.
        let requests = vec![request(4000), request(4000), request(4000), request(50_000)];
        let (mut answers, log, mut count, _shutdown) = run(requests, limits);
        // Room comes only with an fsync: nothing else can have let the third one in.
        appended_only(&mut count, 2).await;
        make_durable(&log, 0);
        assert_eq!(next(&mut answers).await.unwrap().unwrap().base_offset, 0);
        appended(&mut count, 3).await;
        make_durable(&log, 2);
        appended(&mut count, 4).await;
        make_durable(&log, 3);
        answered_in_order(&mut answers, 1..4).await;
        assert!(next(&mut answers).await.is_none());
    }

    #[tokio::test]
    async fn the_pending_count_holds_back_the_next_append() {
        let limits = Limits {
            pending: 3,
            durable_bytes: 1 << 30,
        };
        let requests = (0..50).map(|_| request(10)).collect();
        let (mut answers, log, mut count, _shutdown) = run(requests, limits);
        // 3 queued, one awaited by the answering task, one appended and waiting to queue.
        appended_only(&mut count, 5).await;
        make_durable(&log, 49);
        answered_in_order(&mut answers, 0..50).await;
        assert_eq!(*count.borrow(), 50);
    }

    #[tokio::test]
    async fn shutdown_while_waiting_for_room_appends_no_more() {
        let limits = Limits {
            pending: 100,
            durable_bytes: 100,
        };
        let requests = vec![request(100), request(100)];
        let (mut answers, log, mut count, shutdown) = run(requests, limits);
        appended(&mut count, 1).await;
        shutdown.send_replace(true);
        // The appended one is answered once durable; the second is refused, not appended.
        make_durable(&log, 0);
        assert_eq!(next(&mut answers).await.unwrap().unwrap().base_offset, 0);
        let refused = next(&mut answers).await.unwrap().unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        assert!(next(&mut answers).await.is_none());
        assert_eq!(*count.borrow(), 1);
    }

    #[tokio::test]
    async fn acks_one_takes_no_room_from_the_durable_budget() {
        let limits = Limits {
            pending: 100,
            durable_bytes: 100,
        };
        let requests = vec![
            request(100),
            request_with(100, v1::Acks::Leader),
            request(100),
        ];
        let (mut answers, log, mut count, _shutdown) = run(requests, limits);
        // The acks=1 one goes in behind the first fsync; the third acks=all one waits.
        appended_only(&mut count, 2).await;
        make_durable(&log, 2);
        answered_in_order(&mut answers, 0..3).await;
    }

    #[tokio::test]
    async fn a_failed_fsync_ends_the_stream() {
        let (mut answers, log, mut count, _shutdown) = run(vec![request(10)], LIMITS);
        appended(&mut count, 1).await;
        // The fsync fails: its answer is an error, and nothing follows it.
        log.durable.lock().unwrap().take();
        let failed = next(&mut answers).await.unwrap().unwrap_err();
        assert_eq!(failed.code(), tonic::Code::Unavailable, "{failed:?}");
        assert!(next(&mut answers).await.is_none());
    }

    #[tokio::test]
    async fn a_client_that_goes_away_ends_the_appends() {
        let (tx, rx) = mpsc::channel(10);
        let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
        let (answers, _log, mut count, _shutdown) = run_stream(requests, LIMITS);
        tx.send(request(10)).await.unwrap();
        appended(&mut count, 1).await;
        // The answer stream dropped: both tasks end, and with them the request stream.
        drop(answers);
        tokio::time::timeout(Duration::from_secs(10), tx.closed())
            .await
            .expect("the appends went on");
        assert_eq!(*count.borrow(), 1);
    }

    /// Waits until `n` requests are appended, and checks that no more are (the next one
    /// is held back: nothing the test does not do can let it in).
    async fn appended_only(count: &mut watch::Receiver<usize>, n: usize) {
        appended(count, n).await;
        tokio::task::yield_now().await;
        assert_eq!(*count.borrow(), n);
    }

    /// The answers of requests `range`, in order.
    async fn answered_in_order(answers: &mut Answers, range: std::ops::Range<i64>) {
        for n in range {
            assert_eq!(next(answers).await.unwrap().unwrap().base_offset, n);
        }
    }

    /// The next answer, failing the test if none comes.
    async fn next(answers: &mut Answers) -> Option<Result<v1::ProduceResponse, Status>> {
        tokio::time::timeout(Duration::from_secs(10), answers.next())
            .await
            .expect("no answer came")
    }

    /// The output of `future` if it is ready without waiting.
    fn futures_now<F: Future>(future: F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut future = std::pin::pin!(future);
        match future.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        }
    }
}
