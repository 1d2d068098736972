//! The bank workload: transfer clients on the leader, read-only clients on any node.
//!
//! A transfer reads two accounts on the leader, then commits `a -= x, b += x` with the read's
//! timestamp and a fresh `txn_id`, through the harness's [`Follower`]: it follows a 421 to the
//! leader it names, asks the supervisor on a 503 or a dead connection, and retries only with the
//! same `txn_id`. A read-only transaction reads two accounts (or all of them) on a random node.
//!
//! One more client, the *retrier*, sends again, with the same body, `txn_id`s the transfer
//! clients already got an answer for (200 COMMIT or 409 ABORT): a few at random all the time, and
//! a burst of them as soon as the supervisor's term moves on (a failover), when the answer must
//! come from a leader that did not give the first one. Every few seconds it also reads two
//! accounts on the leader and commits a transfer with a far-future `time_stamp`, which must be
//! refused (400 `bad_timestamp`). It sends through [`Sender`], which, unlike the harness's
//! follower, takes any answer (a 400 included) as data for the history.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::{Ack, Cluster, Follower, FOLLOW_BUDGET, REQUEST_TIMEOUT};
use protocol::{Account, Balance, Lsn, ReadResponse, Role, Timestamp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::history::{History, Mop, Op, OpType, TxnKind};

/// Timeout of one read-only request.
const READ_TIMEOUT: Duration = Duration::from_secs(4);

/// Counters for the progress display and the summary.
#[derive(Default)]
pub struct Stats {
    pub attempted: AtomicU64,
    pub committed: AtomicU64,
    pub indeterminate: AtomicU64,
    /// Transfers whose read no leader served (nothing was sent to commit).
    pub read_unavailable: AtomicU64,
    pub aborted: Mutex<BTreeMap<String, u64>>,
    pub ro_ok: AtomicU64,
    pub ro_failed: AtomicU64,
    pub ro_info: AtomicU64,
    /// Answers the API's rules do not explain (a 500, a body that is not JSON, ...).
    pub surprises: Mutex<Vec<String>>,
    /// Retries of answered `txn_id`s: sent, sent in a burst after a failover, and what came
    /// back compared with the first answer (as the client sees it; the checker decides).
    pub retries: AtomicU64,
    pub retries_after_failover: AtomicU64,
    pub retries_same: AtomicU64,
    pub retries_changed: AtomicU64,
    pub retries_no_outcome: AtomicU64,
    /// Far-future commits: sent, refused with 400 `bad_timestamp`, acknowledged, other answers.
    pub future_ts_sent: AtomicU64,
    pub future_ts_refused: AtomicU64,
    pub future_ts_acked: AtomicU64,
    pub future_ts_other: AtomicU64,
}

/// What every client shares.
pub struct Shared {
    pub cluster: Arc<Cluster>,
    pub history: Arc<History>,
    pub stats: Arc<Stats>,
    pub stop: Arc<AtomicBool>,
    pub answered: AnsweredPool,
}

/// A transfer that got an outcome, kept for the retrier.
#[derive(Debug, Clone)]
pub struct Answered {
    pub txn_id: Uuid,
    /// The object sent under `"transaction"`.
    pub transaction: Value,
    /// History index of its completion.
    pub done_index: u64,
    /// 200 or 409, and for a COMMIT its LSN and commit timestamp.
    pub status: u16,
    pub lsn: Option<Lsn>,
    pub commit_ts: Option<Timestamp>,
}

/// The last [`POOL_CAP`] committed and the last [`POOL_CAP`] aborted transfers.
#[derive(Default)]
pub struct AnsweredPool {
    inner: Mutex<[Ring; 2]>,
}

#[derive(Default)]
struct Ring {
    items: Vec<Answered>,
    next: usize,
}

const POOL_CAP: usize = 4_096;

impl AnsweredPool {
    pub fn add(&self, a: Answered) {
        let mut inner = self.inner.lock().unwrap();
        let ring = &mut inner[usize::from(a.status != 200)];
        if ring.items.len() < POOL_CAP {
            ring.items.push(a);
        } else {
            let at = ring.next;
            ring.items[at] = a;
            ring.next = (at + 1) % POOL_CAP;
        }
    }

    /// A random committed (or aborted) one, if any.
    pub fn pick(&self, committed: bool, rng: &mut StdRng) -> Option<Answered> {
        let inner = self.inner.lock().unwrap();
        let ring = &inner[usize::from(!committed)];
        (!ring.items.is_empty()).then(|| ring.items[rng.random_range(0..ring.items.len())].clone())
    }
}

impl Stats {
    pub fn aborted_total(&self) -> u64 {
        self.aborted.lock().unwrap().values().sum()
    }
}

fn role_name(role: Role) -> String {
    serde_json::to_value(role).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_else(|| format!("{role:?}"))
}

/// Why a transfer was not sent: its read lacked one of its two accounts.
const ACCOUNT_MISSING: &str = "account_missing: the read did not return both accounts";

/// The transfer of `amount` from `a` to `b` as `read` saw them: its micro-operations and its
/// write set, or, when the read lacks either account, the reads it did get.
fn planned_transfer(
    read: &ReadResponse,
    a: Account,
    b: Account,
    amount: Balance,
) -> Result<(Vec<Mop>, Value), Vec<Mop>> {
    let (Some(&va), Some(&vb)) = (read.values.get(&a), read.values.get(&b)) else {
        return Err(vec![Mop::Read(a, read.values.get(&a).copied()), Mop::Read(b, read.values.get(&b).copied())]);
    };
    let value = vec![
        Mop::Read(a, Some(va)),
        Mop::Read(b, Some(vb)),
        Mop::Write(a, Some(va - amount)),
        Mop::Write(b, Some(vb + amount)),
    ];
    Ok((value, json!({a.to_string(): va - amount, b.to_string(): vb + amount})))
}

fn read_fields(op: &mut Op, r: &ReadResponse) {
    op.read_lsn = Some(r.lsn);
    op.read_ts = Some(r.timestamp);
    op.node = Some(r.node.clone());
    op.role = Some(role_name(r.role));
}

/// The initial deposit: every account gets `balance`, as one blind write. Retried (same
/// `txn_id`) until it commits.
pub async fn deposit(
    c: &Cluster,
    history: &History,
    process: u64,
    accounts: Account,
    balance: Balance,
) -> anyhow::Result<()> {
    let id = Uuid::new_v4();
    let writes: Vec<Mop> = (1..=accounts).map(|k| Mop::Write(k, Some(balance))).collect();
    let mut invoke = Op::new(OpType::Invoke, process, TxnKind::Init, writes.clone());
    invoke.txn_id = Some(id);
    history.record(invoke);
    let write_set: serde_json::Map<String, serde_json::Value> =
        (1..=accounts).map(|k| (k.to_string(), json!(balance))).collect();
    let mut follower = Follower::new(c, c.initial_leader());
    for _ in 0..5 {
        let sent = follower.commit(json!({"write_set": write_set, "txn_id": id})).await;
        let mut done = Op::new(OpType::Ok, process, TxnKind::Init, writes.clone());
        done.txn_id = Some(id);
        match sent.ack {
            Ack::Commit { lsn, commit_ts } => {
                done.lsn = Some(lsn);
                done.commit_ts = Some(commit_ts);
                history.record(done);
                return Ok(());
            }
            Ack::Abort { status, reason } => {
                done.kind = OpType::Fail;
                done.error = Some(format!("HTTP {status}: {reason}"));
                history.record(done);
                anyhow::bail!("the initial deposit was aborted: HTTP {status}: {reason}");
            }
            Ack::Indeterminate { .. } => continue,
        }
    }
    anyhow::bail!("the initial deposit did not commit: no leader answered")
}

/// One transfer client, until `stop`.
pub async fn transfer_client(sh: Arc<Shared>, process: u64, seed: u64, accounts: Account) {
    let (c, history, stats, stop) = (&sh.cluster, &sh.history, &sh.stats, &sh.stop);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut follower = Follower::new(c, c.initial_leader());
    while !stop.load(Ordering::SeqCst) {
        let a = rng.random_range(1..=accounts);
        let b = loop {
            let b = rng.random_range(1..=accounts);
            if b != a {
                break b;
            }
        };
        let amount: Balance = rng.random_range(1..=100);
        let id = Uuid::new_v4();
        stats.attempted.fetch_add(1, Ordering::Relaxed);
        let mut invoke = Op::new(
            OpType::Invoke,
            process,
            TxnKind::Transfer,
            vec![Mop::Read(a, None), Mop::Read(b, None), Mop::Write(a, None), Mop::Write(b, None)],
        );
        invoke.txn_id = Some(id);
        let invoke = history.record(invoke);

        let read = follower.read(&[a, b]).await;
        let read = match read {
            Ok(r) => r,
            Err(e) => {
                // Nothing was sent to commit: certainly no effect.
                let mut done = invoke.clone();
                done.kind = OpType::Fail;
                done.error = Some(format!("read_unavailable: {e}"));
                history.record(done);
                stats.read_unavailable.fetch_add(1, Ordering::Relaxed);
                stats.surprises.lock().unwrap().append(&mut follower.surprises);
                continue;
            }
        };
        let (value, write_set) = match planned_transfer(&read, a, b, amount) {
            Ok(plan) => plan,
            Err(reads) => {
                // The checker flags this read against the log; nothing to commit.
                let mut done = invoke.clone();
                done.kind = OpType::Fail;
                done.value = reads;
                done.error = Some(ACCOUNT_MISSING.into());
                read_fields(&mut done, &read);
                history.record(done);
                continue;
            }
        };
        let transaction = json!({
            "read_set": [a, b],
            "write_set": write_set,
            "time_stamp": read.timestamp,
            "txn_id": id,
        });
        let sent = follower.commit(transaction.clone()).await;
        let mut done = Op::new(OpType::Ok, process, TxnKind::Transfer, value);
        done.txn_id = Some(id);
        read_fields(&mut done, &read);
        match &sent.ack {
            Ack::Commit { lsn, commit_ts } => {
                done.lsn = Some(*lsn);
                done.commit_ts = Some(*commit_ts);
                done.http_status = Some(200);
                stats.committed.fetch_add(1, Ordering::Relaxed);
            }
            Ack::Abort { status, reason } => {
                done.kind = OpType::Fail;
                done.error = Some(format!("{reason} (HTTP {status})"));
                done.http_status = Some(*status);
                *stats.aborted.lock().unwrap().entry(reason.clone()).or_default() += 1;
            }
            Ack::Indeterminate { last_error } => {
                done.kind = OpType::Info;
                done.error = Some(format!("indeterminate after {} attempts: {last_error}", sent.attempts));
                stats.indeterminate.fetch_add(1, Ordering::Relaxed);
            }
        }
        let done = history.record(done);
        // Outcomes (200 COMMIT, 409 ABORT) are kept for the retrier; 503 answers are not outcomes.
        if matches!(done.http_status, Some(200 | 409)) {
            sh.answered.add(Answered {
                txn_id: id,
                transaction,
                done_index: done.index,
                status: done.http_status.unwrap_or_default(),
                lsn: done.lsn,
                commit_ts: done.commit_ts,
            });
        }
        stats.surprises.lock().unwrap().append(&mut follower.surprises);
    }
}

/// One read-only client, until `stop`: reads on a random node (any role).
pub async fn read_client(sh: Arc<Shared>, process: u64, seed: u64, accounts: Account) {
    let (c, history, stats, stop) = (&sh.cluster, &sh.history, &sh.stats, &sh.stop);
    let mut rng = StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::SeqCst) {
        let node = rng.random_range(0..c.len());
        let keys: Vec<Account> = if rng.random_bool(0.3) {
            (1..=accounts).collect()
        } else {
            let a = rng.random_range(1..=accounts);
            let b = loop {
                let b = rng.random_range(1..=accounts);
                if b != a {
                    break b;
                }
            };
            vec![a, b]
        };
        let invoke = history.record(Op::new(
            OpType::Invoke,
            process,
            TxnKind::ReadOnly,
            keys.iter().map(|&k| Mop::Read(k, None)).collect(),
        ));
        let body = json!({"transaction": {"read_set": keys, "write_set": {}}});
        let sent = c.http().post(format!("{}/read/", c.url(node))).json(&body).timeout(READ_TIMEOUT).send().await;
        let mut done = invoke.clone();
        match sent {
            Ok(resp) if resp.status() == StatusCode::OK => match resp.json::<ReadResponse>().await {
                Ok(r) => {
                    done.kind = OpType::Ok;
                    done.value = keys.iter().map(|&k| Mop::Read(k, r.values.get(&k).copied())).collect();
                    read_fields(&mut done, &r);
                    stats.ro_ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    done.kind = OpType::Info;
                    done.error = Some(format!("node{node}: the answer was lost or is not a read answer: {e}"));
                    stats.ro_info.fetch_add(1, Ordering::Relaxed);
                }
            },
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                done.kind = OpType::Fail;
                done.error = Some(format!("node{node}: HTTP {status}: {}", text.chars().take(200).collect::<String>()));
                stats.ro_failed.fetch_add(1, Ordering::Relaxed);
                if status != StatusCode::SERVICE_UNAVAILABLE && status != StatusCode::MISDIRECTED_REQUEST {
                    stats.surprises.lock().unwrap().push(format!("read on node{node}: HTTP {status}: {text}"));
                }
            }
            Err(e) => {
                done.kind = OpType::Info;
                done.error = Some(format!("node{node}: {e}"));
                stats.ro_info.fetch_add(1, Ordering::Relaxed);
            }
        }
        history.record(done);
        tokio::time::sleep(Duration::from_millis(rng.random_range(10..=40))).await;
    }
}

