//! `fjord`: the command-line tool of the Fjord broker.
//!
//! Modules: [`topic`] (create, list, describe, delete, alter), [`produce`] (stdin lines
//! to records), [`consume`] (records to stdout lines), [`offsets`] (`offsets` and
//! `delete-records`), [`group`] (list, describe, delete, reset-offsets of consumer
//! groups), [`perf`] (load generators and measurements), [`output`] (buffered stdout,
//! closed-pipe handling, the error type, aligned tables) and [`rfc3339`] (time arguments).
//!
//! Exit status: 0 on success (also when stdout is closed early, as by `| head`); 1 with
//! one line `fjord: <message>` on stderr on an error; 2 on a usage error (from clap).

mod consume;
mod group;
mod offsets;
mod output;
mod perf;
mod produce;
mod rfc3339;
mod topic;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use output::Failure;

/// jemalloc keeps freed memory for reuse (for seconds), where glibc's malloc gave the
/// HTTP/2 buffers of a consumer's streamed answers back to the kernel and the next ones
/// faulted in fresh pages: a 2 GiB replay took 100,000-170,000 page faults and ran a
/// quarter slower. (The broker keeps glibc's: with jemalloc its restart took 0.3-0.5 s
/// longer.)
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(
    name = "fjord",
    version,
    about = "Command-line tool of the Fjord log broker"
)]
struct Cli {
    /// Address of the broker's gRPC listener (host:port).
    #[arg(
        long,
        global = true,
        env = "FJORD_BROKERS",
        default_value = "127.0.0.1:9192"
    )]
    brokers: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list, describe, alter and delete topics.
    #[command(subcommand)]
    Topic(topic::TopicCommand),
    /// Send one record per line of standard input.
    Produce(produce::ProduceArgs),
    /// Print records, one per line.
    Consume(consume::ConsumeArgs),
    /// Print the earliest and latest offset of every partition (or the offset at a time).
    Offsets(offsets::OffsetsArgs),
    /// Delete the records of a partition below an offset.
    DeleteRecords(offsets::DeleteRecordsArgs),
    /// List, describe and delete consumer groups, and reset their offsets.
    #[command(subcommand)]
    Group(group::GroupCommand),
    /// Measure throughput and latency: produce, consume, end to end, and the disk.
    #[command(subcommand)]
    Perf(perf::PerfCommand),
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let brokers = cli.brokers.as_str();
    match cli.command {
        Command::Topic(command) => topic::run(brokers, command).await,
        Command::Produce(args) => produce::run(brokers, args).await,
        Command::Consume(args) => consume::run(brokers, args).await,
        Command::Offsets(args) => offsets::offsets(brokers, args).await,
        Command::DeleteRecords(args) => offsets::delete_records(brokers, args).await,
        Command::Group(command) => group::run(brokers, command).await,
        Command::Perf(command) => perf::run(brokers, command).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fjord: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Do not wait for tasks still running (a long poll, a blocked read).
    runtime.shutdown_background();
    match result {
        Ok(()) | Err(Failure::StdoutClosed) => ExitCode::SUCCESS,
        Err(e) => {
            let message = e.to_string().replace(['\n', '\r'], " ");
            eprintln!("fjord: {message}");
            ExitCode::FAILURE
        }
    }
}
