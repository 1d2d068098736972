//! Why a run produced no outcome, by kind. Callers match the variants (the exit code of
//! `client run`, the form's page, the metrics, the run's own decisions); the text is for people.
//!
//! - [`RunError::Parse`] and [`RunError::Rejected`]: the person's move, nothing was applied.
//! - [`RunError::Unavailable`]: the operator's move, with the [`Unavailable`] cause. When a commit
//!   may have been carried out without its answer reaching us, the error carries its id: running
//!   it again with that id is safe and tells the outcome.
//!
//! [`NoAnswer`] is why one try at the leader got no answer to use, and [`SendError`] why a
//! request got no HTTP answer at all.

use std::time::Duration;

use protocol::{ErrorBody, ParseError};
use reqwest::StatusCode;
use uuid::Uuid;

use super::REQUEST_TIMEOUT;
use crate::status::StatusError;

/// Longest piece of an unexpected answer quoted in an error.
const MAX_QUOTED_ANSWER: usize = 200;
/// The shortest wait an error reports, so that a budget spent at once does not read "0.0 s".
const MIN_REPORTED_WAIT: Duration = Duration::from_millis(100);

/// Exit codes of `client run`. 0 is a commit or a read.
pub const EXIT_ABORT: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNAVAILABLE: u8 = 3;

/// Why a run produced no outcome. Each variant tells the user whose move it is.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The text is not a transaction; nothing was sent.
    #[error("{0}")]
    Parse(ParseError),
    /// The request is unusable, or the agent refused it as malformed; nothing was applied.
    #[error("the transaction was refused: {0}")]
    Rejected(Rejection),
    /// No usable answer: the cluster is down, recovering, has no leader, or answered nonsense.
    /// `unknown_txn` is set when a commit may have been carried out without its answer reaching
    /// us: committing again with that id is safe and tells the outcome.
    #[error("{cause}{}", unknown_txn.map(|id| format!(
        "; the outcome of transaction {id} is unknown: run it again with the same txn_id to learn it \
         (nothing is applied twice)")).unwrap_or_default())]
    Unavailable { cause: Box<Unavailable>, unknown_txn: Option<Uuid> },
}

impl RunError {
    /// The cluster is unavailable; `unknown_txn` is a commit whose outcome is not known.
    pub fn unavailable(cause: Unavailable, unknown_txn: Option<Uuid>) -> RunError {
        RunError::Unavailable { cause: Box::new(cause), unknown_txn }
    }

    /// Why the cluster is unavailable, when that is the error.
    pub fn unavailability(&self) -> Option<&Unavailable> {
        match self {
            RunError::Unavailable { cause, .. } => Some(cause),
            RunError::Parse(_) | RunError::Rejected(_) => None,
        }
    }

    /// The exit code of `client run`: 2 for the user's input, 3 for the cluster.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Parse(_) | RunError::Rejected(_) => EXIT_USAGE,
            RunError::Unavailable { .. } => EXIT_UNAVAILABLE,
        }
    }
}

impl From<Unavailable> for RunError {
    /// The cluster is unavailable, and nothing was left undecided.
    fn from(cause: Unavailable) -> RunError {
        RunError::unavailable(cause, None)
    }
}

/// Why a transaction was not sent, or was refused as malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// It neither reads nor writes.
    #[error("the transaction is empty")]
    Empty,
    /// A read from chosen nodes, with none chosen.
    #[error("no node to read from")]
    NoNodeToReadFrom,
    /// The agent answered 400 or 413; its message.
    #[error("{message}")]
    ByAgent { message: String },
    /// The agent wants a client API key (401), or one of a wider scope (403); its message.
    #[error("{message}")]
    NotAllowed { message: String },
}

