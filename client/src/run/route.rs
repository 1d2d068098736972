//! Following the leader: one run's idea of where the leader is, redirects, waits and the
//! supervisor's word (see the module above for the rules).

use std::time::{Duration, Instant};

use protocol::{CommitResponse, ErrorBody};
use reqwest::StatusCode;
use serde::Serialize;
use uuid::Uuid;

use super::error::{error_message, quote, NoAnswer, SendError, SupervisorSays, Unavailable};
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
    waiting: Option<(Instant, NoAnswer)>,
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
            let sent = self.runner.post(&self.agent, path, body).await;
            let seen = match read_try(&self.agent, txn, sent, redirects < MAX_REDIRECTS) {
                Try::Answered(code, bytes) => return Ok((code, bytes)),
                Try::Redirected { leader } => {
                    self.notes.push(format!("{} is not the leader; sent {path} to the leader {leader}", self.agent));
                    self.agent = leader;
                    redirects += 1;
                    continue;
                }
                Try::NoLeader { seen, outcome_unknown: unknown } => {
                    outcome_unknown |= unknown;
                    seen
                }
            };
            let unknown_txn = txn.filter(|_| outcome_unknown);

            // No leader answered: ask the supervisor where the leader is now.
            let supervisor = match self.runner.ask_supervisor().await {
                Ok(Some(view)) => match view.leader.filter(|l| *l != self.agent) {
                    Some(leader) if redirects < MAX_REDIRECTS => {
                        self.notes
                            .push(format!("{seen}; the supervisor names {leader} as the leader: sent {path} there"));
                        self.agent = leader;
                        redirects += 1;
                        continue;
                    }
                    _ => Some(SupervisorSays::Status(view.message)),
                },
                Ok(None) if !seen.agent_reachable() => {
                    return Err(RunError::unavailable(Unavailable::NoSupervisor { seen }, unknown_txn));
                }
                Ok(None) => None,
                Err(supervisor) if !seen.agent_reachable() => {
                    return Err(RunError::unavailable(Unavailable::ClusterStopped { seen, supervisor }, unknown_txn));
                }
                Err(e) => Some(SupervisorSays::Unreachable(e)),
            };
            let now = Instant::now();
            let waited_since = self.waiting.get_or_insert_with(|| (now, seen.clone())).0;
            if now + pause > self.deadline {
                let cause = Unavailable::NoLeaderWithin { waited: now - waited_since, seen, supervisor };
                return Err(RunError::unavailable(cause, unknown_txn));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
            // A wait is a fresh start: the redirects seen now may come from a newer term.
            redirects = 0;
        }
    }
}

/// What one try at the leader came to.
#[derive(Debug, PartialEq)]
enum Try {
    /// An answer for the caller: a success, a conflict, a commit's ABORT, or an error it maps.
    Answered(StatusCode, Vec<u8>),
    /// A node that is not the leader named the leader: the request goes there.
    Redirected { leader: String },
    /// No leader answered. `outcome_unknown`: the try was a commit that may have been carried
    /// out without its answer reaching us.
    NoLeader { seen: NoAnswer, outcome_unknown: bool },
}

/// Reads one try's result: what `agent` answered (or why it did not) to a request for the
/// commit `txn` (`None` for a read). `may_redirect`: the run still follows a 421's leader.
fn read_try(agent: &str, txn: Option<Uuid>, sent: Result<(StatusCode, Vec<u8>), SendError>, may_redirect: bool) -> Try {
    let agent = agent.to_string();
    match sent {
        Ok((StatusCode::MISDIRECTED_REQUEST, bytes)) => {
            let error = serde_json::from_slice::<ErrorBody>(&bytes).ok();
            let seen = match error.as_ref().and_then(|e| e.leader.clone()) {
                Some(leader) if leader != agent && may_redirect => return Try::Redirected { leader },
                Some(leader) => NoAnswer::LeaderRefuses { agent, leader },
                None => NoAnswer::NoLeaderKnown { agent, detail: error.map_or_else(|| quote(&bytes), |e| e.message) },
            };
            Try::NoLeader { seen, outcome_unknown: false }
        }
        Ok((StatusCode::SERVICE_UNAVAILABLE, bytes)) => {
            // A commit that a member refused is an answer: ABORT, nothing applied.
            if txn.is_some() && serde_json::from_slice::<CommitResponse>(&bytes).is_ok() {
                return Try::Answered(StatusCode::SERVICE_UNAVAILABLE, bytes);
            }
            let message = error_message(&bytes);
            let outcome_unknown = txn.is_some() && outcome_not_known(&bytes);
            Try::NoLeader { seen: NoAnswer::Unavailable { agent, message }, outcome_unknown }
        }
        Ok((code, bytes)) => Try::Answered(code, bytes),
        // A refused connection sent nothing; anything later may have been carried out.
        Err(e) => Try::NoLeader { outcome_unknown: txn.is_some() && !e.sent_nothing(), seen: NoAnswer::Unsent(e) },
    }
}

