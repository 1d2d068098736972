//! `client run` and `client status` as a user runs them: the real binary against fake agents
//! and a fake supervisor; checks what it prints and its exit code.

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
