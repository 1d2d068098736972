//! One torture run from start to verdict: set up partitions and clock skew, start the cluster,
//! deposit, run the clients and the nemesis, heal, read every node, check, report, clean up.

use std::collections::BTreeMap;
use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use e2e::{Cluster, ClusterOptions};
use protocol::Role;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::archive::Archive;
use crate::checker::{self, CheckInput, Entry, Finding, LogSnapshot, NodeState, Row, StatusSample, Verdict};
use crate::history::{read_history, History};
use crate::nemesis::{self, FaultKind, FaultRecord, Nemesis};
use crate::net::{self, Net, Skew};
use crate::report::{self, Availability, Summary};
use crate::workload::{self, Shared, Stats};

pub const NODES: usize = 3;
pub const INITIAL_BALANCE: i64 = 1_000;
/// How long the healed cluster gets at the end to be whole and converged.
const FINAL_RECOVERY: Duration = Duration::from_secs(120);
/// How long the clients get to finish the transaction in flight when the run ends (the
/// follower's budget is 20 s for the read and 20 s for the commit).
const CLIENT_DRAIN: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub enum SkewChoice {
    Auto,
    Off,
    Fixed(usize, i64),
}

#[derive(Debug, Clone)]
pub struct Options {
    pub duration: Duration,
    pub seed: u64,
    pub clients: usize,
    pub accounts: i64,
    pub output: Option<PathBuf>,
    pub bin_dir: Option<PathBuf>,
    pub skew: SkewChoice,
    pub faults: Option<Vec<FaultKind>>,
    pub partitions: bool,
    pub progress_bar: bool,
    /// How many nodes must hold every acknowledged commit (default: what the agents report in
    /// `/status`, else [`checker::DEFAULT_MIN_COPIES`]).
    pub min_copies: Option<usize>,
    /// Every node, both supervisors (on etcd) and three etcd members on hosts of their own
    /// (network namespaces on a bridge), with the faults across hosts.
    pub hosts: bool,
    /// Every connection between the programs over TLS, mutual TLS on the internal endpoints.
    pub tls: bool,
    /// The agents' `--retain-log` (None: every entry kept).
    pub retain_log: Option<i64>,
}

/// What `torture check` needs besides the history and the nodes' states.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    pub seed: u64,
    pub accounts: i64,
    pub initial_balance: i64,
    pub clients: usize,
    pub duration_s: f64,
    pub clock_skew: Option<String>,
    pub partitions: String,
    pub fault_kinds: Vec<FaultKind>,
    /// The cluster's ports: agents (node order), supervisor.
    pub agent_ports: Vec<u16>,
    pub supervisor_port: u16,
    /// The durability floor the checker held the run to.
    #[serde(default)]
    pub min_copies: Option<usize>,
    /// On hosts: every host's name and address (`node0 10.78.5.11`, ...); empty on 127.0.0.1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Whether the cluster ran over TLS (`--tls`).
    #[serde(default)]
    pub tls: bool,
    /// The agents' `--retain-log`, if any.
    #[serde(default)]
    pub retain_log: Option<i64>,
}

fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<T> {
    let text = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
}

/// `torture check DIR`: the checker again on a saved run. Prints the verdict; returns whether
/// it is clean.
pub fn check_saved(dir: &Path) -> anyhow::Result<bool> {
    let info: RunInfo = read_json(&dir.join("run.json"))?;
    let ops = read_history(&dir.join("history.jsonl"))?;
    let nodes: Vec<NodeState> = read_json(&dir.join("final-state.json"))?;
    let samples: Vec<StatusSample> = read_json(&dir.join("samples.json"))?;
    // Runs made before the snapshots existed have none.
    let snapshots: Vec<LogSnapshot> =
        if dir.join("snapshots.json").exists() { read_json(&dir.join("snapshots.json"))? } else { Vec::new() };
    let archive: Archive =
        if dir.join("archive.json").exists() { read_json(&dir.join("archive.json"))? } else { Archive::default() };
    let verdict = checker::check(&CheckInput {
        accounts: info.accounts,
        initial_balance: info.initial_balance,
        ops,
        nodes,
        samples,
        min_copies: info.min_copies.unwrap_or(checker::DEFAULT_MIN_COPIES),
        snapshots,
        archive,
    });
    println!("{}", serde_json::to_string_pretty(&verdict)?);
    Ok(verdict.valid)
}

