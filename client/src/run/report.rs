//! What a run did, as a report for people: the verdict, the values read, the commit's answer,
//! and the same in plain text (`client run`) or in words (the form).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use protocol::{AbortReason, Account, Balance, CommitResponse, Lsn, Outcome, Role, Timestamp};
use serde::Serialize;

use super::EXIT_ABORT;

/// What the read step returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    /// Each account of the read set in the order first read, with its balance; `None` for an
    /// account that was never written.
    pub values: Vec<(Account, Option<Balance>)>,
    pub timestamp: Timestamp,
    pub lsn: Lsn,
    /// The node that answered (its id) and its role.
    pub node: String,
    pub role: Role,
    /// The address the read was sent to.
    pub agent: String,
}

/// The outcome of a run that got one, in one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Commit,
    Abort,
    /// A read-only transaction: nothing to commit.
    Read,
}

/// Everything one run did, for a person to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// The transaction in its canonical spelling.
    pub transaction: String,
    pub read: Option<ReadResult>,
    /// The writes the commit carried (empty for a read-only transaction).
    pub writes: BTreeMap<Account, Balance>,
    /// The commit's answer; `None` for a read-only transaction.
    pub commit: Option<CommitResponse>,
    /// The leader's address as this run found it: where the commit was decided, or where a
    /// read answered as leader. `None` when the run never spoke to the leader.
    pub leader: Option<String>,
    /// Things worth telling, such as a redirect to the leader or a wait during a failover.
    pub notes: Vec<String>,
    pub latency: Duration,
}

impl RunReport {
    pub fn verdict(&self) -> Verdict {
        match &self.commit {
            None => Verdict::Read,
            Some(c) if c.commit == Outcome::Commit => Verdict::Commit,
            Some(_) => Verdict::Abort,
        }
    }

    pub fn aborted(&self) -> bool {
        self.verdict() == Verdict::Abort
    }

    /// The exit code of `client run`: 0 for a commit or a read, 1 for an abort.
    pub fn exit_code(&self) -> u8 {
        if self.aborted() {
            EXIT_ABORT
        } else {
            0
        }
    }

    /// `COMMIT`, `ABORT` or `READ`.
    pub fn headline(&self) -> &'static str {
        match self.verdict() {
            Verdict::Commit => "COMMIT",
            Verdict::Abort => "ABORT",
            Verdict::Read => "READ",
        }
    }

    /// The outcome in one plain sentence.
    pub fn in_words(&self) -> String {
        match (&self.commit, &self.read) {
            (Some(commit), _) if commit.commit == Outcome::Commit => {
                "The transaction committed: its writes are durable on every member of the cluster.".into()
            }
            (Some(commit), _) => {
                format!("The transaction was aborted and nothing was written: {}.", plain_reason(commit))
            }
            (None, Some(read)) => format!(
                "Read only, nothing to commit: the values are one consistent snapshot of {} ({}) at LSN {}.",
                read.node,
                role_name(read.role),
                read.lsn
            ),
            (None, None) => "Nothing was run.".into(),
        }
    }

    /// The leader as `node0 at 127.0.0.1:8000` when its id is known.
    pub fn leader_text(&self) -> Option<String> {
        let leader = self.leader.as_ref()?;
        let id = self.read.as_ref().filter(|r| r.role == Role::Leader && &r.agent == leader).map(|r| &r.node);
        Some(match id {
            Some(id) => format!("{id} at {leader}"),
            None => leader.clone(),
        })
    }

    /// The report as plain text, one fact per line.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        if let Some(read) = &self.read {
            let _ = writeln!(
                out,
                "read from {} ({}) at {}: timestamp {}, lsn {}",
                read.node,
                role_name(read.role),
                read.agent,
                read.timestamp,
                read.lsn
            );
            for (account, balance) in &read.values {
                match balance {
                    Some(balance) => {
                        let _ = writeln!(out, "  account {account} = {balance}");
                    }
                    None => {
                        let _ = writeln!(out, "  account {account}: no such account (never written)");
                    }
                }
            }
        }
        match &self.commit {
            None => {
                let _ = writeln!(out, "READ: read-only transaction, nothing to commit");
            }
            Some(commit) if commit.commit == Outcome::Commit => {
                let _ = writeln!(
                    out,
                    "COMMIT: txn {}, commit_ts {}, lsn {}",
                    commit.txn_id,
                    optional(commit.commit_ts),
                    optional(commit.lsn)
                );
                let _ = writeln!(out, "  wrote {}", describe_writes(&self.writes));
            }
            Some(commit) => {
                let _ = writeln!(out, "ABORT: txn {}, nothing was written", commit.txn_id);
                let _ = writeln!(out, "  reason: {}", abort_reason(commit));
            }
        }
        if let (Some(leader), Some(_)) = (self.leader_text(), &self.commit) {
            let _ = writeln!(out, "leader: {leader}");
        }
        let _ = writeln!(out, "latency: {:.1} ms", self.latency_ms());
        out
    }

    pub fn latency_ms(&self) -> f64 {
        self.latency.as_secs_f64() * 1000.0
    }
}