/// Whether a 503 says that the commit's outcome is not known yet (a leader deposed
/// mid-commit): the agent's code `outcome_unknown`. Its other 503s come before anything was
/// done.
fn outcome_not_known(bytes: &[u8]) -> bool {
    serde_json::from_slice::<ErrorBody>(bytes).is_ok_and(|e| e.error == "outcome_unknown")
}

#[cfg(test)]
mod tests {
    use protocol::{AbortReason, Outcome};
    use serde_json::json;

    use super::*;

    const AGENT: &str = "127.0.0.1:8000";

    fn answer(code: StatusCode, body: &impl Serialize) -> Result<(StatusCode, Vec<u8>), SendError> {
        Ok((code, serde_json::to_vec(body).unwrap()))
    }

    fn no_leader(seen: NoAnswer, outcome_unknown: bool) -> Try {
        Try::NoLeader { seen, outcome_unknown }
    }

    #[test]
    fn a_421_naming_another_leader_is_followed_while_redirects_are_left() {
        let named = answer(
            StatusCode::MISDIRECTED_REQUEST,
            &json!({"error": "not_leader", "message": "not the leader", "leader": "127.0.0.1:8001"}),
        );
        assert_eq!(read_try(AGENT, None, named.clone(), true), Try::Redirected { leader: "127.0.0.1:8001".into() });
        let refuses = NoAnswer::LeaderRefuses { agent: AGENT.into(), leader: "127.0.0.1:8001".into() };
        assert_eq!(read_try(AGENT, None, named, false), no_leader(refuses, false));

        let itself =
            answer(StatusCode::MISDIRECTED_REQUEST, &json!({"error": "not_leader", "message": "", "leader": AGENT}));
        let refuses = NoAnswer::LeaderRefuses { agent: AGENT.into(), leader: AGENT.into() };
        assert_eq!(read_try(AGENT, None, itself, true), no_leader(refuses, false));

        let unknown = answer(StatusCode::MISDIRECTED_REQUEST, &json!({"error": "not_leader", "message": "no leader"}));
        let seen = NoAnswer::NoLeaderKnown { agent: AGENT.into(), detail: "no leader".into() };
        assert_eq!(read_try(AGENT, None, unknown, true), no_leader(seen, false));
    }

    #[test]
    fn a_503_leaves_a_commit_undecided_only_when_its_code_says_so() {
        let id = Uuid::new_v4();
        let message = format!("transaction {id}: the leader was deposed before the outcome was known");
        let deposed = answer(StatusCode::SERVICE_UNAVAILABLE, &json!({"error": "outcome_unknown", "message": message}));
        let seen = NoAnswer::Unavailable { agent: AGENT.into(), message: message.clone() };
        assert_eq!(read_try(AGENT, Some(id), deposed.clone(), true), no_leader(seen.clone(), true));
        assert_eq!(read_try(AGENT, None, deposed, true), no_leader(seen.clone(), false), "a read decides nothing");
        // Another 503, even one that names the transaction, came before anything was done.
        let busy = answer(StatusCode::SERVICE_UNAVAILABLE, &json!({"error": "unavailable", "message": message}));
        assert_eq!(read_try(AGENT, Some(id), busy, true), no_leader(seen, false));

        // A member refused the commit: an ABORT, which is an answer.
        let abort = CommitResponse {
            commit: Outcome::Abort,
            txn_id: id,
            commit_ts: None,
            lsn: None,
            reason: Some(AbortReason::ReplicationFailed),
            key: None,
            message: None,
        };
        let refused = answer(StatusCode::SERVICE_UNAVAILABLE, &abort);
        let bytes = serde_json::to_vec(&abort).unwrap();
        assert_eq!(read_try(AGENT, Some(id), refused, true), Try::Answered(StatusCode::SERVICE_UNAVAILABLE, bytes));
    }

    #[test]
    fn a_commit_that_left_may_have_happened_but_one_never_sent_did_not() {
        let id = Some(Uuid::new_v4());
        let timeout = |connecting| SendError::Timeout { agent: AGENT.into(), path: "/commit/", connecting };
        let refused = SendError::Connect { agent: AGENT.into(), cause: "Connection refused".into() };
        assert_eq!(read_try(AGENT, id, Err(timeout(false)), true), no_leader(NoAnswer::Unsent(timeout(false)), true));
        assert_eq!(read_try(AGENT, id, Err(timeout(true)), true), no_leader(NoAnswer::Unsent(timeout(true)), false));
        assert_eq!(read_try(AGENT, id, Err(refused.clone()), true), no_leader(NoAnswer::Unsent(refused), false));
    }

    #[test]
    fn other_answers_go_to_the_caller() {
        for code in [StatusCode::OK, StatusCode::CONFLICT, StatusCode::BAD_REQUEST, StatusCode::INTERNAL_SERVER_ERROR] {
            assert_eq!(read_try(AGENT, None, Ok((code, b"{}".to_vec())), true), Try::Answered(code, b"{}".to_vec()));
        }
    }
}
