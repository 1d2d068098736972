//! `./setup.sh bench`: our three-node cluster against (a) one plain PostgreSQL and (b) a primary
//! with two synchronous standbys (`ANY 2`, `remote_apply`), on this machine, in one run; then
//! failover and recovery times of our cluster, and the rebuild of a wiped node from the leader's
//! snapshot (on a cluster of its own, [`rebuild`]). Prints a table, writes JSON, Markdown and an
//! SVG plot to `bench/results/`, and ends with `vs synchronous replication at 32 clients:
//! <ratio>x`.

mod control_plane;
mod load;
mod ours;
mod pgbench;
mod procs;
mod rebuild;
mod report;
mod rounds;
mod stats;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::load::{Limit, Live, Workload, ACCOUNTS};
use crate::ours::Ours;
use crate::procs::{wait_for, PgServer, Workspace};
use crate::rebuild::RebuildSize;

/// Our cluster against PostgreSQL's own replication on this machine.
#[derive(Parser, Debug, Clone)]
#[command(version)]
struct Args {
    /// 5 s per step instead of 20, a recovery after 10,000 missed transactions instead of
    /// 100,000, and a rebuild of 100,000 accounts 10,000 entries behind instead of 1,000,000
    /// and 100,000.
    #[arg(long)]
    quick: bool,
    /// Seconds per step (overrides --quick's and the default 20).
    #[arg(long)]
    duration: Option<u64>,
    /// Client counts.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,64")]
    clients: Vec<usize>,
    /// Which setups to run: ours, plain (a), sync (b); also ours-tls (ours over mutual TLS).
    #[arg(long, value_delimiter = ',', default_value = "ours,plain,sync")]
    setups: Vec<String>,
    /// Failovers to time (the median is reported); 0 skips them.
    #[arg(long, default_value_t = 5)]
    failovers: usize,
    /// Transactions a stopped node misses before it rejoins (default 100,000; 10,000 with
    /// --quick); 0 skips the recovery figure.
    #[arg(long)]
    missed: Option<u64>,
    /// Accounts of the rebuild figure (default 1,000,000; 100,000 with --quick): a fresh
    /// cluster of ours with `--retain-log 5000` loads them, a replica is killed and its
    /// PostgreSQL wiped, and its restart is timed until it is a member again (rebuilt from the
    /// leader's snapshot); 0 skips the figure.
    #[arg(long)]
    rebuild_accounts: Option<u64>,
    /// Log entries the wiped node falls behind the leader's log horizon in the rebuild figure
    /// (default 100,000; 10,000 with --quick): that many plus the 5,000 the leader keeps
    /// commit while it is down.
    #[arg(long)]
    rebuild_behind: Option<u64>,
    /// Skip the throughput and latency steps (and the idle CPU figure): with --failovers 0
    /// --missed 0, a run measures the rebuild figure alone.
    #[arg(long)]
    no_steps: bool,
    /// Where the agent and supervisor binaries are (default: beside this program).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Where results go (default: the crate's results/ folder).
    #[arg(long)]
    results_dir: Option<PathBuf>,
}

/// One measured step: one setup, one workload, one client count.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub setup: String,
    pub workload: String,
    pub clients: usize,
    pub duration_s: f64,
    pub committed: u64,
    /// ABORTs (409) for ours, failed (serialization) transactions for pgbench.
    pub aborted: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub tps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// CPU used by the load generator: this process for ours, pgbench for the peers.
    pub loadgen_cpu_s: f64,
    pub agents_cpu_s: Option<f64>,
    pub postgres_cpu_s: f64,
    /// The fraction of all cores busy during the step, whoever used them.
    pub host_busy: f64,
    /// Largest resident memory of each agent seen during the step, MiB.
    pub agent_rss_mib: Option<Vec<f64>>,
    /// Ours only: the leader's rounds during the step (count, batch size, phase times).
    pub rounds: Option<rounds::Rounds>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failover {
    /// SIGKILL of the leader agent to the first acknowledged commit on the new leader.
    pub samples_ms: Vec<f64>,
    pub median_ms: f64,
    /// The supervisor's `unavailable_ms` of the same failovers.
    pub supervisor_unavailable_ms: Vec<u64>,
    /// Restart of the killed agent to its being a member again.
    pub rejoin_ms: Vec<f64>,
}

/// Planned switchovers (`POST /switchover` to the next member) under a light load.
#[derive(Debug, Clone, Serialize)]
pub struct Switchover {
    /// The supervisor's `writes_paused_ms`: the leader's pause to the target leading.
    pub paused_ms: Vec<u64>,
    pub median_paused_ms: f64,
    /// The request sent to the first commit acknowledged by the new leader, as a client sees it.
    pub first_commit_ms: Vec<f64>,
    /// Clients committing meanwhile.
    pub background_clients: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    pub missed: u64,
    pub load_tps: f64,
    /// Commits refused while the leader and supervisor dealt with the killed member.
    pub load_errors: u64,
    /// Restart of the agent to its being in `members` again.
    pub rejoin_ms: f64,
    pub supervisor_duration_ms: Option<u64>,
    pub commit_pause_ms: Option<u64>,
    pub entries_applied: Option<u64>,
    pub failed_attempts: usize,
    /// The background load (8 clients) during the rejoin: its slowest and p99 commit.
    pub background_clients: usize,
    pub background_max_ms: f64,
    pub background_p99_ms: f64,
}

