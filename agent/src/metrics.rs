//! Prometheus metrics, served at `GET /metrics`. Every name starts with `rmw_`; the list, with
//! what each means, is in docs/api.md, and [`DESCRIPTIONS`] gives each its `# HELP` line.
//!
//! Invariant: every metric the agent records is in [`DESCRIPTIONS`] (a unit test reads the
//! crate's sources for `"rmw_` names), so every `# TYPE` line of `/metrics` has its `# HELP`.

use std::sync::OnceLock;

use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets in seconds: from a fast local commit to a failover-length stall.
const SECONDS: &[f64] = &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0];
/// Transactions per round: group commit at work.
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Installs the process-wide recorder. Called once by `main`; without it (unit tests) the
/// metrics macros record nothing.
pub fn install() -> anyhow::Result<()> {
    let handle = builder()?.install_recorder()?;
    let _ = HANDLE.set(handle);
    describe();
    Ok(())
}

fn builder() -> anyhow::Result<PrometheusBuilder> {
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)?
        .set_buckets_for_metric(Matcher::Full("rmw_batch_size".into()), BATCH)?)
}

/// What a metric is, for its `# TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric of the agent: name, kind, unit, and the `# HELP` text (which names the unit,
/// since Prometheus' text format has no field for it).
pub const DESCRIPTIONS: &[(&str, Kind, Unit, &str)] = &[
    (
        "rmw_log_entries",
        Kind::Gauge,
        Unit::Count,
        "Entries in this node's recovery log, with --retain-log: about the bound, plus what arrived since the last trim (count).",
    ),
    (
        "rmw_log_horizon",
        Kind::Gauge,
        Unit::Count,
        "The highest LSN this node's log no longer holds (trimmed, or before its snapshot), with --retain-log (LSN).",
    ),
    (
        "rmw_log_trimmed_entries_total",
        Kind::Counter,
        Unit::Count,
        "Log entries trimmed by --retain-log (count).",
    ),
    (
        "rmw_snapshots_loaded_total",
        Kind::Counter,
        Unit::Count,
        "Snapshots of the leader this node loaded in a rebuild, before replaying the log after them (count).",
    ),
    ("rmw_commits_total", Kind::Counter, Unit::Count, "Transactions committed by this node as leader (count)."),
    (
        "rmw_committed_entries_total",
        Kind::Counter,
        Unit::Count,
        "Log entries committed on this member, leader or replica, by its COMMIT PREPARED; recovery is counted apart (count).",
    ),
    (
        "rmw_aborts_total",
        Kind::Counter,
        Unit::Count,
        "Transactions aborted by this node as leader, by reason: stale_read, key_locked, replication_failed, not_enough_replicas (count).",
    ),
    (
        "rmw_commit_seconds",
        Kind::Histogram,
        Unit::Seconds,
        "Latency of POST /commit/ on the leader, by outcome: commit, abort, unknown (seconds).",
    ),
    ("rmw_batch_size", Kind::Histogram, Unit::Count, "Transactions per two-phase-commit round (count)."),
    (
        "rmw_phase_seconds",
        Kind::Histogram,
        Unit::Seconds,
        "Duration of each round's phases on the leader: prepare (every vote in), decide (every acknowledgement in) (seconds).",
    ),
    (
        "rmw_peer_call_seconds",
        Kind::Histogram,
        Unit::Seconds,
        "Round trip of each answered call to another agent or the supervisor, the callee's work included, by path (seconds).",
    ),
    (
        "rmw_store_seconds",
        Kind::Histogram,
        Unit::Seconds,
        "PostgreSQL's part of a round on this member, by op: prepare (the batch and PREPARE TRANSACTION), commit_prepared (seconds).",
    ),
    ("rmw_reads_total", Kind::Counter, Unit::Count, "POST /read/ requests answered (count)."),
    ("rmw_recovered_entries_total", Kind::Counter, Unit::Count, "Log entries applied by recovery on this node (count)."),
    (
        "rmw_in_doubt_resolved_total",
        Kind::Counter,
        Unit::Count,
        "In-doubt batches resolved on promotion, by decision: commit, abort (count).",
    ),
    ("rmw_applied_lsn", Kind::Gauge, Unit::Count, "The last LSN applied on this node, read at scrape time (log position)."),
    ("rmw_term", Kind::Gauge, Unit::Count, "The term this node is in, read at scrape time (term number)."),
    ("rmw_is_leader", Kind::Gauge, Unit::Count, "1 when this node leads its term, else 0, read at scrape time (boolean)."),
    ("rmw_members", Kind::Gauge, Unit::Count, "Members in this node's configuration, read at scrape time (count of nodes)."),
];

/// Gives every metric of [`DESCRIPTIONS`] its help text, in the recorder in use.
pub fn describe() {
    for &(name, kind, unit, help) in DESCRIPTIONS {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, unit, help),
            Kind::Gauge => metrics::describe_gauge!(name, unit, help),
            Kind::Histogram => metrics::describe_histogram!(name, unit, help),
        }
    }
}

/// The metrics in Prometheus text format, if a recorder is installed.
pub fn render() -> Option<String> {
    HANDLE.get().map(PrometheusHandle::render)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    /// The `rmw_` names the crate's sources pass to `counter!`, `gauge!` or `histogram!`.
    fn names_recorded_in(dir: &Path, names: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                names_recorded_in(&path, names);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                for macro_name in ["counter!(", "gauge!(", "histogram!("] {
                    for piece in text.split(macro_name).skip(1) {
                        if let Some(rest) = piece.trim_start().strip_prefix("\"rmw_") {
                            names.insert(format!("rmw_{}", rest.chars().take_while(|&c| c != '"').collect::<String>()));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn every_metric_recorded_is_described() {
        let described: BTreeSet<String> = DESCRIPTIONS.iter().map(|(name, ..)| name.to_string()).collect();
        let mut recorded = BTreeSet::new();
        names_recorded_in(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut recorded);
        assert!(recorded.len() > 5, "the sources record {recorded:?}");
        let missing: Vec<_> = recorded.difference(&described).collect();
        assert!(missing.is_empty(), "metrics recorded without a line in DESCRIPTIONS: {missing:?}");
        let unused: Vec<_> = described.difference(&recorded).collect();
        assert!(unused.is_empty(), "described but never recorded: {unused:?}");
    }

    #[test]
    fn every_type_line_has_a_help_line() {
        let recorder = builder().expect("the buckets are not empty").build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            for &(name, kind, ..) in DESCRIPTIONS {
                match kind {
                    Kind::Counter => metrics::counter!(name).increment(1),
                    Kind::Gauge => metrics::gauge!(name).set(1.0),
                    Kind::Histogram => metrics::histogram!(name).record(0.001),
                }
            }
        });
        let text = handle.render();
        let types: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).collect();
        assert_eq!(types.len(), DESCRIPTIONS.len(), "{text}");
        for line in types {
            let name = line.split(' ').next().unwrap_or_default();
            let help = format!("# HELP {name} ");
            assert!(
                text.lines().any(|l| l.strip_prefix(&help).is_some_and(|h| !h.trim().is_empty())),
                "no # HELP line for {name}:\n{text}"
            );
        }
    }
}
