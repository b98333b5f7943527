//! The group coordinator: the groups whose `__consumer_offsets` partition this broker
//! leads (on one node, all of them). Committed offsets are records of that compacted
//! internal topic, appended with acks=all before a commit is acknowledged; on start the
//! coordinator rebuilds every group's offsets by reading the topic.
//!
//! Threading: `Sync`; the groups are behind one mutex. Blocking (appends fsync): call from
//! blocking tasks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;

use fjord_protocol::codec::{Compression, RecordInput, decode_records, encode_batch};

use super::TopicPartition;
use super::classic::{JoinOutcome, JoinRequest, JoinResult, SyncOutcome, SyncRequest};
use super::records::{self, OffsetsRecord, RecordError};
use super::state::{Committed, Group, GroupConfig, GroupError, Heartbeat, HeartbeatResponse};
use crate::cluster::{TopicError, TopicManager};
use crate::partition::Acks;
use crate::storage::{Clock, ReadLimit, StorageError};
use fjord_protocol::BatchHeader;

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
    #[error("offset {offset} for {topic}-{partition} is negative")]
    InvalidOffset {
        topic: String,
        partition: u32,
        offset: i64,
    },
    #[error(
        "the members of group {group} did not give up the partitions to reset within \
         {waited_ms} ms; nothing was changed"
    )]
    RebalanceTimeout { group: String, waited_ms: u64 },
}

/// How far a group's committed position is behind one partition's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub tp: TopicPartition,
    /// -1 when nothing is committed (lag is then counted from the log start).
    pub committed_offset: i64,
    pub high_watermark: i64,
    pub lag_records: i64,
    /// The newest record's timestamp less the timestamp of the batch holding the next
    /// record to consume; 0 without lag.
    pub lag_ms: i64,
}

