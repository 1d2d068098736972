//! The nemesis: one fault at a time (or two compatible ones together), chosen at random from the
//! run's seed, each held for a random interval and then healed the way an operator would
//! (restart what was killed, start PostgreSQL again, SIGCONT, `GET /up_node/`, remove the
//! partition, make a wiped data folder again, restart the supervisor, add a removed member
//! back). An operator's planned changes are faults too: a switchover, a member removed and
//! added back at the heal, through the supervisor's operator endpoints (the requests and their
//! answers are in [`crate::planned`]). Between faults it either
//! waits for the cluster to be whole again (every node a member, writes available), then reads
//! the part of every node's log that commits acknowledged since the last such read fall in (a
//! snapshot the checker holds those commits against), or, now and then, strikes again while a
//! node is still recovering.
//!
//! On hosts (`torture --hosts`: every node, both supervisors and the etcd members in network
//! namespaces of their own) the partitions are cuts between hosts (drop rules in the receiving
//! host's namespace, see the harness's `hosts` module) instead of cgroup rules, and the faults
//! across hosts join in: a link cut, a one-way loss, the active supervisor killed or cut off,
//! an etcd member killed, the etcd leader cut off from its peers, etcd's quorum lost. The heal
//! restores etcd right after the network, before anything that needs a failover: without
//! etcd's quorum nothing fails over, by design.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::{Cluster, HostId};
use protocol::{AgentStatus, Role};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::checker::{LogSnapshot, SnapshotNode};
use crate::history::History;
use crate::net::{Endpoint, Net};
use crate::pgdata;
use crate::planned::{self, Act, Call, Outcome};

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
    /// The leader cut off from both replicas; it still reaches the supervisor.
    PartitionLeaderFromReplicas,
    /// The supervisor cut off from both replicas; the leader still reaches everyone.
    PartitionSupervisorFromReplicas,
    /// One replica cut off from the leader only; it still reaches the supervisor and the other
    /// replica.
    PartitionReplicaFromLeader,
    /// SIGSTOP of both replicas' agents, SIGCONT later.
    PauseReplicas,
    /// A node's agent SIGKILLed, its PostgreSQL stopped and its data folder removed; later the
    /// folder is made again as the harness makes a fresh node, PostgreSQL and the agent started
    /// with the same name and address.
    WipeNode,
    /// SIGKILL of the supervisor and its state file deleted; restarted later without it.
    WipeSupervisorState,
    /// An operator's `POST /switchover` to a member that is not the leader, through the
    /// supervisor that acts; a refusal is an answer, recorded. Nothing to undo.
    Switchover,
    /// An operator's `POST /members/remove` of a member that is not the leader; at the heal
    /// `POST /members/add` of the same node, which recovers and becomes a member again.
    RemoveAndAddMember,
    /// Two compatible faults of the kinds above at once, healed together.
    TwoFaults,
    // ---- On hosts only (`torture --hosts`: every process in a network namespace of its own,
    // the supervisors on etcd) ----
    /// The link between two hosts cut, both directions (nodes, supervisors, etcd members alike).
    CutLink,
    /// Every packet from one host to another lost, that direction only.
    OneWayLoss,
    /// SIGKILL of the active supervisor (the one holding the lease), restarted later.
    KillActiveSupervisor,
    /// The active supervisor's host cut off from every other host.
    PartitionActiveSupervisor,
    /// SIGKILL of one etcd member, restarted later with its data.
    KillEtcdMember,
    /// The etcd leader's host cut off from the other etcd members (the supervisors still reach it).
    PartitionEtcdLeader,
    /// Two of the three etcd members killed, or their hosts cut off from every other host:
    /// quorum lost (nothing fails over meanwhile, by design), regained at the heal.
    EtcdQuorumLost,
}

impl FaultKind {
    /// The kinds of a cluster on 127.0.0.1 (see [`FaultKind::ON_HOSTS`] for the others).
    pub const ALL: [FaultKind; 18] = [
        FaultKind::KillLeader,
        FaultKind::KillReplica,
        FaultKind::StopPostgres,
        FaultKind::PauseLeader,
        FaultKind::KillSupervisor,
        FaultKind::KillLeaderAndSupervisor,
        FaultKind::DownLeaderDrill,
        FaultKind::PartitionNode,
        FaultKind::PartitionLeaderFromSupervisor,
        FaultKind::PartitionLeaderFromReplicas,
        FaultKind::PartitionSupervisorFromReplicas,
        FaultKind::PartitionReplicaFromLeader,
        FaultKind::PauseReplicas,
        FaultKind::WipeNode,
        FaultKind::WipeSupervisorState,
        FaultKind::Switchover,
        FaultKind::RemoveAndAddMember,
        FaultKind::TwoFaults,
    ];

    /// The kinds only a cluster on hosts can have.
    pub const ON_HOSTS: [FaultKind; 7] = [
        FaultKind::CutLink,
        FaultKind::OneWayLoss,
        FaultKind::KillActiveSupervisor,
        FaultKind::PartitionActiveSupervisor,
        FaultKind::KillEtcdMember,
        FaultKind::PartitionEtcdLeader,
        FaultKind::EtcdQuorumLost,
    ];

    /// Every kind, in the order of the help text.
    pub fn every() -> impl Iterator<Item = FaultKind> {
        FaultKind::ALL.into_iter().chain(FaultKind::ON_HOSTS)
    }

    /// The kinds a run makes by default: on hosts, those of [`FaultKind::ALL`] that fit a
    /// supervisor on etcd (no state file to wipe) and the kinds across hosts.
    pub fn defaults(on_hosts: bool) -> Vec<FaultKind> {
        FaultKind::every().filter(|k| k.fits(on_hosts)).collect()
    }

