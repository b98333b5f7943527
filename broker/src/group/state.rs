//! One consumer group, the KIP-848 way: members heartbeat with their subscription and the
//! partitions they own; the coordinator keeps a group epoch and a member epoch per member,
//! computes the target assignment, and hands it out incrementally. A partition moves to
//! its new owner only after its old owner has confirmed giving it up (a heartbeat whose
//! owned partitions no longer list it) or has been removed (left, or silent for its
//! session timeout), so no partition is ever owned by two live members at once. Commits
//! are fenced by member and member epoch. Pure: no I/O, time passed in.
//!
//! Threading: one owner (the coordinator holds it under a lock).

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

use super::assignor::{Assignment, Assignor, TopicPartition, assign};
use super::classic::{Classic, ClassicState};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum GroupError {
    #[error("unknown member {0} (it left or its session timed out): join again")]
    UnknownMember(String),
    #[error("member {member} is fenced: its epoch is {current}, the request says {got}")]
    FencedMemberEpoch {
        member: String,
        current: i32,
        got: i32,
    },
    #[error("member {member} does not own {topic}-{partition}")]
    NotOwner {
        member: String,
        topic: String,
        partition: u32,
    },
    #[error("group {0} has active members")]
    NotEmpty(String),
    /// A new Kafka client member gets its id first (JoinGroup v4+), then joins with it.
    #[error("a member id is required: join again with {0}")]
    MemberIdRequired(String),
    #[error("member {member} is in generation {got}, the group is in {current}")]
    IllegalGeneration {
        member: String,
        current: i32,
        got: i32,
    },
    #[error("group {0} is rebalancing: join again")]
    RebalanceInProgress(String),
    #[error(
        "group {0} uses another protocol: its members are of the other group protocol, \
         or share no assignor with this one"
    )]
    InconsistentProtocol(String),
    #[error("group.instance.id {0} now belongs to a newer member")]
    FencedInstance(String),
    #[error("session timeout {0} ms is outside 1000..=1800000")]
    InvalidSessionTimeout(i32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupConfig {
    pub session_timeout_ms: i64,
    pub heartbeat_interval_ms: i64,
    pub assignor: Assignor,
    /// Kafka clients' groups (classic protocol): how long an empty group waits for more
    /// members before its first generation.
    pub initial_rebalance_delay_ms: i64,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            session_timeout_ms: 45_000,
            heartbeat_interval_ms: 5_000,
            assignor: Assignor::Range,
            initial_rebalance_delay_ms: 3_000,
        }
    }
}

/// A member's heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Heartbeat {
    /// Empty to join.
    pub member_id: String,
    /// 0 to join (or rejoin), -1 to leave, else the epoch the member last received.
    pub member_epoch: i32,
    /// `None`: unchanged since the last heartbeat.
    pub subscriptions: Option<BTreeSet<String>>,
    /// The partitions the member owns now; `None`: unchanged.
    pub owned: Option<BTreeSet<TopicPartition>>,
}

/// The coordinator's answer: what the member may own now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatResponse {
    pub member_id: String,
    pub member_epoch: i32,
    pub assignment: BTreeSet<TopicPartition>,
    pub heartbeat_interval_ms: i64,
    /// The assignment is not the member's target yet: partitions are still to be given
    /// up, or to come once other members give them up.
    pub reconciling: bool,
}

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    /// Some member has not reached the target assignment yet.
    Reconciling,
    Stable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub epoch: i32,
    pub subscriptions: BTreeSet<String>,
    /// What the member may hold: what it was handed, less what it confirmed giving up.
    pub assigned: BTreeSet<TopicPartition>,
    /// The part of `assigned` the member has been asked to give up.
    pub revoking: BTreeSet<TopicPartition>,
    pub last_seen_ms: i64,
}

