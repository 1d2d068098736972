//! The form's views: the "read from" menu, a run's outcome, an error, and the history's entries.

use protocol::Outcome;
use uuid::Uuid;

use crate::metrics::FormOutcome;
use crate::run::{describe_writes, role_name, wire_name, Rejection, RunError, RunReport, Verdict};
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
            notes: match rejection {
                Rejection::NotAllowed { .. } => vec![
                    "Nothing was applied. The agents require a client API key: give one under \"API key\" (a write \
                     key to commit)."
                        .into(),
                ],
                _ => vec!["Nothing was applied.".into()],
            },
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use protocol::{parse_transaction, AbortReason, CommitResponse, Role};

    use super::*;
    use crate::run::{ReadResult, Rejection, SendError, Unavailable};

    const LEADER: &str = "127.0.0.1:8000";

    fn read(values: Vec<(i64, Option<i64>)>) -> ReadResult {
        ReadResult { values, timestamp: 1000, lsn: 3, node: "node0".into(), role: Role::Leader, agent: LEADER.into() }
    }

    fn commit(outcome: Outcome) -> CommitResponse {
        CommitResponse {
            commit: outcome,
            txn_id: Uuid::nil(),
            commit_ts: Some(2000),
            lsn: Some(4),
            reason: None,
            key: None,
            message: None,
        }
    }

    /// `r(1)w(2=22)r(3)` as the run reports it: 1 read as 100, 3 never written, then committed.
    fn committed() -> RunReport {
        RunReport {
            transaction: "r(1)w(2=22)r(3)".into(),
            read: Some(read(vec![(1, Some(100)), (3, None)])),
            writes: BTreeMap::from([(2, 22)]),
            commit: Some(commit(Outcome::Commit)),
            leader: Some(LEADER.into()),
            notes: vec!["a note".into()],
            latency: Duration::from_micros(1_250),
        }
    }

    fn facts(view: &ResultView) -> Vec<(&str, &str)> {
        view.facts.iter().map(|f| (f.id, f.value.as_str())).collect()
    }

    #[test]
    fn a_commit_shows_the_values_read_and_the_facts_in_order() {
        let view = result_view(&committed());
        assert_eq!((view.class, view.headline), ("commit", "COMMIT"));
        assert!(view.words.starts_with("The transaction committed"), "{}", view.words);
        let values: Vec<_> = view.values.iter().map(|v| (v.account, v.balance.as_str(), v.missing)).collect();
        assert_eq!(values, [(1, "100", false), (3, "", true)]);
        let nil = Uuid::nil().to_string();
        assert_eq!(
            facts(&view),
            [
                ("transaction", "r(1)w(2=22)r(3)"),
                ("txn_id", nil.as_str()),
                ("commit_ts", "2000"),
                ("lsn", "4"),
                ("written", "account 2 = 22"),
                ("leader", "node0 at 127.0.0.1:8000"),
                ("read_from", "node0 (leader) at 127.0.0.1:8000, LSN 3"),
                ("read_ts", "1000"),
                ("latency", "1.2 ms"),
            ]
        );
        assert_eq!(view.notes, ["a note"]);
    }

    #[test]
    fn an_abort_shows_the_reason_the_account_and_the_leader_s_words() {
        let mut report = committed();
        report.commit = Some(CommitResponse {
            reason: Some(AbortReason::StaleRead),
            key: Some(1),
            message: Some("account 1 was written after the read timestamp".into()),
            ..commit(Outcome::Abort)
        });
        let view = result_view(&report);
        assert_eq!((view.class, view.headline), ("abort", "ABORT"));
        let facts = facts(&view);
        assert!(facts.contains(&("reason", "stale_read")), "{facts:?}");
        assert!(facts.contains(&("key", "1")), "{facts:?}");
        assert!(facts.contains(&("message", "account 1 was written after the read timestamp")), "{facts:?}");
        assert!(!facts.iter().any(|(id, _)| *id == "commit_ts"), "{facts:?}");
    }

    #[test]
    fn a_read_only_run_has_no_commit_facts() {
        let report = RunReport { commit: None, writes: BTreeMap::new(), ..committed() };
        let view = result_view(&report);
        assert_eq!((view.class, view.headline), ("read", "READ"));
        assert!(!facts(&view).iter().any(|(id, _)| *id == "txn_id"));
    }

    #[test]
    fn a_parse_error_points_at_its_column() {
        let text = "r(1)\"<b>";
        let error = RunError::Parse(parse_transaction(text).unwrap_err());
        let view = error_view(text, &error);
        assert_eq!(view.title, "Not a transaction: error at column 5");
        let p = view.pointer.as_ref().unwrap();
        assert_eq!(
            (p.before.as_str(), p.at.as_str(), p.after.as_str(), p.caret.as_str()),
            ("r(1)", "\"", "<b>", "    ^")
        );
        assert_eq!(view.notes, ["Nothing was sent to the cluster."]);

        // Past the end: the gap where something was expected is marked.
        let text = "r(1";
        let view = error_view(text, &RunError::Parse(parse_transaction(text).unwrap_err()));
        let p = view.pointer.as_ref().unwrap();
        assert_eq!((p.column, p.before.as_str(), p.at.as_str(), p.after.as_str()), (4, "r(1", " ", ""));
    }

    #[test]
    fn an_unavailable_cluster_offers_to_run_an_undecided_commit_again() {
        let seen = crate::run::NoAnswer::Unsent(SendError::Connect { agent: LEADER.into(), cause: "refused".into() });
        let id = Uuid::new_v4();
        let error = RunError::unavailable(Unavailable::NoSupervisor { seen }, Some(id));
        let view = error_view("w(1=1)", &error);
        assert_eq!(view.title, "The cluster is unavailable");
        assert_eq!(
            view.message,
            "cannot reach the agent at 127.0.0.1:8000: refused; no supervisor to ask where the leader is"
        );
        assert_eq!(view.retry_txn, Some(id));
        assert!(view.notes[0].contains(&format!("same txn_id ({id}) is safe")), "{:?}", view.notes);

        let refused = error_view("w(1=1)", &RunError::Rejected(Rejection::ByAgent { message: "too big".into() }));
        assert_eq!((refused.title.as_str(), refused.message.as_str(), refused.retry_txn), ("Refused", "too big", None));
    }

    #[test]
    fn the_read_from_menu_lists_the_nodes_and_keeps_the_choice() {
        let cluster: SupervisorStatus = serde_json::from_str(crate::status::tests::AFTER_FAILOVER).unwrap();
        let chosen =
            |choices: Vec<Choice>| choices.into_iter().filter(|c| c.selected).map(|c| c.value).collect::<Vec<_>>();
        let choices = read_choices(Some(&cluster), "127.0.0.1:8001");
        let labels: Vec<&str> = choices.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "the leader",
                "any node (in turn)",
                "127.0.0.1:8000 (node0, replica)",
                "127.0.0.1:8001 (node1, leader)",
                "127.0.0.1:8002 (-, unknown)"
            ]
        );
        assert_eq!(chosen(choices), ["127.0.0.1:8001"]);
        assert_eq!(chosen(read_choices(None, "127.0.0.1:8001")), ["leader"], "a choice no longer offered");
        assert_eq!(chosen(read_choices(None, "any")), ["any"]);
    }

    #[test]
    fn history_entries_say_what_came_of_a_run() {
        let entry = history_of_report(&committed(), 42);
        assert_eq!((entry.at_ms, entry.outcome, entry.leader.as_deref()), (42, FormOutcome::Commit, Some(LEADER)));
        assert_eq!(entry.txn_id, Some(Uuid::nil()));
        // A read elsewhere than at the leader: the node that answered.
        let elsewhere = RunReport { leader: None, commit: None, ..committed() };
        assert_eq!(history_of_report(&elsewhere, 0).leader.as_deref(), Some(LEADER));

        let long = "r(1)".repeat(30);
        let error = RunError::Rejected(Rejection::Empty);
        let entry = history_of_error(&format!("  {long}  "), &error, 7);
        assert_eq!((entry.outcome, entry.txn_id, entry.latency_ms), (FormOutcome::Refused, None, 0.0));
        assert_eq!(entry.transaction, format!("{}…", &long[..HISTORY_TEXT_CHARS]));
        assert_eq!(entry.detail, "the transaction was refused: the transaction is empty");
    }
}
