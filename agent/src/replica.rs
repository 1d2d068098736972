//! A member's part in each round, carried out: PREPARE, the decision, where it stands on a
//! batch, and the configurations the supervisor sends. The rules are
//! [`engine::member::Member`]'s; here each request is stepped until it is answered, and the
//! PostgreSQL call a step asks for runs on its own connection with no lock held.

use engine::member::{ConfigAnswer, DecideAnswer, Op, PrepareAnswer, PrepareArgs};
use engine::{Batch, LogEnd, PreparedHere, RoundId};
use protocol::{
    AgentStatus, BatchState, BatchStateResponse, ClusterConfig, DecideRequest, DecideResponse, FenceResponse, Lsn,
    PendingInfo, PrepareRequest, PrepareResponse, Vote,
};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::node::{log_decided, Next, Node, STEP_WAIT};

impl Node {
    /// Phase one on this member.
    pub async fn prepare(&self, req: &PrepareRequest) -> Result<PrepareResponse, ApiError> {
        let (Some(first), Some(last)) = (req.entries.first(), req.entries.last()) else {
            return Err(ApiError::BadRequest("a PREPARE must carry at least one entry".into()));
        };
        let consecutive = req.entries.iter().enumerate().all(|(i, e)| e.lsn == req.prev_lsn + 1 + i as Lsn);
        if first.lsn != req.prev_lsn + 1 || !consecutive {
            return Err(ApiError::BadRequest("PREPARE entries must have consecutive LSNs after prev_lsn".into()));
        }
        let args = PrepareArgs {
            id: RoundId { term: req.term, round: req.round },
            prev_lsn: req.prev_lsn,
            last_lsn: last.lsn,
            last_txn: last.txn_id,
            leader: req.leader.clone(),
            cluster_id: req.cluster_id,
            detail: Some(PreparedHere {
                last_commit_ts: last.commit_ts,
                txns: req.entries.iter().map(|e| (e.lsn, e.txn_id)).collect(),
            }),
        };
        let deadline = Instant::now() + self.cfg.peer_timeout.min(STEP_WAIT);
        let answer = loop {
            let changed = self.next_change();
            let step = self.step(|m| m.prepare(&args));
            let next = match self.settle(step, changed, deadline).await {
                Ok(next) => next,
                // What blocked the vote did not clear in time (a predecessor that never came):
                // NO, with the reason.
                Err(ApiError::Unavailable(reason)) => break PrepareAnswer::No(reason),
                Err(e) => return Err(e),
            };
            match next {
                Next::Answer(answer) => break answer,
                Next::Again => continue,
                Next::Run(Op::Prepare { batch, adopt }) => {
                    let result = self.prepare_in_postgres(&batch, req, adopt).await;
                    break self.with_member(|m| m.prepared(&batch, result));
                }
                Next::Run(op) => return Err(ApiError::Internal(format!("PREPARE stepped into {op:?}"))),
            }
        };
        let (term, applied_lsn) = self.look(|m| (m.term(), m.applied().lsn));
        let vote = |vote, reason| Ok(PrepareResponse { vote, term, applied_lsn, reason });
        match answer {
            PrepareAnswer::Yes => {
                for e in &req.entries {
                    tracing::debug!(txn_id = %e.txn_id, lsn = e.lsn, term = req.term, round = req.round, "txn prepared");
                }
                vote(Vote::Yes, None)
            }
            PrepareAnswer::No(reason) => {
                tracing::warn!(%reason, "voting NO");
                vote(Vote::No, Some(reason))
            }
            PrepareAnswer::Stale(term) => Err(ApiError::StaleTerm(term)),
        }
    }

    /// `PREPARE TRANSACTION` on this node's PostgreSQL, and the cluster id the member takes
    /// once it holds every entry before the batch.
    async fn prepare_in_postgres(
        &self,
        batch: &Batch,
        req: &PrepareRequest,
        adopt: Option<uuid::Uuid>,
    ) -> Result<Option<uuid::Uuid>, String> {
        if let Err(e) = self.store.prepare(batch, &req.entries).await {
            tracing::error!(error = %e, "PREPARE failed in PostgreSQL");
            return Err(e.to_string());
        }
        let Some(id) = adopt else {
            return Ok(None);
        };
        match self.store.adopt_cluster_id(id).await {
            Ok(kept) => {
                tracing::info!(cluster_id = %kept, "this node's database now belongs to the cluster");
                Ok(Some(kept))
            }
            Err(e) => Err(format!("could not store the cluster id: {e}")),
        }
    }

