//! A node outside the member set catches up from the leader's log (`POST /internal/recover`).
//!
//! 1. Its own prepared batches: their outcome is whatever the leader's log says.
//! 2. Its log must be a prefix of the leader's: the entry at its applied LSN must be the
//!    leader's entry there, whole (term and timestamp too). A node that differs is *diverged*
//!    and must be rebuilt, never merged.
//! 3. The leader's log after its applied LSN, page by page, applied in LSN order (applying is
//!    idempotent by LSN).
//!
//! The member is in `Recovering` mode meanwhile: other requests wait, `/status` does not. Safe
//! to call again; the supervisor calls it once in bulk and once more for the tail while the
//! leader pauses.

use engine::member::{RecoveryRefusal, ResetRefusal};
use engine::Batch;
use protocol::{BatchState, ClusterConfig, Decision, LogEntry, Lsn, RecoverRequest, RecoverResponse, ResetResponse};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::node::{Next, Node, STEP_WAIT};
use crate::peers::PeerError;
use crate::store::LogEnd;
use engine::cluster::{membership, Membership};

/// Why a recovery stops when the leader's log no longer reaches this node's position: the
/// supervisor then rebuilds the node (reset, then a recovery that loads a snapshot).
fn behind_horizon(position: Lsn, horizon: Lsn) -> ApiError {
    ApiError::LogTrimmed {
        horizon,
        message: format!(
            "this node is at LSN {position}, behind the leader's log horizon: the leader no longer holds the entries \
             it would replay; rebuild the node from a snapshot (`client rebuild`, or the supervisor does it by itself)"
        ),
    }
}

/// A failed call to the leader during recovery, as this node answers it.
fn refused(e: PeerError, position: Lsn) -> ApiError {
    match e {
        PeerError::Trimmed { horizon, .. } => behind_horizon(position, horizon),
        e => ApiError::Unavailable(format!("recovery could not reach the leader: {e}")),
    }
}

/// Page size when a recovering node fetches the leader's log.
pub const RECOVERY_PAGE: i64 = 5_000;

/// Ends the member's recovery mode however the recovery ends (an early return included).
struct Recovering<'a> {
    node: &'a Node,
    uncertain: bool,
}

impl Drop for Recovering<'_> {
    fn drop(&mut self) {
        let uncertain = self.uncertain;
        self.node.with_member(|m| m.end_recovery(uncertain));
    }
}

