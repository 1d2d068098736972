//! One agent: its PostgreSQL, its participant state, its view of the cluster, and (when it is
//! the leader) the coordinator.
//!
//! Invariants kept here:
//! - The participant state sits under one async mutex per node, held only across *local*
//!   PostgreSQL calls, never across a network call.
//! - The term only grows, and is durable before it is acted on: a fence or a message from a
//!   higher term is persisted first, so a restarted agent never votes for a deposed leader.
//! - A leader object exists only for the term it was promoted in; seeing a higher term deposes it.

use std::sync::{Arc, Mutex as SyncMutex, Weak};
use std::time::Duration;

use protocol::{
    AgentStatus, BatchState, BatchStateResponse, ClusterBirth, ClusterConfig, DecideRequest, DecideResponse, Decision,
    DrillResponse, FailureKind, FailureReport, FenceResponse, JoinRequest, Lsn, PauseRequest, PauseResponse,
    PendingInfo, PrepareRequest, PrepareResponse, PromoteResponse, ReadResponse, RecoverRequest, RecoverResponse, Role,
    Term, Timestamp, ValidRead, Vote,
};
use tokio::sync::{watch, Mutex};
use uuid::Uuid;

use crate::error::ApiError;
use crate::participant::{
    birth_check, membership, DecideStep, Membership, ParticipantState, PendingBatch, PrepareStep, PreparedHere, RoundId,
};
use crate::peers::{PeerError, Peers};
use crate::resolution::{resolve, Resolution};
use crate::store::{LogEnd, Store};
use crate::two_phase::Leader;

/// How long a read waits for an in-flight write of one of its accounts to finish, or for a
/// node to reach `min_lsn`, before giving up with 503.
pub const READ_WAIT: Duration = Duration::from_secs(5);
/// Page size when a recovering node fetches the leader's log.
pub const RECOVERY_PAGE: i64 = 5_000;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: String,
    /// This agent's address as its peers reach it.
    pub address: String,
    /// The configuration to start from when none is stored (first start).
    pub initial: ClusterConfig,
    /// The supervisor's address; without one the leader is fixed.
    pub supervisor: Option<String>,
    /// The cluster token: required on internal endpoints and sent on every internal call.
    pub token: Option<String>,
    pub peer_timeout: Duration,
    /// The durability floor: as leader, acknowledge a commit only once at least this many
    /// nodes (this one included) hold it durably.
    pub min_copies: usize,
}

/// What this node believes about the cluster.
struct View {
    config: ClusterConfig,
    /// Set by the `/down_leader/` drill.
    down: bool,
    leader: Option<Arc<Leader>>,
}

pub struct Node {
    pub cfg: NodeConfig,
    pub store: Store,
    pub peers: Peers,
    participant: Mutex<ParticipantState>,
    /// Where the local log ends, published after every local commit.
    applied: watch::Sender<LogEnd>,
    view: SyncMutex<View>,
    /// The cluster this node's database belongs to (`agent_identity`), once it has one.
    cluster_id: SyncMutex<Option<Uuid>>,
    me: Weak<Node>,
}

impl Node {
    /// Opens the node: restores its participant state and configuration from PostgreSQL and,
    /// if the configuration names it leader, resolves what it left prepared and starts leading.
    pub async fn start(cfg: NodeConfig, store: Store) -> anyhow::Result<Arc<Node>> {
        let peers = Peers::new(cfg.peer_timeout, cfg.token.as_deref())?;
        let end = store.applied().await?;
        let lsn = end.lsn;
        let mut prepared = store.prepared_batches().await?;
        if prepared.len() > 1 {
            tracing::error!(
                count = prepared.len(),
                "more than one prepared batch found; keeping the newest, rolling back the others"
            );
        }
        let pending = prepared.pop();
        for stale in prepared {
            store.rollback_prepared(&stale).await?;
        }
        let cluster_id = store.cluster_id().await?;
        let (config, restarted) = match store.load_config().await? {
            Some(stored) if !cfg.initial.is_newer_than(&stored) => (stored, true),
            _ => {
                store.save_config(&cfg.initial).await?;
                (cfg.initial.clone(), false)
            }
        };
        let term = config.term.max(pending.as_ref().map_or(0, |p| p.id.term));
        let term_leader = config.leader.clone().filter(|_| config.term == term);
        let participant =
            ParticipantState { term, term_leader, applied_lsn: lsn, pending, pending_detail: None, uncertain: false };
        let (applied, _) = watch::channel(end);
        let node = Arc::new_cyclic(|me| Node {
            cfg,
            store,
            peers,
            participant: Mutex::new(participant),
            applied,
            view: SyncMutex::new(View { config: config.clone(), down: false, leader: None }),
            cluster_id: SyncMutex::new(cluster_id),
            me: me.clone(),
        });
        // Without a supervisor the leader is fixed and resumes at once. With one, a restarted
        // agent never promotes itself: it may have missed a failover, and resolving its own
        // prepared batch alone (presumed commit with no peer answering) could diverge from what
        // the cluster decided. The supervisor elects a leader, or recovers this node.
        // On a first start nothing can have happened yet, so the configured leader leads at once.
        let named_leader = config.leader.as_deref() == Some(node.cfg.address.as_str());
        let first_start = !restarted && lsn == 0;
        if named_leader && node.cfg.supervisor.is_some() && first_start {
            // An empty database under the first leader's name is either a new cluster or a
            // node whose data was wiped. In the second case leading would serve an empty log
            // and refuse the good nodes as "diverged": a peer with a history tells.
            if let Some(peer) = node.peer_with_history(&config).await {
                tracing::warn!(%peer, "this node's database is empty but the cluster has a history: \
                    not leading; the supervisor recovers it as a new node");
            } else {
                node.promote(config).await.map_err(|e| anyhow::anyhow!("starting as leader: {e}"))?;
            }
        } else if named_leader && (node.cfg.supervisor.is_none() || !restarted) {
            node.promote(config).await.map_err(|e| anyhow::anyhow!("resuming as leader: {e}"))?;
        }
        tracing::info!(node = %node.cfg.node_id, role = ?node.role(), term, applied_lsn = lsn, "node ready");
        Ok(node)
    }

