//! What a run reports: availability (commits per second, write outages and the fault behind
//! each), the summary table, the verdict as JSON and the throughput plot.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::checker::{Verdict, NEW_CHECKS};
use crate::history::{Op, OpType, TxnKind};
use crate::nemesis::{FaultKind, FaultRecord};

/// A stretch of time without any acknowledged commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outage {
    /// Seconds since the run started.
    pub start_s: f64,
    pub end_s: f64,
    pub duration_s: f64,
    /// The fault that overlaps it most (label and what was done), or why none.
    pub cause: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Availability {
    /// Acknowledged transfers completed in each second of the run.
    pub commits_per_second: Vec<u64>,
    /// Outages of at least [`OUTAGE_MIN_S`], longest first (at most 10).
    pub outages: Vec<Outage>,
}

impl Availability {
    pub fn longest(&self) -> Option<&Outage> {
        self.outages.first()
    }
}

/// Shorter gaps between commits are not outages (a busy moment, a conflict streak).
pub const OUTAGE_MIN_S: f64 = 0.5;

/// Availability from the history's acknowledged transfers between `from_ns` (the workload's
/// start) and `to_ns` (its end).
pub fn availability(ops: &[Op], faults: &[FaultRecord], from_ns: u64, to_ns: u64) -> Availability {
    let mut times: Vec<u64> =
        ops.iter().filter(|o| o.kind == OpType::Ok && o.txn == TxnKind::Transfer).map(|o| o.time).collect();
    times.sort_unstable();
    let seconds = (to_ns / 1_000_000_000 + 1) as usize;
    let mut per_second = vec![0u64; seconds];
    for &t in &times {
        if let Some(slot) = per_second.get_mut((t / 1_000_000_000) as usize) {
            *slot += 1;
        }
    }
    let mut edges = vec![from_ns];
    edges.extend(times.iter().copied().filter(|&t| t >= from_ns && t <= to_ns));
    edges.push(to_ns);
    let mut outages: Vec<Outage> = edges
        .windows(2)
        .filter(|w| (w[1] - w[0]) as f64 / 1e9 >= OUTAGE_MIN_S)
        .map(|w| {
            let (g0, g1) = (w[0], w[1]);
            let cause = faults
                .iter()
                .map(|f| {
                    let (s, e) = (f.start, f.end(to_ns));
                    let overlap = e.min(g1).saturating_sub(s.max(g0));
                    (overlap, f)
                })
                .filter(|(o, _)| *o > 0)
                .max_by_key(|(o, _)| *o)
                .map_or_else(|| "no fault in progress".to_string(), |(_, f)| format!("{}: {}", f.label(), f.note));
            Outage { start_s: g0 as f64 / 1e9, end_s: g1 as f64 / 1e9, duration_s: (g1 - g0) as f64 / 1e9, cause }
        })
        .collect();
    outages.sort_by(|a, b| b.duration_s.total_cmp(&a.duration_s));
    outages.truncate(10);
    Availability { commits_per_second: per_second, outages }
}

