//! The control plane on etcd: an active supervisor and a standby sharing their configuration in
//! a three-member etcd, and the faults a user meets: the active supervisor killed, two
//! supervisors acting at once, and etcd losing quorum.
//!
//! Needs etcd (Debian's etcd-server; `./setup.sh test` installs it).

use std::time::{Duration, Instant};

use e2e::{Cluster, ClusterOptions, Follower};
use protocol::Role;
use serde_json::{json, Value};

/// Far beyond the lease's TTL (2 s) and a failover; the speed itself is the benchmark's.
const TAKEOVER_LIMIT: Duration = Duration::from_secs(15);

async fn commit_through(c: &Cluster, key: u64, value: i64) {
    let mut client = Follower::new(c, 0);
    let sent = client.commit(json!({"write_set": {key.to_string(): value}})).await;
    assert!(sent.committed(), "the commit did not go through: {sent:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_supervisor_takes_over_and_fails_over_the_leader() {
    let c = Cluster::start_with(ClusterOptions::with_etcd(3)).await;
    let active = c.wait_active_supervisor(None).await;
    let standby = 1 - active;
    let s = c.try_supervisor_status_at(standby).await.expect("the standby answers /status");
    assert_eq!(s["active"], json!(false), "{s}");
    assert!(s["store"].as_str().is_some_and(|d| d.starts_with("etcd ")), "{s}");
    assert_eq!(s["active_supervisor"].as_str(), c.supervisor_url_at(active).strip_prefix("http://"), "{s}");
    // A standby changes nothing: it sends the caller on.
    let r = c
        .http()
        .post(format!("{}/register_client/", c.supervisor_url_at(standby)))
        .json(&json!({"url": "http://127.0.0.1:1/leader_changed/"}))
        .send()
        .await
        .expect("the standby answers");
    assert_eq!(r.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = r.json().await.expect("a JSON error");
    assert_eq!(body["error"], "standby", "{body}");

    commit_through(&c, 1, 10).await;
    let term = c.supervisor_status().await["term"].as_i64().expect("a term");

    // The active supervisor dies, then the leader agent: the standby takes over, then elects.
    c.kill_supervisor_at(active);
    assert_eq!(c.wait_active_supervisor(Some(active)).await, standby);
    c.kill_agent(0);
    let leader = c.wait_leader_change(0).await;
    assert_eq!(leader, 1, "round-robin: node 1 follows node 0");
    let s = c.supervisor_status().await;
    assert!(s["term"].as_i64().is_some_and(|t| t > term), "a new term: {s}");
    commit_through(&c, 2, 20).await;

    // The old active one comes back as a standby of the same configuration.
    c.start_supervisor_at(active).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let back = c.try_supervisor_status_at(active).await.expect("it answers");
    assert_eq!(back["active"], json!(false), "{back}");
    assert_eq!(back["term"], s["term"], "the standby reads the configuration from etcd: {back}");
    c.start_agent(0).await;
    c.wait_member(0).await;
    c.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_supervisors_acting_at_once_never_make_two_leaders_in_one_term() {
    // Both act without the lease: only the compare-and-swap on the configuration's revision
    // stands between them.
    let mut options = ClusterOptions::with_etcd(3);
    options.supervisor_args = vec!["--act-without-lease".into()];
    let c = Cluster::start_with(options).await;
    let watch = c.watch_leaders();
    let mut leader = c.wait_for_leader(|_| true).await;
    for round in 0..4 {
        commit_through(&c, round + 1, round as i64).await;
        c.kill_agent(leader);
        let next = c.wait_leader_change(leader).await;
        c.start_agent(leader).await;
        c.wait_member(leader).await;
        leader = next;
    }
    let history = watch.stop().await;
    history.assert_one_leader_per_term();
    assert!(history.leaders.len() >= 5, "four failovers, each a new term: {:?}", history.leaders);
    // Both raced: the loser of each term's write says so in its log.
    let logs = c.supervisor_log(400);
    assert!(logs.contains("another supervisor changed the configuration first"), "no lost race seen:\n{logs}");
    c.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_etcd_commits_go_on_nothing_fails_over_and_all_resumes_on_its_return() {
    let c = Cluster::start_with(ClusterOptions::with_etcd(3)).await;
    let active = c.wait_active_supervisor(None).await;
    commit_through(&c, 1, 1).await;
    let term = c.supervisor_status().await["term"].as_i64().expect("a term");

    // Quorum lost: two of three members gone.
    c.kill_etcd(0);
    c.kill_etcd(1);
    // Every member answers: commits and reads go on.
    for k in 0..5 {
        commit_through(&c, 10 + k, k as i64).await;
    }
    // The active supervisor stops acting once its lease could have expired.
    let deadline = Instant::now() + TAKEOVER_LIMIT;
    while c.active_supervisor().await.is_some() {
        assert!(Instant::now() < deadline, "a supervisor still acts without etcd:\n{}", c.supervisor_log(30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The leader dies: nothing fails over while etcd is down.
    c.kill_agent(0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in 1..3 {
        let s = c.status(i).await;
        assert_eq!(s.term, term, "node {i} moved to another term without etcd");
        assert_ne!(s.role, Role::Leader, "node {i} was promoted without etcd");
    }

    // etcd is back: a supervisor acts again and fails over.
    c.start_etcd_member(0);
    c.start_etcd_member(1);
    c.wait_etcd_healthy(0).await;
    c.wait_active_supervisor(None).await;
    let leader = c.wait_leader_change(0).await;
    assert_ne!(leader, 0);
    commit_through(&c, 30, 30).await;
    assert!(c.active_supervisor().await.is_some(), "supervisor {active} or its standby acts again");
    c.start_agent(0).await;
    c.wait_member(0).await;
    c.assert_converged().await;
}