/// A replica wiped while down, then behind the leader's log horizon, rebuilt from the leader's
/// snapshot under a background load.
#[derive(Debug, Clone, Serialize)]
pub struct Rebuild {
    /// Accounts in the table (loaded before the node was wiped).
    pub accounts: u64,
    /// Entries committed while the node was down beyond the ones the leader keeps.
    pub behind: u64,
    /// The agents' `--retain-log` (with `--retain-log-secs 0`).
    pub retain_log: u64,
    /// Seconds the accounts took to load (`MAX_SET_LEN` per commit, several in parallel).
    pub load_s: f64,
    /// Blind transfers committed while the node was down (`behind` + `retain_log`), per second.
    pub down_tps: f64,
    /// The node's applied LSN when it was killed, and the leader's log horizon (the last LSN
    /// trimmed) when it was restarted.
    pub node_lsn_before: i64,
    pub horizon_lsn: i64,
    /// Restart of the agent to its being in `members` again.
    pub member_ms: f64,
    /// Restart of the agent to its being a member with its applied LSN at the leader's (the
    /// leader's as of when it became a member, both from the supervisor's polls).
    pub rejoin_ms: f64,
    /// The supervisor's report of the recovery that succeeded.
    pub supervisor_duration_ms: Option<u64>,
    pub commit_pause_ms: Option<u64>,
    pub snapshot_lsn: i64,
    pub entries_applied: Option<u64>,
    /// Recoveries of the node that failed before (and their last message).
    pub failed_attempts: usize,
    pub last_failure: Option<String>,
    /// From the node's agent log: how long its last snapshot load took ("loaded the leader's
    /// snapshot"), and how many snapshots it loaded.
    pub snapshot_load_ms: Option<u64>,
    pub snapshots_loaded: usize,
    /// The background load: clients, commits per second before the restart and from the
    /// restart until the node rejoined, errors, and its slowest and p99 commit.
    pub background_clients: usize,
    pub background_tps_before: f64,
    pub background_tps: f64,
    pub background_errors: u64,
    pub background_max_ms: f64,
    pub background_p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub started_at: String,
    pub quick: bool,
    pub duration_s: u64,
    pub cores: usize,
    pub loadavg_at_start: String,
    pub postgres: String,
    pub steps: Vec<Step>,
    pub failover: Option<Failover>,
    pub switchover: Option<Switchover>,
    pub recovery: Option<Recovery>,
    pub rebuild: Option<Rebuild>,
    pub failover_error: Option<String>,
    pub switchover_error: Option<String>,
    pub recovery_error: Option<String>,
    pub rebuild_error: Option<String>,
    /// Failover with the configuration in etcd and two supervisors (one host; across hosts).
    pub control_plane: Vec<control_plane::ControlPlaneFailover>,
    pub control_plane_errors: Vec<String>,
    /// Our cluster with no load (the supervisor still polls): % of one core.
    pub idle_cpu: Option<IdleCpu>,
    pub targets: Vec<report::Target>,
    pub vs_sync_at_32: Option<f64>,
}

/// CPU used by our idle cluster, as % of one core.
#[derive(Debug, Clone, Serialize)]
pub struct IdleCpu {
    pub seconds: f64,
    pub agents_pct: f64,
    pub supervisor_pct: f64,
    pub postgres_pct: f64,
}

pub const SETUP_OURS: &str = "ours";
/// Ours with every connection over mutual TLS, as `RMW_TLS=1 ./setup.sh` runs it (not in the
/// default set: `--setups ours,ours-tls` compares the two).
pub const SETUP_OURS_TLS: &str = "ours-tls";
pub const SETUP_PLAIN: &str = "plain";
pub const SETUP_SYNC: &str = "sync";

const WORKLOADS: [Workload; 2] = [Workload::Blind, Workload::ReadCommit];

/// Commits in flight while a cluster of ours loads its accounts.
const LOAD_PARALLEL: usize = 4;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let code = match real_main(args).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

