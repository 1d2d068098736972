//! The web client's Prometheus metrics, served by `client serve` at `GET /metrics`. Every name
//! starts with `rmw_client_` (the agents' and the supervisor's start with `rmw_`); what each
//! means, and what to watch, is in docs/operations.md.
//!
//! - `rmw_client_transactions_total{outcome}` and `rmw_client_transaction_seconds{outcome}`:
//!   transactions submitted through the form, by [`FormOutcome`];
//! - `rmw_client_leader_announcements_total{result}`: what arrived at `/leader_changed/`, by
//!   [`Announcement`]; `rmw_client_leader_term`: the term of the last one accepted;
//! - `rmw_client_leader_node`: where the leader this client follows stands in the supervisor's
//!   list of nodes, set when scraped;
//! - `rmw_client_drills_total{action,result}`: drills run from the cluster page, by
//!   [`DrillResult`];
//! - `rmw_client_agent_call_failures_total{path,error}`: requests to an agent that got no HTTP
//!   answer.
//!
//! Every label value comes from this module's enums or the code's own paths, never from a
//! request, so the number of series stays bounded whatever callers send. [`DESCRIPTIONS`]
//! gives every metric its `# HELP` line; a unit test reads the crate's sources so that none is
//! recorded without one.
//!
//! Only `client serve` installs the recorder ([`install`]): `client run` and `client status` are
//! one-shot commands that nobody scrapes, and there the `metrics` macros record nothing. The
//! recorder's handle goes into the web app's state, not a global, so a test can give its app a
//! recorder of its own (`recorder`, set as the thread's local recorder) and count exactly what
//! it did while other tests run.

use std::time::Duration;

use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::run::{RunError, RunReport, Verdict};

/// Latency buckets in seconds: from a commit on a quiet local cluster to a run that waited out a
/// failover (`--wait-secs`, 10 s by default).
const SECONDS: &[f64] = &[0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0];

fn builder() -> anyhow::Result<PrometheusBuilder> {
    Ok(PrometheusBuilder::new().set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)?)
}

/// Installs the process-wide recorder and returns its handle, for the web app's state. Called
/// once, by `client serve`.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = builder()?.install_recorder()?;
    describe();
    Ok(handle)
}

/// What a metric is, for its `# TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric of `client serve`: name, kind, unit, and the `# HELP` text (which names the
/// unit, since Prometheus' text format has no field for it).
pub const DESCRIPTIONS: &[(&str, Kind, Unit, &str)] = &[
    (
        "rmw_client_transactions_total",
        Kind::Counter,
        Unit::Count,
        "Transactions submitted through the form, by outcome: commit, abort, read, refused, unavailable (count).",
    ),
    (
        "rmw_client_transaction_seconds",
        Kind::Histogram,
        Unit::Seconds,
        "How long the form's transactions took, waits for a new leader included, by outcome (seconds).",
    ),
    (
        "rmw_client_leader_announcements_total",
        Kind::Counter,
        Unit::Count,
        "POST /leader_changed/ received, by result: accepted, unauthorized, bad_request (count).",
    ),
    (
        "rmw_client_leader_term",
        Kind::Gauge,
        Unit::Count,
        "The term of the last accepted leader announcement (term number).",
    ),
    (
        "rmw_client_leader_node",
        Kind::Gauge,
        Unit::Count,
        "The leader this client follows, as its position in the supervisor's list of nodes; -1 when unknown (index).",
    ),
    (
        "rmw_client_drills_total",
        Kind::Counter,
        Unit::Count,
        "Drills run from the cluster page, by action (down_leader, up_node, unknown) and result (changed, unchanged, failed, refused) (count).",
    ),
    (
        "rmw_client_agent_call_failures_total",
        Kind::Counter,
        Unit::Count,
        "Requests to an agent that got no HTTP answer, by path and error: connect, timeout, other (count).",
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

/// A recorder with the same buckets, not installed: a test sets it as its thread's recorder
/// (`metrics::set_default_local_recorder`) and gives the app its handle.
#[cfg(test)]
pub fn recorder() -> metrics_exporter_prometheus::PrometheusRecorder {
    builder().expect("the buckets are not empty").build_recorder()
}

/// How a transaction submitted through the form ended. The history of the cluster page records
/// it too, as `COMMIT`, `ABORT`, `READ`, `REFUSED` or `UNAVAILABLE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FormOutcome {
    Commit,
    Abort,
    /// A read-only transaction answered.
    Read,
    /// Not run, or refused as malformed: the text is not a transaction, the form's choices are
    /// unusable, or the agent answered 400. The person's move; nothing was applied.
    Refused,
    /// No usable answer from the cluster (down, no leader within `--wait-secs`, an answer not
    /// understood). The operator's move.
    Unavailable,
}

impl FormOutcome {
    pub fn of(result: &Result<RunReport, RunError>) -> FormOutcome {
        match result {
            Ok(report) => FormOutcome::of_report(report),
            Err(error) => FormOutcome::of_error(error),
        }
    }

    pub fn of_report(report: &RunReport) -> FormOutcome {
        match report.verdict() {
            Verdict::Commit => FormOutcome::Commit,
            Verdict::Abort => FormOutcome::Abort,
            Verdict::Read => FormOutcome::Read,
        }
    }

    pub fn of_error(error: &RunError) -> FormOutcome {
        match error {
            RunError::Parse(_) | RunError::Rejected(_) => FormOutcome::Refused,
            RunError::Unavailable { .. } => FormOutcome::Unavailable,
        }
    }

    /// The outcome in capitals, as the history shows it.
    pub fn word(self) -> &'static str {
        match self {
            FormOutcome::Commit => "COMMIT",
            FormOutcome::Abort => "ABORT",
            FormOutcome::Read => "READ",
            FormOutcome::Refused => "REFUSED",
            FormOutcome::Unavailable => "UNAVAILABLE",
        }
    }

    fn label(self) -> &'static str {
        match self {
            FormOutcome::Commit => "commit",
            FormOutcome::Abort => "abort",
            FormOutcome::Read => "read",
            FormOutcome::Refused => "refused",
            FormOutcome::Unavailable => "unavailable",
        }
    }
}

