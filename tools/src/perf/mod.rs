//! `fjord perf`: load generators and measurements, after Kafka's perf-test tools.
//!
//! - [`produce`]: N records from P producers, throughput and ack latency
//!   (kafka-producer-perf-test).
//! - [`consume`]: read throughput of the [`fjord_client::Consumer`]
//!   (kafka-consumer-perf-test).
//! - [`e2e`]: produce-to-delivery latency at a fixed rate (Kafka's EndToEndLatency).
//! - [`disk`]: this machine's sequential write, fdatasync and page-cache read limits.
//! - [`load`]: payloads, the token bucket and the paced sender the others share.
//! - [`stats`]: latency percentiles, rates, and the JSON object `--json` prints.
//!
//! Every command prints one human summary line, or with `--json` exactly one JSON object
//! on stdout. MB is 1,000,000 bytes, as in Kafka's tools.

mod consume;
mod disk;
mod e2e;
mod load;
mod produce;
mod stats;

use clap::{Subcommand, ValueEnum};
use fjord_client::{Admin, ClientError, Compression};

use crate::output::Failure;

#[derive(Debug, Subcommand)]
pub enum PerfCommand {
    /// Send records as fast as allowed (or at --throughput); report throughput and the
    /// latency from send to acknowledgement.
    Produce(produce::ProduceArgs),
    /// Read records with the consumer; report throughput.
    Consume(consume::ConsumeArgs),
    /// Produce at a fixed rate while a consumer tails the topic; report the latency from
    /// send to delivery.
    E2e(e2e::E2eArgs),
    /// Measure this machine's sequential write, fdatasync and page-cache read speed.
    Disk(disk::DiskArgs),
}

pub async fn run(brokers: &str, command: PerfCommand) -> Result<(), Failure> {
    match command {
        PerfCommand::Produce(args) => produce::run(brokers, args).await,
        PerfCommand::Consume(args) => consume::run(brokers, args).await,
        PerfCommand::E2e(args) => e2e::run(brokers, args).await,
        PerfCommand::Disk(args) => disk::run(args).await,
    }
}

use crate::produce::AcksArg;

/// `--compression`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum CompressionArg {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl From<CompressionArg> for Compression {
    fn from(c: CompressionArg) -> Compression {
        match c {
            CompressionArg::None => Compression::None,
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::Snappy => Compression::Snappy,
            CompressionArg::Lz4 => Compression::Lz4,
            CompressionArg::Zstd => Compression::Zstd,
        }
    }
}

/// Creates `topic` with `partitions` partitions (default 1) unless it exists. An existing
/// topic is used as it is, unless `partitions` was given and differs. Returns the count.
async fn ensure_topic(admin: &Admin, topic: &str, partitions: Option<u32>) -> Result<u32, Failure> {
    match admin
        .create_topic(topic, partitions.unwrap_or(1), &[])
        .await
    {
        Ok(()) | Err(ClientError::TopicAlreadyExists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let count = admin.partition_count(topic).await?;
    if let Some(wanted) = partitions
        && wanted != count
    {
        return Err(Failure::Message(format!(
            "topic {topic} exists with {count} partitions, not the {wanted} of --partitions"
        )));
    }
    Ok(count)
}

/// A failure of a task the command spawned (a panic in it).
fn join_failure(e: tokio::task::JoinError) -> Failure {
    Failure::Message(format!("a perf task failed: {e}"))
}

/// Checks that a flag's value is at least `min`.
fn at_least<T: PartialOrd + std::fmt::Display>(
    flag: &str,
    value: T,
    min: T,
) -> Result<(), Failure> {
    if value < min {
        return Err(Failure::Message(format!(
            "--{flag} must be at least {min} (got {value})"
        )));
    }
    Ok(())
}
