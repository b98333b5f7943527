//! `fjord perf produce`: N records from P producers (kafka-producer-perf-test).

use std::sync::Arc;

use clap::Args;
use fjord_client::{Admin, Producer, ProducerConfig};
use tokio::time::Instant;

use super::load::{BUFFER_BYTES, Payload, send_paced};
use super::stats::{Json, Latencies, Rate, human_latency, human_rate};
use super::{AcksArg, CompressionArg, at_least, ensure_topic, join_failure};
use crate::output::{Failure, Out};

#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// The topic (created if it does not exist).
    #[arg(long)]
    topic: String,
    /// Records to send in all.
    #[arg(long, value_name = "N")]
    num_records: u64,
    /// Bytes of each record's value (keys are null).
    #[arg(long, value_name = "B")]
    record_size: usize,
    /// Records per second at most, over all producers (-1: unlimited).
    #[arg(long, value_name = "R", allow_negative_numbers = true, default_value_t = -1.0)]
    throughput: f64,
    /// When the broker acknowledges: all (durable) or 1 (leader append).
    #[arg(long, value_enum, default_value = "all")]
    acks: AcksArg,
    /// A batch is sent once it holds this many bytes.
    #[arg(long, value_name = "B", default_value_t = ProducerConfig::default().batch_bytes)]
    batch_bytes: usize,
    /// How long a batch waits for more records.
    #[arg(long, value_name = "L", default_value_t = ProducerConfig::default().linger_ms)]
    linger_ms: u64,
    /// How batches are compressed.
    #[arg(long, value_enum, default_value = "none")]
    compression: CompressionArg,
    /// Producers (each its own connection and batches), sharing the records.
    #[arg(long, value_name = "P", default_value_t = 1)]
    producers: u32,
    /// Partitions of the topic if it is created (default 1); if given, an existing topic
    /// must have this many.
    #[arg(long, value_name = "K")]
    partitions: Option<u32>,
    /// Print one JSON object instead of the summary line.
    #[arg(long)]
    json: bool,
}

pub async fn run(brokers: &str, args: ProduceArgs) -> Result<(), Failure> {
    at_least("num-records", args.num_records, 1)?;
    at_least("producers", args.producers, 1)?;
    at_least("batch-bytes", args.batch_bytes, 1)?;
    if let Some(k) = args.partitions {
        at_least("partitions", k, 1)?;
    }
    // Kafka's convention: any negative throughput is "unlimited".
    let throughput = if args.throughput < 0.0 {
        None
    } else if args.throughput > 0.0 && args.throughput.is_finite() {
        Some(args.throughput)
    } else {
        return Err(Failure::Message(format!(
            "--throughput must be positive, or -1 for unlimited (got {})",
            args.throughput
        )));
    };
    let admin = Admin::connect(brokers).await?;
    ensure_topic(&admin, &args.topic, args.partitions).await?;
    let config = ProducerConfig {
        acks: args.acks.into(),
        linger_ms: args.linger_ms,
        batch_bytes: args.batch_bytes,
        compression: args.compression.into(),
        buffer_memory: BUFFER_BYTES,
        ..ProducerConfig::default()
    };
    let mut producers = Vec::new();
    for _ in 0..args.producers {
        producers.push(Producer::connect(brokers, config.clone()).await?);
    }
    let payload = Arc::new(Payload::new(args.record_size));
    let n = u64::from(args.producers);
    let start = Instant::now();
    let mut tasks = Vec::new();
    let mut first = 0;
    for (i, producer) in (0u64..).zip(producers) {
        let share = args.num_records / n + u64::from(i < args.num_records % n);
        let payload = Arc::clone(&payload);
        let base = first;
        first += share;
        tasks.push(tokio::spawn(send_paced(
            producer,
            args.topic.clone(),
            share,
            throughput.map(|r| r / n as f64),
            move |i| payload.window(base + i),
        )));
    }
    let mut latencies = Latencies::with_capacity(args.num_records.min(1 << 24) as usize);
    let mut failed = 0;
    let mut first_error = None;
    for task in tasks {
        let sent = task.await.map_err(join_failure)??;
        latencies.extend(sent.latencies);
        failed += sent.failed;
        first_error = first_error.or(sent.first_error);
    }
    let elapsed = start.elapsed();
    if let Some(e) = first_error {
        let acked = latencies.len();
        return Err(Failure::Message(format!(
            "{failed} records failed ({acked} of {} acknowledged): {e}",
            args.num_records
        )));
    }
    let rate = Rate {
        records: latencies.len() as u64,
        bytes: latencies.len() as u64 * args.record_size as u64,
        elapsed,
    };
    let Some(latency) = latencies.summary() else {
        return Err(Failure::Message("no record was acknowledged".into()));
    };
    let line = if args.json {
        Json::new().rate(&rate).latency(&latency).finish()
    } else {
        format!(
            "{} records sent, {}, {}.",
            rate.records,
            human_rate(&rate),
            human_latency(&latency)
        )
    };
    let mut out = Out::new();
    out.line(&line)?;
    out.flush()
}
