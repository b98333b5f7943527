//! What the load generators share: record payloads, the token bucket that paces them, and
//! the paced sender that measures each record's acknowledgement latency.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use fjord_client::{ClientError, Producer, ProducerRecord};
use tokio::time::Instant;

use super::stats::Latencies;
use crate::output::Failure;

/// Bytes of records a producer keeps queued or unacknowledged at most (its
/// `buffer_memory`, Kafka's `buffer.memory`): the producer's `send` waits for room beyond
/// that, which is what holds an unlimited run back.
pub const BUFFER_BYTES: usize = 32 * 1024 * 1024;

/// Random bytes beyond one record's size in the payload pool: each record is a window of
/// the pool at an offset that moves with its counter.
const POOL_EXTRA: usize = 64 * 1024;

/// A pseudo-random generator (splitmix64): payloads need to be random-ish, not secure.
pub struct SplitMix(u64);

impl SplitMix {
    /// Seeded from the clock and the process id.
    pub fn from_time() -> SplitMix {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        SplitMix(nanos ^ (u64::from(std::process::id()) << 32))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `n` random alphanumeric bytes (text-like: compressible, but not trivially).
    pub fn alphanumeric(&mut self, n: usize) -> Vec<u8> {
        const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            for b in self.next_u64().to_le_bytes() {
                out.push(CHARS[usize::from(b) % CHARS.len()]);
            }
        }
        out.truncate(n);
        out
    }
}

/// Record values of a fixed size, cut from a pool generated once.
#[derive(Debug, Clone)]
pub struct Payload {
    pool: Bytes,
    size: usize,
}

impl Payload {
    /// The pool lives as long as the process (a perf run makes one or two, of the record
    /// size plus 64 KiB): a window of a static buffer is cloned and dropped without the
    /// shared reference count that the sending thread and the producer's task would
    /// otherwise both write for every record (Kafka's perf test sends one array too).
    pub fn new(size: usize) -> Payload {
        let pool = SplitMix::from_time().alphanumeric(size + POOL_EXTRA);
        Payload {
            pool: Bytes::from_static(Box::leak(pool.into_boxed_slice())),
            size,
        }
    }

    /// The value of record `counter` without copying: a window of the pool at an offset
    /// chosen by the counter (values differ, as in a real stream, but cost no copy to
    /// make: the producer's own work is what is measured).
    pub fn window(&self, counter: u64) -> Bytes {
        // 4099 is prime, so consecutive records start at distant offsets.
        let offset = (counter.wrapping_mul(4099) % POOL_EXTRA as u64) as usize;
        self.pool.slice(offset..offset + self.size)
    }

    /// The value of record `counter`: a window of the pool at an offset chosen by the
    /// counter, whose first bytes are `prefix` (as many of them as fit).
    pub fn record(&self, counter: u64, prefix: &[u8]) -> Bytes {
        let mut value = BytesMut::from(&self.window(counter)[..]);
        let n = prefix.len().min(self.size);
        value[..n].copy_from_slice(&prefix[..n]);
        value.freeze()
    }
}

/// A token bucket refilled at `rate` tokens a second, which blocks its thread until a
/// token is due.
///
/// It sleeps with the operating system's timer, not tokio's: tokio's resolution is 1 ms,
/// so at 50 MB/s of 1 KiB records each tick released 51 records at once, and the last of
/// them waited for the first 50 to go through, which the end-to-end figure then counted as
/// latency. A thread's sleep is precise to tens of microseconds here; it sleeps at least
/// [`PACER_TICK`]. Run it on a thread of its own ([`send_paced`] does), never on a runtime
/// worker.
pub struct Pacer {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

/// The shortest sleep: at 50 MB/s of 1 KiB records a release is 26 records. Shorter ticks
/// cut the end-to-end median further (0.26–0.29 ms at 250 µs against 0.30–0.41 ms here
/// and 0.36–0.50 ms at 1 ms), but each smaller release is a request of its own: producer
/// and broker used 40% more CPU at 500 µs and twice as much at 250 µs as at 1 ms, and on
/// two shared cores that CPU came back as tail latency.
const PACER_TICK: Duration = Duration::from_micros(500);

/// How much sending time the bucket holds at most: a wake-up that comes a few
/// milliseconds late (a busy machine) still releases what it owes, so the rate holds,
/// while a sender that fell far behind does not catch up in one burst.
const PACER_BURST: Duration = Duration::from_millis(5);

impl Pacer {
    /// `rate` must be positive. The bucket holds at most [`PACER_BURST`] worth of tokens
    /// (at least one).
    pub fn new(rate: f64) -> Pacer {
        let burst = (rate * PACER_BURST.as_secs_f64()).max(1.0);
        Pacer {
            rate,
            burst,
            tokens: 1.0,
            last: Instant::now(),
        }
    }

