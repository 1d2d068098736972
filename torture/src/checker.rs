//! The checker: the history against the final state of every node, after the faults healed.
//! Pure: it reads what the run recorded and knows nothing of processes or HTTP, so it can run
//! again later on a saved run (`torture check <folder>`), and its rules are unit-tested.
//!
//! It fails, naming the transactions, on:
//! - `node_unreachable`: a node whose table and log could not be read after healing;
//! - `log_shape`: a log whose LSNs are not dense from 1, whose commit timestamps do not increase,
//!   or whose terms go back;
//! - `nodes_differ`: two nodes whose logs or tables differ;
//! - `table_not_log`: a node whose table is not the replay of its own log;
//! - `applied_twice`: a `txn_id` at two LSNs;
//! - `lost_commit`: an acknowledged COMMIT missing from a node's log (or there with other
//!   writes, another LSN or another commit timestamp);
//! - `aborted_visible`: a transaction the client was told was aborted (or that was never sent)
//!   in a log;
//! - `unknown_transaction`: a log entry no client sent;
//! - `sum_changed`: the sum of all balances not the initial total after some LSN, or in a read
//!   of every account;
//! - `bad_read`: a read (on the leader or a replica) whose values are not the state produced by
//!   exactly the log entries up to the LSN it reported, or whose timestamp is not that entry's;
//! - `not_serializable`: a committed transfer whose reads are not the state just before its LSN
//!   (the log's order is then not a serial order that explains what it read);
//! - `two_leaders`: two agents reporting role leader in the same term;
//! - `changed_outcome`: a `txn_id` answered twice with different outcomes (COMMIT then ABORT or
//!   the reverse, or two COMMITs at different LSNs or commit timestamps), or acknowledged as
//!   committed while a log records it ABORTED. Only 200 COMMIT and 409 ABORT are outcomes; a 503
//!   (replication failed, not enough replicas, unavailable), a 421 or no answer says nothing;
//! - `future_ts_acknowledged`: a commit with a far-future `time_stamp` acknowledged (or found in a
//!   log); the expected answer is 400 `bad_timestamp`;
//! - `under_replicated_ack`: an acknowledged commit held (at its LSN) by fewer than `min_copies`
//!   nodes at the end (a node whose data was wiped counts with what it holds after recovering);
//! - `ack_missing_later`: an acknowledged commit missing from a log snapshot taken after the
//!   acknowledgement: fewer than `min_copies` of the nodes whose snapshot covers its LSN hold it;
//! - `two_leaders_committed`: a commit of term A acknowledged although it was sent after a commit
//!   of a later term B had been acknowledged (a deposed leader kept committing);
//! - `divergent_lsn`: two different entries (txn, term or outcome) at one LSN on two nodes, or
//!   in two snapshots;
//! - `same_lsn_acked`: two transactions acknowledged at the same LSN;
//! - `archive_incomplete`: a node's log starts after LSN 1 (`--retain-log`, or a rebuild from a
//!   snapshot) and the harness did not read the entries before it during the run, so its table
//!   cannot be checked against the whole log.
//!
//! A log that starts after LSN 1 is first completed from the entries the harness read from
//! every node during the run (`crate::archive`); two different entries read at one LSN are a
//! `divergent_lsn` too.
//!
//! Log entries that record an ABORT (`aborted` set) are outcomes, not commits: they change no
//! balance and are left out of every rule about commits.
//!
//! Warnings (reported, not failures): a leader read that misses a commit acknowledged before the
//! read was sent (a read served by a deposed leader: stale, though serializable); a far-future
//! commit answered otherwise than 400 `bad_timestamp` (but not acknowledged); agents reporting
//! different `cluster_id`s.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use protocol::{Account, Balance, Lsn, Term, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::history::{Op, OpType, TxnKind};

/// One row of `bank_balance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub account: Account,
    pub balance: Balance,
    pub created_at: Option<Timestamp>,
    pub updated_at: Option<Timestamp>,
}

/// One entry of `recovery_log` (as `GET /replication_log/` gives it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub lsn: Lsn,
    #[serde(default)]
    pub term: Term,
    pub txn_id: Uuid,
    #[serde(default)]
    pub commit_ts: Timestamp,
    #[serde(default)]
    pub read_set: Vec<Account>,
    #[serde(default)]
    pub write_set: BTreeMap<Account, Balance>,
    /// Set when the entry records an ABORT (`{"reason": ..., "key": ..., "message": ...}`), not a
    /// commit: empty sets, no balance changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted: Option<Value>,
}

impl Entry {
    pub fn is_commit(&self) -> bool {
        self.aborted.is_none()
    }
}

/// Part of every node's log read during the run, once the cluster was whole again after a
/// fault: the entries after `after`, up to what the node had applied when its read began.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogSnapshot {
    /// Nanoseconds since the run started, taken before any node was read: every commit
    /// acknowledged before it must be in the snapshot (where it covers the commit's LSN).
    pub time: u64,
    pub nodes: Vec<SnapshotNode>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotNode {
    pub index: usize,
    /// The entries read are those after this LSN.
    pub after: Lsn,
    pub entries: Vec<Entry>,
    /// Why the node's log could not be read (then it covers nothing).
    #[serde(default)]
    pub error: Option<String>,
}

impl SnapshotNode {
    /// The last LSN this snapshot covers.
    fn up_to(&self) -> Lsn {
        self.entries.last().map_or(self.after, |e| e.lsn)
    }
    fn entry(&self, lsn: Lsn) -> Option<&Entry> {
        self.entries.binary_search_by_key(&lsn, |e| e.lsn).ok().map(|i| &self.entries[i])
    }
}

/// What one node held after the run, read straight from its PostgreSQL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    pub index: usize,
    pub address: String,
    /// Why the node's state could not be read (then `table` and `log` are empty).
    pub error: Option<String>,
    pub table: Vec<Row>,
    pub log: Vec<Entry>,
}

/// One agent's `/status`, sampled during the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusSample {
    /// Nanoseconds since the run started.
    pub time: u64,
    pub node: usize,
    pub role: String,
    pub term: Term,
    pub applied_lsn: Lsn,
    /// Optional fields of newer agents: the term of the last log entry, the cluster's identity,
    /// the durability floor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_term: Option<Term>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_copies: Option<u32>,
}

/// The durability floor when nothing says otherwise.
pub const DEFAULT_MIN_COPIES: usize = 2;

fn default_min_copies() -> usize {
    DEFAULT_MIN_COPIES
}

/// Everything the checker looks at.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckInput {
    pub accounts: Account,
    pub initial_balance: Balance,
    pub ops: Vec<Op>,
    pub nodes: Vec<NodeState>,
    pub samples: Vec<StatusSample>,
    /// How many nodes must hold every acknowledged commit.
    #[serde(default = "default_min_copies")]
    pub min_copies: usize,
    /// Log snapshots taken during the run.
    #[serde(default)]
    pub snapshots: Vec<LogSnapshot>,
    /// The nodes' logs as the harness read them during the run: what completes a log that no
    /// longer starts at LSN 1 (trimmed, or rebuilt from a snapshot).
    #[serde(default)]
    pub archive: crate::archive::Archive,
}

/// A violation, with the transactions (txn ids, or history indexes) it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub check: String,
    pub message: String,
    pub txns: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckCounts {
    pub log_entries: usize,
    pub acknowledged_commits: usize,
    pub aborted: usize,
    pub indeterminate: usize,
    pub indeterminate_committed: usize,
    pub indeterminate_not_committed: usize,
    pub reads_checked: usize,
    pub full_reads_summed: usize,
    pub leader_samples: usize,
    /// Retries of answered `txn_id`s, and how many of them got an outcome (200 or 409) to
    /// compare with the first.
    pub retries: usize,
    pub retries_compared: usize,
    /// Far-future commits sent, and refused as expected (400 `bad_timestamp`).
    pub future_ts_sent: usize,
    pub future_ts_refused: usize,
    /// Log entries recording an ABORT (in the reference log).
    pub aborted_entries: usize,
    pub snapshots: usize,
    pub min_copies: usize,
}

/// The checker's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub valid: bool,
    /// Every finding, at most [`MAX_PER_CHECK`] per check (the count says how many there were).
    pub findings: Vec<Finding>,
    pub finding_counts: BTreeMap<String, usize>,
    pub warnings: Vec<Finding>,
    pub warning_counts: BTreeMap<String, usize>,
    pub counts: CheckCounts,
}

/// The checks added for combined faults, listed in the summary with their counts (0 too).
pub const NEW_CHECKS: [&str; 7] = [
    "changed_outcome",
    "future_ts_acknowledged",
    "under_replicated_ack",
    "ack_missing_later",
    "two_leaders_committed",
    "divergent_lsn",
    "same_lsn_acked",
];

