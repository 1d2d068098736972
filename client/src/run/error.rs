//! Why a run produced no outcome, and how error answers and failed requests read.

use protocol::{ErrorBody, ParseError};
use reqwest::StatusCode;
use uuid::Uuid;

use super::REQUEST_TIMEOUT;

/// Longest piece of an unexpected answer quoted in an error.
const MAX_QUOTED_ANSWER: usize = 200;

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
    /// The agent refused the request as malformed (HTTP 400), or the input is unusable;
    /// nothing was applied.
    #[error("the transaction was refused: {0}")]
    Rejected(String),
    /// No usable answer: the cluster is down, recovering, has no leader, or answered nonsense.
    /// `unknown_txn` is set when a commit may have been carried out without its answer reaching
    /// us: committing again with that id is safe and tells the outcome.
    #[error("{message}{}", unknown_txn.map(|id| format!(
        "; the outcome of transaction {id} is unknown: run it again with the same txn_id to learn it \
         (nothing is applied twice)")).unwrap_or_default())]
    Unavailable { message: String, unknown_txn: Option<Uuid> },
}

impl RunError {
    pub(super) fn unavailable(message: impl Into<String>) -> RunError {
        RunError::Unavailable { message: message.into(), unknown_txn: None }
    }

    /// The exit code of `client run`: 2 for the user's input, 3 for the cluster.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Parse(_) | RunError::Rejected(_) => EXIT_USAGE,
            RunError::Unavailable { .. } => EXIT_UNAVAILABLE,
        }
    }
}

/// The error for an answer that is not a success.
pub(super) fn error_for(agent: &str, path: &str, code: StatusCode, bytes: &[u8]) -> RunError {
    let message = error_message(bytes);
    match code {
        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => RunError::Rejected(message),
        StatusCode::SERVICE_UNAVAILABLE => RunError::unavailable(format!("{agent} is unavailable: {message}")),
        _ => RunError::unavailable(format!("{agent} answered {path} with HTTP {code}: {message}")),
    }
}

/// The human message of an error answer, or the start of its body.
pub(super) fn error_message(bytes: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(bytes).map(|e| e.message).unwrap_or_else(|_| quote(bytes))
}

pub(super) fn describe_send_error(agent: &str, path: &str, e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return format!("no answer from {agent} to {path} within {} s", REQUEST_TIMEOUT.as_secs());
    }
    if e.is_connect() {
        format!("cannot reach the agent at {agent}: {}", root_cause(e))
    } else {
        format!("request {path} to {agent} failed: {}", root_cause(e))
    }
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
