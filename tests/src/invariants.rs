//! The invariants of DESIGN.md section 2 and 9, checked on the nodes' PostgreSQL tables:
//!
//! - every in-sync node's `bank_balance` and `recovery_log` are identical, row for row;
//! - log LSNs are dense from 1, commit timestamps strictly increase with the LSN, terms never
//!   decrease;
//! - a node's table is exactly the effect of its log applied in LSN order (balances, and
//!   `created_at`/`updated_at` = the commit timestamp of the first/last write of the account).
//!
//! With `--retain-log` a log may start after LSN 1 (its older entries trimmed, or the node
//! rebuilt from a snapshot): LSNs are then dense from the log's first entry, logs must agree
//! wherever two of them hold the same LSN and end at the same one, and the replay check runs on
//! the logs that still start at 1.

use std::collections::BTreeMap;

use protocol::Account;

use crate::{BalanceRow, Cluster, LogRow};

/// The state every checked node agreed on.
#[derive(Debug, Clone)]
pub struct Converged {
    pub table: Vec<BalanceRow>,
    pub log: Vec<LogRow>,
}

/// The table that applying `log` in order to an empty database produces.
pub fn replay(log: &[LogRow]) -> Vec<BalanceRow> {
    replay_onto(&[], log)
}

/// The table that applying `log` in order to `base` produces.
pub fn replay_onto(base: &[BalanceRow], log: &[LogRow]) -> Vec<BalanceRow> {
    let mut table: BTreeMap<Account, BalanceRow> = base.iter().map(|r| (r.0, *r)).collect();
    for entry in log {
        for (account, balance) in entry.writes() {
            table
                .entry(account)
                .and_modify(|row| {
                    row.1 = balance;
                    row.3 = Some(entry.commit_ts);
                })
                .or_insert((account, balance, Some(entry.commit_ts), Some(entry.commit_ts)));
        }
    }
    table.into_values().collect()
}

/// Panics with the first place where `log` breaks the shape of a recovery log.
fn check_log_shape(node: usize, log: &[LogRow], trimmed: bool) {
    let first = match log.first() {
        Some(entry) if trimmed => entry.lsn,
        _ => 1,
    };
    for (i, entry) in log.iter().enumerate() {
        assert_eq!(
            entry.lsn,
            i as i64 + first,
            "node {node}: recovery_log LSNs are not dense from {first}: position {i} holds {entry:?}"
        );
        if i > 0 {
            assert!(
                entry.commit_ts > log[i - 1].commit_ts,
                "node {node}: commit_ts does not increase with the LSN: {:?} then {entry:?}",
                log[i - 1]
            );
            // A new leader writes after everything of the terms before it (an in-doubt batch of
            // an old term is decided at its place, before the new leader's first entry).
            assert!(
                entry.term >= log[i - 1].term,
                "node {node}: the term goes back along the log: {:?} then {entry:?}",
                log[i - 1]
            );
        }
    }
}

impl Cluster {
    /// Waits until every node in `nodes` has applied the highest LSN any of them reports, then
    /// checks the invariants above on each and that they all hold the same table and log.
    pub async fn assert_converged_on(&self, nodes: &[usize]) -> Converged {
        assert!(!nodes.is_empty());
        let mut target = 0;
        for &i in nodes {
            target = target.max(self.status(i).await.applied_lsn);
        }
        for &i in nodes {
            self.wait_applied(i, target).await;
        }
        let first = nodes[0];
        let table = self.table(first).await;
        let log = self.log(first).await;
        check_log_shape(first, &log, self.trims_logs);
        assert!(
            log.last().map_or(0, |e| e.lsn) >= target,
            "node {first} reports applied lsn >= {target} but its recovery_log ends at {:?}",
            log.last().map(|e| e.lsn)
        );
        if log.first().is_none_or(|e| e.lsn == 1) {
            let replayed = replay(&log);
            assert_tables_equal(&replayed, &table, "the replay of the log", &format!("node {first}"));
        }
        if self.trims_logs {
            // The base trimming folds entries into (and a snapshot is loaded into), plus the
            // log after it, is the table: what reads at a past LSN rely on.
            for &i in nodes {
                let (base_lsn, base) = self.log_base(i).await;
                let after: Vec<LogRow> = self.log(i).await.into_iter().filter(|e| e.lsn > base_lsn).collect();
                let name = format!("node {i}'s base (LSN {base_lsn}) and the log after it");
                assert_tables_equal(&replay_onto(&base, &after), &self.table(i).await, &name, &format!("node {i}"));
            }
        }
        for &i in &nodes[1..] {
            let other_log = self.log(i).await;
            if self.trims_logs {
                check_log_shape(i, &other_log, true);
                assert_logs_agree(&log, &other_log, first, i);
            } else {
                assert_logs_equal(&log, &other_log, first, i);
            }
            let other_table = self.table(i).await;
            assert_tables_equal(&table, &other_table, &format!("node {first}"), &format!("node {i}"));
        }
        Converged { table, log }
    }

