//! Following the leader: one run's idea of where the leader is, redirects, waits and the
//! supervisor's word (see the module above for the rules).

use std::time::{Duration, Instant};

use protocol::{CommitResponse, ErrorBody};
use reqwest::StatusCode;
use serde::Serialize;
use uuid::Uuid;

use super::error::{describe_send_error, error_message, quote};
use super::{RunError, Runner};

/// First pause between tries while no leader answers; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(1);
/// 421 redirects followed in a row before the run stops believing them and waits instead.
pub const MAX_REDIRECTS: usize = 3;

/// One run's idea of where the leader is, and its deadline for finding one.
pub(super) struct Route<'a> {
    runner: &'a Runner,
    /// The agent believed to be the leader; requests go here.
    pub(super) agent: String,
    deadline: Instant,
    pub(super) notes: Vec<String>,
    /// When the run started waiting for a leader, and what it first saw.
    waiting: Option<(Instant, String)>,
}

impl<'a> Route<'a> {
    pub(super) fn new(runner: &'a Runner, agent: &str, deadline: Instant) -> Self {
        Route { runner, agent: agent.trim().to_string(), deadline, notes: Vec::new(), waiting: None }
    }

    /// The notes, with how long the run waited for a leader, if it did.
    pub(super) fn finish(mut self) -> Vec<String> {
        if let Some((since, why)) = self.waiting.take() {
            self.notes.push(format!(
                "waited {:.1} s for the leader {} to answer (at first: {why})",
                since.elapsed().as_secs_f64(),
                self.agent
            ));
        }
        self.notes
    }

    /// Posts `body` to the leader and returns its answer. Follows 421s; when the leader cannot
    /// be reached or answers 503, asks the supervisor and tries again until the deadline.
    /// `txn` is the commit's id (`None` for a read), the same in every try.
    pub(super) async fn send_to_leader(
        &mut self,
        path: &'static str,
        body: &impl Serialize,
        txn: Option<Uuid>,
    ) -> Result<(StatusCode, Vec<u8>), RunError> {
        let mut redirects = 0;
        let mut pause = FIRST_PAUSE;
        // Whether a try may have been carried out without its answer reaching us.
        let mut outcome_unknown = false;
        loop {
            let (why, agent_reachable) = match self.runner.post(&self.agent, path, body).await {
                Ok((StatusCode::MISDIRECTED_REQUEST, bytes)) => {
                    let error = serde_json::from_slice::<ErrorBody>(&bytes).ok();
                    match error.as_ref().and_then(|e| e.leader.clone()) {
                        Some(leader) if leader != self.agent && redirects < MAX_REDIRECTS => {
                            self.notes
                                .push(format!("{} is not the leader; sent {path} to the leader {leader}", self.agent));
                            self.agent = leader;
                            redirects += 1;
                            continue;
                        }
                        Some(leader) => (
                            format!(
                                "{} names {leader} as the leader, which does not take it: a failover may be under way",
                                self.agent
                            ),
                            true,
                        ),
                        None => (
                            format!(
                                "{} is not the leader and knows no leader ({})",
                                self.agent,
                                error.map_or_else(|| quote(&bytes), |e| e.message)
                            ),
                            true,
                        ),
                    }
                }
                Ok((StatusCode::SERVICE_UNAVAILABLE, bytes)) => {
                    // A commit that a member refused is an answer: ABORT, nothing applied.
                    if txn.is_some() && serde_json::from_slice::<CommitResponse>(&bytes).is_ok() {
                        return Ok((StatusCode::SERVICE_UNAVAILABLE, bytes));
                    }
                    let message = error_message(&bytes);
                    // The agent names the transaction when its outcome is undecided (a leader
                    // deposed mid-commit); other 503s come before anything was done.
                    if txn.is_some_and(|id| message.contains(&id.to_string())) {
                        outcome_unknown = true;
                    }
                    (format!("{} is unavailable: {message}", self.agent), true)
                }
                Ok(answer) => return Ok(answer),
                Err(e) => {
                    // A refused connection sent nothing; anything later may have been carried out.
                    if txn.is_some() && !e.is_connect() {
                        outcome_unknown = true;
                    }
                    (describe_send_error(&self.agent, path, &e), !e.is_connect())
                }
            };
            let unknown_txn = txn.filter(|_| outcome_unknown);

            // No leader answered: ask the supervisor where the leader is now.
            let supervisor_says = match self.runner.ask_supervisor().await {
                Ok(Some(view)) => match view.leader.filter(|l| *l != self.agent) {
                    Some(leader) if redirects < MAX_REDIRECTS => {
                        self.notes
                            .push(format!("{why}; the supervisor names {leader} as the leader: sent {path} there"));
                        self.agent = leader;
                        redirects += 1;
                        continue;
                    }
                    _ => format!("the supervisor says: {}", view.message),
                },
                Ok(None) if !agent_reachable => {
                    return Err(RunError::Unavailable {
                        message: format!("{why}; no supervisor to ask where the leader is"),
                        unknown_txn,
                    });
                }
                Ok(None) => String::new(),
                Err(e) if !agent_reachable => {
                    return Err(RunError::Unavailable {
                        message: format!("{why}; {e}: the cluster seems to be stopped"),
                        unknown_txn,
                    });
                }
                Err(e) => e,
            };
            let now = Instant::now();
            let waited_since = self.waiting.get_or_insert_with(|| (now, why.clone())).0;
            if now + pause > self.deadline {
                let seen = if supervisor_says.is_empty() { why } else { format!("{why}; {supervisor_says}") };
                return Err(RunError::Unavailable {
                    message: format!(
                        "no leader answered within {:.1} s: {seen}",
                        (now - waited_since).as_secs_f64().max(0.1)
                    ),
                    unknown_txn,
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
            // A wait is a fresh start: the redirects seen now may come from a newer term.
            redirects = 0;
        }
    }
}
