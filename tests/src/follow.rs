//! A client that keeps working through failovers, as a careful user's program would: it sends
//! each transaction with a fixed `txn_id`, follows a 421 to the leader it names, and on a 503 or
//! a dead connection asks the supervisor (or, without one, the next node) where the leader is
//! and retries the *same* `txn_id`, with backoff, for a bounded time. Because the leader returns
//! the first outcome of a `txn_id`, retrying is safe, and what the client ends up with is either
//! an answer from a leader (acknowledged COMMIT or ABORT) or nothing (indeterminate).
//!
//! Answers that no rule of DESIGN.md section 7 explains (a 500, a 409 that is not an abort, a
//! body that is not JSON) are retried like a 503 but also recorded in
//! [`Follower::surprises`], for the test to assert there were none.

use std::time::{Duration, Instant};

use protocol::{Account, CommitResponse, Lsn, Outcome, ReadResponse, Role, Timestamp};
use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

use crate::cluster::raw;
use crate::{Cluster, RawResponse};

/// How long one transaction is retried before the client gives up on it.
pub const FOLLOW_BUDGET: Duration = Duration::from_secs(20);
/// Timeout of one request: a stopped leader must not hold a client for longer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// What the client knows about a transaction it sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    /// A leader answered 200 COMMIT.
    Commit { lsn: Lsn, commit_ts: Timestamp },
    /// A leader answered ABORT (409 for a conflict, 503 when replication failed and nothing
    /// was applied).
    Abort { status: u16, reason: String },
    /// No leader answered within the budget: it may or may not have committed.
    Indeterminate { last_error: String },
}

/// One transaction as the client saw it.
#[derive(Debug, Clone)]
pub struct Sent {
    pub txn_id: Uuid,
    pub ack: Ack,
    /// Requests sent for it, redirects and retries included.
    pub attempts: u32,
    /// When the client sent it first and when it got the answer it kept.
    pub sent_at: Instant,
    pub done_at: Instant,
    /// The node whose answer the client kept (or asked last).
    pub node: usize,
}

impl Sent {
    pub fn committed(&self) -> bool {
        matches!(self.ack, Ack::Commit { .. })
    }
}

/// A client that follows the leader. One per concurrent user; not shared.
pub struct Follower<'c> {
    cluster: &'c Cluster,
    /// The node it believes leads.
    leader: usize,
    /// Answers that break the API's rules, with the request's context.
    pub surprises: Vec<String>,
    /// How many 421 redirects it followed, and how many times it had to retry.
    pub redirects: u32,
    pub retries: u32,
}

/// What to do after one answer.
enum Step<T> {
    Done(T),
    /// Send the same request to this node now.
    Redirect(usize),
    /// Find the leader, wait, send again.
    Retry(String),
}

impl<'c> Follower<'c> {
    /// A client that starts by sending to node `first`.
    pub fn new(cluster: &'c Cluster, first: usize) -> Self {
        Follower { cluster, leader: first, surprises: Vec::new(), redirects: 0, retries: 0 }
    }

    /// The node it currently sends to.
    pub fn leader(&self) -> usize {
        self.leader
    }

    /// Reads `accounts` on the leader (a replica's read would be a stale basis for a commit).
    /// `Err` when no leader served the read within [`FOLLOW_BUDGET`].
    pub async fn read(&mut self, accounts: &[Account]) -> Result<ReadResponse, String> {
        let body = serde_json::json!({"transaction": {"read_set": accounts, "write_set": {}}});
        let (_, _, answer) = self.send("/read/", &body, |me, node, r| me.read_step(node, r)).await;
        answer
    }

    fn read_step(&mut self, node: usize, r: RawResponse) -> Step<ReadResponse> {
        match r.status {
            StatusCode::OK => match serde_json::from_str::<ReadResponse>(&r.body) {
                Ok(read) if read.role == Role::Leader => Step::Done(read),
                Ok(read) => Step::Retry(format!("node {node} answered the read as {:?}, not leader", read.role)),
                Err(e) => self.surprise(node, "/read/", &r, &format!("a 200 that is not a read answer: {e}")),
            },
            StatusCode::SERVICE_UNAVAILABLE => Step::Retry(format!("node {node}: HTTP 503: {}", r.body)),
            _ => self.surprise(node, "/read/", &r, "unexpected status for a read"),
        }
    }

    /// Commits `transaction` (the object under `"transaction"`), retrying with its `txn_id`
    /// (one is added when it has none) until a leader answers or [`FOLLOW_BUDGET`] runs out.
    pub async fn commit(&mut self, mut transaction: Value) -> Sent {
        let txn_id = match transaction.get("txn_id").and_then(Value::as_str) {
            Some(id) => id.parse().unwrap_or_else(|e| panic!("txn_id {id} is not a UUID: {e}")),
            None => {
                let id = Uuid::new_v4();
                transaction["txn_id"] = Value::String(id.to_string());
                id
            }
        };
        let body = serde_json::json!({ "transaction": transaction });
        let sent_at = Instant::now();
        let (attempts, node, answer) =
            self.send("/commit/", &body, |me, node, r| me.commit_step(node, r, txn_id)).await;
        let ack = answer.unwrap_or_else(|last_error| Ack::Indeterminate { last_error });
        Sent { txn_id, ack, attempts, sent_at, done_at: Instant::now(), node }
    }

