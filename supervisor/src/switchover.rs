//! A planned change of leader (`POST /switchover`): pause the leader, wait until the target
//! has applied everything the leader has, then elect the target as a failover would, keeping
//! the old leader as a member. The safety argument is in docs/guarantees.md ("A switchover
//! loses no acknowledged commit").
//!
//! Invariants kept here:
//! - The configuration is held for the whole switchover: no failover, recovery or removal
//!   interleaves, and a second switchover waits and then sees the new leader.
//! - Nothing is stored before the target has applied the LSN the paused leader reports; until
//!   then a failure resumes the leader with the old configuration and changes nothing.
//! - From the stored new term on, it is an election ([`crate::election`]'s order: durable term,
//!   fence, promote); if it cannot finish, the next poll finishes it (`Action::Promote`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::operator::{HistoryKind, OperatorRefusal, SwitchoverResponse};
use protocol::{ClusterConfig, Lsn, PauseRequest, Role, Term};

use crate::planned::{check_switchover, switchover_config, Refused};
use crate::run::{event, Supervisor, PUSH_TIMEOUT};
use crate::store::{Persisted, StoreError};

/// The leader's pause ends by itself after this, should the supervisor die mid-switchover.
/// Long enough for the catch-up wait, the store's write, a fence and a promotion.
const SWITCHOVER_PAUSE: Duration = Duration::from_secs(2);
/// How long the target may take to apply what the paused leader has.
const CATCH_UP_WAIT: Duration = Duration::from_secs(1);
/// How often the target's applied LSN is read during the catch-up wait.
const CATCH_UP_POLL: Duration = Duration::from_millis(5);
/// Fencing the target and the old leader: both answered a poll a moment ago.
const FENCE_TIMEOUT: Duration = Duration::from_secs(1);
/// The target resolves in-doubt batches before it leads.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a switchover did not happen, or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum SwitchoverError {
    /// Refused before anything changed (409).
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The new term could not be stored: nothing changed, the leader was resumed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The new term is stored but the target could not be fenced or promoted: the next poll
    /// finishes the election (503).
    #[error("{0}")]
    Unfinished(String),
}

impl Supervisor {
    /// Moves the leadership to `to`, a live member in sync.
    pub(crate) async fn switchover(self: &Arc<Self>, to: &str) -> Result<SwitchoverResponse, SwitchoverError> {
        let mut state = self.config.lock().await;
        let observed = self.observations.observed();
        let plan = check_switchover(&state.config, &observed, to)?;
        let current = state.config.clone();
        let leader = plan.leader;

        // 1. The leader finishes its rounds in flight and starts no new one.
        let paused_at = Instant::now();
        let pause = PauseRequest { term: current.term, max_ms: SWITCHOVER_PAUSE.as_millis() as u64 };
        let paused = match self.agents.pause(&leader, &pause, SWITCHOVER_PAUSE).await {
            Ok(paused) => paused,
            Err(e) => {
                self.resume(&leader, &current).await;
                // It serves (the polls say so) but did not stop: most often a round in flight
                // waits for a member that does not answer, until the leader has it removed.
                return Err(Refused {
                    code: OperatorRefusal::Busy,
                    message: format!(
                        "the leader {leader} did not pause within {} ms ({e}): a round in flight is probably \
                         waiting for a member that does not answer; nothing changed: try again once every \
                         member answers or the unreachable one is removed",
                        SWITCHOVER_PAUSE.as_millis()
                    ),
                }
                .into());
            }
        };
        // 2. The target holds everything the leader applied, hence every acknowledged commit.
        if let Err(reached) = self.wait_for(to, paused.applied_lsn).await {
            self.resume(&leader, &current).await;
            return Err(Refused {
                code: OperatorRefusal::NotInSync,
                message: format!(
                    "{to} did not catch up with the paused leader within {} ms ({}); writes resumed on {leader} \
                     and nothing changed: try again",
                    CATCH_UP_WAIT.as_millis(),
                    reached.describe(paused.applied_lsn),
                ),
            }
            .into());
        }
        // 3. The election: the new term durable first, then fence, then promote.
        let next = switchover_config(&current, &observed, to);
        let stored = Persisted { config: next.clone(), ..state.clone() };
        if let Err(e) = self.config.save(&mut state, stored).await {
            self.resume(&leader, &current).await;
            return Err(e.into());
        }
        tracing::warn!(old = %leader, new = %to, term = next.term, lsn = paused.applied_lsn, "switchover: electing the target");
        for addr in state.nodes_or(&self.settings.agents).iter().filter(|a| **a != to && **a != leader) {
            let (me, next, addr) = (self.clone(), next.clone(), addr.clone());
            tokio::spawn(async move {
                if let Err(e) = me.agents.fence(&addr, &next, FENCE_TIMEOUT).await {
                    tracing::debug!(%addr, error = %e, "not fenced (unreachable)");
                }
            });
        }
        // The old leader is fenced too, so that it stops taking commits at once (deposed, it
        // answers `not_leader`); if it does not answer, the new term reaches it by push or poll.
        let (target_fence, old_fence) =
            tokio::join!(self.agents.fence(to, &next, FENCE_TIMEOUT), self.agents.fence(&leader, &next, FENCE_TIMEOUT));
        if let Err(e) = old_fence {
            tracing::warn!(old = %leader, error = %e, "the old leader was not fenced; the new term reaches it later");
        }
        let finished = match target_fence {
            Ok(_) => self.agents.promote(to, &next, PROMOTE_TIMEOUT).await.map(drop),
            Err(e) => Err(e),
        };
        if let Err(e) = finished {
            // The next decision finishes the election: on polls of the new term, not older ones.
            self.observations.leadership_changed();
            tracing::error!(target = %to, error = %e, "switchover stored but not finished; the next poll finishes the election");
            return Err(SwitchoverError::Unfinished(format!(
                "term {} naming {to} leader is stored, but {to} could not be fenced or promoted ({e}); the \
                 supervisor finishes the election at its next poll (GET /status)",
                next.term
            )));
        }
        let writes_paused_ms = paused_at.elapsed().as_millis() as u64;
        let message = format!(
            "{to} leads term {} after {leader} (a replica and member now); writes paused for {writes_paused_ms} ms",
            next.term
        );
        tracing::warn!(old = %leader, new = %to, term = next.term, writes_paused_ms, "switchover done");
        self.record_locked(&mut state, [event(HistoryKind::Switchover, Some(to), next.term, true, message.clone())])
            .await;
        self.observations.leadership_changed();
        drop(state);
        self.push_config(&next);
        let (me, new_leader, term) = (self.clone(), to.to_string(), next.term);
        tokio::spawn(async move { me.announce(&new_leader, term).await });
        self.until_polls_show(to, next.term).await;
        Ok(SwitchoverResponse { leader: to.to_string(), term: next.term, writes_paused_ms, message })
    }

