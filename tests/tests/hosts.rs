//! A cluster on hosts: every node (PostgreSQL and agent), both supervisors and the three etcd
//! members in network namespaces of their own on one bridge, the supervisors on etcd. The
//! control plane's faults across hosts: the active supervisor and then the leader killed, and a
//! link cut between the new leader and a replica.
//!
//! Needs root (namespaces, a bridge, nftables) and etcd; when not root it says so and passes.

use std::time::{Duration, Instant};

use e2e::{Ack, Cluster, ClusterOptions, Follower, HostId};
use serde_json::json;

/// Far beyond the lease's TTL (2 s) and a failover: a bound on hanging, not a speed test.
const LIMIT: Duration = Duration::from_secs(15);

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_and_a_cut_link_across_hosts() {
    if !running_as_root() {
        eprintln!("skipped: a cluster on hosts needs root (network namespaces, a bridge, nftables)");
        return;
    }
    let c = Cluster::start_with(ClusterOptions::on_hosts(3)).await;
    assert!(c.on_hosts());
    // Every process listens on its own host's address, with the programs' default ports.
    for i in 0..c.len() {
        let host = c.host(HostId::Node(i));
        assert_eq!(c.node(i).address(), format!("{}:8000", host.address));
        assert!(c.node(i).database_url().contains(&format!("@{}:5432/", host.address)));
    }
    for k in 0..2 {
        assert_eq!(c.supervisor_address_at(k), format!("{}:9000", c.host(HostId::Supervisor(k)).address));
    }
    assert!(c.etcd_endpoints().split(',').all(|e| e.ends_with(":2379")), "{}", c.etcd_endpoints());
    let active = c.wait_active_supervisor(None).await;
    let s = c.supervisor_status().await;
    assert!(s["store"].as_str().is_some_and(|d| d.starts_with("etcd ")), "{s}");
    assert_eq!(s["active_supervisor"].as_str(), Some(c.supervisor_address_at(active).as_str()), "{s}");

    // A commit through the leader's host address, read back from its replicas over the bridge.
    let leader = c.initial_leader();
    let first = c.write(leader, &[(1, 10)]).await;
    for i in 0..c.len() {
        c.wait_applied(i, first.lsn.expect("a committed lsn")).await;
    }
    let term = s["term"].as_i64().expect("a term");

    // The active supervisor dies, then the leader's agent: the standby takes over and elects.
    c.kill_supervisor_at(active);
    let standby = c.wait_active_supervisor(Some(active)).await;
    assert_ne!(standby, active);
    c.kill_agent(leader);
    let new_leader = c.wait_leader_change(leader).await;
    let s = c.supervisor_status().await;
    assert!(s["term"].as_i64().is_some_and(|t| t > term), "a new term: {s}");
    let mut client = Follower::new(&c, new_leader);
    let sent = client.commit(json!({"write_set": {"2": 20}})).await;
    assert!(sent.committed(), "no commit after the failover: {sent:?}");
    assert!(client.surprises.is_empty(), "{:?}", client.surprises);

    // Everything back: the old supervisor as a standby, the old leader as a replica.
    c.start_supervisor_at(active).await;
    c.start_agent(leader).await;
    c.wait_member(leader).await;

    // The link between the new leader's host and one replica's host is cut. A commit in flight
    // then aborts with 503 replication_failed (nothing applied), the leader reports the replica,
    // the supervisor (which still reaches both) removes it, and commits go on with the other
    // replica; or, below the durability floor, they answer 503 not_enough_replicas.
    let replica = (0..c.len()).find(|&i| i != new_leader).expect("a replica");
    c.cut_link(HostId::Node(new_leader), HostId::Node(replica)).expect("cut the link");
    let deadline = Instant::now() + LIMIT;
    let mut aborted_keys = Vec::new();
    let mut outcomes = Vec::new();
    for key in 100.. {
        let sent = client.commit(json!({"write_set": {key.to_string(): key}})).await;
        outcomes.push(sent.ack.clone());
        match &sent.ack {
            Ack::Commit { .. } => break,
            Ack::Abort { status: 503, reason } if reason == "not_enough_replicas" => break,
            Ack::Abort { status: 503, reason } if reason == "replication_failed" => aborted_keys.push(key),
            other => panic!("during the cut, a commit got {other:?}: {outcomes:?}"),
        }
        assert!(Instant::now() < deadline, "neither a commit nor not_enough_replicas during the cut: {outcomes:?}");
    }
    assert!(client.surprises.is_empty(), "{:?}", client.surprises);
    let s = c.supervisor_status().await;
    assert_eq!(c.index_of(s["leader"].as_str().unwrap_or_default()), Some(new_leader), "{s}");

    // Healed: the replica comes back into the member set and every node holds the same.
    c.heal_network().expect("heal the network");
    for i in 0..c.len() {
        c.wait_member(i).await;
    }
    let sent = client.commit(json!({"write_set": {"9": 9}})).await;
    assert!(sent.committed(), "no commit after the heal: {sent:?}");
    let converged = c.assert_converged().await;
    // What a 503 aborted applied nothing, anywhere.
    for key in aborted_keys {
        assert!(converged.table.iter().all(|row| row.0 != key), "the aborted write of account {key} is visible");
    }
}