/// Runs the whole thing. Returns whether the verdict is clean.
pub fn run(opts: Options) -> anyhow::Result<bool> {
    let seed = opts.seed;
    println!("torture: seed {seed} (repeat this run with --seed {seed})");
    let out = match &opts.output {
        Some(p) => p.clone(),
        None => {
            let base = PathBuf::from("torture-output");
            fs::create_dir_all(&base).with_context(|| format!("create {}", base.display()))?;
            // The whole folder stays out of git.
            let ignore = base.join(".gitignore");
            if !ignore.exists() {
                fs::write(&ignore, "# Written by the torture run: its results stay out of git.\n*\n")?;
            }
            base.join(format!("{}-seed{seed}", report::utc_stamp()))
        }
    };
    fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    let out = out.canonicalize()?;

    let mut rng = StdRng::seed_from_u64(seed);
    // The skew is decided first so that a seed always decides it the same way.
    let skew_wanted = match opts.skew {
        SkewChoice::Off => None,
        SkewChoice::Fixed(node, ms) => Some(Skew { node: node.min(NODES - 1), offset_ms: ms }),
        SkewChoice::Auto => {
            let on = rng.random_bool(0.5);
            let node = rng.random_range(0..NODES);
            let ms = rng.random_range(500..=5_000) * if rng.random_bool(0.5) { 1 } else { -1 };
            on.then_some(Skew { node, offset_ms: ms })
        }
    };
    let skew = match (skew_wanted, net::faketime_lib()) {
        (Some(s), Some(_)) => {
            println!("torture: node{} runs its agent with a clock {:+} ms off (libfaketime)", s.node, s.offset_ms);
            Some(s)
        }
        (Some(_), None) => {
            println!("torture: clock skew skipped: libfaketime is not installed (Debian: apt-get install faketime)");
            None
        }
        (None, _) => {
            println!("torture: clocks not skewed in this run");
            None
        }
    };
    // SAFETY: geteuid has no preconditions.
    if opts.hosts && unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("--hosts makes network namespaces, a bridge and nftables rules: run it as root");
    }
    let (net, partitions) = if !opts.partitions {
        (None, "off (--no-partitions)".to_string())
    } else if opts.hosts {
        // On hosts a partition is a drop rule in a host's own namespace: no cgroups needed.
        (None, "on (hosts: nftables drop rules in each host's network namespace)".to_string())
    } else {
        match Net::setup(NODES) {
            Ok(net) => (Some(Arc::new(net)), "on (cgroup v2 + nftables drop rules)".to_string()),
            Err(reason) => {
                println!("torture: PARTITIONS SKIPPED: this machine cannot make them: {reason}");
                (None, format!("skipped: {reason}"))
            }
        }
    };
    let mut kinds: Vec<FaultKind> = opts.faults.clone().unwrap_or_else(|| FaultKind::defaults(opts.hosts));
    if let Some(k) = kinds.iter().find(|k| !k.fits(opts.hosts)) {
        anyhow::bail!(
            "the fault kind {} needs {}",
            k.name(),
            if opts.hosts { "a supervisor with a state file (not --hosts)" } else { "a cluster on hosts (--hosts)" }
        );
    }
    let partitions_on = net.is_some() || (opts.hosts && opts.partitions);
    if !partitions_on {
        kinds.retain(|k| !k.is_partition());
    }
    println!("torture: faults: {}", kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(", "));

    let real_bins = match &opts.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?.parent().context("the program's folder")?.to_path_buf(),
    };
    let wrappers = out.join("bin");
    net::write_wrappers(&wrappers, &real_bins, net.as_deref(), skew.as_ref())?;
    // The harness starts `$RMW_BIN_DIR/agent` and `$RMW_BIN_DIR/supervisor`: the wrappers.
    // Set before the runtime starts any thread.
    std::env::set_var("RMW_BIN_DIR", &wrappers);

    // Panics inside harness calls are caught and reported by the nemesis; keep them off the
    // terminal (where they would tear the progress bar) and in a file.
    let panic_log = out.join("panics.log");
    std::panic::set_hook(Box::new(move |info| {
        use std::io::Write;
        if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(&panic_log) {
            let _ = writeln!(f, "{info}\n");
        }
        let first = info.to_string().lines().take(2).collect::<Vec<_>>().join(" ");
        eprintln!("torture: panic (whole message in {}): {first}", panic_log.display());
    }));

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let result = runtime.block_on(run_async(&opts, &out, rng, net.clone(), skew, partitions, partitions_on, kinds));
    drop(runtime);
    if let Some(net) = &net {
        net.teardown();
    }
    let _ = std::panic::take_hook();
    result
}