/// One group. See the module docs.
#[derive(Debug, Clone)]
pub struct Group {
    id: String,
    config: GroupConfig,
    epoch: i32,
    target_epoch: i32,
    target: Assignment,
    /// The partition counts the target was computed with.
    target_partitions: BTreeMap<String, u32>,
    members: BTreeMap<String, Member>,
    offsets: BTreeMap<TopicPartition, Committed>,
    /// Partitions withheld from every member while their offsets are reset on a live
    /// group ([`Group::pause`]).
    paused: BTreeSet<TopicPartition>,
    joins: u64,
    /// The members of Kafka clients (classic protocol). A group has members of one
    /// protocol at a time; offsets are shared.
    classic: Classic,
}

impl Group {
    pub fn new(id: &str, config: GroupConfig) -> Self {
        Group {
            id: id.to_owned(),
            config,
            epoch: 0,
            target_epoch: -1,
            target: Assignment::new(),
            target_partitions: BTreeMap::new(),
            members: BTreeMap::new(),
            offsets: BTreeMap::new(),
            paused: BTreeSet::new(),
            joins: 0,
            classic: Classic::default(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn epoch(&self) -> i32 {
        self.epoch
    }
    pub fn config(&self) -> GroupConfig {
        self.config
    }
    pub fn members(&self) -> &BTreeMap<String, Member> {
        &self.members
    }
    pub fn offsets(&self) -> &BTreeMap<TopicPartition, Committed> {
        &self.offsets
    }

    pub fn classic(&self) -> &Classic {
        &self.classic
    }
    pub fn classic_mut(&mut self) -> &mut Classic {
        &mut self.classic
    }
    /// No members of either protocol.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.classic.is_empty()
    }

    pub fn state(&self) -> GroupState {
        if !self.classic.is_empty() {
            return match self.classic.state() {
                ClassicState::Stable => GroupState::Stable,
                _ => GroupState::Reconciling,
            };
        }
        if self.members.is_empty() {
            GroupState::Empty
        } else if self.target_epoch == self.epoch
            && self.members.iter().all(|(id, m)| {
                m.revoking.is_empty() && self.target.get(id).is_some_and(|t| *t == m.assigned)
            })
        {
            GroupState::Stable
        } else {
            GroupState::Reconciling
        }
    }

    /// Handles a heartbeat. `partitions`: the current partition count of every topic.
    pub fn heartbeat(
        &mut self,
        request: Heartbeat,
        partitions: &BTreeMap<String, u32>,
        now_ms: i64,
    ) -> Result<HeartbeatResponse, GroupError> {
        if !self.classic.is_empty() {
            return Err(GroupError::InconsistentProtocol(self.id.clone()));
        }
        if request.member_epoch == -1 {
            self.remove(&request.member_id);
            return Ok(HeartbeatResponse {
                member_id: request.member_id,
                member_epoch: -1,
                assignment: BTreeSet::new(),
                heartbeat_interval_ms: self.config.heartbeat_interval_ms,
                reconciling: false,
            });
        }
        let id = if request.member_epoch == 0 {
            // Join, or rejoin after losing the membership: whatever it held is released.
            let id = if request.member_id.is_empty() {
                self.joins += 1;
                format!("{}-member-{}-{}", self.id, self.joins, now_ms)
            } else {
                request.member_id.clone()
            };
            self.remove(&id);
            self.epoch += 1;
            self.members.insert(
                id.clone(),
                Member {
                    // Its epoch from now on is the one it is told; it moves with the
                    // group's as it reaches each target.
                    epoch: self.epoch,
                    subscriptions: request.subscriptions.clone().unwrap_or_default(),
                    assigned: BTreeSet::new(),
                    revoking: BTreeSet::new(),
                    last_seen_ms: now_ms,
                },
            );
            id
        } else {
            let member = self
                .members
                .get_mut(&request.member_id)
                .ok_or_else(|| GroupError::UnknownMember(request.member_id.clone()))?;
            if request.member_epoch != member.epoch {
                return Err(GroupError::FencedMemberEpoch {
                    member: request.member_id.clone(),
                    current: member.epoch,
                    got: request.member_epoch,
                });
            }
            member.last_seen_ms = now_ms;
            if let Some(subscriptions) = &request.subscriptions
                && *subscriptions != member.subscriptions
            {
                member.subscriptions = subscriptions.clone();
                self.epoch += 1;
            }
            request.member_id.clone()
        };
        if let Some(owned) = &request.owned {
            let member = self.members.get_mut(&id).expect("member present");
            // What it was asked to give up and no longer owns is free now.
            let released: Vec<TopicPartition> = member
                .revoking
                .iter()
                .filter(|tp| !owned.contains(tp))
                .cloned()
                .collect();
            for tp in released {
                member.revoking.remove(&tp);
                member.assigned.remove(&tp);
            }
        }
        if *partitions != self.target_partitions {
            self.epoch += 1;
        }
        self.refresh_target(partitions);
        let assignment = self.reconcile(&id);
        let member = &self.members[&id];
        let reconciling = !member.revoking.is_empty()
            || self
                .target
                .get(&id)
                .map_or(!member.assigned.is_empty(), |t| *t != member.assigned);
        Ok(HeartbeatResponse {
            member_id: id,
            member_epoch: member.epoch,
            assignment,
            heartbeat_interval_ms: self.config.heartbeat_interval_ms,
            reconciling,
        })
    }

    fn refresh_target(&mut self, partitions: &BTreeMap<String, u32>) {
        if self.target_epoch == self.epoch {
            return;
        }
        let subscriptions: BTreeMap<String, BTreeSet<String>> = self
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.subscriptions.clone()))
            .collect();
        self.target = assign(self.config.assignor, &subscriptions, partitions);
        for assigned in self.target.values_mut() {
            assigned.retain(|tp| !self.paused.contains(tp));
        }
        self.target_partitions = partitions.clone();
        self.target_epoch = self.epoch;
    }

