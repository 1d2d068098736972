//! Running one transaction typed in the transaction language against the cluster: the logic
//! shared by `client run` and the web form.
//!
//! A transaction such as `r(1)w(2=22)` runs the way the original system's client ran it:
//! 1. `POST /read/` of its read set (skipped when it reads nothing: a blind write);
//! 2. `POST /commit/` of its read set, write set and the read's timestamp, under a fresh
//!    `txn_id` (skipped when it writes nothing: a read-only transaction).
//!
//! An agent that is not the leader answers 421 with the leader's address; the request is sent
//! there once, and the rest of the run goes to that leader.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use protocol::{
    parse_transaction, Account, Balance, CommitRequest, CommitResponse, ErrorBody, Lsn, Outcome, ParseError,
    ReadRequest, ReadResponse, Role, Timestamp, TransactionBody,
};
use reqwest::StatusCode;
use serde::Serialize;
use uuid::Uuid;

/// How long one request to an agent may take. A commit waits for every member's two phases and
/// a read may wait (bounded) for a locked key; both take milliseconds when the cluster is well.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connecting to a live agent takes well under this; a dead host should fail fast.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
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
    /// The agent refused the request as malformed (HTTP 400); nothing was applied.
    #[error("the agent refused the transaction: {0}")]
    Rejected(String),
    /// No usable answer: the cluster is down, recovering, has no leader, or answered nonsense.
    #[error("{0}")]
    Unavailable(String),
}

impl RunError {
    /// The exit code of `client run`: 2 for the user's input, 3 for the cluster.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Parse(_) | RunError::Rejected(_) => EXIT_USAGE,
            RunError::Unavailable(_) => EXIT_UNAVAILABLE,
        }
    }
}

/// What the read step returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    /// Each account of the read set in the order first read, with its balance; `None` for an
    /// account that was never written.
    pub values: Vec<(Account, Option<Balance>)>,
    pub timestamp: Timestamp,
    pub lsn: Lsn,
    /// The node that answered (its id) and its role.
    pub node: String,
    pub role: Role,
    /// The address the read was sent to.
    pub agent: String,
}

/// Everything one run did, for a person to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// The transaction in its canonical spelling.
    pub transaction: String,
    pub read: Option<ReadResult>,
    /// The writes the commit carried (empty for a read-only transaction).
    pub writes: BTreeMap<Account, Balance>,
    /// The commit's answer; `None` for a read-only transaction.
    pub commit: Option<CommitResponse>,
    /// The address the commit was finally sent to.
    pub commit_agent: Option<String>,
    /// Things worth telling, such as a redirect to the leader.
    pub notes: Vec<String>,
    pub latency: Duration,
}

impl RunReport {
    pub fn aborted(&self) -> bool {
        self.commit.as_ref().is_some_and(|c| c.commit == Outcome::Abort)
    }

    /// The exit code of `client run`: 0 for a commit or a read, 1 for an abort.
    pub fn exit_code(&self) -> u8 {
        if self.aborted() {
            EXIT_ABORT
        } else {
            0
        }
    }

    /// The report as plain text, one fact per line.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        if let Some(read) = &self.read {
            let _ = writeln!(
                out,
                "read from {} ({}) at {}: timestamp {}, lsn {}",
                read.node,
                role_name(read.role),
                read.agent,
                read.timestamp,
                read.lsn
            );
            for (account, balance) in &read.values {
                match balance {
                    Some(balance) => {
                        let _ = writeln!(out, "  account {account} = {balance}");
                    }
                    None => {
                        let _ = writeln!(out, "  account {account}: no such account (never written)");
                    }
                }
            }
        }
        match &self.commit {
            None => {
                let _ = writeln!(out, "read-only transaction: nothing to commit");
            }
            Some(commit) if commit.commit == Outcome::Commit => {
                let _ = writeln!(
                    out,
                    "COMMIT: txn {}, commit_ts {}, lsn {}",
                    commit.txn_id,
                    optional(commit.commit_ts),
                    optional(commit.lsn)
                );
                let _ = writeln!(out, "  wrote {}", describe_writes(&self.writes));
            }
            Some(commit) => {
                let _ = writeln!(out, "ABORT: txn {}, nothing was written", commit.txn_id);
                let _ = writeln!(out, "  reason: {}", abort_reason(commit));
            }
        }
        let _ = writeln!(out, "latency: {:.1} ms", self.latency.as_secs_f64() * 1000.0);
        out
    }
}

