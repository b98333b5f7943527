//! `fjord topic create|list|describe|delete|alter`.

use clap::{ArgGroup, Args, Subcommand};
use fjord_client::{Admin, TopicDescription};

use crate::output::{Failure, Out, table};

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create(CreateArgs),
    /// List topic names, one per line.
    List,
    /// Show a topic's partitions (offsets, size, segments) and configs.
    Describe { name: String },
    /// Delete a topic and its data.
    Delete { name: String },
    /// Set or remove config overrides of a topic.
    Alter(AlterArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    name: String,
    /// Number of partitions (default: the broker's num.partitions).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    partitions: Option<u32>,
    /// A config override (repeatable), e.g. --config retention.ms=3600000.
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_config)]
    configs: Vec<(String, String)>,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("changes").required(true).multiple(true)))]
pub struct AlterArgs {
    name: String,
    /// Set an override (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_config,
        group = "changes")]
    configs: Vec<(String, String)>,
    /// Remove an override, back to the broker's default (repeatable).
    #[arg(long = "delete-config", value_name = "KEY", group = "changes")]
    delete: Vec<String>,
}

/// `KEY=VALUE`, split at the first `=`.
pub fn parse_config(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

fn pairs(configs: &[(String, String)]) -> Vec<(&str, &str)> {
    configs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

pub async fn run(brokers: &str, command: TopicCommand) -> Result<(), Failure> {
    let admin = Admin::connect(brokers).await?;
    match command {
        TopicCommand::Create(args) => {
            let partitions = args.partitions.unwrap_or(0);
            admin
                .create_topic(&args.name, partitions, &pairs(&args.configs))
                .await?;
        }
        TopicCommand::List => {
            let mut out = Out::new();
            for topic in admin.list_topics().await? {
                out.line(&topic.name)?;
            }
            out.flush()?;
        }
        TopicCommand::Describe { name } => {
            let description = admin.describe_topic(&name).await?;
            let mut out = Out::new();
            for line in describe_lines(&description) {
                out.line(&line)?;
            }
            out.flush()?;
        }
        TopicCommand::Delete { name } => admin.delete_topic(&name).await?,
        TopicCommand::Alter(args) => {
            let delete: Vec<&str> = args.delete.iter().map(String::as_str).collect();
            admin
                .alter_topic_config(&args.name, &pairs(&args.configs), &delete)
                .await?;
        }
    }
    Ok(())
}

/// The text of `fjord topic describe`: a header, a table of partitions, then every
/// effective config with the overrides marked.
pub fn describe_lines(d: &TopicDescription) -> Vec<String> {
    let mut lines = vec![
        format!("Topic: {}", d.name),
        format!("Partitions: {}", d.partitions.len()),
    ];
    let mut rows = vec![[
        "PARTITION".to_string(),
        "LOG-START".into(),
        "HIGH-WATERMARK".into(),
        "LOG-END".into(),
        "SIZE-BYTES".into(),
        "SEGMENTS".into(),
    ]];
    for p in &d.partitions {
        rows.push([
            p.partition.to_string(),
            p.log_start_offset.to_string(),
            p.high_watermark.to_string(),
            p.log_end_offset.to_string(),
            p.size_bytes.to_string(),
            p.segments.to_string(),
        ]);
    }
    lines.extend(table(&rows));
    lines.push("Configs:".into());
    let mut configs = d.configs.clone();
    for (k, v) in &d.overrides {
        if !configs.iter().any(|(key, _)| key == k) {
            configs.push((k.clone(), v.clone()));
        }
    }
    configs.sort();
    for (k, v) in configs {
        let mark = if d.overrides.iter().any(|(key, _)| *key == k) {
            " (override)"
        } else {
            ""
        };
        lines.push(format!("  {k}={v}{mark}"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjord_client::PartitionInfo;

    #[test]
    fn config_pairs_split_at_the_first_equals() {
        assert_eq!(parse_config("a.b=1=2"), Ok(("a.b".into(), "1=2".into())));
        assert_eq!(parse_config("k="), Ok(("k".into(), String::new())));
        assert!(parse_config("novalue").is_err());
        assert!(parse_config("=v").is_err());
    }

    #[test]
    fn describe_is_a_table_then_configs() {
        let d = TopicDescription {
            name: "t".into(),
            partitions: vec![PartitionInfo {
                partition: 0,
                log_start_offset: 3,
                high_watermark: 10,
                log_end_offset: 10,
                size_bytes: 1234,
                segments: 2,
            }],
            overrides: vec![("retention.ms".into(), "1000".into())],
            configs: vec![
                ("retention.ms".into(), "1000".into()),
                ("cleanup.policy".into(), "delete".into()),
            ],
        };
        let lines = describe_lines(&d);
        assert_eq!(
            lines,
            vec![
                "Topic: t",
                "Partitions: 1",
                "  PARTITION  LOG-START  HIGH-WATERMARK  LOG-END  SIZE-BYTES  SEGMENTS",
                "  0          3          10              10       1234        2",
                "Configs:",
                "  cleanup.policy=delete",
                "  retention.ms=1000 (override)",
            ]
        );
    }
}
