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
//! - `two_leaders`: two agents reporting role leader in the same term.
//!
//! Warnings (reported, not failures): a leader read that misses a commit acknowledged before the
//! read was sent (a read served by a deposed leader: stale, though serializable).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use protocol::{Account, Balance, Lsn, Term, Timestamp};
use serde::{Deserialize, Serialize};
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

/// One entry of `recovery_log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub lsn: Lsn,
    pub term: Term,
    pub txn_id: Uuid,
    pub commit_ts: Timestamp,
    pub read_set: Vec<Account>,
    pub write_set: BTreeMap<Account, Balance>,
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
}

/// Everything the checker looks at.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckInput {
    pub accounts: Account,
    pub initial_balance: Balance,
    pub ops: Vec<Op>,
    pub nodes: Vec<NodeState>,
    pub samples: Vec<StatusSample>,
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
        for e in log {
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
    for e in log {
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

/// Runs every check.
pub fn check(input: &CheckInput) -> Verdict {
    let mut r = Report::default();
    let mut w = Report::default();
    let mut counts = CheckCounts::default();
    let total = input.accounts * input.initial_balance;

    // ---- the nodes on their own, then against each other ----
    let live: Vec<&NodeState> = input.nodes.iter().filter(|n| n.error.is_none()).collect();
    for n in input.nodes.iter().filter(|n| n.error.is_some()) {
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
        for e in &n.log {
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
    let by_id: HashMap<Uuid, &Entry> = log.iter().map(|e| (e.txn_id, e)).collect();
    let mut sent: BTreeSet<Uuid> = BTreeSet::new();
    // (completion time, lsn) of every acknowledged commit, for the real-time check of reads.
    let mut acked: Vec<(u64, Lsn, String)> = Vec::new();
    for t in &txns {
        let last = t.last();
        if let Some(id) = t.invoke.txn_id {
            sent.insert(id);
        }
        let is_commit = matches!(t.invoke.txn, TxnKind::Init | TxnKind::Transfer);
        if is_commit {
            let id = t.invoke.txn_id.expect("every commit carries a txn_id");
            let in_log = by_id.get(&id).copied();
            match t.outcome() {
                OpType::Ok => {
                    counts.acknowledged_commits += 1;
                    let lsn = last.lsn.unwrap_or(-1);
                    acked.push((last.time, lsn, id.to_string()));
                    let writes: BTreeMap<Account, Balance> = last.writes().collect();
                    for n in &live {
                        let entry = usize::try_from(lsn - 1).ok().and_then(|i| n.log.get(i));
                        let problem = match entry {
                            None => Some(format!("node {} has no entry at lsn {lsn} (its log ends at {})", n.index, n.log.len())),
                            Some(e) if e.txn_id != id => {
                                let elsewhere = n.log.iter().find(|e| e.txn_id == id).map(|e| e.lsn);
                                Some(format!(
                                    "node {} holds {} at lsn {lsn}{}",
                                    n.index,
                                    e.txn_id,
                                    elsewhere.map_or(String::from(" and this transaction nowhere"), |l| format!(" and this transaction at lsn {l}"))
                                ))
                            }
                            Some(e) if e.write_set != writes || Some(e.commit_ts) != last.commit_ts => Some(format!(
                                "node {} holds it at lsn {lsn} with writes {:?} and commit_ts {}, the client was told commit_ts {:?} for writes {:?}",
                                n.index, e.write_set, e.commit_ts, last.commit_ts, writes
                            )),
                            Some(_) => None,
                        };
                        if let Some(p) = problem {
                            r.add("lost_commit", format!("acknowledged COMMIT {id} at lsn {lsn}: {p}"), vec![t.name()]);
                        }
                    }
                }
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
            if let (Some(e), TxnKind::Transfer) = (in_log, t.invoke.txn) {
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
                if let Some((at, lsn, id)) =
                    acked.iter().filter(|(at, lsn, _)| *at < invoked && *lsn > read_lsn).max_by_key(|(_, lsn, _)| *lsn)
                {
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

    finish(r, w, counts)
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
            self.log.push(Entry { lsn, term: 1, txn_id: id, commit_ts: lsn * 10, read_set: vec![], write_set: writes });
            lsn
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
            }
        }
    }

    fn checks(v: &Verdict) -> Vec<&str> {
        v.finding_counts.keys().map(String::as_str).collect()
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
        let sample = |node, term| StatusSample { time: 5, node, role: "leader".into(), term, applied_lsn: 1 };
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
}
