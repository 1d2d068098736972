//! The one error type of the HTTP edge: each variant maps to a status code and a JSON
//! [`ErrorBody`]. Internal details are logged, never shown to the caller.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::{ErrorBody, Term};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed input (400): the message says what is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// A commit's `time_stamp` above every timestamp the cluster handed out (400).
    #[error("{0}")]
    BadTimestamp(String),
    /// This agent is not the leader (421).
    #[error("this agent is not the leader")]
    NotLeader { leader: Option<String> },
    /// An internal message from a lower term (409).
    #[error("stale term: this agent is in term {0}")]
    StaleTerm(Term),
    /// A request that contradicts this node's state (409).
    #[error("{0}")]
    Conflict(String),
    /// This node's log is not a prefix of the leader's, or its database belongs to another
    /// cluster (409 `diverged`): it must be rebuilt, never merged.
    #[error("{0}")]
    Diverged(String),
    /// The node cannot serve the request now (503); retrying later may work.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    NotFound(String),
    /// What was asked lies at or below this node's log horizon (410 `log_trimmed`, with the
    /// horizon): the entries were trimmed (`--retain-log`) or replaced by a snapshot.
    #[error("{message}")]
    LogTrimmed { horizon: protocol::Lsn, message: String },
    /// A commit whose outcome is not known yet (503 `outcome_unknown`): leadership or
    /// membership changed while it was replicated; a retry with the same `txn_id` tells.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// Too much in flight (503 with `Retry-After`); nothing was done.
    #[error("{0}")]
    Overloaded(String),
    /// A role check (`/primary`, `/replica`, `/read-only`) this node does not pass (503, with
    /// the check's own code: `not_primary`, `not_replica`, `lagging`), for load balancers.
    #[error("{message}")]
    RoleCheck { code: &'static str, message: String },
    /// An internal endpoint called without the cluster token (401).
    #[error("this endpoint needs the cluster token: send 'Authorization: Bearer <token>'")]
    Unauthorized,
    /// A bug or a broken dependency (500); the detail goes to the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        ApiError::Internal(e.to_string())
    }

    pub fn unavailable(e: impl std::fmt::Display) -> ApiError {
        ApiError::Unavailable(format!("this node cannot reach its database: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let horizon = match &self {
            ApiError::LogTrimmed { horizon, .. } => Some(*horizon),
            _ => None,
        };
        let (status, code, leader, term) = match &self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request", None, None),
            ApiError::BadTimestamp(_) => (StatusCode::BAD_REQUEST, "bad_timestamp", None, None),
            ApiError::NotLeader { leader } => (StatusCode::MISDIRECTED_REQUEST, "not_leader", leader.clone(), None),
            ApiError::StaleTerm(term) => (StatusCode::CONFLICT, "stale_term", None, Some(*term)),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", None, None),
            ApiError::Diverged(_) => (StatusCode::CONFLICT, "diverged", None, None),
            ApiError::OutcomeUnknown(_) => (StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown", None, None),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", None, None),
            ApiError::Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, "overloaded", None, None),
            ApiError::RoleCheck { code, .. } => (StatusCode::SERVICE_UNAVAILABLE, *code, None, None),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", None, None),
            ApiError::LogTrimmed { .. } => (StatusCode::GONE, "log_trimmed", None, None),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", None, None),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None, None),
        };
        let message = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                "internal error; the agent's log has the details".to_string()
            }
            ApiError::NotLeader { leader: Some(leader) } => {
                format!("this agent is not the leader; send commits to {leader}")
            }
            ApiError::NotLeader { leader: None } => "this agent is not the leader and no leader is known".into(),
            other => other.to_string(),
        };
        let mut response =
            (status, Json(ErrorBody { error: code.into(), message, leader, term, horizon })).into_response();
        if code == "overloaded" {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        }
        response
    }
}
