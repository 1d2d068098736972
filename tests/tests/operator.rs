//! The supervisor's operator endpoints on a real cluster, as an operator meets them: a
//! switchover under load that loses no acknowledged commit, maintenance that holds a failover
//! back until it ends, members removed and added back online, a diverged node rebuilt, and the
//! history of it all surviving a supervisor restart. The pure rules behind them (each refusal,
//! the bounded history, old state files) are unit tests in `supervisor/src/planned.rs`,
//! `history.rs` and `store.rs`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use e2e::{Ack, Cluster, ClusterOptions, Follower, Sent, FAILOVER_TIMEOUT};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Long enough for a healed cluster to do what it was asked.
const SETTLE: Duration = Duration::from_secs(30);
/// Writers run this long before the switchover and after it.
const LOAD_AROUND: Duration = Duration::from_millis(1500);
/// Concurrent writers during the switchover.
const WRITERS: u64 = 4;
/// A writer's accounts: `writer * ACCOUNT_BLOCK + n`, so that every acknowledged write can be
/// read back on its own.
const ACCOUNT_BLOCK: i64 = 1_000_000;

fn addr(c: &Cluster, i: usize) -> String {
    c.node(i).address()
}

fn members(status: &Value) -> Vec<String> {
    status["members"].as_array().into_iter().flatten().filter_map(|m| m.as_str().map(str::to_string)).collect()
}

fn event_kinds(events: &Value) -> Vec<String> {
    events.as_array().into_iter().flatten().filter_map(|e| e["kind"].as_str().map(str::to_string)).collect()
}