    /// Phase two on this member.
    pub async fn decide(&self, req: &DecideRequest) -> Result<DecideResponse, ApiError> {
        let deadline = Instant::now() + STEP_WAIT;
        loop {
            let changed = self.next_change();
            let step = self.step(|m| m.decide(req.term, req.last_lsn, req.last_txn, req.decision));
            let answer = match self.settle(step, changed, deadline).await? {
                Next::Answer(answer) => answer,
                Next::Again => continue,
                Next::Run(Op::Commit(batch)) => {
                    let result = self.commit_in_postgres(&batch).await;
                    self.with_member(|m| m.committed(&batch, result))
                }
                Next::Run(op) => return Err(ApiError::Internal(format!("a decision stepped into {op:?}"))),
            };
            return match answer {
                DecideAnswer::Done => {
                    let (term, applied_lsn) = self.look(|m| (m.term(), m.applied().lsn));
                    Ok(DecideResponse { term, applied_lsn })
                }
                DecideAnswer::Stale(term) => Err(ApiError::StaleTerm(term)),
                DecideAnswer::Unknown(message) => {
                    tracing::error!(%message, "protocol violation");
                    Err(ApiError::Conflict(message))
                }
                DecideAnswer::Failed(message) => Err(ApiError::Internal(message)),
            };
        }
    }

    /// `COMMIT PREPARED`; where the log ends after it. A failed call is checked against the
    /// log: the COMMIT may have landed before the connection failed.
    pub(crate) async fn commit_in_postgres(&self, batch: &Batch) -> Result<LogEnd, String> {
        if let Err(e) = self.store.commit_prepared(batch).await {
            if !self.store.batch_committed(batch).await.unwrap_or(false) {
                return Err(e.to_string());
            }
        }
        // Every member counts what it committed, so a replica's counter moves too.
        let before = self.applied().0;
        metrics::counter!("rmw_committed_entries_total").increment((batch.last_lsn - before).max(0) as u64);
        if let Some(detail) = &batch.detail {
            log_decided(detail, "txn committed");
        }
        Ok(match batch.end() {
            Some(end) => end,
            None => match self.store.applied().await {
                Ok(end) => end,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the last commit timestamp back");
                    LogEnd { lsn: batch.last_lsn, commit_ts: self.applied().1, term: batch.id.term }
                }
            },
        })
    }

    /// Where this member stands on `batch`.
    pub async fn batch_state(&self, batch: &PendingInfo) -> Result<BatchStateResponse, ApiError> {
        let state = self.batch_state_here(batch).await?;
        Ok(BatchStateResponse { term: self.look(|m| m.term()), last_lsn: batch.last_lsn, state })
    }

    /// Asked of the member, and for a batch at or below the applied LSN, of the log (entries
    /// there never change, so the answer cannot race a decision).
    pub(crate) async fn batch_state_here(&self, batch: &PendingInfo) -> Result<BatchState, ApiError> {
        let deadline = Instant::now() + STEP_WAIT;
        loop {
            let changed = self.next_change();
            let step = self.step(|m| m.batch_state(batch));
            match self.settle(step, changed, deadline).await? {
                Next::Answer(state) => return Ok(state),
                Next::Again => continue,
                Next::Run(Op::CheckLog(batch)) => {
                    return self.store.batch_in_log(&batch).await.map_err(ApiError::unavailable);
                }
                Next::Run(op) => return Err(ApiError::Internal(format!("a batch state stepped into {op:?}"))),
            }
        }
    }

    /// Adopts `config` if it is newer than the member's, durably. Stale: Err(StaleTerm).
    pub(crate) async fn configure(&self, config: &ClusterConfig) -> Result<(), ApiError> {
        let deadline = Instant::now() + STEP_WAIT;
        loop {
            let changed = self.next_change();
            let step = self.step(|m| m.configure(config));
            match self.settle(step, changed, deadline).await? {
                Next::Answer(ConfigAnswer::Current) => return Ok(()),
                Next::Answer(ConfigAnswer::Stale(term)) => return Err(ApiError::StaleTerm(term)),
                Next::Again => continue,
                Next::Run(op) => return Err(ApiError::Internal(format!("a configuration stepped into {op:?}"))),
            }
        }
    }

    /// `POST /internal/fence`: adopt a newer term and configuration (deposing ourselves if we
    /// led an older term) and report where we stand.
    pub async fn fence(&self, config: &ClusterConfig) -> Result<FenceResponse, ApiError> {
        self.configure(config).await?;
        let role = self.role();
        Ok(self.look(|m| FenceResponse {
            node_id: self.cfg.node_id.clone(),
            term: m.term(),
            role,
            applied_lsn: m.applied().lsn,
            pending: m.pending(),
        }))
    }

    /// `POST /internal/config`: a membership change in the current term (also ends a pause).
    pub async fn apply_config(&self, config: &ClusterConfig) -> Result<AgentStatus, ApiError> {
        self.configure(config).await?;
        Ok(self.status())
    }
}