    /// Whether this kind can be made on a cluster on hosts (`on_hosts`) or on 127.0.0.1.
    pub fn fits(self, on_hosts: bool) -> bool {
        if on_hosts {
            // The supervisors keep their configuration in etcd: there is no state file to wipe.
            self != FaultKind::WipeSupervisorState
        } else {
            !FaultKind::ON_HOSTS.contains(&self)
        }
    }

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
            FaultKind::PartitionLeaderFromReplicas => "partition_leader_from_replicas",
            FaultKind::PartitionSupervisorFromReplicas => "partition_supervisor_from_replicas",
            FaultKind::PartitionReplicaFromLeader => "partition_replica_from_leader",
            FaultKind::PauseReplicas => "pause_replicas",
            FaultKind::WipeNode => "wipe_node",
            FaultKind::WipeSupervisorState => "wipe_supervisor_state",
            FaultKind::Switchover => "switchover",
            FaultKind::RemoveAndAddMember => "remove_and_add_member",
            FaultKind::TwoFaults => "two_faults",
            FaultKind::CutLink => "cut_link",
            FaultKind::OneWayLoss => "one_way_loss",
            FaultKind::KillActiveSupervisor => "kill_active_supervisor",
            FaultKind::PartitionActiveSupervisor => "partition_active_supervisor",
            FaultKind::KillEtcdMember => "kill_etcd_member",
            FaultKind::PartitionEtcdLeader => "partition_etcd_leader",
            FaultKind::EtcdQuorumLost => "etcd_quorum_lost",
        }
    }

    pub fn parse(s: &str) -> Option<FaultKind> {
        FaultKind::every().find(|k| k.name() == s)
    }

    /// Whether the kind cuts the network (`--no-partitions` leaves these out). The etcd quorum
    /// loss, which kills or cuts off at random, counts as one.
    pub fn is_partition(self) -> bool {
        matches!(
            self,
            FaultKind::PartitionNode
                | FaultKind::PartitionLeaderFromSupervisor
                | FaultKind::PartitionLeaderFromReplicas
                | FaultKind::PartitionSupervisorFromReplicas
                | FaultKind::PartitionReplicaFromLeader
                | FaultKind::CutLink
                | FaultKind::OneWayLoss
                | FaultKind::PartitionActiveSupervisor
                | FaultKind::PartitionEtcdLeader
                | FaultKind::EtcdQuorumLost
        )
    }

    /// Whom the fault hits.
    fn target(self) -> Target {
        match self {
            FaultKind::KillLeader
            | FaultKind::PauseLeader
            | FaultKind::KillLeaderAndSupervisor
            | FaultKind::DownLeaderDrill
            | FaultKind::PartitionLeaderFromSupervisor
            | FaultKind::PartitionLeaderFromReplicas => Target::Leader,
            // A planned change names a member that is not the leader: the switchover's target, or
            // the member removed. No other fault then hits that node (a removal of a node another
            // fault killed, or a switchover to it, would only be refused).
            FaultKind::KillReplica
            | FaultKind::PartitionReplicaFromLeader
            | FaultKind::Switchover
            | FaultKind::RemoveAndAddMember => Target::Replica,
            FaultKind::StopPostgres | FaultKind::PartitionNode | FaultKind::WipeNode => Target::AnyNode,
            FaultKind::PauseReplicas | FaultKind::PartitionSupervisorFromReplicas => Target::Replicas,
            FaultKind::KillSupervisor
            | FaultKind::WipeSupervisorState
            | FaultKind::KillActiveSupervisor
            | FaultKind::PartitionActiveSupervisor => Target::Supervisor,
            FaultKind::CutLink | FaultKind::OneWayLoss => Target::Link,
            FaultKind::KillEtcdMember | FaultKind::PartitionEtcdLeader | FaultKind::EtcdQuorumLost => Target::Etcd,
            FaultKind::TwoFaults => Target::Composite,
        }
    }

    /// Whether the fault needs to know the leader (a replica is "not the leader": without a
    /// leader, a plain replica kill takes any node).
    fn needs_leader(self) -> bool {
        match self.target() {
            Target::Leader | Target::Replicas => true,
            Target::Replica => self != FaultKind::KillReplica,
            _ => false,
        }
    }

    /// The kinds a [`FaultKind::TwoFaults`] combines (the kill of the leader and the supervisor
    /// is already two), those of a cluster on hosts included (a run picks among those it can
    /// make).
    pub const PAIRABLE: [FaultKind; 23] = [
        FaultKind::KillLeader,
        FaultKind::KillReplica,
        FaultKind::StopPostgres,
        FaultKind::PauseLeader,
        FaultKind::KillSupervisor,
        FaultKind::DownLeaderDrill,
        FaultKind::PartitionNode,
        FaultKind::PartitionLeaderFromSupervisor,
        FaultKind::PartitionLeaderFromReplicas,
        FaultKind::PartitionSupervisorFromReplicas,
        FaultKind::PartitionReplicaFromLeader,
        FaultKind::PauseReplicas,
        FaultKind::WipeNode,
        FaultKind::WipeSupervisorState,
        FaultKind::Switchover,
        FaultKind::RemoveAndAddMember,
        FaultKind::CutLink,
        FaultKind::OneWayLoss,
        FaultKind::KillActiveSupervisor,
        FaultKind::PartitionActiveSupervisor,
        FaultKind::KillEtcdMember,
        FaultKind::PartitionEtcdLeader,
        FaultKind::EtcdQuorumLost,
    ];

    /// Whether two faults can be injected together: never two on the leader, two on the
    /// supervisor(s), two on etcd, or one on both replicas with another on a replica. (The nodes
    /// are then chosen so that no node is hit twice.) A link fault goes with anything.
    pub fn compatible(a: FaultKind, b: FaultKind) -> bool {
        use Target::*;
        if a == b || !FaultKind::PAIRABLE.contains(&a) || !FaultKind::PAIRABLE.contains(&b) {
            return false;
        }
        !matches!(
            (a.target(), b.target()),
            (Leader, Leader)
                | (Supervisor, Supervisor)
                | (Etcd, Etcd)
                | (Replicas, Replicas)
                | (Replicas, Replica)
                | (Replica, Replicas)
        )
    }

    /// The ordered pairs a [`FaultKind::TwoFaults`] draws from, of the kinds in `pool`: those
    /// with a part among `chosen` (the run's `--faults`) when there are any, so that
    /// `--faults switchover,two_faults` pairs switchovers with everything else; else every
    /// compatible pair (`--faults two_faults` alone, or the default kinds, which are all chosen).
    pub fn pairs(pool: &[FaultKind], chosen: &[FaultKind]) -> Vec<(FaultKind, FaultKind)> {
        let all: Vec<(FaultKind, FaultKind)> = pool
            .iter()
            .flat_map(|&a| pool.iter().map(move |&b| (a, b)))
            .filter(|&(a, b)| FaultKind::compatible(a, b))
            .collect();
        let with_chosen: Vec<(FaultKind, FaultKind)> =
            all.iter().copied().filter(|(a, b)| chosen.contains(a) || chosen.contains(b)).collect();
        if with_chosen.is_empty() {
            all
        } else {
            with_chosen
        }
    }
}

/// Whom a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Leader,
    /// One node that is not the leader.
    Replica,
    AnyNode,
    /// Every node but the leader.
    Replicas,
    /// A supervisor (the first, or the active one).
    Supervisor,
    /// The path between two hosts.
    Link,
    /// etcd members.
    Etcd,
    Composite,
}

/// One of the faults of a [`FaultKind::TwoFaults`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultPart {
    pub kind: FaultKind,
    pub nodes: Vec<usize>,
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
    /// The two faults of a [`FaultKind::TwoFaults`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<FaultPart>,
    /// The operator's requests it made (a switchover, a member removed and added back), with
    /// the supervisor's answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<Call>,
}

fn label_of(kind: FaultKind, nodes: &[usize]) -> String {
    if nodes.is_empty() {
        return kind.name().to_string();
    }
    let nodes: Vec<String> = nodes.iter().map(|n| format!("node{n}")).collect();
    format!("{}({})", kind.name(), nodes.join(","))
}

impl FaultRecord {
    pub fn label(&self) -> String {
        if !self.parts.is_empty() {
            let parts: Vec<String> = self.parts.iter().map(|p| label_of(p.kind, &p.nodes)).collect();
            return format!("{}[{}]", self.kind.name(), parts.join(" + "));
        }
        label_of(self.kind, &self.node.into_iter().collect::<Vec<_>>())
    }