/// Findings listed per check; the rest are only counted.
pub const MAX_PER_CHECK: usize = 25;

#[derive(Default)]
struct Report {
    findings: Vec<Finding>,
    counts: BTreeMap<String, usize>,
}

impl Report {
    fn add(&mut self, check: &str, message: String, txns: Vec<String>) {
        let n = self.counts.entry(check.to_string()).or_default();
        *n += 1;
        if *n <= MAX_PER_CHECK {
            self.findings.push(Finding { check: check.to_string(), message, txns });
        }
    }
}

/// A transaction as the history tells it: its invoke and its completion (none when the client
/// never finished it, which counts as indeterminate).
struct Txn<'a> {
    invoke: &'a Op,
    done: Option<&'a Op>,
}

impl Txn<'_> {
    fn outcome(&self) -> OpType {
        self.done.map_or(OpType::Info, |d| d.kind)
    }
    /// The completion if there is one, else the invoke.
    fn last(&self) -> &Op {
        self.done.unwrap_or(self.invoke)
    }
    fn name(&self) -> String {
        match self.invoke.txn_id {
            Some(id) => format!("{id} (history index {})", self.invoke.index),
            None => format!("history index {}", self.invoke.index),
        }
    }
}

fn pair(ops: &[Op]) -> (Vec<Txn<'_>>, Vec<String>) {
    let mut open: HashMap<u64, usize> = HashMap::new();
    let mut txns: Vec<Txn> = Vec::new();
    let mut problems = Vec::new();
    for op in ops {
        match op.kind {
            OpType::Invoke => {
                if let Some(prev) = open.insert(op.process, txns.len()) {
                    problems.push(format!(
                        "process {} invoked index {} before completing index {}",
                        op.process, op.index, txns[prev].invoke.index
                    ));
                }
                txns.push(Txn { invoke: op, done: None });
            }
            _ => match open.remove(&op.process) {
                Some(i) => txns[i].done = Some(op),
                None => problems
                    .push(format!("index {}: a completion of process {} without an invoke", op.index, op.process)),
            },
        }
    }
    (txns, problems)
}

/// The balances along the log: for each account, its values by LSN.
struct Versions {
    by_account: HashMap<Account, Vec<(Lsn, Balance)>>,
    commit_ts: Vec<Timestamp>,
}

impl Versions {
    fn new(log: &[Entry]) -> Versions {
        let mut by_account: HashMap<Account, Vec<(Lsn, Balance)>> = HashMap::new();
        for e in log.iter().filter(|e| e.is_commit()) {
            for (&k, &v) in &e.write_set {
                by_account.entry(k).or_default().push((e.lsn, v));
            }
        }
        Versions { by_account, commit_ts: log.iter().map(|e| e.commit_ts).collect() }
    }

    fn len(&self) -> Lsn {
        self.commit_ts.len() as Lsn
    }

    /// The balance of `account` after applying the log up to `lsn` (None: never written).
    fn value_at(&self, account: Account, lsn: Lsn) -> Option<Balance> {
        let versions = self.by_account.get(&account)?;
        let n = versions.partition_point(|(l, _)| *l <= lsn);
        (n > 0).then(|| versions[n - 1].1)
    }

    /// The commit timestamp of entry `lsn` (0 for lsn 0, as an empty node reports).
    fn ts_at(&self, lsn: Lsn) -> Option<Timestamp> {
        if lsn == 0 {
            return Some(0);
        }
        self.commit_ts.get(usize::try_from(lsn - 1).ok()?).copied()
    }
}

/// Replays a log into a table (created_at: first write's commit_ts; updated_at: last write's).
pub fn replay(log: &[Entry]) -> Vec<Row> {
    let mut table: BTreeMap<Account, Row> = BTreeMap::new();
    for e in log.iter().filter(|e| e.is_commit()) {
        for (&account, &balance) in &e.write_set {
            table
                .entry(account)
                .and_modify(|r| {
                    r.balance = balance;
                    r.updated_at = Some(e.commit_ts);
                })
                .or_insert(Row { account, balance, created_at: Some(e.commit_ts), updated_at: Some(e.commit_ts) });
        }
    }
    table.into_values().collect()
}

fn check_log_shape(r: &mut Report, node: usize, log: &[Entry]) {
    for (i, e) in log.iter().enumerate() {
        if e.lsn != i as Lsn + 1 {
            r.add(
                "log_shape",
                format!("node {node}: LSNs are not dense from 1: position {i} holds lsn {}", e.lsn),
                vec![e.txn_id.to_string()],
            );
            return;
        }
        if !e.is_commit() && (!e.write_set.is_empty() || !e.read_set.is_empty()) {
            r.add(
                "log_shape",
                format!(
                    "node {node}: lsn {} records an ABORT but carries a read set {:?} and a write set {:?}",
                    e.lsn, e.read_set, e.write_set
                ),
                vec![e.txn_id.to_string()],
            );
        }
        if i > 0 {
            let p = &log[i - 1];
            if e.commit_ts <= p.commit_ts {
                r.add(
                    "log_shape",
                    format!(
                        "node {node}: commit_ts does not increase: lsn {} has {}, lsn {} has {}",
                        p.lsn, p.commit_ts, e.lsn, e.commit_ts
                    ),
                    vec![p.txn_id.to_string(), e.txn_id.to_string()],
                );
            }
            if e.term < p.term {
                r.add(
                    "log_shape",
                    format!(
                        "node {node}: the term goes back: lsn {} term {}, lsn {} term {}",
                        p.lsn, p.term, e.lsn, e.term
                    ),
                    vec![p.txn_id.to_string(), e.txn_id.to_string()],
                );
            }
        }
    }
}

fn describe_row(row: Option<&Row>) -> String {
    match row {
        Some(r) => format!("balance {} created_at {:?} updated_at {:?}", r.balance, r.created_at, r.updated_at),
        None => "absent".into(),
    }
}

fn compare_tables(r: &mut Report, check: &str, a: &[Row], b: &[Row], a_name: &str, b_name: &str) {
    if a == b {
        return;
    }
    let ma: BTreeMap<Account, &Row> = a.iter().map(|x| (x.account, x)).collect();
    let mb: BTreeMap<Account, &Row> = b.iter().map(|x| (x.account, x)).collect();
    let keys: BTreeSet<Account> = ma.keys().chain(mb.keys()).copied().collect();
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| ma.get(k) != mb.get(k))
        .take(5)
        .map(|k| {
            format!(
                "account {k}: {a_name} {}, {b_name} {}",
                describe_row(ma.get(&k).copied()),
                describe_row(mb.get(&k).copied())
            )
        })
        .collect();
    r.add(check, format!("bank_balance of {a_name} and {b_name} differ: {}", diffs.join("; ")), Vec::new());
}

/// Each node's log from LSN 1: a log that starts later (trimmed by `--retain-log`, or rebuilt
/// from a snapshot) is completed with the entries before it from the harness's archive, after
/// checking that the node's own entries are those the archive holds. Every check after this
/// one sees whole logs. A node whose missing entries the archive lacks too is left as it is
/// (and reported: the run cannot be checked whole).
fn complete_logs(r: &mut Report, nodes: &[NodeState], archive: &crate::archive::Archive) -> Vec<NodeState> {
    for conflict in &archive.conflicts {
        r.add("divergent_lsn", format!("the logs read during the run hold {conflict}"), Vec::new());
    }
    nodes
        .iter()
        .map(|n| {
            let first = match n.log.first() {
                Some(e) if e.lsn > 1 && n.error.is_none() => e.lsn,
                _ => return n.clone(),
            };
            if let Some((kept, e)) =
                n.log.iter().find_map(|e| archive.entries.get(&e.lsn).filter(|k| *k != e).map(|k| (k, e)))
            {
                r.add(
                    "nodes_differ",
                    format!(
                        "node {}'s entry at lsn {} is not the one read during the run: {:?} vs {:?}",
                        n.index, e.lsn, e, kept
                    ),
                    vec![e.txn_id.to_string(), kept.txn_id.to_string()],
                );
            }
            let before: Option<Vec<Entry>> = (1..first).map(|lsn| archive.entries.get(&lsn).cloned()).collect();
            match before {
                Some(before) => {
                    NodeState { log: before.into_iter().chain(n.log.iter().cloned()).collect(), ..n.clone() }
                }
                None => {
                    r.add(
                        "archive_incomplete",
                        format!(
                            "node {}'s log starts at lsn {first} and the harness did not read every entry before it \
                             during the run: its table cannot be checked against the whole log",
                            n.index
                        ),
                        Vec::new(),
                    );
                    n.clone()
                }
            }
        })
        .collect()
}