/// The `time_stamp` of the far-future commits: about the year 2255 in nanoseconds, far beyond
/// any clock.
pub const FAR_FUTURE: Timestamp = 9_000_000_000_000_000_000;
/// How long one retry is retried (503, 421, dead connections) before it counts as unanswered.
const RETRY_BUDGET: Duration = Duration::from_secs(10);
/// Retries sent right after the supervisor's term moves on.
const RETRY_BURST: u32 = 6;

/// The answer a [`Sender`] kept for a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 200 COMMIT.
    Commit { lsn: Lsn, commit_ts: Timestamp },
    /// An ABORT: 409 for a conflict (an outcome), 503 when nothing was applied (not one).
    Abort { status: u16, reason: String },
    /// Refused before anything happened (400 and other 4xx but 409 and 421): the error code
    /// (`bad_timestamp`, `bad_request`, ...) and the message.
    Refused { status: u16, error: String, message: String },
    /// No leader answered within the budget (timeouts, 503 unavailable or not enough replicas).
    NoAnswer { last_error: String },
}

impl Answer {
    /// Writes the answer into the history's completion of the transaction.
    pub fn record_into(&self, done: &mut Op) {
        match self {
            Answer::Commit { lsn, commit_ts } => {
                done.kind = OpType::Ok;
                done.lsn = Some(*lsn);
                done.commit_ts = Some(*commit_ts);
                done.http_status = Some(200);
            }
            Answer::Abort { status, reason } => {
                done.kind = OpType::Fail;
                done.error = Some(format!("{reason} (HTTP {status})"));
                done.http_status = Some(*status);
            }
            Answer::Refused { status, error, message } => {
                done.kind = OpType::Fail;
                done.error = Some(format!("{error}: {message} (HTTP {status})"));
                done.http_status = Some(*status);
            }
            Answer::NoAnswer { last_error } => {
                done.kind = OpType::Info;
                done.error = Some(format!("no answer: {last_error}"));
            }
        }
    }
}

