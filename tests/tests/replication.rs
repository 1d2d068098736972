//! Replication as a user relies on it: an acknowledged commit is on every node, a stale read
//! aborts and changes nothing, and a retried transaction id is applied once.

use e2e::{BalanceRow, Cluster, LogRow};
use protocol::{CommitResponse, Outcome};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

/// The parts of a commit answer that must not change when the same transaction is retried.
fn outcome(answer: &Value) -> (Outcome, Uuid, Option<i64>, Option<i64>, Value, Value) {
    let r: CommitResponse =
        serde_json::from_value(answer.clone()).unwrap_or_else(|e| panic!("not a commit answer ({e}): {answer}"));
    (r.commit, r.txn_id, r.commit_ts, r.lsn, answer["reason"].clone(), answer["key"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_commit_is_readable_on_every_node_at_once() {
    let c = Cluster::start(3).await;
    let w1 = c.write(0, &[(1, 10), (2, 20), (3, 30)]).await;
    let (lsn1, ts1) = (w1.lsn.unwrap(), w1.commit_ts.unwrap());

    // No waiting: the leader answered only after every member committed.
    let mut answers = Vec::new();
    for i in 0..3 {
        let r = c.read(i, &[1, 2, 3]).await;
        assert_eq!(r.values, [(1, 10), (2, 20), (3, 30)].into(), "node {i}: {r:?}");
        assert_eq!(r.lsn, lsn1, "node {i}: {r:?}");
        answers.push(r.data);
    }
    assert!(answers.iter().all(|d| d == &answers[0]), "rows differ between nodes: {answers:?}");

    let w2 = c.write(0, &[(2, 21)]).await;
    let (lsn2, ts2) = (w2.lsn.unwrap(), w2.commit_ts.unwrap());
    assert_eq!(lsn2, lsn1 + 1);
    assert!(ts2 > ts1);
    for i in 0..3 {
        // `min_lsn` is how a client waits for its own write on a replica.
        let r = c.read_at(i, &[2], lsn2).await;
        assert_eq!(r.values, [(2, 21)].into(), "node {i}: {r:?}");
        assert_eq!(r.lsn, lsn2, "node {i}: {r:?}");
        c.wait_applied(i, lsn2).await;
        assert_eq!(c.status(i).await.applied_lsn, lsn2, "node {i}");
    }

    let converged = c.assert_converged().await;
    assert_eq!(
        converged.table,
        vec![(1, 10, Some(ts1), Some(ts1)), (2, 21, Some(ts1), Some(ts2)), (3, 30, Some(ts1), Some(ts1))]
    );
    let ids: Vec<Uuid> = converged.log.iter().map(|e| e.txn_id).collect();
    assert_eq!(ids, vec![w1.txn_id, w2.txn_id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_read_aborts_and_changes_nothing() {
    let c = Cluster::start(3).await;
    c.write(0, &[(1, 10), (2, 20)]).await;
    let read = c.read(0, &[1]).await;
    // Another transaction changes the account that was read.
    c.write(0, &[(1, 11)]).await;

    let before = c.snapshot().await;
    let txn = Uuid::new_v4();
    let body = json!({"transaction": {
        "read_set": [1], "write_set": {"2": 99}, "time_stamp": read.timestamp, "txn_id": txn,
    }});
    let (status, answer) = c.commit(0, body.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(answer["commit"], "ABORT", "{answer}");
    assert_eq!(answer["reason"], "stale_read", "{answer}");
    assert_eq!(answer["key"], 1, "the abort names the account that changed: {answer}");
    assert_eq!(answer["txn_id"], txn.to_string(), "{answer}");
    assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()), "{answer}");
    // The ABORT is final: every node's log records it (an entry that writes nothing), and
    // nothing else changed.
    let after = c.snapshot().await;
    assert_eq!(without_abort_of(&after, txn), before, "an aborted commit changed a table");
    for (i, (_, log)) in after.iter().enumerate() {
        let record = log.iter().find(|e| e.txn_id == txn).unwrap_or_else(|| panic!("node {i}: no abort record"));
        assert!(!record.is_commit() && record.writes().is_empty(), "node {i}: {record:?}");
        assert_eq!(record.aborted.as_ref().map(|a| &a["reason"]), Some(&json!("stale_read")), "node {i}");
    }

    // Retrying the aborted transaction returns the same outcome and still changes nothing.
    let (status, again) = c.commit(0, body).await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    assert_eq!(outcome(&again), outcome(&answer));
    assert_eq!(c.snapshot().await, after, "a retried abort changed a table or a log");

    // Read again, and the same transaction commits.
    let fresh = c.read(0, &[1]).await;
    assert_eq!(fresh.values, [(1, 11)].into());
    let (status, ok) = c
        .commit(0, json!({"transaction": {"read_set": [1], "write_set": {"2": 99}, "time_stamp": fresh.timestamp}}))
        .await;
    assert_eq!(status, StatusCode::OK, "{ok}");
    for i in 0..3 {
        assert_eq!(c.read(i, &[2]).await.values, [(2, 99)].into(), "node {i}");
    }
    let converged = c.assert_converged().await;
    assert!(
        converged.log.iter().all(|e| e.txn_id != txn || !e.is_commit()),
        "the aborted txn is in the log as a commit"
    );
}

/// `snapshot` without the log entries that record the abort of `txn`.
fn without_abort_of(snapshot: &[(Vec<BalanceRow>, Vec<LogRow>)], txn: Uuid) -> Vec<(Vec<BalanceRow>, Vec<LogRow>)> {
    snapshot
        .iter()
        .map(|(table, log)| (table.clone(), log.iter().filter(|e| e.txn_id != txn || e.is_commit()).cloned().collect()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_transaction_id_is_applied_once() {
    let c = Cluster::start(3).await;
    c.write(0, &[(5, 1)]).await;

    let txn = Uuid::new_v4();
    let body = json!({"transaction": {"write_set": {"5": 500}, "txn_id": txn}});
    let (status, first) = c.commit(0, body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["txn_id"], txn.to_string(), "{first}");
    let lsn = first["lsn"].as_i64().unwrap();

    let (status, second) = c.commit(0, body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(outcome(&second), outcome(&first), "a retry returns the first outcome");

    // Another write to the account; a late retry must not write 500 over it.
    c.write(0, &[(5, 600)]).await;
    let (status, third) = c.commit(0, body).await;
    assert_eq!(status, StatusCode::OK, "{third}");
    assert_eq!(outcome(&third), outcome(&first), "a late retry returns the first outcome");

    for i in 0..3 {
        assert_eq!(c.read(i, &[5]).await.values, [(5, 600)].into(), "node {i}: retry re-applied");
        let log = c.log(i).await;
        assert_eq!(log.len(), 3, "node {i}: {log:?}");
        let mine: Vec<_> = log.iter().filter(|e| e.txn_id == txn).collect();
        assert_eq!(mine.len(), 1, "node {i}: {log:?}");
        assert_eq!(mine[0].lsn, lsn, "node {i}");
    }
    c.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_of_a_transaction_get_one_outcome() {
    let c = Cluster::start(3).await;
    c.write(0, &[(6, 1)]).await;
    let log_before = c.log(0).await.len();

    let txn = Uuid::new_v4();
    let body = json!({"transaction": {"write_set": {"6": 60, "7": 70}, "txn_id": txn}});
    let answers = futures::future::join_all((0..8).map(|_| c.commit(0, body.clone()))).await;
    for (status, answer) in &answers {
        assert_eq!(*status, StatusCode::OK, "{answer}");
        assert_eq!(outcome(answer), outcome(&answers[0].1), "duplicates disagree: {answers:?}");
    }
    let lsn = answers[0].1["lsn"].as_i64().unwrap();

    for i in 0..3 {
        assert_eq!(c.read(i, &[6, 7]).await.values, [(6, 60), (7, 70)].into(), "node {i}");
        let log = c.log(i).await;
        assert_eq!(log.len(), log_before + 1, "node {i}: duplicates were logged: {log:?}");
        let mine: Vec<_> = log.iter().filter(|e| e.txn_id == txn).collect();
        assert_eq!(mine.len(), 1, "node {i}: {log:?}");
        assert_eq!(mine[0].lsn, lsn, "node {i}");
    }
    c.assert_converged().await;
}
