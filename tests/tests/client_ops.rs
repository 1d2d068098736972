//! The client's operator commands against a real cluster under a real supervisor, as an
//! operator types them: `client status --json`, a switchover named by node id that moves the
//! leader, pause and resume seen in the status, a refusal that exits 1 with the supervisor's
//! reason, a member removed and added back by the command that waits for it. The same commands
//! against a fake supervisor (every exit code, `--watch`) are `client/tests/cli.rs`.

use std::process::Command;
use std::time::Duration;

use e2e::browser::client_binary;
use e2e::{Cluster, ClusterOptions};
use serde_json::Value;

/// Runs the `client` binary with `args` (off the async runtime's threads); returns its exit
/// code, stdout and stderr.
async fn client(args: &[&str]) -> (Option<i32>, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(client_binary())
            .args(&args)
            .env_remove("CLIENT_SUPERVISOR")
            .env_remove("CLIENT_CLUSTER_TOKEN_FILE")
            .env_remove("CLIENT_WAIT_SECS")
            .output()
            .expect("run the client binary")
    })
    .await
    .expect("the client's thread");
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    let err = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code(), out, err)
}

/// `client status --json`, parsed.
async fn status_json(supervisor: &str) -> Value {
    let (code, out, err) = client(&["status", "--json", "--supervisor", supervisor]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_switches_over_pauses_resumes_and_is_told_why_not() {
    let c = Cluster::start_with(ClusterOptions::supervised(3)).await;
    for i in 0..c.len() {
        c.wait_member(i).await;
    }
    c.write(0, &[(1, 100)]).await;
    let supervisor = c.supervisor_address();
    let sup = supervisor.as_str();

    // status --json: the supervisor's view, with every node's id.
    let status = status_json(sup).await;
    assert_eq!(status["leader"], c.node(0).address(), "{status}");
    assert_eq!(status["maintenance"], false, "{status}");
    assert_eq!(status["nodes"][1]["status"]["node_id"], "node1", "{status}");
    let term = status["term"].as_i64().expect("a term");

    // A switchover named by node id moves the leader, and writes go on there.
    let (code, out, err) = client(&["switchover", "--to", "node1", "--supervisor", sup]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let node1 = c.node(1).address();
    assert!(out.contains(&format!("node1 is {node1}\n")), "{out}");
    assert!(out.contains(&format!("switchover {node1}: {node1} leads term")), "{out}");
    // The supervisor answers once its polls see node1 serve: the status read right after says
    // so, not "no leader is serving".
    let status = status_json(sup).await;
    assert_eq!(status["leader"], node1, "{status}");
    assert!(status["term"].as_i64().is_some_and(|t| t > term), "{status}");
    assert_eq!(status["writes_available"], true, "{status}");
    assert_eq!(c.status(1).await.role, protocol::Role::Leader);
    c.write(1, &[(2, 200)]).await;
    let (code, out, err) = client(&["status", "--supervisor", sup]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("latest events, newest first:") && out.contains(&format!("switchover {node1}")), "{out}");

    // Refusals exit 1 with the supervisor's reason.
    let (code, out, err) = client(&["member", "remove", "node1", "--supervisor", sup]).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains(&format!("error: member remove {node1}: refused (is_leader): ")), "{err}");
    let (code, out, err) = client(&["switchover", "--to", &node1, "--supervisor", sup]).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("refused (already_leader): "), "{err}");
    // A node nobody is called: exit 2, nothing sent.
    let (code, out, err) = client(&["switchover", "--to", "node9", "--supervisor", sup]).await;
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("no node is called \"node9\""), "{err}");

    // Pause and resume: the status says so, in JSON and in the table.
    let (code, out, err) = client(&["pause", "--supervisor", sup]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("pause: automatic failover is OFF"), "{out}");
    assert_eq!(status_json(sup).await["maintenance"], true);
    let (_, out, _) = client(&["status", "--supervisor", sup]).await;
    assert!(out.contains("maintenance: ON"), "{out}");
    let (code, out, err) = client(&["resume", "--supervisor", sup]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("resume: automatic failover is on"), "{out}");
    let status = status_json(sup).await;
    assert_eq!(status["maintenance"], false, "{status}");
    let kinds: Vec<&str> =
        status["events"].as_array().into_iter().flatten().filter_map(|e| e["kind"].as_str()).collect();
    assert!(kinds.ends_with(&["maintenance_on", "maintenance_off"]), "{kinds:?}");

    // A member removed, then added back by the command that waits until it is one again.
    let node2 = c.node(2).address();
    let (code, out, err) = client(&["member", "remove", "node2", "--supervisor", sup]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&format!("member remove {node2}: {node2} removed; members now ")), "{out}");
    let status = status_json(sup).await;
    assert!(!status["members"].as_array().is_some_and(|m| m.iter().any(|a| a == &node2)), "{status}");
    c.write(1, &[(3, 300)]).await;
    let (code, out, err) = client(&["member", "add", &node2, "--supervisor", sup, "--wait-secs", "60"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&format!("member add {node2}: {node2} is recovering")), "{out}");
    assert!(
        out.trim_end().ends_with(&format!("{node2} is a member"))
            || out.contains(&format!("{node2} is a member (applied LSN")),
        "{out}"
    );
    c.wait_applied(2, c.status(1).await.applied_lsn).await;
    assert_eq!(c.read(2, &[3]).await.values.get(&3), Some(&300));

    // A supervisor that does not answer: exit 3.
    c.kill_supervisor();
    let started = std::time::Instant::now();
    let (code, out, err) = client(&["pause", "--supervisor", sup]).await;
    assert_eq!(code, Some(3), "{out}{err}");
    assert!(err.contains("cannot reach the supervisor"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}