    /// Waits until `node` has applied `lsn`, at most `CATCH_UP_WAIT`; where it got otherwise.
    async fn wait_for(&self, node: &str, lsn: Lsn) -> Result<(), Reached> {
        let deadline = Instant::now() + CATCH_UP_WAIT;
        let mut reached = Reached::default();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.agents.status(node, left.clamp(Duration::from_millis(50), PUSH_TIMEOUT)).await {
                Ok(status) if status.applied_lsn >= lsn => return Ok(()),
                Ok(status) => reached.lsn = Some(status.applied_lsn),
                Err(e) => reached.error = Some(e.to_string()),
            }
            if Instant::now() >= deadline {
                return Err(reached);
            }
            tokio::time::sleep(CATCH_UP_POLL).await;
        }
    }

    /// Waits, at most a few poll intervals, until the polls show `leader` leading `term`, so that
    /// a `/status` read right after the answer shows the new leader serving (not an election).
    async fn until_polls_show(&self, leader: &str, term: Term) {
        let deadline = Instant::now() + self.settings.poll_interval * 3;
        let leading = |o: &crate::failover::Observed| {
            o.address == leader && o.status.as_ref().is_some_and(|s| s.role == Role::Leader && s.term == term)
        };
        while Instant::now() < deadline && !self.observations.observed().iter().any(leading) {
            tokio::time::sleep(CATCH_UP_POLL).await;
        }
    }

    /// Ends the leader's pause with the configuration it has (its own pause deadline ends it
    /// otherwise).
    async fn resume(&self, leader: &str, config: &ClusterConfig) {
        if let Err(e) = self.agents.send_config(leader, config, PUSH_TIMEOUT).await {
            tracing::warn!(%leader, error = %e, "the leader did not confirm the resume; its pause ends by itself");
        }
    }
}

/// Where the target got during the catch-up wait.
#[derive(Debug, Default)]
struct Reached {
    lsn: Option<Lsn>,
    error: Option<String>,
}

impl Reached {
    /// Where the target got against the paused leader's `lsn`, in words.
    fn describe(&self, lsn: Lsn) -> String {
        match (&self.lsn, &self.error) {
            (Some(reached), _) => {
                format!("it applied LSN {reached}, {} entries short of the leader's {lsn}", lsn - reached)
            }
            (None, Some(e)) => format!("it did not answer: {e}"),
            (None, None) => "it did not answer".into(),
        }
    }
}
