//! Bringing a node back into the member set (DESIGN 6): a bulk catch-up from the leader's log
//! while commits go on, then a short pause of the leader for the tail, then the new member set,
//! stored by the leader first and by the supervisor second. Also the catch-up in place of a
//! member that must stay (the durability floor) but fell behind.
//!
//! Invariants kept here:
//! - The joining node counts as a member nowhere before the leader stored the new member set,
//!   and the leader stores it only if its log still ends where the node's does (it checks
//!   that itself, with no round in flight).
//! - The leader's pause always ends: by the new configuration, by the old one sent back when
//!   the recovery fails, or by the pause's own deadline (`MAX_PAUSE`).
//! - A node whose log diverged from the leader's is refused, reported as `diverged` and never
//!   recovered automatically ([`crate::history`]); a node short of the leader is retried.

use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::operator::HistoryKind;
use protocol::supervisor_status::RecoveryReport;
use protocol::{ClusterConfig, JoinRequest, Lsn, PauseRequest, RecoverRequest};
use uuid::Uuid;

use crate::agent_client::CallError;
use crate::config_keeper::lock;
use crate::failover::{caught_up_to, with_member, ShortOfLeader};
use crate::history::{push_event, worth_recording};
use crate::run::{event, now_ms, Supervisor, PUSH_TIMEOUT};
use crate::store::{Persisted, StoreError};

/// How long recovery may take to apply the bulk of a returning node's missing log.
const BULK_RECOVERY_TIMEOUT: Duration = Duration::from_secs(300);
/// The leader's pause during a recovery's final catch-up ends by itself after this.
const MAX_PAUSE: Duration = Duration::from_secs(3);
/// Control calls (fence, config, tail recovery, join) must finish within this.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times the supervisor sends a joining configuration to the leader before it gives up
/// (the recovery is then tried again from the start).
const JOIN_ATTEMPTS: u32 = 3;

