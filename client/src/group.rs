//! Consumer group membership for [`Consumer`](crate::Consumer): a background task
//! heartbeats to the group coordinator (KIP-848 style: the broker assigns) and leaves
//! the latest assignment in state shared with the consumer, which applies it in `poll`
//! (revoking first, with the rebalance callbacks and a commit, then assigning).
//!
//! Heartbeats and commits are serialised by one session lock, so a commit always carries
//! the member epoch of the last heartbeat answer: the broker moves a member's epoch only
//! in answer to that member's own heartbeat.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fjord_protocol::v1;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::TopicPartition;
use crate::connection::GrpcClient;
use crate::error::{ClientError, Result};

/// The wait before a heartbeat that failed with a retriable error is sent again.
const RETRY_BACKOFF: Duration = Duration::from_millis(200);
/// The heartbeat interval until the coordinator names one.
const FIRST_INTERVAL: Duration = Duration::from_millis(1_000);

/// Called by [`Consumer::poll`](crate::Consumer::poll) when the group moves partitions,
/// before the consumer gives partitions up and after it takes new ones.
pub trait RebalanceListener: Send {
    /// The consumer now owns `partitions` and reads them from the group's committed
    /// offsets (else from `auto_offset_reset`).
    fn on_assigned(&mut self, partitions: &[TopicPartition]) {
        let _ = partitions;
    }

    /// The consumer is about to give `partitions` up: flush what was built from the
    /// records of earlier polls. Then the consumer commits its positions in them
    /// (unless the membership was lost: then the commit would be refused anyway).
    fn on_revoked(&mut self, partitions: &[TopicPartition]) {
        let _ = partitions;
    }
}

/// What the heartbeat task learned since the consumer last looked.
#[derive(Debug, Default)]
pub(crate) struct Update {
    /// The partitions the member may own now (`None` before the first answer).
    pub target: Option<BTreeSet<TopicPartition>>,
    /// The membership was lost (session timed out, fenced): every owned partition must be
    /// dropped without committing.
    pub lost: bool,
    /// A heartbeat failed with an error that is not about the membership.
    pub error: Option<ClientError>,
}

#[derive(Debug)]
struct Shared {
    member_id: String,
    member_epoch: i32,
    subscriptions: BTreeSet<String>,
    subscriptions_changed: bool,
    /// What the consumer holds (reported in every heartbeat).
    owned: BTreeSet<TopicPartition>,
    update: Update,
    reconciling: bool,
    interval: Duration,
    left: bool,
}

/// A member of one group. Dropping it stops the heartbeats (the coordinator removes the
/// member after its session timeout); [`Membership::leave`] leaves at once.
pub(crate) struct Membership {
    group_id: String,
    client: GrpcClient,
    shared: Arc<Mutex<Shared>>,
    session: Arc<tokio::sync::Mutex<()>>,
    wake: Arc<Notify>,
    /// Notified when a heartbeat brought an update.
    changed: Arc<Notify>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("group_id", &self.group_id)
            .field("shared", &self.shared)
            .finish()
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

fn to_wire(tp: &TopicPartition) -> v1::GroupPartition {
    v1::GroupPartition {
        topic: tp.topic.clone(),
        partition: tp.partition,
    }
}

impl Membership {
    /// Joins `group_id` subscribed to `topics`; the heartbeat task starts now.
    pub fn join(client: GrpcClient, group_id: &str, topics: BTreeSet<String>) -> Membership {
        let shared = Arc::new(Mutex::new(Shared {
            member_id: String::new(),
            member_epoch: 0,
            subscriptions: topics,
            subscriptions_changed: true,
            owned: BTreeSet::new(),
            update: Update::default(),
            reconciling: true,
            interval: FIRST_INTERVAL,
            left: false,
        }));
        let session = Arc::new(tokio::sync::Mutex::new(()));
        let wake = Arc::new(Notify::new());
        let changed = Arc::new(Notify::new());
        let task = tokio::spawn(heartbeat_loop(
            client.clone(),
            group_id.to_owned(),
            shared.clone(),
            session.clone(),
            wake.clone(),
            changed.clone(),
        ));
        Membership {
            group_id: group_id.to_owned(),
            client,
            shared,
            session,
            wake,
            changed,
            task,
        }
    }

    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    /// The id the coordinator gave this member (empty before the first answer).
    pub fn member_id(&self) -> String {
        lock(&self.shared).member_id.clone()
    }

    /// Changes the subscription; sent with the next heartbeat, which goes now.
    pub fn subscribe(&self, topics: BTreeSet<String>) {
        let mut s = lock(&self.shared);
        if s.subscriptions != topics {
            s.subscriptions = topics;
            s.subscriptions_changed = true;
            drop(s);
            self.wake.notify_one();
        }
    }

    /// Takes what the heartbeats learned (the target stays for the next call).
    pub fn take_update(&self) -> Update {
        let mut s = lock(&self.shared);
        Update {
            target: s.update.target.clone(),
            lost: std::mem::take(&mut s.update.lost),
            error: s.update.error.take(),
        }
    }