/// Runs every check.
pub fn check(input: &CheckInput) -> Verdict {
    let mut r = Report::default();
    let mut w = Report::default();
    let mut counts = CheckCounts::default();
    let total = input.accounts * input.initial_balance;

    // ---- the nodes on their own, then against each other ----
    let nodes = complete_logs(&mut r, &input.nodes, &input.archive);
    let live: Vec<&NodeState> = nodes.iter().filter(|n| n.error.is_none()).collect();
    for n in nodes.iter().filter(|n| n.error.is_some()) {
        r.add(
            "node_unreachable",
            format!(
                "node {} ({}): its state could not be read after healing: {}",
                n.index,
                n.address,
                n.error.as_deref().unwrap_or("")
            ),
            Vec::new(),
        );
    }
    for n in &live {
        check_log_shape(&mut r, n.index, &n.log);
        compare_tables(
            &mut r,
            "table_not_log",
            &replay(&n.log),
            &n.table,
            &format!("the replay of node {}'s log", n.index),
            &format!("node {}", n.index),
        );
        let mut seen: HashMap<Uuid, Lsn> = HashMap::new();
        for e in n.log.iter().filter(|e| e.is_commit()) {
            if let Some(first) = seen.insert(e.txn_id, e.lsn) {
                r.add(
                    "applied_twice",
                    format!("node {}: transaction {} is at lsn {first} and again at lsn {}", n.index, e.txn_id, e.lsn),
                    vec![e.txn_id.to_string()],
                );
            }
        }
    }
    // The reference: the longest log (every other must be identical to it).
    let Some(reference) = live.iter().max_by_key(|n| (n.log.len(), std::cmp::Reverse(n.index))).copied() else {
        r.add("node_unreachable", "no node's state could be read: nothing to check".into(), Vec::new());
        return finish(r, w, counts);
    };
    let log = &reference.log;
    counts.log_entries = log.len();
    for n in live.iter().filter(|n| n.index != reference.index) {
        if n.log != *log {
            let at = n.log.iter().zip(log.iter()).position(|(a, b)| a != b);
            let message = match at {
                Some(i) => format!(
                    "recovery_log of node {} and node {} differ at lsn {}: {:?} vs {:?}",
                    reference.index,
                    n.index,
                    i + 1,
                    log[i],
                    n.log[i]
                ),
                None => format!(
                    "recovery_log of node {} has {} entries, node {} has {}",
                    reference.index,
                    log.len(),
                    n.index,
                    n.log.len()
                ),
            };
            let txns = at.map(|i| vec![log[i].txn_id.to_string(), n.log[i].txn_id.to_string()]).unwrap_or_default();
            r.add("nodes_differ", message, txns);
        }
        compare_tables(
            &mut r,
            "nodes_differ",
            &reference.table,
            &n.table,
            &format!("node {}", reference.index),
            &format!("node {}", n.index),
        );
    }

    // ---- the sum of balances along the log ----
    let versions = Versions::new(log);
    let (txns, pairing_problems) = pair(&input.ops);
    for p in pairing_problems {
        w.add("history_shape", p, Vec::new());
    }
    let init_lsn = txns
        .iter()
        .filter(|t| t.invoke.txn == TxnKind::Init)
        .filter_map(|t| t.invoke.txn_id)
        .find_map(|id| log.iter().find(|e| e.txn_id == id).map(|e| e.lsn));
    match init_lsn {
        None => r.add("lost_commit", "the initial deposit is not in the log".into(), Vec::new()),
        Some(init) => {
            let mut balances: HashMap<Account, Balance> = HashMap::new();
            for e in log {
                for (&k, &v) in &e.write_set {
                    balances.insert(k, v);
                }
                if e.lsn >= init {
                    let sum: Balance = balances.values().sum();
                    if sum != total {
                        r.add(
                            "sum_changed",
                            format!("after lsn {} ({}) the balances add up to {sum}, not {total}", e.lsn, e.txn_id),
                            vec![e.txn_id.to_string()],
                        );
                    }
                }
            }
        }
    }

    // ---- the history against the log ----
    let by_id: HashMap<Uuid, &Entry> = log.iter().filter(|e| e.is_commit()).map(|e| (e.txn_id, e)).collect();
    counts.aborted_entries = log.iter().filter(|e| !e.is_commit()).count();
    counts.min_copies = input.min_copies;
    counts.snapshots = input.snapshots.len();
    let mut sent: BTreeSet<Uuid> = BTreeSet::new();
    // The first transaction of each txn_id (not a retry): what was sent, and when.
    let mut originals: HashMap<Uuid, &Txn> = HashMap::new();
    for t in &txns {
        if let Some(id) = t.invoke.txn_id {
            sent.insert(id);
            if t.invoke.txn != TxnKind::Retry {
                originals.entry(id).or_insert(t);
            }
        }
    }
    let acks = acknowledged(&txns, &originals);
    counts.acknowledged_commits = acks.len();
    // A cluster cannot hold more copies than it has nodes, and only nodes that could be read
    // can show theirs (one that could not is `node_unreachable` already).
    let min_copies = input.min_copies.min(live.len());
    for a in &acks {
        check_ack_on_nodes(&mut r, &live, a, min_copies);
    }
    // For the real-time check of reads: the acknowledged commits in order of completion time,
    // each with the highest-LSN commit acknowledged up to then (a prefix maximum). A read sent
    // at `t` must include the highest LSN acknowledged before `t`: one binary search per read,
    // where scanning every commit per read took hours on a 30-minute run.
    let mut by_time: Vec<(u64, Lsn, String)> = acks.iter().map(|a| (a.at, a.lsn, a.id.to_string())).collect();
    by_time.sort_by_key(|(at, _, _)| *at);
    let mut highest_so_far: Vec<usize> = Vec::with_capacity(by_time.len());
    for (i, (_, lsn, _)) in by_time.iter().enumerate() {
        let best = match highest_so_far.last() {
            Some(&b) if by_time[b].1 >= *lsn => b,
            _ => i,
        };
        highest_so_far.push(best);
    }
    let highest_acked_before = |t: u64| -> Option<&(u64, Lsn, String)> {
        let n = by_time.partition_point(|(at, _, _)| *at < t);
        n.checked_sub(1).map(|i| &by_time[highest_so_far[i]])
    };
    for t in &txns {
        let last = t.last();
        let is_commit = matches!(t.invoke.txn, TxnKind::Init | TxnKind::Transfer | TxnKind::FutureTs);
        if is_commit {
            let id = t.invoke.txn_id.expect("every commit carries a txn_id");
            let in_log = by_id.get(&id).copied();
            match t.outcome() {
                // Acknowledged commits were checked above, with those a retry learnt of.
                OpType::Ok => {}
                OpType::Fail => {
                    counts.aborted += 1;
                    if let Some(e) = in_log {
                        r.add(
                            "aborted_visible",
                            format!(
                                "transaction {id} failed for the client ({}) but is in the log at lsn {}",
                                last.error.as_deref().unwrap_or("no reason"),
                                e.lsn
                            ),
                            vec![t.name()],
                        );
                    }
                }
                OpType::Info | OpType::Invoke => {
                    counts.indeterminate += 1;
                    if in_log.is_some() {
                        counts.indeterminate_committed += 1;
                    } else {
                        counts.indeterminate_not_committed += 1;
                    }
                }
            }
            // A committed transfer read the state just before its LSN (serializability in LSN order).
            if let (Some(e), TxnKind::Transfer | TxnKind::FutureTs) = (in_log, t.invoke.txn) {
                // Timestamp order: the commit comes after the snapshot it read.
                if let (Some(read_lsn), Some(read_ts)) = (last.read_lsn, last.read_ts) {
                    if read_lsn >= e.lsn || read_ts >= e.commit_ts {
                        r.add(
                            "not_serializable",
                            format!(
                                "transfer {id} committed at lsn {} with commit_ts {}, but it read at lsn {read_lsn} with timestamp {read_ts}",
                                e.lsn, e.commit_ts
                            ),
                            vec![t.name()],
                        );
                    }
                }
                for (k, seen) in last.reads() {
                    let Some(seen) = seen else { continue };
                    let before = versions.value_at(k, e.lsn - 1);
                    if before != Some(seen) {
                        r.add(
                            "not_serializable",
                            format!(
                                "transfer {id} committed at lsn {} read account {k} = {seen} (at read lsn {:?}), but the log before lsn {} says {:?}",
                                e.lsn, last.read_lsn, e.lsn, before
                            ),
                            vec![t.name()],
                        );
                    }
                }
            }
        }

        // Every read that was answered: the values must be the log's state at its LSN.
        if let (Some(read_lsn), Some(read_ts)) = (last.read_lsn, last.read_ts) {
            counts.reads_checked += 1;
            let node = last.node.clone().unwrap_or_default();
            if read_lsn < 0 || read_lsn > versions.len() {
                r.add(
                    "bad_read",
                    format!("a read on {node} reported lsn {read_lsn}, but the log has {} entries", versions.len()),
                    vec![t.name()],
                );
                continue;
            }
            let mut wrong = Vec::new();
            let reads: Vec<(Account, Option<Balance>)> = last.reads().collect();
            for &(k, seen) in &reads {
                let expected = versions.value_at(k, read_lsn);
                if seen != expected {
                    wrong.push(format!("account {k} = {seen:?}, the log up to lsn {read_lsn} gives {expected:?}"));
                }
            }
            if versions.ts_at(read_lsn) != Some(read_ts) {
                wrong.push(format!(
                    "timestamp {read_ts}, entry {read_lsn} has commit_ts {:?}",
                    versions.ts_at(read_lsn)
                ));
            }
            if !wrong.is_empty() {
                r.add(
                    "bad_read",
                    format!(
                        "a read on {node} ({}) at lsn {read_lsn}: {}",
                        last.role.as_deref().unwrap_or("?"),
                        wrong.join("; ")
                    ),
                    vec![t.name()],
                );
            }
            let all: BTreeSet<Account> = reads.iter().map(|(k, _)| *k).collect();
            if all.len() as Account == input.accounts && init_lsn.is_some_and(|i| read_lsn >= i) {
                counts.full_reads_summed += 1;
                let sum: Balance = reads.iter().filter_map(|(_, v)| *v).sum();
                if sum != total {
                    r.add(
                        "sum_changed",
                        format!("a read of every account on {node} at lsn {read_lsn} adds up to {sum}, not {total}"),
                        vec![t.name()],
                    );
                }
            }
            // Real time: a leader read sent after a commit was acknowledged should include it.
            if last.role.as_deref() == Some("leader") {
                let invoked = t.invoke.time;
                if let Some((at, lsn, id)) = highest_acked_before(invoked).filter(|(_, lsn, _)| *lsn > read_lsn) {
                    w.add(
                        "stale_leader_read",
                        format!(
                            "a read answered by {node} as leader at lsn {read_lsn}, sent at {:.3} s, misses commit {id} at lsn {lsn} acknowledged at {:.3} s",
                            invoked as f64 / 1e9,
                            *at as f64 / 1e9
                        ),
                        vec![t.name(), id.clone()],
                    );
                }
            }
        }
    }
    for e in log {
        if !sent.contains(&e.txn_id) {
            r.add(
                "unknown_transaction",
                format!(
                    "lsn {} holds transaction {}, which no client sent (writes {:?})",
                    e.lsn, e.txn_id, e.write_set
                ),
                vec![e.txn_id.to_string()],
            );
        }
    }

    check_outcomes(&mut r, &mut counts, &txns, &acks, &live);
    check_future_ts(&mut r, &mut w, &mut counts, &txns, &by_id);
    check_snapshots(&mut r, &acks, &input.snapshots, min_copies);
    check_divergence(&mut r, &live, &input.snapshots);
    check_overlapping_leaders(&mut r, &acks, &live, &input.snapshots);

    // ---- one leader per term ----
    let mut leaders: BTreeMap<Term, BTreeMap<usize, u64>> = BTreeMap::new();
    for s in &input.samples {
        if s.role == "leader" {
            counts.leader_samples += 1;
            leaders.entry(s.term).or_default().entry(s.node).or_insert(s.time);
        }
    }
    for (term, nodes) in &leaders {
        if nodes.len() > 1 {
            let who: Vec<String> =
                nodes.iter().map(|(n, t)| format!("node {n} (first seen at {:.3} s)", *t as f64 / 1e9)).collect();
            r.add("two_leaders", format!("term {term} had two leaders: {}", who.join(", ")), Vec::new());
        }
    }
    let cluster_ids: BTreeMap<&str, BTreeSet<usize>> = input
        .samples
        .iter()
        .filter_map(|s| Some((s.cluster_id.as_deref()?, s.node)))
        .fold(BTreeMap::new(), |mut m, (id, node)| {
            m.entry(id).or_insert_with(BTreeSet::new).insert(node);
            m
        });
    if cluster_ids.len() > 1 {
        w.add("cluster_ids_differ", format!("agents reported different cluster_ids: {cluster_ids:?}"), Vec::new());
    }

    finish(r, w, counts)
}