/// Why a recovery did not finish. Every kind but [`RecoveryError::Diverged`] is tried again
/// after a backoff.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("no leader to recover from")]
    NoLeader,
    /// The node refused to merge: its log differs from the leader's, or its database belongs
    /// to another cluster. It must be rebuilt.
    #[error("diverged: {0}")]
    Diverged(CallError),
    /// A call failed (the node or the leader did not answer, or refused).
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("the configuration changed during recovery")]
    ConfigChanged,
    #[error("an operator removed the node from the supervisor's nodes during its recovery")]
    Removed,
    #[error(transparent)]
    ShortOfLeader(#[from] ShortOfLeader),
    /// The leader refused the new member set (its log moved past the node's, or the term
    /// changed): nothing was adopted.
    #[error(transparent)]
    JoinRefused(CallError),
    #[error("the leader did not confirm the new member set: {0}")]
    JoinUnconfirmed(String),
    /// The leader has the new member set but the supervisor could not store it: the leader
    /// reports it on every poll, and the active supervisor adopts it from there.
    #[error(transparent)]
    NotStored(#[from] StoreError),
}

impl RecoveryError {
    /// A recovery call's failure, set apart when the node refused for divergence.
    fn from_recover(e: CallError) -> RecoveryError {
        if e.is_divergence() {
            RecoveryError::Diverged(e)
        } else {
            RecoveryError::Call(e)
        }
    }
}

impl Supervisor {
    /// Recovers `node` in the background; the history notes it under way, then its outcome.
    pub(crate) fn start_recovery(self: &Arc<Self>, node: String) {
        if !lock(&self.history).begin_recovery(&node) {
            return; // under way already
        }
        let me = self.clone();
        tokio::spawn(async move {
            let (report, result) = me.recover(&node).await;
            let diverged = matches!(result, Err(RecoveryError::Diverged(_)));
            me.record_recovery(&report, diverged).await;
            lock(&me.history).recovery_finished(report, diverged, Instant::now());
        });
    }

    /// Brings `node` back: bulk catch-up, then a short pause of the leader for the tail, then
    /// membership (DESIGN 6).
    async fn recover(self: &Arc<Self>, node: &str) -> (RecoveryReport, Result<(), RecoveryError>) {
        let started = Instant::now();
        let mut report = RecoveryReport { node: node.to_string(), at_ms: now_ms(), ..Default::default() };
        let result = self.try_recover(node, &mut report).await;
        report.duration_ms = started.elapsed().as_millis() as u64;
        metrics::counter!("rmw_recoveries_total", "result" => if result.is_ok() { "ok" } else { "failed" })
            .increment(1);
        if let (Ok(()), Some(pause)) = (&result, report.commit_pause_ms) {
            metrics::histogram!("rmw_recovery_seconds").record(report.duration_ms as f64 / 1000.0);
            metrics::histogram!("rmw_recovery_pause_seconds").record(pause as f64 / 1000.0);
        }
        match &result {
            Ok(()) => {
                report.ok = true;
                report.message = match report.snapshot_lsn {
                    Some(lsn) => {
                        format!("rebuilt from the leader's snapshot at LSN {lsn}; in sync and back in the member set")
                    }
                    None => "in sync and back in the member set".into(),
                };
                tracing::info!(%node, entries = report.entries_applied, duration_ms = report.duration_ms,
                    commit_pause_ms = ?report.commit_pause_ms, "recovery done");
            }
            Err(e) => {
                tracing::warn!(%node, error = %e, "recovery did not finish; it will be tried again");
                report.message = e.to_string();
            }
        }
        (report, result)
    }

    async fn try_recover(self: &Arc<Self>, node: &str, report: &mut RecoveryReport) -> Result<(), RecoveryError> {
        let (config, cluster_id) = {
            let state = self.config.lock().await;
            (state.config.clone(), state.cluster_id)
        };
        let leader = config.leader.clone().ok_or(RecoveryError::NoLeader)?;
        self.agents.fence(node, &config, CONTROL_TIMEOUT).await?;
        let req = RecoverRequest { term: config.term, leader: leader.clone(), cluster_id };
        let bulk = match self.agents.recover(node, &req, BULK_RECOVERY_TIMEOUT).await {
            Err(e) if e.is_log_trimmed() => {
                self.empty_behind_horizon(node, &config, &e).await?;
                self.agents.recover(node, &req, BULK_RECOVERY_TIMEOUT).await
            }
            answer => answer,
        }
        .map_err(RecoveryError::from_recover)?;
        report.entries_applied += bulk.entries_applied;
        report.snapshot_lsn = bulk.snapshot_lsn;

        let mut state = self.config.lock().await;
        if state.config != config {
            return Err(RecoveryError::ConfigChanged);
        }
        // An operator removed the node meanwhile: it must never become a member again.
        let nodes = state.nodes_or(&self.settings.agents).to_vec();
        if !nodes.iter().any(|n| n == node) {
            return Err(RecoveryError::Removed);
        }
        let paused_at = Instant::now();
        let pause = PauseRequest { term: config.term, max_ms: MAX_PAUSE.as_millis() as u64 };
        // Bounded by the pause's own length: a leader stuck in a round must not hold the
        // supervisor (and so any failover) for long.
        let paused = self.agents.pause(&leader, &pause, MAX_PAUSE).await?;
        let tail = self.agents.recover(node, &req, CONTROL_TIMEOUT).await;
        let next = with_member(&config, &nodes, node);
        let caught_up = match tail {
            Ok(tail) => {
                report.entries_applied += tail.entries_applied;
                caught_up_to(tail.applied_lsn, paused.applied_lsn).map_err(RecoveryError::from)
            }
            Err(e) => Err(RecoveryError::from_recover(e)),
        };
        // Step one: the leader stores the new member set, and only if its log still ends where
        // the node's does (it checks that itself, with no round in flight). Adopting it ends
        // the pause. Step two, below: the supervisor records it.
        let joined = match caught_up {
            Ok(lsn) => self.join(&leader, &next, lsn).await,
            Err(e) => Err(e),
        };
        report.commit_pause_ms = Some(paused_at.elapsed().as_millis() as u64);
        if let Err(e) = joined {
            // The old configuration ends the pause; the leader never took the new one.
            if let Err(r) = self.agents.send_config(&leader, &config, CONTROL_TIMEOUT).await {
                tracing::warn!(error = %r, "the leader did not confirm the resume; its pause ends by itself");
            }
            return Err(e);
        }
        // The history's event goes in the same write as the new member set.
        let mut stored = Persisted { config: next.clone(), ..state.clone() };
        let message = match report.snapshot_lsn {
            Some(lsn) => format!(
                "{node} is back in the member set (rebuilt from the leader's snapshot at LSN {lsn}, then {} entries applied)",
                report.entries_applied
            ),
            None => format!("{node} is back in the member set ({} entries applied)", report.entries_applied),
        };
        push_event(&mut stored.events, event(HistoryKind::Recovery, Some(node), next.term, true, message));
        // Not stored (the store is down, another supervisor acts): the leader has the new
        // member set and reports it on every poll; the active supervisor adopts it from there.
        // It is pushed all the same: the leader holds it already, and the node must hear that
        // it is a member (an adoption from the leader's report tells no agent).
        let saved = self.config.save(&mut state, stored).await;
        drop(state);
        self.push_config(&next);
        saved.map_err(RecoveryError::from)
    }

    /// Empties `node`, which the leader's log no longer reaches (`--retain-log`), so that the
    /// next recovery loads the leader's snapshot: the node is outside the member set, so it
    /// holds nothing the members lack.
    async fn empty_behind_horizon(
        &self,
        node: &str,
        config: &ClusterConfig,
        why: &CallError,
    ) -> Result<(), RecoveryError> {
        let mut state = self.config.lock().await;
        if state.config != *config {
            return Err(RecoveryError::ConfigChanged);
        }
        // Under the configuration's lock, like an operator's rebuild: kept short (emptying is a
        // TRUNCATE); a node too slow for it is tried again by the next recovery.
        let wiped = self.agents.reset(node, config, CONTROL_TIMEOUT).await?;
        let message = format!(
            "{node} was behind the leader's log horizon; its database was emptied ({wiped} log entries) to rebuild it from a snapshot"
        );
        tracing::warn!(%node, wiped, reason = %why, "rebuilding a node from a snapshot");
        let term = config.term;
        self.record_locked(&mut state, [event(HistoryKind::Rebuild, Some(node), term, true, message)]).await;
        Ok(())
    }

    /// Records a failed recovery in the durable history (a success is recorded with its new
    /// member set): the first failure of a streak, and a divergence as an event of its own (the
    /// node then needs a rebuild).
    async fn record_recovery(&self, report: &RecoveryReport, diverged: bool) {
        if report.ok {
            return;
        }
        let mut state = self.config.lock().await;
        if !self.config.acting() || !worth_recording(&state.events, &report.node, false) {
            return;
        }
        let term = state.config.term;
        let node = Some(report.node.as_str());
        let message = format!("the recovery of {} did not finish: {}", report.node, report.message);
        let mut events = vec![event(HistoryKind::Recovery, node, term, false, message)];
        if diverged {
            let message = format!(
                "{}'s log differs from the leader's: it is never recovered automatically; rebuild it \
                 (POST /rebuild) to recover it from scratch",
                report.node
            );
            events.push(event(HistoryKind::Diverged, node, term, false, message));
        }
        self.record_locked(&mut state, events).await;
    }

    /// Sends `next` to the leader until it confirms it stored it (or refuses it for good):
    /// the joining node must not count as a member anywhere before the leader has it.
    async fn join(&self, leader: &str, next: &ClusterConfig, applied_lsn: Lsn) -> Result<(), RecoveryError> {
        let req = JoinRequest { config: next.clone(), applied_lsn };
        let mut last = String::new();
        for attempt in 1..=JOIN_ATTEMPTS {
            match self.agents.join(leader, &req, CONTROL_TIMEOUT).await {
                Ok(status) if status.config_version == next.version && status.term == next.term => return Ok(()),
                Ok(status) => {
                    last = format!("the leader answered with configuration version {}", status.config_version)
                }
                // Refused: the leader's log moved past the node's, or the term changed. The
                // recovery starts over; nothing was adopted.
                Err(e) if e.is_conflict() => return Err(RecoveryError::JoinRefused(e)),
                Err(e) => last = e.to_string(),
            }
            // The answer may have been lost after the leader stored it: its status tells.
            if let Ok(status) = self.agents.status(leader, PUSH_TIMEOUT).await {
                if status.term == next.term && status.config_version >= next.version {
                    return Ok(());
                }
            }
            tracing::warn!(attempt, error = %last, "the leader did not confirm the joining configuration; sending it again");
        }
        Err(RecoveryError::JoinUnconfirmed(last))
    }

    /// A member that must stay (the floor) but voted NO because it is behind: it catches up
    /// from the leader's log where it is. The leader cannot commit without it meanwhile, so
    /// no entry can slip past.
    pub(crate) fn recover_in_place(self: Arc<Self>, member: String, config: ClusterConfig, cluster_id: Option<Uuid>) {
        if !lock(&self.history).begin_recovery(&member) {
            return;
        }
        tokio::spawn(async move {
            let result = match config.leader.clone() {
                Some(leader) => {
                    let req = RecoverRequest { term: config.term, leader, cluster_id };
                    self.agents.recover(&member, &req, BULK_RECOVERY_TIMEOUT).await.map_err(RecoveryError::Call)
                }
                None => Err(RecoveryError::NoLeader),
            };
            match &result {
                Ok(r) => {
                    tracing::info!(%member, entries = r.entries_applied, "a member behind the leader caught up in place")
                }
                Err(e) => tracing::warn!(%member, error = %e, "a member behind the leader could not catch up in place"),
            }
            lock(&self.history).end_recovery_in_place(&member);
        });
    }
}
