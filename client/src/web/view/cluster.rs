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
