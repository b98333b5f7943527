//! The group APIs of Kafka clients: FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup (the classic protocol, [`crate::group::classic`]), OffsetCommit,
//! OffsetFetch, ListGroups, DescribeGroups and DeleteGroups, all on the broker's one
//! [`Coordinator`], so Kafka clients and Fjord's own share groups' offsets (and see each
//! other's groups in listings).
//!
//! A JoinGroup waits until its rebalance completes, a follower's SyncGroup until the
//! leader's: they look again whenever a classic group changes and every 100 ms (session
//! and rebalance deadlines).

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator as CoordinatorNode;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, DeleteGroupsRequest,
    DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest,
    ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};

use super::KafkaService;
use crate::group::classic::{JoinOutcome, JoinRequest, SyncOutcome, SyncRequest};
use crate::group::coordinator::{CoordinatorError, OFFSETS_TOPIC};
use crate::group::{Group, GroupError, GroupState, TopicPartition};

/// Committed offsets by topic: (partition, offset, metadata).
type OffsetRows = Vec<(TopicName, Vec<(i32, i64, String)>)>;

/// How often a waiting JoinGroup or SyncGroup looks at its group without being woken.
const WAIT_TICK: Duration = Duration::from_millis(100);

/// The Kafka error code of a group error.
pub fn group_error_code(e: &GroupError) -> i16 {
    let error = match e {
        GroupError::UnknownMember(_) => ResponseError::UnknownMemberId,
        GroupError::FencedMemberEpoch { .. }
        | GroupError::NotOwner { .. }
        | GroupError::IllegalGeneration { .. } => ResponseError::IllegalGeneration,
        GroupError::NotEmpty(_) => ResponseError::NonEmptyGroup,
        GroupError::MemberIdRequired(_) => ResponseError::MemberIdRequired,
        GroupError::RebalanceInProgress(_) => ResponseError::RebalanceInProgress,
        GroupError::InconsistentProtocol(_) => ResponseError::InconsistentGroupProtocol,
        GroupError::FencedInstance(_) => ResponseError::FencedInstanceId,
        GroupError::InvalidSessionTimeout(_) => ResponseError::InvalidSessionTimeout,
    };
    error.code()
}

fn coordinator_error_code(e: &CoordinatorError) -> i16 {
    match e {
        // A commit from outside a group that has members.
        CoordinatorError::Group(GroupError::NotEmpty(_)) => ResponseError::UnknownMemberId.code(),
        CoordinatorError::Group(e) => group_error_code(e),
        CoordinatorError::UnknownGroup(_) => ResponseError::GroupIdNotFound.code(),
        CoordinatorError::Topic(e) => super::topic_error_code(e),
        CoordinatorError::Storage(e) => super::storage_error_code(e),
        CoordinatorError::InvalidOffset { .. } => ResponseError::InvalidCommitOffsetSize.code(),
        CoordinatorError::Record(_) | CoordinatorError::RebalanceTimeout { .. } => -1,
    }
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

fn group_state_name(group: &Group) -> &'static str {
    if !group.classic().is_empty() {
        return group.classic().state().kafka_name();
    }
    match group.state() {
        GroupState::Empty => "Empty",
        GroupState::Reconciling => "Reconciling",
        GroupState::Stable => "Stable",
    }
}

/// A consumer's assignment as Kafka clients encode it (version 0, then
/// ConsumerProtocolAssignment).
fn encode_consumer_assignment(partitions: &BTreeSet<TopicPartition>) -> Bytes {
    let mut assignment = ConsumerProtocolAssignment::default();
    let mut by_topic: std::collections::BTreeMap<&str, Vec<i32>> = Default::default();
    for tp in partitions {
        by_topic
            .entry(&tp.topic)
            .or_default()
            .push(tp.partition as i32);
    }
    for (topic, partitions) in by_topic {
        let mut t =
            kafka_protocol::messages::consumer_protocol_assignment::TopicPartition::default();
        t.topic = TopicName(str_bytes(topic));
        t.partitions = partitions;
        assignment.assigned_partitions.push(t);
    }
    encode_versioned(&assignment)
}

fn encode_consumer_subscription(topics: &BTreeSet<String>) -> Bytes {
    let mut subscription = ConsumerProtocolSubscription::default();
    subscription.topics = topics.iter().map(|t| str_bytes(t)).collect();
    encode_versioned(&subscription)
}