    /// Gives a new cluster's id to every other member (best effort: one that does not take it
    /// now takes it with its first round or recovery).
    async fn announce_birth(&self, config: &ClusterConfig, cluster_id: Uuid) {
        let birth = ClusterBirth { term: config.term, leader: self.cfg.address.clone(), cluster_id };
        let others = config.members.iter().filter(|m| **m != self.cfg.address);
        futures::future::join_all(others.map(|peer| {
            let birth = &birth;
            async move {
                if let Err(e) = self.peers.announce_birth(peer, birth).await {
                    tracing::warn!(%peer, error = %e, "a member did not take the new cluster's id; it takes it at its first round");
                }
            }
        }))
        .await;
    }

    /// `POST /internal/cluster_id`: takes a new cluster's id if this database is empty and
    /// belongs to no cluster yet.
    pub async fn take_birth(&self, birth: &ClusterBirth) -> Result<AgentStatus, ApiError> {
        {
            let state = self.participant.lock().await;
            if birth.term < state.term {
                return Err(ApiError::StaleTerm(state.term));
            }
            let take = birth_check(self.cluster_id(), state.applied_lsn, state.pending.is_some(), birth.cluster_id)
                .map_err(ApiError::Conflict)?;
            if take {
                self.adopt_cluster_id(birth.cluster_id).await?;
            }
        }
        Ok(self.status().await)
    }

    /// A member of `config` that reports a log or a term beyond a fresh cluster's, if any
    /// answers.
    async fn peer_with_history(&self, config: &ClusterConfig) -> Option<String> {
        for peer in config.members.iter().filter(|m| **m != self.cfg.address) {
            match self.peers.status(peer).await {
                Ok(status) if status.applied_lsn > 0 || status.term > config.term => return Some(peer.clone()),
                Ok(_) => {}
                Err(e) => tracing::debug!(%peer, error = %e, "peer unreachable at start-up"),
            }
        }
        None
    }