/// What to do after one answer.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Done(Answer),
    /// Send again at once to this node (a 421 naming it).
    Redirect(String),
    /// Ask where the leader is, wait, send again.
    Retry(String),
}

/// Reads one answer to `POST /commit/` for `txn_id` (pure).
fn classify(status: u16, body: &str, txn_id: Uuid) -> Step {
    let json: Option<Value> = serde_json::from_str(body).ok();
    let field = |k: &str| json.as_ref().and_then(|b| b.get(k)).and_then(Value::as_str).map(str::to_owned);
    let short: String = body.chars().take(200).collect();
    if let Some(outcome) = field("commit") {
        if json.as_ref().and_then(|b| b["txn_id"].as_str()).is_some_and(|id| id != txn_id.to_string()) {
            return Step::Retry(format!("HTTP {status}: the answer is for another txn_id: {short}"));
        }
        let reason = field("reason").unwrap_or_else(|| "(none)".into());
        return match (status, outcome.as_str()) {
            (200, "COMMIT") => {
                let num = |k: &str| json.as_ref().and_then(|b| b[k].as_i64());
                match (num("lsn"), num("commit_ts")) {
                    (Some(lsn), Some(commit_ts)) => Step::Done(Answer::Commit { lsn, commit_ts }),
                    _ => Step::Retry(format!("a COMMIT without lsn or commit_ts: {short}")),
                }
            }
            (409, "ABORT") => Step::Done(Answer::Abort { status, reason }),
            // Fewer nodes reachable than min_copies: nothing applied, try again.
            (503, "ABORT") if reason == "not_enough_replicas" => Step::Retry(format!("HTTP 503 {reason}")),
            (503, "ABORT") => Step::Done(Answer::Abort { status, reason }),
            _ => Step::Retry(format!("HTTP {status} with outcome {outcome}: {short}")),
        };
    }
    match status {
        // `log_trimmed`: a txn_id the leader's log no longer reaches; if it was a retry, its
        // outcome is not known any more. Not a refusal: the first send may have committed.
        410 => Step::Done(Answer::NoAnswer {
            last_error: format!("HTTP 410 {}: {}", field("error").unwrap_or_default(), short),
        }),
        421 => match field("leader") {
            Some(leader) => Step::Redirect(leader),
            None => Step::Retry(format!("421 without a leader: {short}")),
        },
        400..=499 if status != 409 => Step::Done(Answer::Refused {
            status,
            error: field("error").unwrap_or_else(|| "(no error code)".into()),
            message: field("message").unwrap_or_else(|| short.clone()),
        }),
        _ => Step::Retry(format!("HTTP {status}: {short}")),
    }
}