fn encode_versioned<M: Encodable>(message: &M) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    match message.encode(&mut buf, 0) {
        Ok(()) => buf.freeze(),
        Err(_) => Bytes::new(),
    }
}

impl KafkaService {
    /// Waits until `poll` has an answer (or fails), looking again whenever a classic
    /// group changes and every [`WAIT_TICK`]. On shutdown: COORDINATOR_NOT_AVAILABLE.
    async fn wait_group<T>(
        &self,
        mut poll: impl FnMut() -> Result<Option<T>, GroupError>,
    ) -> Result<T, i16> {
        let mut changes = self.groups.changes();
        let mut shutdown = self.shutdown.clone();
        loop {
            changes.borrow_and_update();
            if let Some(answer) = poll().map_err(|e| group_error_code(&e))? {
                return Ok(answer);
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(WAIT_TICK) => {}
                _ = super::super::stopped(&mut shutdown) => {
                    return Err(ResponseError::CoordinatorNotAvailable.code());
                }
            }
        }
    }

    pub(super) fn find_coordinator(
        &self,
        request: FindCoordinatorRequest,
        version: i16,
    ) -> FindCoordinatorResponse {
        let node = |key: &StrBytes| {
            let mut c = CoordinatorNode::default();
            c.key = key.clone();
            if request.key_type == 0 {
                c.node_id = self.node_id.into();
                c.host = str_bytes(&self.advertised_host);
                c.port = self.advertised_port;
            } else {
                c.node_id = (-1).into();
                c.port = -1;
                c.error_code = ResponseError::CoordinatorNotAvailable.code();
                c.error_message = Some(str_bytes("transactions are not supported"));
            }
            c
        };
        let mut response = FindCoordinatorResponse::default();
        if version >= 4 {
            response.coordinators = request.coordinator_keys.iter().map(node).collect();
        } else {
            let c = node(&request.key);
            response.error_code = c.error_code;
            response.error_message = c.error_message;
            response.node_id = c.node_id;
            response.host = c.host;
            response.port = c.port;
        }
        response
    }

    pub(super) async fn join_group(
        &self,
        request: JoinGroupRequest,
        version: i16,
        client_id: &str,
        client_host: &str,
    ) -> JoinGroupResponse {
        let mut response = JoinGroupResponse::default();
        response.generation_id = -1;
        let group = request.group_id.0.to_string();
        if group.is_empty() {
            response.error_code = ResponseError::InvalidGroupId.code();
            return response;
        }
        let join = JoinRequest {
            member_id: request.member_id.to_string(),
            group_instance_id: request.group_instance_id.as_ref().map(|s| s.to_string()),
            client_id: client_id.to_owned(),
            client_host: client_host.to_owned(),
            session_timeout_ms: request.session_timeout_ms,
            // v0 has no rebalance timeout: Kafka uses the session timeout.
            rebalance_timeout_ms: if version == 0 {
                request.session_timeout_ms
            } else {
                request.rebalance_timeout_ms
            },
            protocol_type: request.protocol_type.to_string(),
            protocols: request
                .protocols
                .iter()
                .map(|p| (p.name.to_string(), p.metadata.clone()))
                .collect(),
            require_known_member_id: version >= 4,
        };
        let result = match self.groups.classic_join(&group, join) {
            Ok(JoinOutcome::Ready(result)) => Ok(result),
            Ok(JoinOutcome::Wait { member_id }) => {
                self.wait_group(|| self.groups.classic_poll_join(&group, &member_id))
                    .await
            }
            Err(GroupError::MemberIdRequired(id)) => {
                response.member_id = str_bytes(&id);
                Err(ResponseError::MemberIdRequired.code())
            }
            Err(e) => {
                tracing::info!(group, error = %e, "JoinGroup refused");
                Err(group_error_code(&e))
            }
        };
        match result {
            Ok(result) => {
                response.generation_id = result.generation;
                response.protocol_type = Some(str_bytes(&result.protocol_type));
                response.protocol_name = Some(str_bytes(&result.protocol_name));
                response.leader = str_bytes(&result.leader);
                response.member_id = str_bytes(&result.member_id);
                response.members = result
                    .members
                    .into_iter()
                    .map(|m| {
                        let mut member = JoinGroupResponseMember::default();
                        member.member_id = str_bytes(&m.member_id);
                        member.group_instance_id = m.group_instance_id.as_deref().map(str_bytes);
                        member.metadata = m.metadata;
                        member
                    })
                    .collect();
            }
            Err(code) => response.error_code = code,
        }
        response
    }