    /// Moves member `id` toward its target; returns what it may own now.
    fn reconcile(&mut self, id: &str) -> BTreeSet<TopicPartition> {
        let target = self.target.get(id).cloned().unwrap_or_default();
        let held_elsewhere: BTreeSet<TopicPartition> = self
            .members
            .iter()
            .filter(|(other, _)| other.as_str() != id)
            .flat_map(|(_, m)| m.assigned.iter().cloned())
            .collect();
        let epoch = self.epoch;
        let member = self.members.get_mut(id).expect("member present");
        let to_revoke: Vec<TopicPartition> = member.assigned.difference(&target).cloned().collect();
        member.revoking.extend(to_revoke);
        if member.revoking.is_empty() {
            // Only free partitions are handed out: their old owner confirmed giving them up.
            let free: Vec<TopicPartition> = target
                .difference(&member.assigned)
                .filter(|tp| !held_elsewhere.contains(tp))
                .cloned()
                .collect();
            member.assigned.extend(free);
            if member.assigned == target {
                member.epoch = epoch;
            }
        }
        member
            .assigned
            .difference(&member.revoking)
            .cloned()
            .collect()
    }

    fn remove(&mut self, id: &str) {
        if self.members.remove(id).is_some() {
            self.epoch += 1;
        }
    }

    /// Removes the members silent for longer than the session timeout; their partitions
    /// are free for the others. Returns their ids.
    pub fn expire(&mut self, now_ms: i64) -> Vec<String> {
        let mut expired = self.classic.expire(now_ms);
        expired.extend(self.expire_members(now_ms));
        expired
    }

