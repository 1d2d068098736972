//! The supervisor's calls to the agents (and its announcements to registered web clients):
//! one HTTP client that carries the cluster token, a timeout on every call chosen by the
//! caller, and what went wrong as a [`CallError`] whose variant the caller matches. The
//! message text is for people and logs only.

use std::time::Duration;

use protocol::{
    AgentStatus, ClusterConfig, ErrorBody, FenceResponse, JoinRequest, LeaderChanged, PauseRequest, PauseResponse,
    PromoteResponse, RecoverRequest, RecoverResponse, ResetResponse, Term,
};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Connecting to an agent: one that takes longer is down or cut off, and a poll must not wait.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);

/// Why a call to an agent failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No answer: the connection was refused or reset, or the timeout passed. The agent may be
    /// down, frozen or cut off.
    #[error("{addr} did not answer: {source}")]
    NoAnswer { addr: String, source: reqwest::Error },
    /// A success status with a body that is not what was asked for.
    #[error("{addr} sent an unreadable answer: {source}")]
    Unreadable { addr: String, source: reqwest::Error },
    /// The agent answered with an error status: it is up, and refused (or failed) the call.
    #[error("{addr} answered {status}: {message}")]
    Refused {
        addr: String,
        status: StatusCode,
        /// The `error` code of the agent's [`ErrorBody`] (empty if the body was not one).
        code: String,
        message: String,
    },
}

impl CallError {
    /// The agent answered, if with an error: it is up.
    pub fn answered(&self) -> bool {
        matches!(self, CallError::Refused { .. })
    }

    /// 409: a stale term, or a state that does not allow the call (the leader's log moved past
    /// a joining node's, say). Trying the same call again will not help.
    pub fn is_conflict(&self) -> bool {
        matches!(self, CallError::Refused { status: StatusCode::CONFLICT, .. })
    }

    /// 410 `log_trimmed`: the leader's log no longer reaches the node's position; the node is
    /// rebuilt from a snapshot.
    pub fn is_log_trimmed(&self) -> bool {
        matches!(self, CallError::Refused { status: StatusCode::GONE, code, .. } if code == "log_trimmed")
    }

    /// The agent refused to merge its log into the leader's (an entry differs, or its database
    /// belongs to another cluster): the node must be rebuilt, never recovered automatically.
    ///
    /// The agent answers 409 with the code `diverged`.
    pub fn is_divergence(&self) -> bool {
        matches!(self, CallError::Refused { status: StatusCode::CONFLICT, code, .. } if code == "diverged")
    }
}

/// The HTTP client the supervisor calls the agents with.
#[derive(Clone)]
pub struct AgentClient {
    http: reqwest::Client,
    /// `http`, or `https` with `--tls-*` (trusting the cluster's CA only).
    scheme: &'static str,
}

impl AgentClient {
    pub fn new(token: Option<&str>, tls: Option<&service::Tls>) -> Result<AgentClient, service::ClientError> {
        Ok(AgentClient {
            http: service::client_builder_tls(token, tls)?.connect_timeout(CONNECT_TIMEOUT).build()?,
            scheme: if tls.is_some() { "https" } else { "http" },
        })
    }

    /// `GET /health?term=`: the poll carries the current term, so that a leader of an older
    /// term steps down as soon as it answers (a resumed SIGSTOP, a healed partition), before it
    /// is fenced.
    pub async fn health(&self, addr: &str, term: Term, timeout: Duration) -> Result<(), CallError> {
        self.call::<(), serde_json::Value>(addr, &format!("/health?term={term}"), None, timeout).await.map(drop)
    }

    /// `GET /health` without a term: whether the agent answers at all.
    pub async fn probe(&self, addr: &str, timeout: Duration) -> Result<(), CallError> {
        self.call::<(), serde_json::Value>(addr, "/health", None, timeout).await.map(drop)
    }

    pub async fn status(&self, addr: &str, timeout: Duration) -> Result<AgentStatus, CallError> {
        self.call::<(), _>(addr, "/status", None, timeout).await
    }

    /// `POST /internal/fence`: the agent refuses every older term from now on.
    pub async fn fence(
        &self,
        addr: &str,
        config: &ClusterConfig,
        timeout: Duration,
    ) -> Result<FenceResponse, CallError> {
        self.call(addr, "/internal/fence", Some(config), timeout).await
    }

