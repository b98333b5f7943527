//! `fjord perf consume`: read throughput of the consumer (kafka-consumer-perf-test).

use std::time::Duration;

use clap::Args;
use fjord_client::{AutoOffsetReset, Consumer, ConsumerConfig, Seek, TopicPartition};
use tokio::time::Instant;

use super::at_least;
use super::stats::{Json, Rate, human_rate};
use crate::output::{Failure, Out};

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// The topic (every partition is read).
    #[arg(long)]
    topic: String,
    /// Start at the first record of each partition (default: the end, then wait for
    /// --num-records new records).
    #[arg(long)]
    from_beginning: bool,
    /// Records to read (default, with --from-beginning: everything up to the high
    /// watermarks at the start).
    #[arg(long, value_name = "N")]
    num_records: Option<u64>,
    /// The most bytes one fetch returns.
    #[arg(long, value_name = "B", default_value_t = ConsumerConfig::default().max_bytes)]
    fetch_bytes: u32,
    /// Read as a member of this consumer group (the partitions it assigns, from its
    /// committed offsets; auto-commit on). Needs --num-records.
    #[arg(long, value_name = "G", requires = "num_records")]
    group: Option<String>,
    /// Give up when no record came for this long.
    #[arg(long, value_name = "MS", default_value_t = 60_000)]
    timeout_ms: u64,
    /// Print one JSON object instead of the summary line.
    #[arg(long)]
    json: bool,
}

pub async fn run(brokers: &str, args: ConsumeArgs) -> Result<(), Failure> {
    at_least("fetch-bytes", args.fetch_bytes, 1)?;
    if args.num_records.is_none() && !args.from_beginning {
        return Err(Failure::Message(
            "give --num-records (how many new records to wait for) or --from-beginning".into(),
        ));
    }
    let config = ConsumerConfig {
        max_bytes: args.fetch_bytes,
        group_id: args.group.clone(),
        auto_offset_reset: if args.from_beginning {
            AutoOffsetReset::Earliest
        } else {
            AutoOffsetReset::Latest
        },
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::connect(brokers, config).await?;
    if args.group.is_some() {
        consumer.subscribe(&[args.topic.as_str()]).await?;
    } else {
        consumer.assign(&args.topic, &[]).await?;
        let start_at = if args.from_beginning {
            Seek::Beginning
        } else {
            Seek::End
        };
        for tp in consumer.assignment() {
            consumer.seek(&tp.topic, tp.partition, start_at).await?;
        }
    }
    // Without a count: stop at the end offsets as of now.
    let ends = match args.num_records {
        Some(_) => None,
        None => Some(consumer.end_offsets().await?),
    };
    let target = match (args.num_records, &ends) {
        (Some(n), _) => n,
        (None, Some(ends)) => ends
            .iter()
            .map(|(tp, end)| {
                let position = consumer.position(&tp.topic, tp.partition).unwrap_or(*end);
                (end - position).max(0) as u64
            })
            .sum(),
        (None, None) => 0,
    };
    let timeout = Duration::from_millis(args.timeout_ms);
    // A poll returns after the fetch wait (500 ms) at the latest, empty or not.
    let rate = async {
        let start = Instant::now();
        let mut last_record = start;
        let mut rate = Rate {
            records: 0,
            bytes: 0,
            elapsed: Duration::ZERO,
        };
        while rate.records < target {
            if let Some(ends) = &ends {
                crate::consume::unassign_finished(&mut consumer, ends);
                if consumer.assignment().is_empty() {
                    break; // records were deleted meanwhile
                }
            }
            let records = consumer.poll().await?;
            if records.is_empty() && last_record.elapsed() >= timeout {
                return Err(Failure::Message(format!(
                    "no record for {} ms: read {} of {target}",
                    timeout.as_millis(),
                    rate.records
                )));
            }
            for r in &records {
                if let Some(ends) = &ends {
                    let end = ends.get(&TopicPartition::new(&r.topic, r.partition));
                    if end.is_some_and(|&end| r.offset >= end) {
                        continue;
                    }
                }
                last_record = Instant::now();
                rate.records += 1;
                rate.bytes += (r.key.as_ref().map_or(0, |k| k.len())
                    + r.value.as_ref().map_or(0, |v| v.len())) as u64;
                if rate.records >= target {
                    break;
                }
            }
        }
        rate.elapsed = start.elapsed();
        Ok::<_, Failure>(rate)
    }
    .await;
    // A group member commits and leaves (also after a failure).
    let closed = consumer.close().await;
    let rate = rate?;
    closed?;
    let line = if args.json {
        Json::new().rate(&rate).finish()
    } else {
        format!(
            "{} records consumed in {:.3} s, {}.",
            rate.records,
            rate.elapsed.as_secs_f64(),
            human_rate(&rate)
        )
    };
    let mut out = Out::new();
    out.line(&line)?;
    out.flush()
}
