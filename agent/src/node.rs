//! One agent: its PostgreSQL, its participant state, and (on the leader) the coordinator.
//!
//! The participant side of two-phase commit runs here under one async mutex per node, held only
//! across *local* PostgreSQL calls, never across a network call.

use std::sync::Arc;
use std::time::Duration;

use protocol::{
    AgentStatus, BatchState, BatchStateResponse, DecideRequest, DecideResponse, Lsn,
    PrepareRequest, PrepareResponse, ReadResponse, Role, Term, Timestamp, ValidRead, Vote,
};
use tokio::sync::{watch, Mutex};
use uuid::Uuid;

use crate::error::ApiError;
use crate::participant::{DecideStep, ParticipantState, PendingBatch, PrepareStep, RoundId};
use crate::peers::Peers;
use crate::resolution::{resolve, Resolution};
use crate::store::Store;
use crate::two_phase::Leader;

/// How long a read waits for an in-flight write of one of its accounts to finish, or for a
/// replica to reach `min_lsn`, before giving up with 503.
pub const READ_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: String,
    /// This agent's address as its peers reach it.
    pub address: String,
    /// Every agent's address, in configured order, this one included.
    pub members: Vec<String>,
    pub leader: String,
    pub peer_timeout: Duration,
}

pub struct Node {
    pub cfg: NodeConfig,
    pub store: Store,
    pub peers: Peers,
    participant: Mutex<ParticipantState>,
    /// (applied LSN, its commit timestamp), published after every local commit.
    applied: watch::Sender<(Lsn, Timestamp)>,
    leader: Option<Arc<Leader>>,
}

impl Node {
    /// Opens the node: restores its participant state from PostgreSQL and, on the leader,
    /// resolves a batch it left prepared and starts the commit pipeline.
    pub async fn start(cfg: NodeConfig, store: Store) -> anyhow::Result<Arc<Node>> {
        let peers = Peers::new(cfg.peer_timeout)?;
        let (lsn, ts) = store.applied().await?;
        let mut prepared = store.prepared_batches().await?;
        if prepared.len() > 1 {
            tracing::error!(
                count = prepared.len(),
                "more than one prepared batch found; resolving the newest, rolling back the others"
            );
        }
        let pending = prepared.pop();
        for stale in prepared {
            store.rollback_prepared(&stale).await?;
        }
        let term = pending.as_ref().map_or(1, |p| p.id.term).max(1);
        let participant = ParticipantState {
            term,
            applied_lsn: lsn,
            pending,
        };
        let is_leader = cfg.address == cfg.leader;
        let (applied, _) = watch::channel((lsn, ts));
        let node = Arc::new_cyclic(|weak| Node {
            leader: is_leader.then(|| Leader::new(weak.clone(), term)),
            cfg,
            store,
            peers,
            participant: Mutex::new(participant),
            applied,
        });
        if let Some(leader) = &node.leader {
            node.resolve_in_doubt().await?;
            let (lsn, ts) = *node.applied.borrow();
            leader.start(node.store.write_timestamps().await?, ts, lsn);
        }
        tracing::info!(node = %node.cfg.node_id, role = ?node.role(), applied_lsn = lsn, "node ready");
        Ok(node)
    }

    pub fn role(&self) -> Role {
        if self.leader.is_some() {
            Role::Leader
        } else {
            Role::Replica
        }
    }

    pub fn leader(&self) -> Option<&Arc<Leader>> {
        self.leader.as_ref()
    }

    pub fn applied(&self) -> (Lsn, Timestamp) {
        *self.applied.borrow()
    }

    pub fn replicas(&self) -> impl Iterator<Item = &String> {
        self.cfg
            .members
            .iter()
            .filter(move |m| **m != self.cfg.address)
    }

    pub async fn term(&self) -> Term {
        self.participant.lock().await.term
    }

