//! The supervisor's Prometheus metrics, served at `GET /metrics` (`main` installs the recorder
//! and calls [`describe`]). Every name starts with `rmw_`; the list, with what each means, is in
//! docs/api.md, and [`DESCRIPTIONS`] gives each its `# HELP` line.
//!
//! Invariant: every metric the supervisor records is in [`DESCRIPTIONS`] (a unit test reads the
//! crate's sources), so every `# TYPE` line of `/metrics` has its `# HELP`.

use metrics::Unit;

/// What a metric is, for its `# TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric of the supervisor: name, kind, unit, and the `# HELP` text (which names the
/// unit, since Prometheus' text format has no field for it).
pub const DESCRIPTIONS: &[(&str, Kind, Unit, &str)] = &[
    ("rmw_failovers_total", Kind::Counter, Unit::Count, "Failovers this supervisor carried out (count)."),
    (
        "rmw_failover_unavailable_seconds",
        Kind::Histogram,
        Unit::Seconds,
        "How long writes were unavailable in each failover, from the old leader's last healthy poll to the new leader serving (seconds).",
    ),
    (
        "rmw_recoveries_total",
        Kind::Counter,
        Unit::Count,
        "Recoveries of returning nodes, by result: ok, failed (count).",
    ),
    ("rmw_recovery_seconds", Kind::Histogram, Unit::Seconds, "Duration of each successful recovery (seconds)."),
    (
        "rmw_recovery_pause_seconds",
        Kind::Histogram,
        Unit::Seconds,
        "How long the leader paused commits at the end of each successful recovery (seconds).",
    ),
    ("rmw_term", Kind::Gauge, Unit::Count, "The cluster's current term, read at scrape time (term number)."),
    (
        "rmw_writes_available",
        Kind::Gauge,
        Unit::Count,
        "1 when a leader serves writes in the current term, else 0, read at scrape time (boolean).",
    ),
    ("rmw_members", Kind::Gauge, Unit::Count, "Nodes in the member set, read at scrape time (count of nodes)."),
    ("rmw_node_alive", Kind::Gauge, Unit::Count, "1 when the node answers the polls, else 0, by node address (boolean)."),
    ("rmw_node_applied_lsn", Kind::Gauge, Unit::Count, "The last LSN the node applied, by node address (log position)."),
    (
        "rmw_node_lag",
        Kind::Gauge,
        Unit::Count,
        "Log entries the node is behind the leader, by node address (entries).",
    ),
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
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
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
