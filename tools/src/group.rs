//! `fjord group list|describe|delete|reset-offsets`.
//!
//! `reset-offsets` reads the partitions' bounds and the group's committed offsets, makes
//! a plan with the pure [`plan`], prints it, and applies it only with `--execute` (the
//! broker takes the partitions from live members, sets the offsets and hands them back).

use std::collections::BTreeMap;

use clap::{ArgGroup, Args, Subcommand};
use fjord_client::{Admin, ClientError, GroupDescription, OffsetSpec, TopicPartition};

use crate::output::{Failure, Out, table};
use crate::rfc3339;

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List consumer group ids, one per line.
    List,
    /// Show a group's state, members and, per partition, committed offset and lag.
    Describe { group: String },
    /// Delete a group without members, and its committed offsets.
    Delete { group: String },
    /// Print new committed offsets for a topic's partitions; set them with --execute.
    ResetOffsets(ResetOffsetsArgs),
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("mode").required(true).multiple(false)))]
pub struct ResetOffsetsArgs {
    group: String,
    #[arg(long)]
    topic: String,
    /// Only this partition (default: every partition of the topic).
    #[arg(long)]
    partition: Option<u32>,
    /// To the log start offset.
    #[arg(long, group = "mode")]
    to_earliest: bool,
    /// To the high watermark (nothing left to consume).
    #[arg(long, group = "mode")]
    to_latest: bool,
    /// To this offset, moved into [log start, high watermark] if outside.
    #[arg(long, group = "mode", value_name = "OFFSET",
        value_parser = clap::value_parser!(i64).range(0..), allow_negative_numbers = true)]
    to_offset: Option<i64>,
    /// To the first offset whose record is at or after this RFC 3339 time (the high
    /// watermark if none is).
    #[arg(long, group = "mode", value_name = "RFC3339", value_parser = rfc3339::parse_ms)]
    to_datetime: Option<i64>,
    /// By N (negative: back) from the committed offset, kept within [log start, high
    /// watermark].
    #[arg(long, group = "mode", value_name = "N", allow_negative_numbers = true)]
    shift_by: Option<i64>,
    /// Set the offsets (without it, only print the plan).
    #[arg(long)]
    execute: bool,
}

impl ResetOffsetsArgs {
    fn mode(&self) -> ResetMode {
        match (
            self.to_earliest,
            self.to_latest,
            self.to_offset,
            self.to_datetime,
            self.shift_by,
        ) {
            (true, ..) => ResetMode::Earliest,
            (_, true, ..) => ResetMode::Latest,
            (_, _, Some(offset), ..) => ResetMode::Offset(offset),
            (.., Some(ms), _) => ResetMode::Datetime(ms),
            (.., Some(n)) => ResetMode::ShiftBy(n),
            _ => unreachable!("clap requires exactly one of the modes"),
        }
    }
}

/// Where `reset-offsets` moves each partition's committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetMode {
    Earliest,
    Latest,
    Offset(i64),
    /// Milliseconds since the epoch.
    Datetime(i64),
    ShiftBy(i64),
}

/// One partition as the plan sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionPosition {
    pub partition: u32,
    pub log_start_offset: i64,
    pub high_watermark: i64,
    /// The group's committed offset; `None` when nothing is committed.
    pub committed_offset: Option<i64>,
    /// [`ResetMode::Datetime`] only: the first offset whose record is at or after the
    /// time; `None` when no record is.
    pub offset_for_time: Option<i64>,
}

/// One line of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedReset {
    pub partition: u32,
    pub current: Option<i64>,
    pub new: i64,
}

/// [`ResetMode::ShiftBy`] on a partition where the group has nothing committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NothingCommitted {
    pub partition: u32,
}

/// The new offset of every partition (pure: reads only its arguments). Every new offset
/// lies in [log start, high watermark], as Kafka's tool keeps them.
pub fn plan(
    mode: ResetMode,
    positions: &[PartitionPosition],
) -> Result<Vec<PlannedReset>, NothingCommitted> {
    positions
        .iter()
        .map(|p| {
            assert!(
                p.log_start_offset <= p.high_watermark,
                "log start above the high watermark: {p:?}"
            );
            let wanted = match mode {
                ResetMode::Earliest => p.log_start_offset,
                ResetMode::Latest => p.high_watermark,
                ResetMode::Offset(offset) => offset,
                ResetMode::Datetime(_) => p.offset_for_time.unwrap_or(p.high_watermark),
                ResetMode::ShiftBy(n) => p
                    .committed_offset
                    .ok_or(NothingCommitted {
                        partition: p.partition,
                    })?
                    .saturating_add(n),
            };
            Ok(PlannedReset {
                partition: p.partition,
                current: p.committed_offset,
                new: wanted.clamp(p.log_start_offset, p.high_watermark),
            })
        })
        .collect()
}

