//! The table, the targets, and the files: JSON, Markdown (for the README) and an SVG plot.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::load::Workload;
use crate::{Rebuild, Report, Step, SETUP_OURS, SETUP_OURS_TLS, SETUP_PLAIN, SETUP_SYNC};

pub fn setup_label(setup: &str) -> &'static str {
    match setup {
        SETUP_OURS => "ours (3 nodes, 2PC)",
        SETUP_OURS_TLS => "ours over mutual TLS",
        SETUP_PLAIN => "(a) one PostgreSQL",
        SETUP_SYNC => "(b) primary + 2 sync standbys",
        _ => "?",
    }
}

fn workload_label(key: &str) -> &'static str {
    Workload::of_key(key).name()
}

pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

pub fn opt_u64(v: Option<u64>) -> String {
    v.map_or_else(|| "?".into(), |v| v.to_string())
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn find<'a>(steps: &'a [Step], setup: &str, workload: Workload, clients: usize) -> Option<&'a Step> {
    steps.iter().find(|s| s.setup == setup && s.workload == workload.key() && s.clients == clients)
}

/// Our throughput as a multiple of `peer`'s, for one workload and client count.
pub fn ratio(steps: &[Step], workload: Workload, clients: usize, peer: &str) -> Option<f64> {
    let ours = find(steps, SETUP_OURS, workload, clients)?;
    let theirs = find(steps, peer, workload, clients)?;
    (theirs.tps > 0.0).then(|| ours.tps / theirs.tps)
}

fn ratio_cell(steps: &[Step], step: &Step, peer: &str) -> String {
    if step.setup != SETUP_OURS {
        return String::new();
    }
    let workload = Workload::of_key(&step.workload);
    ratio(steps, workload, step.clients, peer).map_or_else(|| "-".into(), |r| format!("{r:.2}x"))
}

fn pct_of_core(cpu_s: f64, wall_s: f64) -> String {
    if wall_s <= 0.0 {
        return "-".into();
    }
    format!("{:.0}%", 100.0 * cpu_s / wall_s)
}

/// One line per finished step, printed as the run goes.
pub fn step_line(s: &Step) -> String {
    let mut line = format!(
        "{:<32} {:<17} {:>3} clients: {:>7.0} tps, p50 {:>6.2} ms, p99 {:>7.2} ms",
        setup_label(&s.setup),
        workload_label(&s.workload),
        s.clients,
        s.tps,
        s.p50_ms,
        s.p99_ms
    );
    if s.aborted > 0 {
        let _ = write!(line, ", {} aborts", s.aborted);
    }
    if s.errors > 0 {
        let _ = write!(line, ", {} errors (first: {})", s.errors, s.first_error.as_deref().unwrap_or("?"));
    }
    line
}

/// A target from the issue, and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub target: String,
    pub measured: String,
    /// None: not measured in this run.
    pub met: Option<bool>,
}

impl Target {
    fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "not met",
            None => "not measured",
        }
    }
}

