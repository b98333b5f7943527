//! The group coordinator: the groups whose `__consumer_offsets` partition this broker
//! leads (on one node, all of them). Committed offsets are records of that compacted
//! internal topic, appended with acks=all before a commit is acknowledged; on start the
//! coordinator rebuilds every group's offsets by reading the topic.
//!
//! Threading: `Sync`; the groups are behind one mutex. Blocking (appends fsync): call from
//! blocking tasks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use thiserror::Error;

use fjord_protocol::codec::{Compression, RecordInput, decode_records, encode_batch};

use super::TopicPartition;
use super::records::{self, OffsetsRecord, RecordError};
use super::state::{Committed, Group, GroupConfig, GroupError, Heartbeat, HeartbeatResponse};
use crate::cluster::{TopicError, TopicManager};
use crate::partition::Acks;
use crate::storage::{Clock, StorageError};

/// The internal topic of committed offsets and group metadata.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

#[derive(Debug, Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    Group(#[from] GroupError),
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("bad record in {OFFSETS_TOPIC}: {0}")]
    Record(#[from] RecordError),
    #[error("unknown group {0}")]
    UnknownGroup(String),
}

/// See the module docs.
#[derive(Debug)]
pub struct Coordinator {
    topics: Arc<TopicManager>,
    partitions: u32,
    defaults: GroupConfig,
    clock: Arc<dyn Clock>,
    groups: Mutex<BTreeMap<String, Group>>,
}