/// The numbers of the summary table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    pub seed: u64,
    pub duration_s: f64,
    pub clients: usize,
    pub transfer_clients: usize,
    pub read_clients: usize,
    pub accounts: i64,
    pub clock_skew: Option<String>,
    pub partitions: String,
    pub transfers_attempted: u64,
    pub committed: u64,
    pub aborted: BTreeMap<String, u64>,
    pub read_unavailable: u64,
    pub indeterminate: u64,
    pub indeterminate_committed: usize,
    pub read_only_ok: u64,
    pub read_only_failed: u64,
    pub read_only_indeterminate: u64,
    pub faults: BTreeMap<String, u64>,
    /// Where the cluster ran (127.0.0.1, or hosts in network namespaces).
    #[serde(default)]
    pub cluster: String,
    /// How often each pair of a `two_faults` came up (`kill_leader+kill_supervisor`).
    #[serde(default)]
    pub fault_pairs: BTreeMap<String, u64>,
    pub fault_errors: Vec<String>,
    pub surprises: usize,
    /// Retries of answered txn_ids, as the retrier saw them.
    #[serde(default)]
    pub retries: u64,
    #[serde(default)]
    pub retries_after_failover: u64,
    #[serde(default)]
    pub retries_same: u64,
    #[serde(default)]
    pub retries_changed: u64,
    #[serde(default)]
    pub retries_no_outcome: u64,
    /// Commits with a far-future time_stamp.
    #[serde(default)]
    pub future_ts_sent: u64,
    #[serde(default)]
    pub future_ts_refused: u64,
    #[serde(default)]
    pub future_ts_acked: u64,
    #[serde(default)]
    pub future_ts_other: u64,
    #[serde(default)]
    pub min_copies: usize,
    /// Log snapshots taken during the run.
    #[serde(default)]
    pub snapshots: usize,
    /// The agents' `--retain-log`, if any.
    #[serde(default)]
    pub retain_log: Option<i64>,
    /// Each node's log size at the end (None: unreadable).
    #[serde(default)]
    pub log_sizes: Vec<Option<i64>>,
    /// Rebuilds of a node from the leader's snapshot, counted in the agents' logs.
    #[serde(default)]
    pub snapshot_rebuilds: usize,
    /// The operator's requests the nemesis made, per act (`switchover`, `members/remove`,
    /// `members/add`): how many were done, refused (by code), unanswered.
    #[serde(default)]
    pub planned: BTreeMap<String, String>,
}