pub async fn run(brokers: &str, command: GroupCommand) -> Result<(), Failure> {
    let admin = Admin::connect(brokers).await?;
    match command {
        GroupCommand::List => {
            let mut out = Out::new();
            for group in admin.list_groups().await? {
                out.line(&group)?;
            }
            out.flush()?;
        }
        GroupCommand::Describe { group } => {
            let description = admin.describe_group(&group).await?;
            let mut out = Out::new();
            for line in describe_lines(&description) {
                out.line(&line)?;
            }
            out.flush()?;
        }
        GroupCommand::Delete { group } => match admin.delete_group(&group).await {
            Err(ClientError::GroupNotEmpty(message)) => {
                return Err(Failure::Message(format!(
                    "{message}: stop its consumers (or let their sessions time out) first"
                )));
            }
            result => result?,
        },
        GroupCommand::ResetOffsets(args) => reset_offsets(&admin, args).await?,
    }
    Ok(())
}

/// Prints the plan (`TOPIC PARTITION CURRENT -> NEW`, one line per partition) and, with
/// `--execute`, sets it; one line on stderr says which of the two happened.
async fn reset_offsets(admin: &Admin, args: ResetOffsetsArgs) -> Result<(), Failure> {
    let mode = args.mode();
    let spec = match mode {
        ResetMode::Datetime(ms) => OffsetSpec::Timestamp(ms),
        // One answer carries both bounds, so they are consistent with each other.
        _ => OffsetSpec::Latest,
    };
    let partitions: Vec<u32> = args.partition.into_iter().collect();
    // Fails on an unknown topic or partition.
    let offsets = admin
        .list_partition_offsets(&args.topic, &partitions, spec)
        .await?;
    let tps: Vec<TopicPartition> = offsets
        .iter()
        .map(|o| TopicPartition::new(&args.topic, o.partition))
        .collect();
    let committed = admin.group_offsets(&args.group, &tps).await?;
    let positions: Vec<PartitionPosition> = offsets
        .iter()
        .zip(&tps)
        .map(|(o, tp)| PartitionPosition {
            partition: o.partition,
            log_start_offset: o.log_start_offset,
            high_watermark: o.high_watermark,
            committed_offset: committed.get(tp).map(|c| c.offset),
            offset_for_time: if matches!(mode, ResetMode::Datetime(_)) {
                o.offset
            } else {
                None
            },
        })
        .collect();
    let planned = plan(mode, &positions).map_err(|e| {
        Failure::Message(format!(
            "group {} has no committed offset for {}-{} to shift from (use --to-earliest, \
             --to-latest, --to-offset or --to-datetime)",
            args.group, args.topic, e.partition
        ))
    })?;
    let mut out = Out::new();
    for line in plan_lines(&args.topic, &planned) {
        out.line(&line)?;
    }
    out.flush()?;
    if !args.execute {
        eprintln!(
            "dry run: the offsets of group {} were not changed; add --execute to reset them",
            args.group
        );
        return Ok(());
    }
    let new_offsets: Vec<(TopicPartition, i64)> = tps
        .into_iter()
        .zip(&planned)
        .map(|(tp, p)| (tp, p.new))
        .collect();
    let revoked = admin.reset_group_offsets(&args.group, &new_offsets).await?;
    let count = new_offsets.len();
    let noun = if count == 1 {
        "partition"
    } else {
        "partitions"
    };
    if revoked {
        eprintln!(
            "reset the offsets of group {} on {count} {noun}; its live members gave them up \
             and got them back",
            args.group
        );
    } else {
        eprintln!(
            "reset the offsets of group {} on {count} {noun}",
            args.group
        );
    }
    Ok(())
}

