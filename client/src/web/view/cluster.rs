//! The cluster page's views: the supervisor's status, the history and the drills, as text ready to
//! print.

use protocol::Role;

use crate::metrics::FormOutcome;
use crate::status::{clock_time, node_id, role_label, NodeReport, StatusError, SupervisorStatus};
use crate::web::drill::Drill;
use crate::web::state::{DrillEntry, HistoryEntry, HISTORY_LEN};

pub(crate) struct Flash {
    /// `ok` or `bad`.
    pub(crate) class: &'static str,
    pub(crate) text: String,
}

/// Everything the live part of the cluster page shows, as text ready to print.
pub(crate) struct LiveView {
    pub(crate) reachable: bool,
    pub(crate) error: String,
    pub(crate) writes_available: bool,
    pub(crate) message: String,
    pub(crate) term: i64,
    pub(crate) config_version: u64,
    pub(crate) leader: String,
    pub(crate) members: Vec<String>,
    pub(crate) nodes: Vec<NodeRow>,
    pub(crate) last_failover: Option<FailoverView>,
    pub(crate) failover_count: usize,
    pub(crate) recovering: Vec<String>,
    pub(crate) recoveries: Vec<RecoveryView>,
    pub(crate) diverged: Vec<String>,
    pub(crate) client_leader: String,
    pub(crate) history: Vec<HistoryRow>,
    pub(crate) history_cap: usize,
    pub(crate) drills: Vec<DrillRow>,
}

pub(crate) struct NodeRow {
    pub(crate) address: String,
    pub(crate) node_id: String,
    /// `leader`, `replica`, `standby`, `down`, or `unknown` when it does not answer.
    pub(crate) role: String,
    pub(crate) alive: bool,
    pub(crate) member: bool,
    pub(crate) term: String,
    pub(crate) applied_lsn: String,
    pub(crate) lag: String,
    pub(crate) error: String,
    pub(crate) action: Option<DrillAction>,
}

pub(crate) struct DrillAction {
    /// `down_leader` or `up_node`: the agent's endpoint.
    pub(crate) action: &'static str,
    pub(crate) label: &'static str,
    pub(crate) confirm: String,
}

pub(crate) struct FailoverView {
    pub(crate) at: String,
    pub(crate) at_ms: u64,
    pub(crate) old_leader: String,
    pub(crate) new_leader: String,
    pub(crate) term: i64,
    pub(crate) detection_ms: u64,
    pub(crate) election_ms: u64,
    pub(crate) unavailable_ms: u64,
    pub(crate) in_doubt_committed: u32,
    pub(crate) in_doubt_aborted: u32,
}

pub(crate) struct RecoveryView {
    pub(crate) node: String,
    pub(crate) at: String,
    pub(crate) at_ms: u64,
    pub(crate) ok: bool,
    pub(crate) entries: u64,
    pub(crate) duration_ms: u64,
    pub(crate) pause: String,
    pub(crate) message: String,
}

pub(crate) struct HistoryRow {
    pub(crate) at: String,
    pub(crate) transaction: String,
    pub(crate) outcome: &'static str,
    /// The CSS class of the outcome.
    pub(crate) class: &'static str,
    pub(crate) leader: String,
    pub(crate) latency: String,
    pub(crate) detail: String,
}

pub(crate) struct DrillRow {
    pub(crate) at: String,
    pub(crate) action: String,
    pub(crate) node: String,
    pub(crate) message: String,
}

/// A number, or a dash where there is none.
fn dash(value: Option<i64>) -> String {
    value.map_or_else(|| "–".to_string(), |v| v.to_string())
}

/// The drill a node offers: stop it if it leads, bring it back if it is down.
pub(crate) fn drill_for(node: &NodeReport) -> Option<DrillAction> {
    let drill = match node.role? {
        Role::Leader => Drill::DownLeader,
        Role::Down => Drill::UpNode,
        Role::Replica | Role::Standby => return None,
    };
    Some(DrillAction { action: drill.name(), label: drill.button(), confirm: drill.question(&node.address) })
}

/// The flash at the top of the cluster page after a drill: what the agent answered.
pub(crate) fn flash(drill: &DrillEntry) -> Flash {
    Flash {
        class: if drill.changed { "ok" } else { "bad" },
        text: format!("{} on {}: {}", drill.action, drill.node, drill.message),
    }
}

