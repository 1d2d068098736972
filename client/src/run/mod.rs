//! Running one transaction typed in the transaction language against the cluster: the logic
//! shared by `client run` and the web form.
//!
//! A transaction such as `r(1)w(2=22)` runs the way the original system's client ran it:
//! 1. `POST /read/` of its read set on the leader (skipped when it reads nothing: a blind write);
//! 2. `POST /commit/` of its read set, write set and the read's timestamp, under one `txn_id`
//!    (skipped when it writes nothing: a read-only transaction).
//!
//! A read-only transaction may instead read from any node ([`ReadFrom::Nodes`]): a replica
//! answers with a consistent snapshot at its own applied LSN.
//!
//! Following the leader (`route.rs`):
//! - an agent that is not the leader answers 421 with the leader's address: the request goes
//!   there (at most [`MAX_REDIRECTS`] hops in a row, so two agents naming each other cannot loop);
//! - an agent that cannot be reached, or answers 503 (down, an election in progress, a leader
//!   deposed while the commit was in flight), makes the run ask the supervisor where the leader
//!   is, and try again, pausing between tries, until the run's follow budget is spent. Then it
//!   fails with a message that says what it saw, never with a raw error;
//! - when neither the agent nor the supervisor can be reached, nothing is going to change by
//!   waiting: the run fails at once (the cluster is stopped).
//!
//! Invariant: every try of one commit carries the same `txn_id`, so a commit whose answer was
//! lost is applied at most once whichever leader receives it again.
//!
//! The code: [`Runner`] here sends the requests; `route.rs` follows the leader (a pure
//! `read_try` decides what each try came to, the loop around it waits and asks the supervisor);
//! `report.rs` is what a run did, as text for people ([`RunReport`]); `error.rs` is why a run
//! produced no outcome, by kind ([`RunError`], [`Unavailable`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::{
    parse_transaction, Account, CommitRequest, CommitResponse, ReadRequest, ReadResponse, Role, TransactionBody,
};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

mod error;
mod report;
mod route;

pub use error::{
    root_cause, NoAnswer, Rejection, RunError, SendError, SupervisorSays, Unavailable, EXIT_ABORT, EXIT_UNAVAILABLE,
    EXIT_USAGE,
};
pub use report::{abort_reason, describe_writes, plain_reason, role_name, wire_name, ReadResult, RunReport, Verdict};
pub use route::MAX_REDIRECTS;

use error::{error_for, parse_answer};
use route::Route;

use crate::status::StatusError;

/// How long one request to an agent may take. A read may wait up to 5 s for a locked key, a
/// commit takes milliseconds when the cluster is well; a frozen leader must not hold a run for
/// longer than it takes the supervisor to replace it plus this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(6);
/// Connecting to a live agent takes well under this; a dead host should fail fast.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Asking the supervisor where the leader is: it answers from memory.
const SUPERVISOR_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a run keeps looking for a leader by default. A failover takes about a second.
pub const DEFAULT_FOLLOW_BUDGET: Duration = Duration::from_secs(10);

/// Where a read-only transaction reads. A transaction that writes always reads at the leader:
/// its commit is validated against the leader's timestamps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ReadFrom {
    #[default]
    Leader,
    /// These nodes, in this order: the first that answers.
    Nodes(Vec<String>),
}

/// How to run one transaction.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Makes the commit idempotent; a fresh id is made when `None`.
    pub txn_id: Option<Uuid>,
    pub read_from: ReadFrom,
}

/// `host:port` or a full `http://host:port` URL, without a trailing slash.
pub fn base_url(address: &str) -> String {
    crate::net::base_url(address)
}

/// The part of the supervisor's `GET /status` a run needs to find the leader. Read leniently:
/// a client and a supervisor of different versions still understand each other.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct LeaderView {
    pub leader: Option<String>,
    pub writes_available: bool,
    pub message: String,
}

/// Talks to the agents, and to the supervisor to find the leader. Cheap to clone: one
/// keep-alive connection pool is shared.
#[derive(Clone)]
pub struct Runner {
    http: reqwest::Client,
    /// The supervisor's address, asked where the leader is when the leader does not answer.
    supervisor: Option<String>,
    /// How long one run keeps looking for a leader.
    follow_budget: Duration,
    /// The client API key sent with every `/read/` and `/commit/` (agents with `--api-keys`
    /// need one), as `Authorization: Bearer <key>`.
    api_key: Option<Arc<str>>,
}