/// A client that follows the leader like the harness's [`Follower`], but takes every answer as
/// data: a 400 is an answer here, not a bug of the test.
pub struct Sender {
    cluster: Arc<Cluster>,
    leader: usize,
}

impl Sender {
    pub fn new(cluster: Arc<Cluster>, first: usize) -> Sender {
        Sender { cluster, leader: first }
    }

    /// Commits `transaction` (the object under `"transaction"`, with its `txn_id`) until an
    /// answer comes or `budget` runs out.
    pub async fn commit(&mut self, transaction: &Value, txn_id: Uuid, budget: Duration) -> Answer {
        let body = json!({ "transaction": transaction });
        let deadline = Instant::now() + budget;
        let mut backoff = Duration::from_millis(50);
        let mut hops = 0;
        loop {
            let node = self.leader;
            let sent = self
                .cluster
                .http()
                .post(format!("{}/commit/", self.cluster.url(node)))
                .json(&body)
                .timeout(REQUEST_TIMEOUT)
                .send()
                .await;
            let step = match sent {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    match resp.text().await {
                        Ok(text) => classify(status, &text, txn_id),
                        Err(e) => Step::Retry(format!("node {node}: HTTP {status}, body lost: {e}")),
                    }
                }
                Err(e) => Step::Retry(format!("node {node}: {e}")),
            };
            let error = match step {
                Step::Done(answer) => return answer,
                Step::Redirect(address) => match self.cluster.index_of(&address) {
                    Some(i) if i != node && hops < 3 => {
                        hops += 1;
                        self.leader = i;
                        continue;
                    }
                    _ => {
                        self.find_leader().await;
                        format!("node {node}: 421 naming {address}")
                    }
                },
                Step::Retry(e) => {
                    self.find_leader().await;
                    format!("node {node}: {e}")
                }
            };
            if Instant::now() + backoff > deadline {
                return Answer::NoAnswer { last_error: error };
            }
            hops = 0;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    async fn find_leader(&mut self) {
        if let Ok(s) = self.cluster.try_supervisor_status().await {
            if let Some(i) = s["leader"].as_str().and_then(|a| self.cluster.index_of(a)) {
                self.leader = i;
                return;
            }
        }
        self.leader = (self.leader + 1) % self.cluster.len();
    }
}

fn two_accounts(rng: &mut StdRng, accounts: Account) -> (Account, Account) {
    let a = rng.random_range(1..=accounts);
    loop {
        let b = rng.random_range(1..=accounts);
        if b != a {
            return (a, b);
        }
    }
}

/// The retrier, until `stop`: retries of answered `txn_id`s (a burst after each failover, a few
/// at random otherwise) and, every 3-8 s, a commit with a far-future `time_stamp`.
pub async fn retry_client(sh: Arc<Shared>, process: u64, seed: u64, accounts: Account) {
    let c = sh.cluster.clone();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sender = Sender::new(c.clone(), c.initial_leader());
    let mut reader = Follower::new(&c, c.initial_leader());
    let mut last_term: Option<i64> = None;
    let mut burst = 0u32;
    let mut committed_next = true;
    let mut next_future = Instant::now() + Duration::from_millis(rng.random_range(2_000..=6_000));
    while !sh.stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..=400))).await;
        if let Ok(term) = c.try_supervisor_status().await.map(|s| s["term"].as_i64()) {
            if let (Some(before), Some(now)) = (last_term, term) {
                if now > before {
                    burst = RETRY_BURST;
                }
            }
            last_term = term.or(last_term);
        }
        let after_failover = burst > 0;
        if after_failover || rng.random_bool(0.2) {
            burst = burst.saturating_sub(1);
            committed_next = !committed_next;
            let pick =
                sh.answered.pick(committed_next, &mut rng).or_else(|| sh.answered.pick(!committed_next, &mut rng));
            if let Some(first) = pick {
                retry(&sh, &mut sender, process, &first, after_failover).await;
            }
        }
        if Instant::now() >= next_future && !sh.stop.load(Ordering::SeqCst) {
            far_future_commit(&sh, &mut reader, &mut sender, process, &mut rng, accounts).await;
            next_future = Instant::now() + Duration::from_millis(rng.random_range(3_000..=8_000));
        }
    }
}

