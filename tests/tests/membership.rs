//! Membership that cannot lose an acknowledged commit, checked from outside as a user meets it:
//! the durability floor (`--min-copies`, 2 by default) with both replicas frozen, a commit's own
//! `min_copies`, a far-future `time_stamp`, and an ABORT that stays an ABORT across a failover.
//! The pure rules behind them (elections by log position, the floor, reports checked against
//! the supervisor's own view, one leader per term) have their scenarios as unit tests in
//! `supervisor/src/failover.rs` and `agent/src/participant.rs`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use e2e::{Cluster, ClusterOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

/// How long both replicas stay frozen: several peer timeouts, and more than the supervisor
/// needs to declare a node down.
const FROZEN: Duration = Duration::from_secs(4);
/// Long enough for a healed cluster to take commits again.
const HEAL_LIMIT: Duration = Duration::from_secs(30);

async fn commit_with_id(c: &Cluster, node: usize, txn: Value, id: Uuid) -> (StatusCode, Value) {
    let mut txn = txn;
    txn["txn_id"] = json!(id);
    c.commit(node, json!({ "transaction": txn })).await
}

/// Commits `txn` at whichever node leads, retrying with the same `txn_id` until it has an outcome.
async fn settle(c: &Cluster, txn: Value, id: Uuid) -> (StatusCode, Value) {
    let deadline = Instant::now() + HEAL_LIMIT;
    loop {
        let leader = c.wait_for_leader(|_| true).await;
        let (code, body) = commit_with_id(c, leader, txn.clone(), id).await;
        if code == StatusCode::OK || code == StatusCode::CONFLICT {
            return (code, body);
        }
        assert!(Instant::now() < deadline, "no outcome for {id} within {HEAL_LIMIT:?}: {code} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_both_replicas_frozen_nothing_is_acknowledged_on_one_disk() {
    let c = Cluster::start_with(ClusterOptions::supervised(3)).await;
    c.write(0, &[(1, 100)]).await;

    c.pause_agent(1);
    c.pause_agent(2);
    let frozen_at = Instant::now();
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    let mut sent = Vec::new();
    let mut n = 0;
    while frozen_at.elapsed() < FROZEN {
        n += 1;
        let id = Uuid::new_v4();
        let (code, body) = commit_with_id(&c, 0, json!({"write_set": {"2": n}}), id).await;
        assert_ne!(code, StatusCode::OK, "acknowledged while both replicas were frozen: {body}");
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let reason = body["reason"].as_str().or(body["error"].as_str()).unwrap_or("?").to_string();
        *answers.entry(reason).or_default() += 1;
        sent.push(id);
    }
    c.resume_agent(1);
    c.resume_agent(2);
    println!("answers while frozen: {answers:?}");
    assert!(
        answers.get("not_enough_replicas").copied().unwrap_or(0) >= 2,
        "commits must be refused with not_enough_replicas while the floor cannot be met: {answers:?}"
    );
    let s = c.supervisor_status().await;
    let members = s["members"].as_array().map_or(0, Vec::len);
    assert!(members >= 2, "the member set shrank below the floor: {s}");

    // Healed: commits go on, and every commit acknowledged now is on at least two nodes.
    let (code, body) = settle(&c, json!({"write_set": {"3": 3}}), Uuid::new_v4()).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    for i in 1..3 {
        c.wait_member(i).await;
    }
    let converged = c.assert_converged().await;
    // A commit refused with not_enough_replicas applied nothing; one left "unknown" by the
    // first frozen round may have been resolved either way, but never twice.
    for id in &sent {
        let found = converged.log.iter().filter(|e| e.txn_id == *id).count();
        assert!(found <= 1, "txn {id} is {found} times in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_may_ask_for_more_copies_than_the_floor() {
    let c = Cluster::start_with(ClusterOptions::supervised(3)).await;
    let (code, body) = c.commit(0, json!({"transaction": {"write_set": {"1": 1}}, "min_copies": 3})).await;
    assert_eq!(code, StatusCode::OK, "three members answer: {body}");
    // More than the cluster's nodes: the caller's mistake.
    let (code, body) = c.commit(0, json!({"transaction": {"write_set": {"1": 2}}, "min_copies": 4})).await;
    assert_eq!((code, &body["error"]), (StatusCode::BAD_REQUEST, &json!("bad_request")), "{body}");
    // Three asked, two members left: a shortage, 503 until the third is back.
    c.kill_agent(2);
    let deadline = Instant::now() + HEAL_LIMIT;
    loop {
        let (code, body) = c.commit(0, json!({"transaction": {"write_set": {"1": 3}}, "min_copies": 3})).await;
        assert_ne!(code, StatusCode::OK, "acknowledged with one of three nodes dead: {body}");
        if body["reason"] == "not_enough_replicas" {
            assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "never refused with not_enough_replicas: {code} {body}");
    }
    let (code, body) = c.commit(0, json!({"transaction": {"write_set": {"4": 4}}})).await;
    assert_eq!(code, StatusCode::OK, "two copies are enough for the default floor: {body}");
    let read = c.read(0, &[1]).await;
    assert_eq!(read.values.get(&1), Some(&1), "the refused commits applied nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_future_timestamp_is_refused_and_cannot_hide_a_stale_read() {
    let c = Cluster::start(3).await;
    c.write(0, &[(7, 70)]).await;
    let t1 = c.read(0, &[7]).await.timestamp;
    c.write(0, &[(7, 71)]).await;
    let stale =
        json!({"transaction": {"read_set": [7], "write_set": {"8": 1}, "time_stamp": 9_000_000_000_000_000_000i64}});
    let (code, body) = c.commit(0, stale).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "bad_timestamp", "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("9000000000000000000")), "{body}");
    let (code, body) =
        c.commit(0, json!({"transaction": {"read_set": [7], "write_set": {"8": 1}, "time_stamp": t1}})).await;
    assert_eq!((code, &body["reason"]), (StatusCode::CONFLICT, &json!("stale_read")), "{body}");
    let read = c.read(0, &[8]).await;
    assert!(read.values.is_empty(), "nothing of either refused commit was applied: {read:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_txn_id_stays_aborted_across_a_failover_and_a_restart() {
    let c = Cluster::start_with(ClusterOptions::supervised(3)).await;
    c.write(0, &[(5, 50)]).await;
    let t1 = c.read(0, &[5]).await.timestamp;
    c.write(0, &[(5, 51)]).await;
    let id = Uuid::new_v4();
    let txn = json!({"read_set": [5], "write_set": {"6": 1}, "time_stamp": t1});
    let (code, first) = commit_with_id(&c, 0, txn.clone(), id).await;
    assert_eq!((code, &first["reason"]), (StatusCode::CONFLICT, &json!("stale_read")), "{first}");

    // A retry whose read would now pass still gets the first answer.
    let fresh = json!({"read_set": [5], "write_set": {"6": 1}, "time_stamp": c.read(0, &[5]).await.timestamp});
    let (code, again) = commit_with_id(&c, 0, fresh.clone(), id).await;
    assert_eq!((code, &again["reason"]), (StatusCode::CONFLICT, &json!("stale_read")), "{again}");

    let (code, drill) = c.down_leader(0).await;
    assert_eq!(code, StatusCode::OK, "{drill:?}");
    let new = c.wait_leader_change(0).await;
    let (code, after) = settle(&c, fresh.clone(), id).await;
    assert_eq!(code, StatusCode::CONFLICT, "after the failover to node {new}: {after}");
    assert_eq!((&after["reason"], &after["key"]), (&json!("stale_read"), &json!(5)), "{after}");

    c.restart_agent(new).await;
    let (code, after_restart) = settle(&c, fresh, id).await;
    assert_eq!(code, StatusCode::CONFLICT, "after a restart of node {new}: {after_restart}");
    let read = c.read(c.wait_for_leader(|_| true).await, &[6]).await;
    assert!(read.values.is_empty(), "the aborted transaction wrote nothing: {read:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_given_twice_is_refused_naming_it() {
    let c = Cluster::start(3).await;
    // Sent as bytes: a JSON map in this test would drop the duplicate before it left.
    let json = Some("application/json");
    let r = c.post_raw(0, "/commit/", r#"{"transaction": {"write_set": {"1": 1, "1": 2}}}"#, json).await;
    let body = r.json().unwrap_or_default();
    assert_eq!((r.status, &body["error"]), (StatusCode::BAD_REQUEST, &json!("bad_request")), "{}", r.body);
    assert!(body["message"].as_str().is_some_and(|m| m.contains("account 1 appears twice")), "{}", r.body);
    let r = c.post_raw(1, "/read/", r#"{"transaction": {"read_set": [3, 3]}}"#, json).await;
    let body = r.json().unwrap_or_default();
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(body["message"].as_str().is_some_and(|m| m.contains("account 3 appears twice")), "{}", r.body);
    assert!(c.read(0, &[1]).await.values.is_empty(), "nothing was written");
}

/// The agent's `/status` as JSON, with the fields a test of identity needs.
async fn status_json(c: &Cluster, i: usize) -> Value {
    let (code, s) = c.get(i, "/status").await;
    assert_eq!(code, StatusCode::OK, "node {i}: {s}");
    s
}

// Finding 3: a node whose data directory was wiped, under the first leader's name, must not
// lead again with an empty log; it comes back as a new node, recovers the whole log, and
// only then takes the cluster's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_leader_comes_back_as_a_new_node_and_never_leads_with_an_empty_log() {
    let c = Cluster::start_with(ClusterOptions::supervised(3)).await;
    for n in 1..=5 {
        c.write(0, &[(n, 10 * n)]).await;
    }
    let s = c.wait_supervisor("it learns the cluster's id", HEAL_LIMIT, |s| s["cluster_id"].is_string()).await;
    let id = s["cluster_id"].clone();
    for i in 0..3 {
        let wanted = id.clone();
        let deadline = Instant::now() + HEAL_LIMIT;
        while status_json(&c, i).await["cluster_id"] != wanted {
            assert!(Instant::now() < deadline, "node {i} never took the cluster's id {wanted}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // The disk of node 0, the leader, is lost.
    c.kill_agent(0);
    c.stop_postgres(0).await;
    std::fs::remove_dir_all(&c.node(0).data_dir).unwrap_or_else(|e| panic!("wipe node 0: {e}"));
    let new = c.wait_for_leader(|i| i != 0).await;
    let (code, body) = settle(&c, json!({"write_set": {"9": 9}}), Uuid::new_v4()).await;
    assert_eq!(code, StatusCode::OK, "{body}");

    c.recreate_data_dir(0).await;
    c.start_postgres(0).await;
    c.start_agent(0).await;
    let wiped = status_json(&c, 0).await;
    assert_ne!(wiped["role"], "leader", "a wiped node led again: {wiped}");
    c.wait_member(0).await;
    let back = status_json(&c, 0).await;
    assert_eq!(back["cluster_id"], id, "it took the cluster's id once caught up: {back}");
    let s = c.supervisor_status().await;
    assert_eq!(s["leader"], json!(c.node(new).address()), "the leader did not move to the wiped node: {s}");
    let converged = c.assert_converged().await;
    assert_eq!(converged.table.len(), 6, "every acknowledged write is on every node, node 0 included");
}
