//! The form's views: the "read from" menu, a run's outcome, an error, and the history's entries.

use protocol::Outcome;
use uuid::Uuid;

use crate::metrics::FormOutcome;
use crate::run::{describe_writes, role_name, wire_name, RunError, RunReport, Verdict};
use crate::status::{node_id, role_label, SupervisorStatus};
use crate::web::state::HistoryEntry;

/// Longest transaction text kept in the history.
const HISTORY_TEXT_CHARS: usize = 80;

pub(crate) struct Choice {
    pub(crate) value: String,
    pub(crate) label: String,
    pub(crate) selected: bool,
}

pub(crate) struct ResultView {
    /// `commit`, `abort` or `read`: the CSS class.
    pub(crate) class: &'static str,
    pub(crate) headline: &'static str,
    pub(crate) words: String,
    pub(crate) values: Vec<ValueRow>,
    pub(crate) facts: Vec<Fact>,
    pub(crate) notes: Vec<String>,
}

pub(crate) struct ValueRow {
    pub(crate) account: i64,
    pub(crate) balance: String,
    pub(crate) missing: bool,
}

pub(crate) struct Fact {
    /// For the element id: `fact-<id>`.
    pub(crate) id: &'static str,
    pub(crate) name: &'static str,
    pub(crate) value: String,
}

pub(crate) struct ErrorView {
    pub(crate) title: String,
    pub(crate) message: String,
    pub(crate) pointer: Option<Pointer>,
    /// A commit whose outcome is unknown: the form offers to run it again with this id.
    pub(crate) retry_txn: Option<Uuid>,
    pub(crate) notes: Vec<String>,
}

/// The input split around the column a parse error points at.
pub(crate) struct Pointer {
    pub(crate) column: usize,
    pub(crate) before: String,
    pub(crate) at: String,
    pub(crate) after: String,
    pub(crate) caret: String,
}

/// The "read from" menu: the leader, any node, then each node the supervisor knows.
pub(crate) fn read_choices(cluster: Option<&SupervisorStatus>, selected: &str) -> Vec<Choice> {
    let mut choices = vec![
        Choice { value: "leader".into(), label: "the leader".into(), selected: false },
        Choice { value: "any".into(), label: "any node (in turn)".into(), selected: false },
    ];
    for node in cluster.map(|c| c.nodes.as_slice()).unwrap_or_default() {
        let label = format!("{} ({}, {})", node.address, node_id(node), role_label(node));
        choices.push(Choice { value: node.address.clone(), label, selected: false });
    }
    let index = choices.iter().position(|c| c.value == selected).unwrap_or(0);
    choices[index].selected = true;
    choices
}

/// A run's outcome under the form: the verdict, the values read, and the facts of the run.
pub(crate) fn result_view(report: &RunReport) -> ResultView {
    let verdict = report.verdict();
    let mut facts = Vec::new();
    let mut fact = |id, name, value: String| facts.push(Fact { id, name, value });
    fact("transaction", "transaction", report.transaction.clone());
    if let Some(commit) = &report.commit {
        fact("txn_id", "txn_id", commit.txn_id.to_string());
        match commit.commit {
            Outcome::Commit => {
                fact("commit_ts", "commit_ts", commit.commit_ts.map_or("?".into(), |t| t.to_string()));
                fact("lsn", "lsn", commit.lsn.map_or("?".into(), |l| l.to_string()));
                fact("written", "written", describe_writes(&report.writes));
            }
            Outcome::Abort => {
                fact("reason", "reason", commit.reason.map_or_else(|| "none given".into(), |r| wire_name(&r)));
                if let Some(key) = commit.key {
                    fact("key", "conflicting account", key.to_string());
                }
                if let Some(message) = &commit.message {
                    fact("message", "the leader says", message.clone());
                }
            }
        }
    }
    if let Some(leader) = report.leader_text() {
        fact("leader", "leader", leader);
    }
    if let Some(read) = &report.read {
        fact(
            "read_from",
            "read from",
            format!("{} ({}) at {}, LSN {}", read.node, role_name(read.role), read.agent, read.lsn),
        );
        fact("read_ts", "read timestamp", read.timestamp.to_string());
    }
    fact("latency", "latency", format!("{:.1} ms", report.latency_ms()));

    let values = report
        .read
        .as_ref()
        .map(|read| {
            read.values
                .iter()
                .map(|(account, balance)| ValueRow {
                    account: *account,
                    balance: balance.map_or_else(String::new, |b| b.to_string()),
                    missing: balance.is_none(),
                })
                .collect()
        })
        .unwrap_or_default();
    ResultView {
        class: match verdict {
            Verdict::Commit => "commit",
            Verdict::Abort => "abort",
            Verdict::Read => "read",
        },
        headline: report.headline(),
        words: report.in_words(),
        values,
        facts,
        notes: report.notes.clone(),
    }
}