/// Runs `f` (a harness call that panics on failure) as a task; its panic becomes an error.
async fn harness<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send + 'static) -> Result<T, String> {
    tokio::spawn(f).await.map_err(|e| match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into()),
        Err(e) => e.to_string(),
    })
}

/// Samples every agent's `/status` every 100 ms until `stop`, each agent on its own (a stopped
/// agent must not slow the sampling of the others).
async fn sample_statuses(
    c: Arc<Cluster>,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Vec<StatusSample>>>,
) {
    let pollers = c.nodes().map(|n| {
        let (http, history, stop, out) = (c.http().clone(), history.clone(), stop.clone(), out.clone());
        let (node, url) = (n.index, format!("{}/status", n.url()));
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                let req = http.get(&url).timeout(Duration::from_millis(300)).send();
                let Some(s) = async { req.await.ok()?.json::<serde_json::Value>().await.ok() }.await else { continue };
                if let Some(sample) = status_sample(history.now(), node, &s) {
                    out.lock().unwrap().push(sample);
                }
            }
        }
    });
    futures::future::join_all(pollers).await;
}

/// A sample from an agent's `/status` (read as JSON: newer agents add optional fields).
fn status_sample(time: u64, node: usize, s: &serde_json::Value) -> Option<StatusSample> {
    Some(StatusSample {
        time,
        node,
        role: s["role"].as_str()?.to_string(),
        term: s["term"].as_i64()?,
        applied_lsn: s["applied_lsn"].as_i64()?,
        last_term: s["last_term"].as_i64(),
        cluster_id: s.get("cluster_id").filter(|v| !v.is_null()).map(|v| match v.as_str() {
            Some(text) => text.to_string(),
            None => v.to_string(),
        }),
        min_copies: s["min_copies"].as_u64().and_then(|n| u32::try_from(n).ok()).filter(|n| *n > 0),
    })
}

fn describe_leader(samples: &Mutex<Vec<StatusSample>>) -> String {
    let samples = samples.lock().unwrap();
    let Some(last_time) = samples.last().map(|s| s.time) else { return "leader ?".into() };
    let recent = samples.iter().rev().take_while(|s| s.time + 1_000_000_000 > last_time);
    match recent.filter(|s| s.role == "leader").max_by_key(|s| s.term) {
        Some(s) => format!("leader node{} term {} lsn {}", s.node, s.term, s.applied_lsn),
        None => "no leader".into(),
    }
}