/// The summary table, as printed at the end of a run.
pub fn table(s: &Summary, v: &Verdict, a: &Availability, out_dir: &Path) -> String {
    let mut t = String::new();
    let row = |t: &mut String, k: &str, v: String| {
        let _ = writeln!(t, "  {k:<38} {v}");
    };
    let _ = writeln!(t, "\nTorture run summary (seed {}; repeat with --seed {})", s.seed, s.seed);
    row(&mut t, "duration", format!("{:.0} s", s.duration_s));
    row(
        &mut t,
        "clients",
        format!("{} ({} transfer, {} read-only on any node)", s.clients, s.transfer_clients, s.read_clients),
    );
    row(&mut t, "accounts", s.accounts.to_string());
    row(&mut t, "clock skew", s.clock_skew.clone().unwrap_or_else(|| "none".into()));
    if !s.cluster.is_empty() {
        row(&mut t, "cluster", s.cluster.clone());
    }
    row(&mut t, "partitions", s.partitions.clone());
    row(&mut t, "transfers attempted", s.transfers_attempted.to_string());
    row(&mut t, "  committed (acknowledged)", s.committed.to_string());
    for (reason, n) in &s.aborted {
        row(&mut t, &format!("  aborted: {reason}"), n.to_string());
    }
    if s.aborted.is_empty() {
        row(&mut t, "  aborted", "0".into());
    }
    row(&mut t, "  read unavailable (not sent)", s.read_unavailable.to_string());
    row(
        &mut t,
        "  indeterminate (timed out)",
        format!("{} ({} found committed in the log)", s.indeterminate, s.indeterminate_committed),
    );
    row(
        &mut t,
        "read-only transactions",
        format!(
            "{} ok, {} refused, {} without an answer (timeout, connection refused)",
            s.read_only_ok, s.read_only_failed, s.read_only_indeterminate
        ),
    );
    row(
        &mut t,
        "retries of answered txn_ids",
        format!(
            "{} ({} right after a failover): {} same answer, {} CHANGED, {} no outcome (503, 421, no answer)",
            s.retries, s.retries_after_failover, s.retries_same, s.retries_changed, s.retries_no_outcome
        ),
    );
    row(
        &mut t,
        "far-future time_stamp commits",
        format!(
            "{}: {} refused (400 bad_timestamp), {} ACKNOWLEDGED, {} other answers",
            s.future_ts_sent, s.future_ts_refused, s.future_ts_acked, s.future_ts_other
        ),
    );
    let faults_total: u64 = s.faults.iter().filter(|(k, _)| !k.ends_with("(skipped)")).map(|(_, n)| n).sum();
    row(&mut t, "faults injected", faults_total.to_string());
    for (kind, n) in &s.faults {
        let mut value = n.to_string();
        if kind == "two_faults" && !s.fault_pairs.is_empty() {
            let pairs: Vec<String> = s.fault_pairs.iter().map(|(pair, n)| format!("{pair} x{n}")).collect();
            value += &format!(" ({})", pairs.join(", "));
        }
        row(&mut t, &format!("  {kind}"), value);
    }
    if !s.planned.is_empty() {
        row(&mut t, "planned changes (supervisor's answers)", String::new());
        for (act, outcomes) in &s.planned {
            row(&mut t, &format!("  {act}"), outcomes.clone());
        }
    }
    match a.longest() {
        Some(o) => {
            row(&mut t, "longest write outage", format!("{:.1} s (at {:.1} s, {})", o.duration_s, o.start_s, o.cause))
        }
        None => row(&mut t, "longest write outage", format!("none over {OUTAGE_MIN_S} s")),
    }
    let busy: Vec<u64> = a.commits_per_second.iter().copied().filter(|&n| n > 0).collect();
    if !busy.is_empty() {
        let mean = s.committed as f64 / s.duration_s.max(1.0);
        row(&mut t, "commits per second", format!("mean {mean:.1}, best second {}", busy.iter().max().unwrap()));
    }
    row(&mut t, "unexpected answers (API rules)", s.surprises.to_string());
    row(
        &mut t,
        "checked",
        format!(
            "{} log entries ({} recorded ABORTs), {} acknowledged commits, {} reads, {} leader samples, {} log snapshots, min_copies {}",
            v.counts.log_entries,
            v.counts.aborted_entries,
            v.counts.acknowledged_commits,
            v.counts.reads_checked,
            v.counts.leader_samples,
            v.counts.snapshots,
            v.counts.min_copies
        ),
    );
    let sizes: Vec<String> = s
        .log_sizes
        .iter()
        .enumerate()
        .map(|(i, n)| format!("node{i} {}", n.map_or("?".into(), |n| n.to_string())))
        .collect();
    row(
        &mut t,
        "log sizes at the end",
        format!(
            "{} ({}); {} rebuild(s) from a snapshot",
            sizes.join(", "),
            s.retain_log.map_or("every entry kept".into(), |n| format!("--retain-log {n}")),
            s.snapshot_rebuilds
        ),
    );
    row(&mut t, "violations by kind (newer checks)", String::new());
    for check in NEW_CHECKS {
        row(&mut t, &format!("  {check}"), v.finding_counts.get(check).copied().unwrap_or(0).to_string());
    }
    if !v.warning_counts.is_empty() {
        let w: Vec<String> = v.warning_counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
        row(&mut t, "warnings", w.join(", "));
    }
    let verdict = if v.valid {
        "CLEAN: nothing lost, nothing invented, one leader per term".to_string()
    } else {
        let f: Vec<String> = v.finding_counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
        format!("FAILED: {}", f.join(", "))
    };
    row(&mut t, "checker verdict", verdict);
    for e in &s.fault_errors {
        row(&mut t, "fault error", e.clone());
    }
    if !v.valid {
        let _ = writeln!(t, "\nFindings (first of each kind; all in verdict.json):");
        let mut shown: BTreeMap<&str, usize> = BTreeMap::new();
        for f in &v.findings {
            let n = shown.entry(f.check.as_str()).or_default();
            *n += 1;
            if *n <= 3 {
                let _ = writeln!(
                    t,
                    "  [{}] {} {}",
                    f.check,
                    f.message,
                    if f.txns.is_empty() { String::new() } else { format!("(txns: {})", f.txns.join(", ")) }
                );
            }
        }
    }
    let _ = writeln!(t, "\nOutput: {}", out_dir.display());
    t
}