impl Runner {
    pub fn new() -> anyhow::Result<Self> {
        let http = crate::net::builder(None)?.timeout(REQUEST_TIMEOUT).connect_timeout(CONNECT_TIMEOUT).build()?;
        Ok(Self { http, supervisor: None, follow_budget: DEFAULT_FOLLOW_BUDGET, api_key: None })
    }

    /// Sends `key` with every read and commit (none: send no key).
    pub fn with_api_key(mut self, key: Option<&str>) -> Self {
        self.api_key = key.map(Arc::from);
        self
    }

    pub fn api_key(&self) -> Option<&str> {
        self.api_key.as_deref()
    }

    /// Asks this supervisor (`host:port`) for the leader when the leader does not answer. An
    /// empty address means none.
    pub fn with_supervisor(mut self, supervisor: Option<&str>) -> Self {
        self.supervisor = supervisor.map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
        self
    }

    pub fn with_follow_budget(mut self, budget: Duration) -> Self {
        self.follow_budget = budget;
        self
    }

    pub fn supervisor(&self) -> Option<&str> {
        self.supervisor.as_deref()
    }

    /// Parses `text` and runs it, starting from the agent at `leader` (`host:port`), the
    /// current best guess of the leader.
    pub async fn run(&self, leader: &str, text: &str, options: &RunOptions) -> Result<RunReport, RunError> {
        let parsed = parse_transaction(text).map_err(RunError::Parse)?;
        let read_set = parsed.read_set();
        let writes = parsed.write_set();
        if read_set.is_empty() && writes.is_empty() {
            return Err(RunError::Rejected(Rejection::Empty));
        }

        let started = Instant::now();
        let mut route = Route::new(self, leader, started + self.follow_budget);

        if parsed.is_read_only() {
            let read = match &options.read_from {
                ReadFrom::Leader => self.read_at_leader(&mut route, &read_set).await?,
                ReadFrom::Nodes(nodes) => self.read_from_nodes(nodes, &read_set).await?,
            };
            let leader = (read.role == Role::Leader).then(|| read.agent.clone());
            return Ok(RunReport {
                transaction: parsed.to_string(),
                read: Some(read),
                writes,
                commit: None,
                leader,
                notes: route.finish(),
                latency: started.elapsed(),
            });
        }

        if matches!(options.read_from, ReadFrom::Nodes(_)) {
            route
                .notes
                .push("the transaction writes, so it read at the leader (only read-only ones read elsewhere)".into());
        }
        let read = if read_set.is_empty() { None } else { Some(self.read_at_leader(&mut route, &read_set).await?) };
        let txn_id = options.txn_id.unwrap_or_else(Uuid::new_v4);
        let body = CommitRequest {
            transaction: TransactionBody {
                read_set: read_set.clone(),
                write_set: writes.clone(),
                time_stamp: read.as_ref().map(|r| r.timestamp),
                txn_id: Some(txn_id),
            },
            min_copies: None,
        };
        let (code, bytes) = route.send_to_leader("/commit/", &body, Some(txn_id)).await?;
        let commit: CommitResponse = match code {
            // 409: an ABORT by a conflict; 503 reaches here only with an ABORT answer
            // (`replication_failed`): [`Route::send_to_leader`] retries the others.
            StatusCode::OK | StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE => {
                parse_answer(&route.agent, "/commit/", &bytes)?
            }
            _ => return Err(error_for(&route.agent, "/commit/", code, &bytes)),
        };
        Ok(RunReport {
            transaction: parsed.to_string(),
            read,
            writes,
            commit: Some(commit),
            leader: Some(route.agent.clone()),
            notes: route.finish(),
            latency: started.elapsed(),
        })
    }

