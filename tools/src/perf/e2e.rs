//! `fjord perf e2e`: the latency from send to delivery (Kafka's EndToEndLatency), with the
//! producer at a fixed rate and a consumer tailing the topic in the same process.
//!
//! Each value starts with its send time (u64 little-endian nanoseconds since an `Instant`
//! both ends share) and this run's id (u64), so records of other writers are ignored.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Args;
use fjord_client::{Admin, Consumer, ConsumerConfig, Producer, ProducerConfig, Seek};
use tokio::time::Instant;

use super::load::{BUFFER_BYTES, Payload, SplitMix, send_paced};
use super::stats::{Json, Latencies, Rate, human_latency, human_rate};
use super::{AcksArg, CompressionArg, at_least, ensure_topic, join_failure};
use crate::output::{Failure, Out};

/// Bytes of the send time and run id at the start of each value.
const STAMP_BYTES: usize = 16;

#[derive(Debug, Args)]
pub struct E2eArgs {
    /// The topic (created if it does not exist).
    #[arg(long)]
    topic: String,
    /// Records per second.
    #[arg(long, value_name = "R")]
    rate: f64,
    /// Seconds to produce for: rate x duration records are sent.
    #[arg(long, value_name = "S")]
    duration: f64,
    /// When the broker acknowledges: all (durable) or 1 (leader append).
    #[arg(long, value_enum, default_value = "all")]
    acks: AcksArg,
    /// Bytes of each record's value (at least 16: the send time and the run id).
    #[arg(long, value_name = "B", default_value_t = 1024)]
    record_size: usize,
    /// A batch is sent once it holds this many bytes.
    #[arg(long, value_name = "B", default_value_t = ProducerConfig::default().batch_bytes)]
    batch_bytes: usize,
    /// How long a batch waits for more records. 0 by default, as in Kafka's end-to-end
    /// latency tool: a record goes as soon as the partition has a request slot free, and
    /// records that arrive while requests are in flight still share batches.
    #[arg(long, value_name = "L", default_value_t = 0)]
    linger_ms: u64,
    /// How batches are compressed.
    #[arg(long, value_enum, default_value = "none")]
    compression: CompressionArg,
    /// Partitions of the topic if it is created (default 1); if given, an existing topic
    /// must have this many.
    #[arg(long, value_name = "K")]
    partitions: Option<u32>,
    /// How long to wait, once every record is acknowledged, for the last deliveries.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    timeout_ms: u64,
    /// Print one JSON object instead of the summary line.
    #[arg(long)]
    json: bool,
}

/// What the tailing consumer saw.
struct Delivered {
    latencies: Latencies,
    bytes: u64,
    last: Instant,
}