impl Node {
    /// `POST /internal/recover`.
    pub async fn recover(&self, req: &RecoverRequest) -> Result<RecoverResponse, ApiError> {
        self.check_serving()?;
        let empty = self.look(|m| m.applied().lsn == 0 && m.pending().is_none());
        let joining = match membership(self.cluster_id(), req.cluster_id, empty) {
            Membership::Same => None,
            Membership::Adopt(id) => Some(id),
            Membership::Foreign { ours, theirs } => {
                return Err(ApiError::Diverged(format!(
                    "diverged: this node's database belongs to cluster {ours}, not {theirs}; it must be rebuilt, not merged"
                )))
            }
        };
        let slots = self.begin_recovery(req).await?;
        let mut guard = Recovering { node: self, uncertain: false };
        let leader = &req.leader;

        // 1. Our own prepared batches, first to last.
        let mut resolved_pending = None;
        for batch in slots {
            let answer =
                self.peers.batch_state(leader, &batch.info()).await.map_err(|e| refused(e, self.applied().0))?;
            let decision = match answer.state {
                BatchState::Committed => Decision::Commit,
                BatchState::Absent => Decision::Abort,
                BatchState::Prepared => {
                    return Err(ApiError::Unavailable(
                        "the leader still has this node's prepared batch in flight; retry".into(),
                    ))
                }
                // The leader's log no longer reaches this batch: this node is far behind, and
                // is rebuilt (its prepared batch is rolled back with the rest of its data).
                BatchState::Trimmed => return Err(behind_horizon(self.applied().0, batch.last_lsn)),
            };
            self.resolve_slot(&batch, decision, &mut guard).await?;
            tracing::info!(gid = %batch.gid(), ?decision, "recovery resolved this node's prepared batch");
            resolved_pending.get_or_insert(decision);
        }

        // 2. Our log must be a prefix of the leader's.
        let mut after = self.applied().0;
        if after > 0 {
            let page = self.peers.log_page(leader, after - 1, 1).await.map_err(|e| refused(e, after))?;
            let ours = self.store.entry_at(after).await.map_err(ApiError::internal)?;
            let theirs = page.entries.first();
            if ours.as_ref() != theirs {
                tracing::error!(applied_lsn = after, ours = ?ours.map(|e| e.txn_id), theirs = ?theirs.map(|e| e.txn_id),
                    "DIVERGED: this node's log differs from the leader's; refusing to merge");
                return Err(ApiError::Diverged(format!(
                    "diverged: this node's log entry at LSN {after} differs from the leader's; the node must be rebuilt, not merged"
                )));
            }
        }

        // 3. Apply the leader's log after our applied LSN, page by page, in LSN order. An
        //    empty node takes the leader's snapshot first when the log alone would not do: the
        //    leader's log no longer starts at 1, or is longer than one page.
        let mut entries_applied = 0u64;
        let mut snapshot_lsn = None;
        loop {
            let page = match self.peers.log_page(leader, after, RECOVERY_PAGE).await {
                Err(PeerError::Trimmed { .. }) if after == 0 => None,
                Ok(page) if after == 0 && page.more => None,
                Ok(page) => Some(page),
                Err(e) => return Err(refused(e, after)),
            };
            let Some(page) = page else {
                let base = self.load_snapshot(leader, &mut guard).await?;
                snapshot_lsn = Some(base.lsn);
                after = base.lsn;
                continue;
            };
            let Some(last) = page.entries.last() else {
                break;
            };
            let end = LogEnd { lsn: last.lsn, commit_ts: last.commit_ts, term: last.term };
            let dense = page.entries.iter().enumerate().all(|(i, e)| e.lsn == after + 1 + i as i64);
            if !dense {
                return Err(ApiError::Conflict(format!("the leader's log page after LSN {after} is not dense")));
            }
            if let Err(e) = self.store.apply_committed(&page.entries).await {
                // The page may have committed before the error reached us.
                guard.uncertain = true;
                return Err(ApiError::unavailable(e));
            }
            entries_applied += page.entries.len() as u64;
            self.with_member(|m| m.recovered(end));
            after = end.lsn;
            if !page.more {
                break;
            }
        }
        metrics::counter!("rmw_recovered_entries_total").increment(entries_applied);
        // Caught up with the cluster's leader: this database is one of the cluster now.
        if let Some(cluster) = joining {
            let kept = self.store.adopt_cluster_id(cluster).await.map_err(ApiError::unavailable)?;
            self.with_member(|m| m.took_cluster_id(kept));
            tracing::info!(cluster_id = %kept, "this node's database now belongs to the cluster");
        }
        drop(guard);
        Ok(RecoverResponse { applied_lsn: self.applied().0, entries_applied, resolved_pending, snapshot_lsn })
    }

    /// `POST /internal/reset`: empties this node's database so that recovery can replay the
    /// whole log onto it (a rebuild of a diverged or damaged node). `config` is the
    /// supervisor's: it is adopted first, and the node must not be a member in it, nor lead.
    pub async fn reset(&self, config: &ClusterConfig) -> Result<ResetResponse, ApiError> {
        self.check_serving()?;
        self.configure(config).await?;
        let deadline = Instant::now() + STEP_WAIT;
        loop {
            let changed = self.next_change();
            let step = self.step(|m| m.begin_reset());
            match self.settle(step, changed, deadline).await? {
                Next::Answer(Ok(_slots)) => break,
                Next::Answer(Err(ResetRefusal::Leading)) => {
                    return Err(ApiError::Conflict("this node leads: switch over to another node first".into()))
                }
                Next::Answer(Err(ResetRefusal::Member)) => {
                    return Err(ApiError::Conflict(
                        "this node is a member of the cluster's configuration: remove it first".into(),
                    ))
                }
                Next::Again => continue,
                Next::Run(op) => return Err(ApiError::Internal(format!("a reset stepped into {op:?}"))),
            }
        }
        // The member's slots are among PostgreSQL's prepared batches, which `wipe` rolls back.
        let mut guard = Recovering { node: self, uncertain: true };
        let (wiped_entries, rolled_back) = self.store.wipe().await.map_err(ApiError::unavailable)?;
        guard.uncertain = false;
        self.with_member(|m| m.wiped());
        drop(guard);
        tracing::warn!(wiped_entries, rolled_back, "emptied this node's database for a rebuild");
        Ok(ResetResponse { wiped_entries, rolled_back })
    }