/// Why a transaction aborted, in words: the reason code, then the agent's message (which names
/// the account) or, without one, the reason's explanation and the account.
pub fn abort_reason(commit: &CommitResponse) -> String {
    let code = commit.reason.map_or_else(|| "no reason given".to_string(), |r| wire_name(&r));
    match (&commit.message, commit.reason, commit.key) {
        (Some(message), _, _) => format!("{code}: {message}"),
        (None, Some(reason), Some(key)) => format!("{code}: {} (account {key})", reason.explain()),
        (None, Some(reason), None) => format!("{code}: {}", reason.explain()),
        (None, None, Some(key)) => format!("{code} (account {key})"),
        (None, None, None) => code,
    }
}

pub fn role_name(role: Role) -> String {
    wire_name(&role)
}

/// The snake_case name a value has on the wire (`stale_read`, `leader`).
fn wire_name(value: &impl Serialize) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_else(|| "?".to_string())
}

pub fn describe_writes(writes: &BTreeMap<Account, Balance>) -> String {
    let parts: Vec<String> = writes.iter().map(|(a, b)| format!("account {a} = {b}")).collect();
    parts.join(", ")
}

fn optional(value: Option<i64>) -> String {
    value.map_or_else(|| "?".to_string(), |v| v.to_string())
}

/// `host:port` or a full `http://host:port` URL, without a trailing slash.
pub fn base_url(address: &str) -> String {
    let address = address.trim().trim_end_matches('/');
    if address.starts_with("http://") || address.starts_with("https://") {
        address.to_string()
    } else {
        format!("http://{address}")
    }
}

/// Talks to the agents. Cheap to clone: one keep-alive connection pool is shared.
#[derive(Clone)]
pub struct Runner {
    http: reqwest::Client,
}

