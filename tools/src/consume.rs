//! `fjord consume`: records to standard output, one per line.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::time::Instant;

use clap::{ArgGroup, Args};
use fjord_client::{
    AutoOffsetReset, Consumer, ConsumerConfig, ConsumerRecord, Seek, TopicPartition,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::output::{Failure, Out};
use crate::rfc3339;

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("start").args(["from_beginning", "offset", "from_time"])))]
pub struct ConsumeArgs {
    topic: String,
    /// Read only this partition (default: all).
    #[arg(long, conflicts_with = "group")]
    partition: Option<u32>,
    /// Start at the first record of each partition (default: the end). With --group:
    /// where the group has no committed offset (auto.offset.reset=earliest).
    #[arg(long)]
    from_beginning: bool,
    /// Start at this offset in each partition read.
    #[arg(long, value_name = "N", conflicts_with = "group")]
    offset: Option<i64>,
    /// Start at the first record at or after this RFC 3339 time.
    #[arg(long, value_name = "RFC3339", value_parser = rfc3339::parse_ms,
        conflicts_with = "group")]
    from_time: Option<i64>,
    /// Consume as a member of this consumer group: read the partitions the group assigns,
    /// from its committed offsets, and commit what was printed. Without --follow, exit
    /// once the assigned partitions are read to their end; SIGTERM and Ctrl-C commit and
    /// leave the group.
    #[arg(long, value_name = "G")]
    group: Option<String>,
    /// Stop after N records.
    #[arg(long, value_name = "N")]
    max_messages: Option<u64>,
    /// Keep waiting for new records instead of stopping at the end offsets of the start.
    #[arg(long)]
    follow: bool,
    /// Print each record's key (before the value, after the offset; a tab between).
    #[arg(long)]
    print_key: bool,
    /// Print each record's offset first.
    #[arg(long)]
    print_offset: bool,
}

/// Records to read before a progress bar is worth showing.
const PROGRESS_MIN_RECORDS: u64 = 10_000;

/// Writes the line of one record: `[OFFSET\t][KEY\t]VALUE` (a null key or value prints as
/// nothing).
pub fn write_record(
    out: &mut Out,
    r: &ConsumerRecord,
    print_offset: bool,
    print_key: bool,
) -> Result<(), Failure> {
    if print_offset {
        out.bytes(r.offset.to_string().as_bytes())?;
        out.bytes(b"\t")?;
    }
    if print_key {
        out.bytes(r.key.as_deref().unwrap_or_default())?;
        out.bytes(b"\t")?;
    }
    out.bytes(r.value.as_deref().unwrap_or_default())?;
    out.bytes(b"\n")
}

/// The progress bar on stderr: only when stderr is a terminal and stdout is not (the
/// records would tear the bar, and a bar between records would garble them).
struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    bytes: u64,
}

impl Progress {
    fn new(total: Option<u64>) -> Progress {
        let wanted = std::io::stderr().is_terminal()
            && !std::io::stdout().is_terminal()
            && total.is_none_or(|t| t >= PROGRESS_MIN_RECORDS);
        let bar = wanted.then(|| {
            let (bar, template) = match total {
                Some(total) => (
                    ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()),
                    "{bar:30} {pos}/{len} records  {msg}",
                ),
                None => (
                    ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
                    "{spinner} {pos} records  {msg}",
                ),
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            bar
        });
        Progress {
            bar,
            started: Instant::now(),
            bytes: 0,
        }
    }