    /// Waits (blocking the thread) for at least one token and takes the whole tokens
    /// there are, up to `max` (at least 1).
    pub fn take(&mut self, max: u64) -> u64 {
        loop {
            let now = Instant::now();
            let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(self.burst);
            self.last = now;
            let whole = self.tokens.floor().min(max as f64);
            if whole >= 1.0 {
                self.tokens -= whole;
                return whole as u64;
            }
            // Until the next token is due, and at least a tick.
            let due = Duration::from_secs_f64((1.0 - self.tokens) / self.rate);
            std::thread::sleep(due.max(PACER_TICK));
        }
    }
}

/// Sets its flag when dropped: stops [`send_paced`]'s sending thread, which would
/// otherwise go on after the future that waits for it is gone.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What a [`send_paced`] run got back.
#[derive(Debug, Default)]
pub struct Sent {
    /// From `send` to the acknowledgement, for every acknowledged record.
    pub latencies: Latencies,
    pub failed: u64,
    pub first_error: Option<ClientError>,
}

/// Sends `count` keyless records to `topic`, record `i` with value `value(i)`, at most
/// `rate` a second (`None`: as fast as the producer takes them; its buffer bounds what is
/// unacknowledged). Each record's latency runs from just before `send`
/// until its acknowledgement callback runs (on the producer's task, so sending never
/// delays it). Stops sending at the first failure. Flushes the producer at the end.
///
/// A paced run sends from a thread of its own, where the [`Pacer`] sleeps; an unpaced one
/// on the runtime.
pub async fn send_paced<F>(
    producer: Producer,
    topic: String,
    count: u64,
    rate: Option<f64>,
    mut value: F,
) -> Result<Sent, Failure>
where
    F: FnMut(u64) -> Bytes + Send + 'static,
{
    let capacity = usize::try_from(count).unwrap_or(usize::MAX).min(1 << 24);
    let sent = Arc::new(Mutex::new(Sent {
        latencies: Latencies::with_capacity(capacity),
        ..Sent::default()
    }));
    let failed = Arc::new(AtomicBool::new(false));
    let mut pacer = rate.map(Pacer::new);
    let paced = pacer.is_some();
    let outcomes = Arc::clone(&sent);
    let stop = Arc::clone(&failed);
    // One clock reading a record, not two: its creation time is taken from the reading its
    // latency starts from, against a wall-clock reading taken once here.
    let (wall_start, clock_start) = (wall_clock_ms(), Instant::now());
    let sending = async move {
        let mut i = 0;
        'send: while i < count {
            let allowed = match pacer.as_mut() {
                Some(pacer) => pacer.take(count - i),
                None => count - i,
            };
            for _ in 0..allowed {
                if failed.load(Ordering::Relaxed) {
                    break 'send;
                }
                let start = Instant::now();
                let since = start.duration_since(clock_start).as_millis();
                let record = ProducerRecord {
                    topic: topic.clone(),
                    value: Some(value(i)),
                    timestamp_ms: Some(wall_start.saturating_add(since as i64)),
                    ..ProducerRecord::default()
                };
                let (done, stop) = (Arc::clone(&outcomes), Arc::clone(&failed));
                let queued = producer
                    .send_with(record, move |result| {
                        let latency = start.elapsed();
                        let mut sent = done.lock().unwrap_or_else(|p| p.into_inner());
                        match result {
                            Ok(_) => sent.latencies.push(latency),
                            Err(e) => {
                                stop.store(true, Ordering::Relaxed);
                                sent.failed += 1;
                                sent.first_error.get_or_insert(e);
                            }
                        }
                    })
                    .await;
                if let Err(e) = queued {
                    let mut sent = outcomes.lock().unwrap_or_else(|p| p.into_inner());
                    sent.failed += 1;
                    sent.first_error.get_or_insert(e);
                    break 'send;
                }
                i += 1;
            }
        }
        // Sends the last batch without waiting for linger, and waits for every outcome.
        let _ = producer.flush().await;
    };
    if paced {
        // The pacer blocks its thread: a thread of the blocking pool, driving the sends.
        // If this future is dropped, the thread stops at its next record.
        let _stop = StopOnDrop(stop);
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || runtime.block_on(sending))
            .await
            .map_err(|e| Failure::Message(format!("the sending thread failed: {e}")))?;
    } else {
        sending.await;
    }
    // Every callback has run (flush waits for all answers); take the results.
    let sent = std::mem::take(&mut *sent.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(sent)
}

/// Now, in milliseconds since the epoch.
fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_differ_and_keep_their_size() {
        let p = Payload::new(100);
        let a = p.record(1, &1u64.to_le_bytes());
        let b = p.record(2, &2u64.to_le_bytes());
        assert_eq!((a.len(), b.len()), (100, 100));
        assert_eq!(&a[..8], &1u64.to_le_bytes());
        assert_ne!(a[8..], b[8..]);
        // A prefix longer than the record is cut; an empty record is fine.
        assert_eq!(
            Payload::new(3).record(7, &[1, 2, 3, 4]),
            Bytes::from(vec![1, 2, 3])
        );
        assert!(Payload::new(0).record(7, &[1]).is_empty());
        let (w1, w2) = (p.window(1), p.window(2));
        assert_eq!((w1.len(), w2.len()), (100, 100));
        assert_ne!(w1, w2);
    }

    #[test]
    fn alphanumeric_payload() {
        let v = SplitMix(1).alphanumeric(1000);
        assert_eq!(v.len(), 1000);
        assert!(v.iter().all(u8::is_ascii_alphanumeric));
    }

    #[test]
    fn pacer_never_exceeds_the_rate() {
        // Real time: only the lower bound is certain on a loaded machine.
        let start = Instant::now();
        let mut pacer = Pacer::new(1000.0);
        let mut taken = 0;
        while taken < 200 {
            let n = pacer.take(200 - taken);
            assert!((1..=5).contains(&n), "at most 5 ms worth: {n}");
            taken += n;
        }
        // One token at the start, then 199 at 1000/s.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(199), "{elapsed:?}");
    }

    #[test]
    fn slow_pacer_sends_one_at_a_time() {
        let start = Instant::now();
        let mut pacer = Pacer::new(20.0);
        for _ in 0..3 {
            assert_eq!(pacer.take(10), 1);
        }
        // The first token is there at once, then one every 50 ms.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(100), "{elapsed:?}");
    }
}