fn kind_color(kind: FaultKind) -> plotters::style::RGBColor {
    use plotters::style::RGBColor;
    match kind {
        FaultKind::KillLeader => RGBColor(214, 39, 40),
        FaultKind::KillReplica => RGBColor(255, 127, 14),
        FaultKind::StopPostgres => RGBColor(148, 103, 189),
        FaultKind::PauseLeader => RGBColor(140, 86, 75),
        FaultKind::KillSupervisor => RGBColor(227, 119, 194),
        FaultKind::KillLeaderAndSupervisor => RGBColor(127, 127, 127),
        FaultKind::DownLeaderDrill => RGBColor(188, 189, 34),
        FaultKind::PartitionNode => RGBColor(23, 190, 207),
        FaultKind::PartitionLeaderFromSupervisor => RGBColor(44, 160, 44),
        FaultKind::PartitionLeaderFromReplicas => RGBColor(31, 119, 180),
        FaultKind::PartitionSupervisorFromReplicas => RGBColor(174, 199, 232),
        FaultKind::PartitionReplicaFromLeader => RGBColor(152, 223, 138),
        FaultKind::PauseReplicas => RGBColor(196, 156, 148),
        FaultKind::WipeNode => RGBColor(0, 0, 0),
        FaultKind::WipeSupervisorState => RGBColor(247, 182, 210),
        FaultKind::Switchover => RGBColor(65, 105, 225),
        FaultKind::RemoveAndAddMember => RGBColor(218, 165, 32),
        FaultKind::TwoFaults => RGBColor(255, 152, 150),
        FaultKind::CutLink => RGBColor(0, 128, 128),
        FaultKind::OneWayLoss => RGBColor(102, 194, 165),
        FaultKind::KillActiveSupervisor => RGBColor(199, 21, 133),
        FaultKind::PartitionActiveSupervisor => RGBColor(255, 187, 120),
        FaultKind::KillEtcdMember => RGBColor(128, 128, 0),
        FaultKind::PartitionEtcdLeader => RGBColor(197, 176, 213),
        FaultKind::EtcdQuorumLost => RGBColor(100, 50, 0),
    }
}

/// Commits per second over time, with every fault shaded from injection to heal (lighter until
/// the cluster was whole again).
pub fn plot(
    path: &Path,
    title: &str,
    a: &Availability,
    faults: &[FaultRecord],
    duration_s: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;

    let ymax = a.commits_per_second.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.35;
    let root = SVGBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..duration_s.max(1.0), 0f64..ymax)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc("seconds since the start")
        .y_desc("acknowledged commits per second")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    let end_ns = (duration_s * 1e9) as u64;
    let mut kinds: Vec<FaultKind> = faults.iter().map(|f| f.kind).collect();
    kinds.sort();
    kinds.dedup();
    for kind in kinds {
        let color = kind_color(kind);
        let of_kind: Vec<&FaultRecord> = faults.iter().filter(|f| f.kind == kind).collect();
        chart.draw_series(of_kind.iter().map(|f| {
            let (s, e) = (f.start as f64 / 1e9, f.end(end_ns) as f64 / 1e9);
            Rectangle::new([(s, 0.0), (e, ymax)], color.mix(0.12).filled())
        }))?;
        chart
            .draw_series(of_kind.iter().map(|f| {
                let (s, e) = (f.start as f64 / 1e9, f.healed.unwrap_or(end_ns) as f64 / 1e9);
                Rectangle::new([(s, 0.0), (e, ymax)], color.mix(0.3).filled())
            }))?
            .label(kind.name())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.mix(0.5).filled()));
    }
    let points: Vec<(f64, f64)> =
        a.commits_per_second.iter().enumerate().map(|(i, &n)| (i as f64 + 0.5, n as f64)).collect();
    let style = ShapeStyle { color: RGBColor(31, 119, 180).to_rgba(), filled: true, stroke_width: 2 };
    chart
        .draw_series(LineSeries::new(points, style))?
        .label("commits per second")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The current UTC time as `20250131-123456`.
