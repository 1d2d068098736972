//! A cluster of nodes (PostgreSQL + agent) for one test, and the calls a test makes on it.

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use protocol::{Account, AgentStatus, Balance, CommitResponse, LogPage, Lsn, ReadResponse};
use reqwest::StatusCode;

use crate::tls;
use serde_json::{json, Value};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Row;
use uuid::Uuid;

use crate::etcd::EtcdMember;
use crate::hosts::{self, HostId, Hosts};
use crate::{etcd, pg, ports, READY_TIMEOUT};

/// A live agent answers `GET /status` in milliseconds; one that takes this long is stuck.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// One row of `bank_balance`: `(account_number, balance, created_at, updated_at)`.
pub type BalanceRow = (Account, Balance, Option<i64>, Option<i64>);

/// One row of `recovery_log`, as stored in PostgreSQL.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRow {
    pub lsn: Lsn,
    pub term: i64,
    pub txn_id: Uuid,
    pub commit_ts: i64,
    pub read_set: Value,
    pub write_set: Value,
    /// The recorded outcome of a transaction ABORTED by a conflict (such an entry writes
    /// nothing); `None` for a commit.
    pub aborted: Option<Value>,
}

impl LogRow {
    /// Whether this entry is a commit (and not the record of an abort).
    pub fn is_commit(&self) -> bool {
        self.aborted.is_none()
    }

    /// The write set, parsed (stored as a JSON object from account to balance).
    pub fn writes(&self) -> BTreeMap<Account, Balance> {
        serde_json::from_value(self.write_set.clone()).unwrap_or_else(|e| {
            panic!(
                "recovery_log lsn {}: write_set {} is not an object from account to balance: {e}",
                self.lsn, self.write_set
            )
        })
    }

    /// The read set, parsed (stored as a JSON array of accounts).
    pub fn reads(&self) -> Vec<Account> {
        serde_json::from_value(self.read_set.clone()).unwrap_or_else(|e| {
            panic!("recovery_log lsn {}: read_set {} is not an array of accounts: {e}", self.lsn, self.read_set)
        })
    }
}

/// An HTTP answer kept whole, for tests about status codes and bodies of any kind.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub body: String,
}

impl RawResponse {
    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }
}

/// How to start a cluster. `ClusterOptions::new(3)` is what [`Cluster::start`] uses.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Number of nodes.
    pub nodes: usize,
    /// Index of the node given to every agent as `--leader`.
    pub leader: usize,
    /// Extra flags for every agent.
    pub agent_args: Vec<String>,
    /// Extra environment for every agent (`RUST_LOG=info` is always set, and may be overridden).
    pub agent_env: Vec<(String, String)>,
    /// Whether [`Cluster::start_with`] starts the agents (else only PostgreSQL; start them with
    /// [`Cluster::start_agent`]).
    pub start_agents: bool,
    /// Whether to run a supervisor (and give every agent `--supervisor`). Without one the
    /// leader is fixed, as in the tests of replication alone.
    pub supervisor: bool,
    /// The supervisor's `--poll-interval-ms`.
    pub poll_interval_ms: u64,
    /// The supervisor's `--misses`: polls without an answer before an agent counts as down.
    pub misses: u32,
    /// Extra flags for the supervisor.
    pub supervisor_args: Vec<String>,
    /// How many supervisors run (when `supervisor` is set): more than one needs etcd.
    pub supervisors: usize,
    /// How many etcd members to run for the supervisors' `--store` (0: each supervisor keeps a
    /// state file).
    pub etcd_members: usize,
    /// Whether every node, supervisor and etcd member runs on a host of its own (a network
    /// namespace with its own address on a bridge; needs root). Else all run on 127.0.0.1.
    pub hosts: bool,
    /// How many of the last `nodes` are spares: new nodes (PostgreSQL and agent) that the
    /// cluster does not know, as an operator starts them before `client member add`. A spare's
    /// agent is given the members and the leader like the others, plus its own address; the
    /// others and the supervisor are not given the spare's.
    pub spare: usize,
    /// TLS between every program and towards the harness: a CA and a certificate per agent,
    /// supervisor and the harness itself, made in the cluster's folder; the harness then calls
    /// `https://` URLs trusting that CA only.
    pub tls: bool,
    /// With `tls`: mutual TLS (`--tls-client-auth`) on every agent and supervisor; the
    /// harness presents its own certificate.
    pub tls_client_auth: bool,
}

impl ClusterOptions {
    pub fn new(nodes: usize) -> Self {
        assert!(nodes > 0, "a cluster has at least one node");
        ClusterOptions {
            nodes,
            leader: 0,
            agent_args: Vec::new(),
            agent_env: Vec::new(),
            start_agents: true,
            supervisor: false,
            poll_interval_ms: 200,
            misses: 3,
            supervisor_args: Vec::new(),
            supervisors: 1,
            etcd_members: 0,
            hosts: false,
            spare: 0,
            // RMW_E2E_TLS=1 runs a whole test file's clusters over mutual TLS (`./setup.sh
            // test` runs the failover tests so, beside their plain run).
            tls: tls_from_env(),
            tls_client_auth: tls_from_env(),
        }
    }

