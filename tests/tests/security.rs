//! The cluster token and the metrics endpoint, on a real cluster.
//!
//! With a token configured, every internal endpoint (agent to agent, supervisor to agent, the
//! drills, log paging) must refuse a call without the token, or with a wrong one, with 401 and a
//! JSON message, and change nothing; the agents themselves, carrying the token, still replicate.
//! So must every supervisor endpoint that changes something (the leader's failure reports,
//! client registrations, and the operator's switchover, maintenance, members and rebuild).

use e2e::{Cluster, ClusterOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};

const TOKEN: &str = "e2e-test-token-7c1f";

async fn cluster_with_token() -> Cluster {
    let mut options = ClusterOptions::new(3);
    options.agent_env.push(("CLUSTER_TOKEN".into(), TOKEN.into()));
    Cluster::start_with(options).await
}

/// Every internal endpoint, with a body that would change something if it were accepted.
fn internal_calls() -> Vec<(&'static str, &'static str, Value)> {
    let config = json!({"term": 99, "version": 99, "leader": null, "members": []});
    vec![
        (
            "POST",
            "/internal/prepare",
            json!({"term": 99, "round": 1, "prev_lsn": 1, "entries": [
            {"lsn": 2, "term": 99, "txn_id": "6f1c4a1e-0000-4000-8000-000000000001", "commit_ts": 1,
             "read_set": [], "write_set": {"1": 666}}]}),
        ),
        (
            "POST",
            "/internal/decide",
            json!({"term": 99, "last_lsn": 1, "last_txn": "6f1c4a1e-0000-4000-8000-000000000001", "decision": "ABORT"}),
        ),
        ("GET", "/internal/batch_state?last_lsn=1&last_txn=6f1c4a1e-0000-4000-8000-000000000001&term=1", Value::Null),
        ("POST", "/internal/fence", config.clone()),
        ("POST", "/internal/promote", config.clone()),
        ("POST", "/internal/config", config),
        ("POST", "/internal/pause", json!({"term": 1, "max_ms": 3000})),
        ("POST", "/internal/recover", json!({"term": 99, "leader": "127.0.0.1:1"})),
        (
            "POST",
            "/internal/cluster_id",
            json!({"term": 99, "leader": "127.0.0.1:1", "cluster_id": "6f1c4a1e-0000-4000-8000-0000000000ff"}),
        ),
        // A member's reset is refused anyway (409); without the token it must not get that far.
        ("POST", "/internal/reset", json!({"term": 99, "version": 99, "leader": null, "members": []})),
        ("GET", "/replication_log/?after=0&limit=10", Value::Null),
        ("GET", "/down_leader/", Value::Null),
        ("GET", "/up_node/", Value::Null),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_endpoints_refuse_a_missing_wrong_empty_or_overlong_token_and_change_nothing() {
    let c = cluster_with_token().await;
    let committed = c.write(0, &[(1, 100), (2, 200)]).await;
    assert_eq!(committed.lsn, Some(1), "agents carrying the token replicate as usual");
    let before = c.snapshot().await;
    let status_before: Vec<Value> = futures_status(&c).await;

    for node in 0..3 {
        for (method, path, body) in internal_calls() {
            let overlong = format!("Bearer {}", "t".repeat(4000));
            for auth in
                [None, Some("Bearer wrong-token"), Some("Bearer "), Some(""), Some(overlong.as_str()), Some(TOKEN)]
            {
                // The right token without the "Bearer " scheme is refused too.
                let mut req = match method {
                    "GET" => c.http().get(format!("{}{path}", c.url(node))),
                    _ => c.http().post(format!("{}{path}", c.url(node))).json(&body),
                };
                if let Some(auth) = auth {
                    req = req.header(reqwest::header::AUTHORIZATION, auth);
                }
                let resp = req.send().await.unwrap_or_else(|e| panic!("{method} {path} on node {node}: {e}"));
                let status = resp.status();
                let answer: Value = resp.json().await.unwrap_or_else(|e| panic!("{method} {path}: not JSON: {e}"));
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} on node {node} with {auth:?}: {answer}");
                assert_eq!(answer["error"], "unauthorized", "{answer}");
                assert!(answer["message"].as_str().is_some_and(|m| m.contains("token")), "{answer}");
            }
        }
    }

    assert_eq!(c.snapshot().await, before, "a refused call changed a table or a log");
    assert_eq!(futures_status(&c).await, status_before, "a refused call changed an agent's state");

    // With the token, an internal read works: the refusals above were about the token only.
    let resp = c
        .http()
        .get(format!("{}/replication_log/?after=0&limit=10", c.url(1)))
        .header(reqwest::header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .send()
        .await
        .expect("replication_log with the token");
    assert_eq!(resp.status(), StatusCode::OK);
    let page: Value = resp.json().await.expect("a log page");
    assert_eq!(page["entries"].as_array().map(Vec::len), Some(1), "{page}");

    // User-facing endpoints stay open.
    let (status, _) = c.commit(0, json!({"transaction": {"write_set": {"3": 30}}})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(c.get_raw(2, "/health").await.status, StatusCode::OK);
}

/// Every supervisor endpoint that changes something, with a body that would change something
/// if it were accepted.
fn supervisor_calls(c: &Cluster) -> Vec<(&'static str, Option<Value>)> {
    vec![
        ("/register_client/", Some(json!({"url": "http://127.0.0.1:1/leader_changed/"}))),
        ("/report_failure", Some(json!({"term": 1, "member": c.node(2).address(), "reason": "x", "kind": "voted_no"}))),
        ("/switchover", Some(json!({"to": c.node(1).address()}))),
        ("/pause", None),
        ("/resume", None),
        ("/members/add", Some(json!({"node": "127.0.0.1:1"}))),
        ("/members/remove", Some(json!({"node": c.node(2).address()}))),
        ("/rebuild", Some(json!({"node": c.node(2).address()}))),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisors_endpoints_that_change_something_refuse_a_missing_wrong_empty_or_overlong_token() {
    let mut options = ClusterOptions::supervised(3);
    options.agent_env.push(("CLUSTER_TOKEN".into(), TOKEN.into()));
    options.supervisor_args.extend(["--cluster-token".into(), TOKEN.into()]);
    let c = Cluster::start_with(options).await;
    c.write(0, &[(1, 100)]).await;
    // What a refused call could have changed.
    let keep = |s: &Value| {
        json!([s["term"], s["config_version"], s["leader"], s["members"], s["maintenance"], s["clients"], s["events"]])
    };
    let before = keep(&c.supervisor_status().await);
    for (path, body) in supervisor_calls(&c) {
        let overlong = "t".repeat(4000);
        for auth in [None, Some("wrong-token"), Some(""), Some(overlong.as_str())] {
            let (status, answer) = c.supervisor_post_with(path, body.as_ref(), auth).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "POST {path} with {auth:?}: {answer}");
            assert_eq!(answer["error"], "unauthorized", "{answer}");
            assert!(answer["message"].as_str().is_some_and(|m| m.contains("token")), "{answer}");
        }
    }
    assert_eq!(keep(&c.supervisor_status().await), before, "a refused call changed the supervisor's state");
    // With the token they are heard: the refusals above were about the token only.
    let (status, answer) = c.supervisor_post_with("/resume", None, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, answer) =
        c.supervisor_post_with("/switchover", Some(&json!({"to": "127.0.0.1:1"})), Some(TOKEN)).await;
    assert_eq!((status, &answer["error"]), (StatusCode::CONFLICT, &json!("not_member")), "{answer}");
    // Reading stays open.
    let (status, _) = c.supervisor_get("/history").await;
    assert_eq!(status, StatusCode::OK);
}

async fn futures_status(c: &Cluster) -> Vec<Value> {
    let mut all = Vec::new();
    for node in 0..c.len() {
        let (status, mut body) = c.get(node, "/status").await;
        assert_eq!(status, StatusCode::OK);
        // What a refused call could have changed: role, term, configuration, prepared batch.
        if let Some(obj) = body.as_object_mut() {
            obj.remove("last_commit_ts");
        }
        all.push(body);
    }
    all
}

/// The value of an unlabelled counter (or the sum over its labels) in Prometheus text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_moves_the_metrics() {
    let c = Cluster::start(3).await;
    let before = c.get_raw(0, "/metrics").await;
    assert_eq!(before.status, StatusCode::OK, "{}", before.body);
    assert!(before.content_type.as_deref().is_some_and(|t| t.starts_with("text/plain")), "{:?}", before.content_type);
    let commits_before = metric(&before.body, "rmw_commits_total");

    c.write(0, &[(1, 10)]).await;
    let (status, answer) =
        c.commit(0, json!({"transaction": {"read_set": [1], "write_set": {"2": 5}, "time_stamp": 0}})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");

    let after = c.get_raw(0, "/metrics").await.body;
    assert_eq!(metric(&after, "rmw_commits_total"), commits_before + 1.0, "{after}");
    assert!(after.contains("rmw_aborts_total{reason=\"stale_read\"} 1"), "{after}");
    assert!(metric(&after, "rmw_commit_seconds_count") >= 2.0, "{after}");
    // The ABORT is recorded in the log too (entry 2, writing nothing), so that it is final.
    assert_eq!(metric(&after, "rmw_applied_lsn"), 2.0, "{after}");
    assert_eq!(metric(&after, "rmw_is_leader"), 1.0, "{after}");
    assert_eq!(metric(&after, "rmw_committed_entries_total"), 2.0, "{after}");
    let replica = c.get_raw(1, "/metrics").await.body;
    assert_eq!(metric(&replica, "rmw_applied_lsn"), 2.0, "{replica}");
    assert_eq!(metric(&replica, "rmw_is_leader"), 0.0, "{replica}");
    // A replica's own counter of log entries moves too: an operator can watch any node.
    assert_eq!(metric(&replica, "rmw_committed_entries_total"), 2.0, "{replica}");
}
