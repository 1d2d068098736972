//! The nemesis: one fault at a time, chosen at random from the run's seed, each held for a
//! random interval and then healed the way an operator would (restart what was killed, start
//! PostgreSQL again, SIGCONT, `GET /up_node/`, remove the partition). Between faults it either
//! waits for the cluster to be whole again (every node a member, writes available) or, now and
//! then, strikes again while a node is still recovering.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::Cluster;
use protocol::{AgentStatus, Role};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::history::History;
use crate::net::Net;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// SIGKILL of the leader's agent, restarted later.
    KillLeader,
    /// SIGKILL of a replica's agent, restarted later.
    KillReplica,
    /// `pg_ctl stop -m immediate` of a node's PostgreSQL, started later.
    StopPostgres,
    /// SIGSTOP of the leader's agent, SIGCONT later.
    PauseLeader,
    /// SIGKILL of the supervisor, restarted later with its state file.
    KillSupervisor,
    /// SIGKILL of the leader, then of the supervisor while it fails over.
    KillLeaderAndSupervisor,
    /// `GET /down_leader/` on the leader, `GET /up_node/` later.
    DownLeaderDrill,
    /// A node cut off from the other agents and the supervisor (clients still reach it).
    PartitionNode,
    /// The leader cut off from the supervisor only; it still reaches its replicas.
    PartitionLeaderFromSupervisor,
}

impl FaultKind {
    pub const ALL: [FaultKind; 9] = [
        FaultKind::KillLeader,
        FaultKind::KillReplica,
        FaultKind::StopPostgres,
        FaultKind::PauseLeader,
        FaultKind::KillSupervisor,
        FaultKind::KillLeaderAndSupervisor,
        FaultKind::DownLeaderDrill,
        FaultKind::PartitionNode,
        FaultKind::PartitionLeaderFromSupervisor,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillLeader => "kill_leader",
            FaultKind::KillReplica => "kill_replica",
            FaultKind::StopPostgres => "stop_postgres",
            FaultKind::PauseLeader => "pause_leader",
            FaultKind::KillSupervisor => "kill_supervisor",
            FaultKind::KillLeaderAndSupervisor => "kill_leader_and_supervisor",
            FaultKind::DownLeaderDrill => "down_leader_drill",
            FaultKind::PartitionNode => "partition_node",
            FaultKind::PartitionLeaderFromSupervisor => "partition_leader_from_supervisor",
        }
    }

    pub fn parse(s: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == s)
    }

    pub fn is_partition(self) -> bool {
        matches!(self, FaultKind::PartitionNode | FaultKind::PartitionLeaderFromSupervisor)
    }
}

/// One fault as it happened.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultRecord {
    pub kind: FaultKind,
    /// The node it hit (none for the supervisor alone).
    pub node: Option<usize>,
    /// Nanoseconds since the run started: injected, healed, cluster whole again (if waited for).
    pub start: u64,
    pub healed: Option<u64>,
    pub recovered: Option<u64>,
    /// What was done, in words.
    pub note: String,
    /// Something that went wrong while injecting, healing or waiting for recovery.
    pub error: Option<String>,
}

impl FaultRecord {
    pub fn label(&self) -> String {
        match self.node {
            Some(n) => format!("{}(node{n})", self.kind.name()),
            None => self.kind.name().to_string(),
        }
    }
    /// When the fault stopped mattering: recovered, else healed, else `fallback`.
    pub fn end(&self, fallback: u64) -> u64 {
        self.recovered.or(self.healed).unwrap_or(fallback)
    }
}

/// What the nemesis has broken and not yet healed.
#[derive(Debug, Default)]
struct Broken {
    agent_killed: Vec<bool>,
    pg_stopped: Vec<bool>,
    paused: Vec<bool>,
    drilled_down: Vec<bool>,
    supervisor_killed: bool,
    partitioned: bool,
}

pub struct Nemesis {
    pub cluster: Arc<Cluster>,
    pub net: Option<Arc<Net>>,
    pub history: Arc<History>,
    pub rng: StdRng,
    pub kinds: Vec<FaultKind>,
    /// Every fault so far (shared with the progress display and the report).
    pub faults: Arc<Mutex<Vec<FaultRecord>>>,
    /// The fault in progress, for the progress display.
    pub current: Arc<Mutex<String>>,
    broken: Broken,
    http: reqwest::Client,
}