impl Coordinator {
    /// Creates `__consumer_offsets` (compacted, `partitions` partitions) if it is missing,
    /// then rebuilds the groups from it.
    pub fn start(
        topics: Arc<TopicManager>,
        partitions: u32,
        defaults: GroupConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, CoordinatorError> {
        let partitions = match topics.get(OFFSETS_TOPIC) {
            Ok(topic) => topic.partitions.len() as u32,
            Err(TopicError::UnknownTopic(_)) => {
                let overrides = BTreeMap::from([
                    ("cleanup.policy".to_string(), "compact".to_string()),
                    ("segment.bytes".to_string(), (100 * 1024 * 1024).to_string()),
                ]);
                topics.create_internal(OFFSETS_TOPIC, partitions, overrides)?;
                partitions
            }
            Err(e) => return Err(e.into()),
        };
        let coordinator = Coordinator {
            topics,
            partitions,
            defaults,
            clock,
            groups: Mutex::new(BTreeMap::new()),
        };
        coordinator.load()?;
        Ok(coordinator)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Group>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replays every partition of `__consumer_offsets` into the groups.
    fn load(&self) -> Result<(), CoordinatorError> {
        let mut groups = self.lock();
        for p in 0..self.partitions {
            let partition = self.topics.partition(OFFSETS_TOPIC, p)?;
            let mut offset = partition.log().log_start_offset();
            loop {
                let read = partition.read(offset, 1 << 20)?;
                if read.records.is_empty() {
                    break;
                }
                for header in fjord_protocol::BatchIter::new(&read.records) {
                    let header = header.map_err(StorageError::Codec)?;
                    for record in decode_records(header.as_bytes()).map_err(StorageError::Codec)? {
                        if record.offset < offset {
                            continue;
                        }
                        let Some(key) = &record.key else { continue };
                        match records::parse(key, record.value.as_deref())? {
                            OffsetsRecord::Offset {
                                group,
                                tp,
                                committed,
                            } => groups
                                .entry(group.clone())
                                .or_insert_with(|| Group::new(&group, self.defaults))
                                .restore_offset(tp, committed),
                            OffsetsRecord::GroupDeleted { group } => {
                                groups.remove(&group);
                            }
                        }
                    }
                    offset = header.next_offset();
                }
            }
        }
        tracing::info!(groups = groups.len(), "consumer groups loaded");
        Ok(())
    }

    /// Partition counts of the topics a heartbeat may subscribe to.
    fn partition_counts(&self) -> BTreeMap<String, u32> {
        self.topics
            .list()
            .iter()
            .filter(|t| t.name != OFFSETS_TOPIC)
            .map(|t| (t.name.clone(), t.partitions.len() as u32))
            .collect()
    }

    /// A member's heartbeat (joins create the group).
    pub fn heartbeat(
        &self,
        group: &str,
        request: Heartbeat,
    ) -> Result<HeartbeatResponse, CoordinatorError> {
        let counts = self.partition_counts();
        let now = self.clock.now_ms();
        let mut groups = self.lock();
        let g = groups
            .entry(group.to_owned())
            .or_insert_with(|| Group::new(group, self.defaults));
        g.expire(now);
        Ok(g.heartbeat(request, &counts, now)?)
    }

    /// Commits offsets for a member (or, with an empty `member_id`, for an empty group).
    /// Fenced first; durable (fsync'd) before it returns.
    pub fn commit(
        &self,
        group: &str,
        member_id: &str,
        member_epoch: i32,
        offsets: &[(TopicPartition, i64, String)],
    ) -> Result<(), CoordinatorError> {
        let now = self.clock.now_ms();
        let mut groups = self.lock();
        let g = groups
            .entry(group.to_owned())
            .or_insert_with(|| Group::new(group, self.defaults));
        // Check every commit on a copy first: all or nothing.
        let mut checked = g.clone();
        let mut inputs = Vec::new();
        for (tp, offset, metadata) in offsets {
            checked.commit(
                member_id,
                member_epoch,
                tp.clone(),
                *offset,
                metadata.clone(),
                now,
            )?;
            let committed = checked.committed(tp).expect("just committed").clone();
            let (key, value) = records::offset_commit(group, tp, &committed)?;
            inputs.push(RecordInput::new(Some(key), Some(value), now));
        }
        self.append(group, &inputs)?;
        *g = checked;
        Ok(())
    }

    /// The committed offset of each partition asked for (or of all, if none).
    pub fn fetch_offsets(
        &self,
        group: &str,
        partitions: &[TopicPartition],
    ) -> BTreeMap<TopicPartition, Committed> {
        let groups = self.lock();
        let Some(g) = groups.get(group) else {
            return BTreeMap::new();
        };
        g.offsets()
            .iter()
            .filter(|(tp, _)| partitions.is_empty() || partitions.contains(tp))
            .map(|(tp, c)| (tp.clone(), c.clone()))
            .collect()
    }

    /// Deletes an empty group and its offsets (tombstones, so compaction drops them).
    pub fn delete_group(&self, group: &str) -> Result<(), CoordinatorError> {
        let now = self.clock.now_ms();
        let mut groups = self.lock();
        let g = groups
            .get_mut(group)
            .ok_or_else(|| CoordinatorError::UnknownGroup(group.to_owned()))?;
        g.expire(now);
        if !g.members().is_empty() {
            return Err(GroupError::NotEmpty(group.to_owned()).into());
        }
        let mut inputs = Vec::new();
        for tp in g.offsets().keys() {
            let (key, _) = records::offset_commit(
                group,
                tp,
                &Committed {
                    offset: 0,
                    metadata: String::new(),
                    commit_timestamp_ms: now,
                },
            )?;
            inputs.push(RecordInput::new(Some(key), None, now));
        }
        inputs.push(RecordInput::new(
            Some(records::group_tombstone_key(group)?),
            None,
            now,
        ));
        self.append(group, &inputs)?;
        groups.remove(group);
        Ok(())
    }

    /// The group ids with members or offsets.
    pub fn list_groups(&self) -> BTreeSet<String> {
        self.lock().keys().cloned().collect()
    }

    /// A snapshot of one group (members whose session ran out are removed first).
    pub fn describe(&self, group: &str) -> Option<Group> {
        let now = self.clock.now_ms();
        let mut groups = self.lock();
        let g = groups.get_mut(group)?;
        g.expire(now);
        Some(g.clone())
    }

    fn append(&self, group: &str, inputs: &[RecordInput]) -> Result<(), CoordinatorError> {
        if inputs.is_empty() {
            return Ok(());
        }
        let p = records::partition_for(group, self.partitions);
        let partition = self.topics.partition(OFFSETS_TOPIC, p)?;
        let mut batch = encode_batch(inputs, Compression::None)
            .map_err(StorageError::Codec)?
            .to_vec();
        partition.append(&mut batch, Acks::All)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TopicConfig;
    use crate::group::Heartbeat;
    use crate::storage::ManualClock;

    fn open(dir: &std::path::Path, clock: &ManualClock) -> (Arc<TopicManager>, Coordinator) {
        let clock: Arc<dyn Clock> = Arc::new(clock.clone());
        let topics =
            Arc::new(TopicManager::open(dir, TopicConfig::default(), 1, clock.clone()).unwrap());
        if topics.get("orders").is_err() {
            topics.create("orders", 4, BTreeMap::new()).unwrap();
        }
        let coordinator =
            Coordinator::start(topics.clone(), 4, GroupConfig::default(), clock).unwrap();
        (topics, coordinator)
    }

    #[test]
    fn commits_are_durable_in_the_offsets_topic_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_000);
        let (topics, c) = open(dir.path(), &clock);
        let join = Heartbeat {
            member_epoch: 0,
            subscriptions: Some(BTreeSet::from(["orders".to_string()])),
            owned: Some(BTreeSet::new()),
            ..Heartbeat::default()
        };
        let member = c.heartbeat("views", join).unwrap();
        assert_eq!(member.assignment.len(), 4);
        let commits: Vec<_> = (0..4)
            .map(|p| {
                (
                    TopicPartition::new("orders", p),
                    10 * p as i64,
                    format!("m{p}"),
                )
            })
            .collect();
        c.commit("views", &member.member_id, member.member_epoch, &commits)
            .unwrap();
        // A stale epoch is fenced, and nothing of a fenced commit is kept.
        let stale = c.commit(
            "views",
            &member.member_id,
            member.member_epoch - 1,
            &commits[..1],
        );
        assert!(matches!(
            stale,
            Err(CoordinatorError::Group(
                GroupError::FencedMemberEpoch { .. }
            ))
        ));
        c.commit(
            "other",
            "",
            -1,
            &[(TopicPartition::new("orders", 0), 5, String::new())],
        )
        .unwrap();
        c.delete_group("other").unwrap();
        drop(c);
        topics.close_all().unwrap();
        drop(topics);

        let (_topics, c) = open(dir.path(), &clock);
        let offsets = c.fetch_offsets("views", &[]);
        assert_eq!(offsets.len(), 4);
        assert_eq!(offsets[&TopicPartition::new("orders", 3)].offset, 30);
        assert_eq!(offsets[&TopicPartition::new("orders", 3)].metadata, "m3");
        assert_eq!(
            c.list_groups(),
            BTreeSet::from(["views".to_string()]),
            "the deleted group stays deleted"
        );
    }

    #[test]
    fn a_group_with_members_cannot_be_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(0);
        let (_topics, c) = open(dir.path(), &clock);
        let join = Heartbeat {
            member_epoch: 0,
            subscriptions: Some(BTreeSet::from(["orders".to_string()])),
            ..Heartbeat::default()
        };
        c.heartbeat("live", join).unwrap();
        assert!(matches!(
            c.delete_group("live"),
            Err(CoordinatorError::Group(GroupError::NotEmpty(_)))
        ));
        assert!(matches!(
            c.delete_group("nope"),
            Err(CoordinatorError::UnknownGroup(_))
        ));
        // Once every member has timed out, it can.
        clock.advance_ms(GroupConfig::default().session_timeout_ms + 1);
        c.delete_group("live").unwrap();
    }
}
