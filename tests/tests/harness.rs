//! The harness itself: PostgreSQL comes up configured as the agents need it, and everything is
//! gone after the cluster is dropped, also when the test panics. Starts no agent.

use std::path::PathBuf;

use e2e::{Cluster, ClusterOptions};

fn postgres_only(nodes: usize) -> ClusterOptions {
    ClusterOptions { start_agents: false, ..ClusterOptions::new(nodes) }
}

fn postmaster_pid(data_dir: &std::path::Path) -> i32 {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).expect("postmaster.pid");
    text.lines().next().unwrap().trim().parse().unwrap()
}

fn alive(pid: i32) -> bool {
    // A stopped server may linger as a zombie until reaped; count only live processes.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')).unwrap_or(true),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_is_configured_for_the_agents_and_removed_on_drop() {
    let c = Cluster::start_with(postgres_only(2)).await;
    assert_ne!(c.node(0).pg_port, c.node(1).pg_port);
    for i in 0..2 {
        let db = c.db(i).await;
        for (setting, expected) in [
            ("max_prepared_transactions", "64".to_string()),
            ("fsync", "on".to_string()),
            ("listen_addresses", "127.0.0.1".to_string()),
            ("port", c.node(i).pg_port.to_string()),
        ] {
            let value: String = sqlx::query_scalar(&format!("SHOW {setting}")).fetch_one(&db).await.unwrap();
            assert_eq!(value, expected, "node {i}: {setting}");
        }
    }
    let dir = c.dir().to_path_buf();
    let pids: Vec<i32> = c.nodes().map(|n| postmaster_pid(&n.data_dir)).collect();
    assert!(pids.iter().all(|&p| alive(p)));
    drop(c);
    assert!(!dir.exists(), "{} left behind", dir.display());
    for pid in pids {
        assert!(!alive(pid), "postmaster {pid} still runs after the cluster was dropped");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_test_still_cleans_up() {
    let (tx, rx) = tokio::sync::oneshot::channel::<(PathBuf, Vec<i32>)>();
    let task = tokio::spawn(async move {
        let c = Cluster::start_with(postgres_only(1)).await;
        let pids = c.nodes().map(|n| postmaster_pid(&n.data_dir)).collect();
        tx.send((c.dir().to_path_buf(), pids)).unwrap();
        panic!("deliberate failure inside a test holding a cluster");
    });
    assert!(task.await.unwrap_err().is_panic());
    let (dir, pids) = rx.await.unwrap();
    assert!(!dir.exists(), "{} left behind", dir.display());
    for pid in pids {
        assert!(!alive(pid), "postmaster {pid} still runs after the panic");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_can_be_stopped_and_started_again() {
    let c = Cluster::start_with(postgres_only(1)).await;
    let pid = postmaster_pid(&c.node(0).data_dir);
    c.stop_postgres(0).await;
    assert!(!alive(pid), "postmaster {pid} survived pg_ctl stop -m immediate");
    c.start_postgres(0).await;
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&c.db(0).await).await.unwrap();
    assert_eq!(one, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_can_be_killed_paused_and_restarted() {
    let c = Cluster::start(3).await;
    c.write(0, &[(1, 10)]).await;

    let pid = c.node(2).agent_pid().unwrap() as i32;
    c.kill_agent(2);
    assert!(!alive(pid), "agent {pid} survived SIGKILL");
    assert!(c.node(2).agent_pid().is_none());
    let refused = c.http().get(format!("{}/health", c.url(2))).send().await;
    assert!(refused.is_err(), "a killed agent answered: {refused:?}");
    c.restart_agent(2).await; // waits for /health
    assert_ne!(c.node(2).agent_pid().unwrap() as i32, pid);
    assert_eq!(c.status(2).await.node_id, "node2");
    assert_eq!(c.table(2).await.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(), vec![(1, 10)]);

    c.pause_agent(1);
    let silent =
        c.http().get(format!("{}/health", c.url(1))).timeout(std::time::Duration::from_millis(500)).send().await;
    assert!(silent.is_err(), "a SIGSTOPped agent answered: {silent:?}");
    c.resume_agent(1);
    c.wait_healthy(1).await;
    assert!(c.agent_log(1, 5).contains("INFO"), "the agent's log is captured");
}