/// An acknowledged commit: the first 200 COMMIT a `txn_id` got, from its first send or a retry.
struct Acked {
    id: Uuid,
    lsn: Lsn,
    commit_ts: Option<Timestamp>,
    /// When the client got the answer.
    at: u64,
    /// When the transaction was first sent (the original's invoke).
    invoked: u64,
    /// The writes it was sent with (None when the history does not say).
    writes: Option<BTreeMap<Account, Balance>>,
    name: String,
}

/// Every acknowledged `txn_id`, with its first acknowledgement, in the order they came.
fn acknowledged(txns: &[Txn<'_>], originals: &HashMap<Uuid, &Txn<'_>>) -> Vec<Acked> {
    let mut first: HashMap<Uuid, Acked> = HashMap::new();
    for t in txns.iter().filter(|t| t.invoke.txn.is_commit()) {
        let (Some(done), Some(id)) = (t.done, t.invoke.txn_id) else { continue };
        if done.kind != OpType::Ok {
            continue;
        }
        let original = originals.get(&id);
        let acked = Acked {
            id,
            lsn: done.lsn.unwrap_or(-1),
            commit_ts: done.commit_ts,
            at: done.time,
            invoked: original.map_or(t.invoke.time, |o| o.invoke.time),
            writes: original.and_then(|o| o.done).map(|d| d.writes().collect()),
            name: t.name(),
        };
        match first.get(&id) {
            Some(a) if a.at <= acked.at => {}
            _ => {
                first.insert(id, acked);
            }
        }
    }
    let mut acks: Vec<Acked> = first.into_values().collect();
    acks.sort_by_key(|a| (a.at, a.lsn));
    acks
}

/// An acknowledged commit against every node's final log: there, at its LSN, with its writes
/// and commit timestamp (`lost_commit`), and on at least `min_copies` nodes (`under_replicated_ack`).
fn check_ack_on_nodes(r: &mut Report, live: &[&NodeState], a: &Acked, min_copies: usize) {
    let (id, lsn) = (a.id, a.lsn);
    let mut holders = Vec::new();
    for n in live {
        let entry = usize::try_from(lsn - 1).ok().and_then(|i| n.log.get(i));
        let problem = match entry {
            None => Some(format!("node {} has no entry at lsn {lsn} (its log ends at {})", n.index, n.log.len())),
            Some(e) if e.txn_id != id => {
                let elsewhere = n.log.iter().find(|e| e.txn_id == id).map(|e| e.lsn);
                Some(format!(
                    "node {} holds {} at lsn {lsn}{}",
                    n.index,
                    e.txn_id,
                    elsewhere.map_or(String::from(" and this transaction nowhere"), |l| format!(
                        " and this transaction at lsn {l}"
                    ))
                ))
            }
            Some(e) if !e.is_commit() => Some(format!(
                "node {} records it ABORTED at lsn {lsn}: {}",
                n.index,
                e.aborted.clone().unwrap_or_default()
            )),
            Some(e) if a.writes.as_ref().is_some_and(|w| *w != e.write_set) || a.commit_ts != Some(e.commit_ts) => {
                holders.push(n.index);
                Some(format!(
                    "node {} holds it at lsn {lsn} with writes {:?} and commit_ts {}, the client was told commit_ts {:?} for writes {:?}",
                    n.index, e.write_set, e.commit_ts, a.commit_ts, a.writes
                ))
            }
            Some(_) => {
                holders.push(n.index);
                None
            }
        };
        if let Some(p) = problem {
            r.add("lost_commit", format!("acknowledged COMMIT {id} at lsn {lsn}: {p}"), vec![a.name.clone()]);
        }
    }
    if holders.len() < min_copies {
        r.add(
            "under_replicated_ack",
            format!(
                "acknowledged COMMIT {id} at lsn {lsn} is held by {} node(s) {holders:?} at the end, fewer than min_copies {min_copies}",
                holders.len()
            ),
            vec![a.name.clone()],
        );
    }
}

/// What an answer says about a transaction's fate: only 200 COMMIT and 409 ABORT are outcomes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Commit { lsn: Option<Lsn>, commit_ts: Option<Timestamp> },
    Abort,
}

impl Outcome {
    fn of(op: &Op) -> Option<Outcome> {
        match op.kind {
            OpType::Ok => Some(Outcome::Commit { lsn: op.lsn, commit_ts: op.commit_ts }),
            OpType::Fail if op.status() == Some(409) => Some(Outcome::Abort),
            _ => None,
        }
    }