async fn real_main(args: Args) -> Result<()> {
    for s in &args.setups {
        if ![SETUP_OURS, SETUP_OURS_TLS, SETUP_PLAIN, SETUP_SYNC].contains(&s.as_str()) {
            bail!("--setups: unknown setup {s:?} (ours, ours-tls, plain, sync)");
        }
    }
    if args.clients.is_empty() || args.clients.contains(&0) {
        bail!("--clients: give client counts of at least 1");
    }
    let duration = Duration::from_secs(args.duration.unwrap_or(if args.quick { 5 } else { 20 }).max(1));
    let missed = args.missed.unwrap_or(if args.quick { 10_000 } else { 100_000 });
    let rebuild_size = RebuildSize {
        accounts: args.rebuild_accounts.unwrap_or(if args.quick { 100_000 } else { 1_000_000 }),
        behind: args.rebuild_behind.unwrap_or(if args.quick { 10_000 } else { 100_000 }),
    };
    if rebuild_size.accounts > 0 && rebuild_size.behind == 0 {
        bail!("--rebuild-behind: give at least 1 entry (or --rebuild-accounts 0 to skip the rebuild figure)");
    }
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?.parent().context("the benchmark's own folder")?.to_path_buf(),
    };
    let results_dir =
        args.results_dir.clone().unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"));
    let bindir = procs::find_bindir()?;
    for prog in ["initdb", "pg_ctl", "pg_basebackup", "psql", "pgbench"] {
        if !bindir.join(prog).exists() {
            bail!("{} not found (set RMW_PG_BINDIR to PostgreSQL's bin folder)", bindir.join(prog).display());
        }
    }
    let postgres = std::process::Command::new(bindir.join("postgres"))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();

    let mut ws = Workspace::create(bindir)?;
    let started_at = report::utc_now();
    let mut report = Report {
        started_at: started_at.clone(),
        quick: args.quick,
        duration_s: duration.as_secs(),
        cores: stats::cores(),
        loadavg_at_start: stats::loadavg(),
        postgres,
        steps: Vec::new(),
        failover: None,
        switchover: None,
        recovery: None,
        rebuild: None,
        failover_error: None,
        switchover_error: None,
        recovery_error: None,
        rebuild_error: None,
        control_plane: Vec::new(),
        control_plane_errors: Vec::new(),
        idle_cpu: None,
        targets: Vec::new(),
        vs_sync_at_32: None,
    };
    eprintln!(
        "bench: {} s per step, clients {:?}, setups {}; {} cores, load average {}; work folder {}",
        duration.as_secs(),
        args.clients,
        args.setups.join(","),
        report.cores,
        report.loadavg_at_start,
        ws.root.display()
    );

    let progress = Progress::new(&args, missed, rebuild_size);
    let run = run_all(&args, &mut ws, &bin_dir, duration, missed, rebuild_size, &progress, &mut report);
    let outcome = tokio::select! {
        r = run => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    progress.finish();
    if let Err(e) = outcome {
        ws.keep_logs = true;
        let logs = ws.logs.display().to_string();
        drop(ws);
        return Err(e.context(format!("the benchmark stopped; logs are in {logs}")));
    }
    drop(ws);

    report.targets = report::targets(&report, missed);
    report.vs_sync_at_32 = report::ratio(&report.steps, Workload::Blind, 32, SETUP_SYNC);
    let files = report::write_files(&report, &results_dir, &started_at);
    report::print(&report, missed, &files);
    Ok(())
}

/// The progress bars: one for the whole run, one for the step in progress.
pub struct Progress {
    multi: MultiProgress,
    overall: ProgressBar,
}