    /// [`ClusterOptions::supervised`] with TLS everywhere, mutual inside.
    pub fn with_tls(nodes: usize) -> Self {
        ClusterOptions { tls: true, tls_client_auth: true, ..ClusterOptions::supervised(nodes) }
    }

    /// [`ClusterOptions::with_etcd`] with every node (PostgreSQL and agent), both supervisors
    /// and the three etcd members on hosts of their own: network namespaces on one bridge, each
    /// with its own address and the programs' default ports (see the `hosts` module). Needs root.
    pub fn on_hosts(nodes: usize) -> Self {
        ClusterOptions { hosts: true, ..ClusterOptions::with_etcd(nodes) }
    }

    /// `n` nodes, two supervisors (one active, one standby) and a three-member etcd holding
    /// their configuration.
    pub fn with_etcd(nodes: usize) -> Self {
        ClusterOptions { supervisors: 2, etcd_members: 3, ..ClusterOptions::supervised(nodes) }
    }

    /// `n` nodes watched by a supervisor at its defaults (poll every 200 ms, 3 misses).
    pub fn supervised(nodes: usize) -> Self {
        ClusterOptions { supervisor: true, ..ClusterOptions::new(nodes) }
    }
}

/// Whether `RMW_E2E_TLS=1` asks for every cluster of this test process to run over TLS.
fn tls_from_env() -> bool {
    std::env::var("RMW_E2E_TLS").is_ok_and(|v| v == "1")
}

/// A program the harness runs (an agent or the supervisor): its flags, its log, its process.
pub(crate) struct Daemon {
    /// For messages: `agent 1`, `supervisor`.
    pub(crate) name: String,
    /// The program: a binary of the workspace, or etcd.
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    /// Where stdout and stderr go (appended across restarts).
    pub(crate) log_path: PathBuf,
    /// Holds the pid while it runs, so that a later test process can reap it if this one dies.
    pub(crate) pid_path: PathBuf,
    /// The network namespace it runs in (`ip netns exec`, which execs: the pid is the
    /// program's), on hosts.
    pub(crate) netns: Option<String>,
    pub(crate) child: Mutex<Option<Child>>,
}

impl Daemon {
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(|c| c.id())
    }

    pub(crate) fn spawn(&self) {
        let mut slot = self.child.lock().unwrap();
        assert!(slot.is_none(), "{} is already running", self.name);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log_path.display()));
        let err = log.try_clone().expect("clone the log file handle");
        let bin = &self.program;
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = command
            .args(&self.args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        fs::write(&self.pid_path, child.id().to_string()).expect("write the pid file");
        *slot = Some(child);
    }

    /// SIGKILLs the process and reaps it. Returns whether it was running.
    pub(crate) fn kill(&self) -> bool {
        let Some(mut child) = self.child.lock().unwrap().take() else {
            return false;
        };
        let _ = child.kill();
        let _ = child.wait();
        let _ = fs::remove_file(&self.pid_path);
        true
    }

    /// Whether the process is gone, with its exit status.
    pub(crate) fn exit(&self) -> Option<String> {
        let mut slot = self.child.lock().unwrap();
        match slot.as_mut() {
            None => Some("not started".into()),
            Some(child) => match child.try_wait() {
                Ok(Some(status)) => Some(status.to_string()),
                Ok(None) => None,
                Err(e) => Some(format!("unknown ({e})")),
            },
        }
    }

    pub(crate) fn signal(&self, signal: i32) {
        let pid = self.pid().unwrap_or_else(|| panic!("{} is not running", self.name));
        // SAFETY: the pid is our own child, not yet reaped, so it cannot have been reused.
        let rc = unsafe { libc::kill(pid as i32, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}): {}", std::io::Error::last_os_error());
    }

    pub(crate) fn tail(&self, lines: usize) -> String {
        tail(&self.log_path, lines)
    }
}

/// One node: a PostgreSQL server and the agent beside it.
pub struct Node {
    pub index: usize,
    /// `node<index>`, the agent's `--node-id`.
    pub node_id: String,
    /// The address the agent and PostgreSQL listen on: 127.0.0.1, or the node's host's.
    pub ip: Ipv4Addr,
    /// The network namespace of the node's host, on hosts.
    pub netns: Option<String>,
    /// The agent's port.
    pub port: u16,
    /// PostgreSQL's port.
    pub pg_port: u16,
    /// PostgreSQL's data folder.
    pub data_dir: PathBuf,
    /// Where the agent's stdout and stderr go (appended across restarts).
    pub log_path: PathBuf,
    /// `http`, or `https` in a cluster with TLS.
    pub scheme: &'static str,
    agent: Daemon,
    pool: tokio::sync::OnceCell<PgPool>,
}

impl Node {
    /// `<ip>:<port>`, the agent's address as peers and the status name it.
    pub fn address(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// `http://<ip>:<port>` (`https://` with TLS).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.address())
    }

