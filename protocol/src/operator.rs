//! The supervisor's operator endpoints: planned changes an operator asks for, and the durable
//! history of what the supervisor did.
//!
//! - `POST /switchover` ([`SwitchoverRequest`] → [`SwitchoverResponse`]): a planned change of
//!   leader to a member in sync.
//! - `POST /pause`, `POST /resume` (→ [`MaintenanceResponse`]): automatic failover and recovery
//!   off and on.
//! - `POST /members/add`, `POST /rebuild` ([`NodeRequest`] → 202 [`NodeAccepted`]) and
//!   `POST /members/remove` ([`NodeRequest`] → 200 [`crate::ClusterConfig`]).
//! - `GET /history?limit=N` (→ [`HistoryPage`]): the latest [`HistoryEvent`]s, newest last.
//!
//! Every refusal is a 409 [`crate::ErrorBody`] whose `error` is one of [`OperatorRefusal`]'s
//! codes and whose `message` says what to do about it.

use serde::{Deserialize, Serialize};

use crate::wire::Term;

/// What a [`HistoryEvent`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum HistoryKind {
    /// The leader failed and another member was elected.
    Failover,
    /// An operator moved the leadership to another member (`POST /switchover`).
    Switchover,
    /// A returning node was brought back into the member set (or the attempt failed).
    Recovery,
    /// An operator added a node to the supervisor's node list (`POST /members/add`).
    MemberAdded,
    /// A member left the member set: on an operator's `POST /members/remove`.
    MemberRemoved,
    /// An operator had a node's database emptied to recover it from scratch (`POST /rebuild`).
    Rebuild,
    /// Automatic failover and recovery were turned off (`POST /pause`).
    MaintenanceOn,
    /// Automatic failover and recovery were turned on again (`POST /resume`).
    MaintenanceOff,
    /// A node's log was found to differ from the leader's: it needs a rebuild.
    Diverged,
    /// A kind this program does not know (from a newer supervisor): shown as it is, never an
    /// error, so that an older client still reads the whole status.
    #[serde(other)]
    Other,
}

/// One thing the supervisor did, kept in its store (the last [`MAX_HISTORY_EVENTS`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryEvent {
    /// Unix time in milliseconds.
    pub at_ms: u64,
    pub kind: HistoryKind,
    /// The node concerned: the new leader of a failover or switchover, the node recovered,
    /// added, removed or rebuilt. None for maintenance on and off.
    #[serde(default)]
    pub node: Option<String>,
    /// The term of the configuration after the event.
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub term: Term,
    /// Whether it succeeded (a failed recovery is recorded too).
    pub ok: bool,
    /// What happened, in one sentence.
    pub message: String,
}

/// How many events the supervisor keeps; the oldest are dropped.
pub const MAX_HISTORY_EVENTS: usize = 1000;
/// `GET /history` without `limit`.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;
/// How many events `GET /status` carries.
pub const STATUS_EVENTS: usize = 50;

/// `GET /history?limit=N`: the latest `N` events, oldest first (newest last).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryPage {
    pub events: Vec<HistoryEvent>,
}

/// `POST /switchover`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SwitchoverRequest {
    /// The member to lead next (`host:port`, as the supervisor lists it).
    pub to: String,
}

/// The answer of a switchover that happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SwitchoverResponse {
    /// The new leader.
    pub leader: String,
    /// Its term (a new one).
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub term: Term,
    /// How long the old leader held new commits, from its pause to the new leader serving.
    pub writes_paused_ms: u64,
    pub message: String,
}

/// The answer of `POST /pause` and `POST /resume`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MaintenanceResponse {
    /// Whether automatic failover and recovery are off now.
    pub maintenance: bool,
    pub message: String,
}

/// `POST /members/add`, `POST /members/remove` and `POST /rebuild`: the node concerned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NodeRequest {
    /// The agent's address (`host:port`), as the supervisor lists it.
    pub node: String,
}

/// 202 of `POST /members/add` and `POST /rebuild`: the node's recovery has started; it shows in
/// `GET /status` (`recovering`, then `members`) and in the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeAccepted {
    pub node: String,
    /// Always `recovering`.
    pub state: String,
    pub message: String,
    /// `POST /rebuild` only: how many log entries the node's database held before it was
    /// emptied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wiped_entries: Option<u64>,
}

