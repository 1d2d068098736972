//! Failover with the control plane in etcd: two supervisors (one active, one standby) and a
//! three-member etcd, on one host (127.0.0.1), and across hosts (each node, supervisor and etcd
//! member in its own network namespace; as root only). The clusters come from the end-to-end harness (`e2e`), with this run's
//! release binaries; the measurement is the same as our cluster's failover figure: SIGKILL of
//! the leader agent to the first acknowledged commit on another node. Also timed: SIGKILL of
//! the active supervisor and then of the leader agent (the standby takes over, then elects).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use e2e::{Cluster, ClusterOptions};
use serde::Serialize;

use crate::ours::commit_one;

/// Where the cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// Everything on 127.0.0.1.
    OneHost,
    /// Every node (PostgreSQL and agent), supervisor and etcd member in a network namespace of
    /// its own, on one bridge (needs root).
    Hosts,
}

impl Topology {
    /// The topologies this machine can make.
    pub fn available() -> Vec<Topology> {
        if crate::procs::running_as_root() {
            vec![Topology::OneHost, Topology::Hosts]
        } else {
            vec![Topology::OneHost]
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Topology::OneHost => "etcd, one host",
            Topology::Hosts => "etcd, across hosts",
        }
    }

    fn options(self) -> ClusterOptions {
        match self {
            Topology::OneHost => ClusterOptions::with_etcd(3),
            Topology::Hosts => ClusterOptions::on_hosts(3),
        }
    }
}

/// The failover figures of one topology.
#[derive(Debug, Clone, Serialize)]
pub struct ControlPlaneFailover {
    pub topology: String,
    /// SIGKILL of the leader agent to the first acknowledged commit elsewhere.
    pub samples_ms: Vec<f64>,
    pub median_ms: f64,
    /// SIGKILL of the active supervisor, then of the leader agent, to the first acknowledged
    /// commit elsewhere: the standby's takeover (the lease's TTL) plus a failover.
    pub takeover_samples_ms: Vec<f64>,
    pub takeover_median_ms: f64,
}

/// Times `runs` failovers, then `runs` takeovers with failover, on a fresh cluster.
pub async fn measure(topology: Topology, runs: usize, bin_dir: &Path) -> Result<ControlPlaneFailover> {
    // The harness starts the binaries of RMW_BIN_DIR: this run's release build.
    std::env::set_var("RMW_BIN_DIR", bin_dir);
    // The harness panics on what it cannot do: the panic becomes this figure's error.
    tokio::spawn(async move { run(topology, runs).await }).await.map_err(|e| match e.try_into_panic() {
        Ok(panic) => anyhow!(
            "the cluster harness failed: {}",
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)")
        ),
        Err(e) => anyhow!("the measurement was cancelled: {e}"),
    })?
}

async fn run(topology: Topology, runs: usize) -> Result<ControlPlaneFailover> {
    let c = Cluster::start_with(topology.options()).await;
    let http = crate::load::http_client();
    let mut samples = Vec::new();
    let mut takeovers = Vec::new();
    for run in 0..runs * 2 {
        let with_supervisor = run >= runs;
        let leader = c.wait_for_leader(|_| true).await;
        if with_supervisor {
            let Some(active) = c.active_supervisor().await else { bail!("no supervisor is active") };
            c.kill_supervisor_at(active);
            let elapsed = first_commit_after_kill(&c, &http, leader).await?;
            takeovers.push(elapsed);
            c.start_supervisor_at(active).await;
        } else {
            samples.push(first_commit_after_kill(&c, &http, leader).await?);
        }
        c.start_agent(leader).await;
        c.wait_member(leader).await;
    }
    Ok(ControlPlaneFailover {
        topology: topology.label().into(),
        median_ms: crate::report::median(&samples),
        samples_ms: samples,
        takeover_median_ms: crate::report::median(&takeovers),
        takeover_samples_ms: takeovers,
    })
}

/// SIGKILLs the leader's agent and commits on the other nodes until one acknowledges: the
/// time from the kill, in milliseconds.
async fn first_commit_after_kill(c: &Cluster, http: &reqwest::Client, leader: usize) -> Result<f64> {
    let others: Vec<String> = c.nodes().filter(|n| n.index != leader).map(|n| n.address()).collect();
    c.kill_agent(leader);
    let t0 = Instant::now();
    let mut account = 1;
    let mut last = vec![String::new(); others.len()];
    loop {
        if t0.elapsed() > Duration::from_secs(30) {
            bail!(
                "no commit was acknowledged within 30 s of killing the leader; the last answers: {}",
                last.join("; ")
            );
        }
        for (address, last) in others.iter().zip(&mut last) {
            account = account % 1000 + 1;
            match commit_one(http, &format!("http://{address}"), account).await {
                Ok(()) => return Ok(t0.elapsed().as_secs_f64() * 1000.0),
                Err(e) => *last = e,
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