    pub(super) async fn sync_group(&self, request: SyncGroupRequest) -> SyncGroupResponse {
        let mut response = SyncGroupResponse::default();
        let group = request.group_id.0.to_string();
        let member = request.member_id.to_string();
        let protocol = match (&request.protocol_type, &request.protocol_name) {
            (Some(t), Some(n)) => Some((t.to_string(), n.to_string())),
            _ => None,
        };
        let sync = SyncRequest {
            member_id: member.clone(),
            group_instance_id: request.group_instance_id.as_ref().map(|s| s.to_string()),
            generation: request.generation_id,
            protocol: protocol.clone(),
            assignments: request
                .assignments
                .into_iter()
                .map(|a| (a.member_id.to_string(), a.assignment))
                .collect(),
        };
        let synced = self.groups.classic_sync(&group, sync);
        let answer = match synced {
            Ok(SyncOutcome::Ready(assignment)) => Ok(assignment),
            Ok(SyncOutcome::Wait) => {
                self.wait_group(|| {
                    self.groups
                        .classic_poll_sync(&group, &member, request.generation_id)
                })
                .await
            }
            Err(e) => Err(group_error_code(&e)),
        };
        match answer {
            Ok(assignment) => {
                response.assignment = assignment;
                if let Some((t, n)) = protocol {
                    response.protocol_type = Some(str_bytes(&t));
                    response.protocol_name = Some(str_bytes(&n));
                }
            }
            Err(code) => response.error_code = code,
        }
        response
    }

    pub(super) fn heartbeat(&self, request: HeartbeatRequest) -> HeartbeatResponse {
        let mut response = HeartbeatResponse::default();
        let instance = request.group_instance_id.as_ref().map(|s| s.to_string());
        if let Err(e) = self.groups.classic_heartbeat(
            &request.group_id.0,
            &request.member_id,
            instance.as_deref(),
            request.generation_id,
        ) {
            response.error_code = group_error_code(&e);
        }
        response
    }

    pub(super) fn leave_group(
        &self,
        request: LeaveGroupRequest,
        version: i16,
    ) -> LeaveGroupResponse {
        let mut response = LeaveGroupResponse::default();
        let group = &request.group_id.0;
        if version < 3 {
            if let Err(e) = self.groups.classic_leave(group, &request.member_id, None) {
                response.error_code = group_error_code(&e);
            }
            return response;
        }
        for identity in request.members {
            let instance = identity.group_instance_id.as_ref().map(|s| s.to_string());
            let mut member = MemberResponse::default();
            member.member_id = identity.member_id.clone();
            member.group_instance_id = identity.group_instance_id.clone();
            if let Err(e) =
                self.groups
                    .classic_leave(group, &identity.member_id, instance.as_deref())
            {
                member.error_code = group_error_code(&e);
            }
            response.members.push(member);
        }
        response
    }

    pub(super) async fn offset_commit(&self, request: OffsetCommitRequest) -> OffsetCommitResponse {
        let group = request.group_id.0.to_string();
        let member = request.member_id.to_string();
        let instance = request.group_instance_id.as_ref().map(|s| s.to_string());
        let generation = request.generation_id_or_member_epoch;
        // Partitions the broker does not have are refused one by one; the rest are
        // committed together.
        let mut offsets = Vec::new();
        let mut unknown = BTreeSet::new();
        for topic in &request.topics {
            for p in &topic.partitions {
                match self.partition(&topic.name.0, p.partition_index) {
                    Ok(_) if topic.name.0.as_str() != OFFSETS_TOPIC => offsets.push((
                        TopicPartition::new(&topic.name.0, p.partition_index as u32),
                        p.committed_offset,
                        p.committed_metadata
                            .as_ref()
                            .map(|m| m.to_string())
                            .unwrap_or_default(),
                    )),
                    _ => {
                        unknown.insert((topic.name.0.to_string(), p.partition_index));
                    }
                }
            }
        }
        let code = if group.is_empty() {
            ResponseError::InvalidGroupId.code()
        } else {
            let groups = self.groups.clone();
            let commit = tokio::task::spawn_blocking(move || {
                groups.commit_classic(&group, &member, instance.as_deref(), generation, &offsets)
            })
            .await;
            match commit {
                Ok(Ok(())) => 0,
                Ok(Err(e)) => {
                    tracing::info!(error = %e, "OffsetCommit refused");
                    coordinator_error_code(&e)
                }
                Err(_) => -1,
            }
        };
        let mut response = OffsetCommitResponse::default();
        for topic in request.topics {
            let mut t = OffsetCommitResponseTopic::default();
            t.name = topic.name.clone();
            for p in topic.partitions {
                let mut r = OffsetCommitResponsePartition::default();
                r.partition_index = p.partition_index;
                r.error_code = if unknown.contains(&(topic.name.0.to_string(), p.partition_index)) {
                    ResponseError::UnknownTopicOrPartition.code()
                } else {
                    code
                };
                t.partitions.push(r);
            }
            response.topics.push(t);
        }
        response
    }