    /// The cluster this node's database belongs to, if any.
    pub fn cluster_id(&self) -> Option<Uuid> {
        *self.cluster_id.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `id` as this database's cluster (a database keeps the first one it stores).
    async fn adopt_cluster_id(&self, id: Uuid) -> Result<Uuid, ApiError> {
        let kept = self.store.adopt_cluster_id(id).await.map_err(ApiError::unavailable)?;
        *self.cluster_id.lock().unwrap_or_else(|p| p.into_inner()) = Some(kept);
        if kept == id {
            tracing::info!(cluster_id = %id, "this node's database now belongs to the cluster");
        }
        Ok(kept)
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        // The view is replaced whole under the lock; a panic cannot leave it half-written.
        self.view.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn config(&self) -> ClusterConfig {
        self.view().config.clone()
    }

    pub fn role(&self) -> Role {
        let view = self.view();
        if view.down {
            Role::Down
        } else if view.leader.as_ref().is_some_and(|l| !l.is_deposed()) {
            Role::Leader
        } else if view.config.members.contains(&self.cfg.address) {
            Role::Replica
        } else {
            Role::Standby
        }
    }

    /// The coordinator, if this node leads and serves.
    pub fn leader(&self) -> Option<Arc<Leader>> {
        let view = self.view();
        if view.down {
            None
        } else {
            view.leader.clone().filter(|l| !l.is_deposed())
        }
    }

    /// A leader that learns of a newer term (from the supervisor's poll) stops acting as one
    /// at once, in memory: it learns the new term durably when it is fenced. Until then it
    /// would go on answering reads as "leader" with data the new leader has moved past.
    pub fn step_down_if_behind(&self, term: Term) {
        if let Some(leader) = self.leader().filter(|l| l.term() < term) {
            tracing::warn!(
                old_term = leader.term(),
                new_term = term,
                "stepping down: the supervisor is in a newer term"
            );
            leader.depose();
        }
    }

    /// Refuses anything but status while the drill holds this node down.
    pub fn check_serving(&self) -> Result<(), ApiError> {
        if self.view().down {
            return Err(ApiError::Unavailable(
                "this node is down (the /down_leader/ drill); GET /up_node/ brings it back".into(),
            ));
        }
        Ok(())
    }

    /// The answer for a commit sent to a node that cannot take it.
    pub fn not_leader(&self) -> ApiError {
        match self.view().config.leader.clone() {
            Some(leader) if leader != self.cfg.address => ApiError::NotLeader { leader: Some(leader) },
            _ => ApiError::Unavailable("no leader at the moment (an election is in progress); retry shortly".into()),
        }
    }

    /// (applied LSN, its commit timestamp).
    pub fn applied(&self) -> (Lsn, Timestamp) {
        let end = *self.applied.borrow();
        (end.lsn, end.commit_ts)
    }

    /// Where the local log ends, with the term of its last entry.
    pub fn log_end(&self) -> LogEnd {
        *self.applied.borrow()
    }

    fn publish_applied(&self, end: LogEnd) {
        self.applied.send_replace(end);
    }

    /// The members other than this node, in configured order.
    pub fn replicas(&self) -> Vec<String> {
        self.view().config.members.iter().filter(|m| **m != self.cfg.address).cloned().collect()
    }

    /// Adopts `config` if it is newer than ours, durably; deposes a leader of a lower term.
    async fn adopt(&self, state: &mut ParticipantState, config: &ClusterConfig) -> Result<(), ApiError> {
        let current = self.config();
        if config.term < state.term || (config.term == current.term && config.version < current.version) {
            return Ok(());
        }
        if let Err(e) = self.store.save_config(config).await {
            // The new term cannot be stored, so this node must not vote in it; but stepping
            // down is always safe, and a leader that knows it was replaced must stop acting
            // (and answering reads) as one.
            if let Some(leader) = self.leader().filter(|l| l.term() < config.term) {
                tracing::warn!(
                    old_term = leader.term(),
                    new_term = config.term,
                    "stepping down: a newer term exists (it could not be stored)"
                );
                leader.depose();
            }
            return Err(ApiError::unavailable(e));
        }
        if !state.learn_leader(config.term, config.leader.as_deref()) {
            tracing::error!(term = config.term, known = ?state.term_leader, named = ?config.leader,
                "a configuration names a second leader for this term; this member keeps voting for the first");
        }
        let deposed = {
            let mut view = self.view();
            view.config = config.clone();
            match &view.leader {
                Some(leader)
                    if leader.term() < config.term || config.leader.as_deref() != Some(self.cfg.address.as_str()) =>
                {
                    view.leader.take()
                }
                _ => None,
            }
        };
        if let Some(leader) = deposed {
            tracing::warn!(old_term = leader.term(), new_term = config.term, "deposed: no longer the leader");
            leader.depose();
        }
        if let Some(leader) = self.leader() {
            leader.resume();
        }
        Ok(())
    }

    /// A message from a higher term than ours: persist the term before acting on it.
    async fn adopt_term(&self, state: &mut ParticipantState, term: Term) -> Result<(), ApiError> {
        if term > state.term {
            let mut config = self.config();
            config.term = term;
            config.leader = None;
            self.adopt(state, &config).await?;
        }
        Ok(())
    }

    /// After a PostgreSQL call failed half-way the agent cannot tell whether a PREPARE, a
    /// COMMIT PREPARED or a recovery page landed: it re-reads the prepared batch and the last
    /// applied entry from PostgreSQL before acting again. (An orphaned prepared batch would
    /// otherwise hold its row locks forever and block every later write of those rows.)
    async fn reconcile(&self, state: &mut ParticipantState) -> Result<(), ApiError> {
        if !state.uncertain {
            return Ok(());
        }
        let end = self.store.applied().await.map_err(ApiError::unavailable)?;
        let mut prepared = self.store.prepared_batches().await.map_err(ApiError::unavailable)?;
        let newest = prepared.pop();
        for stale in prepared {
            tracing::warn!(gid = %stale.gid(), "rolling back an older orphaned prepared batch");
            self.store.rollback_prepared(&stale).await.map_err(ApiError::unavailable)?;
        }
        if let Some(batch) = &newest {
            tracing::warn!(gid = %batch.gid(), "PostgreSQL holds a prepared batch the agent had lost track of");
        }
        state.pending = newest;
        state.pending_detail = None;
        state.applied_lsn = end.lsn;
        state.uncertain = false;
        self.publish_applied(end);
        Ok(())
    }

    /// Phase one on this member.
    pub async fn prepare(&self, req: &PrepareRequest) -> Result<PrepareResponse, ApiError> {
        let (Some(first), Some(last)) = (req.entries.first(), req.entries.last()) else {
            return Err(ApiError::BadRequest("a PREPARE must carry at least one entry".into()));
        };
        let consecutive = req.entries.iter().enumerate().all(|(i, e)| e.lsn == req.prev_lsn + 1 + i as Lsn);
        if first.lsn != req.prev_lsn + 1 || !consecutive {
            return Err(ApiError::BadRequest("PREPARE entries must have consecutive LSNs after prev_lsn".into()));
        }
        let id = RoundId { term: req.term, round: req.round };
        let mut state = self.participant.lock().await;
        self.reconcile(&mut state).await?;
        self.adopt_term(&mut state, req.term).await?;
        let vote = |state: &ParticipantState, vote, reason| PrepareResponse {
            vote,
            term: state.term,
            applied_lsn: state.applied_lsn,
            reason,
        };
        let joining = match membership(self.cluster_id(), req.cluster_id) {
            Membership::Same => None,
            Membership::Adopt(id) => Some(id),
            Membership::Foreign { ours, theirs } => {
                let reason = format!("this node's database belongs to cluster {ours}, the leader's to {theirs}");
                tracing::error!(%reason, "voting NO");
                return Ok(vote(&state, Vote::No, Some(reason)));
            }
        };
        match state.on_prepare(id, req.prev_lsn, last.lsn, last.txn_id, req.leader.as_deref()) {
            PrepareStep::StaleTerm(term) => Err(ApiError::StaleTerm(term)),
            PrepareStep::Refuse(reason) => {
                tracing::warn!(%reason, "voting NO");
                Ok(vote(&state, Vote::No, Some(reason)))
            }
            PrepareStep::AlreadyPrepared => Ok(vote(&state, Vote::Yes, None)),
            PrepareStep::Prepare { supersede } => {
                if let Some(old) = supersede {
                    tracing::info!(gid = %old.gid(), "rolling back a batch superseded by a later round");
                    if let Err(e) = self.store.rollback_prepared(&old).await {
                        state.uncertain = true;
                        return Ok(vote(&state, Vote::No, Some(format!("could not roll back {}: {e}", old.gid()))));
                    }
                    state.pending = None;
                    state.pending_detail = None;
                }
                let batch = PendingBatch { id, last_lsn: last.lsn, last_txn: last.txn_id };
                match self.store.prepare(&batch, &req.entries).await {
                    Ok(()) => {
                        // It holds every entry before this batch: it is one of the cluster now.
                        if let Some(cluster) = joining {
                            if let Err(e) = self.adopt_cluster_id(cluster).await {
                                return Ok(vote(
                                    &state,
                                    Vote::No,
                                    Some(format!("could not store the cluster id: {e}")),
                                ));
                            }
                        }
                        for e in &req.entries {
                            tracing::debug!(txn_id = %e.txn_id, lsn = e.lsn, term = req.term, round = req.round, "txn prepared");
                        }
                        state.pending = Some(batch);
                        state.pending_detail = Some(PreparedHere {
                            last_commit_ts: last.commit_ts,
                            txns: req.entries.iter().map(|e| (e.lsn, e.txn_id)).collect(),
                        });
                        Ok(vote(&state, Vote::Yes, None))
                    }
                    Err(e) => {
                        state.uncertain = true;
                        tracing::error!(error = %e, "PREPARE failed in PostgreSQL; voting NO");
                        Ok(vote(&state, Vote::No, Some(format!("PostgreSQL refused the batch: {e}"))))
                    }
                }
            }
        }
    }

    /// Phase two on this member.
    pub async fn decide(&self, req: &DecideRequest) -> Result<DecideResponse, ApiError> {
        let mut state = self.participant.lock().await;
        self.reconcile(&mut state).await?;
        self.adopt_term(&mut state, req.term).await?;
        self.decide_locked(&mut state, req).await?;
        Ok(DecideResponse { term: state.term, applied_lsn: state.applied_lsn })
    }

    async fn decide_locked(&self, state: &mut ParticipantState, req: &DecideRequest) -> Result<(), ApiError> {
        let step = state.on_decide(req.term, req.last_lsn, req.last_txn, req.decision);
        match step {
            DecideStep::StaleTerm(term) => Err(ApiError::StaleTerm(term)),
            DecideStep::AlreadyDone => Ok(()),
            DecideStep::Unknown(message) => {
                tracing::error!(%message, "protocol violation");
                Err(ApiError::Conflict(message))
            }
            DecideStep::CommitPending | DecideStep::RollbackPending => {
                let Some(batch) = state.pending.clone() else {
                    return Err(ApiError::Internal("decision step without a pending batch".into()));
                };
                if step == DecideStep::CommitPending {
                    self.commit_pending(state, &batch).await
                } else {
                    self.rollback_pending(state, &batch).await
                }
            }
        }
    }

    async fn commit_pending(&self, state: &mut ParticipantState, batch: &PendingBatch) -> Result<(), ApiError> {
        if let Err(e) = self.store.commit_prepared(batch).await {
            // The COMMIT may have landed before the connection failed: the log says.
            if !self.store.batch_committed(batch).await.unwrap_or(false) {
                state.uncertain = true;
                return Err(ApiError::internal(e));
            }
        }
        state.pending = None;
        // Every member counts what it committed, so a replica's counter moves too.
        metrics::counter!("rmw_committed_entries_total").increment((batch.last_lsn - state.applied_lsn).max(0) as u64);
        state.applied_lsn = batch.last_lsn;
        let ts = match state.pending_detail.take() {
            Some(detail) => {
                log_decided(&detail, "txn committed");
                detail.last_commit_ts
            }
            None => match self.store.applied().await {
                Ok(end) => end.commit_ts,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the last commit timestamp back");
                    self.applied().1
                }
            },
        };
        self.publish_applied(LogEnd { lsn: batch.last_lsn, commit_ts: ts, term: batch.id.term });
        Ok(())
    }

    async fn rollback_pending(&self, state: &mut ParticipantState, batch: &PendingBatch) -> Result<(), ApiError> {
        if let Err(e) = self.store.rollback_prepared(batch).await {
            state.uncertain = true;
            let still_there = self.store.prepared_batches().await.map_err(ApiError::internal)?;
            if still_there.iter().any(|p| p.gid() == batch.gid()) {
                state.uncertain = true;
                return Err(ApiError::internal(e));
            }
        }
        state.pending = None;
        if let Some(detail) = state.pending_detail.take() {
            log_decided(&detail, "txn rolled back");
        }
        Ok(())
    }

    /// Where this member stands on `batch`.
    pub async fn batch_state(&self, batch: &PendingInfo) -> Result<BatchStateResponse, ApiError> {
        let state = self.participant.lock().await;
        let batch_state = self.batch_state_locked(&PendingBatch::from_info(batch)).await?;
        Ok(BatchStateResponse { term: state.term, last_lsn: batch.last_lsn, state: batch_state })
    }

    /// Asked of PostgreSQL, not of memory: the log for COMMITTED, `pg_prepared_xacts` for
    /// PREPARED. Callers hold the participant lock, so neither changes meanwhile.
    async fn batch_state_locked(&self, batch: &PendingBatch) -> Result<BatchState, ApiError> {
        Ok(if self.store.batch_committed(batch).await.map_err(ApiError::internal)? {
            BatchState::Committed
        } else if self.store.batch_prepared(batch).await.map_err(ApiError::internal)? {
            BatchState::Prepared
        } else {
            BatchState::Absent
        })
    }

    /// `POST /internal/fence`: adopt a newer term and configuration (deposing ourselves if we
    /// led an older term) and report where we stand.
    pub async fn fence(&self, config: &ClusterConfig) -> Result<FenceResponse, ApiError> {
        let mut state = self.participant.lock().await;
        if config.term < state.term {
            return Err(ApiError::StaleTerm(state.term));
        }
        self.adopt(&mut state, config).await?;
        Ok(FenceResponse {
            node_id: self.cfg.node_id.clone(),
            term: state.term,
            role: self.role(),
            applied_lsn: state.applied_lsn,
            pending: state.pending.as_ref().map(PendingBatch::info),
        })
    }

    /// `POST /internal/config`: a membership change in the current term (also ends a pause).
    pub async fn apply_config(&self, config: &ClusterConfig) -> Result<AgentStatus, ApiError> {
        {
            let mut state = self.participant.lock().await;
            if config.term < state.term {
                return Err(ApiError::StaleTerm(state.term));
            }
            self.adopt(&mut state, config).await?;
        }
        Ok(self.status().await)
    }

    /// `POST /internal/promote`: become the leader of `config.term`. Resolves every in-doubt
    /// batch among the members (DESIGN 5) before taking new transactions.
    pub async fn promote(&self, config: ClusterConfig) -> Result<PromoteResponse, ApiError> {
        if config.leader.as_deref() != Some(self.cfg.address.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "this configuration names {:?} leader, not this agent",
                config.leader
            )));
        }
        let mut state = self.participant.lock().await;
        self.reconcile(&mut state).await?;
        if config.term < state.term {
            return Err(ApiError::StaleTerm(state.term));
        }
        if let Some(leader) = self.leader() {
            if leader.term() == config.term {
                return Ok(PromoteResponse {
                    term: config.term,
                    applied_lsn: state.applied_lsn,
                    in_doubt_committed: 0,
                    in_doubt_aborted: 0,
                });
            }
        }
        self.adopt(&mut state, &config).await?;
        // A leader elected by log position owns the cluster's log: a database without an id
        // (the first leader of a new cluster, or one made before ids existed) gets one now.
        if self.cluster_id().is_none() {
            let id = self.adopt_cluster_id(Uuid::new_v4()).await?;
            if state.applied_lsn == 0 {
                // A new cluster: the members take its id now, not at the first commit, so that
                // a failover before any commit finds them electable.
                self.announce_birth(&config, id).await;
            }
        }
        // What an earlier leader acknowledged ends here; a batch resolved below may be on
        // fewer than min_copies nodes until the first round copies it.
        let acknowledged_before = state.applied_lsn;
        let (committed, aborted) = self.resolve_in_doubt(&mut state, &config).await?;
        let (lsn, ts) = self.applied();
        let last_write = self.store.write_timestamps().await.map_err(ApiError::unavailable)?;
        let leader = Leader::new(self.me.clone(), config.term, self.cfg.min_copies);
        leader.start(last_write, ts, lsn, acknowledged_before);
        self.view().leader = Some(leader);
        tracing::info!(term = config.term, applied_lsn = lsn, committed, aborted, "promoted to leader");
        Ok(PromoteResponse {
            term: config.term,
            applied_lsn: lsn,
            in_doubt_committed: committed,
            in_doubt_aborted: aborted,
        })
    }

    /// Decides every batch that this node or another live member holds prepared, by asking
    /// every live member where it stands. Returns (committed, aborted).
    async fn resolve_in_doubt(
        &self,
        state: &mut ParticipantState,
        config: &ClusterConfig,
    ) -> Result<(u32, u32), ApiError> {
        let others: Vec<&String> = config.members.iter().filter(|m| **m != self.cfg.address).collect();
        let mut batches: Vec<PendingInfo> = state.pending.iter().map(PendingBatch::info).collect();
        for peer in &others {
            match self.peers.status(peer).await {
                Ok(status) => batches.extend(status.prepared_batch),
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "member unreachable while looking for in-doubt batches")
                }
            }
        }
        batches.sort_by_key(|b| b.last_txn);
        batches.dedup_by_key(|b| b.last_txn);
        let (mut committed, mut aborted) = (0, 0);
        for batch in batches {
            let mut states = vec![self.batch_state_locked(&PendingBatch::from_info(&batch)).await?];
            for peer in &others {
                match self.peers.batch_state(peer, &batch).await {
                    Ok(answer) => states.push(answer.state),
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "member unreachable while resolving an in-doubt batch")
                    }
                }
            }
            let decision = match resolve(&states) {
                Resolution::Commit => Decision::Commit,
                Resolution::Abort => Decision::Abort,
            };
            tracing::warn!(last_lsn = batch.last_lsn, last_txn = %batch.last_txn, ?states, ?decision, "resolved an in-doubt batch");
            let req = DecideRequest { term: config.term, last_lsn: batch.last_lsn, last_txn: batch.last_txn, decision };
            self.decide_locked(state, &req).await?;
            for peer in &others {
                if let Err(e) = self.peers.decide(peer, &req).await {
                    tracing::warn!(%peer, error = %e, "could not tell a member an in-doubt decision; it will be caught by its next PREPARE or its recovery");
                }
            }
            match decision {
                Decision::Commit => committed += 1,
                Decision::Abort => aborted += 1,
            }
            let label = if decision == Decision::Commit { "commit" } else { "abort" };
            metrics::counter!("rmw_in_doubt_resolved_total", "decision" => label).increment(1);
        }
        Ok((committed, aborted))
    }

    /// `POST /internal/pause` on the leader.
    pub async fn pause(&self, req: &PauseRequest) -> Result<PauseResponse, ApiError> {
        let Some(leader) = self.leader() else {
            return Err(self.not_leader());
        };
        if leader.term() != req.term {
            return Err(ApiError::StaleTerm(leader.term()));
        }
        leader.pause(Duration::from_millis(req.max_ms)).await;
        Ok(PauseResponse { applied_lsn: self.applied().0 })
    }

    /// `POST /internal/join` on the leader: adopt a member set that adds a node which caught up
    /// to `req.applied_lsn`, only if this leader's log still ends there. No round runs while
    /// it checks and stores, so no commit can slip in between (DESIGN 6).
    pub async fn join(&self, req: &JoinRequest) -> Result<AgentStatus, ApiError> {
        let Some(leader) = self.leader() else {
            return Err(self.not_leader());
        };
        if leader.term() != req.config.term {
            return Err(ApiError::StaleTerm(leader.term()));
        }
        if req.config.leader.as_deref() != Some(self.cfg.address.as_str()) {
            return Err(ApiError::BadRequest("the configuration names another leader".into()));
        }
        {
            let _no_round = leader.hold_rounds().await;
            let applied = self.applied().0;
            if applied != req.applied_lsn {
                return Err(ApiError::Conflict(format!(
                    "this leader has applied LSN {applied} and the joining node LSN {}: it must catch up again \
                     before it can be a member",
                    req.applied_lsn
                )));
            }
            let mut state = self.participant.lock().await;
            self.adopt(&mut state, &req.config).await?;
        }
        tracing::info!(version = req.config.version, members = ?req.config.members, lsn = req.applied_lsn,
            "a caught-up node joined the members");
        Ok(self.status().await)
    }

    /// `POST /internal/recover`: a node outside the member set catches up from the leader's
    /// log (DESIGN 6). Safe to call again; the supervisor calls it once in bulk and once more
    /// for the tail while the leader pauses.
    pub async fn recover(&self, req: &RecoverRequest) -> Result<RecoverResponse, ApiError> {
        self.check_serving()?;
        if self.leader().is_some() {
            return Err(ApiError::Conflict("the leader does not recover from another node".into()));
        }
        let mut state = self.participant.lock().await;
        self.reconcile(&mut state).await?;
        if req.term < state.term {
            return Err(ApiError::StaleTerm(state.term));
        }
        self.adopt_term(&mut state, req.term).await?;
        let joining = match membership(self.cluster_id(), req.cluster_id) {
            Membership::Same => None,
            Membership::Adopt(id) => Some(id),
            Membership::Foreign { ours, theirs } => {
                return Err(ApiError::Conflict(format!(
                    "diverged: this node's database belongs to cluster {ours}, not {theirs}; it must be rebuilt, not merged"
                )))
            }
        };
        let leader = &req.leader;
        let unreachable =
            |e: crate::peers::PeerError| ApiError::Unavailable(format!("recovery could not reach the leader: {e}"));

        // 1. Our own prepared batch: its outcome is whatever the leader's log says.
        let mut resolved_pending = None;
        if let Some(pending) = state.pending.clone() {
            let answer = self.peers.batch_state(leader, &pending.info()).await.map_err(unreachable)?;
            let decision = match answer.state {
                BatchState::Committed => Decision::Commit,
                BatchState::Absent => Decision::Abort,
                BatchState::Prepared => {
                    return Err(ApiError::Unavailable(
                        "the leader still has this node's prepared batch in flight; retry".into(),
                    ))
                }
            };
            if decision == Decision::Commit {
                self.commit_pending(&mut state, &pending).await?;
            } else {
                self.rollback_pending(&mut state, &pending).await?;
            }
            tracing::info!(gid = %pending.gid(), ?decision, "recovery resolved this node's prepared batch");
            resolved_pending = Some(decision);
        }

        // 2. Our log must be a prefix of the leader's.
        let mut after = state.applied_lsn;
        if after > 0 {
            let page = self.peers.log_page(leader, after - 1, 1).await.map_err(unreachable)?;
            let ours = self.store.entry_at(after).await.map_err(ApiError::internal)?;
            let theirs = page.entries.first();
            // The whole entry must match (term and timestamp too), not just the transaction id.
            if ours.as_ref() != theirs {
                tracing::error!(applied_lsn = after, ours = ?ours.map(|e| e.txn_id), theirs = ?theirs.map(|e| e.txn_id),
                    "DIVERGED: this node's log differs from the leader's; refusing to merge");
                return Err(ApiError::Conflict(format!(
                    "diverged: this node's log entry at LSN {after} differs from the leader's; the node must be rebuilt, not merged"
                )));
            }
        }

        // 3. Apply the leader's log after our applied LSN, page by page, in LSN order.
        let mut entries_applied = 0u64;
        loop {
            let page = self.peers.log_page(leader, after, RECOVERY_PAGE).await.map_err(unreachable)?;
            let Some(last) = page.entries.last() else {
                break;
            };
            let (last_lsn, last_end) = (last.lsn, LogEnd { lsn: last.lsn, commit_ts: last.commit_ts, term: last.term });
            let dense = page.entries.iter().enumerate().all(|(i, e)| e.lsn == after + 1 + i as Lsn);
            if !dense {
                return Err(ApiError::Conflict(format!("the leader's log page after LSN {after} is not dense")));
            }
            if let Err(e) = self.store.apply_committed(&page.entries).await {
                // The page may have committed before the error reached us.
                state.uncertain = true;
                return Err(ApiError::unavailable(e));
            }
            entries_applied += page.entries.len() as u64;
            state.applied_lsn = last_lsn;
            self.publish_applied(last_end);
            after = last_lsn;
            if !page.more {
                break;
            }
        }
        metrics::counter!("rmw_recovered_entries_total").increment(entries_applied);
        // Caught up with the cluster's leader: this database is one of the cluster now.
        if let Some(cluster) = joining {
            self.adopt_cluster_id(cluster).await?;
        }
        Ok(RecoverResponse { applied_lsn: state.applied_lsn, entries_applied, resolved_pending })
    }

    /// The leader could not reach `member`: ask the supervisor to remove it. Returns the new
    /// configuration when it did; the leader never drops a member on its own.
    pub async fn report_failure(
        &self,
        term: Term,
        member: &str,
        reason: &str,
        kind: FailureKind,
    ) -> Option<ClusterConfig> {
        let supervisors = self.cfg.supervisor.as_deref()?;
        let report = FailureReport { term, member: member.to_string(), reason: reason.to_string(), kind };
        // With standby supervisors, the first that is active takes the report; a standby
        // answers 503 and a dead one does not answer: the next is tried.
        for supervisor in supervisors.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match self.peers.report_failure(supervisor, &report).await {
                Ok(config) => {
                    let mut state = self.participant.lock().await;
                    if let Err(e) = self.adopt(&mut state, &config).await {
                        tracing::error!(error = %e, "could not store the configuration the supervisor sent");
                        return None;
                    }
                    return Some(config);
                }
                Err(e @ PeerError::Unreachable { .. })
                | Err(e @ PeerError::Refused { status: reqwest::StatusCode::SERVICE_UNAVAILABLE, .. }) => {
                    tracing::debug!(%supervisor, error = %e, "this supervisor did not take the report; trying the next");
                }
                Err(e) => {
                    tracing::warn!(%member, error = %e, "the supervisor did not remove the member");
                    return None;
                }
            }
        }
        tracing::warn!(%member, "no supervisor took the report: the member stays");
        None
    }

    /// `GET /down_leader/`: the drill. The leader stops serving; the supervisor then fails over.
    pub async fn down_leader(&self) -> DrillResponse {
        let (changed, message, leader) = {
            let mut view = self.view();
            if view.down {
                (false, "this node is already down; GET /up_node/ brings it back".to_string(), None)
            } else if view.leader.is_none() {
                let leader = view.config.leader.clone().unwrap_or_else(|| "unknown".into());
                (false, format!("this node is not the leader, so nothing was done; the leader is {leader}"), None)
            } else {
                view.down = true;
                (
                    true,
                    "the leader stopped serving; the supervisor will elect a new one".to_string(),
                    view.leader.take(),
                )
            }
        };
        if let Some(leader) = leader {
            leader.depose();
        }
        tracing::warn!(changed, "drill: down_leader");
        DrillResponse { node_id: self.cfg.node_id.clone(), role: self.role(), changed, message }
    }

    /// `GET /up_node/`: brings a downed node back as a standby; the supervisor then recovers it.
    pub async fn up_node(&self) -> DrillResponse {
        let changed = std::mem::replace(&mut self.view().down, false);
        if changed {
            // It was the leader when it went down; it now rejoins as an ordinary node.
            let mut state = self.participant.lock().await;
            let mut config = self.config();
            if config.leader.as_deref() == Some(self.cfg.address.as_str()) {
                config.leader = None;
            }
            config.members.retain(|m| *m != self.cfg.address);
            let _ = self.adopt(&mut state, &config).await;
        }
        let message = if changed {
            "this node is up again as a standby; the supervisor will recover it and add it back to the members"
        } else {
            "this node was not down, so nothing was done"
        };
        tracing::warn!(changed, "drill: up_node");
        DrillResponse { node_id: self.cfg.node_id.clone(), role: self.role(), changed, message: message.into() }
    }

    /// A consistent read of `read.accounts` (DESIGN 3): on the leader it first waits for
    /// in-flight writes of those accounts; on any node it can wait for `min_lsn`.
    pub async fn read(&self, read: ValidRead) -> Result<ReadResponse, ApiError> {
        self.check_serving()?;
        let deadline = tokio::time::Instant::now() + READ_WAIT;
        if let Some(leader) = self.leader() {
            leader.wait_unlocked(&read.accounts, deadline).await?;
        }
        if let Some(min_lsn) = read.min_lsn {
            let mut applied = self.applied.subscribe();
            let reached = tokio::time::timeout_at(deadline, applied.wait_for(|end| end.lsn >= min_lsn)).await;
            if !matches!(reached, Ok(Ok(_))) {
                return Err(ApiError::Unavailable(format!(
                    "this node has applied LSN {} and did not reach min_lsn {min_lsn} within {} s",
                    self.applied().0,
                    READ_WAIT.as_secs()
                )));
            }
        }
        let accounts: Vec<i64> = read.accounts.iter().copied().collect();
        let snapshot = self.store.read(&accounts).await.map_err(ApiError::unavailable)?;
        Ok(ReadResponse {
            read_status: "success".into(),
            values: snapshot.rows.iter().map(|r| (r.account_number, r.balance)).collect(),
            data: snapshot.rows,
            timestamp: snapshot.commit_ts,
            lsn: snapshot.lsn,
            node: self.cfg.node_id.clone(),
            role: self.role(),
        })
    }

    pub async fn status(&self) -> AgentStatus {
        let state = self.participant.lock().await;
        let end = self.log_end();
        let config = self.config();
        AgentStatus {
            node_id: self.cfg.node_id.clone(),
            address: self.cfg.address.clone(),
            role: self.role(),
            term: state.term,
            leader: config.leader,
            applied_lsn: end.lsn,
            last_commit_ts: end.commit_ts,
            last_term: end.term,
            min_copies: self.cfg.min_copies as u32,
            cluster_id: self.cluster_id(),
            members: config.members,
            prepared_batch: state.pending.as_ref().map(PendingBatch::info),
            config_version: config.version,
            supervisor: self.cfg.supervisor.clone(),
        }
    }
}

/// One debug line per transaction of a decided batch, so that a `txn_id` can be followed
/// through every node's log (`RUST_LOG=agent=debug`).
fn log_decided(detail: &PreparedHere, what: &'static str) {
    if tracing::enabled!(tracing::Level::DEBUG) {
        for (lsn, txn_id) in &detail.txns {
            tracing::debug!(%txn_id, lsn, "{what}");
        }
    }
}