    /// The pair of a [`FaultKind::TwoFaults`] as `a+b`, for counting.
    pub fn pair_name(&self) -> Option<String> {
        (self.parts.len() == 2).then(|| format!("{}+{}", self.parts[0].kind.name(), self.parts[1].kind.name()))
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
    /// A wiped data folder, to be made again.
    wiped: Vec<bool>,
    /// Per supervisor.
    supervisor_killed: Vec<bool>,
    /// Per etcd member.
    etcd_killed: Vec<bool>,
    partitioned: bool,
    /// A node an operator's request removed from the members (or may have): added back last.
    removed: Vec<bool>,
}

pub struct Nemesis {
    pub cluster: Arc<Cluster>,
    pub net: Option<Arc<Net>>,
    pub history: Arc<History>,
    pub rng: StdRng,
    pub kinds: Vec<FaultKind>,
    /// Whether partitions may be made (cgroups, or a cluster on hosts; off with
    /// `--no-partitions`): a pair of `two_faults` then includes them.
    pub partitions: bool,
    /// Every fault so far (shared with the progress display and the report).
    pub faults: Arc<Mutex<Vec<FaultRecord>>>,
    /// The fault in progress, for the progress display.
    pub current: Arc<Mutex<String>>,
    /// Log snapshots taken once the cluster was whole again (shared with the report).
    pub snapshots: Arc<Mutex<Vec<LogSnapshot>>>,
    broken: Broken,
    /// Nodes wiped since the last snapshot: the next one reads their whole log.
    wiped_since_snapshot: Vec<bool>,
    wipes: usize,
    http: reqwest::Client,
    /// Operator requests sent by the fault being injected, answered once every part is in.
    pending: Vec<tokio::task::JoinHandle<Call>>,
    /// The requests the last heal sent (the add of a removed member).
    heal_calls: Vec<Call>,
    /// Whether every other replica kill lasts until the leader's log no longer reaches the
    /// dead node (`--retain-log`): its return is then a rebuild from a snapshot.
    pub long_outages: bool,
    replica_kills: usize,
}

/// The longest a long outage (`--retain-log`) keeps a replica down.
pub const LONG_OUTAGE: Duration = Duration::from_secs(120);

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
        let (n, supervisors, etcd) = (cluster.len(), cluster.supervisor_count(), cluster.etcd_len());
        let partitions = net.is_some() || cluster.on_hosts();
        // The harness's client: it trusts the cluster's CA and presents its certificate when
        // the cluster runs with TLS.
        let http = cluster.http().clone();
        Nemesis {
            cluster,
            net,
            history,
            partitions,
            rng,
            kinds,
            faults: Arc::default(),
            current: Arc::new(Mutex::new("none yet".into())),
            snapshots: Arc::default(),
            broken: Broken {
                agent_killed: vec![false; n],
                pg_stopped: vec![false; n],
                paused: vec![false; n],
                drilled_down: vec![false; n],
                wiped: vec![false; n],
                supervisor_killed: vec![false; supervisors],
                etcd_killed: vec![false; etcd],
                partitioned: false,
                removed: vec![false; n],
            },
            pending: Vec::new(),
            heal_calls: Vec::new(),
            wiped_since_snapshot: vec![false; n],
            wipes: 0,
            http,
            long_outages: false,
            replica_kills: 0,
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
            let hold = match kind {
                FaultKind::PauseLeader => Duration::from_millis(self.rng.random_range(500..=5_000)),
                // "A few seconds": both replicas frozen stall every commit.
                FaultKind::PauseReplicas => Duration::from_millis(self.rng.random_range(1_000..=5_000)),
                _ => Duration::from_millis(self.rng.random_range(1_000..=8_000)),
            };
            let wait_for_recovery = self.rng.random_bool(0.75);
            let mut record = self.inject(kind).await;
            let long = match (kind, record.node) {
                (FaultKind::KillReplica, Some(node)) if self.long_outages && record.error.is_none() => {
                    self.replica_kills += 1;
                    (self.replica_kills % 2 == 1).then_some(node)
                }
                _ => None,
            };
            self.faults.lock().unwrap().push(record.clone());
            match long {
                Some(node) => {
                    self.set_current(format!("{} until the log no longer reaches it", record.label()));
                    record.note += &self.outlive(node, &stop).await;
                }
                None => {
                    self.set_current(format!("{} for {:.1} s", record.label(), hold.as_secs_f64()));
                    Self::sleep(&stop, hold).await;
                }
            }
            self.set_current(format!("healing {}", record.label()));
            let healed = self.heal_all().await;
            record.healed = Some(self.history.now());
            for call in std::mem::take(&mut self.heal_calls) {
                record.note += &format!("; heal: {}", call.describe());
                record.calls.push(call);
            }
            if let Err(e) = healed {
                record.error.get_or_insert(e);
            }
            if wait_for_recovery || stop.load(Ordering::SeqCst) {
                self.set_current(format!("waiting for the cluster to recover from {}", record.label()));
                match wait_whole(&self.cluster, RECOVERY_TIMEOUT, &stop).await {
                    Ok(()) => {
                        record.recovered = Some(self.history.now());
                        self.set_current(format!("reading the logs after {}", record.label()));
                        self.snapshot().await;
                    }
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

    /// Waits, at most [`LONG_OUTAGE`], until the leader's log no longer reaches the last entry
    /// of the dead `node` (whose PostgreSQL still runs): its return must then be a rebuild from
    /// a snapshot. Returns a note for the record.
    async fn outlive(&self, node: usize, stop: &AtomicBool) -> String {
        let started = Instant::now();
        while started.elapsed() < LONG_OUTAGE && !stop.load(Ordering::SeqCst) {
            if let Some(leader) = self.leader().await.filter(|&l| l != node) {
                let c = self.cluster.clone();
                let bounds = tokio::spawn(async move { (c.log_bounds(node).await, c.log_bounds(leader).await) }).await;
                if let Ok(((_, dead_last, _), (leader_first, _, _))) = bounds {
                    if leader_first > dead_last + 1 {
                        return format!(
                            "; a long outage: after {:.0} s the leader's log starts at lsn {leader_first}, node{node}'s \
                             ends at {dead_last}",
                            started.elapsed().as_secs_f64()
                        );
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        format!(
            "; a long outage of {:.0} s (the leader's log still reached node{node})",
            started.elapsed().as_secs_f64()
        )
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
        let mut record = FaultRecord {
            kind,
            node: None,
            start: 0,
            healed: None,
            recovered: None,
            note: String::new(),
            error: None,
            parts: Vec::new(),
            calls: Vec::new(),
        };
        let parts: Vec<FaultKind> = if kind == FaultKind::TwoFaults {
            match self.pick_pair() {
                Some((a, b)) => vec![a, b],
                None => {
                    record.start = self.history.now();
                    record.note = "skipped: no two compatible fault kinds can be made here".into();
                    return record;
                }
            }
        } else {
            vec![kind]
        };
        let leader = self.leader().await;
        if parts.iter().any(|k| k.needs_leader()) && leader.is_none() {
            record.start = self.history.now();
            record.note = "skipped: no serving leader to hit".into();
            return record;
        }
        // Choose every part's nodes first (no node hit twice), then strike.
        let mut used: Vec<usize> = Vec::new();
        let mut targets: Vec<Vec<usize>> = Vec::new();
        for &k in &parts {
            match self.resolve(k, leader, &mut used) {
                Some(nodes) => targets.push(nodes),
                None => {
                    record.start = self.history.now();
                    record.note = format!("skipped: no node left for {}", k.name());
                    return record;
                }
            }
        }
        // One node named for a fault on one node; a fault on both replicas names them in its note.
        record.node = match targets[0].as_slice() {
            [one] => Some(*one),
            _ => None,
        };
        record.start = self.history.now();
        let mut notes = Vec::new();
        let mut errors = Vec::new();
        for (i, (&k, nodes)) in parts.iter().zip(&targets).enumerate() {
            if i > 0 {
                // The second fault lands while the cluster reacts to the first.
                let gap = Duration::from_millis(self.rng.random_range(0..=1_000));
                notes.push(format!("{} ms later", gap.as_millis()));
                tokio::time::sleep(gap).await;
            }
            let (note, result) = self.apply(k, nodes, leader).await;
            notes.push(note);
            if let Err(e) = result {
                errors.push(format!("injecting {}: {e}", k.name()));
            }
        }
        // The operator's requests run beside the other part (a switchover while a replica
        // dies); their answers come in here.
        let alone = parts.len() == 1;
        for call in std::mem::take(&mut self.pending) {
            let call = match call.await {
                Ok(call) => call,
                Err(e) => {
                    errors.push(format!("an operator request's task: {e}"));
                    continue;
                }
            };
            notes.push(call.describe());
            if call.outcome.is_error(alone) {
                errors.push(format!("{}: the supervisor did not answer as its API says", call.describe()));
            }
            record.calls.push(call);
        }
        if kind == FaultKind::TwoFaults {
            record.parts =
                parts.iter().zip(&targets).map(|(&kind, nodes)| FaultPart { kind, nodes: nodes.clone() }).collect();
        }
        record.note = notes.join(", ");
        if !errors.is_empty() {
            record.error = Some(errors.join("; "));
        }
        record
    }

    /// Two compatible kinds for a [`FaultKind::TwoFaults`], among those this machine can make.
    fn pick_pair(&mut self) -> Option<(FaultKind, FaultKind)> {
        let on_hosts = self.cluster.on_hosts();
        let partitions = self.partitions;
        let pool: Vec<FaultKind> =
            FaultKind::PAIRABLE.into_iter().filter(|k| k.fits(on_hosts) && (partitions || !k.is_partition())).collect();
        let pairs = FaultKind::pairs(&pool, &self.kinds);
        (!pairs.is_empty()).then(|| pairs[self.rng.random_range(0..pairs.len())])
    }

    /// The nodes a fault of `kind` hits, none of them in `used` (to which they are added).
    fn resolve(&mut self, kind: FaultKind, leader: Option<usize>, used: &mut Vec<usize>) -> Option<Vec<usize>> {
        resolve_nodes(kind, self.cluster.len(), leader, used, &mut self.rng)
    }

    /// Injects one fault on `nodes`: what was done, and whether it worked.
    async fn apply(&mut self, kind: FaultKind, nodes: &[usize], leader: Option<usize>) -> (String, Result<(), String>) {
        let c = self.cluster.clone();
        let supervisor_port = port_of(&c.supervisor_address());
        let no_net = || Err::<(), String>("partitions are not available".into());
        match kind {
            FaultKind::KillLeader | FaultKind::KillReplica => {
                let i = nodes[0];
                self.broken.agent_killed[i] = true;
                let what = if Some(i) == leader { "the leader" } else { "not the leader" };
                (format!("SIGKILL agent of node{i} ({what})"), sync_call("kill the agent", || c.kill_agent(i)))
            }
            FaultKind::StopPostgres => {
                let i = nodes[0];
                self.broken.pg_stopped[i] = true;
                let c2 = c.clone();
                (
                    format!("pg_ctl stop -m immediate of node{i}'s PostgreSQL"),
                    async_call("stop PostgreSQL", async move { c2.stop_postgres(i).await }).await,
                )
            }
            FaultKind::PauseLeader => {
                let l = nodes[0];
                self.broken.paused[l] = true;
                (format!("SIGSTOP agent of node{l} (the leader)"), sync_call("SIGSTOP the agent", || c.pause_agent(l)))
            }
            FaultKind::PauseReplicas => {
                let mut result = Ok(());
                for &i in nodes {
                    self.broken.paused[i] = true;
                    result = result.and(sync_call("SIGSTOP the agent", || c.pause_agent(i)));
                }
                (format!("SIGSTOP agents of {}", names(nodes)), result)
            }
            FaultKind::KillSupervisor => {
                self.broken.supervisor_killed[0] = true;
                let what = if c.supervisor_count() > 1 { "the first supervisor (sup0)" } else { "the supervisor" };
                (format!("SIGKILL {what}"), sync_call("kill the supervisor", || c.kill_supervisor()))
            }
            FaultKind::WipeSupervisorState => {
                self.broken.supervisor_killed[0] = true;
                let path = c.supervisor_state_file().to_path_buf();
                let killed = sync_call("kill the supervisor", || c.kill_supervisor());
                let removed = match std::fs::remove_file(&path) {
                    Ok(()) => Ok(()),
                    Err(e) => Err(format!("delete {}: {e}", path.display())),
                };
                (format!("SIGKILL the supervisor, delete its state file {}", path.display()), killed.and(removed))
            }
            FaultKind::KillLeaderAndSupervisor => {
                let l = nodes[0];
                let gap = Duration::from_millis(self.rng.random_range(200..=1_200));
                self.broken.agent_killed[l] = true;
                let first = sync_call("kill the agent", || c.kill_agent(l));
                tokio::time::sleep(gap).await;
                // With a standby, the one acting (else the first).
                let (k, which) = if c.supervisor_count() > 1 {
                    match c.active_supervisor().await {
                        Some(k) => (k, format!("sup{k}, the active supervisor")),
                        None => (0, "sup0 (none was active)".to_string()),
                    }
                } else {
                    (0, "the supervisor".to_string())
                };
                let note =
                    format!("SIGKILL agent of node{l} (the leader), {} ms later SIGKILL {which}", gap.as_millis());
                self.broken.supervisor_killed[k] = true;
                (note, first.and(sync_call("kill the supervisor", || c.kill_supervisor_at(k))))
            }
            FaultKind::DownLeaderDrill => {
                let l = nodes[0];
                self.broken.drilled_down[l] = true;
                (format!("GET /down_leader/ on node{l}"), self.drill(l, "/down_leader/").await.map(|_| ()))
            }
            FaultKind::PartitionNode if c.on_hosts() => {
                let i = nodes[0];
                self.broken.partitioned = true;
                let note = format!("cut node{i}'s host off from the other nodes' and the supervisors' hosts");
                let mut pairs: Vec<(HostId, HostId)> =
                    (0..c.len()).filter(|&j| j != i).map(|j| (HostId::Node(i), HostId::Node(j))).collect();
                pairs.extend(supervisor_hosts(&c).map(|s| (HostId::Node(i), s)));
                (note, cut_links(&c, &pairs))
            }
            FaultKind::PartitionNode => {
                let i = nodes[0];
                self.broken.partitioned = true;
                let note = format!("cut node{i} off from the other agents and the supervisor");
                let ports: Vec<u16> = c.nodes().map(|n| n.port).collect();
                (note, self.net.as_ref().map_or_else(no_net, |net| net.isolate(i, &ports, supervisor_port)))
            }
            FaultKind::PartitionLeaderFromSupervisor if c.on_hosts() => {
                let l = nodes[0];
                self.broken.partitioned = true;
                let note = format!("cut node{l}'s host (the leader) off from the supervisors' hosts only");
                let pairs: Vec<(HostId, HostId)> = supervisor_hosts(&c).map(|s| (HostId::Node(l), s)).collect();
                (note, cut_links(&c, &pairs))
            }
            FaultKind::PartitionLeaderFromSupervisor => {
                let l = nodes[0];
                self.broken.partitioned = true;
                let note = format!("cut node{l} (the leader) off from the supervisor only");
                (
                    note,
                    self.net
                        .as_ref()
                        .map_or_else(no_net, |net| net.cut_from_supervisor(l, c.node(l).port, supervisor_port)),
                )
            }
            FaultKind::PartitionLeaderFromReplicas if c.on_hosts() => {
                let l = nodes[0];
                self.broken.partitioned = true;
                let replicas: Vec<usize> = (0..c.len()).filter(|&i| i != l).collect();
                let pairs: Vec<(HostId, HostId)> =
                    replicas.iter().map(|&r| (HostId::Node(l), HostId::Node(r))).collect();
                let note = format!(
                    "cut node{l}'s host (the leader) off from the hosts of {} (it still reaches the supervisors)",
                    names(&replicas)
                );
                (note, cut_links(&c, &pairs))
            }
            FaultKind::PartitionSupervisorFromReplicas if c.on_hosts() => {
                self.broken.partitioned = true;
                let pairs: Vec<(HostId, HostId)> =
                    nodes.iter().flat_map(|&r| supervisor_hosts(&c).map(move |s| (s, HostId::Node(r)))).collect();
                let note = format!(
                    "cut the supervisors' hosts off from the hosts of {} (the replicas; the leader still reaches everyone)",
                    names(nodes)
                );
                (note, cut_links(&c, &pairs))
            }
            FaultKind::PartitionReplicaFromLeader if c.on_hosts() => {
                let (r, l) = (nodes[0], leader.expect("a replica-from-leader cut needs the leader"));
                self.broken.partitioned = true;
                let note = format!(
                    "cut the link between node{r}'s host (a replica) and node{l}'s (the leader) only; it still reaches the supervisors and the other replica"
                );
                (note, cut_links(&c, &[(HostId::Node(r), HostId::Node(l))]))
            }
            FaultKind::PartitionLeaderFromReplicas => {
                let l = nodes[0];
                self.broken.partitioned = true;
                let replicas: Vec<usize> = (0..c.len()).filter(|&i| i != l).collect();
                let pairs: Vec<(Endpoint, Endpoint)> = replicas
                    .iter()
                    .map(|&r| (Endpoint::node(l, c.node(l).port), Endpoint::node(r, c.node(r).port)))
                    .collect();
                let note =
                    format!("cut node{l} (the leader) off from {} (it still reaches the supervisor)", names(&replicas));
                (note, self.net.as_ref().map_or_else(no_net, |net| net.cut(&pairs)))
            }
            FaultKind::PartitionSupervisorFromReplicas => {
                self.broken.partitioned = true;
                let pairs: Vec<(Endpoint, Endpoint)> = nodes
                    .iter()
                    .map(|&r| (Endpoint::supervisor(supervisor_port), Endpoint::node(r, c.node(r).port)))
                    .collect();
                let note = format!(
                    "cut the supervisor off from {} (the replicas; the leader still reaches everyone)",
                    names(nodes)
                );
                (note, self.net.as_ref().map_or_else(no_net, |net| net.cut(&pairs)))
            }
            FaultKind::PartitionReplicaFromLeader => {
                let (r, l) = (nodes[0], leader.expect("a replica-from-leader cut needs the leader"));
                self.broken.partitioned = true;
                let pairs = [(Endpoint::node(r, c.node(r).port), Endpoint::node(l, c.node(l).port))];
                let note = format!(
                    "cut node{r} (a replica) off from node{l} (the leader) only; it still reaches the supervisor and the other replica"
                );
                (note, self.net.as_ref().map_or_else(no_net, |net| net.cut(&pairs)))
            }
            FaultKind::WipeNode => self.wipe(nodes[0], leader).await,
            FaultKind::Switchover => {
                let to = nodes[0];
                self.pending.push(self.send_later(Act::Switchover, to));
                (format!("POST /switchover to node{to}"), Ok(()))
            }
            FaultKind::RemoveAndAddMember => {
                let i = nodes[0];
                // Added back at the heal whatever the answer: a refused removal makes the add
                // answer `already_known`, a removal whose answer was lost is undone all the same.
                self.broken.removed[i] = true;
                self.pending.push(self.send_later(Act::Remove, i));
                (format!("POST /members/remove of node{i} (not the leader)"), Ok(()))
            }
            FaultKind::TwoFaults => ("two faults are injected part by part".into(), Err("not a single fault".into())),
            FaultKind::CutLink
            | FaultKind::OneWayLoss
            | FaultKind::KillActiveSupervisor
            | FaultKind::PartitionActiveSupervisor
            | FaultKind::KillEtcdMember
            | FaultKind::PartitionEtcdLeader
            | FaultKind::EtcdQuorumLost => self.apply_across_hosts(kind, leader).await,
        }
    }

    /// Injects a fault of the kinds only a cluster on hosts has.
    async fn apply_across_hosts(&mut self, kind: FaultKind, leader: Option<usize>) -> (String, Result<(), String>) {
        let c = self.cluster.clone();
        if !c.on_hosts() {
            return (format!("{} needs a cluster on hosts (--hosts)", kind.name()), Err("not on hosts".into()));
        }
        match kind {
            FaultKind::CutLink | FaultKind::OneWayLoss => {
                let hosts = c.host_ids();
                // Half the time the leader's link: most of the 28 pairs of hosts matter less.
                let a = match leader {
                    Some(l) if self.rng.random_bool(0.5) => HostId::Node(l),
                    _ => hosts[self.rng.random_range(0..hosts.len())],
                };
                let others: Vec<HostId> = hosts.into_iter().filter(|&h| h != a && talk(a, h)).collect();
                let b = others[self.rng.random_range(0..others.len())];
                self.broken.partitioned = true;
                if kind == FaultKind::CutLink {
                    (format!("cut the link between {a} and {b} (both directions)"), c.cut_link(a, b))
                } else {
                    (
                        format!("lose every packet from {a} to {b} (one way: {b}'s packets still reach {a})"),
                        c.lose_one_way(a, b),
                    )
                }
            }
            FaultKind::KillActiveSupervisor => match c.active_supervisor().await {
                Some(k) => {
                    self.broken.supervisor_killed[k] = true;
                    (
                        format!("SIGKILL sup{k}, the active supervisor"),
                        sync_call("kill the supervisor", || c.kill_supervisor_at(k)),
                    )
                }
                None => ("no supervisor is active: nothing killed".into(), Ok(())),
            },
            FaultKind::PartitionActiveSupervisor => match c.active_supervisor().await {
                Some(k) => {
                    self.broken.partitioned = true;
                    (
                        format!("cut sup{k}'s host (the active supervisor) off from every other host"),
                        c.isolate_host(HostId::Supervisor(k)),
                    )
                }
                None => ("no supervisor is active: nothing cut".into(), Ok(())),
            },
            FaultKind::KillEtcdMember => {
                let i = self.rng.random_range(0..c.etcd_len());
                self.broken.etcd_killed[i] = true;
                (format!("SIGKILL etcd member etcd{i}"), sync_call("kill the etcd member", || c.kill_etcd(i)))
            }
            FaultKind::PartitionEtcdLeader => match c.etcd_leader().await {
                Some(l) => {
                    self.broken.partitioned = true;
                    let pairs: Vec<(HostId, HostId)> =
                        (0..c.etcd_len()).filter(|&j| j != l).map(|j| (HostId::Etcd(l), HostId::Etcd(j))).collect();
                    (
                        format!("cut etcd{l}'s host (the etcd leader) off from the other etcd members (the supervisors still reach it)"),
                        cut_links(&c, &pairs),
                    )
                }
                None => ("no etcd leader found: nothing cut".into(), Ok(())),
            },
            FaultKind::EtcdQuorumLost => {
                let mut members: Vec<usize> = (0..c.etcd_len()).collect();
                members.shuffle(&mut self.rng);
                let lost: Vec<usize> = members.into_iter().take(c.etcd_len() / 2 + 1).collect();
                let list = lost.iter().map(|i| format!("etcd{i}")).collect::<Vec<_>>().join(" and ");
                if self.rng.random_bool(0.5) {
                    let mut result = Ok(());
                    for &i in &lost {
                        self.broken.etcd_killed[i] = true;
                        result = result.and(sync_call("kill the etcd member", || c.kill_etcd(i)));
                    }
                    (format!("quorum lost: SIGKILL {list}"), result)
                } else {
                    self.broken.partitioned = true;
                    let mut result = Ok(());
                    for &i in &lost {
                        result = result.and(c.isolate_host(HostId::Etcd(i)));
                    }
                    (format!("quorum lost: cut the hosts of {list} off from every other host"), result)
                }
            }
            _ => unreachable!("{} is not a fault across hosts", kind.name()),
        }
    }

    /// Sends an operator's request about node `node` in a task of its own: the nemesis goes on
    /// with the other part of a pair while the supervisor works on it.
    fn send_later(&self, act: Act, node: usize) -> tokio::task::JoinHandle<Call> {
        let (c, http, history) = (self.cluster.clone(), self.http.clone(), self.history.clone());
        tokio::spawn(async move { send_call(&c, &http, &history, act, node).await })
    }

    /// Adds node `i` back with `POST /members/add`, again and again until the supervisor knows
    /// it (see [`Outcome::added_back`]) or [`planned::ADD_BACK_WITHIN`] has passed.
    async fn add_back(&mut self, i: usize) -> Result<(), String> {
        let deadline = Instant::now() + planned::ADD_BACK_WITHIN;
        let sent = self.history.now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut call = send_call(&self.cluster, &self.http, &self.history, Act::Add, i).await;
            let done = call.outcome.added_back();
            if done || Instant::now() + planned::ADD_BACK_PAUSE > deadline {
                (call.sent, call.attempts) = (sent, attempts);
                let what = call.describe();
                self.heal_calls.push(call);
                return if done {
                    Ok(())
                } else {
                    Err(format!("node{i} not added back within {} s: {what}", planned::ADD_BACK_WITHIN.as_secs()))
                };
            }
            tokio::time::sleep(planned::ADD_BACK_PAUSE).await;
        }
    }

    /// Kills node `i`'s agent, stops its PostgreSQL and removes its data folder.
    async fn wipe(&mut self, i: usize, leader: Option<usize>) -> (String, Result<(), String>) {
        let c = self.cluster.clone();
        let dir = c.node(i).data_dir.clone();
        let role = if leader == Some(i) { "the leader" } else { "not the leader" };
        let note = format!(
            "node{i} ({role}): SIGKILL its agent, pg_ctl stop -m immediate, remove its data folder {}",
            dir.display()
        );
        self.broken.agent_killed[i] = true;
        if let Err(e) = sync_call("kill the agent", || c.kill_agent(i)) {
            return (note, Err(e));
        }
        let c2 = c.clone();
        if let Err(e) = async_call("stop PostgreSQL", async move { c2.stop_postgres(i).await }).await {
            self.broken.pg_stopped[i] = true;
            return (note, Err(e));
        }
        self.wipes += 1;
        let keep_log = c.dir().join(format!("pg{i}-server-before-wipe-{}.log", self.wipes));
        match tokio::task::spawn_blocking(move || pgdata::wipe(&dir, &keep_log)).await {
            Ok(Ok(())) => {
                self.broken.wiped[i] = true;
                self.wiped_since_snapshot[i] = true;
                (note, Ok(()))
            }
            Ok(Err(e)) => {
                // The folder may be whole still: start it again at the heal.
                self.broken.pg_stopped[i] = true;
                (note, Err(e))
            }
            Err(e) => (note, Err(format!("the wipe task: {e}"))),
        }
    }

    /// Reads, on every node, the log from the lowest LSN acknowledged since the previous
    /// snapshot (a wiped node's whole log) up to what it has applied.
    async fn snapshot(&mut self) {
        let (time, low) = self.history.checkpoint();
        let mut nodes = Vec::new();
        for i in 0..self.cluster.len() {
            let after = if self.wiped_since_snapshot[i] {
                0
            } else {
                match low {
                    Some(l) => (l - 1).max(0),
                    None => continue,
                }
            };
            match crate::logs::fetch(&self.cluster, i, after).await {
                Ok(entries) => {
                    self.wiped_since_snapshot[i] = false;
                    // A log that no longer reaches `after` (trimmed, or rebuilt from a snapshot)
                    // covers what it holds.
                    let after = entries.first().map_or(after, |e| (e.lsn - 1).max(after));
                    nodes.push(SnapshotNode { index: i, after, entries, error: None });
                }
                Err(e) => nodes.push(SnapshotNode { index: i, after, entries: Vec::new(), error: Some(e) }),
            }
        }
        if !nodes.is_empty() {
            self.snapshots.lock().unwrap().push(LogSnapshot { time, nodes });
        }
    }

    /// Heals everything broken, in an operator's order: the network, stopped processes,
    /// PostgreSQL before its agent, the drill, the supervisor, and last a removed member added
    /// back (the supervisor must answer, and the node's agent run, for that).
    pub async fn heal_all(&mut self) -> Result<(), String> {
        let c = self.cluster.clone();
        let mut errors = Vec::new();
        if std::mem::take(&mut self.broken.partitioned) {
            if let Some(net) = &self.net {
                if let Err(e) = net.heal() {
                    errors.push(format!("removing the partition: {e}"));
                }
            }
            if c.on_hosts() {
                if let Err(e) = c.heal_network() {
                    errors.push(format!("removing the cuts between hosts: {e}"));
                }
            }
        }
        // etcd before anything that needs a failover: without its quorum nothing fails over.
        let mut restarted = Vec::new();
        for i in 0..c.etcd_len() {
            if std::mem::take(&mut self.broken.etcd_killed[i]) {
                match sync_call("start the etcd member", || c.start_etcd_member(i)) {
                    Ok(()) => restarted.push(i),
                    Err(e) => errors.push(format!("etcd{i}: {e}")),
                }
            }
        }
        for i in restarted {
            let c2 = c.clone();
            if let Err(e) = async_call("wait for the etcd member", async move { c2.wait_etcd_healthy(i).await }).await {
                errors.push(format!("etcd{i}: {e}"));
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
            if std::mem::take(&mut self.broken.wiped[i]) {
                let c2 = c.clone();
                let made = async_call("make the data folder again", async move { c2.recreate_data_dir(i).await }).await;
                let c2 = c.clone();
                let started = match made {
                    Ok(()) => async_call("start PostgreSQL", async move { c2.start_postgres(i).await }).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = started {
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
        for k in 0..c.supervisor_count() {
            if std::mem::take(&mut self.broken.supervisor_killed[k]) {
                let c2 = c.clone();
                let restarted = async_call("restart the supervisor", async move { c2.restart_supervisor_at(k).await });
                if let Err(e) = restarted.await {
                    errors.push(format!("sup{k}: {e}"));
                }
            }
        }
        // Last: the supervisor probes the node before it takes it, and recovers it from the
        // leader. Left marked when it fails, so that the final heal tries again.
        for i in 0..c.len() {
            if self.broken.removed[i] {
                match self.add_back(i).await {
                    Ok(()) => self.broken.removed[i] = false,
                    Err(e) => errors.push(e),
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// The nodes of `n` a fault of `kind` hits, none of them in `used` (to which they are added);
/// a random one, from the run's seeded `rng`, where several fit.
fn resolve_nodes(
    kind: FaultKind,
    n: usize,
    leader: Option<usize>,
    used: &mut Vec<usize>,
    rng: &mut StdRng,
) -> Option<Vec<usize>> {
    let free: Vec<usize> = (0..n).filter(|i| !used.contains(i)).collect();
    let nodes = match kind.target() {
        Target::Leader => vec![leader.filter(|l| free.contains(l))?],
        Target::Replica => {
            let candidates: Vec<usize> = free.iter().copied().filter(|i| Some(*i) != leader).collect();
            if candidates.is_empty() {
                return None;
            }
            vec![candidates[rng.random_range(0..candidates.len())]]
        }
        Target::AnyNode => {
            if free.is_empty() {
                return None;
            }
            vec![free[rng.random_range(0..free.len())]]
        }
        Target::Replicas => {
            let replicas: Vec<usize> = (0..n).filter(|i| Some(*i) != leader).collect();
            if replicas.iter().any(|r| used.contains(r)) {
                return None;
            }
            replicas
        }
        Target::Supervisor | Target::Link | Target::Etcd | Target::Composite => Vec::new(),
    };
    used.extend(&nodes);
    Some(nodes)
}

/// Sends `act` about node `node` to the supervisor that acts: on hosts the active one first,
/// then the others; a standby's 503 `standby`, or no answer, moves on to the next one. No token:
/// the harness's cluster runs without one.
async fn send_call(c: &Cluster, http: &reqwest::Client, history: &History, act: Act, node: usize) -> Call {
    let sent = history.now();
    let address = c.node(node).address();
    let mut order: Vec<usize> = (0..c.supervisor_count()).collect();
    if order.len() > 1 {
        if let Some(k) = c.active_supervisor().await {
            order.retain(|&j| j != k);
            order.insert(0, k);
        }
    }
    // An answer ends the search, unless it is a standby's; no answer tries the next one.
    let (mut unanswered, mut standby, mut outcome) = (None, None, None);
    for k in order {
        let url = format!("{}{}", c.supervisor_url_at(k), act.path());
        let response = match http.post(&url).json(&act.body(&address)).timeout(planned::CALL_TIMEOUT).send().await {
            Ok(r) => r,
            Err(e) => {
                unanswered.get_or_insert(Outcome::no_answer(format!("sup{k}: {e}")));
                continue;
            }
        };
        let status = response.status().as_u16();
        let answer = match response.text().await {
            Ok(body) => Outcome::of_answer(act, status, &body),
            Err(e) => Outcome::no_answer(format!("sup{k}: HTTP {status}, then the body: {e}")),
        };
        if answer.code() == Some("standby") {
            standby = Some(answer);
            continue;
        }
        outcome = Some(answer);
        break;
    }
    // A supervisor that acts and does not answer says more than a standby pointing to it.
    let outcome = outcome.or(unanswered).or(standby).unwrap_or_else(|| Outcome::no_answer("no supervisor"));
    Call { act, node, sent, answered: history.now(), attempts: 1, outcome }
}

/// Whether hosts `a` and `b` exchange packets at all: agents with agents and supervisors,
/// supervisors with etcd, etcd with etcd (a link fault elsewhere would change nothing).
fn talk(a: HostId, b: HostId) -> bool {
    use HostId::*;
    matches!(
        (a, b),
        (Node(_), Node(_) | Supervisor(_)) | (Supervisor(_), Node(_) | Etcd(_)) | (Etcd(_), Supervisor(_) | Etcd(_))
    )
}

/// The hosts of every supervisor.
fn supervisor_hosts(c: &Cluster) -> impl Iterator<Item = HostId> {
    (0..c.supervisor_count()).map(HostId::Supervisor)
}

/// Cuts every pair's link, both ways.
fn cut_links(c: &Cluster, pairs: &[(HostId, HostId)]) -> Result<(), String> {
    pairs.iter().try_for_each(|&(a, b)| c.cut_link(a, b))
}

fn names(nodes: &[usize]) -> String {
    nodes.iter().map(|n| format!("node{n}")).collect::<Vec<_>>().join(" and ")
}

/// Whether the cluster is whole: the supervisor names a leader that serves in its term, every
/// node is a member, and writes are available.
pub async fn whole(c: &Cluster) -> Result<(), String> {
    let s: Value = c.try_supervisor_status().await?;
    // With a standby, the status must come from the supervisor that acts.
    if c.supervisor_count() > 1 && s["active"] != Value::Bool(true) {
        return Err(format!("no supervisor is active: {}", s["message"]));
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn every_kind_has_a_name_that_parses_back() {
        for k in FaultKind::ALL {
            assert_eq!(FaultKind::parse(k.name()), Some(k));
            let json = serde_json::to_value(k).unwrap();
            assert_eq!(json, k.name());
        }
        for k in FaultKind::ON_HOSTS {
            assert_eq!(FaultKind::parse(k.name()), Some(k));
        }
        assert_eq!(FaultKind::ALL.len(), 18);
        assert_eq!(FaultKind::every().count(), 25);
    }

    #[test]
    fn pairs_never_hit_one_target_twice() {
        use FaultKind::*;
        assert!(FaultKind::compatible(KillLeader, KillReplica));
        assert!(FaultKind::compatible(KillLeader, KillSupervisor));
        assert!(FaultKind::compatible(PauseReplicas, KillLeader));
        assert!(FaultKind::compatible(WipeNode, PartitionSupervisorFromReplicas));
        assert!(!FaultKind::compatible(KillLeader, PauseLeader));
        assert!(!FaultKind::compatible(KillSupervisor, WipeSupervisorState));
        assert!(!FaultKind::compatible(PauseReplicas, KillReplica));
        assert!(!FaultKind::compatible(KillReplica, KillReplica));
        assert!(!FaultKind::compatible(TwoFaults, KillLeader));
        assert!(!FaultKind::compatible(KillLeaderAndSupervisor, KillReplica));
        // Every pairable kind has at least one partner.
        for a in FaultKind::PAIRABLE {
            assert!(FaultKind::PAIRABLE.iter().any(|&b| FaultKind::compatible(a, b)), "{a:?}");
        }
    }

    #[test]
    fn the_faults_across_hosts_pair_with_the_agent_faults_but_not_with_their_own_target() {
        use FaultKind::*;
        assert!(FaultKind::compatible(EtcdQuorumLost, KillLeader));
        assert!(FaultKind::compatible(KillActiveSupervisor, PartitionNode));
        assert!(FaultKind::compatible(CutLink, OneWayLoss));
        assert!(FaultKind::compatible(CutLink, KillSupervisor));
        assert!(!FaultKind::compatible(KillActiveSupervisor, KillSupervisor));
        assert!(!FaultKind::compatible(PartitionActiveSupervisor, KillActiveSupervisor));
        assert!(!FaultKind::compatible(KillEtcdMember, EtcdQuorumLost));
        assert!(!FaultKind::compatible(PartitionEtcdLeader, KillEtcdMember));
        // 127.0.0.1 keeps its kinds; on hosts there is no state file to wipe.
        assert_eq!(FaultKind::defaults(false), FaultKind::ALL.to_vec());
        let on_hosts = FaultKind::defaults(true);
        assert!(!on_hosts.contains(&WipeSupervisorState));
        for k in FaultKind::ON_HOSTS {
            assert!(on_hosts.contains(&k) && !k.fits(false), "{k:?}");
        }
    }

    #[test]
    fn the_planned_changes_pair_with_faults_elsewhere_but_never_on_their_own_node() {
        use FaultKind::*;
        // A switchover while a replica dies, the leader dies or the supervisor dies.
        assert!(FaultKind::compatible(Switchover, KillReplica));
        assert!(FaultKind::compatible(Switchover, KillLeader));
        assert!(FaultKind::compatible(Switchover, KillSupervisor));
        assert!(FaultKind::compatible(Switchover, RemoveAndAddMember));
        assert!(FaultKind::compatible(RemoveAndAddMember, KillLeader));
        assert!(FaultKind::compatible(RemoveAndAddMember, WipeNode));
        assert!(FaultKind::compatible(RemoveAndAddMember, KillActiveSupervisor));
        assert!(FaultKind::compatible(Switchover, EtcdQuorumLost));
        // Both replicas already hit: no replica is left to switch to or remove.
        assert!(!FaultKind::compatible(Switchover, PauseReplicas));
        assert!(!FaultKind::compatible(RemoveAndAddMember, PartitionSupervisorFromReplicas));
        assert!(!FaultKind::compatible(Switchover, Switchover));
        for k in [Switchover, RemoveAndAddMember] {
            assert!(k.fits(false) && k.fits(true) && !k.is_partition(), "{k:?}");
            assert!(k.needs_leader(), "{k:?}: 'not the leader' needs to know the leader");
            assert!(FaultKind::defaults(false).contains(&k) && FaultKind::defaults(true).contains(&k));
        }
    }

    /// The nodes of a pair with a planned change: the planned change's node is never the
    /// leader, and never the node the other part hits.
    #[test]
    fn a_planned_change_names_a_replica_no_other_part_hits() {
        use FaultKind::*;
        for seed in 0..200 {
            let mut rng = StdRng::seed_from_u64(seed);
            let leader = Some((seed % 3) as usize);
            for other in [KillReplica, StopPostgres, WipeNode, PartitionNode, KillLeader, Switchover] {
                for (first, second) in [(RemoveAndAddMember, other), (other, RemoveAndAddMember)] {
                    let mut used = Vec::new();
                    let a = resolve_nodes(first, 3, leader, &mut used, &mut rng);
                    let b = resolve_nodes(second, 3, leader, &mut used, &mut rng);
                    let (Some(a), Some(b)) = (a, b) else { panic!("{first:?}+{second:?}: a part found no node") };
                    let planned = if first == RemoveAndAddMember { &a } else { &b };
                    assert_eq!(planned.len(), 1);
                    assert_ne!(Some(planned[0]), leader, "{first:?}+{second:?}");
                    assert!(a.iter().all(|n| !b.contains(n)), "{first:?}+{second:?}: {a:?} {b:?}");
                }
            }
        }
    }

    #[test]
    fn pairs_include_a_chosen_kind_when_some_are_chosen() {
        use FaultKind::*;
        let pool: Vec<FaultKind> = FaultKind::PAIRABLE.into_iter().filter(|k| k.fits(false)).collect();
        let every = FaultKind::pairs(&pool, &[]);
        // The defaults choose every kind: the pairs are all of them, in the same order.
        assert_eq!(FaultKind::pairs(&pool, &FaultKind::defaults(false)), every);
        assert_eq!(FaultKind::pairs(&pool, &[TwoFaults]), every);
        let planned = FaultKind::pairs(&pool, &[Switchover, RemoveAndAddMember, TwoFaults]);
        assert!(!planned.is_empty() && planned.len() < every.len());
        for (a, b) in &planned {
            assert!([a, b].iter().any(|k| matches!(k, Switchover | RemoveAndAddMember)), "{a:?}+{b:?}");
        }
        // Both orders: the planned change first or second.
        assert!(planned.contains(&(Switchover, KillReplica)) && planned.contains(&(KillReplica, Switchover)));
    }

    #[test]
    fn a_pair_is_labelled_with_both_parts() {
        let r = FaultRecord {
            kind: FaultKind::TwoFaults,
            node: Some(0),
            start: 0,
            healed: None,
            recovered: None,
            note: String::new(),
            error: None,
            calls: vec![],
            parts: vec![
                FaultPart { kind: FaultKind::KillLeader, nodes: vec![0] },
                FaultPart { kind: FaultKind::PauseReplicas, nodes: vec![1, 2] },
            ],
        };
        assert_eq!(r.label(), "two_faults[kill_leader(node0) + pause_replicas(node1,node2)]");
        assert_eq!(r.pair_name().as_deref(), Some("kill_leader+pause_replicas"));
    }
}