/// Why a run produced no outcome, with a pointer into the text for a parse error and a retry for
/// a commit whose outcome is unknown.
pub(crate) fn error_view(text: &str, error: &RunError) -> ErrorView {
    match error {
        RunError::Parse(e) => {
            let chars: Vec<char> = text.chars().collect();
            let at = e.column.saturating_sub(1).min(chars.len());
            ErrorView {
                title: format!("Not a transaction: error at column {}", e.column),
                message: e.to_string(),
                pointer: Some(Pointer {
                    column: e.column,
                    before: chars[..at].iter().collect(),
                    // One past the end: mark the gap where something was expected.
                    at: chars.get(at).map_or_else(|| " ".to_string(), |c| c.to_string()),
                    after: chars.get(at + 1..).map(|rest| rest.iter().collect()).unwrap_or_default(),
                    caret: " ".repeat(at) + "^",
                }),
                retry_txn: None,
                notes: vec!["Nothing was sent to the cluster.".into()],
            }
        }
        RunError::Rejected(rejection) => ErrorView {
            title: "Refused".into(),
            message: rejection.to_string(),
            pointer: None,
            retry_txn: None,
            notes: vec!["Nothing was applied.".into()],
        },
        RunError::Unavailable { cause, unknown_txn } => ErrorView {
            title: "The cluster is unavailable".into(),
            message: cause.to_string(),
            pointer: None,
            retry_txn: *unknown_txn,
            notes: vec![match unknown_txn {
                Some(id) => format!(
                    "The commit may or may not have happened. Running it again with the same txn_id ({id}) \
                     is safe: it returns the first outcome and applies nothing twice."
                ),
                None => "Nothing was committed. The page waited for a leader; try again in a moment.".into(),
            }],
        },
    }
}

/// Why the form's choices could not be run (nothing was sent).
pub(crate) fn refused_view(reason: &impl std::fmt::Display) -> ErrorView {
    ErrorView {
        title: "Cannot run this".into(),
        message: reason.to_string(),
        pointer: None,
        retry_txn: None,
        notes: vec![],
    }
}

/// `text` cut to [`HISTORY_TEXT_CHARS`].
fn short(text: &str) -> String {
    match text.char_indices().nth(HISTORY_TEXT_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// The history's entry for a run that got an outcome at `at_ms`.
pub(crate) fn history_of_report(report: &RunReport, at_ms: u64) -> HistoryEntry {
    let read_at = report.read.as_ref().map(|r| r.agent.clone());
    HistoryEntry {
        at_ms,
        transaction: short(&report.transaction),
        outcome: FormOutcome::of_report(report),
        leader: report.leader.clone().or(read_at),
        latency_ms: report.latency_ms(),
        txn_id: report.commit.as_ref().map(|c| c.txn_id),
        detail: report.in_words(),
    }
}

/// The history's entry for a run of `text` that failed at `at_ms`.
pub(crate) fn history_of_error(text: &str, error: &RunError, at_ms: u64) -> HistoryEntry {
    let txn_id = match error {
        RunError::Unavailable { unknown_txn, .. } => *unknown_txn,
        RunError::Parse(_) | RunError::Rejected(_) => None,
    };
    HistoryEntry {
        at_ms,
        transaction: short(text.trim()),
        outcome: FormOutcome::of_error(error),
        leader: None,
        latency_ms: 0.0,
        txn_id,
        detail: error.to_string(),
    }
}
