//! `client run`, `client status` and the operator commands as a user runs them: the real binary
//! against fake agents and a fake supervisor; checks what it prints and its exit code.

use std::collections::BTreeMap;
use std::process::Output;

use serde_json::json;

#[allow(dead_code)]
#[path = "../src/fake_agent.rs"]
mod fake_agent;

use fake_agent::{Fake, FakeSupervisor};

/// Runs the client binary with `args` (off the async runtime's threads: the fakes answer there).
async fn client(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_client"))
            .args(&args)
            .env_remove("CLIENT_AGENT")
            .env_remove("CLIENT_SUPERVISOR")
            .output()
            .expect("run the client binary")
    })
    .await
    .unwrap()
}

fn text(output: &Output) -> (i32, String, String) {
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_prints_the_outcome_and_exits_0() {
    let agent = fake_agent::start(Fake { balances: BTreeMap::from([(1, 10)]), ..Fake::default() }).await;
    let (code, out, err) = text(&client(&["run", "r(1)w(2=22)", "--agent", &agent, "--supervisor", ""]).await);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("read from node0 (leader) at {agent}: timestamp 1000, lsn 3\n  account 1 = 10\n")),
        "{out}"
    );
    assert!(out.contains("COMMIT: txn "), "{out}");
    assert!(out.contains("commit_ts 2000, lsn 4\n  wrote account 2 = 22\n"), "{out}");
    assert!(out.contains(&format!("leader: node0 at {agent}\n")), "{out}");
    assert!(out.contains("latency: "), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_prints_the_reason_and_exits_1() {
    let agent = fake_agent::start(Fake { stale_account: Some(1), ..Fake::default() }).await;
    let (code, out, err) = text(&client(&["run", "r(1)w(1=5)", "--agent", &agent, "--supervisor", ""]).await);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("ABORT: txn "), "{out}");
    assert!(out.contains("reason: stale_read: account 1 was written after the read timestamp"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_exits_2_and_points_at_the_column() {
    let (code, out, err) = text(&client(&["run", "r(1)w(2=22", "--agent", "127.0.0.1:1"]).await);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains(r#"expected ')' at column 11 in "r(1)w(2=22""#), "{err}");

    let (code, _, err) = text(&client(&["run"]).await);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = text(&client(&["run", "r(1)", "--txn-id", "not-a-uuid"]).await);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = text(&client(&["frobnicate"]).await);
    assert_eq!(code, 2, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_cluster_exits_3_at_once() {
    let agent = fake_agent::closed_port().await;
    let supervisor = fake_agent::closed_port().await;
    let started = std::time::Instant::now();
    let (code, out, err) = text(&client(&["run", "w(1=1)", "--agent", &agent, "--supervisor", &supervisor]).await);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains(&format!("cannot reach the agent at {agent}")), "{err}");
    assert!(err.contains("the cluster seems to be stopped"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());

    let (code, _, err) = text(&client(&["status", "--supervisor", &supervisor]).await);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("cannot reach the supervisor"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_leader_within_the_wait_exits_3_with_the_supervisors_words_and_the_retry_command() {
    let deposed = Fake { unavailable_commits: fake_agent::counter(1000), name_txn_in_503: true, ..Fake::default() };
    let agent = fake_agent::start(deposed.clone()).await;
    let supervisor = FakeSupervisor::start(None).await;
    let (code, out, err) = text(
        &client(&["run", "w(1=1)", "--agent", &agent, "--supervisor", &supervisor.address, "--wait-secs", "0.5"]).await,
    );
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("no leader answered within"), "{err}");
    assert!(err.contains("the supervisor says: no leader is serving"), "{err}");
    let id = deposed.tries()[0].transaction.txn_id.unwrap();
    assert!(err.contains(&format!("to learn the outcome: client run --txn-id {id} 'w(1=1)'")), "{err}");
    assert!(deposed.tries().iter().all(|t| t.transaction.txn_id == Some(id)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_the_table() {
    let supervisor = FakeSupervisor::start(Some("127.0.0.1:8000".into())).await;
    supervisor.set_status(json!({
        "term": 1, "config_version": 1, "leader": "127.0.0.1:8000", "members": ["127.0.0.1:8000"],
        "writes_available": true, "message": "writes go to 127.0.0.1:8000",
        "nodes": [{"address": "127.0.0.1:8000", "alive": true, "member": true, "role": "leader", "term": 1,
                   "applied_lsn": 4, "lag": 0, "error": null,
                   "status": fake_agent::agent_status(0, "127.0.0.1:8000", "leader")}],
        "last_failover": null, "failovers": [], "recovering": [], "recoveries": [], "diverged": [], "clients": []
    }));
    let (code, out, err) = text(&client(&["status", "--supervisor", &supervisor.address]).await);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("ADDRESS         NODE   ALIVE  MEMBER  ROLE    TERM  APPLIED_LSN  LAG\n"), "{out}");
    assert!(out.contains("127.0.0.1:8000  node0  yes    yes     leader  1     4            0\n"), "{out}");
    assert!(out.contains("writes: available: writes go to 127.0.0.1:8000\n"), "{out}");
}

/// A fake supervisor over three nodes: node0 leads, node1 follows, node2 is down and no member.
async fn three_nodes() -> FakeSupervisor {
    let supervisor = FakeSupervisor::start(Some("127.0.0.1:8000".into())).await;
    let node = |i: usize, role: &str, alive: bool, member: bool| {
        let address = format!("127.0.0.1:800{i}");
        json!({"address": address, "alive": alive, "member": member, "role": if alive { json!(role) } else { json!(null) },
               "term": 1, "applied_lsn": 4, "lag": 0, "error": null,
               "status": if alive { fake_agent::agent_status(i, &address, role) } else { json!(null) }})
    };
    supervisor.set_status(json!({
        "term": 1, "config_version": 1, "leader": "127.0.0.1:8000", "members": ["127.0.0.1:8000", "127.0.0.1:8001"],
        "writes_available": true, "message": "writes go to 127.0.0.1:8000",
        "nodes": [node(0, "leader", true, true), node(1, "replica", true, true), node(2, "down", false, false)],
        "maintenance": false, "events": []
    }));
    supervisor
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_is_the_supervisor_s_status() {
    let supervisor = three_nodes().await;
    let (code, out, err) = text(&client(&["status", "--json", "--supervisor", &supervisor.address]).await);
    assert_eq!(code, 0, "{out}{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["leader"], "127.0.0.1:8000");
    assert_eq!(status["nodes"][1]["status"]["node_id"], "node1");
    assert_eq!(status["maintenance"], false);
    assert!(out.starts_with("{\n  \"store\": "), "pretty, in the status's order: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_print_the_supervisor_s_answer_and_exit_by_kind() {
    let supervisor = three_nodes().await;
    let sup = supervisor.address.as_str();
    // By node id: looked up in the supervisor's status.
    let (code, out, err) = text(&client(&["switchover", "--to", "node1", "--supervisor", sup]).await);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("node1 is 127.0.0.1:8001\n"), "{out}");
    assert!(out.contains("switchover 127.0.0.1:8001: 127.0.0.1:8001 leads term 2"), "{out}");
    assert_eq!(supervisor.operations()[0], ("/switchover".to_string(), r#"{"to":"127.0.0.1:8001"}"#.to_string()));

    // Refused: exit 1 with the supervisor's reason.
    let (code, out, err) = text(&client(&["member", "remove", "127.0.0.1:8001", "--supervisor", sup]).await);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("refused (is_leader): 127.0.0.1:8001 leads: switch over to another member first"), "{err}");

    let (code, out, err) = text(&client(&["pause", "--supervisor", sup]).await);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("pause: automatic failover is OFF: paused"), "{out}");
    let (_, out, _) = text(&client(&["status", "--supervisor", sup]).await);
    assert!(out.contains("maintenance: ON"), "{out}");
    assert!(out.contains("latest events, newest first:\n  00:00:00 UTC maintenance_on"), "{out}");
    let (code, out, err) = text(&client(&["resume", "--supervisor", sup]).await);
    assert_eq!(code, 0, "{out}{err}");

    // Add waits until the node is a member, printing its progress.
    let (code, out, err) = text(&client(&["member", "add", "127.0.0.1:8003", "--supervisor", sup]).await);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("member add 127.0.0.1:8003: 127.0.0.1:8003 is recovering: recovering\n"), "{out}");
    assert!(out.ends_with("127.0.0.1:8003 is a member\n"), "{out}");

    // Bad input: exit 2, nothing sent.
    let sent = supervisor.operations().len();
    let (code, _, err) = text(&client(&["rebuild", "node7", "--supervisor", sup]).await);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no node is called \"node7\"; the supervisor lists node0 at 127.0.0.1:8000"), "{err}");
    let (code, _, err) = text(&client(&["member", "add", "node3", "--supervisor", sup]).await);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not an address"), "{err}");
    let (code, _, err) = text(&client(&["pause", "--supervisor", sup, "--cluster-token-file", "/nonexistent"]).await);
    assert_eq!(code, 2, "{err}");
    assert_eq!(supervisor.operations().len(), sent);

    // Unreachable: exit 3.
    let closed = fake_agent::closed_port().await;
    let (code, _, err) = text(&client(&["resume", "--supervisor", &closed]).await);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("cannot reach the supervisor"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_command_goes_on_past_a_standby_and_a_dead_supervisor_to_the_active_one() {
    let standby = three_nodes().await;
    standby.standby.store(true, std::sync::atomic::Ordering::SeqCst);
    let active = three_nodes().await;
    let dead = fake_agent::closed_port().await;
    let list = format!("{dead},{},{}", standby.address, active.address);
    let (code, out, err) = text(&client(&["pause", "--supervisor", &list]).await);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!((standby.operations().len(), active.operations().len()), (1, 1));

    // Only standbys: none acts, exit 3 saying so.
    let (code, out, err) = text(&client(&["pause", "--supervisor", &standby.address]).await);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("no active supervisor: "), "{err}");
    assert!(err.contains("is a standby"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_prints_a_block_per_refresh_and_survives_an_unreachable_supervisor() {
    let supervisor = three_nodes().await;
    let closed = fake_agent::closed_port().await;
    // A supervisor that answers, then one that does not: each block says what came.
    for (list, wanted) in [(supervisor.address.clone(), "leader: 127.0.0.1:8000"), (closed, "error: cannot reach")] {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_client"))
            .args(["status", "--watch", "--interval-ms", "200", "--supervisor", &list])
            .env_remove("CLIENT_SUPERVISOR")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
        // SIGTERM, as Ctrl-C would: it stops cleanly.
        terminate(child.id());
        let output = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
        let out = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(0), "{out}");
        assert!(out.matches("=== ").count() >= 3, "a block per refresh: {out}");
        assert!(out.matches(wanted).count() >= 3, "{wanted} in {out}");
        assert!(!out.contains('\u{1b}'), "no screen clearing off a terminal: {out}");
    }
}

/// Sends SIGTERM to `pid` with the `kill` command (no libc in this crate's tests).
fn terminate(pid: u32) {
    let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(status.success());
}
