//! The cluster page's views: the supervisor's status, its timeline of events, the operator
//! buttons, the history and the drills, as text ready to print.

use protocol::Role;

use crate::metrics::FormOutcome;
use crate::operator::Operation;
use crate::run::wire_name;
use crate::status::{clock_time, node_id, role_label, HistoryEvent, NodeReport, StatusError, SupervisorStatus};
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
    /// Automatic failover and recovery are off: the page shows a banner.
    pub(crate) maintenance: bool,
    /// Pause or resume, whichever applies now (none without a status).
    pub(crate) maintenance_op: Option<OpButton>,
    /// The supervisor's events, newest first (at most [`EVENTS_SHOWN`]).
    pub(crate) events: Vec<EventRow>,
    /// The plots, each an inline `<svg>` element (see `view::plot`).
    pub(crate) plots: Vec<String>,
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
    /// The operator actions this node offers (switch over to it, remove it, rebuild it).
    pub(crate) ops: Vec<OpButton>,
}

/// A button that asks the supervisor for an operator action (`POST /cluster/operate`).
pub(crate) struct OpButton {
    /// The form's `action`: `switchover`, `pause`, ...
    pub(crate) action: &'static str,
    /// The form's `node` (empty for pause and resume).
    pub(crate) node: String,
    pub(crate) label: &'static str,
    pub(crate) confirm: String,
}

impl OpButton {
    fn of(operation: &Operation) -> OpButton {
        OpButton {
            action: operation.name(),
            node: operation.node().unwrap_or_default().to_string(),
            label: operation.button(),
            confirm: operation.question(),
        }
    }
}

/// One event of the supervisor's history, as the timeline prints it.
pub(crate) struct EventRow {
    pub(crate) at: String,
    pub(crate) at_ms: u64,
    /// `failover`, `switchover`, `maintenance_on`, ...: also its CSS class.
    pub(crate) kind: String,
    pub(crate) node: String,
    pub(crate) term: i64,
    pub(crate) ok: bool,
    pub(crate) message: String,
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

/// Events the timeline shows, newest first (the supervisor's `/status` carries up to 50).
pub(crate) const EVENTS_SHOWN: usize = 20;

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

/// The operator actions a node offers: a member that is not the leader can lead (if it
/// answers) or be removed; a node outside the members can be rebuilt.
pub(crate) fn operations_for(node: &NodeReport, leader: Option<&str>) -> Vec<OpButton> {
    let address = node.address.clone();
    let leads = leader == Some(node.address.as_str());
    let mut ops = Vec::new();
    if node.member && !leads && node.alive {
        ops.push(OpButton::of(&Operation::Switchover { to: address.clone() }));
    }
    if node.member && !leads {
        ops.push(OpButton::of(&Operation::RemoveMember { node: address.clone() }));
    }
    if !node.member {
        ops.push(OpButton::of(&Operation::Rebuild { node: address }));
    }
    ops
}

/// The supervisor's events newest first, at most [`EVENTS_SHOWN`].
pub(crate) fn timeline(events: &[HistoryEvent]) -> Vec<EventRow> {
    events
        .iter()
        .rev()
        .take(EVENTS_SHOWN)
        .map(|e| EventRow {
            at: clock_time(e.at_ms),
            at_ms: e.at_ms,
            kind: wire_name(&e.kind),
            node: e.node.clone().unwrap_or_else(|| "–".into()),
            term: e.term,
            ok: e.ok,
            message: e.message.clone(),
        })
        .collect()
}

/// The flash at the top of the cluster page after a drill: what the agent answered.
pub(crate) fn flash(drill: &DrillEntry) -> Flash {
    Flash {
        class: if drill.changed { "ok" } else { "bad" },
        text: if drill.node.is_empty() {
            format!("{}: {}", drill.action, drill.message)
        } else {
            format!("{} on {}: {}", drill.action, drill.node, drill.message)
        },
    }
}

/// The live part of the cluster page: the supervisor's status (or why there is none), where
/// this client sends transactions, and what it ran, newest first.
pub(crate) fn live_view(
    cluster: &Result<SupervisorStatus, StatusError>,
    client_leader: String,
    history: Vec<HistoryEntry>,
    drills: Vec<DrillEntry>,
    plots: Vec<String>,
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
        maintenance: false,
        maintenance_op: None,
        events: Vec::new(),
        plots,
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
    view.maintenance = c.maintenance;
    view.maintenance_op = Some(OpButton::of(if c.maintenance { &Operation::Resume } else { &Operation::Pause }));
    view.events = timeline(&c.events);
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
            ops: operations_for(n, c.leader.as_deref()),
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
        let view = live_view(&Ok(after_failover()), "127.0.0.1:8001".into(), vec![], vec![], vec![]);
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
            vec![],
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
    fn members_can_lead_or_leave_and_other_nodes_can_be_rebuilt() {
        let cluster = after_failover();
        let ops = |i: usize| {
            operations_for(&cluster.nodes[i], cluster.leader.as_deref())
                .iter()
                .map(|o| (o.action, o.node.clone(), o.label))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ops(0),
            [
                ("switchover", "127.0.0.1:8000".to_string(), "Make leader"),
                ("member_remove", "127.0.0.1:8000".to_string(), "Remove")
            ]
        );
        assert_eq!(ops(1), [], "the leader: neither");
        assert_eq!(ops(2), [("rebuild", "127.0.0.1:8002".to_string(), "Rebuild")]);
        let rebuild = &operations_for(&cluster.nodes[2], None)[0];
        assert!(rebuild.confirm.starts_with("Rebuild 127.0.0.1:8002 (POST /rebuild)? Its database is EMPTIED"));
    }

    #[test]
    fn the_view_offers_pause_or_resume_and_lists_the_events_newest_first() {
        let mut cluster = after_failover();
        let view = live_view(&Ok(cluster.clone()), String::new(), vec![], vec![], vec![]);
        assert!(!view.maintenance);
        assert_eq!(view.maintenance_op.as_ref().map(|o| o.action), Some("pause"));
        assert!(view.events.is_empty());
        cluster.maintenance = true;
        cluster.events = serde_json::from_str(
            r#"[{"at_ms": 3600000, "kind": "failover", "node": "127.0.0.1:8001", "term": 2, "ok": true, "message": "a"},
                {"at_ms": 3723000, "kind": "maintenance_on", "term": 2, "ok": true, "message": "b"}]"#,
        )
        .unwrap();
        let view = live_view(&Ok(cluster), String::new(), vec![], vec![], vec!["<svg></svg>".into()]);
        assert!(view.maintenance);
        let resume = view.maintenance_op.unwrap();
        assert_eq!((resume.action, resume.label, resume.node.as_str()), ("resume", "Resume automatic failover", ""));
        let events: Vec<_> =
            view.events.iter().map(|e| (e.at.as_str(), e.kind.as_str(), e.node.as_str(), e.term)).collect();
        assert_eq!(
            events,
            [("01:02:03 UTC", "maintenance_on", "–", 2), ("01:00:00 UTC", "failover", "127.0.0.1:8001", 2)]
        );
        assert_eq!(view.plots, ["<svg></svg>"]);
        let none = live_view(&Err(StatusError::NoAddress), String::new(), vec![], vec![], vec![]);
        assert!(none.maintenance_op.is_none());
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
