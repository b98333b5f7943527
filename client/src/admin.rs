//! [`Admin`]: topics, configs, offsets and record deletion.

use std::collections::BTreeMap;

use fjord_protocol::v1;

use crate::TopicPartition;

use crate::connection::{GrpcClient, connect};
use crate::error::{ClientError, Result};

/// A topic as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSummary {
    pub name: String,
    pub partitions: u32,
}

/// One partition's offsets and storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: u32,
    pub log_start_offset: i64,
    pub high_watermark: i64,
    pub log_end_offset: i64,
    pub size_bytes: u64,
    pub segments: u32,
}

/// A topic's partitions and configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    pub name: String,
    pub partitions: Vec<PartitionInfo>,
    /// The topic's own overrides.
    pub overrides: Vec<(String, String)>,
    /// Every config with its effective value (overrides, else the broker's defaults).
    pub configs: Vec<(String, String)>,
}

/// Which offset [`Admin::list_offsets`] looks up.
pub use fjord_protocol::OffsetSpec;

/// The answer of [`Admin::list_offsets`] for one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffset {
    pub partition: u32,
    /// `None` for a [`OffsetSpec::Timestamp`] lookup when no record is at or after it.
    pub offset: Option<i64>,
    /// The found record's timestamp ([`OffsetSpec::Timestamp`] only).
    pub timestamp_ms: Option<i64>,
    pub log_start_offset: i64,
    pub high_watermark: i64,
}

/// A consumer group member as described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMemberInfo {
    pub member_id: String,
    pub member_epoch: i32,
    pub subscriptions: Vec<String>,
    /// What it owns now (less what it is giving up).
    pub assignment: Vec<TopicPartition>,
}

/// A group's position in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPartitionLag {
    pub topic: String,
    pub partition: u32,
    /// `None` when nothing is committed.
    pub committed_offset: Option<i64>,
    pub high_watermark: i64,
    /// Records from the committed offset (else the log start) to the high watermark.
    pub lag: i64,
    /// The newest record's timestamp less the one at the committed position.
    pub lag_ms: i64,
}

/// A consumer group as described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    /// `EMPTY`, `RECONCILING` or `STABLE`.
    pub state: String,
    pub group_epoch: i32,
    pub members: Vec<GroupMemberInfo>,
    /// Every partition committed or assigned, sorted.
    pub partitions: Vec<GroupPartitionLag>,
}

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: i64,
    pub metadata: String,
}

/// Administrative calls. Cheap to clone (clones share the connection).
#[derive(Debug, Clone)]
pub struct Admin {
    client: GrpcClient,
}

fn entries(pairs: &[(&str, &str)]) -> Vec<v1::ConfigEntry> {
    pairs
        .iter()
        .map(|(k, v)| v1::ConfigEntry {
            key: k.to_string(),
            value: v.to_string(),
        })
        .collect()
}

fn status(offset: Option<i64>) -> impl FnOnce(tonic::Status) -> ClientError {
    move |s| ClientError::from_status(s, offset)
}

impl Admin {
    /// Connects to the broker at `addr` (`host:port`).
    pub async fn connect(addr: &str) -> Result<Admin> {
        Ok(Admin {
            client: connect(addr).await?,
        })
    }

    pub(crate) fn from_client(client: GrpcClient) -> Admin {
        Admin { client }
    }