    /// Records what the consumer owns now; a heartbeat reports it at once.
    pub fn set_owned(&self, owned: BTreeSet<TopicPartition>) {
        let mut s = lock(&self.shared);
        if s.owned != owned {
            s.owned = owned;
            drop(s);
            self.wake.notify_one();
        }
    }

    /// Whether the assignment is not final yet: no answer yet, the coordinator said so,
    /// or the consumer has not taken up the latest target (`owned` differs).
    pub fn is_reconciling(&self, owned: &BTreeSet<TopicPartition>) -> bool {
        let s = lock(&self.shared);
        s.reconciling || s.update.target.as_ref() != Some(owned)
    }

    /// Notified when a heartbeat brings news.
    pub fn changed(&self) -> Arc<Notify> {
        self.changed.clone()
    }

    /// Commits `offsets` as this member (fenced by the broker: only owned partitions,
    /// only with the current member epoch).
    pub async fn commit(&self, offsets: &[(TopicPartition, i64, String)]) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let _session = self.session.lock().await;
        let (member_id, member_epoch) = {
            let s = lock(&self.shared);
            (s.member_id.clone(), s.member_epoch)
        };
        if member_id.is_empty() || member_epoch <= 0 {
            return Err(ClientError::FencedMember(format!(
                "not a member of group {} (yet): nothing can be committed",
                self.group_id
            )));
        }
        let request = v1::CommitOffsetsRequest {
            group_id: self.group_id.clone(),
            member_id,
            member_epoch,
            offsets: offsets
                .iter()
                .map(|(tp, offset, metadata)| v1::OffsetCommit {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    offset: *offset,
                    metadata: metadata.clone(),
                })
                .collect(),
        };
        self.client
            .clone()
            .commit_offsets(request)
            .await
            .map_err(|s| ClientError::from_status(s, None))?;
        Ok(())
    }

    /// Stops the heartbeats and leaves the group (its partitions go to the others now,
    /// not after the session timeout).
    pub async fn leave(&self) -> Result<()> {
        let _session = self.session.lock().await;
        self.task.abort();
        let (member_id, member_epoch) = {
            let mut s = lock(&self.shared);
            s.left = true;
            (s.member_id.clone(), s.member_epoch)
        };
        if member_id.is_empty() || member_epoch <= 0 {
            return Ok(());
        }
        let request = v1::GroupHeartbeatRequest {
            group_id: self.group_id.clone(),
            member_id,
            member_epoch: -1,
            ..v1::GroupHeartbeatRequest::default()
        };
        self.client
            .clone()
            .group_heartbeat(request)
            .await
            .map_err(|s| ClientError::from_status(s, None))?;
        Ok(())
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn heartbeat_loop(
    mut client: GrpcClient,
    group_id: String,
    shared: Arc<Mutex<Shared>>,
    session: Arc<tokio::sync::Mutex<()>>,
    wake: Arc<Notify>,
    changed: Arc<Notify>,
) {
    loop {
        let guard = session.lock().await;
        let request = {
            let s = lock(&shared);
            if s.left {
                return;
            }
            v1::GroupHeartbeatRequest {
                group_id: group_id.clone(),
                member_id: s.member_id.clone(),
                member_epoch: s.member_epoch,
                subscriptions: s.subscriptions.iter().cloned().collect(),
                subscriptions_changed: s.subscriptions_changed,
                owned: s.owned.iter().map(to_wire).collect(),
            }
        };
        let result = client.group_heartbeat(request).await;
        let delay = {
            let mut s = lock(&shared);
            match result {
                Ok(response) => {
                    let r = response.into_inner();
                    s.member_id = r.member_id;
                    s.member_epoch = r.member_epoch;
                    s.subscriptions_changed = false;
                    s.reconciling = r.reconciling;
                    if r.heartbeat_interval_ms > 0 {
                        s.interval = Duration::from_millis(u64::from(r.heartbeat_interval_ms));
                    }
                    let target: BTreeSet<TopicPartition> = r
                        .assignment
                        .iter()
                        .map(|p| TopicPartition::new(&p.topic, p.partition))
                        .collect();
                    if s.update.target.as_ref() != Some(&target) {
                        s.update.target = Some(target);
                        changed.notify_one();
                    }
                    // While reconciling, answers come quicker (partitions are waiting).
                    if s.reconciling {
                        s.interval.min(Duration::from_millis(100))
                    } else {
                        s.interval
                    }
                }
                Err(status) => match ClientError::from_status(status, None) {
                    e @ (ClientError::UnknownMember(_) | ClientError::FencedMember(_)) => {
                        tracing::warn!(group = %group_id, error = %e,
                            "group membership lost; joining again");
                        s.member_epoch = 0;
                        s.subscriptions_changed = true;
                        s.update.lost = true;
                        s.update.target = Some(BTreeSet::new());
                        changed.notify_one();
                        Duration::ZERO
                    }
                    e if e.is_retriable() => {
                        tracing::debug!(group = %group_id, error = %e, "retrying heartbeat");
                        RETRY_BACKOFF
                    }
                    e => {
                        s.update.error = Some(e);
                        changed.notify_one();
                        s.interval
                    }
                },
            }
        };
        drop(guard);
        if !delay.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = wake.notified() => {}
            }
        }
    }
}