    /// `POST /internal/promote`: the candidate resolves its in-doubt batches and leads.
    pub async fn promote(
        &self,
        addr: &str,
        config: &ClusterConfig,
        timeout: Duration,
    ) -> Result<PromoteResponse, CallError> {
        self.call(addr, "/internal/promote", Some(config), timeout).await
    }

    /// `POST /internal/config`: the agent adopts `config` if it is newer than its own.
    pub async fn send_config(
        &self,
        addr: &str,
        config: &ClusterConfig,
        timeout: Duration,
    ) -> Result<AgentStatus, CallError> {
        self.call(addr, "/internal/config", Some(config), timeout).await
    }

    /// `POST /internal/recover`: the node applies the leader's log after its own.
    pub async fn recover(
        &self,
        addr: &str,
        req: &RecoverRequest,
        timeout: Duration,
    ) -> Result<RecoverResponse, CallError> {
        self.call(addr, "/internal/recover", Some(req), timeout).await
    }

    /// `POST /internal/pause`: the leader holds new commits for a while (ended by a new
    /// configuration, or by the pause's own deadline).
    pub async fn pause(&self, addr: &str, req: &PauseRequest, timeout: Duration) -> Result<PauseResponse, CallError> {
        self.call(addr, "/internal/pause", Some(req), timeout).await
    }

    /// `POST /internal/join`: the leader stores the member set with the joining node, if its
    /// log still ends where the node's does.
    pub async fn join(&self, addr: &str, req: &JoinRequest, timeout: Duration) -> Result<AgentStatus, CallError> {
        self.call(addr, "/internal/join", Some(req), timeout).await
    }

    /// `POST /internal/reset`: a node outside `config`'s members empties its database (rolls
    /// back its prepared batches, drops its log, its table and its cluster id; keeps its term)
    /// for a rebuild. How many log entries it held. The agent refuses (409) if it leads or is a
    /// member of `config`.
    pub async fn reset(&self, addr: &str, config: &ClusterConfig, timeout: Duration) -> Result<u64, CallError> {
        self.call::<_, ResetResponse>(addr, "/internal/reset", Some(config), timeout).await.map(|r| r.wiped_entries)
    }

    /// `POST <url>` to a registered web client: the new leader.
    pub async fn announce(&self, url: &str, body: &LeaderChanged, timeout: Duration) -> Result<(), reqwest::Error> {
        self.http.post(url).json(body).timeout(timeout).send().await.map(drop)
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T, CallError> {
        let url = format!("{}://{addr}{path}", self.scheme);
        let req = match body {
            Some(body) => self.http.post(url).json(body),
            None => self.http.get(url),
        };
        let resp =
            req.timeout(timeout).send().await.map_err(|source| CallError::NoAnswer { addr: addr.into(), source })?;
        let status = resp.status();
        if status.is_success() {
            return resp.json().await.map_err(|source| CallError::Unreadable { addr: addr.into(), source });
        }
        let body = resp.json::<ErrorBody>().await.ok();
        let (code, message) = body.map(|b| (b.error, b.message)).unwrap_or_default();
        Err(CallError::Refused { addr: addr.into(), status, code, message })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: StatusCode, message: &str) -> CallError {
        CallError::Refused { addr: "a:1".into(), status, code: "conflict".into(), message: message.into() }
    }

    #[test]
    fn the_kind_of_a_refusal_is_its_variant_and_status_not_its_address() {
        // An address with "409" in it once made any failed join count as a refusal.
        let timeout = CallError::Refused {
            addr: "10.0.0.1:34090".into(),
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "unavailable".into(),
            message: "busy".into(),
        };
        assert!(!timeout.is_conflict());
        assert!(timeout.answered());
        assert!(refused(StatusCode::CONFLICT, "stale term").is_conflict());
        let text = refused(StatusCode::CONFLICT, "stale term").to_string();
        assert_eq!(text, "a:1 answered 409 Conflict: stale term");
    }

    #[test]
    fn divergence_is_the_agents_code_not_its_words() {
        let diverged = CallError::Refused {
            addr: "a:1".into(),
            status: StatusCode::CONFLICT,
            code: "diverged".into(),
            message: "this node's log entry at LSN 7 differs from the leader's".into(),
        };
        assert!(diverged.is_divergence());
        // The word alone is not the code.
        assert!(!refused(StatusCode::CONFLICT, "diverged: ...").is_divergence());
        assert!(!refused(StatusCode::CONFLICT, "the leader does not recover from another node").is_divergence());
    }
}