/// How long a healed cluster gets to become whole (every node a member) before it counts as
/// not recovering.
pub const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    let text = if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else {
        "a panic".to_string()
    };
    // The harness appends whole logs to its messages; the first lines say what happened.
    let lines: Vec<&str> = text.lines().take(6).collect();
    lines.join(" | ")
}

/// Runs a harness call that panics on failure; returns its panic message as an error.
fn sync_call(what: &str, f: impl FnOnce()) -> Result<(), String> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|p| format!("{what}: {}", panic_message(&*p)))
}

async fn async_call<F>(what: &str, f: F) -> Result<(), String>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(f).await.map_err(|e| match e.try_into_panic() {
        Ok(p) => format!("{what}: {}", panic_message(&*p)),
        Err(e) => format!("{what}: {e}"),
    })
}

/// `host:port` -> port.
pub fn port_of(address: &str) -> u16 {
    address.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0)
}

impl Nemesis {
    pub fn new(
        cluster: Arc<Cluster>,
        net: Option<Arc<Net>>,
        history: Arc<History>,
        rng: StdRng,
        kinds: Vec<FaultKind>,
    ) -> Nemesis {
        let n = cluster.len();
        Nemesis {
            cluster,
            net,
            history,
            rng,
            kinds,
            faults: Arc::default(),
            current: Arc::new(Mutex::new("none yet".into())),
            broken: Broken {
                agent_killed: vec![false; n],
                pg_stopped: vec![false; n],
                paused: vec![false; n],
                drilled_down: vec![false; n],
                ..Broken::default()
            },
            http: reqwest::Client::builder().no_proxy().build().expect("an HTTP client"),
        }
    }

    fn set_current(&self, s: String) {
        *self.current.lock().unwrap() = s;
    }