/// Why the cluster gave no usable answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unavailable {
    /// Neither the agent nor the supervisor could be reached: waiting would change nothing.
    #[error("{seen}; {supervisor}: the cluster seems to be stopped")]
    ClusterStopped { seen: NoAnswer, supervisor: StatusError },
    /// The agent could not be reached and there is no supervisor to ask where the leader is.
    #[error("{seen}; no supervisor to ask where the leader is")]
    NoSupervisor { seen: NoAnswer },
    /// The run's follow budget ran out without a leader answering.
    #[error("no leader answered within {:.1} s: {seen}{}",
        waited.max(&MIN_REPORTED_WAIT).as_secs_f64(),
        supervisor.as_ref().map(|s| format!("; {s}")).unwrap_or_default())]
    NoLeaderWithin { waited: Duration, seen: NoAnswer, supervisor: Option<SupervisorSays> },
    /// A read from chosen nodes: none of them answered it.
    #[error("no node answered the read: {}", failures.join("; "))]
    NoNodeAnswered { failures: Vec<String> },
    /// The agent answered 503 (down, recovering, no leader known).
    #[error("{agent} is unavailable: {message}")]
    AgentUnavailable { agent: String, message: String },
    /// The agent answered a status this client does not expect there.
    #[error("{agent} answered {path} with HTTP {code}: {message}")]
    UnexpectedStatus { agent: String, path: &'static str, code: StatusCode, message: String },
    /// The agent's answer does not parse.
    #[error("{agent} answered {path} with something that is not a valid answer ({error}): {quoted}")]
    NotUnderstood { agent: String, path: &'static str, error: String, quoted: String },
}

/// What the supervisor said when the run asked it where the leader is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SupervisorSays {
    /// Its status, in its own words (`no leader is serving: ...`).
    #[error("the supervisor says: {0}")]
    Status(String),
    /// It could not be asked.
    #[error("{0}")]
    Unreachable(StatusError),
}

/// Why one try at the leader got no answer the run can use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NoAnswer {
    /// A node names as leader one that does not take the request (itself, or the end of a
    /// chain of redirects).
    #[error("{agent} names {leader} as the leader, which does not take it: a failover may be under way")]
    LeaderRefuses { agent: String, leader: String },
    /// A node that is not the leader and knows of none.
    #[error("{agent} is not the leader and knows no leader ({detail})")]
    NoLeaderKnown { agent: String, detail: String },
    /// The node answered 503.
    #[error("{agent} is unavailable: {message}")]
    Unavailable { agent: String, message: String },
    /// No HTTP answer at all.
    #[error("{0}")]
    Unsent(SendError),
}

impl NoAnswer {
    /// Whether the agent may still be there: it answered, or the request failed after the
    /// connection was made. Only when it is not, and the supervisor is not either, is the
    /// cluster taken as stopped.
    pub fn agent_reachable(&self) -> bool {
        !matches!(self, NoAnswer::Unsent(e) if e.sent_nothing())
    }
}