    /// One group's committed offsets: of the partitions asked for (-1 where none is
    /// committed), or of all it has committed (`None`).
    fn fetch_group_offsets(
        &self,
        group: &str,
        wanted: Option<Vec<(TopicName, Vec<i32>)>>,
    ) -> OffsetRows {
        let committed = self.groups.fetch_offsets(group, &[]);
        match wanted {
            Some(topics) => topics
                .into_iter()
                .map(|(name, partitions)| {
                    let rows = partitions
                        .into_iter()
                        .map(|p| {
                            let tp = u32::try_from(p)
                                .ok()
                                .map(|p| TopicPartition::new(&name.0, p));
                            match tp.and_then(|tp| committed.get(&tp)) {
                                Some(c) => (p, c.offset, c.metadata.clone()),
                                None => (p, -1, String::new()),
                            }
                        })
                        .collect();
                    (name, rows)
                })
                .collect(),
            None => {
                let mut out: OffsetRows = Vec::new();
                for (tp, c) in committed {
                    let row = (tp.partition as i32, c.offset, c.metadata.clone());
                    match out.last_mut() {
                        Some((name, rows)) if name.0.as_str() == tp.topic => rows.push(row),
                        _ => out.push((TopicName(str_bytes(&tp.topic)), vec![row])),
                    }
                }
                out
            }
        }
    }

    pub(super) fn offset_fetch(
        &self,
        request: OffsetFetchRequest,
        version: i16,
    ) -> OffsetFetchResponse {
        let mut response = OffsetFetchResponse::default();
        if version >= 8 {
            for g in request.groups {
                let wanted = g.topics.map(|topics| {
                    topics
                        .into_iter()
                        .map(|t| (t.name, t.partition_indexes))
                        .collect()
                });
                let mut group = OffsetFetchResponseGroup::default();
                group.group_id = g.group_id.clone();
                for (name, rows) in self.fetch_group_offsets(&g.group_id.0, wanted) {
                    let mut t = OffsetFetchResponseTopics::default();
                    t.name = name;
                    for (p, offset, metadata) in rows {
                        let mut r = OffsetFetchResponsePartitions::default();
                        r.partition_index = p;
                        r.committed_offset = offset;
                        r.committed_leader_epoch = -1;
                        r.metadata = Some(str_bytes(&metadata));
                        t.partitions.push(r);
                    }
                    group.topics.push(t);
                }
                response.groups.push(group);
            }
            return response;
        }
        let wanted = request.topics.map(|topics| {
            topics
                .into_iter()
                .map(|t| (t.name, t.partition_indexes))
                .collect()
        });
        for (name, rows) in self.fetch_group_offsets(&request.group_id.0, wanted) {
            let mut t = OffsetFetchResponseTopic::default();
            t.name = name;
            for (p, offset, metadata) in rows {
                let mut r = OffsetFetchResponsePartition::default();
                r.partition_index = p;
                r.committed_offset = offset;
                r.committed_leader_epoch = -1;
                r.metadata = Some(str_bytes(&metadata));
                t.partitions.push(r);
            }
            response.topics.push(t);
        }
        response
    }