/// `TOPIC PARTITION CURRENT -> NEW`, `-` for CURRENT when nothing is committed.
pub fn plan_lines(topic: &str, planned: &[PlannedReset]) -> Vec<String> {
    planned
        .iter()
        .map(|p| {
            format!(
                "{topic} {} {} -> {}",
                p.partition,
                offset_or_dash(p.current),
                p.new
            )
        })
        .collect()
}

fn offset_or_dash(offset: Option<i64>) -> String {
    offset.map_or_else(|| "-".to_string(), |o| o.to_string())
}

/// Partitions as Kafka's tool writes them: `orders(0,1),audit(2)` (sorted), `-` if none.
fn assignment_text(assignment: &[TopicPartition]) -> String {
    let mut by_topic: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for tp in assignment {
        by_topic.entry(&tp.topic).or_default().push(tp.partition);
    }
    if by_topic.is_empty() {
        return "-".into();
    }
    let parts: Vec<String> = by_topic
        .into_iter()
        .map(|(topic, mut partitions)| {
            partitions.sort_unstable();
            let list: Vec<String> = partitions.iter().map(u32::to_string).collect();
            format!("{topic}({})", list.join(","))
        })
        .collect();
    parts.join(",")
}

/// The text of `fjord group describe`: the group's state, a table of members, then a
/// table of partitions in the columns of `kafka-consumer-groups --describe`.
pub fn describe_lines(d: &GroupDescription) -> Vec<String> {
    let mut lines = vec![
        format!("Group: {}", d.group_id),
        format!("State: {}", d.state),
        format!("Group epoch: {}", d.group_epoch),
        format!("Members: {}", d.members.len()),
    ];
    if !d.members.is_empty() {
        let mut rows = vec![[
            "CONSUMER-ID".to_string(),
            "EPOCH".into(),
            "ASSIGNMENT".into(),
        ]];
        for m in &d.members {
            rows.push([
                m.member_id.clone(),
                m.member_epoch.to_string(),
                assignment_text(&m.assignment),
            ]);
        }
        lines.extend(table(&rows));
    }
    lines.push(format!("Partitions: {}", d.partitions.len()));
    if !d.partitions.is_empty() {
        let mut owners: BTreeMap<TopicPartition, &str> = BTreeMap::new();
        for m in &d.members {
            for tp in &m.assignment {
                owners.insert(tp.clone(), &m.member_id);
            }
        }
        let mut rows = vec![[
            "TOPIC".to_string(),
            "PARTITION".into(),
            "CURRENT-OFFSET".into(),
            "LOG-END-OFFSET".into(),
            "LAG".into(),
            "CONSUMER-ID".into(),
        ]];
        for p in &d.partitions {
            let owner = owners
                .get(&TopicPartition::new(&p.topic, p.partition))
                .copied()
                .unwrap_or("-");
            rows.push([
                p.topic.clone(),
                p.partition.to_string(),
                offset_or_dash(p.committed_offset),
                p.high_watermark.to_string(),
                p.lag.to_string(),
                owner.to_string(),
            ]);
        }
        lines.extend(table(&rows));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjord_client::{GroupMemberInfo, GroupPartitionLag};

    fn position(partition: u32, bounds: (i64, i64), committed: Option<i64>) -> PartitionPosition {
        PartitionPosition {
            partition,
            log_start_offset: bounds.0,
            high_watermark: bounds.1,
            committed_offset: committed,
            offset_for_time: None,
        }
    }

    fn new_offsets(mode: ResetMode, positions: &[PartitionPosition]) -> Vec<i64> {
        plan(mode, positions)
            .unwrap()
            .iter()
            .map(|p| p.new)
            .collect()
    }

    #[test]
    fn every_mode_lands_within_the_log() {
        let positions = [
            position(0, (0, 10), Some(4)),
            position(1, (5, 20), None),
            position(2, (7, 7), Some(7)),
        ];
        assert_eq!(new_offsets(ResetMode::Earliest, &positions), [0, 5, 7]);
        assert_eq!(new_offsets(ResetMode::Latest, &positions), [10, 20, 7]);
        assert_eq!(new_offsets(ResetMode::Offset(6), &positions), [6, 6, 7]);
        assert_eq!(new_offsets(ResetMode::Offset(99), &positions), [10, 20, 7]);
        assert_eq!(new_offsets(ResetMode::Offset(0), &positions), [0, 5, 7]);
        let planned = plan(ResetMode::Earliest, &positions).unwrap();
        assert_eq!(
            planned[..2],
            [
                PlannedReset {
                    partition: 0,
                    current: Some(4),
                    new: 0
                },
                PlannedReset {
                    partition: 1,
                    current: None,
                    new: 5
                },
            ]
        );
    }

    #[test]
    fn datetime_takes_the_found_offset_else_the_high_watermark() {
        let mut found = position(0, (0, 10), None);
        found.offset_for_time = Some(3);
        let none = position(1, (2, 8), Some(5));
        assert_eq!(
            new_offsets(ResetMode::Datetime(1000), &[found, none]),
            [3, 8]
        );
    }

    #[test]
    fn shift_by_clamps_at_both_ends_and_needs_a_committed_offset() {
        let positions = [position(0, (2, 10), Some(4)), position(1, (0, 10), Some(9))];
        assert_eq!(new_offsets(ResetMode::ShiftBy(3), &positions), [7, 10]);
        assert_eq!(new_offsets(ResetMode::ShiftBy(-3), &positions), [2, 6]);
        assert_eq!(
            new_offsets(ResetMode::ShiftBy(i64::MAX), &positions),
            [10, 10]
        );
        assert_eq!(
            new_offsets(ResetMode::ShiftBy(i64::MIN), &positions),
            [2, 0]
        );
        let missing = [positions[0], position(3, (0, 10), None)];
        assert_eq!(
            plan(ResetMode::ShiftBy(1), &missing),
            Err(NothingCommitted { partition: 3 })
        );
        // Other modes do not need one.
        assert!(plan(ResetMode::Latest, &missing).is_ok());
    }

    #[test]
    fn plan_lines_show_a_dash_for_nothing_committed() {
        let planned = [
            PlannedReset {
                partition: 3,
                current: Some(120),
                new: 0,
            },
            PlannedReset {
                partition: 4,
                current: None,
                new: 0,
            },
        ];
        assert_eq!(
            plan_lines("orders", &planned),
            ["orders 3 120 -> 0", "orders 4 - -> 0"]
        );
    }

    #[test]
    fn describe_is_state_then_members_then_partitions() {
        let d = GroupDescription {
            group_id: "g".into(),
            state: "STABLE".into(),
            group_epoch: 3,
            members: vec![GroupMemberInfo {
                member_id: "m-1".into(),
                member_epoch: 3,
                subscriptions: vec!["orders".into(), "audit".into()],
                assignment: vec![
                    TopicPartition::new("orders", 1),
                    TopicPartition::new("audit", 2),
                    TopicPartition::new("orders", 0),
                ],
            }],
            partitions: vec![
                GroupPartitionLag {
                    topic: "orders".into(),
                    partition: 0,
                    committed_offset: Some(4),
                    high_watermark: 10,
                    lag: 6,
                    lag_ms: 0,
                },
                GroupPartitionLag {
                    topic: "orders".into(),
                    partition: 1,
                    committed_offset: None,
                    high_watermark: 12,
                    lag: 12,
                    lag_ms: 0,
                },
                GroupPartitionLag {
                    topic: "orders".into(),
                    partition: 5,
                    committed_offset: Some(1),
                    high_watermark: 1,
                    lag: 0,
                    lag_ms: 0,
                },
            ],
        };
        assert_eq!(
            describe_lines(&d),
            [
                "Group: g",
                "State: STABLE",
                "Group epoch: 3",
                "Members: 1",
                "  CONSUMER-ID  EPOCH  ASSIGNMENT",
                "  m-1          3      audit(2),orders(0,1)",
                "Partitions: 3",
                "  TOPIC   PARTITION  CURRENT-OFFSET  LOG-END-OFFSET  LAG  CONSUMER-ID",
                "  orders  0          4               10              6    m-1",
                "  orders  1          -               12              12   m-1",
                "  orders  5          1               1               0    -",
            ]
        );
        let empty = GroupDescription {
            group_id: "e".into(),
            state: "EMPTY".into(),
            group_epoch: 0,
            members: vec![],
            partitions: vec![],
        };
        assert_eq!(
            describe_lines(&empty),
            [
                "Group: e",
                "State: EMPTY",
                "Group epoch: 0",
                "Members: 0",
                "Partitions: 0"
            ]
        );
    }
}