/// Asserts a refusal: its status, its code, and a message a person can act on.
fn assert_refused(answer: &(StatusCode, Value), status: StatusCode, code: &str) {
    let (got, body) = answer;
    assert_eq!((*got, body["error"].as_str()), (status, Some(code)), "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.len() > 10), "no message in {body}");
}

/// One writer: a new account per commit, through whoever leads, until `stop`; every answer kept.
async fn writer(c: &Cluster, id: u64, stop: &AtomicBool) -> (Vec<(i64, Sent)>, Vec<String>) {
    let mut client = Follower::new(c, c.initial_leader());
    let mut sent = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let account = id as i64 * ACCOUNT_BLOCK + n;
        let ack = client.commit(json!({"write_set": {account.to_string(): n}})).await;
        sent.push((account, ack));
    }
    (sent, std::mem::take(&mut client.surprises))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_under_load_loses_no_acknowledged_commit() {
    let c = Cluster::start_with(ClusterOptions::supervised(3)).await;
    c.write(0, &[(1, 1)]).await;
    let stop = AtomicBool::new(false);
    let stop = &stop;
    let writers = futures::future::join_all((1..=WRITERS).map(|id| writer(&c, id, stop)));
    let script = async {
        tokio::time::sleep(LOAD_AROUND).await;
        let answer = c.supervisor_post("/switchover", &json!({"to": addr(&c, 1)})).await;
        tokio::time::sleep(LOAD_AROUND).await;
        stop.store(true, Ordering::SeqCst);
        answer
    };
    let (written, (code, answer)) = futures::join!(writers, script);
    assert_eq!(code, StatusCode::OK, "{answer}");
    println!("switchover: {answer}");
    assert_eq!(answer["leader"], json!(addr(&c, 1)), "{answer}");
    // How long writes paused is a speed figure: `./setup.sh bench` measures it against its
    // target; here it must only be reported.
    assert!(answer["writes_paused_ms"].as_u64().is_some(), "{answer}");

    // The supervisor names the new leader, in the new term, and the old one is a member.
    let leader = c.wait_for_leader(|i| i == 1).await;
    assert_eq!(leader, 1);
    let s = c.supervisor_status().await;
    assert_eq!((s["leader"].clone(), s["term"].clone()), (json!(addr(&c, 1)), answer["term"].clone()), "{s}");
    assert!(members(&s).contains(&addr(&c, 0)), "the old leader stays a member: {s}");
    assert!(event_kinds(&s["events"]).contains(&"switchover".to_string()), "{s}");
    c.wait_member(0).await;

    // Every acknowledged write is there, on every node.
    let mut acknowledged = Vec::new();
    for (sent, surprises) in &written {
        assert!(surprises.is_empty(), "answers no rule explains: {surprises:?}");
        for (account, s) in sent {
            match &s.ack {
                Ack::Commit { .. } => acknowledged.push(*account),
                Ack::Indeterminate { last_error } => panic!("a commit had no outcome within the budget: {last_error}"),
                Ack::Abort { .. } => {}
            }
        }
    }
    assert!(acknowledged.len() > 20, "too little load to tell: {} commits", acknowledged.len());
    let converged = c.assert_converged().await;
    let table: std::collections::BTreeMap<i64, i64> = converged.table.iter().map(|r| (r.0, r.1)).collect();
    for account in &acknowledged {
        assert_eq!(table.get(account), Some(&(account % ACCOUNT_BLOCK)), "acknowledged write of {account} is lost");
    }
    println!("{} acknowledged commits, every one on every node", acknowledged.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_to_a_node_that_cannot_lead_is_refused_and_changes_nothing() {
    let c = Cluster::start_with(ClusterOptions::supervised(3)).await;
    c.write(0, &[(1, 1)]).await;
    let before = c.supervisor_status().await;

    assert_refused(
        &c.supervisor_post("/switchover", &json!({"to": addr(&c, 0)})).await,
        StatusCode::CONFLICT,
        "already_leader",
    );
    assert_refused(
        &c.supervisor_post("/switchover", &json!({"to": "127.0.0.1:1"})).await,
        StatusCode::CONFLICT,
        "not_member",
    );
    assert_refused(
        &c.supervisor_post("/switchover", &json!({"to": "not an address"})).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert_refused(
        &c.supervisor_post("/switchover", &json!({"leader": addr(&c, 1)})).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );

    let after = c.supervisor_status().await;
    assert_eq!((&after["term"], &after["leader"]), (&before["term"], &before["leader"]), "{after}");
    c.write(0, &[(2, 2)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_paused_a_dead_leader_is_not_replaced_and_the_history_survives_a_restart() {
    let c = Cluster::start_with(ClusterOptions::supervised(3)).await;
    c.write(0, &[(1, 1)]).await;
    let (code, answer) = c.supervisor_post_with("/pause", None, None).await;
    assert_eq!((code, &answer["maintenance"]), (StatusCode::OK, &json!(true)), "{answer}");
    let s = c.supervisor_status().await;
    assert_eq!(s["maintenance"], json!(true), "{s}");
    assert!(s["message"].as_str().is_some_and(|m| m.contains("automatic failover")), "{s}");
    let term = s["term"].clone();

    c.kill_agent(0);
    // Far longer than detection (3 misses of 200 ms) and an election would take.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let s = c.supervisor_status().await;
    assert_eq!((&s["leader"], &s["term"]), (&json!(addr(&c, 0)), &term), "failed over in maintenance: {s}");
    assert!(s["message"].as_str().is_some_and(|m| m.contains("automatic failover is off")), "{s}");

    let (code, answer) = c.supervisor_post_with("/resume", None, None).await;
    assert_eq!((code, &answer["maintenance"]), (StatusCode::OK, &json!(false)), "{answer}");
    let new = c.wait_for_leader_within(FAILOVER_TIMEOUT, |i| i != 0).await;
    c.write(new, &[(2, 2)]).await;

    c.restart_supervisor().await;
    let (code, page) = c.supervisor_get("/history?limit=1000").await;
    assert_eq!(code, StatusCode::OK, "{page}");
    let kinds = event_kinds(&page["events"]);
    for kind in ["maintenance_on", "maintenance_off", "failover"] {
        assert!(kinds.contains(&kind.to_string()), "{kind} is not in the history after a restart: {kinds:?}");
    }
    let on = kinds.iter().position(|k| k == "maintenance_on");
    let failover = kinds.iter().position(|k| k == "failover");
    assert!(on < failover, "newest last: {kinds:?}");
    let (code, last) = c.supervisor_get("/history?limit=1").await;
    assert_eq!((code, last["events"].as_array().map(Vec::len)), (StatusCode::OK, Some(1)), "{last}");
    assert_refused(&c.supervisor_get("/history?limit=0").await, StatusCode::BAD_REQUEST, "bad_request");
    let s = c.supervisor_status().await;
    assert_eq!(s["maintenance"], json!(false), "{s}");
    assert!(!event_kinds(&s["events"]).is_empty(), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_removed_and_added_back_recovers_with_the_data_and_the_floor_holds() {
    let c = Cluster::start_with(ClusterOptions::supervised(3)).await;
    c.write(0, &[(1, 10)]).await;

    assert_refused(
        &c.supervisor_post("/members/remove", &json!({"node": addr(&c, 0)})).await,
        StatusCode::CONFLICT,
        "is_leader",
    );
    let (code, config) = c.supervisor_post("/members/remove", &json!({"node": addr(&c, 2)})).await;
    assert_eq!(code, StatusCode::OK, "{config}");
    assert_eq!(members(&config), [addr(&c, 0), addr(&c, 1)], "{config}");
    // Two members left, the floor of two: no further removal.
    assert_refused(
        &c.supervisor_post("/members/remove", &json!({"node": addr(&c, 1)})).await,
        StatusCode::CONFLICT,
        "below_floor",
    );
    let (code, body) = c.supervisor_post("/members/remove", &json!({"node": addr(&c, 2)})).await;
    assert_eq!((code, &body["error"]), (StatusCode::NOT_FOUND, &json!("not_found")), "removed once: {body}");

    // Commits go on without it, and it is neither watched nor recovered.
    for n in 2..=6 {
        c.write(0, &[(n, 10 * n)]).await;
    }
    let s = c.supervisor_status().await;
    assert!(!s["nodes"].as_array().into_iter().flatten().any(|n| n["address"] == json!(addr(&c, 2))), "{s}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!members(&c.supervisor_status().await).contains(&addr(&c, 2)), "a removed node came back by itself");

    assert_refused(
        &c.supervisor_post("/members/add", &json!({"node": addr(&c, 1)})).await,
        StatusCode::CONFLICT,
        "already_known",
    );
    assert_refused(
        &c.supervisor_post("/members/add", &json!({"node": "127.0.0.1:1"})).await,
        StatusCode::CONFLICT,
        "unreachable",
    );
    let (code, answer) = c.supervisor_post("/members/add", &json!({"node": addr(&c, 2)})).await;
    assert_eq!((code, &answer["state"]), (StatusCode::ACCEPTED, &json!("recovering")), "{answer}");
    c.wait_member(2).await;
    let converged = c.assert_converged().await;
    assert_eq!(converged.table.len(), 6, "node 2 has every write, those made while it was out too");

    let (_, page) = c.supervisor_get("/history").await;
    let kinds = event_kinds(&page["events"]);
    for kind in ["member_removed", "member_added", "recovery"] {
        assert!(kinds.contains(&kind.to_string()), "{kind} missing: {kinds:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_added_online_replays_the_log_then_takes_part_in_every_commit() {
    // Node 3 is new: its own PostgreSQL and agent, started as an operator would, with the
    // cluster's members and leader plus its own address; nobody else knows it yet.
    let c = Cluster::start_with(ClusterOptions { spare: 1, ..ClusterOptions::supervised(4) }).await;
    for n in 1..=5 {
        c.write(0, &[(n, 10 * n)]).await;
    }
    let new = addr(&c, 3);
    assert!(!members(&c.supervisor_status().await).contains(&new));
    // Its own configuration names it a member, but its database is empty: no load balancer may
    // send it reads.
    for path in ["/replica", "/read-only"] {
        let answer = c.get_raw(3, path).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{path} on a node not yet added: {}", answer.body);
    }

    let (code, answer) = c.supervisor_post("/members/add", &json!({"node": new})).await;
    assert_eq!((code, &answer["state"]), (StatusCode::ACCEPTED, &json!("recovering")), "{answer}");
    c.wait_member(3).await;
    let s = c.supervisor_status().await;
    assert_eq!(members(&s).len(), 4, "{s}");
    assert!(s["nodes"].as_array().into_iter().flatten().any(|n| n["address"] == json!(new)), "{s}");

    // From now on every commit reaches it too.
    c.write(0, &[(6, 60)]).await;
    let converged = c.assert_converged().await;
    assert_eq!(converged.table.len(), 6, "the new node has every write");
    assert_eq!(c.table(3).await, c.table(0).await);
    assert_eq!(c.status(3).await.cluster_id, c.status(0).await.cluster_id, "it belongs to the cluster");
    assert_eq!(c.get_raw(3, "/replica").await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diverged_node_is_rebuilt_and_becomes_a_member_with_the_leaders_balances() {
    let c = Cluster::start_with(ClusterOptions::supervised(3)).await;
    for n in 1..=3 {
        c.write(0, &[(n, 100 * n)]).await;
    }
    c.wait_member(2).await;
    assert_refused(
        &c.supervisor_post("/rebuild", &json!({"node": addr(&c, 2)})).await,
        StatusCode::CONFLICT,
        "is_member",
    );
    let (code, body) = c.supervisor_post("/rebuild", &json!({"node": "127.0.0.1:1"})).await;
    assert_eq!((code, &body["error"]), (StatusCode::NOT_FOUND, &json!("not_found")), "{body}");

    // Node 2 goes down; the leader reports it on the next commits, and it is removed.
    c.kill_agent(2);
    let deadline = Instant::now() + SETTLE;
    let mut n = 10;
    while members(&c.supervisor_status().await).contains(&addr(&c, 2)) {
        assert!(Instant::now() < deadline, "node 2 was never removed: {}", c.supervisor_status().await);
        n += 1;
        let _ = c.commit(0, json!({"transaction": {"write_set": {n.to_string(): n}}})).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.write(0, &[(4, 400)]).await;
    // Its last entry is rewritten behind its agent's back: its log now differs from the leader's.
    let db = c.db(2).await;
    sqlx::query(
        "UPDATE recovery_log SET txn_id = gen_random_uuid(), write_set = '{\"1\": 666}' \
         WHERE lsn = (SELECT max(lsn) FROM recovery_log)",
    )
    .execute(&db)
    .await
    .expect("rewrite node 2's last log entry");
    sqlx::query("UPDATE bank_balance SET balance = 666 WHERE account_number = 1").execute(&db).await.expect("rewrite");
    c.start_agent(2).await;
    let s = c
        .wait_supervisor("it finds node 2 diverged", SETTLE, |s| {
            s["diverged"].as_array().is_some_and(|d| d.contains(&json!(addr(&c, 2))))
        })
        .await;
    assert!(event_kinds(&s["events"]).contains(&"diverged".to_string()), "{s}");

    let (code, answer) = c.supervisor_post("/rebuild", &json!({"node": addr(&c, 2)})).await;
    assert_eq!((code, &answer["state"]), (StatusCode::ACCEPTED, &json!("recovering")), "{answer}");
    assert!(answer["wiped_entries"].as_u64().is_some_and(|n| n >= 3), "{answer}");
    c.wait_member(2).await;
    let s = c.supervisor_status().await;
    assert!(!s["diverged"].as_array().is_some_and(|d| d.contains(&json!(addr(&c, 2)))), "{s}");
    let converged = c.assert_converged().await;
    let one = converged.table.iter().find(|r| r.0 == 1).map(|r| r.1);
    assert_eq!(one, Some(100), "node 2 has the leader's balances again");
    assert!(event_kinds(&s["events"]).contains(&"rebuild".to_string()), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn maintenance_and_the_history_are_shared_with_a_standby_through_etcd() {
    let c = Cluster::start_with(ClusterOptions::with_etcd(3)).await;
    let active = c.wait_active_supervisor(None).await;
    let standby = 1 - active;
    c.write(0, &[(1, 1)]).await;

    // A standby changes nothing and names the active supervisor.
    let (code, body) = c.supervisor_post_at(standby, "/pause", None, None).await;
    assert_eq!((code, &body["error"]), (StatusCode::SERVICE_UNAVAILABLE, &json!("standby")), "{body}");
    let active_address = c.supervisor_address_at(active);
    assert!(body["message"].as_str().is_some_and(|m| m.contains(&active_address)), "{body}");
    let (code, body) = c.supervisor_post_at(standby, "/switchover", Some(&json!({"to": addr(&c, 1)})), None).await;
    assert_eq!((code, &body["error"]), (StatusCode::SERVICE_UNAVAILABLE, &json!("standby")), "{body}");

    let (code, body) = c.supervisor_post_at(active, "/pause", None, None).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    c.kill_supervisor_at(active);
    assert_eq!(c.wait_active_supervisor(Some(active)).await, standby);
    let s = c.supervisor_status().await;
    assert_eq!(s["maintenance"], json!(true), "the standby took over in maintenance: {s}");
    let (_, page) = c.supervisor_get_at(standby, "/history").await;
    assert!(event_kinds(&page["events"]).contains(&"maintenance_on".to_string()), "{page}");

    // In maintenance still: a dead leader is not replaced by the new active supervisor either.
    let term = s["term"].clone();
    c.kill_agent(0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = c.supervisor_status().await;
    assert_eq!((&s["leader"], &s["term"]), (&json!(addr(&c, 0)), &term), "failed over in maintenance: {s}");
    let (code, body) = c.supervisor_post_at(standby, "/resume", None, None).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let new = c.wait_leader_change(0).await;
    c.write(new, &[(2, 2)]).await;
    let (_, page) = c.supervisor_get_at(standby, "/history").await;
    let kinds = event_kinds(&page["events"]);
    for kind in ["maintenance_on", "maintenance_off", "failover"] {
        assert!(kinds.contains(&kind.to_string()), "{kind} missing: {kinds:?}");
    }
}