/// See the module docs.
#[derive(Debug)]
pub struct Coordinator {
    topics: Arc<TopicManager>,
    partitions: u32,
    defaults: GroupConfig,
    clock: Arc<dyn Clock>,
    groups: Mutex<BTreeMap<String, Group>>,
    /// Notified after every heartbeat (a live reset waits on it for partitions to be
    /// given up).
    heartbeats: Condvar,
    /// Bumped whenever a classic group changes: JoinGroup and SyncGroup waiters look
    /// again.
    changes: tokio::sync::watch::Sender<u64>,
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
            heartbeats: Condvar::new(),
            changes: tokio::sync::watch::Sender::new(0),
        };
        coordinator.load()?;
        Ok(coordinator)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Group>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The group `id`, created (empty) if missing.
    fn entry<'a>(&self, groups: &'a mut BTreeMap<String, Group>, id: &str) -> &'a mut Group {
        groups
            .entry(id.to_owned())
            .or_insert_with(|| Group::new(id, self.defaults))
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
        let g = self.entry(&mut groups, group);
        g.expire(now);
        let response = g.heartbeat(request, &counts, now);
        drop(groups);
        self.heartbeats.notify_all();
        Ok(response?)
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
        let g = self.entry(&mut groups, group);
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

    /// Sets the committed offsets of `offsets`' partitions. A group of Kafka clients
    /// (classic protocol) must have no members (`NotEmpty`), as in Kafka.
    /// On a live group, the members holding any of them are first asked to give them up
    /// (they commit and release them at their next heartbeat); the offsets are set once
    /// nobody holds them, and then the partitions are handed out again, so the members
    /// resume from the new offsets. Returns whether members had to give partitions up.
    /// Waits at most the group's session timeout plus two heartbeat intervals.
    pub fn reset_offsets(
        &self,
        group: &str,
        offsets: &[(TopicPartition, i64)],
    ) -> Result<bool, CoordinatorError> {
        for (tp, offset) in offsets {
            self.topics.partition(&tp.topic, tp.partition)?;
            if *offset < 0 {
                return Err(CoordinatorError::InvalidOffset {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    offset: *offset,
                });
            }
        }
        let tps: BTreeSet<TopicPartition> = offsets.iter().map(|(tp, _)| tp.clone()).collect();
        let mut groups = self.lock();
        let g = self.entry(&mut groups, group);
        g.expire(self.clock.now_ms());
        if !g.classic().is_empty() {
            // Kafka clients assign partitions themselves: nothing can take them back
            // while they run, so (as Kafka) the group must be inactive.
            return Err(GroupError::NotEmpty(group.to_owned()).into());
        }
        let live = g.holds_any(&tps);
        if live {
            let config = g.config();
            let wait = Duration::from_millis(
                (config.session_timeout_ms + 2 * config.heartbeat_interval_ms).max(0) as u64,
            );
            let slice = Duration::from_millis(config.heartbeat_interval_ms.max(10) as u64);
            g.pause(&tps);
            let deadline = Instant::now() + wait;
            loop {
                let now = Instant::now();
                if now >= deadline {
                    if let Some(g) = groups.get_mut(group) {
                        g.resume(&tps);
                    }
                    return Err(CoordinatorError::RebalanceTimeout {
                        group: group.to_owned(),
                        waited_ms: wait.as_millis() as u64,
                    });
                }
                let timeout = slice.min(deadline - now);
                groups = self
                    .heartbeats
                    .wait_timeout(groups, timeout)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                let now_ms = self.clock.now_ms();
                let g = self.entry(&mut groups, group);
                g.expire(now_ms);
                if !g.holds_any(&tps) {
                    break;
                }
            }
        }
        let now = self.clock.now_ms();
        let mut inputs = Vec::new();
        let mut set = Vec::new();
        for (tp, offset) in offsets {
            let committed = Committed {
                offset: *offset,
                metadata: String::new(),
                commit_timestamp_ms: now,
            };
            let (key, value) = records::offset_commit(group, tp, &committed)?;
            inputs.push(RecordInput::new(Some(key), Some(value), now));
            set.push((tp.clone(), committed));
        }
        let appended = self.append(group, &inputs);
        let g = self.entry(&mut groups, group);
        if appended.is_ok() {
            for (tp, committed) in set {
                g.restore_offset(tp, Some(committed));
            }
        }
        if live {
            g.resume(&tps);
        }
        appended.map(|()| live)
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
        if !g.is_empty() {
            return Err(GroupError::NotEmpty(group.to_owned()).into());
        }
        let mut inputs = Vec::new();
        for tp in g.offsets().keys() {
            inputs.push(offset_tombstone(group, tp, now)?);
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

    /// Runs `f` on group `id` (created empty if missing) after expiring silent members;
    /// wakes the classic waiters afterwards.
    fn with_group<T>(&self, id: &str, f: impl FnOnce(&mut Group, i64) -> T) -> T {
        let now = self.clock.now_ms();
        let mut groups = self.lock();
        let g = self.entry(&mut groups, id);
        let before = g.classic().fingerprint();
        g.expire(now);
        let out = f(g, now);
        let changed = g.classic().fingerprint() != before;
        drop(groups);
        if changed {
            self.changes.send_modify(|n| *n += 1);
        }
        out
    }

    /// Watches classic-group changes: a JoinGroup or SyncGroup waiter polls again when
    /// this changes.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// A Kafka client's JoinGroup.
    pub fn classic_join(
        &self,
        group: &str,
        request: JoinRequest,
    ) -> Result<JoinOutcome, GroupError> {
        self.with_group(group, |g, now| {
            if !g.members().is_empty() {
                return Err(GroupError::InconsistentProtocol(group.to_owned()));
            }
            let delay = g.config().initial_rebalance_delay_ms;
            g.classic_mut().join(group, request, now, delay)
        })
    }

    /// The answer to a waiting JoinGroup once its rebalance completed; else when to look
    /// again at the latest (the rebalance deadline).
    pub fn classic_poll_join(
        &self,
        group: &str,
        member_id: &str,
    ) -> Result<Option<JoinResult>, GroupError> {
        self.with_group(group, |g, now| {
            g.classic_mut().poll_join(member_id, now).transpose()
        })
    }

    /// A Kafka client's SyncGroup.
    pub fn classic_sync(
        &self,
        group: &str,
        request: SyncRequest,
    ) -> Result<SyncOutcome, GroupError> {
        self.with_group(group, |g, now| g.classic_mut().sync(group, request, now))
    }

    /// The answer to a follower's waiting SyncGroup once the leader synced.
    pub fn classic_poll_sync(
        &self,
        group: &str,
        member_id: &str,
        generation: i32,
    ) -> Result<Option<bytes::Bytes>, GroupError> {
        self.with_group(group, |g, now| {
            g.classic_mut()
                .poll_sync(group, member_id, generation, now)
                .transpose()
        })
    }

    /// A Kafka client's Heartbeat.
    pub fn classic_heartbeat(
        &self,
        group: &str,
        member_id: &str,
        instance: Option<&str>,
        generation: i32,
    ) -> Result<(), GroupError> {
        self.with_group(group, |g, now| {
            g.classic_mut()
                .heartbeat(group, member_id, instance, generation, now)
        })
    }

    /// A Kafka client's LeaveGroup of one member.
    pub fn classic_leave(
        &self,
        group: &str,
        member_id: &str,
        instance: Option<&str>,
    ) -> Result<(), GroupError> {
        self.with_group(group, |g, now| {
            g.classic_mut().leave(member_id, instance, now)
        })
    }

    /// Commits offsets from a Kafka client (OffsetCommit): fenced by member and
    /// generation, or from outside the group while it has no members. All or nothing;
    /// durable before it returns.
    pub fn commit_classic(
        &self,
        group: &str,
        member_id: &str,
        instance: Option<&str>,
        generation: i32,
        offsets: &[(TopicPartition, i64, String)],
    ) -> Result<(), CoordinatorError> {
        let now = self.clock.now_ms();
        let mut groups = self.lock();
        let g = self.entry(&mut groups, group);
        g.expire(now);
        let mut checked = g.clone();
        let mut inputs = Vec::new();
        for (tp, offset, metadata) in offsets {
            let committed = Committed {
                offset: *offset,
                metadata: metadata.clone(),
                commit_timestamp_ms: now,
            };
            checked.commit_classic(member_id, instance, generation, tp.clone(), committed)?;
            let committed = checked.committed(tp).expect("just committed").clone();
            let (key, value) = records::offset_commit(group, tp, &committed)?;
            inputs.push(RecordInput::new(Some(key), Some(value), now));
        }
        self.append(group, &inputs)?;
        *g = checked;
        Ok(())
    }

    /// Drops every group's committed offsets of `topic` (it was deleted; as Kafka, a
    /// topic created again under the name starts without them), with tombstones so a
    /// restart does not bring them back.
    pub fn forget_topic(&self, topic: &str) -> Result<(), CoordinatorError> {
        let now = self.clock.now_ms();
        let mut groups = self.lock();
        for (id, g) in groups.iter_mut() {
            let gone: Vec<TopicPartition> = g
                .offsets()
                .keys()
                .filter(|tp| tp.topic == topic)
                .cloned()
                .collect();
            if gone.is_empty() {
                continue;
            }
            let inputs = gone
                .iter()
                .map(|tp| offset_tombstone(id, tp, now))
                .collect::<Result<Vec<_>, _>>()?;
            self.append(id, &inputs)?;
            for tp in gone {
                g.restore_offset(tp, None);
            }
        }
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

    /// The lag of every partition `group` has committed or assigned (partitions of
    /// deleted topics are left out). Reads batch headers: call from blocking tasks.
    pub fn lag(&self, group: &Group) -> Vec<PartitionLag> {
        let mut tps: BTreeSet<TopicPartition> = group.offsets().keys().cloned().collect();
        tps.extend(
            group
                .members()
                .values()
                .flat_map(|m| m.assigned.iter().cloned()),
        );
        tps.extend(
            group
                .classic()
                .members()
                .values()
                .flat_map(|m| m.assigned_partitions()),
        );
        tps.into_iter()
            .filter_map(|tp| {
                let committed_offset = group.committed(&tp).map_or(-1, |c| c.offset);
                let partition = self.topics.partition(&tp.topic, tp.partition).ok()?;
                let log = partition.log();
                let high_watermark = log.high_watermark();
                let from = if committed_offset < 0 {
                    log.log_start_offset()
                } else {
                    committed_offset.max(log.log_start_offset())
                };
                let lag_records = (high_watermark - from).max(0);
                let batch_time = |offset: i64, newest: bool| -> Option<i64> {
                    let read = log.read(offset, 1, ReadLimit::HighWatermark).ok()?;
                    let header = BatchHeader::parse(&read.records).ok()?;
                    Some(if newest {
                        header.max_timestamp()
                    } else {
                        header.base_timestamp()
                    })
                };
                let lag_ms = if lag_records == 0 {
                    0
                } else {
                    match (
                        batch_time(high_watermark - 1, true),
                        batch_time(from, false),
                    ) {
                        (Some(newest), Some(next)) => (newest - next).max(0),
                        _ => 0,
                    }
                };
                Some(PartitionLag {
                    tp,
                    committed_offset,
                    high_watermark,
                    lag_records,
                    lag_ms,
                })
            })
            .collect()
    }

    /// Every group with its lag (for `/metrics`).
    pub fn all_lag(&self) -> Vec<(String, Vec<PartitionLag>)> {
        let groups: Vec<Group> = self.lock().values().cloned().collect();
        groups
            .iter()
            .map(|g| (g.id().to_owned(), self.lag(g)))
            .collect()
    }

    fn append(&self, group: &str, inputs: &[RecordInput]) -> Result<(), CoordinatorError> {
        if inputs.is_empty() {
            return Ok(());
        }
        let p = records::partition_for(group, self.partitions);
        let partition = self.topics.partition(OFFSETS_TOPIC, p)?;
        let batch = encode_batch(inputs, Compression::None).map_err(StorageError::Codec)?;
        partition.append(&batch, Acks::All)?;
        Ok(())
    }
}

/// The record that removes `group`'s committed offset of `tp` (compaction drops both).
fn offset_tombstone(
    group: &str,
    tp: &TopicPartition,
    now: i64,
) -> Result<RecordInput, CoordinatorError> {
    let any = Committed {
        offset: 0,
        metadata: String::new(),
        commit_timestamp_ms: now,
    };
    let (key, _) = records::offset_commit(group, tp, &any)?;
    Ok(RecordInput::new(Some(key), None, now))
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
    fn a_live_group_of_kafka_clients_is_not_reset() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_000);
        let (_topics, c) = open(dir.path(), &clock);
        let join = JoinRequest {
            client_id: "c".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 10_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), bytes::Bytes::new())],
            ..JoinRequest::default()
        };
        c.classic_join("kafka-views", join).unwrap();
        let reset = c.reset_offsets("kafka-views", &[(TopicPartition::new("orders", 0), 0)]);
        assert!(matches!(
            reset,
            Err(CoordinatorError::Group(GroupError::NotEmpty(_)))
        ));
        assert!(c.fetch_offsets("kafka-views", &[]).is_empty());
    }

    #[test]
    fn a_deleted_topics_offsets_are_forgotten_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_000);
        let (topics, c) = open(dir.path(), &clock);
        topics.create("audit", 1, BTreeMap::new()).unwrap();
        let commits = [
            (TopicPartition::new("orders", 0), 7, String::new()),
            (TopicPartition::new("audit", 0), 3, String::new()),
        ];
        c.commit("views", "", -1, &commits).unwrap();
        c.forget_topic("orders").unwrap();
        let left: Vec<_> = c.fetch_offsets("views", &[]).into_keys().collect();
        assert_eq!(left, [TopicPartition::new("audit", 0)]);
        drop(c);
        topics.close_all().unwrap();
        drop(topics);
        let (_topics, c) = open(dir.path(), &clock);
        let left: Vec<_> = c.fetch_offsets("views", &[]).into_keys().collect();
        assert_eq!(left, [TopicPartition::new("audit", 0)], "after a restart");
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

    fn join_orders(c: &Coordinator, group: &str) -> HeartbeatResponse {
        let join = Heartbeat {
            member_epoch: 0,
            subscriptions: Some(BTreeSet::from(["orders".to_string()])),
            owned: Some(BTreeSet::new()),
            ..Heartbeat::default()
        };
        c.heartbeat(group, join).unwrap()
    }

    fn beat(c: &Coordinator, group: &str, last: &HeartbeatResponse) -> HeartbeatResponse {
        let request = Heartbeat {
            member_id: last.member_id.clone(),
            member_epoch: last.member_epoch,
            subscriptions: None,
            owned: Some(last.assignment.clone()),
        };
        c.heartbeat(group, request).unwrap()
    }

    #[test]
    fn a_reset_on_a_live_group_takes_the_partition_back_sets_it_and_hands_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(0);
        let (_topics, c) = open(dir.path(), &clock);
        let c = Arc::new(c);
        let mut member = join_orders(&c, "live");
        assert_eq!(member.assignment.len(), 4);
        let p0 = TopicPartition::new("orders", 0);
        c.commit(
            "live",
            &member.member_id,
            member.member_epoch,
            &[(p0.clone(), 3, "".into())],
        )
        .unwrap();
        let reset = {
            let c = c.clone();
            let p0 = p0.clone();
            std::thread::spawn(move || c.reset_offsets("live", &[(p0, 9)]))
        };
        // The member heartbeats on: it is told to give p0 up, confirms, and gets it back
        // once the offset is set.
        let mut gave_up = false;
        while !reset.is_finished() {
            member = beat(&c, "live", &member);
            if !member.assignment.contains(&p0) {
                gave_up = true;
            } else if !gave_up {
                // Not set while the member still holds the partition.
                assert_eq!(
                    c.fetch_offsets("live", std::slice::from_ref(&p0))[&p0].offset,
                    3
                );
            }
            std::thread::yield_now();
        }
        assert!(
            reset.join().unwrap().unwrap(),
            "members had to give partitions up"
        );
        assert!(gave_up);
        assert_eq!(
            c.fetch_offsets("live", std::slice::from_ref(&p0))[&p0].offset,
            9
        );
        member = beat(&c, "live", &member);
        member = beat(&c, "live", &member);
        assert!(member.assignment.contains(&p0), "handed back: {member:?}");
        // An idle group (or a partition nobody holds) is set at once.
        assert!(!c.reset_offsets("idle", &[(p0.clone(), 1)]).unwrap());
        assert_eq!(c.fetch_offsets("idle", &[])[&p0].offset, 1);
        assert!(matches!(
            c.reset_offsets("idle", &[(TopicPartition::new("orders", 9), 1)]),
            Err(CoordinatorError::Topic(_))
        ));
        assert!(matches!(
            c.reset_offsets("idle", &[(p0.clone(), -1)]),
            Err(CoordinatorError::InvalidOffset { .. })
        ));
    }

    #[test]
    fn a_reset_that_members_do_not_answer_times_out_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(0);
        let shared: Arc<dyn Clock> = Arc::new(clock.clone());
        let topics = Arc::new(
            TopicManager::open(dir.path(), TopicConfig::default(), 1, shared.clone()).unwrap(),
        );
        topics.create("orders", 2, BTreeMap::new()).unwrap();
        let config = GroupConfig {
            session_timeout_ms: 100,
            heartbeat_interval_ms: 20,
            ..GroupConfig::default()
        };
        let c = Coordinator::start(topics, 2, config, shared).unwrap();
        let member = join_orders(&c, "stuck");
        let p0 = TopicPartition::new("orders", 0);
        let e = c.reset_offsets("stuck", &[(p0.clone(), 5)]).unwrap_err();
        assert!(
            matches!(e, CoordinatorError::RebalanceTimeout { .. }),
            "{e}"
        );
        assert!(c.fetch_offsets("stuck", &[]).is_empty());
        // The partition is not withheld any more.
        let member = beat(&c, "stuck", &member);
        assert!(member.assignment.contains(&p0));
    }
}
