//! The README's curl session, step by step, against a fresh three-node cluster: what a user types
//! and what they must see.

use e2e::Cluster;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn int(v: &Value, what: &str) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("{what} is not an integer: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_session() {
    let c = Cluster::start(3).await;
    let leader_address = c.node(0).address();

    // --- health: every node serves ---
    for i in 0..3 {
        assert_eq!(c.health(i).await, StatusCode::OK, "GET /health on node {i}");
    }

    // --- read of [1, 2] on a fresh cluster: nothing written yet ---
    let (status, fresh) = c.read_json(0, json!({"transaction": {"read_set": [1, 2], "write_set": {}}})).await;
    assert_eq!(status, StatusCode::OK, "{fresh}");
    assert_eq!(fresh["read_status"], "success", "{fresh}");
    assert_eq!(fresh["values"], json!({}), "accounts never written are absent: {fresh}");
    assert_eq!(fresh["data"], json!([]), "{fresh}");
    assert_eq!(fresh["lsn"], 0, "{fresh}");
    assert_eq!(fresh["node"], "node0", "{fresh}");
    assert_eq!(fresh["role"], "leader", "{fresh}");
    let fresh_ts = int(&fresh["timestamp"], "timestamp");
    assert!(fresh_ts >= 0, "{fresh}");

    // --- blind write of accounts 1 and 2 ---
    let (status, w1) = c.commit(0, json!({"transaction": {"write_set": {"1": 100, "2": 200}}})).await;
    assert_eq!(status, StatusCode::OK, "{w1}");
    assert_eq!(w1["commit"], "COMMIT", "{w1}");
    assert_eq!(w1["lsn"], 1, "the first commit is lsn 1: {w1}");
    let ts1 = int(&w1["commit_ts"], "commit_ts");
    assert!(ts1 > fresh_ts, "commit_ts {ts1} must exceed the earlier read timestamp {fresh_ts}");
    let txn1: uuid::Uuid =
        serde_json::from_value(w1["txn_id"].clone()).unwrap_or_else(|e| panic!("txn_id is not a UUID ({e}): {w1}"));

    // --- read back ---
    let (status, r1) = c.read_json(0, json!({"transaction": {"read_set": [1, 2], "write_set": {}}})).await;
    assert_eq!(status, StatusCode::OK, "{r1}");
    assert_eq!(r1["values"], json!({"1": 100, "2": 200}), "{r1}");
    assert_eq!(
        r1["data"],
        json!([
            {"account_number": 1, "balance": 100, "created_at": ts1, "updated_at": ts1},
            {"account_number": 2, "balance": 200, "created_at": ts1, "updated_at": ts1},
        ]),
        "{r1}"
    );
    assert_eq!(r1["lsn"], 1, "{r1}");
    let rts = int(&r1["timestamp"], "timestamp");
    assert!(rts >= ts1, "a read after a commit gets a timestamp >= its commit_ts: {rts} < {ts1}");

    // --- commit r(1) w(2=22) with the read's timestamp ---
    let (status, w2) =
        c.commit(0, json!({"transaction": {"read_set": [1], "write_set": {"2": 22}, "time_stamp": rts}})).await;
    assert_eq!(status, StatusCode::OK, "{w2}");
    assert_eq!(w2["commit"], "COMMIT", "{w2}");
    assert_eq!(w2["lsn"], 2, "{w2}");
    let ts2 = int(&w2["commit_ts"], "commit_ts");
    assert!(ts2 > rts, "commit_ts {ts2} must exceed every read timestamp handed out ({rts})");
    let txn2: uuid::Uuid = serde_json::from_value(w2["txn_id"].clone()).unwrap();
    assert_ne!(txn1, txn2);

    // The new value, read on every node right away (the leader answered only after every
    // member committed).
    for i in 0..3 {
        let r = c.read(i, &[1, 2]).await;
        assert_eq!(r.values, [(1, 100), (2, 22)].into(), "node {i}: {r:?}");
        assert_eq!(r.lsn, 2, "node {i}: {r:?}");
        assert_eq!(r.node, format!("node{i}"));
        let expected_role = if i == 0 { protocol::Role::Leader } else { protocol::Role::Replica };
        assert_eq!(r.role, expected_role, "node {i}");
        let row2 = r.data.iter().find(|row| row.account_number == 2).unwrap();
        assert_eq!((row2.created_at, row2.updated_at), (Some(ts1), Some(ts2)), "node {i}: {r:?}");
    }

    // --- a commit sent to a replica: 421 and where the leader is ---
    for i in 1..3 {
        let (status, body) = c.commit(i, json!({"transaction": {"read_set": [], "write_set": {"3": 33}}})).await;
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "node {i}: {body}");
        assert_eq!(body["error"], "not_leader", "{body}");
        assert_eq!(body["leader"], leader_address.as_str(), "{body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    }
    for i in 0..3 {
        assert!(c.table(i).await.iter().all(|row| row.0 != 3), "node {i}: the refused commit wrote account 3");
        assert_eq!(c.log(i).await.len(), 2, "node {i}: the refused commit reached the log");
    }

    // --- status ---
    let members: Vec<String> = (0..3).map(|i| c.node(i).address()).collect();
    let mut terms = Vec::new();
    for i in 0..3 {
        let s = c.status(i).await;
        assert_eq!(s.node_id, format!("node{i}"));
        assert_eq!(s.address, c.node(i).address());
        let expected_role = if i == 0 { protocol::Role::Leader } else { protocol::Role::Replica };
        assert_eq!(s.role, expected_role, "node {i}: {s:?}");
        assert_eq!(s.leader.as_deref(), Some(leader_address.as_str()), "node {i}: {s:?}");
        assert_eq!(s.applied_lsn, 2, "node {i}: {s:?}");
        assert_eq!(s.last_commit_ts, ts2, "node {i}: {s:?}");
        assert_eq!(s.members, members, "node {i}: {s:?}");
        assert_eq!(s.prepared_batch, None, "node {i}: nothing is in flight: {s:?}");
        terms.push(s.term);
    }
    assert!(terms.iter().all(|&t| t == terms[0]), "every node is in one term: {terms:?}");

    // --- the replication log, paged ---
    for i in 0..3 {
        let all = c.replication_log(i, 0, None).await;
        assert_eq!(all.applied_lsn, 2, "node {i}: {all:?}");
        assert!(!all.more, "node {i}: {all:?}");
        assert_eq!(all.entries.len(), 2, "node {i}: {all:?}");
        let (e1, e2) = (&all.entries[0], &all.entries[1]);
        assert_eq!((e1.lsn, e1.txn_id, e1.commit_ts), (1, txn1, ts1));
        assert_eq!(e1.read_set, Vec::<i64>::new());
        assert_eq!(e1.write_set, [(1, 100), (2, 200)].into());
        assert_eq!((e2.lsn, e2.txn_id, e2.commit_ts), (2, txn2, ts2));
        assert_eq!(e2.read_set, vec![1]);
        assert_eq!(e2.write_set, [(2, 22)].into());

        let first = c.replication_log(i, 0, Some(1)).await;
        assert_eq!(first.entries, vec![e1.clone()], "node {i}: after=0&limit=1");
        assert!(first.more, "node {i}: after=0&limit=1 leaves lsn 2: {first:?}");
        let second = c.replication_log(i, 1, Some(1)).await;
        assert_eq!(second.entries, vec![e2.clone()], "node {i}: after=1&limit=1");
        assert!(!second.more, "node {i}: after=1&limit=1 is the end: {second:?}");
        let past_end = c.replication_log(i, 2, None).await;
        assert!(past_end.entries.is_empty() && !past_end.more, "node {i}: {past_end:?}");
        assert_eq!(past_end.applied_lsn, 2);
    }

    // The same log in every node's PostgreSQL.
    let converged = c.assert_converged().await;
    assert_eq!(converged.log.len(), 2);
    assert_eq!(converged.table, vec![(1, 100, Some(ts1), Some(ts1)), (2, 22, Some(ts1), Some(ts2))]);
}