/// Why the supervisor refused an operator's request: the `error` code of its 409 answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OperatorRefusal {
    /// Switchover: no leader serves now (a failover is due instead).
    NoLeader,
    /// Switchover: the target is not in the member set.
    NotMember,
    /// Switchover: the target does not answer the supervisor's polls.
    NotAlive,
    /// Switchover: the target already leads.
    AlreadyLeader,
    /// Switchover: the target's log is behind the leader's by more than one round, or did not
    /// catch up during the pause.
    NotInSync,
    /// Members add: the supervisor already watches that node.
    AlreadyKnown,
    /// Members add: the node does not answer `/status`.
    Unreachable,
    /// Members remove: the node leads (switch over first).
    IsLeader,
    /// Members remove: fewer members than `--min-copies` would remain.
    BelowFloor,
    /// Rebuild: the node is a member (remove it first).
    IsMember,
    /// Rebuild: the agent refused to empty its database (it leads, or counts itself a member).
    ResetRefused,
    /// Another planned change or an election is under way, or (switchover) the leader could not
    /// pause its commits in time; try again shortly.
    Busy,
}

impl OperatorRefusal {
    /// The code as it appears in the `error` field.
    pub fn code(self) -> &'static str {
        match self {
            OperatorRefusal::NoLeader => "no_leader",
            OperatorRefusal::NotMember => "not_member",
            OperatorRefusal::NotAlive => "not_alive",
            OperatorRefusal::AlreadyLeader => "already_leader",
            OperatorRefusal::NotInSync => "not_in_sync",
            OperatorRefusal::AlreadyKnown => "already_known",
            OperatorRefusal::Unreachable => "unreachable",
            OperatorRefusal::IsLeader => "is_leader",
            OperatorRefusal::BelowFloor => "below_floor",
            OperatorRefusal::IsMember => "is_member",
            OperatorRefusal::ResetRefused => "reset_refused",
            OperatorRefusal::Busy => "busy",
        }
    }
}

impl std::fmt::Display for OperatorRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_kind_from_a_newer_supervisor_still_reads() {
        let event: HistoryEvent = serde_json::from_value(
            serde_json::json!({"at_ms": 1, "kind": "cluster_renamed", "term": 3, "ok": true, "message": "m"}),
        )
        .unwrap();
        assert_eq!(event.kind, HistoryKind::Other);
    }

    #[test]
    fn kinds_and_codes_are_snake_case_on_the_wire() {
        assert_eq!(serde_json::to_value(HistoryKind::MaintenanceOn).unwrap(), "maintenance_on");
        assert_eq!(serde_json::to_value(HistoryKind::MemberRemoved).unwrap(), "member_removed");
        for refusal in [OperatorRefusal::NotInSync, OperatorRefusal::BelowFloor, OperatorRefusal::ResetRefused] {
            assert_eq!(serde_json::to_value(refusal).unwrap(), refusal.code());
        }
    }

    #[test]
    fn an_event_round_trips_and_reads_without_a_node() {
        let event = HistoryEvent {
            at_ms: 1,
            kind: HistoryKind::Switchover,
            node: Some("127.0.0.1:8001".into()),
            term: 4,
            ok: true,
            message: "x".into(),
        };
        let text = serde_json::to_string(&event).unwrap();
        assert_eq!(serde_json::from_str::<HistoryEvent>(&text).unwrap(), event);
        let bare: HistoryEvent =
            serde_json::from_str(r#"{"at_ms": 1, "kind": "maintenance_off", "term": 2, "ok": true, "message": ""}"#)
                .unwrap();
        assert_eq!(bare.node, None);
    }

    #[test]
    fn a_request_with_an_unknown_field_is_refused() {
        assert!(serde_json::from_str::<SwitchoverRequest>(r#"{"to": "a:1", "force": true}"#).is_err());
        assert!(serde_json::from_str::<NodeRequest>(r#"{"node": "a:1"}"#).is_ok());
    }
}