    /// Where the harness connects to this node's PostgreSQL, with the password (a test-run's
    /// throwaway one: the agents get it from a file instead).
    pub fn database_url(&self) -> String {
        format!("postgres://postgres:{}@{}:{}/postgres", pg::password(), self.ip, self.pg_port)
    }

    /// Where its PostgreSQL runs, for the `pg` module.
    pub(crate) fn pg_server(&self) -> pg::Server {
        pg::Server { dir: self.data_dir.clone(), ip: self.ip, port: self.pg_port, netns: self.netns.clone() }
    }

    /// The agent's process id, while it runs.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.pid()
    }
}

/// Where a binary of the workspace is: `RMW_BIN_DIR`, else the target folder this test was
/// built into (`target/debug/deps/<test>` -> `target/debug`), else the workspace's `target/debug`.
pub(crate) fn binary(name: &str) -> PathBuf {
    let candidates: Vec<PathBuf> = if let Some(dir) = std::env::var_os("RMW_BIN_DIR") {
        vec![PathBuf::from(dir).join(name)]
    } else {
        let mut c = Vec::new();
        if let Ok(exe) = std::env::current_exe() {
            if let Some(profile_dir) = exe.parent().and_then(Path::parent) {
                c.push(profile_dir.join(name));
            }
        }
        c.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug").join(name));
        c
    };
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| {
        panic!(
            "the {name} binary is missing (looked at {candidates:?}): run `cargo build --workspace --bins` \
             before the end-to-end tests, or set RMW_BIN_DIR to the folder holding it"
        )
    })
}

/// The last `lines` lines of a text file (or why it could not be read).
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// A running cluster. Dropping it stops everything it started and removes its folder.
pub struct Cluster {
    dir: PathBuf,
    nodes: Vec<Node>,
    leader: usize,
    /// The supervisors, when the options asked for them (the first is started first).
    pub(crate) supervisors: Vec<SupervisorProcess>,
    /// The etcd members holding the supervisors' configuration, when asked for.
    pub(crate) etcd: Vec<EtcdMember>,
    http: reqwest::Client,
    /// For etcd's own API (plain HTTP, also in a cluster with TLS).
    pub(crate) etcd_http: reqwest::Client,
    /// The cluster's CA and certificates, with TLS.
    pki: Option<tls::Pki>,
    /// Whether the agents run with `--retain-log`: a node's log may then start after LSN 1
    /// (trimmed, or rebuilt from a snapshot), and the invariants compare logs where they meet.
    pub(crate) trims_logs: bool,
    /// The network namespaces and the bridge, on hosts. Declared last: dropped after the
    /// processes in them were stopped.
    pub(crate) hosts: Option<Hosts>,
}

/// The supervisor process and where it listens.
pub(crate) struct SupervisorProcess {
    pub(crate) ip: Ipv4Addr,
    pub(crate) port: u16,
    /// Its `--state-file`, kept across restarts.
    pub(crate) state_file: PathBuf,
    /// `http`, or `https` in a cluster with TLS.
    pub(crate) scheme: &'static str,
    pub(crate) daemon: Daemon,
}

impl Cluster {
    /// Starts `n` nodes with node 0 as the leader, and waits until every agent is healthy.
    pub async fn start(n: usize) -> Cluster {
        Cluster::start_with(ClusterOptions::new(n)).await
    }