/// A transaction submitted through the form, and how long its run took (`None` when it was not
/// run at all).
pub fn transaction(outcome: FormOutcome, run_time: Option<Duration>) {
    ::metrics::counter!("rmw_client_transactions_total", "outcome" => outcome.label()).increment(1);
    if let Some(run_time) = run_time {
        ::metrics::histogram!("rmw_client_transaction_seconds", "outcome" => outcome.label())
            .record(run_time.as_secs_f64());
    }
}

/// What became of a `POST /leader_changed/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announcement {
    /// The next transactions go to the leader it named.
    Accepted,
    /// Without the cluster token (or with a wrong one): this client and the supervisor disagree
    /// on the token, and the client will not follow failovers.
    Unauthorized,
    /// Not a `LeaderChanged` body.
    BadRequest,
}

/// An announcement on `/leader_changed/`, with the term it carried when it was accepted.
pub fn leader_announcement(result: Announcement, term: Option<i64>) {
    let label = match result {
        Announcement::Accepted => "accepted",
        Announcement::Unauthorized => "unauthorized",
        Announcement::BadRequest => "bad_request",
    };
    ::metrics::counter!("rmw_client_leader_announcements_total", "result" => label).increment(1);
    if let (Announcement::Accepted, Some(term)) = (result, term) {
        ::metrics::gauge!("rmw_client_leader_term").set(term as f64);
    }
}

/// The leader this client sends transactions to, as its index in the supervisor's list of nodes
/// (0 for the first, `node0` under setup.sh), or `None` when that list does not hold it.
pub fn leader_followed(index: Option<usize>) {
    ::metrics::gauge!("rmw_client_leader_node").set(index.map_or(-1.0, |i| i as f64));
}

/// How a drill asked for on the cluster page ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrillResult {
    /// The agent did it.
    Changed,
    /// The agent answered that there was nothing to do (the node was not leader, or not down).
    Unchanged,
    /// Not carried out: the supervisor's list of nodes, or the agent, could not be reached, or
    /// the agent answered an error.
    Failed,
    /// Not a drill, or not a node of the cluster: nothing was sent.
    Refused,
}

/// A drill asked for on the cluster page, once it is refused, fails or is carried out (a request
/// that only gets the confirmation page is not counted). `action` is `down_leader`, `up_node`,
/// or `unknown` for anything else.
pub fn drill(action: &'static str, result: DrillResult) {
    let label = match result {
        DrillResult::Changed => "changed",
        DrillResult::Unchanged => "unchanged",
        DrillResult::Failed => "failed",
        DrillResult::Refused => "refused",
    };
    ::metrics::counter!("rmw_client_drills_total", "action" => action, "result" => label).increment(1);
}

/// A request to an agent (`path`: `/read/`, `/commit/`, `/status`, a drill) that got no HTTP
/// answer: `connect` (nothing listens, or the host is unreachable), `timeout`, or `other`.
pub fn agent_call_failed(path: &'static str, error: &reqwest::Error) {
    // A connect timeout is both: it counts as a timeout, as the run's message says.
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else {
        "other"
    };
    ::metrics::counter!("rmw_client_agent_call_failures_total", "path" => path, "error" => kind).increment(1);
}

#[cfg(test)]
mod description_tests {
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