    /// Phase one on this member.
    pub async fn prepare(&self, req: &PrepareRequest) -> Result<PrepareResponse, ApiError> {
        let (Some(first), Some(last)) = (req.entries.first(), req.entries.last()) else {
            return Err(ApiError::BadRequest(
                "a PREPARE must carry at least one entry".into(),
            ));
        };
        let consecutive = req
            .entries
            .iter()
            .enumerate()
            .all(|(i, e)| e.lsn == req.prev_lsn + 1 + i as Lsn);
        if first.lsn != req.prev_lsn + 1 || !consecutive {
            return Err(ApiError::BadRequest(
                "PREPARE entries must have consecutive LSNs after prev_lsn".into(),
            ));
        }
        let id = RoundId {
            term: req.term,
            round: req.round,
        };
        let mut state = self.participant.lock().await;
        let vote = |state: &ParticipantState, vote, reason| PrepareResponse {
            vote,
            term: state.term,
            applied_lsn: state.applied_lsn,
            reason,
        };
        match state.on_prepare(id, req.prev_lsn, last.lsn, last.txn_id) {
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
                        return Ok(vote(
                            &state,
                            Vote::No,
                            Some(format!("could not roll back {}: {e}", old.gid())),
                        ));
                    }
                    state.pending = None;
                }
                let batch = PendingBatch {
                    id,
                    last_lsn: last.lsn,
                    last_txn: last.txn_id,
                };
                match self.store.prepare(&batch, &req.entries).await {
                    Ok(()) => {
                        state.pending = Some(batch);
                        Ok(vote(&state, Vote::Yes, None))
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "PREPARE failed in PostgreSQL; voting NO");
                        Ok(vote(
                            &state,
                            Vote::No,
                            Some(format!("PostgreSQL refused the batch: {e}")),
                        ))
                    }
                }
            }
        }
    }

    /// Phase two on this member.
    pub async fn decide(&self, req: &DecideRequest) -> Result<DecideResponse, ApiError> {
        let mut state = self.participant.lock().await;
        let step = state.on_decide(req.term, req.last_lsn, req.decision);
        match step {
            DecideStep::StaleTerm(term) => return Err(ApiError::StaleTerm(term)),
            DecideStep::AlreadyDone => {}
            DecideStep::Unknown(message) => {
                tracing::error!(%message, "protocol violation");
                return Err(ApiError::Conflict(message));
            }
            DecideStep::CommitPending | DecideStep::RollbackPending => {
                let Some(batch) = state.pending.clone() else {
                    return Err(ApiError::Internal(
                        "decision step without a pending batch".into(),
                    ));
                };
                if step == DecideStep::CommitPending {
                    if let Err(e) = self.store.commit_prepared(&batch).await {
                        // The COMMIT may have landed before the connection failed: the log says.
                        if !self.store.has_txn(batch.last_txn).await.unwrap_or(false) {
                            return Err(ApiError::internal(e));
                        }
                    }
                    state.pending = None;
                    state.applied_lsn = batch.last_lsn;
                    let ts = match self.store.applied().await {
                        Ok((_, ts)) => ts,
                        Err(e) => {
                            tracing::warn!(error = %e, "could not read the last commit timestamp back");
                            self.applied().1
                        }
                    };
                    self.applied.send_replace((batch.last_lsn, ts));
                } else if let Err(e) = self.store.rollback_prepared(&batch).await {
                    if self
                        .store
                        .prepared_batches()
                        .await
                        .map_err(ApiError::internal)?
                        .iter()
                        .any(|p| p.gid() == batch.gid())
                    {
                        return Err(ApiError::internal(e));
                    }
                }
                state.pending = None;
            }
        }
        Ok(DecideResponse {
            term: state.term,
            applied_lsn: state.applied_lsn,
        })
    }

    /// Where this member stands on the batch ending with `last_txn`.
    pub async fn batch_state(
        &self,
        last_lsn: Lsn,
        last_txn: Uuid,
    ) -> Result<BatchStateResponse, ApiError> {
        let state = self.participant.lock().await;
        let batch_state = if self
            .store
            .has_txn(last_txn)
            .await
            .map_err(ApiError::internal)?
        {
            BatchState::Committed
        } else if state
            .pending
            .as_ref()
            .is_some_and(|p| p.last_txn == last_txn)
        {
            BatchState::Prepared
        } else {
            BatchState::Absent
        };
        Ok(BatchStateResponse {
            term: state.term,
            last_lsn,
            state: batch_state,
        })
    }

    /// A leader that restarts with a batch prepared asks every member where it stands and
    /// decides it by the in-doubt rules before taking new transactions.
    async fn resolve_in_doubt(&self) -> anyhow::Result<()> {
        let Some(pending) = self.participant.lock().await.pending.clone() else {
            return Ok(());
        };
        let mut states = vec![BatchState::Prepared];
        for peer in self.replicas() {
            match self
                .peers
                .batch_state(peer, pending.last_lsn, pending.last_txn)
                .await
            {
                Ok(answer) => states.push(answer.state),
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "member unreachable while resolving an in-doubt batch")
                }
            }
        }
        let resolution = resolve(&states);
        tracing::warn!(gid = %pending.gid(), ?states, ?resolution, "resolved an in-doubt batch");
        let decision = match resolution {
            Resolution::Commit => protocol::Decision::Commit,
            Resolution::Abort => protocol::Decision::Abort,
        };
        let req = DecideRequest {
            term: pending.id.term,
            last_lsn: pending.last_lsn,
            decision,
        };
        self.decide(&req)
            .await
            .map_err(|e| anyhow::anyhow!("deciding the in-doubt batch locally: {e}"))?;
        for peer in self.replicas() {
            if let Err(e) = self.peers.decide(peer, &req).await {
                tracing::warn!(%peer, error = %e, "could not tell a member the in-doubt decision; it will learn from the next PREPARE");
            }
        }
        Ok(())
    }

    /// A consistent read of `read.accounts` (DESIGN 3): on the leader it first waits for
    /// in-flight writes of those accounts; on any node it can wait for `min_lsn`.
    pub async fn read(&self, read: ValidRead) -> Result<ReadResponse, ApiError> {
        let deadline = tokio::time::Instant::now() + READ_WAIT;
        if let Some(leader) = &self.leader {
            leader.wait_unlocked(&read.accounts, deadline).await?;
        }
        if let Some(min_lsn) = read.min_lsn {
            let mut applied = self.applied.subscribe();
            let reached =
                tokio::time::timeout_at(deadline, applied.wait_for(|(lsn, _)| *lsn >= min_lsn))
                    .await;
            if !matches!(reached, Ok(Ok(_))) {
                return Err(ApiError::Unavailable(format!(
                    "this node has applied LSN {} and did not reach min_lsn {min_lsn} within {} s",
                    self.applied().0,
                    READ_WAIT.as_secs()
                )));
            }
        }
        let accounts: Vec<i64> = read.accounts.iter().copied().collect();
        let snapshot = self
            .store
            .read(&accounts)
            .await
            .map_err(ApiError::unavailable)?;
        Ok(ReadResponse {
            read_status: "success".into(),
            values: snapshot
                .rows
                .iter()
                .map(|r| (r.account_number, r.balance))
                .collect(),
            data: snapshot.rows,
            timestamp: snapshot.commit_ts,
            lsn: snapshot.lsn,
            node: self.cfg.node_id.clone(),
            role: self.role(),
        })
    }

    pub async fn status(&self) -> AgentStatus {
        let state = self.participant.lock().await;
        let (applied_lsn, last_commit_ts) = self.applied();
        AgentStatus {
            node_id: self.cfg.node_id.clone(),
            address: self.cfg.address.clone(),
            role: self.role(),
            term: state.term,
            leader: Some(self.cfg.leader.clone()),
            applied_lsn,
            last_commit_ts,
            members: self.cfg.members.clone(),
            prepared_batch: state.pending.as_ref().map(|p| p.last_lsn),
        }
    }
}
