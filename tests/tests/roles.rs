//! The role checks a load balancer uses (`GET /primary`, `/replica`, `/read-only`) and the
//! reset that a rebuild starts with (`POST /internal/reset`), on a real cluster without a
//! supervisor, so that nothing but the test changes the configuration.

use e2e::Cluster;
use protocol::AgentStatus;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn check(c: &Cluster, node: usize, path: &str) -> (StatusCode, Value) {
    let answer = c.get_raw(node, path).await;
    let body = serde_json::from_str(&answer.body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {}", answer.body));
    (answer.status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_node_passes_the_checks_of_its_role_only() {
    let c = Cluster::start(3).await;
    let leader = c.initial_leader();
    c.write(leader, &[(1, 100)]).await;
    for node in 0..3 {
        let is_leader = node == leader;
        let (code, body) = check(&c, node, "/primary").await;
        if is_leader {
            assert_eq!(code, StatusCode::OK, "{body}");
            assert_eq!(body["role"], "leader", "{body}");
            assert_eq!(body["applied_lsn"], 1, "{body}");
        } else {
            assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            assert_eq!(body["error"], "not_primary", "{body}");
            let named = c.node(leader).address();
            assert!(body["message"].as_str().is_some_and(|m| m.contains(&named)), "names the leader: {body}");
        }
        let (code, body) = check(&c, node, "/replica").await;
        assert_eq!(code == StatusCode::OK, !is_leader, "/replica on node {node}: {body}");
        if !is_leader {
            assert_eq!(body["role"], "replica", "{body}");
            assert_eq!(body["lag"], 0, "an idle replica has applied all it was sent: {body}");
            let (code, body) = check(&c, node, "/replica?max_lag=0").await;
            assert_eq!(code, StatusCode::OK, "{body}");
        } else {
            assert_eq!(body["error"], "not_replica", "{body}");
        }
        let (code, body) = check(&c, node, "/read-only").await;
        assert_eq!(code, StatusCode::OK, "/read-only on node {node}: {body}");
    }

    // Bad input is a 400 that says what is wrong; open endpoints need no token and change nothing.
    for bad in ["/replica?max_lag=-1", "/replica?max_lag=soon", "/replica?lag=1"] {
        let (code, body) = check(&c, 1, bad).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"], "bad_request", "{bad}: {body}");
    }

    // A node that is down (the drill) passes none.
    let (code, _) = c.get(leader, "/down_leader/").await;
    assert_eq!(code, StatusCode::OK);
    for path in ["/primary", "/replica", "/read-only"] {
        let (code, body) = check(&c, leader, path).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{path} on a node that is down: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_empties_only_a_node_outside_the_member_set_and_recovery_rebuilds_it() {
    let c = Cluster::start(3).await;
    let leader = c.initial_leader();
    for i in 1..=5 {
        c.write(leader, &[(i, i * 10)]).await;
    }
    let status: AgentStatus = c.status(2).await;
    let config = json!({"term": status.term, "version": status.config_version, "leader": status.leader, "members": status.members});

    // A member keeps its data: its copies count towards acknowledged commits.
    let before = c.snapshot().await;
    let (code, body) = c.post(2, "/internal/reset", &config).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("remove it first")), "{body}");
    // And so does the leader, whatever configuration it is sent.
    let without_leader: Vec<&String> = status.members.iter().filter(|m| **m != c.node(leader).address()).collect();
    let (code, body) = c
        .post(
            leader,
            "/internal/reset",
            &json!({"term": status.term, "version": status.config_version + 1, "leader": status.leader, "members": without_leader}),
        )
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert_eq!(c.snapshot().await, before, "a refused reset changed a table or a log");

    // Out of the member set, node 2 may be emptied.
    let members: Vec<String> = status.members.iter().filter(|m| **m != c.node(2).address()).cloned().collect();
    let smaller =
        json!({"term": status.term, "version": status.config_version + 1, "leader": status.leader, "members": members});
    let (code, body) = c.post(leader, "/internal/config", &smaller).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let (code, body) = c.post(2, "/internal/reset", &smaller).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["wiped_entries"], 5, "{body}");
    assert!(c.table(2).await.is_empty() && c.log(2).await.is_empty(), "node 2 still holds data");
    let wiped = c.status(2).await;
    assert_eq!((wiped.applied_lsn, wiped.cluster_id, wiped.term), (0, None, status.term), "{wiped:?}");
    let (code, body) = check(&c, 2, "/read-only").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "a standby is no read backend: {body}");

    // Commits go on meanwhile, and recovery replays the whole log onto the empty node.
    c.write(leader, &[(6, 60)]).await;
    let recover = json!({"term": status.term, "leader": c.node(leader).address(), "cluster_id": status.cluster_id});
    let (code, body) = c.post(2, "/internal/recover", &recover).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["entries_applied"], 6, "{body}");
    assert_eq!(c.table(2).await, c.table(leader).await);
    assert_eq!(c.log(2).await, c.log(leader).await);
    assert_eq!(c.status(2).await.cluster_id, status.cluster_id, "it belongs to the cluster again");
}