/// Why a transaction aborted, in words: the reason code, then the agent's message (which names
/// the account) or, without one, the reason's explanation and the account.
pub fn abort_reason(commit: &CommitResponse) -> String {
    let code = commit.reason.map_or_else(|| "no reason given".to_string(), |r| wire_name(&r));
    match (&commit.message, commit.reason, commit.key) {
        (Some(message), _, _) => format!("{code}: {message}"),
        (None, Some(reason), Some(key)) => format!("{code}: {} (account {key})", reason.explain()),
        (None, Some(reason), None) => format!("{code}: {}", reason.explain()),
        (None, None, Some(key)) => format!("{code} (account {key})"),
        (None, None, None) => code,
    }
}

/// Why a transaction aborted, for someone who has not read the design.
pub fn plain_reason(commit: &CommitResponse) -> String {
    match (commit.reason, commit.key) {
        (Some(AbortReason::StaleRead), Some(key)) => {
            format!("account {key} was changed by another transaction after this one read it; running it again reads the new value")
        }
        (Some(AbortReason::KeyLocked), Some(key)) => {
            format!("account {key} is being written by another transaction that has not finished; try again")
        }
        (Some(AbortReason::ReplicationFailed), _) => {
            "a member of the cluster refused or did not answer in time, so no member applied it".into()
        }
        (Some(AbortReason::NotEnoughReplicas), _) => {
            "too few nodes are reachable to keep the required number of copies, so no member applied it; it can be run again once they are back".into()
        }
        (Some(reason), _) => reason.explain().to_string(),
        (None, _) => commit.message.clone().unwrap_or_else(|| "the leader gave no reason".into()),
    }
}

pub fn role_name(role: Role) -> String {
    wire_name(&role)
}

/// The snake_case name a value has on the wire (`stale_read`, `leader`).
pub fn wire_name(value: &impl Serialize) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_else(|| "?".to_string())
}

pub fn describe_writes(writes: &BTreeMap<Account, Balance>) -> String {
    let parts: Vec<String> = writes.iter().map(|(a, b)| format!("account {a} = {b}")).collect();
    parts.join(", ")
}

fn optional(value: Option<i64>) -> String {
    value.map_or_else(|| "?".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn aborted(reason: Option<AbortReason>, key: Option<Account>, message: Option<&str>) -> CommitResponse {
        CommitResponse {
            commit: Outcome::Abort,
            txn_id: Uuid::nil(),
            commit_ts: None,
            lsn: None,
            reason,
            key,
            message: message.map(str::to_string),
        }
    }

    #[test]
    fn an_abort_reads_with_its_code_then_the_best_words_there_are() {
        let stale = Some(AbortReason::StaleRead);
        assert_eq!(abort_reason(&aborted(stale, Some(1), Some("account 1 moved"))), "stale_read: account 1 moved");
        let explained = abort_reason(&aborted(stale, Some(1), None));
        assert!(explained.starts_with("stale_read: ") && explained.ends_with(" (account 1)"), "{explained}");
        assert_eq!(abort_reason(&aborted(None, Some(2), None)), "no reason given (account 2)");
        assert_eq!(abort_reason(&aborted(None, None, None)), "no reason given");

        assert!(
            plain_reason(&aborted(stale, Some(1), None)).starts_with("account 1 was changed by another transaction")
        );
        assert_eq!(plain_reason(&aborted(None, None, Some("busy"))), "busy");
    }

    #[test]
    fn a_read_only_report_prints_the_values_and_no_leader() {
        let report = RunReport {
            transaction: "r(1)r(2)".into(),
            read: Some(ReadResult {
                values: vec![(1, Some(10)), (2, None)],
                timestamp: 5,
                lsn: 6,
                node: "node1".into(),
                role: Role::Replica,
                agent: "h:1".into(),
            }),
            writes: BTreeMap::new(),
            commit: None,
            leader: None,
            notes: vec!["n".into()],
            latency: Duration::from_millis(3),
        };
        assert_eq!((report.verdict(), report.exit_code(), report.leader_text()), (Verdict::Read, 0, None));
        assert_eq!(
            report.to_text(),
            "note: n\nread from node1 (replica) at h:1: timestamp 5, lsn 6\n  account 1 = 10\n  account 2: no such \
             account (never written)\nREAD: read-only transaction, nothing to commit\nlatency: 3.0 ms\n"
        );
    }
}
