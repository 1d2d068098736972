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
//! request, so the number of series stays bounded whatever callers send.
//!
//! Only `client serve` installs the recorder ([`install`]): `client run` and `client status` are
//! one-shot commands that nobody scrapes, and there the `metrics` macros record nothing. The
//! recorder's handle goes into the web app's state, not a global, so a test can give its app a
//! recorder of its own (`recorder`, set as the thread's local recorder) and count exactly what
//! it did while other tests run.

use std::time::Duration;

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
    Ok(builder()?.install_recorder()?)
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