pub async fn run(brokers: &str, args: E2eArgs) -> Result<(), Failure> {
    at_least("record-size", args.record_size, STAMP_BYTES)?;
    at_least("batch-bytes", args.batch_bytes, 1)?;
    if let Some(k) = args.partitions {
        at_least("partitions", k, 1)?;
    }
    let positive = |x: f64| x > 0.0 && x.is_finite();
    if !positive(args.rate) || !positive(args.duration) {
        return Err(Failure::Message(
            "--rate and --duration must be positive".into(),
        ));
    }
    let total = (args.rate * args.duration).round() as u64;
    at_least("rate x --duration", total, 1)?;

    let admin = Admin::connect(brokers).await?;
    ensure_topic(&admin, &args.topic, args.partitions).await?;
    // The consumer is at the end of every partition before the first record is sent.
    let mut consumer = Consumer::connect(brokers, ConsumerConfig::default()).await?;
    consumer.assign(&args.topic, &[]).await?;
    for tp in consumer.assignment() {
        consumer.seek(&tp.topic, tp.partition, Seek::End).await?;
    }
    let config = ProducerConfig {
        acks: args.acks.into(),
        linger_ms: args.linger_ms,
        batch_bytes: args.batch_bytes,
        compression: args.compression.into(),
        buffer_memory: BUFFER_BYTES,
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(brokers, config).await?;

    let epoch = Instant::now();
    let run_id = SplitMix::from_time().next_u64();
    let delivered = Arc::new(AtomicU64::new(0));
    let tail = tokio::spawn(tail(consumer, epoch, run_id, total, Arc::clone(&delivered)));
    let payload = Payload::new(args.record_size);
    let sent = send_paced(
        producer,
        args.topic.clone(),
        total,
        Some(args.rate),
        move |i| {
            let mut stamp = [0u8; 24];
            let now = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
            stamp[..8].copy_from_slice(&now.to_le_bytes());
            stamp[8..16].copy_from_slice(&run_id.to_le_bytes());
            stamp[16..].copy_from_slice(&i.to_le_bytes());
            payload.record(i, &stamp)
        },
    )
    .await;
    let sent = match sent {
        Ok(sent) => sent,
        Err(e) => {
            tail.abort();
            return Err(e);
        }
    };
    if let Some(e) = sent.first_error {
        tail.abort();
        return Err(Failure::Message(format!(
            "{} records failed ({} of {total} acknowledged): {e}",
            sent.failed,
            sent.latencies.len()
        )));
    }
    let timeout = Duration::from_millis(args.timeout_ms);
    let got = match tokio::time::timeout(timeout, tail).await {
        Ok(joined) => joined.map_err(join_failure)??,
        Err(_) => {
            return Err(Failure::Message(format!(
                "{} of {total} acknowledged records delivered within {} ms",
                delivered.load(Ordering::Relaxed),
                timeout.as_millis()
            )));
        }
    };
    let rate = Rate {
        records: got.latencies.len() as u64,
        bytes: got.bytes,
        elapsed: got.last.duration_since(epoch),
    };
    let Some(latency) = got.latencies.summary() else {
        return Err(Failure::Message("no record was delivered".into()));
    };
    let line = if args.json {
        Json::new().rate(&rate).latency(&latency).finish()
    } else {
        format!(
            "{} records delivered, {}, {}.",
            rate.records,
            human_rate(&rate),
            human_latency(&latency).replace("avg latency", "avg end-to-end latency")
        )
    };
    let mut out = Out::new();
    out.line(&line)?;
    out.flush()
}

/// Polls until `total` records of this run arrived, timing each from its stamp.
async fn tail(
    mut consumer: Consumer,
    epoch: Instant,
    run_id: u64,
    total: u64,
    delivered: Arc<AtomicU64>,
) -> Result<Delivered, Failure> {
    let mut got = Delivered {
        latencies: Latencies::with_capacity(total.min(1 << 24) as usize),
        bytes: 0,
        last: epoch,
    };
    while (got.latencies.len() as u64) < total {
        let records = consumer.poll().await?;
        let now = Instant::now();
        let now_ns = u64::try_from(now.duration_since(epoch).as_nanos()).unwrap_or(u64::MAX);
        for r in &records {
            let Some(value) = &r.value else { continue };
            let Some((sent_ns, id)) = stamp(value) else {
                continue;
            };
            if id != run_id {
                continue;
            }
            got.latencies.push_ns(now_ns.saturating_sub(sent_ns));
            got.bytes += value.len() as u64;
            got.last = now;
        }
        delivered.store(got.latencies.len() as u64, Ordering::Relaxed);
    }
    Ok(got)
}

/// The send time and run id at the start of a value.
fn stamp(value: &[u8]) -> Option<(u64, u64)> {
    let sent = u64::from_le_bytes(value.get(..8)?.try_into().ok()?);
    let id = u64::from_le_bytes(value.get(8..STAMP_BYTES)?.try_into().ok()?);
    Some((sent, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_short_values_have_none() {
        let mut v = 42u64.to_le_bytes().to_vec();
        v.extend(7u64.to_le_bytes());
        v.push(0);
        assert_eq!(stamp(&v), Some((42, 7)));
        assert_eq!(stamp(&v[..15]), None);
    }
}