    fn commit_step(&mut self, node: usize, r: RawResponse, txn_id: Uuid) -> Step<Ack> {
        let body: Option<Value> = r.json();
        // An outcome has a `commit` field; an error body has an `error` field.
        if let Some(outcome) = body.as_ref().filter(|b| b.get("commit").is_some()) {
            let answer: CommitResponse = match serde_json::from_value(outcome.clone()) {
                Ok(a) => a,
                Err(e) => return self.surprise(node, "/commit/", &r, &format!("not a commit answer: {e}")),
            };
            if answer.txn_id != txn_id {
                return self.surprise(node, "/commit/", &r, &format!("the answer is for another txn_id than {txn_id}"));
            }
            return match (r.status, answer.commit) {
                (StatusCode::OK, Outcome::Commit) => match (answer.lsn, answer.commit_ts) {
                    (Some(lsn), Some(commit_ts)) => Step::Done(Ack::Commit { lsn, commit_ts }),
                    _ => self.surprise(node, "/commit/", &r, "a COMMIT without lsn or commit_ts"),
                },
                (StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE, Outcome::Abort) => {
                    let reason = outcome["reason"].as_str().unwrap_or("(none)").to_string();
                    Step::Done(Ack::Abort { status: r.status.as_u16(), reason })
                }
                _ => self.surprise(node, "/commit/", &r, "the status code and the outcome disagree"),
            };
        }
        match r.status {
            StatusCode::MISDIRECTED_REQUEST => {
                match body.as_ref().and_then(|b| b["leader"].as_str()).and_then(|a| self.cluster.index_of(a)) {
                    Some(leader) if leader != node => {
                        self.redirects += 1;
                        Step::Redirect(leader)
                    }
                    _ => Step::Retry(format!("node {node}: 421 without another leader: {}", r.body)),
                }
            }
            StatusCode::SERVICE_UNAVAILABLE if body.is_some() => Step::Retry(format!("node {node}: 503: {}", r.body)),
            _ => self.surprise(node, "/commit/", &r, "unexpected answer to a commit"),
        }
    }

    fn surprise<T>(&mut self, node: usize, path: &str, r: &RawResponse, what: &str) -> Step<T> {
        assert_ne!(
            r.status,
            StatusCode::BAD_REQUEST,
            "POST {path} to node {node}: the test sent a bad request: {}",
            r.body
        );
        let note = format!("POST {path} to node {node}: {what}: HTTP {} {:?}", r.status, r.body);
        self.surprises.push(note.clone());
        Step::Retry(note)
    }

    /// Sends `body` to `path` on the believed leader until `step` is done with an answer or
    /// the budget runs out. Returns (attempts, last node asked, answer or last error).
    async fn send<T>(
        &mut self,
        path: &str,
        body: &Value,
        mut step: impl FnMut(&mut Self, usize, RawResponse) -> Step<T>,
    ) -> (u32, usize, Result<T, String>) {
        let deadline = Instant::now() + FOLLOW_BUDGET;
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 0;
        // Redirects in a row without an answer: two nodes pointing at each other must not spin.
        let mut hops = 0;
        loop {
            attempts += 1;
            let node = self.leader;
            let sent = self
                .cluster
                .http()
                .post(format!("{}{path}", self.cluster.url(node)))
                .json(body)
                .timeout(REQUEST_TIMEOUT)
                .send()
                .await;
            let next = match sent {
                Ok(resp) => step(self, node, raw(resp).await),
                Err(e) => Step::Retry(format!("node {node}: {e}")),
            };
            let error = match next {
                Step::Done(answer) => return (attempts, node, Ok(answer)),
                Step::Redirect(leader) if hops < 3 => {
                    hops += 1;
                    self.leader = leader;
                    continue;
                }
                Step::Redirect(leader) => {
                    self.leader = leader;
                    format!("redirected {hops} times in a row, last to node {leader}")
                }
                Step::Retry(error) => {
                    self.find_leader().await;
                    error
                }
            };
            if Instant::now() + backoff > deadline {
                return (attempts, node, Err(error));
            }
            self.retries += 1;
            hops = 0;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Asks the supervisor who leads; without an answer, tries the next node in order (a 421
    /// from it names the leader).
    async fn find_leader(&mut self) {
        if !self.cluster.supervisors.is_empty() {
            if let Ok(status) = self.cluster.try_supervisor_status().await {
                if let Some(leader) = status["leader"].as_str().and_then(|a| self.cluster.index_of(a)) {
                    self.leader = leader;
                    return;
                }
            }
        }
        self.leader = (self.leader + 1) % self.cluster.len();
    }
}