/// Why a request to an agent got no HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No answer within the request's timeout; `connecting` when the connection itself timed out.
    #[error("no answer from {agent} to {path} within {} s", REQUEST_TIMEOUT.as_secs())]
    Timeout { agent: String, path: &'static str, connecting: bool },
    /// The connection could not be made (refused, no route).
    #[error("cannot reach the agent at {agent}: {cause}")]
    Connect { agent: String, cause: String },
    /// The request failed once connected.
    #[error("request {path} to {agent} failed: {cause}")]
    Failed { agent: String, path: &'static str, cause: String },
}

impl SendError {
    pub fn new(agent: &str, path: &'static str, e: &reqwest::Error) -> SendError {
        let agent = agent.to_string();
        if e.is_timeout() {
            SendError::Timeout { agent, path, connecting: e.is_connect() }
        } else if e.is_connect() {
            SendError::Connect { agent, cause: root_cause(e) }
        } else {
            SendError::Failed { agent, path, cause: root_cause(e) }
        }
    }

    /// Whether the request never left: the connection was not made. A commit that was not
    /// sent is known not to have happened; anything later may have been carried out.
    pub fn sent_nothing(&self) -> bool {
        matches!(self, SendError::Connect { .. } | SendError::Timeout { connecting: true, .. })
    }
}

/// The error for an answer that is not a success.
pub(super) fn error_for(agent: &str, path: &'static str, code: StatusCode, bytes: &[u8]) -> RunError {
    let message = error_message(bytes);
    match code {
        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => RunError::Rejected(Rejection::ByAgent { message }),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => RunError::Rejected(Rejection::NotAllowed { message }),
        StatusCode::SERVICE_UNAVAILABLE => Unavailable::AgentUnavailable { agent: agent.to_string(), message }.into(),
        _ => Unavailable::UnexpectedStatus { agent: agent.to_string(), path, code, message }.into(),
    }
}

/// The answer at `path` of `agent` read as a `T`, or the error saying it is not one.
pub(super) fn parse_answer<T: serde::de::DeserializeOwned>(
    agent: &str,
    path: &'static str,
    bytes: &[u8],
) -> Result<T, RunError> {
    serde_json::from_slice(bytes).map_err(|e| {
        Unavailable::NotUnderstood { agent: agent.to_string(), path, error: e.to_string(), quoted: quote(bytes) }.into()
    })
}

/// The human message of an error answer, or the start of its body.
pub(super) fn error_message(bytes: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(bytes).map(|e| e.message).unwrap_or_else(|_| quote(bytes))
}

/// reqwest's own message is generic ("error sending request"); the cause is deeper.
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// The start of an answer's body, for an error message.
pub(super) fn quote(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    match text.char_indices().nth(MAX_QUOTED_ANSWER) {
        Some((cut, _)) => format!("{:?}...", &text[..cut]),
        None if text.is_empty() => "(empty answer)".into(),
        None => format!("{text:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(agent: &str) -> NoAnswer {
        NoAnswer::Unsent(SendError::Connect { agent: agent.into(), cause: "Connection refused".into() })
    }

    #[test]
    fn the_texts_say_what_was_seen() {
        let stopped = Unavailable::ClusterStopped {
            seen: refused("a:1"),
            supervisor: StatusError::Unreachable { supervisor: "s:9".into(), cause: "Connection refused".into() },
        };
        assert_eq!(
            stopped.to_string(),
            "cannot reach the agent at a:1: Connection refused; cannot reach the supervisor at s:9: \
             Connection refused: the cluster seems to be stopped"
        );
        let waited = Unavailable::NoLeaderWithin {
            waited: Duration::from_millis(20),
            seen: NoAnswer::Unavailable { agent: "a:1".into(), message: "no leader".into() },
            supervisor: Some(SupervisorSays::Status("no leader is serving".into())),
        };
        assert_eq!(
            waited.to_string(),
            "no leader answered within 0.1 s: a:1 is unavailable: no leader; the supervisor says: no leader is serving"
        );
        let id = Uuid::nil();
        let unknown = RunError::unavailable(Unavailable::NoSupervisor { seen: refused("a:1") }, Some(id));
        assert_eq!(
            unknown.to_string(),
            format!(
                "cannot reach the agent at a:1: Connection refused; no supervisor to ask where the leader is; the \
                 outcome of transaction {id} is unknown: run it again with the same txn_id to learn it (nothing is \
                 applied twice)"
            )
        );
        assert_eq!(
            RunError::Rejected(Rejection::Empty).to_string(),
            "the transaction was refused: the transaction is empty"
        );
    }

    #[test]
    fn only_a_connection_never_made_means_nothing_was_sent() {
        let timeout = |connecting| SendError::Timeout { agent: "a:1".into(), path: "/commit/", connecting };
        assert!(timeout(true).sent_nothing());
        assert!(!timeout(false).sent_nothing());
        assert!(!SendError::Failed { agent: "a:1".into(), path: "/commit/", cause: "reset".into() }.sent_nothing());
        assert!(!refused("a:1").agent_reachable());
        assert!(NoAnswer::Unavailable { agent: "a:1".into(), message: String::new() }.agent_reachable());
        assert_eq!(timeout(true).to_string(), "no answer from a:1 to /commit/ within 6 s");
    }

    #[test]
    fn error_answers_map_to_kinds() {
        let body = br#"{"error": "bad_request", "message": "account out of range"}"#;
        assert!(matches!(
            error_for("a:1", "/commit/", StatusCode::BAD_REQUEST, body),
            RunError::Rejected(Rejection::ByAgent { message }) if message == "account out of range"
        ));
        let unavailable = error_for("a:1", "/read/", StatusCode::SERVICE_UNAVAILABLE, body);
        assert!(matches!(unavailable.unavailability(), Some(Unavailable::AgentUnavailable { .. })), "{unavailable:?}");
        let odd = error_for("a:1", "/read/", StatusCode::IM_A_TEAPOT, b"tea");
        assert_eq!(odd.to_string(), "a:1 answered /read/ with HTTP 418 I'm a teapot: \"tea\"");
        let nonsense = parse_answer::<ErrorBody>("a:1", "/read/", b"").unwrap_err();
        assert!(
            nonsense
                .to_string()
                .ends_with("is not a valid answer (EOF while parsing a value at line 1 column 0): (empty answer)"),
            "{nonsense}"
        );
    }
}
