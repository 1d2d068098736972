//! Carrying out an election that [`crate::failover::decide`] chose: store the new term, fence,
//! promote, report, then tell every agent and registered client.
//!
//! Invariants kept here:
//! - The new term is durable (and won against any other supervisor, by the store's revision)
//!   before any agent hears of it: two supervisors never both win a term.
//! - The election waits only for the candidate's fence: once the candidate refuses the old
//!   term, the old leader (which needs every member's YES) cannot commit again. The other
//!   agents are fenced in the background.
//! - A candidate that cannot be fenced or promoted is counted ([`History::promotion_failed`])
//!   and the next poll decides again; nothing half-done is kept but the durable term.
//!
//! [`History::promotion_failed`]: crate::history::History::promotion_failed

use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::operator::HistoryKind;
use protocol::supervisor_status::FailoverReport;
use protocol::{ClusterConfig, LeaderChanged, Term};

use crate::config_keeper::lock;
use crate::history::push_event;
use crate::run::{event, now_ms, Supervisor, PUSH_TIMEOUT};
use crate::store::Persisted;

/// Promoting (the candidate resolves its in-doubt batches) must finish within this.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// Fencing the candidate must be quick: the failover waits for it.
const FENCE_TIMEOUT: Duration = Duration::from_secs(1);

impl Supervisor {
    /// Elects `candidate` with `next` (a new term, or the same term to finish an interrupted
    /// election), if the configuration is still `current`.
    pub(crate) async fn failover(
        self: &Arc<Self>,
        current: &ClusterConfig,
        old_leader: Option<String>,
        candidate: String,
        next: ClusterConfig,
    ) {
        let decided = Instant::now();
        let last_ok = old_leader.as_ref().and_then(|old| self.observations.last_ok(old));
        let mut state = self.config.lock().await;
        if state.config != *current {
            return;
        }
        // 1. The new term is durable before anyone hears of it, and only if no other
        //    supervisor wrote since this one read: two can never both win a term.
        //    The history's event goes in the same write: one write per election keeps two
        //    supervisors racing for the store from conflicting more often than they must.
        let mut stored = Persisted { config: next.clone(), ..state.clone() };
        let message = match &old_leader {
            Some(old) => format!("{old} failed: {candidate} elected leader of term {}", next.term),
            None => format!("{candidate}'s interrupted election finished in term {}", next.term),
        };
        push_event(&mut stored.events, event(HistoryKind::Failover, Some(&candidate), next.term, true, message));
        if let Err(e) = self.config.save(&mut state, stored).await {
            tracing::error!(error = %e, "could not store the new term; not failing over");
            return;
        }
        tracing::warn!(old = ?old_leader, new = %candidate, term = next.term, "leader failed: electing the next member");
        // 2. Fence every reachable agent with the new term. Only the candidate's fence is waited
        //    for; the others are fenced in the background.
        for addr in state.nodes_or(&self.settings.agents).iter().filter(|a| **a != candidate) {
            let (me, next, addr) = (self.clone(), next.clone(), addr.clone());
            tokio::spawn(async move {
                if let Err(e) = me.agents.fence(&addr, &next, FENCE_TIMEOUT).await {
                    tracing::debug!(%addr, error = %e, "not fenced (unreachable)");
                }
            });
        }
        if let Err(e) = self.agents.fence(&candidate, &next, FENCE_TIMEOUT).await {
            tracing::error!(%candidate, error = %e, "the candidate could not be fenced; trying again at the next poll");
            lock(&self.history).promotion_failed(&candidate, Instant::now());
            return;
        }
        // 3. The new leader resolves in-doubt batches, then takes commits.
        let promoted = match self.agents.promote(&candidate, &next, CONTROL_TIMEOUT).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(%candidate, error = %e, "promotion failed; a new election follows at the next poll");
                lock(&self.history).promotion_failed(&candidate, Instant::now());
                return;
            }
        };
        let report = FailoverReport {
            at_ms: now_ms(),
            old_leader: old_leader.clone(),
            new_leader: candidate.clone(),
            term: next.term,
            detection_ms: last_ok.map_or(0, |t| decided.saturating_duration_since(t).as_millis() as u64),
            election_ms: decided.elapsed().as_millis() as u64,
            unavailable_ms: last_ok.map_or(0, |t| t.elapsed().as_millis() as u64),
            in_doubt_committed: promoted.in_doubt_committed,
            in_doubt_aborted: promoted.in_doubt_aborted,
        };
        tracing::warn!(
            old = ?old_leader, new = %candidate, term = next.term,
            detection_ms = report.detection_ms, election_ms = report.election_ms,
            unavailable_ms = report.unavailable_ms,
            in_doubt_committed = report.in_doubt_committed, in_doubt_aborted = report.in_doubt_aborted,
            "failover done: writes unavailable for {} ms", report.unavailable_ms
        );
        self.observations.leadership_changed();
        drop(state);
        metrics::counter!("rmw_failovers_total").increment(1);
        metrics::histogram!("rmw_failover_unavailable_seconds").record(report.unavailable_ms as f64 / 1000.0);
        lock(&self.history).failover_done(report);
        self.push_config(&next);
        let me = self.clone();
        tokio::spawn(async move { me.announce(&candidate, next.term).await });
    }

    /// Tells every registered client the new leader (`POST /leader_changed/`).
    pub(crate) async fn announce(&self, leader: &str, term: Term) {
        let clients = self.config.lock().await.clients.clone();
        let body = LeaderChanged { leader: leader.to_string(), term: Some(term) };
        futures::future::join_all(clients.iter().map(|url| {
            let body = &body;
            async move {
                if let Err(e) = self.agents.announce(url, body, PUSH_TIMEOUT).await {
                    tracing::warn!(%url, error = %e, "could not tell a client the new leader");
                }
            }
        }))
        .await;
    }
}
