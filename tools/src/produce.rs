//! `fjord produce`: one record per line of standard input.

use std::io::{BufRead, BufReader, Read};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use fjord_client::{Acks, Admin, ClientError, Producer, ProducerConfig, ProducerRecord};
use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;

use crate::output::Failure;

#[derive(Debug, Args)]
pub struct ProduceArgs {
    topic: String,
    /// Split each line at the first SEP: the text before it is the key (a line without
    /// SEP has no key).
    #[arg(long, value_name = "SEP", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    key_separator: Option<String>,
    /// Send every record to this partition instead of partitioning by key.
    #[arg(long)]
    partition: Option<u32>,
    /// When the broker acknowledges: all (durable), 1 (leader append), 0 (no wait).
    #[arg(long, value_enum, default_value = "all")]
    acks: AcksArg,
}

/// `--acks`, for `produce` and `perf`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum AcksArg {
    /// Durable (fsync'd) before the acknowledgement.
    #[value(name = "all", alias = "-1")]
    All,
    /// Appended by the leader.
    #[value(name = "1")]
    Leader,
    /// Not waited for.
    #[value(name = "0")]
    None,
}

impl From<AcksArg> for Acks {
    fn from(a: AcksArg) -> Acks {
        match a {
            AcksArg::All => Acks::All,
            AcksArg::Leader => Acks::Leader,
            AcksArg::None => Acks::None,
        }
    }
}

/// Lines handed from the reading thread to the producer at a time.
const LINES_PER_CHUNK: usize = 1024;
/// Records whose acknowledgement is awaited at most at once (bounds memory).
const IN_FLIGHT_MAX: usize = 64 * 1024;

/// Splits a line (without its newline) into key and value.
pub fn split_line(line: &[u8], separator: Option<&[u8]>) -> (Option<Bytes>, Bytes) {
    if let Some(sep) = separator
        && let Some(at) = line.windows(sep.len()).position(|w| w == sep)
    {
        let key = Bytes::copy_from_slice(&line[..at]);
        return (Some(key), Bytes::copy_from_slice(&line[at + sep.len()..]));
    }
    (None, Bytes::copy_from_slice(line))
}

/// Reads lines on a thread of its own (a blocking read must not hold up the runtime, nor
/// keep it from shutting down), in chunks.
fn read_lines(input: impl Read + Send + 'static) -> mpsc::Receiver<std::io::Result<Vec<Vec<u8>>>> {
    let (tx, rx) = mpsc::channel(8);
    std::thread::spawn(move || {
        let mut reader = BufReader::with_capacity(64 * 1024, input);
        loop {
            let mut chunk = Vec::with_capacity(LINES_PER_CHUNK);
            let mut eof = false;
            while chunk.len() < LINES_PER_CHUNK {
                let mut line = Vec::new();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(_) => {
                        if line.last() == Some(&b'\n') {
                            line.pop();
                            if line.last() == Some(&b'\r') {
                                line.pop();
                            }
                        }
                        chunk.push(line);
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
                // Hand over what there is when no more input is buffered (interactive use).
                if reader.buffer().is_empty() {
                    break;
                }
            }
            if !chunk.is_empty() && tx.blocking_send(Ok(chunk)).is_err() {
                return;
            }
            if eof {
                return;
            }
        }
    });
    rx
}

struct Tally {
    sent: u64,
    failed: u64,
    first_error: Option<ClientError>,
}

impl Tally {
    fn record(&mut self, result: fjord_client::Result<fjord_client::RecordMetadata>) {
        if let Err(e) = result {
            self.failed += 1;
            self.first_error.get_or_insert(e);
        }
    }
}

pub async fn run(brokers: &str, args: ProduceArgs) -> Result<(), Failure> {
    // Check the topic (and partition) first, so that a typo fails before any input is read.
    let admin = Admin::connect(brokers).await?;
    let count = admin.partition_count(&args.topic).await?;
    if let Some(p) = args.partition
        && p >= count
    {
        return Err(ClientError::UnknownPartition(format!(
            "topic {} has no partition {p} (it has {count})",
            args.topic
        ))
        .into());
    }
    let config = ProducerConfig {
        acks: args.acks.into(),
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(brokers, config).await?;
    let separator = args.key_separator.as_deref().map(str::as_bytes);
    let mut lines = read_lines(std::io::stdin());
    let mut in_flight = FuturesUnordered::new();
    let mut tally = Tally {
        sent: 0,
        failed: 0,
        first_error: None,
    };
    while let Some(chunk) = lines.recv().await {
        let chunk =
            chunk.map_err(|e| Failure::Message(format!("cannot read standard input: {e}")))?;
        for line in chunk {
            let (key, value) = split_line(&line, separator);
            in_flight.push(producer.send_record(ProducerRecord {
                topic: args.topic.clone(),
                partition: args.partition,
                key,
                value: Some(value),
                ..ProducerRecord::default()
            }));
            tally.sent += 1;
        }
        while let Some(Some(result)) = in_flight.next().now_or_never() {
            tally.record(result);
        }
        while in_flight.len() > IN_FLIGHT_MAX {
            if let Some(result) = in_flight.next().await {
                tally.record(result);
            }
        }
    }
    producer.flush().await?;
    while let Some(result) = in_flight.next().await {
        tally.record(result);
    }
    match tally.first_error {
        None => Ok(()),
        Some(e) => Err(Failure::Message(format!(
            "{} of {} records failed: {e}",
            tally.failed, tally.sent
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_the_text_before_the_first_separator() {
        let sep = Some(&b"::"[..]);
        assert_eq!(
            split_line(b"k::v::w", sep),
            (Some(Bytes::from("k")), Bytes::from("v::w"))
        );
        assert_eq!(
            split_line(b"::v", sep),
            (Some(Bytes::new()), Bytes::from("v"))
        );
        assert_eq!(split_line(b"no key", sep), (None, Bytes::from("no key")));
        assert_eq!(split_line(b"", sep), (None, Bytes::new()));
        assert_eq!(split_line(b"a:b", None), (None, Bytes::from("a:b")));
    }

    #[tokio::test]
    async fn lines_lose_their_newline_and_empty_lines_stay() {
        let input: &'static [u8] = b"a\n\nb\r\nlast";
        let mut rx = read_lines(input);
        let mut all = Vec::new();
        while let Some(chunk) = rx.recv().await {
            all.extend(chunk.unwrap());
        }
        assert_eq!(
            all,
            vec![b"a".to_vec(), vec![], b"b".to_vec(), b"last".to_vec()]
        );
    }
}