/// Sends an answered transaction again and records the answer.
async fn retry(sh: &Shared, sender: &mut Sender, process: u64, first: &Answered, after_failover: bool) {
    let stats = &sh.stats;
    let mut invoke = Op::new(OpType::Invoke, process, TxnKind::Retry, Vec::new());
    invoke.txn_id = Some(first.txn_id);
    invoke.retry_of = Some(first.done_index);
    let invoke = sh.history.record(invoke);
    stats.retries.fetch_add(1, Ordering::Relaxed);
    if after_failover {
        stats.retries_after_failover.fetch_add(1, Ordering::Relaxed);
    }
    let answer = sender.commit(&first.transaction, first.txn_id, RETRY_BUDGET).await;
    let mut done = invoke.clone();
    answer.record_into(&mut done);
    sh.history.record(done);
    let same = match &answer {
        Answer::Commit { lsn, commit_ts } => {
            Some(first.status == 200 && first.lsn == Some(*lsn) && first.commit_ts == Some(*commit_ts))
        }
        Answer::Abort { status: 409, .. } => Some(first.status == 409),
        _ => None,
    };
    let counter = match same {
        Some(true) => &stats.retries_same,
        Some(false) => &stats.retries_changed,
        None => &stats.retries_no_outcome,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Reads two accounts on the leader, then commits a transfer between them with a far-future
/// `time_stamp` instead of the read's.
async fn far_future_commit(
    sh: &Shared,
    reader: &mut Follower<'_>,
    sender: &mut Sender,
    process: u64,
    rng: &mut StdRng,
    accounts: Account,
) {
    let stats = &sh.stats;
    let (a, b) = two_accounts(rng, accounts);
    let amount: Balance = rng.random_range(1..=100);
    let id = Uuid::new_v4();
    let mut invoke = Op::new(
        OpType::Invoke,
        process,
        TxnKind::FutureTs,
        vec![Mop::Read(a, None), Mop::Read(b, None), Mop::Write(a, None), Mop::Write(b, None)],
    );
    invoke.txn_id = Some(id);
    invoke.time_stamp = Some(FAR_FUTURE);
    let invoke = sh.history.record(invoke);
    let read = reader.read(&[a, b]).await;
    stats.surprises.lock().unwrap().append(&mut reader.surprises);
    let read = match read {
        Ok(r) => r,
        Err(e) => {
            let mut done = invoke.clone();
            done.kind = OpType::Fail;
            done.error = Some(format!("read_unavailable: {e}"));
            sh.history.record(done);
            return;
        }
    };
    let mut done = invoke.clone();
    read_fields(&mut done, &read);
    let write_set = match planned_transfer(&read, a, b, amount) {
        Ok((value, write_set)) => {
            done.value = value;
            write_set
        }
        Err(reads) => {
            done.kind = OpType::Fail;
            done.value = reads;
            done.error = Some(ACCOUNT_MISSING.into());
            sh.history.record(done);
            return;
        }
    };
    let transaction = json!({
        "read_set": [a, b],
        "write_set": write_set,
        "time_stamp": FAR_FUTURE,
        "txn_id": id,
    });
    stats.future_ts_sent.fetch_add(1, Ordering::Relaxed);
    let answer = sender.commit(&transaction, id, FOLLOW_BUDGET).await;
    answer.record_into(&mut done);
    sh.history.record(done);
    let counter = match &answer {
        Answer::Refused { status: 400, error, .. } if error == "bad_timestamp" => &stats.future_ts_refused,
        Answer::Commit { .. } => &stats.future_ts_acked,
        _ => &stats.future_ts_other,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Uuid {
        Uuid::from_u128(7)
    }

    #[test]
    fn outcomes_are_done_and_the_rest_is_retried() {
        let commit = format!(r#"{{"commit":"COMMIT","txn_id":"{}","lsn":4,"commit_ts":40}}"#, id());
        assert_eq!(classify(200, &commit, id()), Step::Done(Answer::Commit { lsn: 4, commit_ts: 40 }));
        let abort = format!(r#"{{"commit":"ABORT","txn_id":"{}","reason":"stale_read","key":3}}"#, id());
        assert_eq!(classify(409, &abort, id()), Step::Done(Answer::Abort { status: 409, reason: "stale_read".into() }));
        let failed = format!(r#"{{"commit":"ABORT","txn_id":"{}","reason":"replication_failed"}}"#, id());
        assert!(matches!(classify(503, &failed, id()), Step::Done(Answer::Abort { status: 503, .. })));
        // Not enough replicas: nothing applied, not an outcome.
        let few = format!(r#"{{"commit":"ABORT","txn_id":"{}","reason":"not_enough_replicas"}}"#, id());
        assert!(matches!(classify(503, &few, id()), Step::Retry(_)));
        assert!(matches!(
            classify(503, r#"{"error":"unavailable","reason":"not_enough_replicas"}"#, id()),
            Step::Retry(_)
        ));
        assert_eq!(
            classify(421, r#"{"error":"not_leader","leader":"127.0.0.1:9"}"#, id()),
            Step::Redirect("127.0.0.1:9".into())
        );
        assert_eq!(
            classify(400, r#"{"error":"bad_timestamp","message":"too far"}"#, id()),
            Step::Done(Answer::Refused { status: 400, error: "bad_timestamp".into(), message: "too far".into() })
        );
        assert!(matches!(classify(500, "oops", id()), Step::Retry(_)));
        // Beyond the log's horizon: the outcome is not known, which is no refusal.
        assert!(matches!(
            classify(410, r#"{"error":"log_trimmed","message":"m","horizon":9}"#, id()),
            Step::Done(Answer::NoAnswer { .. })
        ));
        // An answer about another transaction is not ours.
        let other = format!(r#"{{"commit":"COMMIT","txn_id":"{}","lsn":4,"commit_ts":40}}"#, Uuid::from_u128(8));
        assert!(matches!(classify(200, &other, id()), Step::Retry(_)));
    }

    #[test]
    fn an_answer_goes_into_the_history_with_its_status() {
        let mut op = Op::new(OpType::Invoke, 1, TxnKind::Retry, vec![]);
        Answer::Abort { status: 409, reason: "key_locked".into() }.record_into(&mut op);
        assert_eq!((op.kind, op.status()), (OpType::Fail, Some(409)));
        Answer::NoAnswer { last_error: "timeout".into() }.record_into(&mut op);
        assert_eq!(op.kind, OpType::Info);
    }
}