pub fn targets(r: &Report, missed: u64) -> Vec<Target> {
    let mut out = Vec::new();
    let blind = Workload::Blind;
    // The throughput targets against (b), a primary with two synchronous standbys.
    for (workload, clients, floor) in [(blind, 32, 1.0), (blind, 64, 1.2), (Workload::ReadCommit, 32, 1.0)] {
        let vs = ratio(&r.steps, workload, clients, SETUP_SYNC);
        out.push(Target {
            target: format!("{} at {clients} clients >= {floor:.1}x (b)", workload.name()),
            measured: vs.map_or_else(|| "-".into(), |v| format!("{v:.2}x")),
            met: vs.map(|v| v >= floor),
        });
    }
    let (o1, s1) = (find(&r.steps, SETUP_OURS, blind, 1), find(&r.steps, SETUP_SYNC, blind, 1));
    out.push(Target {
        target: "p50 of 1 client's blind transfer <= 1.5x (b)'s".into(),
        measured: match (o1, s1) {
            (Some(a), Some(b)) => format!("{:.2} vs {:.2} ms ({:.2}x)", a.p50_ms, b.p50_ms, a.p50_ms / b.p50_ms),
            _ => "-".into(),
        },
        met: o1.zip(s1).map(|(a, b)| a.p50_ms <= 1.5 * b.p50_ms),
    });
    out.push(Target {
        target: "failover (SIGKILL leader -> first commit), median < 1 s".into(),
        measured: r.failover.as_ref().map_or_else(|| "-".into(), |f| format!("{:.0} ms", f.median_ms)),
        met: r.failover.as_ref().map(|f| f.median_ms < 1000.0),
    });
    out.push(Target {
        target: "switchover (planned), writes paused < 500 ms in every run".into(),
        measured: r.switchover.as_ref().map_or_else(
            || "-".into(),
            |s| format!("{:.0} ms (median), {} ms at most", s.median_paused_ms, s.paused_ms.iter().max().unwrap_or(&0)),
        ),
        met: r.switchover.as_ref().map(|s| !s.paused_ms.is_empty() && s.paused_ms.iter().all(|&p| p < 500)),
    });
    for cp in &r.control_plane {
        out.push(Target {
            target: format!("failover with {}, median < 1 s", cp.topology),
            measured: format!("{:.0} ms", cp.median_ms),
            met: Some(cp.median_ms < 1000.0),
        });
        out.push(Target {
            target: format!("active supervisor and leader killed ({}), a commit < 5 s", cp.topology),
            measured: format!("{:.0} ms (median)", cp.takeover_median_ms),
            met: Some(cp.takeover_samples_ms.iter().all(|&ms| ms < 5000.0)),
        });
    }
    let scaled = if missed == 100_000 { String::new() } else { format!(" ({} missed)", thousands(missed)) };
    out.push(Target {
        target: format!("recovery of 100,000 missed transactions < 10 s{scaled}"),
        measured: r.recovery.as_ref().map_or_else(|| "-".into(), |x| format!("{:.1} s", x.rejoin_ms / 1000.0)),
        met: r.recovery.as_ref().map(|x| x.rejoin_ms < 10_000.0),
    });
    out.push(Target {
        target: "commit pause during that recovery < 100 ms".into(),
        measured: r.recovery.as_ref().and_then(|x| x.commit_pause_ms).map_or_else(|| "-".into(), |p| format!("{p} ms")),
        met: r.recovery.as_ref().and_then(|x| x.commit_pause_ms).map(|p| p < 100),
    });
    let rebuilt = r.rebuild.as_ref();
    let scaled = match rebuilt {
        Some(x) if (x.accounts, x.behind) != (1_000_000, 100_000) => {
            format!(" ({} accounts, {} behind)", thousands(x.accounts), thousands(x.behind))
        }
        _ => String::new(),
    };
    out.push(Target {
        target: format!(
            "rebuild of a wiped node, 1,000,000 accounts, 100,000 entries behind: member again < 30 s{scaled}"
        ),
        measured: rebuilt.map_or_else(|| "-".into(), |x| format!("{:.1} s", x.rejoin_ms / 1000.0)),
        met: rebuilt.map(|x| x.rejoin_ms < 30_000.0),
    });
    out.push(Target {
        target: "commit pause during that rebuild < 100 ms".into(),
        measured: rebuilt.and_then(|x| x.commit_pause_ms).map_or_else(|| "-".into(), |p| format!("{p} ms")),
        met: rebuilt.map(|x| x.commit_pause_ms.is_some_and(|p| p < 100)),
    });
    let rss: Vec<f64> = r
        .steps
        .iter()
        .filter(|s| s.setup == SETUP_OURS && s.clients == 64)
        .filter_map(|s| s.agent_rss_mib.clone())
        .fold(
            Vec::new(),
            |acc: Vec<f64>, v| {
                if acc.is_empty() {
                    v
                } else {
                    acc.iter().zip(v).map(|(a, b)| a.max(b)).collect()
                }
            },
        );
    out.push(Target {
        target: "each agent < 100 MB resident at 64 clients".into(),
        measured: if rss.is_empty() {
            "-".into()
        } else {
            format!("{} MiB", rss.iter().map(|m| format!("{m:.0}")).collect::<Vec<_>>().join(" / "))
        },
        met: (!rss.is_empty()).then(|| rss.iter().all(|&m| m * 1.048_576 < 100.0)),
    });
    out
}