    /// Reads at the leader. When the node that answered is not the leader (the run started
    /// from a replica's address), reads again at the leader it names: a commit is validated
    /// against the leader's timestamps, and a replica's may be behind.
    async fn read_at_leader(&self, route: &mut Route<'_>, read_set: &[Account]) -> Result<ReadResult, RunError> {
        let body = read_request(read_set);
        let (code, bytes) = route.send_to_leader("/read/", &body, None).await?;
        let read = read_result(&route.agent, read_set, code, &bytes)?;
        if read.role == Role::Leader {
            return Ok(read);
        }
        match self.leader_named_by(&route.agent).await {
            Some(leader) if leader != route.agent => {
                route.notes.push(format!(
                    "{} is a {}; read again at the leader {leader}",
                    route.agent,
                    role_name(read.role)
                ));
                route.agent = leader;
                let (code, bytes) = route.send_to_leader("/read/", &body, None).await?;
                read_result(&route.agent, read_set, code, &bytes)
            }
            _ => {
                route.notes.push(format!(
                    "{} is a {} and no leader is known: the values may be behind the leader's",
                    route.agent,
                    role_name(read.role)
                ));
                Ok(read)
            }
        }
    }

    /// Reads at the first of `nodes` that answers, whatever its role.
    async fn read_from_nodes(&self, nodes: &[String], read_set: &[Account]) -> Result<ReadResult, RunError> {
        let body = read_request(read_set);
        let mut failures = Vec::new();
        for node in nodes {
            match self.post(node, "/read/", &body).await {
                Ok((code, bytes)) => match read_result(node, read_set, code, &bytes) {
                    Ok(read) => return Ok(read),
                    Err(e) => failures.push(e.to_string()),
                },
                Err(e) => failures.push(e.to_string()),
            }
        }
        if failures.is_empty() {
            return Err(RunError::Rejected(Rejection::NoNodeToReadFrom));
        }
        Err(Unavailable::NoNodeAnswered { failures }.into())
    }

    /// The leader an agent's `/status` names, else the one the supervisor names.
    async fn leader_named_by(&self, agent: &str) -> Option<String> {
        #[derive(Deserialize)]
        struct StatusLeader {
            leader: Option<String>,
        }
        let url = format!("{}/status", base_url(agent));
        let from_agent = match self.http.get(&url).timeout(SUPERVISOR_TIMEOUT).send().await {
            Ok(response) if response.status().is_success() => {
                response.json::<StatusLeader>().await.ok().and_then(|s| s.leader)
            }
            Ok(_) => None,
            Err(e) => {
                crate::metrics::agent_call_failed("/status", &e);
                None
            }
        };
        match from_agent {
            Some(leader) => Some(leader),
            None => self.ask_supervisor().await.ok().flatten().and_then(|view| view.leader),
        }
    }

    /// The supervisor's view of the leader: `Ok(None)` when there is no supervisor to ask.
    pub async fn ask_supervisor(&self) -> Result<Option<LeaderView>, StatusError> {
        let Some(supervisor) = &self.supervisor else {
            return Ok(None);
        };
        crate::status::supervisor_status(&self.http, supervisor, SUPERVISOR_TIMEOUT).await.map(Some)
    }

    /// Posts `body` to `path` on `agent`: the answer, whatever its status, or why none came.
    async fn post(
        &self,
        agent: &str,
        path: &'static str,
        body: &impl Serialize,
    ) -> Result<(StatusCode, Vec<u8>), SendError> {
        let url = format!("{}{path}", base_url(agent));
        let answer: Result<_, reqwest::Error> = async {
            let mut request = self.http.post(&url).json(body);
            if let Some(key) = &self.api_key {
                request = request.bearer_auth(key);
            }
            let response = request.send().await?;
            let code = response.status();
            let bytes = response.bytes().await?;
            Ok((code, bytes.to_vec()))
        }
        .await;
        answer.map_err(|e| {
            crate::metrics::agent_call_failed(path, &e);
            SendError::new(agent, path, &e)
        })
    }
}

fn read_request(read_set: &[Account]) -> ReadRequest {
    ReadRequest {
        transaction: TransactionBody { read_set: read_set.to_vec(), ..Default::default() },
        min_lsn: None,
        as_of_lsn: None,
    }
}