    fn describe(&self, op: &Op) -> String {
        match self {
            Outcome::Commit { lsn, commit_ts } => format!(
                "COMMIT at lsn {} commit_ts {} (history index {})",
                lsn.map_or("?".into(), |l| l.to_string()),
                commit_ts.map_or("?".into(), |t| t.to_string()),
                op.index
            ),
            Outcome::Abort => {
                format!("ABORT {} (history index {})", op.error.as_deref().unwrap_or("(409)"), op.index)
            }
        }
    }
}

/// `changed_outcome`: every outcome a `txn_id` got (first sends and retries) must be the first
/// one, and a log that records it ABORTED must not hold it committed, nor may it be acknowledged.
fn check_outcomes(r: &mut Report, counts: &mut CheckCounts, txns: &[Txn<'_>], acks: &[Acked], live: &[&NodeState]) {
    let mut answers: HashMap<Uuid, Vec<(Outcome, &Op)>> = HashMap::new();
    let mut order: Vec<Uuid> = Vec::new();
    let mut done: Vec<&Op> = txns.iter().filter(|t| t.invoke.txn.is_commit()).filter_map(|t| t.done).collect();
    done.sort_by_key(|d| d.index);
    for d in done {
        let Some(id) = d.txn_id else { continue };
        let outcome = Outcome::of(d);
        if d.txn == TxnKind::Retry {
            counts.retries += 1;
            if outcome.is_some() {
                counts.retries_compared += 1;
            }
        }
        if let Some(o) = outcome {
            let list = answers.entry(id).or_default();
            if list.is_empty() {
                order.push(id);
            }
            list.push((o, d));
        }
    }
    let mut flagged: BTreeSet<Uuid> = BTreeSet::new();
    for id in &order {
        let list = &answers[id];
        let (first, first_op) = &list[0];
        if let Some((other, op)) = list[1..].iter().find(|(o, _)| o != first) {
            flagged.insert(*id);
            r.add(
                "changed_outcome",
                format!("transaction {id} was answered {} and later {}", first.describe(first_op), other.describe(op)),
                vec![id.to_string()],
            );
        }
    }
    // The logs' record of aborts.
    let acked: HashMap<Uuid, &Acked> = acks.iter().map(|a| (a.id, a)).collect();
    for n in live {
        let committed: HashMap<Uuid, Lsn> = n.log.iter().filter(|e| e.is_commit()).map(|e| (e.txn_id, e.lsn)).collect();
        for e in n.log.iter().filter(|e| !e.is_commit()) {
            if flagged.contains(&e.txn_id) {
                continue;
            }
            let problem = if let Some(lsn) = committed.get(&e.txn_id) {
                Some(format!("node {} holds it committed at lsn {lsn}", n.index))
            } else {
                acked.get(&e.txn_id).map(|a| format!("it was acknowledged COMMIT at lsn {} ({})", a.lsn, a.name))
            };
            if let Some(p) = problem {
                flagged.insert(e.txn_id);
                r.add(
                    "changed_outcome",
                    format!(
                        "transaction {}: node {} records it ABORTED at lsn {} ({}), but {p}",
                        e.txn_id,
                        n.index,
                        e.lsn,
                        e.aborted.clone().unwrap_or_default()
                    ),
                    vec![e.txn_id.to_string()],
                );
            }
        }
    }
}

/// `future_ts_acknowledged`: a commit with a far-future `time_stamp` must be refused with 400
/// `bad_timestamp`, never acknowledged nor applied.
fn check_future_ts(
    r: &mut Report,
    w: &mut Report,
    counts: &mut CheckCounts,
    txns: &[Txn<'_>],
    by_id: &HashMap<Uuid, &Entry>,
) {
    for t in txns.iter().filter(|t| t.invoke.txn == TxnKind::FutureTs) {
        counts.future_ts_sent += 1;
        let last = t.last();
        let ts = last.time_stamp.map_or("?".into(), |t| t.to_string());
        let in_log = t.invoke.txn_id.and_then(|id| by_id.get(&id));
        match (t.outcome(), in_log) {
            (OpType::Ok, _) => r.add(
                "future_ts_acknowledged",
                format!(
                    "a commit with time_stamp {ts} was acknowledged (lsn {:?}, commit_ts {:?}); expected 400 bad_timestamp",
                    last.lsn, last.commit_ts
                ),
                vec![t.name()],
            ),
            (_, Some(e)) => r.add(
                "future_ts_acknowledged",
                format!(
                    "a commit with time_stamp {ts} was not acknowledged ({}) but is committed at lsn {}",
                    last.error.as_deref().unwrap_or("no answer"),
                    e.lsn
                ),
                vec![t.name()],
            ),
            (OpType::Fail, None)
                if last.status() == Some(400) && last.error.as_deref().is_some_and(|e| e.contains("bad_timestamp")) =>
            {
                counts.future_ts_refused += 1;
            }
            // A read that no leader served: nothing was sent.
            (OpType::Fail, None) if last.error.as_deref().is_some_and(|e| e.starts_with("read_unavailable")) => {}
            (_, None) => w.add(
                "future_ts_other_answer",
                format!(
                    "a commit with time_stamp {ts} was answered {} instead of 400 bad_timestamp",
                    last.error.as_deref().unwrap_or("nothing")
                ),
                vec![t.name()],
            ),
        }
    }
}

/// `ack_missing_later`: a snapshot taken after a commit was acknowledged must show it on at
/// least `min_copies` of the nodes whose snapshot covers its LSN (all of them, if fewer).
fn check_snapshots(r: &mut Report, acks: &[Acked], snapshots: &[LogSnapshot], min_copies: usize) {
    let mut by_lsn: Vec<&Acked> = acks.iter().collect();
    by_lsn.sort_by_key(|a| a.lsn);
    for snap in snapshots {
        let nodes: Vec<&SnapshotNode> = snap.nodes.iter().filter(|n| n.error.is_none()).collect();
        let (Some(lo), Some(hi)) = (nodes.iter().map(|n| n.after).min(), nodes.iter().map(|n| n.up_to()).max()) else {
            continue;
        };
        let from = by_lsn.partition_point(|a| a.lsn <= lo);
        let to = by_lsn.partition_point(|a| a.lsn <= hi);
        for a in by_lsn[from..to].iter().filter(|a| a.at < snap.time) {
            let covering: Vec<&&SnapshotNode> =
                nodes.iter().filter(|n| n.after < a.lsn && a.lsn <= n.up_to()).collect();
            let holding: Vec<usize> = covering
                .iter()
                .filter(|n| n.entry(a.lsn).is_some_and(|e| e.txn_id == a.id && e.is_commit()))
                .map(|n| n.index)
                .collect();
            if holding.len() < min_copies.min(covering.len()) {
                let missing: Vec<String> = covering
                    .iter()
                    .filter(|n| !holding.contains(&n.index))
                    .map(|n| match n.entry(a.lsn) {
                        Some(e) => format!("node {} holds {} there", n.index, e.txn_id),
                        None => format!("node {} has no entry there", n.index),
                    })
                    .collect();
                r.add(
                    "ack_missing_later",
                    format!(
                        "acknowledged COMMIT {} at lsn {} ({:.3} s) is missing from the snapshot of {:.3} s: {}",
                        a.id,
                        a.lsn,
                        a.at as f64 / 1e9,
                        snap.time as f64 / 1e9,
                        missing.join(", ")
                    ),
                    vec![a.name.clone()],
                );
            }
        }
    }
}

/// Where an entry was seen, for messages.
fn seen_at(node: usize, snapshot: Option<u64>) -> String {
    match snapshot {
        None => format!("node {node} at the end"),
        Some(t) => format!("node {node} at {:.3} s", t as f64 / 1e9),
    }
}

/// `divergent_lsn`: one LSN, two different entries (another transaction, term or outcome), on
/// two nodes or at two times.
fn check_divergence(r: &mut Report, live: &[&NodeState], snapshots: &[LogSnapshot]) {
    let mut first: HashMap<Lsn, (&Entry, String)> = HashMap::new();
    let mut flagged: BTreeSet<Lsn> = BTreeSet::new();
    let finals = live.iter().flat_map(|n| n.log.iter().map(move |e| (e, seen_at(n.index, None))));
    let snaps = snapshots.iter().flat_map(|s| {
        s.nodes.iter().flat_map(move |n| n.entries.iter().map(move |e| (e, seen_at(n.index, Some(s.time)))))
    });
    for (e, at) in finals.chain(snaps) {
        let Some((f, f_at)) = first.get(&e.lsn) else {
            first.insert(e.lsn, (e, at));
            continue;
        };
        let same = f.txn_id == e.txn_id && f.term == e.term && f.is_commit() == e.is_commit();
        if !same && flagged.insert(e.lsn) {
            let describe =
                |x: &Entry| format!("{} in term {}{}", x.txn_id, x.term, if x.is_commit() { "" } else { " (ABORTED)" });
            r.add(
                "divergent_lsn",
                format!("lsn {}: {f_at} holds {}, {at} holds {}", e.lsn, describe(f), describe(e)),
                vec![f.txn_id.to_string(), e.txn_id.to_string()],
            );
        }
    }
}

/// `same_lsn_acked` and `two_leaders_committed`, from the acknowledged commits and the terms
/// the logs give their LSNs.
fn check_overlapping_leaders(r: &mut Report, acks: &[Acked], live: &[&NodeState], snapshots: &[LogSnapshot]) {
    let mut at_lsn: BTreeMap<Lsn, Vec<&Acked>> = BTreeMap::new();
    for a in acks {
        at_lsn.entry(a.lsn).or_default().push(a);
    }
    for (lsn, list) in &at_lsn {
        if list.len() > 1 {
            let who: Vec<String> = list.iter().map(|a| format!("{} at {:.3} s", a.id, a.at as f64 / 1e9)).collect();
            r.add(
                "same_lsn_acked",
                format!("{} transactions were acknowledged at lsn {lsn}: {}", list.len(), who.join(", ")),
                list.iter().map(|a| a.name.clone()).collect(),
            );
        }
    }
    // The term each acknowledged transaction committed in, from any log that holds it.
    let mut term_of: HashMap<Uuid, Term> = HashMap::new();
    let finals = live.iter().flat_map(|n| n.log.iter());
    let snaps = snapshots.iter().flat_map(|s| s.nodes.iter().flat_map(|n| n.entries.iter()));
    for e in finals.chain(snaps).filter(|e| e.is_commit()) {
        term_of.entry(e.txn_id).or_insert(e.term);
    }
    let with_term: Vec<(Term, &Acked)> = acks.iter().filter_map(|a| Some((*term_of.get(&a.id)?, a))).collect();
    // The first acknowledgement of each term, and from it, for each term, the first one of any
    // later term.
    let mut first_ack: BTreeMap<Term, &Acked> = BTreeMap::new();
    for &(term, a) in &with_term {
        match first_ack.get(&term) {
            Some(f) if f.at <= a.at => {}
            _ => {
                first_ack.insert(term, a);
            }
        }
    }
    let mut later_first: BTreeMap<Term, (Term, &Acked)> = BTreeMap::new();
    let mut best: Option<(Term, &Acked)> = None;
    for (&term, &a) in first_ack.iter().rev() {
        if let Some(b) = best {
            later_first.insert(term, b);
        }
        if best.is_none_or(|(_, b)| a.at < b.at) {
            best = Some((term, a));
        }
    }
    for &(term, a) in &with_term {
        let Some(&(later, b)) = later_first.get(&term) else { continue };
        if a.invoked > b.at {
            r.add(
                "two_leaders_committed",
                format!(
                    "{} was sent at {:.3} s and committed in term {term} (lsn {}), after a commit of the later term {later} had been acknowledged ({} at lsn {}, {:.3} s): the leader of term {term} still committed",
                    a.id,
                    a.invoked as f64 / 1e9,
                    a.lsn,
                    b.id,
                    b.lsn,
                    b.at as f64 / 1e9
                ),
                vec![a.name.clone(), b.name.clone()],
            );
        }
    }
}

fn finish(r: Report, w: Report, counts: CheckCounts) -> Verdict {
    Verdict {
        valid: r.counts.is_empty(),
        findings: r.findings,
        finding_counts: r.counts,
        warnings: w.findings,
        warning_counts: w.counts,
        counts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Mop;

    const ACCOUNTS: Account = 3;
    const INIT: Balance = 100;

    struct Run {
        ops: Vec<Op>,
        log: Vec<Entry>,
        time: u64,
    }

    impl Run {
        fn new() -> Run {
            let mut run = Run { ops: Vec::new(), log: Vec::new(), time: 0 };
            let id = Uuid::new_v4();
            let writes: Vec<Mop> = (1..=ACCOUNTS).map(|k| Mop::Write(k, Some(INIT))).collect();
            run.push(OpType::Invoke, 99, TxnKind::Init, writes.clone(), Some(id), |_| {});
            let lsn = run.append(id, (1..=ACCOUNTS).map(|k| (k, INIT)).collect());
            run.push(OpType::Ok, 99, TxnKind::Init, writes, Some(id), |op| {
                op.lsn = Some(lsn);
                op.commit_ts = Some(lsn * 10);
            });
            run
        }

        fn push(
            &mut self,
            kind: OpType,
            p: u64,
            txn: TxnKind,
            value: Vec<Mop>,
            id: Option<Uuid>,
            f: impl FnOnce(&mut Op),
        ) {
            self.time += 1_000;
            let mut op = Op::new(kind, p, txn, value);
            op.txn_id = id;
            op.time = self.time;
            op.index = self.ops.len() as u64;
            f(&mut op);
            self.ops.push(op);
        }

        fn append(&mut self, id: Uuid, writes: BTreeMap<Account, Balance>) -> Lsn {
            let lsn = self.log.len() as Lsn + 1;
            self.log.push(Entry {
                lsn,
                term: 1,
                txn_id: id,
                commit_ts: lsn * 10,
                read_set: vec![],
                write_set: writes,
                aborted: None,
            });
            lsn
        }

        /// A retry of `id` by process 5, answered `outcome` (with `lsn` for a commit, or HTTP
        /// `status` for a failure).
        fn retry(&mut self, id: Uuid, outcome: OpType, lsn: Option<Lsn>, status: Option<u16>) {
            self.push(OpType::Invoke, 5, TxnKind::Retry, vec![], Some(id), |_| {});
            self.push(outcome, 5, TxnKind::Retry, vec![], Some(id), |op| {
                op.lsn = lsn;
                op.commit_ts = lsn.map(|l| l * 10);
                op.http_status = status.or(lsn.map(|_| 200));
                op.error = status.map(|s| format!("stale_read (HTTP {s})"));
            });
        }

        /// A transfer of `amount` from a to b reading the current state; `commit` says whether
        /// it goes into the log; `outcome` is what the client was told.
        fn transfer(&mut self, a: Account, b: Account, amount: Balance, commit: bool, outcome: OpType) -> Uuid {
            let id = Uuid::new_v4();
            let read_lsn = self.log.len() as Lsn;
            let v = Versions::new(&self.log);
            let (va, vb) = (v.value_at(a, read_lsn).unwrap(), v.value_at(b, read_lsn).unwrap());
            let invoke = vec![Mop::Read(a, None), Mop::Read(b, None), Mop::Write(a, None), Mop::Write(b, None)];
            self.push(OpType::Invoke, 1, TxnKind::Transfer, invoke, Some(id), |_| {});
            let value = vec![
                Mop::Read(a, Some(va)),
                Mop::Read(b, Some(vb)),
                Mop::Write(a, Some(va - amount)),
                Mop::Write(b, Some(vb + amount)),
            ];
            let lsn = commit.then(|| self.append(id, BTreeMap::from([(a, va - amount), (b, vb + amount)])));
            self.push(outcome, 1, TxnKind::Transfer, value, Some(id), |op| {
                op.read_lsn = Some(read_lsn);
                op.read_ts = Some(read_lsn * 10);
                op.node = Some("node0".into());
                op.role = Some("leader".into());
                if outcome == OpType::Ok {
                    op.lsn = lsn;
                    op.commit_ts = lsn.map(|l| l * 10);
                    op.http_status = Some(200);
                }
                if outcome == OpType::Fail {
                    op.error = Some("stale_read (HTTP 409)".into());
                    op.http_status = Some(409);
                }
            });
            id
        }

        fn input(&self, nodes: usize) -> CheckInput {
            let table = replay(&self.log);
            CheckInput {
                accounts: ACCOUNTS,
                initial_balance: INIT,
                ops: self.ops.clone(),
                nodes: (0..nodes)
                    .map(|i| NodeState {
                        index: i,
                        address: format!("n{i}"),
                        error: None,
                        table: table.clone(),
                        log: self.log.clone(),
                    })
                    .collect(),
                samples: Vec::new(),
                min_copies: DEFAULT_MIN_COPIES,
                snapshots: Vec::new(),
                archive: Default::default(),
            }
        }
    }

    fn checks(v: &Verdict) -> Vec<&str> {
        v.finding_counts.keys().map(String::as_str).collect()
    }

    #[test]
    fn a_trimmed_log_is_completed_from_the_archive_and_checked_whole() {
        let mut run = Run::new();
        run.transfer(1, 2, 10, true, OpType::Ok);
        run.transfer(2, 3, 5, true, OpType::Ok);
        run.transfer(3, 1, 7, true, OpType::Ok);
        let mut input = run.input(3);
        // Node 1 was rebuilt from a snapshot at lsn 3: its log starts there.
        input.nodes[1].log.drain(..2);
        input.archive = crate::archive::Archive::new(3);
        input.archive.add(0, &run.log);
        let v = check(&input);
        assert!(v.valid, "{:?}", v.findings);

        // The entries before it were never read: the run cannot be checked whole.
        input.archive = crate::archive::Archive::new(3);
        input.archive.add(0, &run.log[2..]);
        assert!(checks(&check(&input)).contains(&"archive_incomplete"));

        // A node whose own entry differs from the one read during the run.
        input.archive = crate::archive::Archive::new(3);
        input.archive.add(0, &run.log);
        input.nodes[1].log[0].commit_ts += 1;
        assert!(checks(&check(&input)).contains(&"nodes_differ"));
    }

    #[test]
    fn two_entries_read_at_one_lsn_are_a_divergence() {
        let mut run = Run::new();
        run.transfer(1, 2, 10, true, OpType::Ok);
        let mut input = run.input(3);
        input.archive = crate::archive::Archive::new(3);
        input.archive.add(0, &run.log);
        let mut other = run.log[1].clone();
        other.txn_id = Uuid::new_v4();
        input.archive.add(1, &[other]);
        assert_eq!(checks(&check(&input)), vec!["divergent_lsn"]);
    }

    #[test]
    fn a_clean_run_is_valid() {
        let mut run = Run::new();
        run.transfer(1, 2, 10, true, OpType::Ok);
        run.transfer(2, 3, 5, false, OpType::Fail);
        run.transfer(3, 1, 7, true, OpType::Info);
        run.transfer(1, 3, 7, false, OpType::Info);
        let v = check(&run.input(3));
        assert!(v.valid, "{:?}", v.findings);
        assert_eq!(v.counts.acknowledged_commits, 2); // the init and one transfer
        assert_eq!(v.counts.indeterminate_committed, 1);
        assert_eq!(v.counts.indeterminate_not_committed, 1);
        assert_eq!(v.counts.reads_checked, 4);
    }

    #[test]
    fn a_lost_acknowledged_commit_is_named() {
        let mut run = Run::new();
        let id = run.transfer(1, 2, 10, true, OpType::Ok);
        let mut input = run.input(3);
        input.nodes[2].log.pop();
        input.nodes[2].table = replay(&input.nodes[2].log);
        let v = check(&input);
        assert!(checks(&v).contains(&"lost_commit"), "{:?}", v.findings);
        assert!(checks(&v).contains(&"nodes_differ"));
        assert!(v.findings.iter().any(|f| f.check == "lost_commit" && f.txns[0].contains(&id.to_string())));
    }

    #[test]
    fn an_aborted_transaction_in_the_log_is_caught() {
        let mut run = Run::new();
        run.transfer(1, 2, 10, true, OpType::Fail);
        assert_eq!(checks(&check(&run.input(2))), vec!["aborted_visible"]);
    }

    #[test]
    fn a_changed_sum_is_caught() {
        let mut run = Run::new();
        let id = Uuid::new_v4();
        run.push(OpType::Invoke, 2, TxnKind::Transfer, vec![Mop::Write(1, None)], Some(id), |_| {});
        run.append(id, BTreeMap::from([(1, 1)]));
        run.push(OpType::Info, 2, TxnKind::Transfer, vec![Mop::Write(1, Some(1))], Some(id), |_| {});
        assert_eq!(checks(&check(&run.input(1))), vec!["sum_changed"]);
    }

    #[test]
    fn a_stale_read_and_a_non_serializable_commit_are_caught() {
        let mut run = Run::new();
        run.transfer(1, 2, 10, true, OpType::Ok);
        // A replica read at lsn 1 that claims to see lsn 2's value.
        run.push(OpType::Invoke, 3, TxnKind::ReadOnly, vec![Mop::Read(1, None)], None, |_| {});
        run.push(OpType::Ok, 3, TxnKind::ReadOnly, vec![Mop::Read(1, Some(90))], None, |op| {
            op.read_lsn = Some(1);
            op.read_ts = Some(10);
            op.node = Some("node1".into());
            op.role = Some("replica".into());
        });
        let v = check(&run.input(1));
        assert_eq!(checks(&v), vec!["bad_read"]);

        // A transfer that committed at lsn 3 with the values of lsn 1 (a lost update).
        let mut run = Run::new();
        let id = Uuid::new_v4();
        run.transfer(1, 2, 10, true, OpType::Ok);
        run.push(OpType::Invoke, 2, TxnKind::Transfer, vec![], Some(id), |_| {});
        let value = vec![Mop::Read(1, Some(100)), Mop::Write(1, Some(95)), Mop::Write(3, Some(105))];
        run.append(id, BTreeMap::from([(1, 95), (3, 105)]));
        run.push(OpType::Ok, 2, TxnKind::Transfer, value, Some(id), |op| {
            op.read_lsn = Some(1);
            op.read_ts = Some(10);
            op.lsn = Some(3);
            op.commit_ts = Some(30);
        });
        let v = check(&run.input(1));
        assert!(checks(&v).contains(&"not_serializable"), "{:?}", v.findings);
        assert!(checks(&v).contains(&"sum_changed"));
    }

    #[test]
    fn a_transaction_applied_twice_and_an_unknown_one_are_caught() {
        let mut run = Run::new();
        let id = run.transfer(1, 2, 10, true, OpType::Ok);
        let mut dup = run.log[1].clone();
        dup.lsn = 3;
        dup.commit_ts = 30;
        run.log.push(dup);
        let v = check(&run.input(1));
        assert!(checks(&v).contains(&"applied_twice"), "{:?}", v.findings);
        assert!(v.findings.iter().any(|f| f.txns.contains(&id.to_string())));

        let mut run = Run::new();
        run.append(Uuid::new_v4(), BTreeMap::from([(1, 100)]));
        assert_eq!(checks(&check(&run.input(1))), vec!["unknown_transaction"]);
    }

    #[test]
    fn a_table_that_is_not_its_log_is_caught() {
        let run = Run::new();
        let mut input = run.input(2);
        input.nodes[1].table[0].balance += 1;
        let v = check(&input);
        assert!(checks(&v).contains(&"table_not_log"));
        assert!(checks(&v).contains(&"nodes_differ"));
    }

    #[test]
    fn two_leaders_in_one_term_are_caught() {
        let run = Run::new();
        let mut input = run.input(1);
        let sample = |node, term| StatusSample {
            time: 5,
            node,
            role: "leader".into(),
            term,
            applied_lsn: 1,
            last_term: None,
            cluster_id: None,
            min_copies: None,
        };
        input.samples = vec![sample(0, 1), sample(1, 2), sample(0, 2)];
        let v = check(&input);
        assert_eq!(checks(&v), vec!["two_leaders"]);
        assert!(v.findings[0].message.contains("term 2"));
    }

    #[test]
    fn an_unreachable_node_fails_the_run() {
        let run = Run::new();
        let mut input = run.input(2);
        input.nodes[1] = NodeState {
            error: Some("connection refused".into()),
            table: vec![],
            log: vec![],
            ..input.nodes[1].clone()
        };
        assert_eq!(checks(&check(&input)), vec!["node_unreachable"]);
    }

    #[test]
    fn a_retry_with_the_first_answer_is_clean_and_a_changed_one_is_caught() {
        let mut run = Run::new();
        let committed = run.transfer(1, 2, 10, true, OpType::Ok);
        let aborted = run.transfer(2, 3, 5, false, OpType::Fail);
        run.retry(committed, OpType::Ok, Some(2), None);
        run.retry(aborted, OpType::Fail, None, Some(409));
        // 503s, 421s and silence are not outcomes.
        run.retry(committed, OpType::Fail, None, Some(503));
        run.retry(aborted, OpType::Info, None, None);
        let v = check(&run.input(3));
        assert!(v.valid, "{:?}", v.findings);
        assert_eq!((v.counts.retries, v.counts.retries_compared), (4, 2));

        // The ABORT answered first, then a COMMIT of the same txn_id (it is in the log).
        let mut run = Run::new();
        let id = run.transfer(1, 2, 10, false, OpType::Fail);
        let lsn = run.append(id, BTreeMap::from([(1, 90), (2, 110)]));
        run.retry(id, OpType::Ok, Some(lsn), None);
        let v = check(&run.input(3));
        assert!(checks(&v).contains(&"changed_outcome"), "{:?}", v.findings);
        assert!(checks(&v).contains(&"aborted_visible"));
        assert!(v.findings.iter().any(|f| f.check == "changed_outcome" && f.message.contains("later COMMIT")));

        // A COMMIT, then a COMMIT at another LSN, then an ABORT.
        let mut run = Run::new();
        let id = run.transfer(1, 2, 10, true, OpType::Ok);
        run.retry(id, OpType::Ok, Some(7), None);
        run.retry(id, OpType::Fail, None, Some(409));
        let v = check(&run.input(1));
        assert_eq!(v.finding_counts.get("changed_outcome"), Some(&1), "{:?}", v.findings);
    }

    #[test]
    fn a_recorded_abort_is_an_outcome_not_a_commit() {
        let mut run = Run::new();
        let id = run.transfer(1, 2, 10, false, OpType::Fail);
        let lsn = run.log.len() as Lsn + 1;
        run.log.push(Entry {
            lsn,
            term: 1,
            txn_id: id,
            commit_ts: lsn * 10,
            read_set: vec![],
            write_set: BTreeMap::new(),
            aborted: Some(serde_json::json!({"reason": "stale_read", "key": 1, "message": "m"})),
        });
        run.transfer(1, 3, 4, true, OpType::Ok);
        run.retry(id, OpType::Fail, None, Some(409));
        let v = check(&run.input(3));
        assert!(v.valid, "{:?}", v.findings);
        assert_eq!(v.counts.aborted_entries, 1);

        // The same, but the client was told COMMIT.
        let mut input = run.input(3);
        let done = input.ops.iter_mut().find(|o| o.txn_id == Some(id) && o.kind == OpType::Fail).unwrap();
        done.kind = OpType::Ok;
        done.lsn = Some(lsn);
        done.commit_ts = Some(lsn * 10);
        done.http_status = Some(200);
        done.error = None;
        let v = check(&input);
        assert!(checks(&v).contains(&"changed_outcome"), "{:?}", v.findings);
        assert!(checks(&v).contains(&"lost_commit"));

        // An ABORT record that carries writes is malformed.
        let mut input = run.input(1);
        input.nodes[0].log[(lsn - 1) as usize].write_set.insert(1, 5);
        assert!(checks(&check(&input)).contains(&"log_shape"));
    }

    #[test]
    fn a_far_future_commit_must_be_refused() {
        let mut run = Run::new();
        let far = |run: &mut Run, p: u64, f: &dyn Fn(&mut Op)| {
            let id = Uuid::new_v4();
            run.push(OpType::Invoke, p, TxnKind::FutureTs, vec![], Some(id), |_| {});
            run.push(OpType::Fail, p, TxnKind::FutureTs, vec![], Some(id), |op| {
                op.time_stamp = Some(9_000_000_000_000_000_000);
                f(op)
            });
            id
        };
        far(&mut run, 6, &|op| {
            op.http_status = Some(400);
            op.error = Some("bad_timestamp: too far ahead (HTTP 400)".into());
        });
        let v = check(&run.input(1));
        assert!(v.valid, "{:?}", v.findings);
        assert_eq!((v.counts.future_ts_sent, v.counts.future_ts_refused), (1, 1));

        // Acknowledged: a violation.
        let id = far(&mut run, 6, &|op| {
            op.kind = OpType::Ok;
            op.http_status = Some(200);
        });
        let lsn = run.append(id, BTreeMap::new());
        run.ops.last_mut().unwrap().lsn = Some(lsn);
        run.ops.last_mut().unwrap().commit_ts = Some(lsn * 10);
        // Answered otherwise (a 409): only a warning.
        far(&mut run, 7, &|op| {
            op.http_status = Some(409);
            op.error = Some("stale_read (HTTP 409)".into());
        });
        let v = check(&run.input(1));
        assert_eq!(checks(&v), vec!["future_ts_acknowledged"], "{:?}", v.findings);
        assert_eq!(v.warning_counts.get("future_ts_other_answer"), Some(&1));
    }

    #[test]
    fn an_ack_held_by_fewer_than_min_copies_nodes_is_caught() {
        let mut run = Run::new();
        let id = run.transfer(1, 2, 10, true, OpType::Ok);
        let mut input = run.input(3);
        for n in [1, 2] {
            input.nodes[n].log.pop();
            input.nodes[n].table = replay(&input.nodes[n].log);
        }
        let v = check(&input);
        assert!(checks(&v).contains(&"under_replicated_ack"), "{:?}", v.findings);
        assert!(v.findings.iter().any(|f| f.check == "under_replicated_ack" && f.message.contains(&id.to_string())));
        // One node short of three is fine for two copies (lost_commit still says where)...
        let mut input = run.input(3);
        input.nodes[2].log.pop();
        input.nodes[2].table = replay(&input.nodes[2].log);
        assert!(!checks(&check(&input)).contains(&"under_replicated_ack"));
        // ...but not when every node must hold it.
        input.min_copies = 3;
        assert!(checks(&check(&input)).contains(&"under_replicated_ack"));
    }

    fn snapshot(time: u64, logs: &[Vec<Entry>], after: Lsn) -> LogSnapshot {
        LogSnapshot {
            time,
            nodes: logs
                .iter()
                .enumerate()
                .map(|(index, log)| SnapshotNode {
                    index,
                    after,
                    entries: log.iter().filter(|e| e.lsn > after).cloned().collect(),
                    error: None,
                })
                .collect(),
        }
    }

    #[test]
    fn an_ack_a_later_snapshot_misses_is_caught() {
        let mut run = Run::new();
        let id = run.transfer(1, 2, 10, true, OpType::Ok);
        let acked_at = run.ops.last().unwrap().time;
        run.transfer(2, 3, 5, true, OpType::Ok);
        let good = run.log.clone();
        // Nodes 1 and 2 hold another transaction at lsn 2 in the snapshot (and lack the ack).
        let mut bad = good.clone();
        bad[1].txn_id = Uuid::new_v4();
        let mut input = run.input(3);
        input.snapshots = vec![snapshot(acked_at + 1, &[good.clone(), bad.clone(), bad.clone()], 1)];
        let v = check(&input);
        assert!(checks(&v).contains(&"ack_missing_later"), "{:?}", v.findings);
        assert!(checks(&v).contains(&"divergent_lsn"));
        assert!(v.findings.iter().any(|f| f.check == "ack_missing_later" && f.message.contains(&id.to_string())));
        // A snapshot taken before the ack says nothing about it (the divergence stays).
        input.snapshots = vec![snapshot(acked_at - 1, &[good.clone(), bad.clone(), bad], 1)];
        let v = check(&input);
        assert!(!checks(&v).contains(&"ack_missing_later"), "{:?}", v.findings);
        // A node whose snapshot does not reach the LSN (it lagged) does not count.
        input.snapshots = vec![snapshot(acked_at + 1, &[good.clone(), good[..1].to_vec(), good[..1].to_vec()], 0)];
        let v = check(&input);
        assert!(v.valid, "{:?}", v.findings);
    }

    #[test]
    fn two_acks_at_one_lsn_and_a_deposed_leader_committing_are_caught() {
        let mut run = Run::new();
        let id = run.transfer(1, 2, 10, true, OpType::Ok);
        let mut input = run.input(1);
        // Another transaction acknowledged at lsn 2 too.
        let other = Uuid::new_v4();
        let mut invoke = input.ops[input.ops.len() - 2].clone();
        invoke.txn_id = Some(other);
        invoke.process = 8;
        let mut done = input.ops[input.ops.len() - 1].clone();
        done.txn_id = Some(other);
        done.process = 8;
        input.ops.extend([invoke, done]);
        let v = check(&input);
        assert!(checks(&v).contains(&"same_lsn_acked"), "{:?}", v.findings);
        assert!(v.findings.iter().any(|f| f.check == "same_lsn_acked" && f.message.contains(&id.to_string())));

        // Term 2 acknowledges lsn 2; then a transfer sent afterwards commits in term 1.
        let mut run = Run::new();
        run.transfer(1, 2, 10, true, OpType::Ok);
        run.log[1].term = 2;
        let late = run.transfer(2, 3, 5, true, OpType::Ok);
        run.log[2].term = 1;
        let v = check(&run.input(1));
        assert!(checks(&v).contains(&"two_leaders_committed"), "{:?}", v.findings);
        assert!(v.findings.iter().any(|f| f.check == "two_leaders_committed" && f.message.contains(&late.to_string())));
        // In term order it is fine.
        run.log[2].term = 3;
        let v = check(&run.input(1));
        assert!(v.valid, "{:?}", v.findings);
    }

    #[test]
    fn different_entries_at_one_lsn_on_two_nodes_are_caught() {
        let mut run = Run::new();
        run.transfer(1, 2, 10, true, OpType::Info);
        let mut input = run.input(2);
        input.nodes[1].log[1].term = 7;
        let v = check(&input);
        assert!(checks(&v).contains(&"divergent_lsn"), "{:?}", v.findings);
        assert!(v.findings.iter().any(|f| f.check == "divergent_lsn" && f.message.contains("term 7")));
    }
}
