//! `fjord offsets` and `fjord delete-records`.

use clap::Args;
use fjord_client::{Admin, OffsetSpec};

use crate::output::{Failure, Out};
use crate::rfc3339;

#[derive(Debug, Args)]
pub struct OffsetsArgs {
    topic: String,
    /// Print, per partition, the first offset whose record is at or after this RFC 3339
    /// time (-1 if none) instead of the earliest and latest offsets.
    #[arg(long, value_name = "RFC3339", value_parser = rfc3339::parse_ms)]
    time: Option<i64>,
}

#[derive(Debug, Args)]
pub struct DeleteRecordsArgs {
    topic: String,
    #[arg(long)]
    partition: u32,
    /// Records below this offset are deleted (-1: up to the high watermark).
    #[arg(long, allow_negative_numbers = true)]
    before: i64,
}

/// One line per partition: `PARTITION EARLIEST LATEST`, or `PARTITION OFFSET` with a
/// time.
pub async fn offsets(brokers: &str, args: OffsetsArgs) -> Result<(), Failure> {
    let admin = Admin::connect(brokers).await?;
    let mut out = Out::new();
    match args.time {
        Some(ms) => {
            for o in admin
                .list_offsets(&args.topic, OffsetSpec::Timestamp(ms))
                .await?
            {
                out.line(&format!("{} {}", o.partition, o.offset.unwrap_or(-1)))?;
            }
        }
        None => {
            // One answer carries both bounds, so they are consistent with each other.
            for o in admin.list_offsets(&args.topic, OffsetSpec::Latest).await? {
                let line = format!(
                    "{} {} {}",
                    o.partition, o.log_start_offset, o.high_watermark
                );
                out.line(&line)?;
            }
        }
    }
    out.flush()
}

/// Prints `PARTITION LOG_START_OFFSET`: the partition's first offset after the deletion.
pub async fn delete_records(brokers: &str, args: DeleteRecordsArgs) -> Result<(), Failure> {
    let admin = Admin::connect(brokers).await?;
    let start = admin
        .delete_records(&args.topic, args.partition, args.before)
        .await?;
    let mut out = Out::new();
    out.line(&format!("{} {}", args.partition, start))?;
    out.flush()
}