fn read_result(agent: &str, read_set: &[Account], code: StatusCode, bytes: &[u8]) -> Result<ReadResult, RunError> {
    if code != StatusCode::OK {
        return Err(error_for(agent, "/read/", code, bytes));
    }
    let answer: ReadResponse = parse_answer(agent, "/read/", bytes)?;
    Ok(ReadResult {
        values: read_set.iter().map(|a| (*a, answer.values.get(a).copied())).collect(),
        timestamp: answer.timestamp,
        lsn: answer.lsn,
        node: answer.node,
        role: answer.role,
        agent: agent.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_agent::{self, Fake, FakeSupervisor, COMMIT_TS, READ_TS};
    use protocol::Outcome;
    use std::collections::BTreeMap;

    fn fake_with_balances() -> Fake {
        Fake { balances: BTreeMap::from([(1, 100), (3, 300)]), ..Fake::default() }
    }

    fn runner() -> Runner {
        Runner::new().unwrap().with_follow_budget(Duration::from_secs(3))
    }

    async fn run(runner: &Runner, agent: &str, text: &str) -> Result<RunReport, RunError> {
        runner.run(agent, text, &RunOptions::default()).await
    }

    #[tokio::test]
    async fn commit_carries_the_read_timestamp_and_a_txn_id() {
        let fake = fake_with_balances();
        let agent = fake_agent::start(fake.clone()).await;
        let report = run(&runner(), &agent, "r(1) w(2=22) r(4)").await.unwrap();

        let read = report.read.as_ref().unwrap();
        assert_eq!(read.values, vec![(1, Some(100)), (4, None)]);
        assert_eq!(read.timestamp, READ_TS);
        let commit = report.commit.as_ref().unwrap();
        assert_eq!((commit.commit, commit.commit_ts), (Outcome::Commit, Some(COMMIT_TS)));
        assert_eq!(report.exit_code(), 0);
        assert_eq!(report.leader.as_deref(), Some(agent.as_str()));
        assert_eq!(report.leader_text(), Some(format!("node0 at {agent}")));

        let sent = fake.commits();
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
        assert!(text.contains(&format!("leader: node0 at {agent}\n")), "{text}");
        assert!(report.in_words().contains("committed"), "{}", report.in_words());
    }

    #[tokio::test]
    async fn read_only_skips_the_commit_and_blind_write_skips_the_read() {
        let fake = fake_with_balances();
        let agent = fake_agent::start(fake.clone()).await;
        let runner = runner();

        let read_only = run(&runner, &agent, "r(3)").await.unwrap();
        assert!(read_only.commit.is_none());
        assert_eq!((read_only.exit_code(), read_only.headline()), (0, "READ"));
        assert!(read_only.to_text().contains("READ: read-only transaction"), "{}", read_only.to_text());
        assert!(fake.commits().is_empty());

        let blind = run(&runner, &agent, "w(7=70)").await.unwrap();
        assert!(blind.read.is_none());
        let sent = fake.commits();
        assert_eq!(sent[0].transaction.time_stamp, None);
        assert!(sent[0].transaction.read_set.is_empty());
    }

    #[tokio::test]
    async fn abort_is_reported_with_reason_and_key() {
        let fake = Fake { stale_account: Some(1), ..fake_with_balances() };
        let agent = fake_agent::start(fake).await;
        let report = run(&runner(), &agent, "r(1)w(1=5)").await.unwrap();
        assert!(report.aborted());
        assert_eq!(report.exit_code(), EXIT_ABORT);
        let text = report.to_text();
        assert!(text.contains("ABORT"), "{text}");
        assert!(text.contains("stale_read"), "{text}");
        assert!(text.contains("account 1"), "{text}");
        let words = report.in_words();
        assert!(words.contains("nothing was written") && words.contains("account 1 was changed"), "{words}");
    }

    #[tokio::test]
    async fn a_replica_redirects_the_commit_and_the_read_goes_to_the_leader() {
        let leader = fake_with_balances();
        let leader_address = fake_agent::start(leader.clone()).await;
        let replica = Fake { balances: fake_with_balances().balances, ..Fake::replica_of(&leader_address) };
        let replica_address = fake_agent::start(replica).await;

        let report = run(&runner(), &replica_address, "r(1)w(2=3)").await.unwrap();
        // The replica answered the read and named the leader in its status: read again there.
        assert_eq!(report.read.as_ref().unwrap().agent, leader_address);
        assert_eq!(report.read.as_ref().unwrap().role, Role::Leader);
        assert_eq!(report.leader.as_deref(), Some(leader_address.as_str()));
        assert_eq!(leader.commits().len(), 1);
        assert!(report.notes[0].contains("is a replica; read again at the leader"), "{:?}", report.notes);

        // A blind write goes to the replica and follows its 421.
        let report = run(&runner(), &replica_address, "w(2=3)").await.unwrap();
        assert_eq!(report.leader.as_deref(), Some(leader_address.as_str()));
        assert!(report.notes[0].contains("is not the leader"), "{:?}", report.notes);
    }

    #[tokio::test]
    async fn a_read_only_transaction_can_read_from_any_node() {
        let leader_address = fake_agent::start(fake_with_balances()).await;
        let replica = Fake { balances: fake_with_balances().balances, ..Fake::replica_of(&leader_address) };
        let replica_address = fake_agent::start(replica).await;
        let closed = fake_agent::closed_port().await;

        let options = RunOptions { read_from: ReadFrom::Nodes(vec![closed, replica_address.clone()]), txn_id: None };
        let report = runner().run(&leader_address, "r(1)", &options).await.unwrap();
        let read = report.read.as_ref().unwrap();
        assert_eq!((read.agent.as_str(), read.role), (replica_address.as_str(), Role::Replica));
        assert_eq!(report.leader, None);
        assert!(report.in_words().contains("node1 (replica)"), "{}", report.in_words());
    }

    #[tokio::test]
    async fn redirects_are_followed_a_bounded_number_of_times() {
        // Two replicas naming each other: a broken cluster must not loop.
        let closed = fake_agent::closed_port().await;
        let second = Fake::replica_of(&closed);
        let second_address = fake_agent::start(second.clone()).await;
        let first = Fake::replica_of(&second_address);
        let first_address = fake_agent::start(first).await;
        second.set_leader(Some(first_address.clone()));

        let runner = Runner::new().unwrap().with_follow_budget(Duration::from_millis(500));
        let started = Instant::now();
        let err = run(&runner, &first_address, "w(1=1)").await.unwrap_err();
        assert_eq!(err.exit_code(), EXIT_UNAVAILABLE);
        let Some(Unavailable::NoLeaderWithin { seen, supervisor: None, .. }) = err.unavailability() else {
            panic!("{err:?}")
        };
        assert!(matches!(seen, NoAnswer::LeaderRefuses { .. }), "{seen:?}");
        assert!(err.to_string().contains("no leader answered within"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_stopped_cluster_fails_at_once_with_exit_code_3() {
        let closed = fake_agent::closed_port().await;
        let no_supervisor = fake_agent::closed_port().await;
        let runner = runner().with_supervisor(Some(&no_supervisor));
        let started = Instant::now();
        let err = run(&runner, &closed, "r(1)w(2=2)").await.unwrap_err();
        assert_eq!(err.exit_code(), EXIT_UNAVAILABLE);
        assert!(
            matches!(
                err.unavailability(),
                Some(Unavailable::ClusterStopped {
                    seen: NoAnswer::Unsent(SendError::Connect { .. }),
                    supervisor: StatusError::Unreachable { .. }
                })
            ),
            "{err:?}"
        );
        // A refused connection sent nothing, so the outcome is known: nothing was applied.
        assert!(matches!(err, RunError::Unavailable { unknown_txn: None, .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("cannot reach the agent") && text.contains("cannot reach the supervisor"), "{text}");
        assert!(text.contains("stopped"), "{text}");
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_dead_leader_is_replaced_by_the_one_the_supervisor_names() {
        let new_leader = fake_with_balances();
        let new_address = fake_agent::start(new_leader.clone()).await;
        let old = fake_agent::closed_port().await;
        let supervisor = FakeSupervisor::start(Some(new_address.clone())).await;

        let runner = runner().with_supervisor(Some(&supervisor.address));
        let report = run(&runner, &old, "r(1)w(2=5)").await.unwrap();
        assert_eq!(report.verdict(), Verdict::Commit);
        assert_eq!(report.leader.as_deref(), Some(new_address.as_str()));
        assert!(report.notes.iter().any(|n| n.contains("the supervisor names")), "{:?}", report.notes);
        assert_eq!(new_leader.commits().len(), 1);
    }

    #[tokio::test]
    async fn during_an_election_the_commit_waits_and_retries_with_the_same_txn_id() {
        // The leader answers 503 (an election in progress) twice, then commits.
        let leader = Fake { unavailable_commits: fake_agent::counter(2), ..fake_with_balances() };
        let address = fake_agent::start(leader.clone()).await;
        let supervisor = FakeSupervisor::start(None).await;
        let runner = runner().with_supervisor(Some(&supervisor.address));
        let txn_id = Uuid::new_v4();

        let options = RunOptions { txn_id: Some(txn_id), ..RunOptions::default() };
        let report = runner.run(&address, "w(2=5)", &options).await.unwrap();
        assert_eq!(report.verdict(), Verdict::Commit);
        let tries = leader.tries();
        assert_eq!(tries.len(), 3, "{tries:?}");
        assert!(tries.iter().all(|t| t.transaction.txn_id == Some(txn_id)), "{tries:?}");
        assert!(report.notes.iter().any(|n| n.contains("waited")), "{:?}", report.notes);
    }

    #[tokio::test]
    async fn a_commit_whose_outcome_is_unknown_says_how_to_learn_it() {
        let leader = Fake { unavailable_commits: fake_agent::counter(1000), name_txn_in_503: true, ..Fake::default() };
        let address = fake_agent::start(leader).await;
        let supervisor = FakeSupervisor::start(Some(address.clone())).await;
        let runner = Runner::new()
            .unwrap()
            .with_follow_budget(Duration::from_millis(400))
            .with_supervisor(Some(&supervisor.address));

        let err = run(&runner, &address, "w(1=1)").await.unwrap_err();
        assert_eq!(err.exit_code(), EXIT_UNAVAILABLE);
        let RunError::Unavailable { cause, unknown_txn: Some(id) } = &err else { panic!("{err:?}") };
        assert!(
            matches!(**cause, Unavailable::NoLeaderWithin { supervisor: Some(SupervisorSays::Status(_)), .. }),
            "{cause:?}"
        );
        let text = err.to_string();
        assert!(text.contains(&format!("outcome of transaction {id} is unknown")), "{text}");
        assert!(text.contains("the supervisor says"), "{text}");
    }

    #[tokio::test]
    async fn error_answers_map_to_exit_codes() {
        let runner = runner();
        let closed = fake_agent::closed_port().await;
        let parse = run(&runner, &closed, "r(1)w(2=22").await.unwrap_err();
        assert_eq!(parse.exit_code(), EXIT_USAGE);
        assert!(parse.to_string().contains("column 11"), "{parse}");

        let bad = Fake { fail_commit_with: Some(StatusCode::BAD_REQUEST), ..Fake::default() };
        let agent = fake_agent::start(bad).await;
        let err = run(&runner, &agent, "w(1=1)").await.unwrap_err();
        assert_eq!(err.exit_code(), EXIT_USAGE);
        assert!(matches!(err, RunError::Rejected(Rejection::ByAgent { .. })), "{err:?}");
        assert!(err.to_string().contains("refused"), "{err}");

        let odd = Fake { fail_commit_with: Some(StatusCode::INTERNAL_SERVER_ERROR), ..Fake::default() };
        let agent = fake_agent::start(odd).await;
        let err = run(&runner, &agent, "w(1=1)").await.unwrap_err();
        assert_eq!(err.exit_code(), EXIT_UNAVAILABLE);
        let Some(Unavailable::UnexpectedStatus { code, .. }) = err.unavailability() else { panic!("{err:?}") };
        assert_eq!(*code, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(err.to_string().contains("HTTP 500"), "{err}");

        let replication = Fake { replication_fails: true, ..Fake::default() };
        let agent = fake_agent::start(replication).await;
        let report = run(&runner, &agent, "w(1=1)").await.unwrap();
        assert_eq!(report.exit_code(), EXIT_ABORT);
        assert!(report.in_words().contains("no member applied it"), "{}", report.in_words());
    }

    #[test]
    fn base_url_accepts_addresses_and_urls() {
        assert_eq!(base_url("127.0.0.1:8000"), "http://127.0.0.1:8000");
        assert_eq!(base_url(" http://h:1/ "), "http://h:1");
    }
}
