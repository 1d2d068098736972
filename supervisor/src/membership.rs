//! Changes the leader and the web clients ask for: removing a member the leader reports
//! ([`crate::failover::on_failure_report`] decides, with the supervisor's own probe as
//! evidence), and registering a client to hear of every new leader.
//!
//! Invariants kept here:
//! - A member is removed only with evidence, and never below the durability floor; a member
//!   kept at the floor that voted NO is brought up to date in place.
//! - A removal is stored before anyone hears of it; the leader gets it in the answer, the
//!   other agents by push.

use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::{ClusterConfig, FailureKind, FailureReport, Term};

use crate::config_keeper::lock;
use crate::failover::{on_failure_report, ReportCheck};
use crate::run::Supervisor;
use crate::store::{Persisted, StoreError};

/// The supervisor's own probe of a member the leader reports unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// Why a failure report did not change the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The report is from another term, about the leader, or without evidence; or the member
    /// is needed for the durability floor.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Supervisor {
    /// The leader could not reach `report.member`: the configuration without it (unchanged if
    /// it was already removed), or why it stays.
    pub(crate) async fn on_failure_report(
        self: &Arc<Self>,
        report: &FailureReport,
    ) -> Result<ClusterConfig, ReportError> {
        // The supervisor's own view of the member, taken before the state lock: a member the
        // leader cannot reach but the supervisor can may be cut from the leader only.
        let supervisor_reaches =
            report.kind == FailureKind::Unreachable && self.agents.probe(&report.member, PROBE_TIMEOUT).await.is_ok();
        let reported_before = lock(&self.history).reported_before(&report.member, Instant::now());
        let check = ReportCheck { supervisor_reaches, reported_before };
        let mut state = self.config.lock().await;
        match on_failure_report(&state.config, report, check, self.settings.min_copies) {
            Err(refusal) => {
                tracing::warn!(member = %report.member, kind = ?report.kind, reason = %report.reason,
                    refused = %refusal.message, "kept a member the leader reported");
                lock(&self.history).kept_after_report(&report.member, Instant::now());
                if refusal.at_floor && report.kind == FailureKind::VotedNo {
                    // It stays (the floor) but is behind: bring it up to date where it is.
                    self.clone().recover_in_place(report.member.clone(), state.config.clone(), state.cluster_id);
                }
                Err(ReportError::Refused(refusal.message))
            }
            Ok(next) => {
                if next != state.config {
                    tracing::warn!(member = %report.member, kind = ?report.kind, reason = %report.reason,
                        "the leader reported a member, with evidence: removing it");
                    let stored = Persisted { config: next.clone(), ..state.clone() };
                    self.config.save(&mut state, stored).await?;
                    lock(&self.history).removed_after_report(&report.member);
                    // The leader gets the configuration in this answer; the others by push.
                    self.push_config(&next);
                }
                Ok(next)
            }
        }
    }

    /// Registers a client's `/leader_changed/` URL (kept in the store): the current leader and
    /// term.
    pub(crate) async fn register_client(&self, url: &str) -> Result<(Option<String>, Term), StoreError> {
        let mut state = self.config.lock().await;
        if !state.clients.iter().any(|c| c == url) {
            let mut next = state.clone();
            next.clients.push(url.to_string());
            self.config.save(&mut state, next).await?;
        }
        Ok((state.config.leader.clone(), state.config.term))
    }
}