/// Waits until every node reports the same applied LSN (after the clients stopped).
async fn wait_converged(c: &Cluster, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut applied = Vec::new();
        let mut last_err = None;
        for i in 0..c.len() {
            match c.try_status(i, Duration::from_secs(2)).await {
                Ok(s) => applied.push((s.applied_lsn, s.role)),
                Err(e) => last_err = Some(e),
            }
        }
        let problem = match last_err {
            Some(e) => e,
            None if applied.iter().all(|a| a.0 == applied[0].0) && applied.iter().all(|a| a.1 != Role::Standby) => {
                return Ok(())
            }
            None => format!("applied LSNs and roles {applied:?}"),
        };
        if Instant::now() > deadline {
            return Err(problem);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The most entries a log may hold beyond `--retain-log` once the run is over: one round (a
/// batch of 256), since trimming runs every second and no commit comes in after the run.
const ONE_ROUND: i64 = 256;

/// Every node's log size at the end, straight from PostgreSQL, after the agents' trimming had
/// time for a pass (None: unreadable).
async fn log_sizes(c: &Arc<Cluster>) -> Vec<Option<i64>> {
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let mut sizes = Vec::new();
    for i in 0..c.len() {
        let c2 = c.clone();
        sizes.push(harness(async move { c2.log_bounds(i).await.2 }).await.ok());
    }
    sizes
}

/// How many times an agent loaded the leader's snapshot in a rebuild, from the agents' logs.
fn snapshot_rebuilds(c: &Cluster) -> usize {
    c.nodes()
        .map(|n| fs::read_to_string(&n.log_path).map_or(0, |log| log.matches("loaded the leader's snapshot").count()))
        .sum()
}

/// Node `i`'s table, straight from its PostgreSQL, and its log as its agent serves it
/// (`GET /replication_log/`, which marks the entries of ABORTED transactions); when the agent
/// cannot serve it, the log straight from PostgreSQL.
async fn node_state(c: &Arc<Cluster>, i: usize) -> NodeState {
    let address = c.node(i).address();
    let c2 = c.clone();
    let table = harness(async move { c2.table(i).await }).await;
    let log = match crate::logs::fetch(c, i, 0).await {
        Ok(log) => Ok(log),
        Err(http) => {
            eprintln!("torture: node{i}'s log over HTTP: {http}; reading it from PostgreSQL instead");
            let c2 = c.clone();
            harness(async move { c2.log(i).await }).await.map(|rows| {
                rows.iter()
                    .map(|e| Entry {
                        lsn: e.lsn,
                        term: e.term,
                        txn_id: e.txn_id,
                        commit_ts: e.commit_ts,
                        read_set: e.reads(),
                        write_set: e.writes(),
                        aborted: None,
                    })
                    .collect()
            })
        }
    };
    match (table, log) {
        (Ok(table), Ok(log)) => NodeState {
            index: i,
            address,
            error: None,
            table: table
                .into_iter()
                .map(|(account, balance, created_at, updated_at)| Row { account, balance, created_at, updated_at })
                .collect(),
            log,
        },
        (Err(e), _) | (_, Err(e)) => NodeState {
            index: i,
            address,
            error: Some(e.lines().next().unwrap_or("").to_string()),
            table: vec![],
            log: vec![],
        },
    }
}

fn add_finding(v: &mut Verdict, check: &str, message: String) {
    *v.finding_counts.entry(check.to_string()).or_default() += 1;
    v.findings.push(Finding { check: check.to_string(), message, txns: Vec::new() });
    v.valid = false;
}

fn copy_logs(c: &Cluster, out: &Path) {
    let logs = out.join("logs");
    let _ = fs::create_dir_all(&logs);
    let mut files: Vec<(PathBuf, String)> = vec![(c.dir().join("supervisor.log"), "supervisor.log".into())];
    for k in 1..c.supervisor_count() {
        files.push((c.dir().join(format!("supervisor{k}.log")), format!("supervisor{k}.log")));
    }
    for i in 0..c.etcd_len() {
        files.push((c.dir().join(format!("etcd{i}.log")), format!("etcd{i}.log")));
    }
    for n in c.nodes() {
        files.push((n.log_path.clone(), format!("agent{}.log", n.index)));
        files.push((n.data_dir.join("server.log"), format!("postgres{}.log", n.index)));
    }
    // The server logs of data folders the nemesis wiped.
    if let Ok(entries) = fs::read_dir(c.dir()) {
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().to_string();
            if name.contains("-server-before-wipe-") {
                files.push((e.path(), name.replacen("pg", "postgres", 1)));
            }
        }
    }
    for (from, name) in files {
        let _ = fs::copy(&from, logs.join(name));
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_async(
    opts: &Options,
    out: &Path,
    mut rng: StdRng,
    net: Option<Arc<Net>>,
    skew: Option<Skew>,
    partitions: String,
    partitions_on: bool,
    kinds: Vec<FaultKind>,
) -> anyhow::Result<bool> {
    let mut options = if opts.hosts {
        println!(
            "torture: starting a {NODES}-node cluster on hosts: every node, 2 supervisors (on etcd) and 3 etcd members \
             in a network namespace of its own on one bridge"
        );
        ClusterOptions::on_hosts(NODES)
    } else {
        println!("torture: starting a supervised {NODES}-node cluster (PostgreSQL, agents, supervisor on free ports)");
        ClusterOptions::supervised(NODES)
    };
    if opts.tls {
        println!("torture: over TLS: a CA made for this run, mutual TLS on the internal endpoints");
        options.tls = true;
        options.tls_client_auth = true;
    }
    if let Some(n) = opts.retain_log {
        println!("torture: the agents keep their newest {n} log entries (--retain-log {n} --retain-log-secs 0)");
        options.agent_args.extend(["--retain-log".into(), n.to_string(), "--retain-log-secs".into(), "0".into()]);
    }
    let cluster =
        harness(Cluster::start_with(options)).await.map_err(|e| anyhow::anyhow!("the cluster did not start: {e}"))?;
    let c = Arc::new(cluster);
    let agent_ports: Vec<u16> = c.nodes().map(|n| n.port).collect();
    let supervisor_port = nemesis::port_of(&c.supervisor_address());
    let hosts: Vec<String> = c.host_ids().into_iter().map(|h| format!("{h} {}", c.host(h).address)).collect();
    if hosts.is_empty() {
        println!(
            "torture: cluster in {}: agents on ports {:?}, supervisor on {supervisor_port}; output in {}",
            c.dir().display(),
            agent_ports,
            out.display()
        );
    } else {
        println!(
            "torture: cluster in {}: hosts {} (the harness and the clients at {}); output in {}",
            c.dir().display(),
            hosts.join(", "),
            c.bridge_address(),
            out.display()
        );
    }
    let info = RunInfo {
        seed: opts.seed,
        accounts: opts.accounts,
        initial_balance: INITIAL_BALANCE,
        clients: opts.clients,
        duration_s: opts.duration.as_secs_f64(),
        clock_skew: skew.as_ref().map(|s| format!("node{} {:+} ms", s.node, s.offset_ms)),
        partitions: partitions.clone(),
        fault_kinds: kinds.clone(),
        agent_ports,
        supervisor_port,
        min_copies: opts.min_copies,
        hosts,
        tls: opts.tls,
        retain_log: opts.retain_log,
    };
    write_json(&out.join("run.json"), &info)?;

    let result = drive(opts, out, &mut rng, c.clone(), net, partitions_on, &info, kinds).await;
    copy_logs(&c, out);
    // Every task holding the cluster has ended: dropping it stops every process it started.
    match Arc::try_unwrap(c) {
        Ok(cluster) => drop(cluster),
        Err(_) => {
            eprintln!("torture: warning: the cluster is still referenced; its processes stop when this program exits")
        }
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    opts: &Options,
    out: &Path,
    rng: &mut StdRng,
    c: Arc<Cluster>,
    net: Option<Arc<Net>>,
    partitions_on: bool,
    info: &RunInfo,
    kinds: Vec<FaultKind>,
) -> anyhow::Result<bool> {
    let start = Instant::now();
    let history = Arc::new(History::create(&out.join("history.jsonl"), start)?);
    let samples: Arc<Mutex<Vec<StatusSample>>> = Arc::default();
    let sampler_stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_statuses(c.clone(), history.clone(), sampler_stop.clone(), samples.clone()));
    let archive = Arc::new(Mutex::new(Archive::new(c.len())));
    let archiver = tokio::spawn(crate::archive::keep(c.clone(), archive.clone(), sampler_stop.clone()));

    let clients = opts.clients;
    if let Err(e) = workload::deposit(&c, &history, clients as u64, opts.accounts, INITIAL_BALANCE).await {
        sampler_stop.store(true, Ordering::SeqCst);
        let _ = sampler.await;
        let _ = archiver.await;
        return Err(e);
    }
    let workload_start = history.now();

    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let readers = (clients / 4).max(1).min(clients.saturating_sub(1)).max(if clients == 1 { 0 } else { 1 });
    let writers = clients - readers;
    // The nemesis's seed first, so that the fault schedule does not depend on the client count.
    let nemesis_seed: u64 = rng.random();
    let shared = Arc::new(Shared {
        cluster: c.clone(),
        history: history.clone(),
        stats: stats.clone(),
        stop: stop.clone(),
        answered: Default::default(),
    });
    let mut tasks = Vec::new();
    for p in 0..clients {
        let seed = rng.random::<u64>();
        tasks.push(if p < writers {
            tokio::spawn(workload::transfer_client(shared.clone(), p as u64, seed, opts.accounts))
        } else {
            tokio::spawn(workload::read_client(shared.clone(), p as u64, seed, opts.accounts))
        });
    }
    // The retrier (retries of answered txn_ids, far-future commits): process clients + 1 (the
    // deposit was process `clients`).
    let retrier_seed = rng.random::<u64>();
    tasks.push(tokio::spawn(workload::retry_client(shared.clone(), clients as u64 + 1, retrier_seed, opts.accounts)));
    drop(shared);
    let mut nemesis = Nemesis::new(c.clone(), net.clone(), history.clone(), StdRng::seed_from_u64(nemesis_seed), kinds);
    nemesis.partitions = partitions_on;
    nemesis.long_outages = opts.retain_log.is_some();
    let faults = nemesis.faults.clone();
    let current = nemesis.current.clone();
    let snapshots = nemesis.snapshots.clone();
    let nemesis_task = tokio::spawn(nemesis.run(stop.clone()));

    // ---- the run, with progress ----
    let total = opts.duration;
    let bar = (opts.progress_bar && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(total.as_secs());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} s  {msg}",
            )
            .expect("a valid template"),
        );
        bar
    });
    let run_start = Instant::now();
    let mut last_line = Instant::now();
    let mut interrupted = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    while run_start.elapsed() < total {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = &mut ctrl_c => {
                interrupted = true;
                println!("torture: interrupted: stopping the workload, healing and checking what ran");
                break;
            }
        }
        let msg = format!(
            "commits {} aborts {} info {} | {} | fault: {}",
            stats.committed.load(Ordering::Relaxed),
            stats.aborted_total(),
            stats.indeterminate.load(Ordering::Relaxed),
            describe_leader(&samples),
            current.lock().unwrap()
        );
        match &bar {
            Some(bar) => {
                bar.set_position(run_start.elapsed().as_secs().min(total.as_secs()));
                bar.set_message(msg);
            }
            None if last_line.elapsed() >= Duration::from_secs(10) => {
                last_line = Instant::now();
                println!("[{:>4} s / {} s] {msg}", run_start.elapsed().as_secs(), total.as_secs());
            }
            None => {}
        }
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let workload_end = history.now();
    stop.store(true, Ordering::SeqCst);
    println!(
        "torture: workload stopped after {:.0} s; healing every fault and letting the clients finish",
        run_start.elapsed().as_secs_f64()
    );

    // ---- heal, drain, converge ----
    let fault_records: Vec<FaultRecord> = nemesis_task.await.unwrap_or_else(|_| faults.lock().unwrap().clone());
    let drain_deadline = Instant::now() + CLIENT_DRAIN;
    for t in &mut tasks {
        let left = drain_deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, &mut *t).await.is_err() {
            t.abort();
            let _ = t.await;
        }
    }
    let never = AtomicBool::new(false);
    let mut late_findings: Vec<(String, String)> = Vec::new();
    match nemesis::wait_whole(&c, FINAL_RECOVERY, &never).await {
        Ok(()) => println!("torture: the cluster is whole again (every node a member, writes available)"),
        Err(e) => {
            println!("torture: the cluster is NOT whole {} s after healing: {e}", FINAL_RECOVERY.as_secs());
            late_findings.push((
                "not_whole_after_healing".into(),
                format!("{} s after the last fault healed: {e}", FINAL_RECOVERY.as_secs()),
            ));
        }
    }
    if let Err(e) = wait_converged(&c, Duration::from_secs(30)).await {
        late_findings
            .push(("not_converged".into(), format!("the nodes did not reach the same applied LSN within 30 s: {e}")));
    }
    sampler_stop.store(true, Ordering::SeqCst);
    let _ = sampler.await;
    let _ = archiver.await;
    crate::archive::read_all(&c, &archive).await;
    history.finish().map_err(|e| anyhow::anyhow!(e))?;
    let log_sizes = log_sizes(&c).await;
    if let Some(bound) = opts.retain_log {
        for (i, size) in log_sizes.iter().enumerate() {
            if let Some(size) = size.filter(|&n| n > bound + ONE_ROUND) {
                late_findings.push((
                    "log_unbounded".into(),
                    format!("node{i}'s log holds {size} entries at the end, above --retain-log {bound} plus one round"),
                ));
            }
        }
    }
    let snapshot_rebuilds = snapshot_rebuilds(&c);

    // ---- check ----
    let mut nodes = Vec::new();
    for i in 0..c.len() {
        nodes.push(node_state(&c, i).await);
    }
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    let snapshots = std::mem::take(&mut *snapshots.lock().unwrap());
    // The durability floor: as given, else the highest the agents report, else the default.
    let min_copies = opts
        .min_copies
        .or_else(|| samples.iter().filter_map(|s| s.min_copies).max().map(|n| n as usize))
        .unwrap_or(checker::DEFAULT_MIN_COPIES);
    write_json(&out.join("run.json"), &RunInfo { min_copies: Some(min_copies), ..info.clone() })?;
    write_json(&out.join("final-state.json"), &nodes)?;
    write_json(&out.join("samples.json"), &samples)?;
    write_json(&out.join("snapshots.json"), &snapshots)?;
    let archive = std::mem::take(&mut *archive.lock().unwrap());
    write_json(&out.join("archive.json"), &archive)?;
    write_json(&out.join("faults.json"), &fault_records)?;
    let ops = history.ops();
    println!(
        "torture: checking {} history operations against {} nodes and {} log snapshots (min_copies {min_copies})",
        ops.len(),
        nodes.len(),
        snapshots.len()
    );
    let input = CheckInput {
        accounts: opts.accounts,
        initial_balance: INITIAL_BALANCE,
        ops,
        nodes,
        samples,
        min_copies,
        snapshots,
        archive,
    };
    let mut verdict = checker::check(&input);
    for f in fault_records.iter().filter(|f| f.error.is_some()) {
        add_finding(
            &mut verdict,
            "recovery_failed",
            format!("{} at {:.1} s: {}", f.label(), f.start as f64 / 1e9, f.error.as_deref().unwrap_or("")),
        );
    }
    for (check, message) in late_findings {
        add_finding(&mut verdict, &check, message);
    }
    if interrupted {
        verdict.warnings.push(Finding {
            check: "interrupted".into(),
            message: "the run was interrupted (Ctrl-C)".into(),
            txns: vec![],
        });
    }

    // ---- report ----
    let availability: Availability = report::availability(&input.ops, &fault_records, workload_start, workload_end);
    // Every kind the run could inject, those that never came up included.
    let mut fault_counts: BTreeMap<String, u64> = info.fault_kinds.iter().map(|k| (k.name().to_string(), 0)).collect();
    let mut fault_pairs: BTreeMap<String, u64> = BTreeMap::new();
    for f in &fault_records {
        let key = if f.note.starts_with("skipped") {
            format!("{} (skipped)", f.kind.name())
        } else {
            f.kind.name().to_string()
        };
        *fault_counts.entry(key).or_default() += 1;
        if let Some(pair) = f.pair_name() {
            *fault_pairs.entry(pair).or_default() += 1;
        }
    }
    let load = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
    let surprises = std::mem::take(&mut *stats.surprises.lock().unwrap());
    let summary = Summary {
        seed: opts.seed,
        duration_s: workload_end.saturating_sub(workload_start) as f64 / 1e9,
        clients,
        transfer_clients: writers,
        read_clients: readers,
        accounts: opts.accounts,
        clock_skew: info.clock_skew.clone(),
        partitions: info.partitions.clone(),
        cluster: format!(
            "{}{}",
            if info.hosts.is_empty() {
                format!("{} nodes and a supervisor (state file) on 127.0.0.1", c.len())
            } else {
                format!(
                    "on hosts: {} nodes, {} supervisors on etcd, {} etcd members, each in its own network namespace",
                    c.len(),
                    c.supervisor_count(),
                    c.etcd_len()
                )
            },
            if info.tls { ", over mutual TLS" } else { "" }
        ),
        transfers_attempted: stats.attempted.load(Ordering::Relaxed),
        committed: stats.committed.load(Ordering::Relaxed),
        aborted: stats.aborted.lock().unwrap().clone(),
        read_unavailable: stats.read_unavailable.load(Ordering::Relaxed),
        indeterminate: stats.indeterminate.load(Ordering::Relaxed),
        indeterminate_committed: verdict.counts.indeterminate_committed,
        read_only_ok: stats.ro_ok.load(Ordering::Relaxed),
        read_only_failed: stats.ro_failed.load(Ordering::Relaxed),
        read_only_indeterminate: stats.ro_info.load(Ordering::Relaxed),
        faults: fault_counts,
        fault_pairs,
        fault_errors: fault_records
            .iter()
            .filter_map(|f| f.error.as_ref().map(|e| format!("{}: {e}", f.label())))
            .collect(),
        surprises: surprises.len(),
        retries: load(&stats.retries),
        retries_after_failover: load(&stats.retries_after_failover),
        retries_same: load(&stats.retries_same),
        retries_changed: load(&stats.retries_changed),
        retries_no_outcome: load(&stats.retries_no_outcome),
        future_ts_sent: load(&stats.future_ts_sent),
        future_ts_refused: load(&stats.future_ts_refused),
        future_ts_acked: load(&stats.future_ts_acked),
        future_ts_other: load(&stats.future_ts_other),
        min_copies,
        snapshots: verdict.counts.snapshots,
        retain_log: opts.retain_log,
        log_sizes,
        snapshot_rebuilds,
        planned: crate::planned::summarize(fault_records.iter().flat_map(|f| &f.calls)),
    };
    write_json(
        &out.join("verdict.json"),
        &serde_json::json!({
            "valid": verdict.valid,
            "verdict": verdict,
            "summary": summary,
            "availability": availability,
            "faults": fault_records,
            "surprises": surprises,
        }),
    )?;
    let title = format!(
        "Acknowledged commits per second, seed {}, {} clients{}",
        opts.seed,
        clients,
        info.clock_skew.as_ref().map_or(String::new(), |s| format!(", clock skew {s}"))
    );
    let end_s = history.now() as f64 / 1e9;
    if let Err(e) = report::plot(&out.join("throughput.svg"), &title, &availability, &fault_records, end_s) {
        eprintln!("torture: cannot draw the plot: {e}");
    }
    let table = report::table(&summary, &verdict, &availability, out);
    fs::write(out.join("summary.txt"), &table)?;
    println!("{table}");
    for s in surprises.iter().take(5) {
        println!("  unexpected answer: {s}");
    }
    Ok(verdict.valid)
}