const HEADERS: [&str; 11] = [
    "setup",
    "workload",
    "clients",
    "tps",
    "p50 ms",
    "p99 ms",
    "aborts",
    "loadgen cpu",
    "host busy",
    "vs (a)",
    "vs (b)",
];

fn rows(r: &Report) -> Vec<[String; 11]> {
    r.steps
        .iter()
        .map(|s| {
            [
                setup_label(&s.setup).to_string(),
                workload_label(&s.workload).to_string(),
                s.clients.to_string(),
                format!("{:.0}", s.tps),
                format!("{:.2}", s.p50_ms),
                format!("{:.2}", s.p99_ms),
                if s.workload == Workload::Blind.key() && s.aborted == 0 {
                    "-".into()
                } else {
                    format!("{:.1}%", 100.0 * s.aborted as f64 / (s.aborted + s.committed).max(1) as f64)
                },
                pct_of_core(s.loadgen_cpu_s, s.duration_s),
                format!("{:.0}%", 100.0 * s.host_busy),
                ratio_cell(&r.steps, s, SETUP_PLAIN),
                ratio_cell(&r.steps, s, SETUP_SYNC),
            ]
        })
        .collect()
}

/// The failover, recovery and memory figures as lines of text.
fn figures(r: &Report, missed: u64) -> Vec<String> {
    let mut out = Vec::new();
    match (&r.failover, &r.failover_error) {
        (Some(f), _) => out.push(format!(
            "failover: SIGKILL of the leader agent -> first acknowledged commit on the new leader: median {:.0} ms \
             over {} ({} ms); the supervisor's unavailable_ms: {}; the killed agent was a member again {} ms after \
             its restart",
            f.median_ms,
            f.samples_ms.len(),
            f.samples_ms.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(", "),
            f.supervisor_unavailable_ms.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", "),
            f.rejoin_ms.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(", "),
        )),
        (None, Some(e)) => out.push(format!("failover: not measured: {e}")),
        (None, None) => {}
    }
    let list = |v: &[f64]| v.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(", ");
    match (&r.switchover, &r.switchover_error) {
        (Some(s), _) => out.push(format!(
            "switchover: POST /switchover to the next member with {} clients committing: writes paused {} ms              (the supervisor's writes_paused_ms); first commit acknowledged by the new leader {} ms after the request",
            s.background_clients,
            s.paused_ms.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", "),
            list(&s.first_commit_ms),
        )),
        (None, Some(e)) => out.push(format!("switchover: not measured: {e}")),
        (None, None) => {}
    }
    for cp in &r.control_plane {
        out.push(format!(
            "failover with {}: SIGKILL of the leader agent -> first acknowledged commit elsewhere: median {:.0} ms \
             over {} ({} ms); SIGKILL of the active supervisor, then of the leader agent -> first commit: median \
             {:.0} ms over {} ({} ms)",
            cp.topology,
            cp.median_ms,
            cp.samples_ms.len(),
            list(&cp.samples_ms),
            cp.takeover_median_ms,
            cp.takeover_samples_ms.len(),
            list(&cp.takeover_samples_ms),
        ));
    }
    for e in &r.control_plane_errors {
        out.push(format!("failover with etcd: not measured: {e}"));
    }
    let quick = if missed < 100_000 { " (fewer than the target's 100,000: --quick or --missed)" } else { "" };
    match (&r.recovery, &r.recovery_error) {
        (Some(x), _) => out.push(format!(
            "recovery: a replica agent killed while {} blind transfers committed{quick} ({:.0} tps without it, {} \
             refused meanwhile) was a member again {:.0} ms after its restart; the supervisor's record: {} ms, {} \
             entries applied, commit pause {} ms{}; the slowest commit of the {} background clients meanwhile: \
             {:.0} ms (p99 {:.1} ms)",
            thousands(x.missed),
            x.load_tps,
            x.load_errors,
            x.rejoin_ms,
            opt_u64(x.supervisor_duration_ms),
            x.entries_applied.map_or_else(|| "?".into(), thousands),
            opt_u64(x.commit_pause_ms),
            if x.failed_attempts > 0 {
                format!(" ({} failed attempts before)", x.failed_attempts)
            } else {
                String::new()
            },
            x.background_clients,
            x.background_max_ms,
            x.background_p99_ms
        )),
        (None, Some(e)) => out.push(format!("recovery: not measured: {e}")),
        (None, None) => {}
    }
    match (&r.rebuild, &r.rebuild_error) {
        (Some(x), _) => out.push(rebuild_line(x)),
        (None, Some(e)) => out
            .push(format!("rebuild of a wiped node (target: member again < 30 s, pause < 100 ms): not measured: {e}")),
        (None, None) => {}
    }
    for s in r.steps.iter().filter(|s| s.setup == SETUP_OURS && s.clients == 64) {
        if let Some(rss) = &s.agent_rss_mib {
            out.push(format!(
                "memory: agents' largest resident set during {} at 64 clients: {} MiB",
                workload_label(&s.workload),
                rss.iter().map(|m| format!("{m:.1}")).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    if let Some(line) = tls_line(r) {
        out.push(line);
    }
    out
}

/// The rebuild figure in one line, with its targets.
fn rebuild_line(x: &Rebuild) -> String {
    let quick = if (x.accounts, x.behind) == (1_000_000, 100_000) {
        ""
    } else {
        " (not the target's 1,000,000 accounts and 100,000 entries: --quick or --rebuild-*)"
    };
    format!(
        "rebuild of a wiped node (target: member again < 30 s, pause < 100 ms): a replica killed and its PostgreSQL \
         wiped, {} accounts, {} log entries behind the leader's horizon{quick} (--retain-log {}, horizon at LSN {}; \
         {:.0} tps without it) was a member again {:.0} ms after its restart, in sync {:.0} ms; the supervisor's \
         record: {} ms, snapshot at LSN {}, {} entries applied after it, commit pause {} ms{}; the agent loaded the \
         snapshot in {} ms{}; the {} background clients committed {:.0} tps meanwhile ({:.0} before the restart, {} \
         errors; slowest commit {:.0} ms, p99 {:.1} ms)",
        thousands(x.accounts),
        thousands(x.behind),
        thousands(x.retain_log),
        x.horizon_lsn,
        x.down_tps,
        x.member_ms,
        x.rejoin_ms,
        opt_u64(x.supervisor_duration_ms),
        x.snapshot_lsn,
        x.entries_applied.map_or_else(|| "?".into(), thousands),
        opt_u64(x.commit_pause_ms),
        match (&x.last_failure, x.failed_attempts) {
            (Some(last), n) if n > 0 => format!(" ({n} failed attempts before; the last: {last})"),
            _ => String::new(),
        },
        opt_u64(x.snapshot_load_ms),
        if x.snapshots_loaded > 1 { format!(" (the last of {} loads)", x.snapshots_loaded) } else { String::new() },
        x.background_clients,
        x.background_tps,
        x.background_tps_before,
        x.background_errors,
        x.background_max_ms,
        x.background_p99_ms,
    )
}

/// What mutual TLS costs: each step over TLS against the same step of plain ours.
fn tls_line(r: &Report) -> Option<String> {
    let parts: Vec<String> = r
        .steps
        .iter()
        .filter(|s| s.setup == SETUP_OURS_TLS)
        .filter_map(|t| {
            let plain = find(&r.steps, SETUP_OURS, Workload::of_key(&t.workload), t.clients)?;
            (plain.tps > 0.0).then(|| {
                format!(
                    "{} {}c: {:.2}x the tps, p50 {:+.2} ms",
                    Workload::of_key(&t.workload).short(),
                    t.clients,
                    t.tps / plain.tps,
                    t.p50_ms - plain.p50_ms
                )
            })
        })
        .collect();
    (!parts.is_empty()).then(|| format!("ours over mutual TLS against plain ours: {}", parts.join("; ")))
}

/// Where the time went in ours: the leader's rounds per step (how many, how big, how long
/// each phase), and the CPU, as % of one core, of the load generator, agents and PostgreSQL.
fn profile_lines(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    let ours: Vec<&Step> = r.steps.iter().filter(|s| s.setup == SETUP_OURS).collect();
    let rounds: Vec<String> = ours
        .iter()
        .filter_map(|s| {
            let n = s.rounds.as_ref()?;
            Some(format!(
                "{} {}c: {} rounds of {:.1}, prepare {:.2} ms (own PG {:.2}), decide {:.2} ms (own COMMIT PREPARED {:.2})",
                Workload::of_key(&s.workload).short(),
                s.clients,
                n.rounds,
                n.mean_batch,
                n.prepare_ms,
                n.store_prepare_ms,
                n.decide_ms,
                n.store_commit_ms
            ))
        })
        .collect();
    if !rounds.is_empty() {
        out.push(format!("the leader's rounds (means from its /metrics): {}", rounds.join("; ")));
    }
    if !ours.is_empty() {
        let parts: Vec<String> = ours
            .iter()
            .map(|s| {
                format!(
                    "{} {}c: gen {} agents {} pg {}",
                    Workload::of_key(&s.workload).short(),
                    s.clients,
                    pct_of_core(s.loadgen_cpu_s, s.duration_s),
                    pct_of_core(s.agents_cpu_s.unwrap_or(0.0), s.duration_s),
                    pct_of_core(s.postgres_cpu_s, s.duration_s)
                )
            })
            .collect();
        out.push(format!("cpu of ours, % of one core: {}", parts.join("; ")));
    }
    if let Some(idle) = &r.idle_cpu {
        out.push(format!(
            "cpu of ours idle ({:.0} s, no load; the supervisor polls every 200 ms), % of one core: agents {:.1}%, \
             supervisor {:.1}%, pg {:.1}%",
            idle.seconds, idle.agents_pct, idle.supervisor_pct, idle.postgres_pct
        ));
    }
    let total_gen: f64 = ours.iter().map(|s| s.loadgen_cpu_s).sum();
    let total_wall: f64 = ours.iter().map(|s| s.duration_s).sum();
    let max_gen = ours.iter().map(|s| s.loadgen_cpu_s / s.duration_s).fold(0.0, f64::max);
    if total_wall > 0.0 {
        out.push(format!(
            "load generator (this program, getrusage): {total_gen:.1} s of CPU over {total_wall:.0} s of steps \
             against ours, at most {:.0}% of one core in a step, of the machine's {} cores",
            100.0 * max_gen,
            r.cores
        ));
    }
    let peers: Vec<&Step> = r.steps.iter().filter(|s| s.setup != SETUP_OURS && s.setup != SETUP_OURS_TLS).collect();
    if !peers.is_empty() {
        let pg_gen: f64 = peers.iter().map(|s| s.loadgen_cpu_s).sum();
        let pg_wall: f64 = peers.iter().map(|s| s.duration_s).sum();
        out.push(format!(
            "pgbench (the peers' load generator): {pg_gen:.1} s of CPU over {pg_wall:.0} s of steps, at most {:.0}% \
             of one core in a step",
            100.0 * peers.iter().map(|s| s.loadgen_cpu_s / s.duration_s).fold(0.0, f64::max)
        ));
    }
    out
}

fn text_table(headers: &[&str], rows: &[Vec<String>], right_from: usize) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            if i >= right_from {
                let _ = write!(out, "{c:>w$}", w = widths[i]);
            } else {
                let _ = write!(out, "{c:<w$}", w = widths[i]);
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(&headers.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    out.push('\n');
    out.push_str(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  "));
    out.push('\n');
    for r in rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out
}

fn md_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n", headers.join(" | "));
    out.push_str(&format!("|{}\n", headers.iter().map(|_| "---|").collect::<String>()));
    for r in rows {
        out.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    out
}

fn target_rows(r: &Report) -> Vec<Vec<String>> {
    r.targets.iter().map(|t| vec![t.target.clone(), t.measured.clone(), t.verdict().to_string()]).collect()
}

fn final_line(r: &Report) -> String {
    format!(
        "vs synchronous replication at 32 clients: {}",
        r.vs_sync_at_32.map_or_else(|| "n/a".into(), |v| format!("{v:.2}x"))
    )
}

fn header_line(r: &Report) -> String {
    format!(
        "{} UTC, {}, {} s per step{}, {} cores, load average at start {}",
        r.started_at.replace('T', " ").trim_end_matches('Z'),
        r.postgres,
        r.duration_s,
        if r.quick { " (--quick)" } else { "" },
        r.cores,
        r.loadavg_at_start
    )
}

pub fn print(r: &Report, missed: u64, files: &[PathBuf]) {
    let rows: Vec<Vec<String>> = rows(r).into_iter().map(|a| a.to_vec()).collect();
    println!();
    println!("{}", header_line(r));
    println!();
    if !rows.is_empty() {
        print!("{}", text_table(&HEADERS, &rows, 2));
    }
    for f in figures(r, missed) {
        println!("{f}");
    }
    println!();
    print!("{}", text_table(&["target", "measured", "result"], &target_rows(r), 99));
    println!();
    for l in profile_lines(r) {
        println!("{l}");
    }
    println!(
        "host busy: the share of all cores in use during the step, by anything on the machine (other work running \
         at the same time shows up there)"
    );
    for f in files {
        println!("written: {}", f.display());
    }
    println!("{}", final_line(r));
}

pub fn markdown(r: &Report, missed: u64) -> String {
    let rows: Vec<Vec<String>> = rows(r).into_iter().map(|a| a.to_vec()).collect();
    let mut out = format!("{}\n\n", header_line(r));
    if !rows.is_empty() {
        out.push_str(&md_table(&HEADERS, &rows));
        out.push('\n');
    }
    for f in figures(r, missed) {
        out.push_str(&format!("- {f}\n"));
    }
    out.push('\n');
    out.push_str(&md_table(&["target", "measured", "result"], &target_rows(r)));
    out.push('\n');
    for l in profile_lines(r) {
        out.push_str(&format!("- {l}\n"));
    }
    out.push_str(&format!("\n`{}`\n", final_line(r)));
    out
}

/// Writes `<stamp>.json`, `<stamp>.md` and `<stamp>.svg`; returns what was written (a failure
/// is reported on stderr and does not stop the report).
pub fn write_files(r: &Report, dir: &Path, stamp: &str) -> Vec<PathBuf> {
    let mut written = Vec::new();
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("bench: cannot create {}: {e}", dir.display());
        return written;
    }
    let stamp = stamp.replace(':', "-");
    let missed = r.recovery.as_ref().map_or(100_000, |x| x.missed);
    let json = dir.join(format!("{stamp}.json"));
    match serde_json::to_string_pretty(r).map(|s| std::fs::write(&json, s)) {
        Ok(Ok(())) => written.push(json),
        Ok(Err(e)) => eprintln!("bench: cannot write {}: {e}", json.display()),
        Err(e) => eprintln!("bench: cannot encode the results: {e}"),
    }
    let md = dir.join(format!("{stamp}.md"));
    match std::fs::write(&md, markdown(r, missed)) {
        Ok(()) => written.push(md),
        Err(e) => eprintln!("bench: cannot write {}: {e}", md.display()),
    }
    let svg = dir.join(format!("{stamp}.svg"));
    if r.steps.is_empty() {
        // Nothing to draw: a run of figures only (--no-steps).
        return written;
    }
    match plot(r, &svg) {
        Ok(()) => written.push(svg),
        Err(e) => eprintln!("bench: cannot draw {}: {e}", svg.display()),
    }
    written
}

/// Throughput against clients, one line per setup and workload.
fn plot(r: &Report, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;

    let max_clients = r.steps.iter().map(|s| s.clients).max().unwrap_or(1) as f64;
    // Headroom above the highest line for the legend.
    let max_tps = r.steps.iter().map(|s| s.tps).fold(0.0, f64::max).max(1.0);
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Throughput against clients ({} UTC)", r.started_at.replace('T', " ").trim_end_matches('Z')),
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..max_clients * 1.05, 0f64..max_tps * 1.45)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc("clients")
        .y_desc("transactions per second")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    let series = [
        (SETUP_OURS, Workload::Blind, RGBColor(31, 119, 180)),
        (SETUP_OURS, Workload::ReadCommit, RGBColor(120, 170, 220)),
        (SETUP_OURS_TLS, Workload::Blind, RGBColor(148, 103, 189)),
        (SETUP_OURS_TLS, Workload::ReadCommit, RGBColor(197, 176, 213)),
        (SETUP_PLAIN, Workload::Blind, RGBColor(44, 160, 44)),
        (SETUP_PLAIN, Workload::ReadCommit, RGBColor(140, 210, 140)),
        (SETUP_SYNC, Workload::Blind, RGBColor(214, 39, 40)),
        (SETUP_SYNC, Workload::ReadCommit, RGBColor(240, 140, 140)),
    ];
    for (setup, workload, color) in series {
        let mut points: Vec<(f64, f64)> = r
            .steps
            .iter()
            .filter(|s| s.setup == setup && s.workload == workload.key())
            .map(|s| (s.clients as f64, s.tps))
            .collect();
        if points.is_empty() {
            continue;
        }
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let style = ShapeStyle { color: color.to_rgba(), filled: true, stroke_width: 2 };
        chart
            .draw_series(LineSeries::new(points.clone(), style))?
            .label(format!("{}, {}", setup_label(setup), workload.name()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, style)))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The current UTC time as `2025-01-31T12:34:56Z`.
pub fn utc_now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(100_000), "100,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
    }

    fn empty_report() -> Report {
        Report {
            started_at: "2026-12-07T00:00:00Z".into(),
            quick: false,
            duration_s: 20,
            cores: 2,
            loadavg_at_start: "0 0 0".into(),
            postgres: "postgres 15".into(),
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
        }
    }

    fn rebuild(rejoin_ms: f64, commit_pause_ms: Option<u64>) -> Rebuild {
        Rebuild {
            accounts: 1_000_000,
            behind: 100_000,
            retain_log: 5_000,
            load_s: 60.0,
            down_tps: 3000.0,
            node_lsn_before: 1_000,
            horizon_lsn: 101_000,
            member_ms: rejoin_ms - 100.0,
            rejoin_ms,
            supervisor_duration_ms: Some(9_000),
            commit_pause_ms,
            snapshot_lsn: 106_500,
            entries_applied: Some(4_321),
            failed_attempts: 0,
            last_failure: None,
            snapshot_load_ms: Some(7_000),
            snapshots_loaded: 1,
            background_clients: 8,
            background_tps_before: 1500.0,
            background_tps: 900.0,
            background_errors: 0,
            background_max_ms: 80.0,
            background_p99_ms: 20.0,
        }
    }

    fn rebuild_targets(r: &Report) -> Vec<(String, Option<bool>)> {
        targets(r, 100_000).into_iter().filter(|t| t.target.contains("rebuild")).map(|t| (t.measured, t.met)).collect()
    }

    #[test]
    fn the_rebuild_figure_in_the_report() {
        let mut r = empty_report();
        assert_eq!(rebuild_targets(&r), vec![("-".into(), None), ("-".into(), None)], "not measured");
        r.rebuild = Some(rebuild(12_345.0, Some(40)));
        assert_eq!(rebuild_targets(&r), vec![("12.3 s".into(), Some(true)), ("40 ms".into(), Some(true))]);
        let lines = figures(&r, 100_000);
        let line = lines.iter().find(|l| l.starts_with("rebuild")).expect("a rebuild line");
        assert!(line.contains("target: member again < 30 s, pause < 100 ms"), "{line}");
        assert!(line.contains("1,000,000 accounts") && line.contains("snapshot at LSN 106500"), "{line}");
        assert!(!line.contains("not the target's"), "{line}");

        r.rebuild = Some(rebuild(31_000.0, None));
        assert_eq!(rebuild_targets(&r), vec![("31.0 s".into(), Some(false)), ("-".into(), Some(false))]);

        r.rebuild = None;
        r.rebuild_error = Some("no snapshot_lsn".into());
        let lines = figures(&r, 100_000);
        assert!(
            lines.iter().any(|l| l.starts_with("rebuild") && l.ends_with("not measured: no snapshot_lsn")),
            "{lines:?}"
        );
        assert!(markdown(&r, 100_000).contains("not measured: no snapshot_lsn"));
    }

    #[test]
    fn utc_format() {
        let s = utc_now();
        assert_eq!(s.len(), 20, "{s}");
        assert!(s.ends_with('Z') && s.as_bytes()[10] == b'T', "{s}");
    }
}