    pub async fn start_with(options: ClusterOptions) -> Cluster {
        static CLUSTERS: AtomicUsize = AtomicUsize::new(0);
        assert!(options.leader < options.nodes, "the leader must be one of the nodes");
        // Fail before starting anything when a binary is missing.
        if options.start_agents {
            let _ = binary("agent");
        }
        if options.supervisor {
            assert!(options.start_agents, "a supervisor needs the agents started");
            let _ = binary("supervisor");
        }
        pg::reap_abandoned();

        let number = CLUSTERS.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("{}{}-{number}", pg::DIR_PREFIX, std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let supervisor_count = if options.supervisor { options.supervisors } else { 0 };

        // On hosts: a namespace per node, supervisor and etcd member, each on the programs'
        // default ports at its own address. Else every process on 127.0.0.1, on free ports.
        let hosts = options.hosts.then(|| {
            let ids: Vec<HostId> = (0..options.nodes)
                .map(HostId::Node)
                .chain((0..supervisor_count).map(HostId::Supervisor))
                .chain((0..options.etcd_members).map(HostId::Etcd))
                .collect();
            Hosts::create(number, &ids).unwrap_or_else(|e| {
                let _ = fs::remove_dir_all(&dir);
                panic!("cannot make the cluster's hosts: {e}")
            })
        });
        let place = |id: HostId, port: fn() -> u16, host_port: u16| -> (Ipv4Addr, Option<String>, u16) {
            match &hosts {
                Some(h) => (h.get(id).address, Some(h.get(id).netns.clone()), host_port),
                None => (Ipv4Addr::LOCALHOST, None, port()),
            }
        };
        // A host with two ports: the agent's and PostgreSQL's, or etcd's client and peer ports.
        let place_two = |id: HostId, first: u16, second: u16| -> (Ipv4Addr, Option<String>, u16, u16) {
            let (ip, netns, a) = place(id, ports::free_port, first);
            let (_, _, b) = place(id, ports::free_port, second);
            (ip, netns, a, b)
        };
        let placed: Vec<(Ipv4Addr, Option<String>, u16, u16)> =
            (0..options.nodes).map(|i| place_two(HostId::Node(i), hosts::AGENT_PORT, hosts::POSTGRES_PORT)).collect();
        assert!(
            options.spare < options.nodes && options.leader < options.nodes - options.spare,
            "spares are not the leader"
        );
        let addresses: Vec<String> = placed.iter().map(|(ip, _, p, _)| format!("{ip}:{p}")).collect();
        let members: Vec<String> = addresses[..options.nodes - options.spare].to_vec();
        assert!(
            options.supervisors <= 1 || options.etcd_members > 0,
            "several supervisors share their configuration through etcd: set etcd_members"
        );
        let etcd_places: Vec<(Ipv4Addr, Option<String>, u16, u16)> = (0..options.etcd_members)
            .map(|i| place_two(HostId::Etcd(i), hosts::ETCD_CLIENT_PORT, hosts::ETCD_PEER_PORT))
            .collect();
        let etcd = etcd::members(&dir, &etcd_places);
        let store = (!etcd.is_empty()).then(|| format!("etcd://{}/rmw/test", etcd::endpoints(&etcd)));
        // With TLS: a CA and a certificate per program (and one for the harness), all in the
        // cluster's folder, each naming the address the program is reached at.
        let scheme = if options.tls { "https" } else { "http" };
        let sup_places: Vec<(Ipv4Addr, Option<String>, u16)> = (0..supervisor_count)
            .map(|k| place(HostId::Supervisor(k), ports::free_port, hosts::SUPERVISOR_PORT))
            .collect();
        let pki = options.tls.then(|| {
            let programs: Vec<(String, Ipv4Addr)> = placed
                .iter()
                .enumerate()
                .map(|(i, (ip, ..))| (format!("agent{i}"), *ip))
                .chain(sup_places.iter().enumerate().map(|(k, (ip, ..))| (format!("supervisor{k}"), *ip)))
                .chain([("harness".to_string(), Ipv4Addr::LOCALHOST)])
                .collect();
            tls::Pki::create(&dir.join("tls"), &programs)
        });
        let tls_args = |stem: &str| -> Vec<String> {
            pki.as_ref().map(|pki| pki.args(stem, options.tls_client_auth)).unwrap_or_default()
        };
        let supervisors: Vec<SupervisorProcess> = (0..supervisor_count)
            .map(|k| {
                let (ip, netns, port) = sup_places[k].clone();
                // The first keeps the names of a single supervisor's files.
                let suffix = if k == 0 { String::new() } else { k.to_string() };
                let state_file = dir.join(format!("supervisor{suffix}-state.json"));
                let mut args: Vec<String> = vec![
                    "--listen".into(),
                    format!("{ip}:{port}"),
                    "--agents".into(),
                    members.join(","),
                    "--state-file".into(),
                    state_file.display().to_string(),
                    "--poll-interval-ms".into(),
                    options.poll_interval_ms.to_string(),
                    "--misses".into(),
                    options.misses.to_string(),
                ];
                if let Some(store) = &store {
                    args.extend(["--store".into(), store.clone()]);
                }
                args.extend(tls_args(&format!("supervisor{k}")));
                args.extend(options.supervisor_args.iter().cloned());
                SupervisorProcess {
                    ip,
                    port,
                    state_file,
                    scheme,
                    daemon: Daemon {
                        name: format!("supervisor{suffix}"),
                        program: binary("supervisor"),
                        args,
                        env: Vec::new(),
                        log_path: dir.join(format!("supervisor{suffix}.log")),
                        pid_path: dir.join(format!("supervisor{suffix}.pid")),
                        netns,
                        child: Mutex::new(None),
                    },
                }
            })
            .collect();
        let supervisor_list: Vec<String> = supervisors.iter().map(|s| format!("{}:{}", s.ip, s.port)).collect();
        let nodes = placed
            .into_iter()
            .enumerate()
            .map(|(i, (ip, netns, port, pg_port))| {
                let node_id = format!("node{i}");
                let mut agent_members = members.clone();
                if i >= members.len() {
                    agent_members.push(addresses[i].clone());
                }
                let mut args: Vec<String> = vec![
                    "--node-id".into(),
                    node_id.clone(),
                    "--listen".into(),
                    format!("{ip}:{port}"),
                    "--database-url".into(),
                    format!("postgres://postgres@{ip}:{pg_port}/postgres"),
                    "--database-password-file".into(),
                    pg::password_file().display().to_string(),
                    "--members".into(),
                    agent_members.join(","),
                    "--leader".into(),
                    members[options.leader].clone(),
                ];
                if !supervisor_list.is_empty() {
                    args.extend(["--supervisor".into(), supervisor_list.join(",")]);
                }
                args.extend(tls_args(&format!("agent{i}")));
                args.extend(options.agent_args.iter().cloned());
                let log_path = dir.join(format!("agent{i}.log"));
                Node {
                    scheme,
                    index: i,
                    node_id,
                    ip,
                    netns: netns.clone(),
                    port,
                    pg_port,
                    data_dir: dir.join(format!("pg{i}")),
                    log_path: log_path.clone(),
                    agent: Daemon {
                        name: format!("agent {i}"),
                        program: binary("agent"),
                        args,
                        env: options.agent_env.clone(),
                        log_path,
                        pid_path: dir.join(format!("agent{i}.pid")),
                        netns,
                        child: Mutex::new(None),
                    },
                    pool: tokio::sync::OnceCell::new(),
                }
            })
            .collect();
        // With TLS the harness trusts the cluster's CA only, and presents its own certificate.
        let harness_tls = pki.as_ref().map(|pki| pki.load("harness"));
        let http = service::client_builder_tls(None, harness_tls.as_ref())
            .expect("the HTTP client's settings")
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("build the HTTP client");
        // From here on, a panic drops the cluster, which cleans up whatever was started.
        let trusted = hosts.as_ref().map(|h| h.gateway);
        // etcd speaks plain HTTP, which the client above refuses once it has TLS.
        let etcd_http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("build the etcd HTTP client");
        let trims_logs = options.agent_args.iter().any(|a| a.starts_with("--retain-log"));
        let cluster =
            Cluster { dir, nodes, leader: options.leader, supervisors, etcd, http, etcd_http, pki, trims_logs, hosts };
        if !cluster.etcd.is_empty() {
            cluster.start_etcd_cluster().await;
        }

        let servers: Vec<pg::Server> = cluster.nodes.iter().map(Node::pg_server).collect();
        let started = tokio::task::spawn_blocking(move || {
            std::thread::scope(|s| {
                let handles: Vec<_> = servers
                    .iter()
                    .map(|server| {
                        s.spawn(move || {
                            server.create_data_dir(trusted);
                            server.start();
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join()).collect::<Vec<_>>()
            })
        })
        .await
        .expect("the PostgreSQL start-up task");
        for result in started {
            if let Err(panic) = result {
                std::panic::resume_unwind(panic);
            }
        }

        if options.start_agents {
            for node in &cluster.nodes {
                node.agent.spawn();
            }
            futures::future::join_all((0..cluster.len()).map(|i| cluster.wait_healthy(i))).await;
        }
        if !cluster.supervisors.is_empty() {
            for k in 0..cluster.supervisors.len() {
                cluster.start_supervisor_at(k).await;
            }
            // The supervisor starts from the agents' configuration: wait until it has adopted it,
            // so that a test starts from a known term, leader and member set.
            let leader = cluster.node(cluster.leader).address();
            let all: Vec<String> = cluster.nodes().map(Node::address).take(options.nodes - options.spare).collect();
            cluster
                .wait_supervisor("it adopts the agents' first configuration", READY_TIMEOUT, |s| {
                    s["term"].as_i64().is_some_and(|t| t >= 1)
                        && s["leader"].as_str() == Some(leader.as_str())
                        && s["members"] == json!(all)
                })
                .await;
        }
        cluster
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The cluster's folder (data folders `pg<i>`, agent logs `agent<i>.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// Same as [`Cluster::node`]: the agent of node `i` and what it runs on.
    pub fn agent(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter()
    }

    /// Index of the node started as the leader.
    pub fn initial_leader(&self) -> usize {
        self.leader
    }

    /// URL of the node started as the leader.
    pub fn leader_url(&self) -> String {
        self.nodes[self.leader].url()
    }

    pub fn url(&self, node: usize) -> String {
        self.nodes[node].url()
    }

    /// The HTTP client the harness uses (no proxy, 60 s timeout).
    /// The cluster's CA and certificates, in a cluster with TLS.
    pub fn pki(&self) -> Option<&tls::Pki> {
        self.pki.as_ref()
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    // ---- processes ----

    /// SIGKILLs node `i`'s agent (PostgreSQL keeps running).
    pub fn kill_agent(&self, i: usize) {
        assert!(self.nodes[i].agent.kill(), "agent {i} was not running");
    }

    /// Starts node `i`'s agent again with the same flags and waits until it is healthy.
    pub async fn start_agent(&self, i: usize) {
        self.nodes[i].agent.spawn();
        self.wait_healthy(i).await;
    }

    /// SIGKILLs node `i`'s agent (if it runs), starts it again with the same flags and waits
    /// until it is healthy.
    pub async fn restart_agent(&self, i: usize) {
        self.nodes[i].agent.kill();
        self.start_agent(i).await;
    }

    /// SIGSTOPs node `i`'s agent: it keeps its sockets but answers nothing.
    pub fn pause_agent(&self, i: usize) {
        self.nodes[i].agent.signal(libc::SIGSTOP);
    }

    /// SIGCONTs node `i`'s agent.
    pub fn resume_agent(&self, i: usize) {
        self.nodes[i].agent.signal(libc::SIGCONT);
    }

    /// Stops node `i`'s PostgreSQL at once (`pg_ctl stop -m immediate`), as in a crash.
    pub async fn stop_postgres(&self, i: usize) {
        let dir = self.nodes[i].data_dir.clone();
        tokio::task::spawn_blocking(move || pg::stop_immediate(&dir)).await.unwrap();
    }

    /// Starts node `i`'s PostgreSQL again and waits until it accepts connections.
    pub async fn start_postgres(&self, i: usize) {
        let server = self.nodes[i].pg_server();
        tokio::task::spawn_blocking(move || server.start()).await.unwrap_or_else(|e| match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("start node {i}'s PostgreSQL: {e}"),
        });
    }

    /// Makes node `i`'s PostgreSQL data folder again, exactly as [`Cluster::start_with`] made it
    /// for a fresh node: a copy of this process's `initdb` template (the one every node was made
    /// from) with the node's `port` and `unix_socket_directories` appended to its
    /// `postgresql.conf`. Started with [`Cluster::start_postgres`], the node's PostgreSQL comes
    /// back as a brand-new empty server (none of the agent's tables, no log) on the same port
    /// with the same configuration, as after an operator replaced a lost disk.
    ///
    /// Precondition: that PostgreSQL is stopped ([`Cluster::stop_postgres`]) and its data folder
    /// ([`Node::data_dir`]) no longer exists; the caller removes it (keep its `server.log` first if
    /// it is wanted). Panics when the folder exists or cannot be made. Starts nothing.
    pub async fn recreate_data_dir(&self, i: usize) {
        let server = self.nodes[i].pg_server();
        assert!(
            !server.dir.exists(),
            "node {i}'s data folder {} still exists: stop its PostgreSQL and remove the folder first",
            server.dir.display()
        );
        let trusted = self.hosts.as_ref().map(|h| h.gateway);
        tokio::task::spawn_blocking(move || server.create_data_dir(trusted)).await.unwrap_or_else(|e| {
            match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => panic!("make node {i}'s data folder again: {e}"),
            }
        });
    }

    /// Polls `GET /health` on node `i` until it answers 200; panics with the agent's log after
    /// [`READY_TIMEOUT`] or when the agent exits.
    pub async fn wait_healthy(&self, i: usize) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let url = format!("{}/health", self.url(i));
        loop {
            if let Some(exit) = self.nodes[i].agent.exit() {
                panic!(
                    "agent {i} exited ({exit}) before it became healthy; its log:\n{}",
                    tail(&self.nodes[i].log_path, 40)
                );
            }
            let last = match self.http.get(&url).timeout(Duration::from_secs(2)).send().await {
                Ok(r) if r.status() == StatusCode::OK => return,
                Ok(r) => format!("HTTP {}", r.status()),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                panic!(
                    "agent {i} not healthy after {READY_TIMEOUT:?} (last answer: {last}); its log:\n{}",
                    tail(&self.nodes[i].log_path, 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last `lines` lines of node `i`'s agent log.
    pub fn agent_log(&self, i: usize, lines: usize) -> String {
        tail(&self.nodes[i].log_path, lines)
    }

    // ---- HTTP ----

    /// Sends `body` as-is with the given Content-Type (none when `None`) and keeps the whole answer.
    pub async fn post_raw(
        &self,
        node: usize,
        path: &str,
        body: impl Into<reqwest::Body>,
        content_type: Option<&str>,
    ) -> RawResponse {
        let mut req = self.http.post(format!("{}{path}", self.url(node))).body(body);
        if let Some(ct) = content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("POST {path} to node {node}: {e}"));
        raw(resp).await
    }

    /// `GET path` on node `i`, answer kept whole.
    pub async fn get_raw(&self, node: usize, path: &str) -> RawResponse {
        let resp = self
            .http
            .get(format!("{}{path}", self.url(node)))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} on node {node}: {e}"));
        raw(resp).await
    }

    /// `POST path` with a JSON body; the answer must be JSON.
    pub async fn post(&self, node: usize, path: &str, body: &Value) -> (StatusCode, Value) {
        let r = self.post_raw(node, path, body.to_string(), Some("application/json")).await;
        (r.status, json_body(&r, &format!("POST {path} {body} to node {node}")))
    }

    /// `GET path`; the answer must be JSON.
    pub async fn get(&self, node: usize, path: &str) -> (StatusCode, Value) {
        let r = self.get_raw(node, path).await;
        (r.status, json_body(&r, &format!("GET {path} on node {node}")))
    }

    /// `POST /commit/` with `body` (the whole request: `{"transaction": {...}}`).
    pub async fn commit(&self, node: usize, body: Value) -> (StatusCode, Value) {
        self.post(node, "/commit/", &body).await
    }

    /// `POST /read/` with `body` (the whole request).
    pub async fn read_json(&self, node: usize, body: Value) -> (StatusCode, Value) {
        self.post(node, "/read/", &body).await
    }

    /// Reads `accounts` on `node`; the read must succeed.
    pub async fn read(&self, node: usize, accounts: &[Account]) -> ReadResponse {
        let body = json!({"transaction": {"read_set": accounts, "write_set": {}}});
        self.read_ok(node, body).await
    }

    /// Reads `accounts` on `node` once it has applied `min_lsn`; the read must succeed.
    pub async fn read_at(&self, node: usize, accounts: &[Account], min_lsn: Lsn) -> ReadResponse {
        let body = json!({"transaction": {"read_set": accounts, "write_set": {}}, "min_lsn": min_lsn});
        self.read_ok(node, body).await
    }

    async fn read_ok(&self, node: usize, body: Value) -> ReadResponse {
        let (status, answer) = self.read_json(node, body.clone()).await;
        assert_eq!(status, StatusCode::OK, "read {body} on node {node}: {answer}");
        serde_json::from_value(answer.clone())
            .unwrap_or_else(|e| panic!("read answer of node {node} is not a ReadResponse ({e}): {answer}"))
    }

    /// Commits a blind write of `writes` on `node`; it must commit.
    pub async fn write(&self, node: usize, writes: &[(Account, Balance)]) -> CommitResponse {
        let write_set: serde_json::Map<String, Value> = writes.iter().map(|(a, b)| (a.to_string(), json!(b))).collect();
        let body = json!({"transaction": {"write_set": write_set}});
        let (status, answer) = self.commit(node, body.clone()).await;
        assert_eq!(status, StatusCode::OK, "commit {body} on node {node}: {answer}");
        let resp: CommitResponse = serde_json::from_value(answer.clone())
            .unwrap_or_else(|e| panic!("commit answer of node {node} is not a CommitResponse ({e}): {answer}"));
        assert_eq!(resp.commit, protocol::Outcome::Commit, "{answer}");
        resp
    }

    /// `GET /status` of `node`.
    pub async fn status(&self, node: usize) -> AgentStatus {
        self.try_status(node, STATUS_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e}; its log:\n{}", self.agent_log(node, 30)))
    }

    /// `GET /status` of `node` within `timeout`, or why there was no valid answer (the agent is
    /// dead, stopped, or answered something else). For polling nodes that may be down.
    pub async fn try_status(&self, node: usize, timeout: Duration) -> Result<AgentStatus, String> {
        let resp = self
            .http
            .get(format!("{}/status", self.url(node)))
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| format!("GET /status on node {node}: {e}"))?;
        let r = raw(resp).await;
        if r.status != StatusCode::OK {
            return Err(format!("GET /status on node {node}: HTTP {}: {}", r.status, r.body));
        }
        serde_json::from_str(&r.body)
            .map_err(|e| format!("status of node {node} is not an AgentStatus ({e}): {}", r.body))
    }

    /// `GET /health` status code of `node` (the body is not inspected).
    pub async fn health(&self, node: usize) -> StatusCode {
        self.get_raw(node, "/health").await.status
    }

    /// One page of `GET /replication_log/` on `node`.
    pub async fn replication_log(&self, node: usize, after: Lsn, limit: Option<i64>) -> LogPage {
        let path = match limit {
            Some(limit) => format!("/replication_log/?after={after}&limit={limit}"),
            None => format!("/replication_log/?after={after}"),
        };
        let (code, body) = self.get(node, &path).await;
        assert_eq!(code, StatusCode::OK, "GET {path} on node {node}: {body}");
        serde_json::from_value(body.clone())
            .unwrap_or_else(|e| panic!("{path} on node {node} is not a LogPage ({e}): {body}"))
    }

    /// Waits until `node` reports `applied_lsn >= lsn` in its status.
    pub async fn wait_applied(&self, node: usize, lsn: Lsn) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let applied = self.status(node).await.applied_lsn;
            if applied >= lsn {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "node {node} applied only lsn {applied} after {READY_TIMEOUT:?}, waiting for {lsn}; its log:\n{}",
                    self.agent_log(node, 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // ---- PostgreSQL ----

    /// A connection pool to node `i`'s PostgreSQL, straight to the tables (no agent involved).
    pub async fn db(&self, node: usize) -> PgPool {
        let n = &self.nodes[node];
        n.pool
            .get_or_init(|| async {
                PgPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(&n.database_url())
                    .await
                    .unwrap_or_else(|e| panic!("connect to {}: {e}", n.database_url()))
            })
            .await
            .clone()
    }

    /// `bank_balance` of node `i`, ordered by account.
    pub async fn table(&self, node: usize) -> Vec<BalanceRow> {
        sqlx::query_as::<_, BalanceRow>(
            "SELECT account_number, balance, created_at, updated_at FROM bank_balance ORDER BY account_number",
        )
        .fetch_all(&self.db(node).await)
        .await
        .unwrap_or_else(|e| panic!("read bank_balance of node {node}: {e}"))
    }

    /// `recovery_log` of node `i`, ordered by LSN.
    pub async fn log(&self, node: usize) -> Vec<LogRow> {
        let rows = sqlx::query(
            "SELECT lsn, term, txn_id, commit_ts, read_set, write_set, aborted FROM recovery_log ORDER BY lsn",
        )
        .fetch_all(&self.db(node).await)
        .await
        .unwrap_or_else(|e| panic!("read recovery_log of node {node}: {e}"));
        rows.iter()
            .map(|r| {
                let get = |what: &str| -> String { format!("recovery_log of node {node}, column {what}") };
                LogRow {
                    lsn: r.try_get("lsn").unwrap_or_else(|e| panic!("{}: {e}", get("lsn"))),
                    term: r.try_get("term").unwrap_or_else(|e| panic!("{}: {e}", get("term"))),
                    txn_id: r.try_get("txn_id").unwrap_or_else(|e| panic!("{}: {e}", get("txn_id"))),
                    commit_ts: r.try_get("commit_ts").unwrap_or_else(|e| panic!("{}: {e}", get("commit_ts"))),
                    read_set: r.try_get("read_set").unwrap_or_else(|e| panic!("{}: {e}", get("read_set"))),
                    write_set: r.try_get("write_set").unwrap_or_else(|e| panic!("{}: {e}", get("write_set"))),
                    aborted: r.try_get("aborted").unwrap_or_else(|e| panic!("{}: {e}", get("aborted"))),
                }
            })
            .collect()
    }

    /// Node `i`'s recovery log at a glance: its first LSN, its last LSN and how many entries it
    /// holds (0, 0, 0 when empty). With `--retain-log` the first LSN passes 1.
    pub async fn log_bounds(&self, node: usize) -> (Lsn, Lsn, i64) {
        sqlx::query_as("SELECT coalesce(min(lsn), 0), coalesce(max(lsn), 0), count(*) FROM recovery_log")
            .fetch_one(&self.db(node).await)
            .await
            .unwrap_or_else(|e| panic!("read the bounds of node {node}'s recovery_log: {e}"))
    }

    /// Node `i`'s log base (`--retain-log`): the LSN and the accounts as of it, which the log
    /// after it applies to.
    pub async fn log_base(&self, node: usize) -> (Lsn, Vec<BalanceRow>) {
        let db = self.db(node).await;
        let lsn: Option<Lsn> = sqlx::query_scalar("SELECT lsn FROM agent_log_base WHERE id = 1")
            .fetch_optional(&db)
            .await
            .unwrap_or_else(|e| panic!("read agent_log_base of node {node}: {e}"));
        let rows = sqlx::query_as::<_, BalanceRow>(
            "SELECT account_number, balance, created_at, updated_at FROM bank_balance_base ORDER BY account_number",
        )
        .fetch_all(&db)
        .await
        .unwrap_or_else(|e| panic!("read bank_balance_base of node {node}: {e}"));
        (lsn.unwrap_or(0), rows)
    }

    /// `(bank_balance, recovery_log)` of every node, for "nothing changed" checks.
    pub async fn snapshot(&self) -> Vec<(Vec<BalanceRow>, Vec<LogRow>)> {
        let mut all = Vec::new();
        for i in 0..self.len() {
            all.push((self.table(i).await, self.log(i).await));
        }
        all
    }
}

pub(crate) async fn raw(resp: reqwest::Response) -> RawResponse {
    let status = resp.status();
    let content_type =
        resp.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = resp.text().await.unwrap_or_else(|e| format!("(body unreadable: {e})"));
    RawResponse { status, content_type, body }
}

fn json_body(r: &RawResponse, what: &str) -> Value {
    r.json().unwrap_or_else(|| {
        panic!("{what}: answer is not JSON (HTTP {}, content-type {:?}): {:?}", r.status, r.content_type, r.body)
    })
}

impl Drop for Cluster {
    /// Stops everything, also while a test panics; never panics itself.
    fn drop(&mut self) {
        // The supervisors first, so that they do not react to the agents going away.
        for sup in &self.supervisors {
            sup.daemon.kill();
        }
        for node in &self.nodes {
            // A paused agent still dies of SIGKILL.
            node.agent.kill();
        }
        if std::thread::panicking() {
            for node in &self.nodes {
                eprintln!(
                    "----- {} agent log ({}), last lines -----\n{}",
                    node.node_id,
                    node.log_path.display(),
                    node.agent.tail(60)
                );
            }
            for sup in &self.supervisors {
                eprintln!(
                    "----- {} log ({}), last lines -----\n{}",
                    sup.daemon.name,
                    sup.daemon.log_path.display(),
                    sup.daemon.tail(80)
                );
            }
            for member in &self.etcd {
                eprintln!(
                    "----- {} log ({}), last lines -----\n{}",
                    member.daemon.name,
                    member.daemon.log_path.display(),
                    member.daemon.tail(20)
                );
            }
            for node in &self.nodes {
                eprintln!(
                    "----- {} PostgreSQL: prepared transactions, sessions not idle -----\n{}",
                    node.node_id,
                    node.pg_server().lock_holders()
                );
            }
        }
        for node in &self.nodes {
            pg::stop_immediate(&node.data_dir);
        }
        for member in &self.etcd {
            member.daemon.kill();
        }
        if std::env::var_os("RMW_KEEP").is_some_and(|v| !v.is_empty() && v != "0") {
            eprintln!("RMW_KEEP: leaving {}", self.dir.display());
        } else if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("could not remove {}: {e}", self.dir.display());
        }
    }
}