pub fn utc_stamp() -> String {
    // `2025-01-31T12:34:56Z` without its separators.
    let rfc3339 = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    rfc3339.replace(['-', ':', 'Z'], "").replace('T', "-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Mop;

    #[test]
    fn stamp_format() {
        let s = utc_stamp();
        assert_eq!(s.len(), 15, "{s}");
        assert!(s.as_bytes()[8] == b'-' && s.bytes().filter(|b| b.is_ascii_digit()).count() == 14, "{s}");
    }

    fn commit_at(ns: u64) -> Op {
        let mut op = Op::new(OpType::Ok, 1, TxnKind::Transfer, vec![Mop::Write(1, Some(1))]);
        op.time = ns;
        op
    }

    #[test]
    fn the_longest_outage_is_blamed_on_the_fault_it_overlaps() {
        let s = 1_000_000_000;
        let ops: Vec<Op> = [1, 2, 3, 9, 10].iter().map(|&t| commit_at(t * s)).collect();
        let fault = FaultRecord {
            kind: FaultKind::KillLeader,
            node: Some(0),
            start: 3 * s + s / 2,
            healed: Some(6 * s),
            recovered: Some(8 * s),
            note: "SIGKILL".into(),
            error: None,
            parts: vec![],
            calls: vec![],
        };
        let a = availability(&ops, &[fault], s / 2, 11 * s);
        assert_eq!(a.commits_per_second[..4], [0, 1, 1, 1]);
        let o = a.longest().unwrap();
        assert_eq!(o.duration_s, 6.0);
        assert!(o.cause.starts_with("kill_leader(node0)"), "{}", o.cause);
        assert!(a.outages.iter().any(|o| o.cause == "no fault in progress"));
    }

    #[test]
    fn the_table_lists_every_fault_kind_and_the_newer_checks() {
        let summary = Summary {
            faults: BTreeMap::from([("two_faults".to_string(), 1), ("wipe_node".to_string(), 0)]),
            fault_pairs: BTreeMap::from([("kill_leader+wipe_node".to_string(), 1)]),
            future_ts_sent: 3,
            future_ts_refused: 3,
            planned: BTreeMap::from([("switchover".to_string(), "2 done, 1 refused not_in_sync".to_string())]),
            ..Summary::default()
        };
        let verdict = Verdict {
            valid: false,
            findings: vec![],
            finding_counts: BTreeMap::from([("changed_outcome".to_string(), 2)]),
            warnings: vec![],
            warning_counts: BTreeMap::new(),
            counts: Default::default(),
        };
        let t = table(&summary, &verdict, &Availability::default(), Path::new("out"));
        let line = |key: &str| t.lines().find(|l| l.trim_start().starts_with(key)).unwrap_or_default().to_string();
        assert!(line("two_faults").ends_with("1 (kill_leader+wipe_node x1)"), "{t}");
        assert!(line("wipe_node").ends_with(" 0"), "{t}");
        assert!(line("changed_outcome").ends_with(" 2"), "{t}");
        assert!(line("same_lsn_acked").ends_with(" 0"), "{t}");
        assert!(line("far-future").contains("3 refused (400 bad_timestamp)"), "{t}");
        assert!(line("checker verdict").contains("FAILED: changed_outcome 2"), "{t}");
        assert!(!line("planned changes").is_empty(), "{t}");
        assert!(line("switchover").ends_with("2 done, 1 refused not_in_sync"), "{t}");
    }
}