impl Runner {
    pub fn new() -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).connect_timeout(CONNECT_TIMEOUT).build()?;
        Ok(Self { http })
    }

    /// Parses `text` and runs it against the agent at `agent` (`host:port`).
    /// `txn_id` makes the commit idempotent; a fresh one is made when it is `None`.
    pub async fn run(&self, agent: &str, text: &str, txn_id: Option<Uuid>) -> Result<RunReport, RunError> {
        let parsed = parse_transaction(text).map_err(RunError::Parse)?;
        let read_set = parsed.read_set();
        let writes = parsed.write_set();
        if read_set.is_empty() && writes.is_empty() {
            return Err(RunError::Rejected("the transaction is empty".into()));
        }

        let started = Instant::now();
        let mut agent = agent.trim().to_string();
        let mut notes = Vec::new();

        let read = if read_set.is_empty() { None } else { Some(self.read(&mut agent, &read_set, &mut notes).await?) };

        let (commit, commit_agent) = if parsed.is_read_only() {
            (None, None)
        } else {
            let body = CommitRequest {
                transaction: TransactionBody {
                    read_set: read_set.clone(),
                    write_set: writes.clone(),
                    time_stamp: read.as_ref().map(|r| r.timestamp),
                    txn_id: Some(txn_id.unwrap_or_else(Uuid::new_v4)),
                },
            };
            let response = self.commit(&mut agent, &body, &mut notes).await?;
            (Some(response), Some(agent.clone()))
        };

        Ok(RunReport {
            transaction: parsed.to_string(),
            read,
            writes,
            commit,
            commit_agent,
            notes,
            latency: started.elapsed(),
        })
    }

    async fn read(
        &self,
        agent: &mut String,
        read_set: &[Account],
        notes: &mut Vec<String>,
    ) -> Result<ReadResult, RunError> {
        let body = ReadRequest {
            transaction: TransactionBody { read_set: read_set.to_vec(), ..Default::default() },
            min_lsn: None,
        };
        let (code, bytes) = self.post_to_leader(agent, "/read/", &body, notes, None).await?;
        match code {
            StatusCode::OK => {
                let answer: ReadResponse = parse_answer(agent, "/read/", &bytes)?;
                Ok(ReadResult {
                    values: read_set.iter().map(|a| (*a, answer.values.get(a).copied())).collect(),
                    timestamp: answer.timestamp,
                    lsn: answer.lsn,
                    node: answer.node,
                    role: answer.role,
                    agent: agent.clone(),
                })
            }
            _ => Err(error_for(agent, "/read/", code, &bytes)),
        }
    }

    async fn commit(
        &self,
        agent: &mut String,
        body: &CommitRequest,
        notes: &mut Vec<String>,
    ) -> Result<CommitResponse, RunError> {
        let txn_id = body.transaction.txn_id.unwrap_or_default();
        let retry_hint =
            format!("committing again with the same txn_id ({txn_id}) is safe: `client run --txn-id {txn_id} ...`");
        let (code, bytes) = self.post_to_leader(agent, "/commit/", body, notes, Some(&retry_hint)).await?;
        match code {
            StatusCode::OK | StatusCode::CONFLICT => parse_answer(agent, "/commit/", &bytes),
            // A replication failure aborts with 503 and a commit answer; an agent that cannot
            // take commits at all (down, recovering) answers 503 with an error body.
            StatusCode::SERVICE_UNAVAILABLE => match serde_json::from_slice(&bytes) {
                Ok(answer) => Ok(answer),
                Err(_) => Err(RunError::Unavailable(format!(
                    "{agent} is unavailable: {}; {retry_hint}",
                    error_message(&bytes)
                ))),
            },
            _ => Err(error_for(agent, "/commit/", code, &bytes)),
        }
    }

    /// Posts `body`; on 421 sends it once more to the leader the agent names, and from then on
    /// `agent` is that leader. `retry_hint` is added to the error when the request may have been
    /// carried out without its answer reaching us.
    async fn post_to_leader(
        &self,
        agent: &mut String,
        path: &str,
        body: &impl Serialize,
        notes: &mut Vec<String>,
        retry_hint: Option<&str>,
    ) -> Result<(StatusCode, Vec<u8>), RunError> {
        let (code, bytes) = self.post(agent, path, body, retry_hint).await?;
        if code != StatusCode::MISDIRECTED_REQUEST {
            return Ok((code, bytes));
        }
        let error = serde_json::from_slice::<ErrorBody>(&bytes).ok();
        let leader = error.as_ref().and_then(|e| e.leader.clone());
        match leader {
            Some(leader) if leader != *agent => {
                notes.push(format!("{agent} is not the leader; sent {path} to the leader {leader}"));
                *agent = leader;
                let (code, bytes) = self.post(agent, path, body, retry_hint).await?;
                if code == StatusCode::MISDIRECTED_REQUEST {
                    return Err(RunError::Unavailable(format!(
                        "{agent} was named the leader but says it is not: a failover may be under \
                         way, try again shortly"
                    )));
                }
                Ok((code, bytes))
            }
            _ => {
                let message = error.map_or_else(|| quote(&bytes), |e| e.message);
                Err(RunError::Unavailable(format!(
                    "{agent} is not the leader and names no leader ({message}): writes are \
                     unavailable until a leader is elected"
                )))
            }
        }
    }

    async fn post(
        &self,
        agent: &str,
        path: &str,
        body: &impl Serialize,
        retry_hint: Option<&str>,
    ) -> Result<(StatusCode, Vec<u8>), RunError> {
        let failed = |e: reqwest::Error| {
            let why = describe_send_error(agent, path, &e);
            // A refused connection means the request never left; anything later may have been
            // carried out without its answer reaching us.
            RunError::Unavailable(match retry_hint {
                Some(hint) if !e.is_connect() => {
                    format!("{why}; the outcome is unknown: {hint}")
                }
                _ => why,
            })
        };
        let url = format!("{}{path}", base_url(agent));
        let response = self.http.post(&url).json(body).send().await.map_err(failed)?;
        let code = response.status();
        let bytes = response.bytes().await.map_err(failed)?;
        Ok((code, bytes.to_vec()))
    }
}

fn parse_answer<T: serde::de::DeserializeOwned>(agent: &str, path: &str, bytes: &[u8]) -> Result<T, RunError> {
    serde_json::from_slice(bytes).map_err(|e| {
        RunError::Unavailable(format!(
            "{agent} answered {path} with something that is not a valid answer ({e}): {}",
            quote(bytes)
        ))
    })
}