    /// Sleeps `d`, or less if `stop` is raised. Returns whether it was raised.
    async fn sleep(stop: &AtomicBool, d: Duration) -> bool {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if stop.load(Ordering::SeqCst) {
                return true;
            }
            tokio::time::sleep((until - Instant::now()).min(Duration::from_millis(100))).await;
        }
        stop.load(Ordering::SeqCst)
    }

    /// Faults until `stop` is raised, then heals everything. The kinds come from a shuffled bag
    /// (every kind once, then again in a new order).
    pub async fn run(mut self, stop: Arc<AtomicBool>) -> Vec<FaultRecord> {
        // Let the workload warm up on a healthy cluster first.
        let mut first = true;
        let mut bag: Vec<FaultKind> = Vec::new();
        loop {
            let quiet = if first {
                Duration::from_secs(3)
            } else {
                Duration::from_millis(self.rng.random_range(1_500..=5_000))
            };
            first = false;
            if Self::sleep(&stop, quiet).await {
                break;
            }
            if self.kinds.is_empty() {
                continue;
            }
            // A shuffled bag of every kind: each kind comes once before any comes twice, so a
            // short run still sees all of them.
            if bag.is_empty() {
                bag = self.kinds.clone();
                bag.shuffle(&mut self.rng);
            }
            let kind = bag.pop().expect("the bag was just filled");
            let hold = if kind == FaultKind::PauseLeader {
                Duration::from_millis(self.rng.random_range(500..=5_000))
            } else {
                Duration::from_millis(self.rng.random_range(1_000..=8_000))
            };
            let wait_for_recovery = self.rng.random_bool(0.75);
            let mut record = self.inject(kind).await;
            self.set_current(format!("{} for {:.1} s", record.label(), hold.as_secs_f64()));
            self.faults.lock().unwrap().push(record.clone());
            Self::sleep(&stop, hold).await;
            self.set_current(format!("healing {}", record.label()));
            let healed = self.heal_all().await;
            record.healed = Some(self.history.now());
            if let Err(e) = healed {
                record.error.get_or_insert(e);
            }
            if wait_for_recovery || stop.load(Ordering::SeqCst) {
                self.set_current(format!("waiting for the cluster to recover from {}", record.label()));
                match wait_whole(&self.cluster, RECOVERY_TIMEOUT, &stop).await {
                    Ok(()) => record.recovered = Some(self.history.now()),
                    Err(e) if !stop.load(Ordering::SeqCst) => {
                        record
                            .error
                            .get_or_insert(format!("not whole {} s after healing: {e}", RECOVERY_TIMEOUT.as_secs()));
                    }
                    Err(_) => {}
                }
            }
            self.set_current("none".into());
            let failed = record.error.is_some();
            if let Some(last) = self.faults.lock().unwrap().last_mut() {
                *last = record;
            }
            if failed {
                // The cluster did not come back: more faults would only bury the cause.
                self.set_current("stopped injecting: a fault did not heal".into());
                while !Self::sleep(&stop, Duration::from_secs(1)).await {}
                break;
            }
        }
        let _ = self.heal_all().await;
        self.set_current("none".into());
        self.faults.lock().unwrap().clone()
    }

    /// The node the supervisor names leader, if it also reports leader itself.
    async fn leader(&self) -> Option<usize> {
        let s = self.cluster.try_supervisor_status().await.ok()?;
        let i = self.cluster.index_of(s["leader"].as_str()?)?;
        let st = self.cluster.try_status(i, Duration::from_secs(1)).await.ok()?;
        (st.role == Role::Leader && Some(st.term) == s["term"].as_i64()).then_some(i)
    }

    async fn drill(&self, node: usize, path: &str) -> Result<String, String> {
        let url = format!("{}{path}", self.cluster.url(node));
        let r =
            self.http.get(&url).timeout(Duration::from_secs(5)).send().await.map_err(|e| format!("GET {path}: {e}"))?;
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!("GET {path} on node {node}: HTTP {status}: {body}"))
        }
    }

    async fn inject(&mut self, kind: FaultKind) -> FaultRecord {
        let c = self.cluster.clone();
        let n = c.len();
        let mut record =
            FaultRecord { kind, node: None, start: 0, healed: None, recovered: None, note: String::new(), error: None };
        let needs_leader = !matches!(
            kind,
            FaultKind::KillReplica | FaultKind::StopPostgres | FaultKind::KillSupervisor | FaultKind::PartitionNode
        );
        let leader = if needs_leader { self.leader().await } else { None };
        if needs_leader && leader.is_none() {
            record.start = self.history.now();
            record.note = "skipped: no serving leader to hit".into();
            return record;
        }
        let result: Result<(), String> = match kind {
            FaultKind::KillLeader => {
                let l = leader.unwrap();
                record.node = Some(l);
                record.note = format!("SIGKILL agent of node{l} (the leader)");
                record.start = self.history.now();
                self.broken.agent_killed[l] = true;
                sync_call("kill the agent", || c.kill_agent(l))
            }
            FaultKind::KillReplica => {
                let l = self.leader().await;
                let candidates: Vec<usize> = (0..n).filter(|i| Some(*i) != l).collect();
                let i = candidates[self.rng.random_range(0..candidates.len())];
                record.node = Some(i);
                record.note = format!("SIGKILL agent of node{i} (not the leader)");
                record.start = self.history.now();
                self.broken.agent_killed[i] = true;
                sync_call("kill the agent", || c.kill_agent(i))
            }
            FaultKind::StopPostgres => {
                let i = self.rng.random_range(0..n);
                record.node = Some(i);
                record.note = format!("pg_ctl stop -m immediate of node{i}'s PostgreSQL");
                record.start = self.history.now();
                self.broken.pg_stopped[i] = true;
                let c2 = c.clone();
                async_call("stop PostgreSQL", async move { c2.stop_postgres(i).await }).await
            }
            FaultKind::PauseLeader => {
                let l = leader.unwrap();
                record.node = Some(l);
                record.note = format!("SIGSTOP agent of node{l} (the leader)");
                record.start = self.history.now();
                self.broken.paused[l] = true;
                sync_call("SIGSTOP the agent", || c.pause_agent(l))
            }
            FaultKind::KillSupervisor => {
                record.note = "SIGKILL the supervisor".into();
                record.start = self.history.now();
                self.broken.supervisor_killed = true;
                sync_call("kill the supervisor", || c.kill_supervisor())
            }
            FaultKind::KillLeaderAndSupervisor => {
                let l = leader.unwrap();
                let gap = Duration::from_millis(self.rng.random_range(200..=1_200));
                record.node = Some(l);
                record.note = format!(
                    "SIGKILL agent of node{l} (the leader), {} ms later SIGKILL the supervisor",
                    gap.as_millis()
                );
                record.start = self.history.now();
                self.broken.agent_killed[l] = true;
                let first = sync_call("kill the agent", || c.kill_agent(l));
                tokio::time::sleep(gap).await;
                self.broken.supervisor_killed = true;
                first.and(sync_call("kill the supervisor", || c.kill_supervisor()))
            }
            FaultKind::DownLeaderDrill => {
                let l = leader.unwrap();
                record.node = Some(l);
                record.note = format!("GET /down_leader/ on node{l}");
                record.start = self.history.now();
                self.broken.drilled_down[l] = true;
                self.drill(l, "/down_leader/").await.map(|_| ())
            }
            FaultKind::PartitionNode => {
                let i = self.rng.random_range(0..n);
                record.node = Some(i);
                record.note = format!("cut node{i} off from the other agents and the supervisor");
                record.start = self.history.now();
                self.broken.partitioned = true;
                match &self.net {
                    Some(net) => {
                        let ports: Vec<u16> = c.nodes().map(|n| n.port).collect();
                        net.isolate(i, &ports, port_of(&c.supervisor_address()))
                    }
                    None => Err("partitions are not available".into()),
                }
            }
            FaultKind::PartitionLeaderFromSupervisor => {
                let l = leader.unwrap();
                record.node = Some(l);
                record.note = format!("cut node{l} (the leader) off from the supervisor only");
                record.start = self.history.now();
                self.broken.partitioned = true;
                match &self.net {
                    Some(net) => net.cut_from_supervisor(l, c.node(l).port, port_of(&c.supervisor_address())),
                    None => Err("partitions are not available".into()),
                }
            }
        };
        if let Err(e) = result {
            record.error = Some(format!("injecting: {e}"));
        }
        record
    }

    /// Heals everything broken, in an operator's order: the network, stopped processes,
    /// PostgreSQL before its agent, the drill, the supervisor last.
    pub async fn heal_all(&mut self) -> Result<(), String> {
        let c = self.cluster.clone();
        let mut errors = Vec::new();
        if std::mem::take(&mut self.broken.partitioned) {
            if let Some(net) = &self.net {
                if let Err(e) = net.heal() {
                    errors.push(format!("removing the partition: {e}"));
                }
            }
        }
        for i in 0..c.len() {
            if std::mem::take(&mut self.broken.paused[i]) {
                if let Err(e) = sync_call("SIGCONT the agent", || c.resume_agent(i)) {
                    errors.push(e);
                }
            }
        }
        for i in 0..c.len() {
            if std::mem::take(&mut self.broken.pg_stopped[i]) {
                let c2 = c.clone();
                if let Err(e) = async_call("start PostgreSQL", async move { c2.start_postgres(i).await }).await {
                    errors.push(format!("node{i}: {e}"));
                }
            }
        }
        for i in 0..c.len() {
            if std::mem::take(&mut self.broken.agent_killed[i]) {
                let c2 = c.clone();
                if let Err(e) = async_call("restart the agent", async move { c2.restart_agent(i).await }).await {
                    errors.push(format!("node{i}: {e}"));
                }
            }
        }
        for i in 0..c.len() {
            if std::mem::take(&mut self.broken.drilled_down[i]) {
                if let Err(e) = self.drill(i, "/up_node/").await {
                    errors.push(e);
                }
            }
        }
        if std::mem::take(&mut self.broken.supervisor_killed) {
            let c2 = c.clone();
            if let Err(e) = async_call("restart the supervisor", async move { c2.restart_supervisor().await }).await {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// Whether the cluster is whole: the supervisor names a leader that serves in its term, every
/// node is a member, and writes are available.
pub async fn whole(c: &Cluster) -> Result<(), String> {
    let s: Value = c.try_supervisor_status().await?;
    let members = s["members"].as_array().map_or(0, Vec::len);
    if members != c.len() {
        return Err(format!("members {}", s["members"]));
    }
    if s["writes_available"] != Value::Bool(true) {
        return Err(format!("writes unavailable: {}", s["message"]));
    }
    let leader = s["leader"].as_str().and_then(|a| c.index_of(a)).ok_or("no leader")?;
    let st: AgentStatus = c.try_status(leader, Duration::from_secs(1)).await?;
    if st.role != Role::Leader || Some(st.term) != s["term"].as_i64() {
        return Err(format!(
            "node{leader} reports {:?} in term {}, the supervisor is in term {}",
            st.role, st.term, s["term"]
        ));
    }
    Ok(())
}

/// Polls [`whole`] until it holds, `timeout` passes or `stop` is raised (then one last try).
pub async fn wait_whole(c: &Cluster, timeout: Duration, stop: &AtomicBool) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match whole(c).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() > deadline || stop.load(Ordering::SeqCst) {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