    fn expire_members(&mut self, now_ms: i64) -> Vec<String> {
        let timeout = self.config.session_timeout_ms;
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| now_ms - m.last_seen_ms > timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.remove(id);
        }
        expired
    }

    /// Commits `offset` for `tp`. From a member: only with its current epoch and only for
    /// a partition it owns. Without a member (`member_id` empty): only while the group
    /// has no members (tools and manually assigned consumers).
    pub fn commit(
        &mut self,
        member_id: &str,
        member_epoch: i32,
        tp: TopicPartition,
        offset: i64,
        metadata: String,
        now_ms: i64,
    ) -> Result<(), GroupError> {
        if member_id.is_empty() {
            if !self.is_empty() {
                return Err(GroupError::NotEmpty(self.id.clone()));
            }
        } else {
            let member = self
                .members
                .get(member_id)
                .ok_or_else(|| GroupError::UnknownMember(member_id.to_owned()))?;
            if member.epoch != member_epoch {
                return Err(GroupError::FencedMemberEpoch {
                    member: member_id.to_owned(),
                    current: member.epoch,
                    got: member_epoch,
                });
            }
            if !member.assigned.contains(&tp) {
                return Err(GroupError::NotOwner {
                    member: member_id.to_owned(),
                    topic: tp.topic,
                    partition: tp.partition,
                });
            }
        }
        self.offsets.insert(
            tp,
            Committed {
                offset,
                metadata,
                commit_timestamp_ms: now_ms,
            },
        );
        Ok(())
    }

    /// Commits `offset` for `tp` from a Kafka client: a member of the classic protocol
    /// with its generation, or (`member_id` empty, generation -1) a consumer outside the
    /// group, only while the group has no members.
    pub fn commit_classic(
        &mut self,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation: i32,
        tp: TopicPartition,
        committed: Committed,
    ) -> Result<(), GroupError> {
        if member_id.is_empty() && generation < 0 {
            if !self.is_empty() {
                return Err(GroupError::NotEmpty(self.id.clone()));
            }
        } else {
            self.classic
                .check_commit(&self.id, member_id, group_instance_id, generation)?;
        }
        self.offsets.insert(tp, committed);
        Ok(())
    }

    /// Withholds `partitions` from every member: their owners are asked to give them up
    /// and nobody is handed them until [`Group::resume`]. (A live offset reset.)
    pub fn pause(&mut self, partitions: &BTreeSet<TopicPartition>) {
        self.paused.extend(partitions.iter().cloned());
        self.epoch += 1;
    }

    /// Hands paused partitions out again.
    pub fn resume(&mut self, partitions: &BTreeSet<TopicPartition>) {
        self.paused.retain(|tp| !partitions.contains(tp));
        self.epoch += 1;
    }

    /// Whether any member still holds one of `partitions`.
    pub fn holds_any(&self, partitions: &BTreeSet<TopicPartition>) -> bool {
        self.members
            .values()
            .any(|m| m.assigned.iter().any(|tp| partitions.contains(tp)))
    }

    pub fn committed(&self, tp: &TopicPartition) -> Option<&Committed> {
        self.offsets.get(tp)
    }

    /// Restores a committed offset (replaying `__consumer_offsets`); `None` removes it.
    pub fn restore_offset(&mut self, tp: TopicPartition, committed: Option<Committed>) {
        match committed {
            Some(committed) => self.offsets.insert(tp, committed),
            None => self.offsets.remove(&tp),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn topics(entries: &[(&str, u32)]) -> BTreeMap<String, u32> {
        entries.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    fn subscribe(topics: &[&str]) -> Option<BTreeSet<String>> {
        Some(topics.iter().map(|t| t.to_string()).collect())
    }

    fn join(group: &mut Group, parts: &BTreeMap<String, u32>, now: i64) -> HeartbeatResponse {
        let request = Heartbeat {
            member_epoch: 0,
            subscriptions: subscribe(&["t"]),
            owned: Some(BTreeSet::new()),
            ..Heartbeat::default()
        };
        group.heartbeat(request, parts, now).unwrap()
    }

    fn beat(
        group: &mut Group,
        r: &HeartbeatResponse,
        parts: &BTreeMap<String, u32>,
        now: i64,
    ) -> HeartbeatResponse {
        let request = Heartbeat {
            member_id: r.member_id.clone(),
            member_epoch: r.member_epoch,
            subscriptions: None,
            owned: Some(r.assignment.clone()),
        };
        group.heartbeat(request, parts, now).unwrap()
    }

    #[test]
    fn a_second_member_gets_partitions_only_after_the_first_gives_them_up() {
        let parts = topics(&[("t", 4)]);
        let mut g = Group::new("g", GroupConfig::default());
        let a = join(&mut g, &parts, 0);
        assert_eq!(a.assignment.len(), 4);
        assert_eq!(g.state(), GroupState::Stable);
        let b = join(&mut g, &parts, 1);
        assert!(b.assignment.is_empty(), "a still owns everything");
        assert!(b.reconciling, "b waits for partitions");
        assert_eq!(g.state(), GroupState::Reconciling);
        let a = beat(&mut g, &a, &parts, 2);
        assert_eq!(a.assignment.len(), 2, "a is told to give two up");
        let b2 = beat(&mut g, &b, &parts, 3);
        assert!(b2.assignment.is_empty(), "not until a confirms");
        let a = beat(&mut g, &a, &parts, 4); // a confirms (owned = its 2)
        let b = beat(&mut g, &b2, &parts, 5);
        assert_eq!(b.assignment.len(), 2);
        assert!(a.assignment.is_disjoint(&b.assignment));
        assert_eq!(g.state(), GroupState::Stable);
        assert_eq!(a.member_epoch, g.epoch());
        assert_eq!(b.member_epoch, g.epoch());
    }

    #[test]
    fn paused_partitions_are_taken_back_and_handed_out_only_after_resume() {
        let parts = topics(&[("t", 4)]);
        let mut g = Group::new("g", GroupConfig::default());
        let a = join(&mut g, &parts, 0);
        assert_eq!(a.assignment.len(), 4);
        let t0 = BTreeSet::from([TopicPartition::new("t", 0)]);
        g.pause(&t0);
        assert!(g.holds_any(&t0), "held until a gives it up");
        let a = beat(&mut g, &a, &parts, 1);
        assert_eq!(a.assignment.len(), 3);
        assert!(!a.assignment.contains(&TopicPartition::new("t", 0)));
        let a = beat(&mut g, &a, &parts, 2);
        assert!(!g.holds_any(&t0), "a confirmed giving it up");
        let b = join(&mut g, &parts, 3);
        let a = beat(&mut g, &a, &parts, 4);
        let b = beat(&mut g, &b, &parts, 5);
        assert!(!a.assignment.contains(&TopicPartition::new("t", 0)));
        assert!(!b.assignment.contains(&TopicPartition::new("t", 0)));
        assert!(!g.holds_any(&t0), "nobody is handed a paused partition");
        g.resume(&t0);
        let a = beat(&mut g, &a, &parts, 6);
        let b = beat(&mut g, &b, &parts, 7);
        let owners = [&a, &b]
            .iter()
            .filter(|r| r.assignment.contains(&TopicPartition::new("t", 0)))
            .count();
        assert_eq!(owners, 1, "handed back to exactly one member");
    }

    #[test]
    fn a_silent_member_expires_and_its_partitions_move() {
        let parts = topics(&[("t", 2)]);
        let mut g = Group::new(
            "g",
            GroupConfig {
                session_timeout_ms: 100,
                ..GroupConfig::default()
            },
        );
        let a = join(&mut g, &parts, 0);
        let b = join(&mut g, &parts, 0);
        let a = beat(&mut g, &a, &parts, 10);
        let a = beat(&mut g, &a, &parts, 20);
        let b = beat(&mut g, &b, &parts, 20);
        assert_eq!((a.assignment.len(), b.assignment.len()), (1, 1));
        assert_eq!(g.expire(90), Vec::<String>::new());
        let a = beat(&mut g, &a, &parts, 90);
        assert_eq!(g.expire(150), vec![b.member_id.clone()]);
        let a = beat(&mut g, &a, &parts, 151);
        assert_eq!(a.assignment.len(), 2);
        // The expired member is fenced.
        let err = g.commit(
            &b.member_id,
            b.member_epoch,
            TopicPartition::new("t", 1),
            5,
            String::new(),
            152,
        );
        assert!(matches!(err, Err(GroupError::UnknownMember(_))));
    }

    #[test]
    fn commits_are_fenced_by_epoch_and_ownership() {
        let parts = topics(&[("t", 2)]);
        let mut g = Group::new("g", GroupConfig::default());
        let a = join(&mut g, &parts, 0);
        let tp = TopicPartition::new("t", 0);
        g.commit(&a.member_id, a.member_epoch, tp.clone(), 10, "m".into(), 1)
            .unwrap();
        assert_eq!(g.committed(&tp).unwrap().offset, 10);
        let stale = g.commit(
            &a.member_id,
            a.member_epoch - 1,
            tp.clone(),
            11,
            String::new(),
            2,
        );
        assert!(matches!(stale, Err(GroupError::FencedMemberEpoch { .. })));
        let other = TopicPartition::new("u", 0);
        let not_mine = g.commit(&a.member_id, a.member_epoch, other, 1, String::new(), 2);
        assert!(matches!(not_mine, Err(GroupError::NotOwner { .. })));
        assert!(matches!(
            g.commit("", -1, tp.clone(), 1, String::new(), 3),
            Err(GroupError::NotEmpty(_))
        ));
        beat(
            &mut g,
            &HeartbeatResponse {
                member_epoch: -1,
                ..a
            },
            &parts,
            4,
        );
        g.commit("", -1, tp.clone(), 1, String::new(), 5).unwrap();
        assert_eq!(g.state(), GroupState::Empty);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Join,
        Beat(usize),
        Leave(usize),
        Tick(i64),
        Partitions(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => Just(Op::Join),
            8 => (0usize..8).prop_map(Op::Beat),
            1 => (0usize..8).prop_map(Op::Leave),
            2 => (1i64..80).prop_map(Op::Tick),
            1 => (1u32..10).prop_map(Op::Partitions),
        ]
    }

    proptest! {
        /// Whatever members do (join, heartbeat late or never, leave, time out) and however
        /// the partition count changes, no partition is ever held by two live members; and
        /// once everyone heartbeats a few times, every partition is held by someone.
        #[test]
        fn no_partition_is_ever_owned_twice(
            ops in proptest::collection::vec(op(), 1..120),
            uniform in any::<bool>(),
        ) {
            let assignor = if uniform { Assignor::Uniform } else { Assignor::Range };
            let config = GroupConfig {
                session_timeout_ms: 100,
                heartbeat_interval_ms: 10,
                assignor,
                ..GroupConfig::default()
            };
            let mut g = Group::new("g", config);
            let mut parts = topics(&[("t", 6)]);
            let mut now = 0i64;
            // What each client believes it holds (its last response).
            let mut clients: Vec<HeartbeatResponse> = Vec::new();
            for op in ops {
                match op {
                    Op::Join => clients.push(join(&mut g, &parts, now)),
                    Op::Beat(i) if i < clients.len() => {
                        let r = clients[i].clone();
                        let request = Heartbeat {
                            member_id: r.member_id.clone(),
                            member_epoch: r.member_epoch,
                            subscriptions: None,
                            owned: Some(r.assignment.clone()),
                        };
                        match g.heartbeat(request, &parts, now) {
                            Ok(next) => clients[i] = next,
                            // Expired: the client learns it and rejoins (holding nothing).
                            Err(GroupError::UnknownMember(_)) => {
                                clients[i] = join(&mut g, &parts, now);
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                    Op::Leave(i) if i < clients.len() => {
                        let r = clients.remove(i);
                        beat(&mut g, &HeartbeatResponse { member_epoch: -1, ..r }, &parts, now);
                    }
                    Op::Tick(ms) => {
                        now += ms;
                        for gone in g.expire(now) {
                            // A timed-out client is dead (or a zombie whose commits are fenced).
                            clients.retain(|c| c.member_id != gone);
                        }
                    }
                    Op::Partitions(n) => { parts.insert("t".into(), n); }
                    _ => {}
                }
                let mut seen = BTreeSet::new();
                for c in &clients {
                    for tp in &c.assignment {
                        prop_assert!(seen.insert(tp.clone()), "{tp:?} held twice");
                    }
                }
            }
            // Convergence: a few rounds of heartbeats from everyone.
            for _ in 0..4 {
                for c in clients.iter_mut() {
                    let r = c.clone();
                    *c = beat(&mut g, &r, &parts, now);
                }
            }
            if !clients.is_empty() {
                let held: BTreeSet<_> =
                    clients.iter().flat_map(|c| c.assignment.iter().cloned()).collect();
                prop_assert_eq!(held.len() as u32, parts["t"]);
                prop_assert_eq!(g.state(), GroupState::Stable);
            }
        }
    }
}