    /// Loads the leader's snapshot into this empty node; returns its base entry (the node's
    /// applied position now).
    async fn load_snapshot(&self, leader: &str, guard: &mut Recovering<'_>) -> Result<LogEntry, ApiError> {
        let started = std::time::Instant::now();
        let (header, rows) = self
            .peers
            .snapshot(leader)
            .await
            .map_err(|e| ApiError::Unavailable(format!("recovery could not fetch the leader's snapshot: {e}")))?;
        let Some(base) = header.base else {
            return Err(ApiError::Conflict("the leader's snapshot is empty, but its log is not; retry".into()));
        };
        // Either the whole snapshot lands, in one transaction, or nothing does; but an error
        // after the COMMIT was sent leaves it unknown which.
        guard.uncertain = true;
        let accounts = self
            .store
            .import_snapshot(&base, rows)
            .await
            .map_err(|e| ApiError::Unavailable(format!("recovery could not load the leader's snapshot: {e:#}")))?;
        guard.uncertain = false;
        let end = LogEnd { lsn: base.lsn, commit_ts: base.commit_ts, term: base.term };
        self.with_member(|m| m.recovered(end));
        metrics::counter!("rmw_snapshots_loaded_total").increment(1);
        tracing::info!(
            base_lsn = base.lsn,
            accounts,
            ms = started.elapsed().as_millis() as u64,
            "loaded the leader's snapshot; replaying the log after it"
        );
        Ok(base)
    }

    /// Puts the member in recovery mode; returns the batches it holds prepared.
    async fn begin_recovery(&self, req: &RecoverRequest) -> Result<Vec<Batch>, ApiError> {
        let deadline = Instant::now() + STEP_WAIT;
        loop {
            let changed = self.next_change();
            let step = self.step(|m| m.begin_recovery(req.term));
            match self.settle(step, changed, deadline).await? {
                Next::Answer(Ok(slots)) => return Ok(slots),
                Next::Answer(Err(RecoveryRefusal::Leading)) => {
                    return Err(ApiError::Conflict("the leader does not recover from another node".into()))
                }
                Next::Answer(Err(RecoveryRefusal::Stale(term))) => return Err(ApiError::StaleTerm(term)),
                Next::Again => continue,
                Next::Run(op) => return Err(ApiError::Internal(format!("a recovery stepped into {op:?}"))),
            }
        }
    }

    /// Decides one of the member's slots as the leader's log says.
    async fn resolve_slot(
        &self,
        batch: &Batch,
        decision: Decision,
        guard: &mut Recovering<'_>,
    ) -> Result<(), ApiError> {
        match self.with_member(|m| m.resolve(batch, decision)) {
            Some(engine::member::Op::Commit(batch)) => {
                let result = self.commit_in_postgres(&batch).await;
                if let engine::member::DecideAnswer::Failed(e) = self.with_member(|m| m.committed(&batch, result)) {
                    guard.uncertain = true;
                    return Err(ApiError::Internal(e));
                }
            }
            Some(engine::member::Op::RollBack(batches)) => {
                let ok = self.roll_back(&batches).await;
                self.with_member(|m| m.rolled_back(&batches, ok));
                if !ok {
                    guard.uncertain = true;
                    return Err(ApiError::Unavailable("could not roll back a prepared batch; retry".into()));
                }
            }
            _ => {}
        }
        Ok(())
    }
}