    /// Creates a topic with `partitions` partitions (0: the broker's default) and config
    /// overrides.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        configs: &[(&str, &str)],
    ) -> Result<()> {
        let request = v1::CreateTopicRequest {
            name: name.to_string(),
            partitions,
            configs: entries(configs),
        };
        self.client
            .clone()
            .create_topic(request)
            .await
            .map_err(status(None))?;
        Ok(())
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let request = v1::DeleteTopicRequest {
            name: name.to_string(),
        };
        self.client
            .clone()
            .delete_topic(request)
            .await
            .map_err(status(None))?;
        Ok(())
    }

    /// Every topic, sorted by name.
    pub async fn list_topics(&self) -> Result<Vec<TopicSummary>> {
        let response = self
            .client
            .clone()
            .list_topics(v1::ListTopicsRequest {})
            .await
            .map_err(status(None))?
            .into_inner();
        let mut topics: Vec<TopicSummary> = response
            .topics
            .into_iter()
            .map(|t| TopicSummary {
                name: t.name,
                partitions: t.partitions,
            })
            .collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(topics)
    }

    /// A topic's partitions (sorted by id) and configs.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription> {
        let request = v1::DescribeTopicRequest {
            name: name.to_string(),
        };
        let r = self
            .client
            .clone()
            .describe_topic(request)
            .await
            .map_err(status(None))?
            .into_inner();
        let mut partitions: Vec<PartitionInfo> = r
            .partitions
            .into_iter()
            .map(|p| PartitionInfo {
                partition: p.partition,
                log_start_offset: p.log_start_offset,
                high_watermark: p.high_watermark,
                log_end_offset: p.log_end_offset,
                size_bytes: p.size_bytes,
                segments: p.segments,
            })
            .collect();
        partitions.sort_by_key(|p| p.partition);
        let pairs = |entries: Vec<v1::ConfigEntry>| -> Vec<(String, String)> {
            entries.into_iter().map(|c| (c.key, c.value)).collect()
        };
        Ok(TopicDescription {
            name: r.name,
            partitions,
            overrides: pairs(r.configs),
            configs: pairs(r.effective_configs),
        })
    }

    /// The number of partitions of a topic.
    pub async fn partition_count(&self, topic: &str) -> Result<u32> {
        Ok(self.describe_topic(topic).await?.partitions.len() as u32)
    }

    /// Sets the overrides `set` and removes the overrides named in `delete`.
    pub async fn alter_topic_config(
        &self,
        name: &str,
        set: &[(&str, &str)],
        delete: &[&str],
    ) -> Result<()> {
        let request = v1::AlterTopicConfigRequest {
            name: name.to_string(),
            set: entries(set),
            delete: delete.iter().map(|k| k.to_string()).collect(),
        };
        self.client
            .clone()
            .alter_topic_config(request)
            .await
            .map_err(status(None))?;
        Ok(())
    }

    /// The offset `spec` names, for every partition of `topic` (sorted by partition).
    pub async fn list_offsets(
        &self,
        topic: &str,
        spec: OffsetSpec,
    ) -> Result<Vec<PartitionOffset>> {
        self.list_partition_offsets(topic, &[], spec).await
    }

    /// [`Admin::list_offsets`] for some partitions only (empty: all of them).
    pub async fn list_partition_offsets(
        &self,
        topic: &str,
        partitions: &[u32],
        spec: OffsetSpec,
    ) -> Result<Vec<PartitionOffset>> {
        let (spec_value, timestamp_ms) = match spec {
            OffsetSpec::Earliest => (v1::OffsetSpec::Earliest, 0),
            OffsetSpec::Latest => (v1::OffsetSpec::Latest, 0),
            OffsetSpec::Timestamp(ms) => (v1::OffsetSpec::Timestamp, ms),
        };
        let request = v1::ListOffsetsRequest {
            topic: topic.to_string(),
            partitions: partitions.to_vec(),
            spec: spec_value as i32,
            timestamp_ms,
        };
        let response = self
            .client
            .clone()
            .list_offsets(request)
            .await
            .map_err(status(None))?
            .into_inner();
        let by_time = matches!(spec, OffsetSpec::Timestamp(_));
        let mut offsets: Vec<PartitionOffset> = response
            .offsets
            .into_iter()
            .map(|o| PartitionOffset {
                partition: o.partition,
                offset: (o.offset >= 0).then_some(o.offset),
                timestamp_ms: (by_time && o.offset >= 0).then_some(o.timestamp_ms),
                log_start_offset: o.log_start_offset,
                high_watermark: o.high_watermark,
            })
            .collect();
        offsets.sort_by_key(|o| o.partition);
        Ok(offsets)
    }

    /// Deletes the records of one partition below `before_offset` (-1: up to the high
    /// watermark). Returns the new log start offset.
    pub async fn delete_records(
        &self,
        topic: &str,
        partition: u32,
        before_offset: i64,
    ) -> Result<i64> {
        let request = v1::DeleteRecordsRequest {
            topic: topic.to_string(),
            partition,
            before_offset,
        };
        let response = self
            .client
            .clone()
            .delete_records(request)
            .await
            .map_err(status(Some(before_offset)))?
            .into_inner();
        Ok(response.log_start_offset)
    }

    /// The consumer groups with members or committed offsets.
    pub async fn list_groups(&self) -> Result<Vec<String>> {
        let response = self
            .client
            .clone()
            .list_groups(v1::ListGroupsRequest {})
            .await
            .map_err(status(None))?
            .into_inner();
        Ok(response.groups)
    }

    /// A group's state, members and, per partition, committed offset and lag.
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription> {
        let r = self
            .client
            .clone()
            .describe_group(v1::DescribeGroupRequest {
                group_id: group.to_string(),
            })
            .await
            .map_err(status(None))?
            .into_inner();
        Ok(GroupDescription {
            group_id: r.group_id,
            state: r.state,
            group_epoch: r.group_epoch,
            members: r
                .members
                .into_iter()
                .map(|m| GroupMemberInfo {
                    member_id: m.member_id,
                    member_epoch: m.member_epoch,
                    subscriptions: m.subscriptions,
                    assignment: m
                        .assignment
                        .into_iter()
                        .map(|p| TopicPartition::new(&p.topic, p.partition))
                        .collect(),
                })
                .collect(),
            partitions: r
                .partitions
                .into_iter()
                .map(|p| GroupPartitionLag {
                    topic: p.topic,
                    partition: p.partition,
                    committed_offset: (p.committed_offset >= 0).then_some(p.committed_offset),
                    high_watermark: p.high_watermark,
                    lag: p.lag,
                    lag_ms: p.lag_ms,
                })
                .collect(),
        })
    }

    /// Deletes a group without members, and its committed offsets.
    pub async fn delete_group(&self, group: &str) -> Result<()> {
        self.client
            .clone()
            .delete_group(v1::DeleteGroupRequest {
                group_id: group.to_string(),
            })
            .await
            .map_err(status(None))?;
        Ok(())
    }

    /// A group's committed offsets for `partitions` (empty: every committed partition).
    pub async fn group_offsets(
        &self,
        group: &str,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, CommittedOffset>> {
        let request = v1::FetchOffsetsRequest {
            group_id: group.to_string(),
            partitions: partitions
                .iter()
                .map(|tp| v1::GroupPartition {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                })
                .collect(),
        };
        let response = self
            .client
            .clone()
            .fetch_offsets(request)
            .await
            .map_err(status(None))?
            .into_inner();
        Ok(response
            .offsets
            .into_iter()
            .map(|o| {
                (
                    TopicPartition::new(&o.topic, o.partition),
                    CommittedOffset {
                        offset: o.offset,
                        metadata: o.metadata,
                    },
                )
            })
            .collect())
    }

    /// Sets a group's committed offsets. On a live group the members holding these
    /// partitions give them up first and are handed them back after, resuming from the
    /// new offsets. Returns whether members gave partitions up.
    pub async fn reset_group_offsets(
        &self,
        group: &str,
        offsets: &[(TopicPartition, i64)],
    ) -> Result<bool> {
        let request = v1::ResetOffsetsRequest {
            group_id: group.to_string(),
            offsets: offsets
                .iter()
                .map(|(tp, offset)| v1::OffsetCommit {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    offset: *offset,
                    metadata: String::new(),
                })
                .collect(),
        };
        let response = self
            .client
            .clone()
            .reset_offsets(request)
            .await
            .map_err(status(None))?
            .into_inner();
        Ok(response.revoked)
    }
}