    pub(super) fn list_groups(&self, request: ListGroupsRequest) -> ListGroupsResponse {
        let mut response = ListGroupsResponse::default();
        for id in self.groups.list_groups() {
            let Some(group) = self.groups.describe(&id) else {
                continue;
            };
            let state = group_state_name(&group);
            let kind = if group.members().is_empty() {
                "classic"
            } else {
                "consumer"
            };
            let matches = |filter: &[StrBytes], value: &str| {
                filter.is_empty() || filter.iter().any(|f| f.eq_ignore_ascii_case(value))
            };
            if !matches(&request.states_filter, state) || !matches(&request.types_filter, kind) {
                continue;
            }
            let mut listed = ListedGroup::default();
            listed.group_id = GroupId(str_bytes(&id));
            listed.protocol_type = str_bytes("consumer");
            listed.group_state = str_bytes(state);
            listed.group_type = str_bytes(kind);
            response.groups.push(listed);
        }
        response
    }

    pub(super) fn describe_groups(&self, request: DescribeGroupsRequest) -> DescribeGroupsResponse {
        let mut response = DescribeGroupsResponse::default();
        for id in request.groups {
            let mut described = DescribedGroup::default();
            described.group_id = id.clone();
            described.authorized_operations = i32::MIN;
            match self.groups.describe(&id.0) {
                None => described.group_state = str_bytes("Dead"),
                Some(group) => {
                    described.group_state = str_bytes(group_state_name(&group));
                    described.protocol_type = str_bytes("consumer");
                    let classic = group.classic();
                    if !classic.is_empty() {
                        described.protocol_type = str_bytes(classic.protocol_type());
                        described.protocol_data = str_bytes(classic.protocol());
                        for (member_id, m) in classic.members() {
                            let mut member = DescribedGroupMember::default();
                            member.member_id = str_bytes(member_id);
                            member.group_instance_id =
                                m.group_instance_id.as_deref().map(str_bytes);
                            member.client_id = str_bytes(&m.client_id);
                            member.client_host = str_bytes(&m.client_host);
                            member.member_metadata = m.metadata(classic.protocol());
                            member.member_assignment = m.assignment.clone();
                            described.members.push(member);
                        }
                    } else {
                        described.protocol_data = str_bytes(group.config().assignor.name());
                        for (member_id, m) in group.members() {
                            let mut member = DescribedGroupMember::default();
                            member.member_id = str_bytes(member_id);
                            member.client_id = str_bytes("fjord");
                            member.member_metadata = encode_consumer_subscription(&m.subscriptions);
                            let owned = m.assigned.difference(&m.revoking).cloned().collect();
                            member.member_assignment = encode_consumer_assignment(&owned);
                            described.members.push(member);
                        }
                    }
                }
            }
            response.groups.push(described);
        }
        response
    }

    pub(super) async fn delete_groups(&self, request: DeleteGroupsRequest) -> DeleteGroupsResponse {
        let mut response = DeleteGroupsResponse::default();
        for id in request.groups_names {
            let groups = self.groups.clone();
            let name = id.0.to_string();
            let deleted = tokio::task::spawn_blocking(move || groups.delete_group(&name)).await;
            let mut result = DeletableGroupResult::default();
            result.group_id = id;
            result.error_code = match deleted {
                Ok(Ok(())) => 0,
                Ok(Err(e)) => coordinator_error_code(&e),
                Err(_) => -1,
            };
            response.results.push(result);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::classic::decode_consumer_assignment;

    #[test]
    fn a_consumer_assignment_round_trips() {
        let partitions: BTreeSet<TopicPartition> = [
            TopicPartition::new("a", 0),
            TopicPartition::new("a", 2),
            TopicPartition::new("b", 1),
        ]
        .into();
        let bytes = encode_consumer_assignment(&partitions);
        let decoded: BTreeSet<TopicPartition> =
            decode_consumer_assignment(&bytes).into_iter().collect();
        assert_eq!(decoded, partitions);
        assert!(decode_consumer_assignment(&Bytes::from_static(b"\x00")).is_empty());
        assert!(
            decode_consumer_assignment(&Bytes::from_static(b"\x00\x00\xff\xff\xff")).is_empty()
        );
    }

    #[test]
    fn group_errors_map_to_kafka_codes() {
        assert_eq!(group_error_code(&GroupError::UnknownMember("m".into())), 25);
        assert_eq!(
            group_error_code(&GroupError::RebalanceInProgress("g".into())),
            27
        );
        assert_eq!(
            group_error_code(&GroupError::MemberIdRequired("m".into())),
            79
        );
        assert_eq!(
            group_error_code(&GroupError::FencedInstance("i".into())),
            82
        );
        let outside = CoordinatorError::Group(GroupError::NotEmpty("g".into()));
        assert_eq!(coordinator_error_code(&outside), 25);
    }
}
