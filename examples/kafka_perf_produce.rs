//! W5 of docs/BENCHMARKS.md: W1 through Fjord's Kafka listener with librdkafka, the way
//! `kafka-producer-perf-test` measures a producer: N records of B bytes (null keys) sent
//! as fast as the producer takes them, each one's acknowledgement latency recorded.
//!
//! ```sh
//! cargo build --release --example kafka_perf_produce
//! target/release/examples/kafka_perf_produce --bootstrap 127.0.0.1:9092 --topic perf \
//!     --num-records 500000 --record-size 1024 --acks 1 --partition 0 \
//!     -X message.copy.max.bytes=0
//! ```
//!
//! `-X KEY=VALUE` sets any librdkafka setting (docs/BENCHMARKS.md gives W5's).
//!
//! The topic must exist (`fjord topic create perf`). Idempotence is off: the listener does
//! not serve InitProducerId yet.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

#[derive(Parser)]
#[command(about = "librdkafka producer throughput against a Kafka listener (W5)")]
struct Args {
    /// The Kafka listener.
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    #[arg(long)]
    topic: String,
    #[arg(long, default_value_t = 500_000)]
    num_records: u64,
    #[arg(long, default_value_t = 1024)]
    record_size: usize,
    /// 0, 1 or all.
    #[arg(long, default_value = "1")]
    acks: String,
    /// librdkafka's batch.size, its own default by default (1,000,000 bytes, where Java's
    /// client has 16 KiB): one produce request per batch, as `fjord perf produce` sends
    /// requests of up to 1 MiB. With 16 KiB a request carries 15 records of 1 KiB, and
    /// librdkafka and the broker spent twice the CPU per record (235–242 MB/s against
    /// 460–544 MB/s at 1,000,000).
    #[arg(long, default_value_t = 1_000_000)]
    batch_bytes: usize,
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// The partition every record goes to, as rdkafka_performance's `-p`. Without it
    /// librdkafka's partitioner picks one for each record: for null keys its sticky
    /// partitioner takes the topic's lock and reads the clock per record, 4% of this
    /// client's instructions in W5 (callgrind), client work that says nothing of the
    /// broker. W5 writes one partition and names it.
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..))]
    partition: Option<i32>,
    /// Any other librdkafka setting, as KEY=VALUE (rdkafka_performance's -X); repeatable,
    /// applied last.
    #[arg(short = 'X', long = "config", value_parser = key_value)]
    config: Vec<(String, String)>,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Per-record outcomes, filled by librdkafka's delivery callbacks.
#[derive(Default)]
struct Outcomes {
    latencies_us: Vec<u64>,
    failed: u64,
    first_error: Option<String>,
    /// The sending thread waits for room in librdkafka's queue.
    waiting: bool,
}

/// The outcomes, and the sending thread's wake-up when a delivery makes room.
struct Shared {
    outcomes: Mutex<Outcomes>,
    room: Condvar,
    /// What the send times (the records' delivery opaques) count from.
    start: Instant,
}

impl Shared {
    fn outcomes(&self) -> MutexGuard<'_, Outcomes> {
        self.outcomes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks the sending thread until a delivery makes room in librdkafka's queue (or
    /// 10 ms pass, in case the last delivery came before the wait began), as Java's
    /// `send` blocks when its buffer is full. Not `producer.poll(1 ms)`: rust-rdkafka turns
    /// a deadline less than 1 ms away into a 0 ms poll, so that poll spins for its whole
    /// millisecond: 17.9% of the machine's samples, taken from librdkafka and the broker.
    fn wait_for_room(&self) {
        let mut outcomes = self.outcomes();
        outcomes.waiting = true;
        let _ = self
            .room
            .wait_timeout_while(outcomes, Duration::from_millis(10), |o| o.waiting);
    }
}

struct Context(Arc<Shared>);

impl ClientContext for Context {}

/// Microseconds since `start`: a record's send time, carried as its delivery opaque (a
/// number, not a box: no allocation per record).
fn micros_since(start: Instant) -> usize {
    start.elapsed().as_micros() as usize
}

impl ProducerContext for Context {
    /// When the record was handed to the producer ([`micros_since`] the start).
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_us: Self::DeliveryOpaque) {
        let now_us = micros_since(self.0.start);
        let mut outcomes = self.0.outcomes();
        match result {
            Ok(_) => outcomes
                .latencies_us
                .push(now_us.saturating_sub(sent_us) as u64),
            Err((e, _)) => {
                outcomes.failed += 1;
                outcomes.first_error.get_or_insert_with(|| e.to_string());
            }
        }
        if outcomes.waiting {
            outcomes.waiting = false;
            drop(outcomes);
            self.0.room.notify_one();
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let shared = Arc::new(Shared {
        outcomes: Mutex::default(),
        room: Condvar::new(),
        start: Instant::now(),
    });
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &args.bootstrap)
        .set("acks", &args.acks)
        .set("enable.idempotence", "false")
        .set("linger.ms", args.linger_ms.to_string())
        .set("batch.size", args.batch_bytes.to_string())
        .set("queue.buffering.max.kbytes", (32 * 1024).to_string());
    for (key, value) in &args.config {
        config.set(key, value);
    }
    let producer: ThreadedProducer<Context> =
        config.create_with_context(Context(shared.clone()))?;
    let value = vec![b'x'; args.record_size];
    let start = Instant::now();
    for _ in 0..args.num_records {
        let mut opaque = micros_since(shared.start);
        loop {
            let mut record = BaseRecord::<(), [u8], usize>::with_opaque_to(&args.topic, opaque)
                .payload(&value[..]);
            if let Some(partition) = args.partition {
                record = record.partition(partition);
            }
            match producer.send(record) {
                Ok(()) => break,
                // The local queue is full: wait for deliveries to make room.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    opaque = back.delivery_opaque;
                    shared.wait_for_room();
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    let elapsed = start.elapsed().as_secs_f64();
    let mut outcomes = shared.outcomes();
    if let Some(e) = &outcomes.first_error {
        return Err(format!("{} records failed, the first with: {e}", outcomes.failed).into());
    }
    let sent = outcomes.latencies_us.len() as f64;
    outcomes.latencies_us.sort_unstable();
    let lat = &outcomes.latencies_us;
    let avg = lat.iter().sum::<u64>() as f64 / sent.max(1.0) / 1000.0;
    println!(
        "{} records sent, {:.1} records/sec ({:.2} MB/sec), {avg:.2} ms avg latency, \
         {:.2} ms 50th, {:.2} ms 99th, {:.2} ms 99.9th, {:.2} ms max latency.",
        lat.len(),
        sent / elapsed,
        sent * args.record_size as f64 / elapsed / 1e6,
        percentile(lat, 0.5),
        percentile(lat, 0.99),
        percentile(lat, 0.999),
        percentile(lat, 1.0),
    );
    Ok(())
}