    /// [`Cluster::assert_converged_on`] every node.
    pub async fn assert_converged(&self) -> Converged {
        let all: Vec<usize> = (0..self.len()).collect();
        self.assert_converged_on(&all).await
    }
}

fn assert_tables_equal(a: &[BalanceRow], b: &[BalanceRow], a_name: &str, b_name: &str) {
    if a == b {
        return;
    }
    let by_account =
        |rows: &[BalanceRow]| -> BTreeMap<Account, BalanceRow> { rows.iter().map(|r| (r.0, *r)).collect() };
    let (ma, mb) = (by_account(a), by_account(b));
    let differences: Vec<String> = ma
        .keys()
        .chain(mb.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| ma.get(k) != mb.get(k))
        .take(10)
        .map(|k| format!("account {k}: {a_name} {:?}, {b_name} {:?}", ma.get(k), mb.get(k)))
        .collect();
    panic!(
        "bank_balance differs between {a_name} ({} rows) and {b_name} ({} rows); first differences:\n{}",
        a.len(),
        b.len(),
        differences.join("\n")
    );
}

/// Two logs that may each start after LSN 1: the same entry wherever both hold an LSN, and the
/// same last LSN.
fn assert_logs_agree(a: &[LogRow], b: &[LogRow], a_node: usize, b_node: usize) {
    let (a_end, b_end) = (a.last().map(|e| e.lsn), b.last().map(|e| e.lsn));
    assert_eq!(a_end, b_end, "the recovery_log of node {a_node} ends at {a_end:?}, node {b_node}'s at {b_end:?}");
    let from = a.first().map_or(0, |e| e.lsn).max(b.first().map_or(0, |e| e.lsn));
    let common = |log: &[LogRow]| -> Vec<LogRow> { log.iter().filter(|e| e.lsn >= from).cloned().collect() };
    assert_logs_equal(&common(a), &common(b), a_node, b_node);
}

fn assert_logs_equal(a: &[LogRow], b: &[LogRow], a_node: usize, b_node: usize) {
    if a == b {
        return;
    }
    let first_difference = a.iter().zip(b).position(|(x, y)| x != y);
    match first_difference {
        Some(i) => panic!(
            "recovery_log differs between node {a_node} and node {b_node} at position {i}:\n{:?}\n{:?}",
            a[i], b[i]
        ),
        None => panic!("recovery_log of node {a_node} has {} entries, node {b_node} has {}", a.len(), b.len()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use uuid::Uuid;

    use super::*;

    fn entry(lsn: i64, commit_ts: i64, writes: serde_json::Value) -> LogRow {
        LogRow {
            lsn,
            term: 1,
            txn_id: Uuid::new_v4(),
            commit_ts,
            read_set: json!([]),
            write_set: writes,
            aborted: None,
        }
    }

    #[test]
    fn replay_keeps_the_first_and_last_commit_timestamps() {
        let log = [
            entry(1, 10, json!({"1": 100, "2": 200})),
            entry(2, 20, json!({"2": 22})),
            entry(3, 30, json!({"3": -5, "2": 23})),
        ];
        assert_eq!(
            replay(&log),
            vec![(1, 100, Some(10), Some(10)), (2, 23, Some(10), Some(30)), (3, -5, Some(30), Some(30)),]
        );
    }

    #[test]
    #[should_panic(expected = "not dense")]
    fn a_gap_in_the_log_is_caught() {
        check_log_shape(0, &[entry(1, 10, json!({})), entry(3, 30, json!({}))], false);
    }

    #[test]
    #[should_panic(expected = "not dense from 1")]
    fn a_log_after_lsn_1_is_caught_without_retention() {
        check_log_shape(0, &[entry(2, 10, json!({})), entry(3, 30, json!({}))], false);
    }

    #[test]
    fn a_trimmed_log_is_dense_from_its_first_entry() {
        check_log_shape(0, &[entry(7, 10, json!({})), entry(8, 30, json!({}))], true);
    }

    #[test]
    #[should_panic(expected = "not dense from 7")]
    fn a_gap_in_a_trimmed_log_is_caught() {
        check_log_shape(0, &[entry(7, 10, json!({})), entry(9, 30, json!({}))], true);
    }

    #[test]
    #[should_panic(expected = "term goes back")]
    fn a_term_going_back_is_caught() {
        let mut late = entry(2, 20, json!({}));
        late.term = 1;
        let mut early = entry(1, 10, json!({}));
        early.term = 2;
        check_log_shape(0, &[early, late], false);
    }

    #[test]
    #[should_panic(expected = "does not increase")]
    fn a_timestamp_going_back_is_caught() {
        check_log_shape(0, &[entry(1, 10, json!({})), entry(2, 10, json!({}))], false);
    }
}