impl Progress {
    fn new(args: &Args, missed: u64, rebuild: RebuildSize) -> Progress {
        let mut steps = if args.no_steps {
            0
        } else {
            args.setups.len() as u64 * WORKLOADS.len() as u64 * args.clients.len() as u64
        };
        if args.setups.iter().any(|s| s == SETUP_OURS) {
            steps += 2 * args.failovers as u64 + u64::from(missed > 0) + u64::from(rebuild.accounts > 0);
        }
        let multi = MultiProgress::new();
        let overall = multi.add(ProgressBar::new(steps));
        overall.set_style(
            ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} steps, {elapsed_precise} {msg}")
                .expect("template")
                .progress_chars("=> "),
        );
        overall.set_prefix("bench");
        Progress { multi, overall }
    }

    fn step_bar(&self, len: u64, what: &str) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new(len));
        bar.set_style(
            ProgressStyle::with_template("{prefix:>8} [{bar:30}] {msg}").expect("template").progress_chars("=> "),
        );
        bar.set_prefix("step");
        bar.set_message(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }

    /// A line above the bars (or on stderr when they are hidden).
    fn println(&self, line: &str) {
        if self.multi.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.multi.println(line);
        }
    }

    fn set_message(&self, msg: &str) {
        self.overall.set_message(msg.to_string());
        if self.multi.is_hidden() {
            eprintln!("bench: {msg}");
        }
    }

    fn finish(&self) {
        self.overall.finish_and_clear();
        let _ = self.multi.clear();
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_all(
    args: &Args,
    ws: &mut Workspace,
    bin_dir: &std::path::Path,
    duration: Duration,
    missed: u64,
    rebuild_size: RebuildSize,
    progress: &Progress,
    report: &mut Report,
) -> Result<()> {
    let pgbench_dir = ws.pg_writable_dir("pgbench")?;
    let (blind_script, rc_script) = pgbench::write_scripts(&pgbench_dir)?;
    let scripts: BTreeMap<&str, PathBuf> =
        [(Workload::Blind.key(), blind_script), (Workload::ReadCommit.key(), rc_script)].into_iter().collect();

    for setup in &args.setups {
        match setup.as_str() {
            SETUP_OURS_TLS | SETUP_PLAIN | SETUP_SYNC if args.no_steps => {}
            SETUP_OURS_TLS => {
                // Throughput and latency only: the failover figures are the plain cluster's.
                let mut ours = start_ours(ws, bin_dir, true, progress).await?;
                run_ours_steps(ws, &mut ours, SETUP_OURS_TLS, args, duration, progress, report).await?;
                ours.stop();
            }
            SETUP_OURS => {
                if !args.no_steps || args.failovers > 0 || missed > 0 {
                    run_ours_figures(args, ws, bin_dir, duration, missed, progress, report).await?;
                }
                if rebuild_size.accounts > 0 {
                    match rebuild::run(ws, bin_dir, rebuild_size, progress).await {
                        Ok(r) => report.rebuild = Some(r),
                        Err(e) => {
                            progress.println(&format!("rebuild figure: {e:#}"));
                            report.rebuild_error = Some(format!("{e:#}"));
                        }
                    }
                    progress.overall.inc(1);
                }
            }
            SETUP_PLAIN => {
                progress.set_message("starting (a) one PostgreSQL");
                let port = procs::free_ports(1)?[0];
                let mut pg = ws.new_server("plain", port, "")?;
                pg.start(ws)?;
                prepare_peer_data(ws, &pg)?;
                let servers = vec![pg];
                run_peer_steps(args, ws, SETUP_PLAIN, &servers, &scripts, &pgbench_dir, duration, progress, report)
                    .await?;
            }
            SETUP_SYNC => {
                progress.set_message("starting (b) a primary and two synchronous standbys");
                let servers = start_sync(ws).await?;
                run_peer_steps(args, ws, SETUP_SYNC, &servers, &scripts, &pgbench_dir, duration, progress, report)
                    .await?;
            }
            _ => unreachable!("checked in real_main"),
        }
    }
    Ok(())
}

/// Our cluster's steps and its failover, switchover and recovery figures (then the failovers
/// with etcd), on one cluster of 100,000 accounts.
async fn run_ours_figures(
    args: &Args,
    ws: &mut Workspace,
    bin_dir: &std::path::Path,
    duration: Duration,
    missed: u64,
    progress: &Progress,
    report: &mut Report,
) -> Result<()> {
    let mut ours = start_ours(ws, bin_dir, false, progress).await?;
    if !args.no_steps {
        progress.set_message("measuring the idle cluster's CPU for 3 s");
        report.idle_cpu = Some(idle_cpu(&ours, Duration::from_secs(3)).await);
        run_ours_steps(ws, &mut ours, SETUP_OURS, args, duration, progress, report).await?;
    }
    if args.failovers > 0 {
        match run_failovers(&mut ours, args.failovers, progress).await {
            Ok(f) => report.failover = Some(f),
            Err(e) => {
                progress.println(&format!("failover figure: {e:#}"));
                report.failover_error = Some(format!("{e:#}"));
            }
        }
        match run_switchovers(&mut ours, args.failovers, progress).await {
            Ok(s) => report.switchover = Some(s),
            Err(e) => {
                progress.println(&format!("switchover figure: {e:#}"));
                report.switchover_error = Some(format!("{e:#}"));
            }
        }
    }
    if missed > 0 {
        match run_recovery(&mut ours, missed, progress).await {
            Ok(r) => report.recovery = Some(r),
            Err(e) => {
                progress.println(&format!("recovery figure: {e:#}"));
                report.recovery_error = Some(format!("{e:#}"));
            }
        }
        progress.overall.inc(1);
    }
    ours.stop();
    if args.failovers > 0 {
        run_control_plane(args, bin_dir, progress, report).await;
    }
    Ok(())
}

/// The failover figures with the configuration in etcd, on each topology this machine can make.
async fn run_control_plane(args: &Args, bin_dir: &std::path::Path, progress: &Progress, report: &mut Report) {
    for topology in control_plane::Topology::available() {
        progress.set_message(&format!(
            "failover with {}: {} failovers, then {} takeovers",
            topology.label(),
            args.failovers,
            args.failovers
        ));
        match control_plane::measure(topology, args.failovers, bin_dir).await {
            Ok(f) => {
                progress.println(&format!(
                    "{:<32} failover median {:.0} ms; active supervisor and leader killed: first commit after {:.0} ms (median)",
                    topology.label(),
                    f.median_ms,
                    f.takeover_median_ms
                ));
                report.control_plane.push(f);
            }
            Err(e) => {
                progress.println(&format!("failover with {}: {e:#}", topology.label()));
                report.control_plane_errors.push(format!("{}: {e:#}", topology.label()));
            }
        }
    }
}

/// The peers' table with the same 100,000 accounts as ours.
fn prepare_peer_data(ws: &Workspace, pg: &PgServer) -> Result<()> {
    pg.psql(ws, pgbench::SCHEMA)?;
    pg.psql(
        ws,
        &format!(
            "INSERT INTO bank_balance SELECT g, 1000, 0, 0 FROM generate_series(1, {ACCOUNTS}) AS g \
             ON CONFLICT DO NOTHING"
        ),
    )?;
    pg.psql(ws, "VACUUM ANALYZE bank_balance")?;
    Ok(())
}

/// (b): the primary with its data, two standbys from `pg_basebackup -R`, then synchronous
/// replication switched on and checked.
async fn start_sync(ws: &mut Workspace) -> Result<Vec<PgServer>> {
    let ports = procs::free_ports(3)?;
    let mut primary = ws.new_server("sync-primary", ports[0], "")?;
    primary.start(ws)?;
    prepare_peer_data(ws, &primary)?;
    let mut servers = vec![primary];
    for (i, name) in ["s1", "s2"].iter().enumerate() {
        let mut standby = ws.new_standby(&servers[0], name, ports[i + 1])?;
        standby.start(ws)?;
        servers.push(standby);
    }
    let primary = &servers[0];
    primary.psql(ws, "ALTER SYSTEM SET synchronous_standby_names = 'ANY 2 (s1, s2)'")?;
    primary.psql(ws, "ALTER SYSTEM SET synchronous_commit = 'remote_apply'")?;
    primary.psql(ws, "SELECT pg_reload_conf()")?;
    let ws_ref = &*ws;
    wait_for(
        "both standbys streaming as synchronous (quorum) standbys",
        Duration::from_secs(60),
        Duration::from_millis(200),
        move || async move {
            let out = primary.psql(
                ws_ref,
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND sync_state = 'quorum' \
             AND application_name IN ('s1', 's2')",
            )?;
            let setting = primary.psql(ws_ref, "SHOW synchronous_commit")?;
            Ok((out.trim() == "2" && setting.trim() == "remote_apply").then_some(()))
        },
    )
    .await?;
    Ok(servers)
}

#[allow(clippy::too_many_arguments)]
async fn run_peer_steps(
    args: &Args,
    ws: &Workspace,
    setup: &str,
    servers: &[PgServer],
    scripts: &BTreeMap<&str, PathBuf>,
    log_dir: &std::path::Path,
    duration: Duration,
    progress: &Progress,
    report: &mut Report,
) -> Result<()> {
    let postmasters: Vec<i32> = servers.iter().filter_map(|s| s.postmaster_pid()).collect();
    for workload in WORKLOADS {
        for &clients in &args.clients {
            for s in servers {
                // Standbys take CHECKPOINT as a restartpoint; either way no flush is left
                // pending from the step before.
                s.psql(ws, "CHECKPOINT")?;
            }
            let what = format!("{} {} {} clients (pgbench)", report::setup_label(setup), workload.name(), clients);
            progress.set_message(&what);
            let bar = progress.step_bar(duration.as_millis() as u64, &what);
            let started = Instant::now();
            let ticker = {
                let bar = bar.clone();
                tokio::spawn(async move {
                    loop {
                        bar.set_position(started.elapsed().as_millis() as u64);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                })
            };
            let pg_before = stats::postgres_cpu(&postmasters);
            let host_before = stats::host_cpu();
            let result = pgbench::run(
                ws,
                &servers[0],
                &scripts[workload.key()],
                clients,
                duration,
                log_dir,
                &format!("{setup}-{}-{clients}", workload.key()),
            )
            .await;
            let host_busy = stats::host_busy(host_before, stats::host_cpu());
            let pg_cpu = stats::delta(&pg_before, &stats::postgres_cpu(&postmasters));
            ticker.abort();
            bar.finish_and_clear();
            let (outcome, tps, cpu) = result?;
            let step = Step {
                setup: setup.into(),
                workload: workload.key().into(),
                clients,
                duration_s: duration.as_secs_f64(),
                committed: outcome.committed,
                aborted: outcome.aborted,
                errors: outcome.errors,
                first_error: outcome.first_error,
                tps,
                p50_ms: outcome.latency_us.value_at_quantile(0.5) as f64 / 1000.0,
                p99_ms: outcome.latency_us.value_at_quantile(0.99) as f64 / 1000.0,
                max_ms: outcome.latency_us.max() as f64 / 1000.0,
                loadgen_cpu_s: cpu,
                agents_cpu_s: None,
                postgres_cpu_s: pg_cpu,
                host_busy,
                agent_rss_mib: None,
                rounds: None,
            };
            progress.println(&report::step_line(&step));
            report.steps.push(step);
            progress.overall.inc(1);
        }
    }
    Ok(())
}

/// Starts our cluster (over mutual TLS with `tls`) and loads the accounts through its leader.
async fn start_ours(ws: &mut Workspace, bin_dir: &std::path::Path, tls: bool, progress: &Progress) -> Result<Ours> {
    progress.set_message(if tls {
        "starting our cluster over mutual TLS (3 PostgreSQL, 3 agents, supervisor)"
    } else {
        "starting our cluster (3 PostgreSQL, 3 agents, supervisor)"
    });
    let ours =
        Ours::start(ws, bin_dir, &ours::Options { tls, prefix: if tls { "tls-" } else { "" }, ..Default::default() })
            .await?;
    progress.set_message(&format!("loading {ACCOUNTS} accounts through the leader"));
    ours.populate(ACCOUNTS, LOAD_PARALLEL, Arc::default()).await?;
    for pg in &ours.pgs {
        pg.psql(ws, "VACUUM ANALYZE bank_balance")?;
    }
    Ok(ours)
}

/// Every workload at every client count against `ours`, reported as `setup`.
async fn run_ours_steps(
    ws: &Workspace,
    ours: &mut Ours,
    setup: &str,
    args: &Args,
    duration: Duration,
    progress: &Progress,
    report: &mut Report,
) -> Result<()> {
    for workload in WORKLOADS {
        for &clients in &args.clients {
            for pg in &ours.pgs {
                pg.psql(ws, "CHECKPOINT")?;
            }
            let step = run_ours_step(ours, setup, workload, clients, duration, progress).await?;
            progress.println(&report::step_line(&step));
            report.steps.push(step);
            progress.overall.inc(1);
        }
    }
    Ok(())
}

async fn run_ours_step(
    ours: &mut Ours,
    setup: &str,
    workload: Workload,
    clients: usize,
    duration: Duration,
    progress: &Progress,
) -> Result<Step> {
    let st = ours.wait_all_members(Duration::from_secs(60)).await?;
    let leader = st.leader.context("no leader")?;
    let what = format!("{} {} {} clients", report::setup_label(setup), workload.name(), clients);
    progress.set_message(&what);
    let bar = progress.step_bar(duration.as_millis() as u64, &what);
    let live = Arc::new(Live::default());
    let agent_pids = ours.agent_pids();
    let postmasters = ours.postmaster_pids();
    let started = Instant::now();
    // Progress and the agents' resident memory, sampled while the clients run.
    let rss = Arc::new(std::sync::Mutex::new(vec![0.0f64; agent_pids.len()]));
    let sampler = {
        let bar = bar.clone();
        let live = live.clone();
        let pids = agent_pids.clone();
        let rss = rss.clone();
        let what = what.clone();
        tokio::spawn(async move {
            loop {
                sample_rss(&pids, &rss);
                let secs = started.elapsed().as_secs_f64().max(0.001);
                bar.set_position(started.elapsed().as_millis() as u64);
                bar.set_message(format!(
                    "{what}: {:.0} tps, {} aborts, {} errors",
                    live.committed.load(Ordering::Relaxed) as f64 / secs,
                    live.aborted.load(Ordering::Relaxed),
                    live.errors.load(Ordering::Relaxed)
                ));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    // Before the CPU counters start, so that the scrape is not counted as the step's work.
    let scrape_before = rounds::Scrape::fetch(&ours.http, &ours.url(&leader)).await;
    let agents_before = stats::pids_cpu(&agent_pids);
    let pg_before = stats::postgres_cpu(&postmasters);
    let host_before = stats::host_cpu();
    let self_before = stats::self_cpu_s();
    let outcome = load::run(
        &ours.endpoint(&leader),
        workload,
        clients,
        Limit { duration: Some(duration), ..Limit::default() },
        live,
    )
    .await;
    let loadgen_cpu = stats::self_cpu_s() - self_before;
    let host_busy = stats::host_busy(host_before, stats::host_cpu());
    let agents_cpu = stats::delta(&agents_before, &stats::pids_cpu(&agent_pids));
    let pg_cpu = stats::delta(&pg_before, &stats::postgres_cpu(&postmasters));
    sampler.abort();
    let rounds = scrape_before.rounds_until(&rounds::Scrape::fetch(&ours.http, &ours.url(&leader)).await);
    sample_rss(&agent_pids, &rss);
    let rss = rss.lock().unwrap().clone();
    bar.finish_and_clear();
    Ok(Step {
        setup: setup.into(),
        workload: workload.key().into(),
        clients,
        duration_s: outcome.elapsed.as_secs_f64(),
        committed: outcome.committed,
        aborted: outcome.aborted,
        errors: outcome.errors,
        first_error: outcome.first_error,
        tps: outcome.committed as f64 / outcome.elapsed.as_secs_f64(),
        p50_ms: outcome.latency_us.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: outcome.latency_us.value_at_quantile(0.99) as f64 / 1000.0,
        max_ms: outcome.latency_us.max() as f64 / 1000.0,
        loadgen_cpu_s: loadgen_cpu,
        agents_cpu_s: Some(agents_cpu),
        postgres_cpu_s: pg_cpu,
        host_busy,
        agent_rss_mib: Some(rss),
        rounds,
    })
}

/// What our cluster burns with no load at all.
async fn idle_cpu(ours: &Ours, window: Duration) -> IdleCpu {
    let agents = ours.agent_pids();
    let supervisor: Vec<i32> = ours.supervisor.pid().into_iter().collect();
    let postmasters = ours.postmaster_pids();
    let (a0, s0, p0) = (stats::pids_cpu(&agents), stats::pids_cpu(&supervisor), stats::postgres_cpu(&postmasters));
    tokio::time::sleep(window).await;
    let w = window.as_secs_f64();
    IdleCpu {
        seconds: w,
        agents_pct: 100.0 * stats::delta(&a0, &stats::pids_cpu(&agents)) / w,
        supervisor_pct: 100.0 * stats::delta(&s0, &stats::pids_cpu(&supervisor)) / w,
        postgres_pct: 100.0 * stats::delta(&p0, &stats::postgres_cpu(&postmasters)) / w,
    }
}

/// Keeps the largest resident memory seen of each agent.
fn sample_rss(pids: &[i32], rss: &std::sync::Mutex<Vec<f64>>) {
    let mut rss = rss.lock().unwrap();
    for (i, &pid) in pids.iter().enumerate() {
        if let Some(m) = stats::rss_mib(pid) {
            rss[i] = rss[i].max(m);
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// SIGKILL the leader agent, time the first acknowledged commit on the new leader, restart the
/// killed agent and wait until it is a member again; `runs` times.
async fn run_failovers(ours: &mut Ours, runs: usize, progress: &Progress) -> Result<Failover> {
    let http = load::http_client();
    let mut samples = Vec::new();
    let mut sup = Vec::new();
    let mut rejoin = Vec::new();
    for run in 1..=runs {
        let st = ours.wait_all_members(Duration::from_secs(60)).await?;
        let old = st.leader.context("no leader")?;
        let i = ours.index_of(&old)?;
        let what = format!("failover {run}/{runs}: SIGKILL of the leader agent {old}");
        progress.set_message(&what);
        let bar = progress.step_bar(1, &what);
        let others: Vec<String> = ours.addresses.iter().filter(|a| **a != old).cloned().collect();
        let killed_at_ms = now_ms();
        ours.agents[i].kill();
        let t0 = Instant::now();
        let mut account = 1;
        let elapsed = 'found: loop {
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("no commit was acknowledged within 30 s of killing the leader {old}; {}", ours.diagnose());
            }
            for a in &others {
                account = account % ACCOUNTS + 1;
                if ours.try_commit(&http, a, account).await {
                    break 'found t0.elapsed();
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        samples.push(elapsed.as_secs_f64() * 1000.0);
        if let Some(f) = ours.status().await?.last_failover.filter(|f| f.at_ms + 1000 >= killed_at_ms) {
            sup.push(f.unavailable_ms);
        }
        bar.set_message(format!("{what}: first commit after {:.0} ms; restarting it", elapsed.as_secs_f64() * 1000.0));
        let back = ours.restart_and_wait_member(i, Duration::from_secs(120)).await?;
        rejoin.push(back.as_secs_f64() * 1000.0);
        bar.finish_and_clear();
        progress.println(&format!(
            "{:<32} failover {run}/{runs}: first commit on the new leader {:.0} ms after SIGKILL; \
             the killed agent was a member again {:.0} ms after its restart",
            report::setup_label(SETUP_OURS),
            elapsed.as_secs_f64() * 1000.0,
            back.as_secs_f64() * 1000.0
        ));
        progress.overall.inc(1);
    }
    let median_ms = report::median(&samples);
    Ok(Failover { samples_ms: samples, median_ms, supervisor_unavailable_ms: sup, rejoin_ms: rejoin })
}

/// Clients committing through the switchovers, each to whichever agent takes its commit.
const SWITCHOVER_CLIENTS: usize = 4;

/// `runs` planned switchovers, each to the member after the leader, under a light load: the
/// supervisor's `writes_paused_ms`, and the request to the first commit the new leader
/// acknowledges.
async fn run_switchovers(ours: &mut Ours, runs: usize, progress: &Progress) -> Result<Switchover> {
    let http = load::http_client();
    let stop = Arc::new(AtomicBool::new(false));
    let urls: Vec<String> = ours.addresses.iter().map(|a| ours.url(a)).collect();
    let background: Vec<_> = (0..SWITCHOVER_CLIENTS as i64)
        .map(|c| {
            let (http, urls, stop) = (http.clone(), urls.clone(), stop.clone());
            tokio::spawn(async move {
                let mut account = c * 1000;
                while !stop.load(Ordering::Relaxed) {
                    for url in &urls {
                        account = account % ACCOUNTS + 1;
                        if ours::commit_one(&http, url, account).await.is_ok() {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    let result = switchovers(ours, &http, runs, progress).await;
    stop.store(true, Ordering::Relaxed);
    for task in background {
        let _ = task.await;
    }
    result
}

async fn switchovers(ours: &mut Ours, http: &reqwest::Client, runs: usize, progress: &Progress) -> Result<Switchover> {
    let (mut paused_ms, mut first_commit_ms) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let st = ours.wait_all_members(Duration::from_secs(60)).await?;
        let old = st.leader.context("no leader")?;
        let target = ours.addresses[(ours.index_of(&old)? + 1) % ours.addresses.len()].clone();
        let what = format!("switchover {run}/{runs}: {old} -> {target}");
        progress.set_message(&what);
        let t0 = Instant::now();
        let resp = http
            .post(format!("{}/switchover", ours.url(&ours.supervisor_address)))
            .json(&serde_json::json!({ "to": target }))
            .timeout(Duration::from_secs(20))
            .send()
            .await?;
        let status = resp.status();
        let answer: serde_json::Value = resp.json().await.context("the switchover's answer")?;
        if !status.is_success() {
            bail!("switchover to {target} refused ({status}): {answer}");
        }
        let paused = answer["writes_paused_ms"].as_u64().context("no writes_paused_ms in the answer")?;
        let mut account = 1;
        let first = loop {
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("the new leader {target} acknowledged no commit within 30 s; {}", ours.diagnose());
            }
            account = account % ACCOUNTS + 1;
            if ours.try_commit(http, &target, account).await {
                break t0.elapsed().as_secs_f64() * 1000.0;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        progress.println(&format!(
            "{:<32} switchover {run}/{runs}: writes paused {paused} ms; first commit on the new leader {first:.0} ms              after the request",
            report::setup_label(SETUP_OURS),
        ));
        paused_ms.push(paused);
        first_commit_ms.push(first);
        progress.overall.inc(1);
    }
    let as_f64: Vec<f64> = paused_ms.iter().map(|&p| p as f64).collect();
    Ok(Switchover {
        median_paused_ms: report::median(&as_f64),
        paused_ms,
        first_commit_ms,
        background_clients: SWITCHOVER_CLIENTS,
    })
}

/// Commits `count` blind transfers at `leader` with `clients` clients while `victim` is down,
/// the bar following them; fails unless all of them commit within 30 minutes. Returns the
/// load's outcome and how long it took.
pub async fn commit_while_down(
    ours: &Ours,
    leader: &str,
    clients: usize,
    count: u64,
    bar: &ProgressBar,
    victim: &str,
) -> Result<(load::Outcome, Duration)> {
    let live = Arc::new(Live::default());
    let ticker = {
        let (bar, live) = (bar.clone(), live.clone());
        tokio::spawn(async move {
            loop {
                bar.set_position(live.committed.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let started = Instant::now();
    let limit = Limit { commits: Some(count), duration: Some(Duration::from_secs(1800)), stop: None };
    let load = load::run(&ours.endpoint(leader), Workload::Blind, clients, limit, live).await;
    ticker.abort();
    if load.committed < count {
        bail!(
            "only {} of {count} transactions committed in 30 minutes without {victim} (first error: {:?})",
            load.committed,
            load.first_error
        );
    }
    Ok((load, started.elapsed()))
}

/// SIGKILL a replica agent, commit `missed` blind transfers without it, restart it and time
/// its way back into the member set (under a light background load).
async fn run_recovery(ours: &mut Ours, missed: u64, progress: &Progress) -> Result<Recovery> {
    let st = ours.wait_all_members(Duration::from_secs(60)).await?;
    let leader = st.leader.context("no leader")?;
    let li = ours.index_of(&leader)?;
    let victim_i = (li + 1) % ours.addresses.len();
    let victim = ours.addresses[victim_i].clone();
    let what = format!("recovery: {victim} stopped (SIGKILL) while {missed} blind transfers commit");
    progress.set_message(&what);
    let bar = progress.step_bar(missed, &what);
    ours.agents[victim_i].kill();

    let (load, load_elapsed) = commit_while_down(ours, &leader, 32, missed, &bar, &victim).await?;

    // A light load goes on while the node comes back: the commit pause is felt by it.
    bar.set_message(format!("recovery: restarting {victim} under a background load of 8 clients"));
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let leader = ours.endpoint(&leader);
        let stop = stop.clone();
        tokio::spawn(async move {
            load::run(
                &leader,
                Workload::Blind,
                8,
                Limit { stop: Some(stop), duration: Some(Duration::from_secs(600)), commits: None },
                Arc::new(Live::default()),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restart_ms = now_ms();
    let rejoined = ours.restart_and_wait_member(victim_i, Duration::from_secs(300)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let bg = background.await.context("the background load")?;
    bar.finish_and_clear();
    let rejoined = rejoined?;

    let st = ours.status().await?;
    let records: Vec<_> = st.recoveries.iter().filter(|r| r.node == victim && r.at_ms + 1000 >= restart_ms).collect();
    let ok = records.iter().rev().find(|r| r.ok);
    let failed_attempts = records.iter().filter(|r| !r.ok).count();
    if failed_attempts > 0 {
        let last = records.iter().rev().find(|r| !r.ok).map(|r| r.message.clone()).unwrap_or_default();
        progress.println(&format!("recovery: {failed_attempts} failed attempt(s) before it rejoined; last: {last}"));
    }
    let recovery = Recovery {
        missed,
        load_tps: load.committed as f64 / load_elapsed.as_secs_f64(),
        load_errors: load.errors,
        rejoin_ms: rejoined.as_secs_f64() * 1000.0,
        supervisor_duration_ms: ok.map(|r| r.duration_ms),
        commit_pause_ms: ok.and_then(|r| r.commit_pause_ms),
        entries_applied: ok.map(|r| r.entries_applied),
        failed_attempts,
        background_clients: 8,
        background_max_ms: bg.latency_us.max() as f64 / 1000.0,
        background_p99_ms: bg.latency_us.value_at_quantile(0.99) as f64 / 1000.0,
    };
    progress.println(&format!(
        "{:<32} recovery after {missed} missed transactions: member again {:.0} ms after restart \
         (supervisor: {} ms, commit pause {} ms)",
        report::setup_label(SETUP_OURS),
        recovery.rejoin_ms,
        report::opt_u64(recovery.supervisor_duration_ms),
        report::opt_u64(recovery.commit_pause_ms)
    ));
    Ok(recovery)
}