/// The live part of the cluster page: the supervisor's status (or why there is none), where
/// this client sends transactions, and what it ran, newest first.
pub(crate) fn live_view(
    cluster: &Result<SupervisorStatus, StatusError>,
    client_leader: String,
    history: Vec<HistoryEntry>,
    drills: Vec<DrillEntry>,
) -> LiveView {
    let history = history
        .into_iter()
        .map(|h| HistoryRow {
            at: clock_time(h.at_ms),
            class: match h.outcome {
                FormOutcome::Commit => "commit",
                FormOutcome::Abort => "abort",
                FormOutcome::Read => "read",
                FormOutcome::Refused | FormOutcome::Unavailable => "error",
            },
            transaction: h.transaction,
            outcome: h.outcome.word(),
            leader: h.leader.unwrap_or_else(|| "–".into()),
            latency: if h.latency_ms > 0.0 { format!("{:.1} ms", h.latency_ms) } else { "–".into() },
            detail: h.detail,
        })
        .collect();
    let drills = drills
        .into_iter()
        .map(|d| DrillRow { at: clock_time(d.at_ms), action: d.action, node: d.node, message: d.message })
        .collect();
    let mut view = LiveView {
        reachable: cluster.is_ok(),
        error: cluster.as_ref().err().map(ToString::to_string).unwrap_or_default(),
        writes_available: false,
        message: String::new(),
        term: 0,
        config_version: 0,
        leader: "none".into(),
        members: Vec::new(),
        nodes: Vec::new(),
        last_failover: None,
        failover_count: 0,
        recovering: Vec::new(),
        recoveries: Vec::new(),
        diverged: Vec::new(),
        client_leader,
        history,
        history_cap: HISTORY_LEN,
        drills,
    };
    let Ok(c) = cluster else {
        return view;
    };
    view.writes_available = c.writes_available;
    view.message = c.message.clone();
    view.term = c.term;
    view.config_version = c.config_version;
    view.leader = c.leader.clone().unwrap_or_else(|| "none".into());
    view.members = c.members.clone();
    view.nodes = c
        .nodes
        .iter()
        .map(|n| NodeRow {
            address: n.address.clone(),
            node_id: node_id(n).to_string(),
            role: role_label(n),
            alive: n.alive,
            member: n.member,
            term: dash(n.term),
            applied_lsn: dash(n.applied_lsn),
            lag: dash(n.lag),
            error: n.error.clone().unwrap_or_default(),
            action: drill_for(n),
        })
        .collect();
    view.last_failover = c.last_failover.as_ref().map(|f| FailoverView {
        at: clock_time(f.at_ms),
        at_ms: f.at_ms,
        old_leader: f.old_leader.clone().unwrap_or_else(|| "(none)".into()),
        new_leader: f.new_leader.clone(),
        term: f.term,
        detection_ms: f.detection_ms,
        election_ms: f.election_ms,
        unavailable_ms: f.unavailable_ms,
        in_doubt_committed: f.in_doubt_committed,
        in_doubt_aborted: f.in_doubt_aborted,
    });
    view.failover_count = c.failovers.len().max(usize::from(c.last_failover.is_some()));
    view.recovering = c.recovering.clone();
    view.recoveries = c
        .recoveries
        .iter()
        .rev()
        .take(5)
        .map(|r| RecoveryView {
            node: r.node.clone(),
            at: clock_time(r.at_ms),
            at_ms: r.at_ms,
            ok: r.ok,
            entries: r.entries_applied,
            duration_ms: r.duration_ms,
            pause: r.commit_pause_ms.map_or_else(|| "–".into(), |p| format!("{p} ms")),
            message: r.message.clone(),
        })
        .collect();
    view.diverged = c.diverged.clone();
    view
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn after_failover() -> SupervisorStatus {
        serde_json::from_str(crate::status::tests::AFTER_FAILOVER).unwrap()
    }

    fn history(outcome: FormOutcome, latency_ms: f64) -> HistoryEntry {
        HistoryEntry {
            at_ms: 3_723_000,
            transaction: "w(7=70)".into(),
            outcome,
            leader: None,
            latency_ms,
            txn_id: Some(Uuid::nil()),
            detail: "detail".into(),
        }
    }

    fn drill(seq: u64, changed: bool) -> DrillEntry {
        DrillEntry {
            seq,
            at_ms: 3_723_000,
            action: "down_leader".into(),
            node: "127.0.0.1:8001".into(),
            changed,
            message: "/down_leader/: done (now down)".into(),
        }
    }

    #[test]
    fn the_live_view_prints_the_supervisor_s_status() {
        let view = live_view(&Ok(after_failover()), "127.0.0.1:8001".into(), vec![], vec![]);
        assert!(view.reachable && !view.writes_available);
        assert_eq!((view.term, view.config_version, view.leader.as_str()), (2, 3, "127.0.0.1:8001"));
        let rows: Vec<_> = view
            .nodes
            .iter()
            .map(|n| (n.node_id.as_str(), n.role.as_str(), n.term.as_str(), n.action.as_ref().map(|a| a.action)))
            .collect();
        assert_eq!(
            rows,
            [
                ("node0", "replica", "2", None),
                ("node1", "leader", "2", Some("down_leader")),
                ("-", "unknown", "–", None)
            ]
        );
        assert_eq!(view.nodes[2].error, "cannot connect: Connection refused (os error 111)");
        let failover = view.last_failover.as_ref().unwrap();
        assert_eq!((failover.old_leader.as_str(), failover.unavailable_ms), ("127.0.0.1:8000", 218));
        assert_eq!(view.failover_count, 1, "the last failover counts when the list is empty");
        let recovery = &view.recoveries[0];
        assert_eq!((recovery.node.as_str(), recovery.pause.as_str(), recovery.entries), ("127.0.0.1:8000", "15 ms", 5));
        assert_eq!(view.recovering, ["127.0.0.1:8002"]);
        assert_eq!(view.history_cap, HISTORY_LEN);
    }

    #[test]
    fn without_a_status_the_view_says_why_and_still_shows_this_client() {
        let view = live_view(
            &Err(StatusError::NotConfigured),
            "127.0.0.1:8000".into(),
            vec![history(FormOutcome::Commit, 1.25)],
            vec![drill(1, true)],
        );
        assert!(!view.reachable);
        assert_eq!(view.error, "this client has no supervisor to ask (--supervisor)");
        assert_eq!((view.leader.as_str(), view.client_leader.as_str()), ("none", "127.0.0.1:8000"));
        assert!(view.nodes.is_empty() && view.last_failover.is_none());
        let row = &view.history[0];
        assert_eq!(
            (row.at.as_str(), row.outcome, row.class, row.latency.as_str(), row.leader.as_str()),
            ("01:02:03 UTC", "COMMIT", "commit", "1.2 ms", "–")
        );
        assert_eq!(view.drills[0].action, "down_leader");
    }

    #[test]
    fn a_failed_run_reads_as_an_error_without_a_latency() {
        let rows = live_view(
            &Err(StatusError::NoAddress),
            String::new(),
            vec![
                history(FormOutcome::Unavailable, 0.0),
                history(FormOutcome::Refused, 0.0),
                history(FormOutcome::Read, 2.0),
            ],
            vec![],
        )
        .history;
        let printed: Vec<_> = rows.iter().map(|r| (r.outcome, r.class, r.latency.as_str())).collect();
        assert_eq!(printed, [("UNAVAILABLE", "error", "–"), ("REFUSED", "error", "–"), ("READ", "read", "2.0 ms")]);
    }

    #[test]
    fn a_leader_can_be_stopped_and_a_stopped_node_brought_back() {
        let mut node = after_failover().nodes[1].clone();
        let stop = drill_for(&node).unwrap();
        assert_eq!((stop.action, stop.label), ("down_leader", "Stop leader"));
        assert_eq!(
            stop.confirm,
            "Stop the leader 127.0.0.1:8001 (GET /down_leader/)? The supervisor will elect the next member as leader."
        );
        node.role = Some(Role::Down);
        let back = drill_for(&node).unwrap();
        assert_eq!((back.action, back.label), ("up_node", "Bring back"));
        for role in [Some(Role::Replica), Some(Role::Standby), None] {
            node.role = role;
            assert!(drill_for(&node).is_none(), "{role:?}");
        }
    }

    #[test]
    fn the_flash_says_what_the_agent_answered() {
        let done = flash(&drill(1, true));
        assert_eq!(
            (done.class, done.text.as_str()),
            ("ok", "down_leader on 127.0.0.1:8001: /down_leader/: done (now down)")
        );
        assert_eq!(flash(&drill(2, false)).class, "bad");
    }
}