/// The error for an answer that is not a success.
fn error_for(agent: &str, path: &str, code: StatusCode, bytes: &[u8]) -> RunError {
    let message = error_message(bytes);
    match code {
        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => RunError::Rejected(message),
        StatusCode::SERVICE_UNAVAILABLE => RunError::Unavailable(format!("{agent} is unavailable: {message}")),
        _ => RunError::Unavailable(format!("{agent} answered {path} with HTTP {code}: {message}")),
    }
}

/// The human message of an error answer, or the start of its body.
fn error_message(bytes: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(bytes).map(|e| e.message).unwrap_or_else(|_| quote(bytes))
}

fn describe_send_error(agent: &str, path: &str, e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return format!("no answer from {agent} to {path} within {} s", REQUEST_TIMEOUT.as_secs());
    }
    // reqwest's own message is generic ("error sending request"); the cause is deeper.
    let mut cause: &dyn std::error::Error = e;
    while let Some(source) = cause.source() {
        cause = source;
    }
    if e.is_connect() {
        format!("cannot reach the agent at {agent}: {cause}")
    } else {
        format!("request {path} to {agent} failed: {cause}")
    }
}

/// The start of an answer's body, for an error message.
fn quote(bytes: &[u8]) -> String {
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
    use crate::fake_agent::{self, Fake, COMMIT_TS, READ_TS};

    fn fake_with_balances() -> Fake {
        Fake { balances: BTreeMap::from([(1, 100), (3, 300)]), ..Fake::default() }
    }

    #[tokio::test]
    async fn commit_carries_the_read_timestamp_and_a_txn_id() {
        let fake = fake_with_balances();
        let agent = fake_agent::start(fake.clone()).await;
        let report = Runner::new().unwrap().run(&agent, "r(1) w(2=22) r(4)", None).await.unwrap();

        let read = report.read.as_ref().unwrap();
        assert_eq!(read.values, vec![(1, Some(100)), (4, None)]);
        assert_eq!(read.timestamp, READ_TS);
        let commit = report.commit.as_ref().unwrap();
        assert_eq!((commit.commit, commit.commit_ts), (Outcome::Commit, Some(COMMIT_TS)));
        assert_eq!(report.exit_code(), 0);

        let sent = fake.commits.lock().unwrap().clone();
        assert_eq!(sent.len(), 1);
        let t = &sent[0].transaction;
        assert_eq!(t.read_set, vec![1, 4]);
        assert_eq!(t.write_set, BTreeMap::from([(2, 22)]));
        assert_eq!(t.time_stamp, Some(READ_TS));
        assert_eq!(t.txn_id, Some(commit.txn_id));

        let text = report.to_text();
        assert!(text.contains("account 1 = 100\n"), "{text}");
        assert!(text.contains("account 4: no such account"), "{text}");
        assert!(text.contains(&format!("COMMIT: txn {}, commit_ts {COMMIT_TS}, lsn 4", commit.txn_id)), "{text}");
    }

    #[tokio::test]
    async fn read_only_skips_the_commit_and_blind_write_skips_the_read() {
        let fake = fake_with_balances();
        let agent = fake_agent::start(fake.clone()).await;
        let runner = Runner::new().unwrap();

        let read_only = runner.run(&agent, "r(3)", None).await.unwrap();
        assert!(read_only.commit.is_none());
        assert_eq!(read_only.exit_code(), 0);
        assert!(fake.commits.lock().unwrap().is_empty());

        let blind = runner.run(&agent, "w(7=70)", None).await.unwrap();
        assert!(blind.read.is_none());
        let sent = fake.commits.lock().unwrap().clone();
        assert_eq!(sent[0].transaction.time_stamp, None);
        assert!(sent[0].transaction.read_set.is_empty());
    }

    #[tokio::test]
    async fn abort_is_reported_with_reason_and_key() {
        let fake = Fake { stale_account: Some(1), ..fake_with_balances() };
        let agent = fake_agent::start(fake).await;
        let report = Runner::new().unwrap().run(&agent, "r(1)w(1=5)", None).await.unwrap();
        assert!(report.aborted());
        assert_eq!(report.exit_code(), EXIT_ABORT);
        let text = report.to_text();
        assert!(text.contains("ABORT"), "{text}");
        assert!(text.contains("stale_read"), "{text}");
        assert!(text.contains("account 1"), "{text}");
    }

    #[tokio::test]
    async fn a_replica_redirects_the_commit_to_the_leader() {
        let leader = fake_with_balances();
        let leader_address = fake_agent::start(leader.clone()).await;
        let replica = Fake { leader: Some(leader_address.clone()), ..fake_with_balances() };
        let replica_address = fake_agent::start(replica).await;

        let report = Runner::new().unwrap().run(&replica_address, "r(1)w(2=3)", None).await.unwrap();
        assert_eq!(report.read.as_ref().unwrap().agent, replica_address);
        assert_eq!(report.commit_agent.as_deref(), Some(leader_address.as_str()));
        assert_eq!(leader.commits.lock().unwrap().len(), 1);
        assert!(report.notes[0].contains("is not the leader"), "{:?}", report.notes);
    }

    #[tokio::test]
    async fn a_redirect_is_followed_only_once() {
        // A replica naming another replica as the leader: a broken cluster must not loop.
        let elsewhere = fake_agent::closed_port().await;
        let second = Fake { leader: Some(elsewhere), ..Fake::default() };
        let second_address = fake_agent::start(second).await;
        let first = Fake { leader: Some(second_address), ..Fake::default() };
        let first_address = fake_agent::start(first).await;

        let err = Runner::new().unwrap().run(&first_address, "w(1=1)", None).await.unwrap_err();
        assert_eq!(err.exit_code(), EXIT_UNAVAILABLE);
        assert!(err.to_string().contains("says it is not"), "{err}");
    }

    #[tokio::test]
    async fn errors_map_to_exit_codes() {
        let runner = Runner::new().unwrap();
        let closed = fake_agent::closed_port().await;

        let parse = runner.run(&closed, "r(1)w(2=22", None).await.unwrap_err();
        assert_eq!(parse.exit_code(), EXIT_USAGE);
        assert!(parse.to_string().contains("column"), "{parse}");

        let down = runner.run(&closed, "r(1)", None).await.unwrap_err();
        assert_eq!(down.exit_code(), EXIT_UNAVAILABLE);
        assert!(down.to_string().contains("cannot reach the agent"), "{down}");

        // A refused connection sent nothing, so the outcome is known: nothing was applied.
        let refused = runner.run(&closed, "w(1=1)", None).await.unwrap_err();
        assert!(!refused.to_string().contains("unknown"), "{refused}");
    }

    #[tokio::test]
    async fn error_answers_map_to_exit_codes() {
        let runner = Runner::new().unwrap();
        let unavailable = Fake { fail_commit_with: Some(StatusCode::SERVICE_UNAVAILABLE), ..Fake::default() };
        let agent = fake_agent::start(unavailable).await;
        let err = runner.run(&agent, "w(1=1)", None).await.unwrap_err();
        assert_eq!(err.exit_code(), EXIT_UNAVAILABLE);
        assert!(err.to_string().contains("the fake says 503"), "{err}");
        assert!(err.to_string().contains("--txn-id"), "{err}");

        let bad = Fake { fail_commit_with: Some(StatusCode::BAD_REQUEST), ..Fake::default() };
        let agent = fake_agent::start(bad).await;
        let err = runner.run(&agent, "w(1=1)", None).await.unwrap_err();
        assert_eq!(err.exit_code(), EXIT_USAGE);
        assert!(err.to_string().contains("refused the transaction"), "{err}");

        let odd = Fake { fail_commit_with: Some(StatusCode::INTERNAL_SERVER_ERROR), ..Fake::default() };
        let agent = fake_agent::start(odd).await;
        let err = runner.run(&agent, "w(1=1)", None).await.unwrap_err();
        assert_eq!(err.exit_code(), EXIT_UNAVAILABLE);
        assert!(err.to_string().contains("HTTP 500"), "{err}");
    }

    #[test]
    fn base_url_accepts_addresses_and_urls() {
        assert_eq!(base_url("127.0.0.1:8000"), "http://127.0.0.1:8000");
        assert_eq!(base_url(" http://h:1/ "), "http://h:1");
    }
}