    fn update(&mut self, records: u64, bytes: u64, lag: Option<i64>) {
        let Some(bar) = &self.bar else {
            return;
        };
        self.bytes += bytes;
        bar.inc(records);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = self.bytes as f64 / secs / 1_000_000.0;
        match lag {
            Some(lag) => bar.set_message(format!("{rate:.1} MB/s  {lag} behind the end")),
            None => bar.set_message(format!("{rate:.1} MB/s")),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

pub async fn run(brokers: &str, args: ConsumeArgs) -> Result<(), Failure> {
    if let Some(group) = args.group.clone() {
        return run_group(brokers, &group, args).await;
    }
    let mut consumer = Consumer::connect(brokers, ConsumerConfig::default()).await?;
    let partitions: Vec<u32> = args.partition.into_iter().collect();
    consumer.assign(&args.topic, &partitions).await?;
    let start = if args.from_beginning {
        Seek::Beginning
    } else if let Some(n) = args.offset {
        Seek::Offset(n)
    } else if let Some(ms) = args.from_time {
        Seek::Timestamp(ms)
    } else {
        Seek::End
    };
    for tp in consumer.assignment() {
        consumer.seek(&tp.topic, tp.partition, start).await?;
    }
    // Without --follow: stop at the end offsets as of now.
    let ends: Option<BTreeMap<TopicPartition, i64>> = if args.follow {
        None
    } else {
        Some(consumer.end_offsets().await?)
    };
    let total = ends.as_ref().map(|ends| {
        ends.iter()
            .map(|(tp, end)| {
                let position = consumer.position(&tp.topic, tp.partition).unwrap_or(*end);
                (end - position).max(0) as u64
            })
            .sum()
    });
    let mut progress = Progress::new(total);
    let mut out = Out::new();
    let mut printed: u64 = 0;
    let max = args.max_messages.unwrap_or(u64::MAX);
    let result: Result<(), Failure> = async {
        loop {
            if let Some(ends) = &ends {
                unassign_finished(&mut consumer, ends);
                if consumer.assignment().is_empty() {
                    return Ok(());
                }
            }
            if printed >= max {
                return Ok(());
            }
            let records = consumer.poll().await?;
            let mut bytes = 0;
            let before = printed;
            for r in &records {
                if let Some(ends) = &ends {
                    let end = ends.get(&TopicPartition::new(&r.topic, r.partition));
                    if end.is_some_and(|&end| r.offset >= end) {
                        continue;
                    }
                }
                write_record(&mut out, r, args.print_offset, args.print_key)?;
                bytes += r.value.as_ref().map_or(0, |v| v.len()) as u64;
                printed += 1;
                if printed >= max {
                    break;
                }
            }
            if args.follow {
                // Lines should show up as records arrive.
                out.flush()?;
            }
            progress.update(printed - before, bytes, lag(&consumer, ends.as_ref()));
        }
    }
    .await;
    progress.finish();
    result?;
    out.flush()
}

/// Drops the partitions whose position reached their end offset.
pub(crate) fn unassign_finished(consumer: &mut Consumer, ends: &BTreeMap<TopicPartition, i64>) {
    for tp in consumer.assignment() {
        let end = ends.get(&tp).copied().unwrap_or(i64::MIN);
        if consumer
            .position(&tp.topic, tp.partition)
            .is_some_and(|p| p >= end)
        {
            consumer.unassign(&tp.topic, tp.partition);
        }
    }
}

/// Records between the positions and the high watermarks last seen (follow mode).
fn lag(consumer: &Consumer, ends: Option<&BTreeMap<TopicPartition, i64>>) -> Option<i64> {
    if ends.is_some() {
        return None;
    }
    let mut lag = 0;
    for tp in consumer.assignment() {
        let hw = consumer.high_watermark(&tp.topic, tp.partition)?;
        let position = consumer.position(&tp.topic, tp.partition)?;
        lag += (hw - position).max(0);
    }
    Some(lag)
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// `fjord consume --group`: a group member that commits what it printed.
async fn run_group(brokers: &str, group: &str, args: ConsumeArgs) -> Result<(), Failure> {
    let config = ConsumerConfig {
        group_id: Some(group.to_owned()),
        auto_offset_reset: if args.from_beginning {
            AutoOffsetReset::Earliest
        } else {
            AutoOffsetReset::Latest
        },
        // The offsets after the printed records are committed below.
        enable_auto_commit: false,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::connect(brokers, config).await?;
    consumer.subscribe(&[args.topic.as_str()]).await?;
    let mut progress = Progress::new(None);
    let mut out = Out::new();
    let mut printed: u64 = 0;
    let max = args.max_messages.unwrap_or(u64::MAX);
    // The offset after the last printed record of each partition, and the partitions
    // with records returned but not printed (--max-messages cut a poll short).
    let mut done: BTreeMap<TopicPartition, i64> = BTreeMap::new();
    let mut unprinted: BTreeSet<TopicPartition> = BTreeSet::new();
    let stop = terminated();
    tokio::pin!(stop);
    let result: Result<(), Failure> = async {
        loop {
            if printed >= max || (!args.follow && at_end(&consumer)) {
                return Ok(());
            }
            let records = tokio::select! {
                records = consumer.poll() => records?,
                _ = &mut stop => return Ok(()),
            };
            let mut bytes = 0;
            let before = printed;
            for r in &records {
                let tp = TopicPartition::new(&r.topic, r.partition);
                if printed >= max {
                    unprinted.insert(tp);
                    continue;
                }
                write_record(&mut out, r, args.print_offset, args.print_key)?;
                done.insert(tp, r.offset + 1);
                bytes += r.value.as_ref().map_or(0, |v| v.len()) as u64;
                printed += 1;
            }
            if !records.is_empty() {
                // Printed first, then committed: a record is never committed unprinted.
                out.flush()?;
                commit_printed(&mut consumer, &done, &unprinted).await?;
            }
            progress.update(printed - before, bytes, lag(&consumer, None));
        }
    }
    .await;
    progress.finish();
    let flushed = out.flush();
    let committed = match &result {
        Ok(()) => commit_printed(&mut consumer, &done, &unprinted).await,
        Err(_) => Ok(()),
    };
    let left = consumer.close().await.map_err(Failure::from);
    result?;
    flushed?;
    committed?;
    left
}

/// Commits, for every owned partition, the offset after its last printed record, or
/// its position when every record polled from it was printed (so a partition started
/// from auto.offset.reset is committed too, as Kafka's consumers do).
async fn commit_printed(
    consumer: &mut Consumer,
    done: &BTreeMap<TopicPartition, i64>,
    unprinted: &BTreeSet<TopicPartition>,
) -> Result<(), Failure> {
    let offsets: Vec<(TopicPartition, i64)> = consumer
        .assignment()
        .into_iter()
        .filter_map(|tp| {
            let offset = if unprinted.contains(&tp) {
                *done.get(&tp)?
            } else {
                consumer.position(&tp.topic, tp.partition)?
            };
            Some((tp, offset))
        })
        .collect();
    consumer.commit_offsets(&offsets).await?;
    Ok(())
}

/// A group member is done when its assignment is final and each of its partitions has
/// been read up to the high watermark its last fetch saw.
fn at_end(consumer: &Consumer) -> bool {
    !consumer.assignment_pending()
        && consumer.assignment().iter().all(|tp| {
            let hw = consumer.high_watermark(&tp.topic, tp.partition);
            let position = consumer.position(&tp.topic, tp.partition);
            matches!((hw, position), (Some(hw), Some(p)) if p >= hw)
        })
}
