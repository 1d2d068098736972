//! `GET /status` of the supervisor: the cluster as the supervisor sees it from its last polls.
//!
//! One definition for every program: the supervisor serves it, the client shows it, the bench
//! and the tests read it. The supervisor always sends every field (the OpenAPI document marks
//! them required), but a reader takes a body with fields missing (each then has its default)
//! or fields it does not know (ignored), so that a client and a supervisor of different
//! versions still understand each other.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::operator::HistoryEvent;
use crate::wire::{AgentStatus, Lsn, Role, Term};

/// `GET /status` of the supervisor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct SupervisorStatus {
    /// Where the configuration is kept: `file <path>`, or `etcd <endpoints> <prefix>`.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub store: String,
    /// Whether this supervisor acts (always with a state file; with etcd, while it holds the
    /// lease). A standby polls and reports, but changes nothing.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub active: bool,
    /// The active supervisor's address, as last seen in etcd (this one's, when active).
    pub active_supervisor: Option<String>,
    /// The last error talking to the configuration store, if the last attempt failed.
    pub store_error: Option<String>,
    /// The cluster's id, once learnt from its first leader.
    pub cluster_id: Option<Uuid>,
    /// The durability floor: the member set never shrinks below it.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub min_copies: usize,
    /// The term of the configuration the supervisor holds (0 before the first one).
    #[cfg_attr(feature = "openapi", schema(required, value_type = i64))]
    pub term: Term,
    /// The version of that configuration within its term.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub config_version: u64,
    /// The leader the configuration names, if any.
    pub leader: Option<String>,
    /// The members in sync (the leader included), in configured order.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub members: Vec<String>,
    /// Whether a commit can succeed now: the named leader serves and every member answers.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub writes_available: bool,
    /// The state in one sentence.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub message: String,
    /// Every agent the supervisor watches, in configured order.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub nodes: Vec<NodeReport>,
    /// The newest of `failovers`, if any.
    pub last_failover: Option<FailoverReport>,
    /// The latest failovers, oldest first (a bounded history).
    #[cfg_attr(feature = "openapi", schema(required))]
    pub failovers: Vec<FailoverReport>,
    /// The nodes being recovered now.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub recovering: Vec<String>,
    /// The latest recoveries, oldest first (a bounded history).
    #[cfg_attr(feature = "openapi", schema(required))]
    pub recoveries: Vec<RecoveryReport>,
    /// Nodes refused for a diverged log: never recovered automatically.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub diverged: Vec<String>,
    /// The `/leader_changed/` URLs of the registered clients.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub clients: Vec<String>,
    /// Whether automatic failover and recovery are off (`POST /pause`; `POST /resume` ends it).
    #[cfg_attr(feature = "openapi", schema(required))]
    pub maintenance: bool,
    /// The latest events of the durable history, oldest first (`GET /history` has more).
    #[cfg_attr(feature = "openapi", schema(required))]
    pub events: Vec<HistoryEvent>,
}

/// One agent as the supervisor sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct NodeReport {
    /// The agent's address, as configured in the supervisor.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub address: String,
    /// Whether it counts as up: it answered a poll once, and has missed fewer polls in a row
    /// since than the supervisor's `--misses`.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub alive: bool,
    /// Whether it is in the configuration's member set.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub member: bool,
    /// Its role, from its last status.
    pub role: Option<Role>,
    /// Its term, from its last status.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<i64>))]
    pub term: Option<Term>,
    /// The last log position it applied, from its last status.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<i64>))]
    pub applied_lsn: Option<Lsn>,
    /// Entries behind the leader.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<i64>))]
    pub lag: Option<Lsn>,
    /// Why the last poll failed, if it did.
    pub error: Option<String>,
    /// The agent's own `/status`, when it answered.
    pub status: Option<AgentStatus>,
}

/// One failover: who took over from whom, and how long writes were unavailable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct FailoverReport {
    /// Unix time in milliseconds.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub at_ms: u64,
    /// The leader that failed (none when a named leader never led: its election was finished).
    pub old_leader: Option<String>,
    /// The member elected.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub new_leader: String,
    /// The new term.
    #[cfg_attr(feature = "openapi", schema(required, value_type = i64))]
    pub term: Term,
    /// From the old leader's last healthy poll to the decision to fail over.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub detection_ms: u64,
    /// From the decision to the new leader serving.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub election_ms: u64,
    /// How long writes were unavailable: last healthy poll of the old leader to new leader serving.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub unavailable_ms: u64,
    /// In-doubt batches the new leader resolved by committing them.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub in_doubt_committed: u32,
    /// In-doubt batches the new leader resolved by aborting them.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub in_doubt_aborted: u32,
}

/// One recovery of a returning node, finished or failed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct RecoveryReport {
    /// The node's address.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub node: String,
    /// When it started, Unix time in milliseconds.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub at_ms: u64,
    /// Whether the node is back in the member set.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub ok: bool,
    /// What happened, in one sentence (why it failed, when it did).
    #[cfg_attr(feature = "openapi", schema(required))]
    pub message: String,
    /// Log entries the node applied, bulk and tail together.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub entries_applied: u64,
    /// From the start to the end of the attempt.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub duration_ms: u64,
    /// How long commits were paused on the leader for the final catch-up.
    pub commit_pause_ms: Option<u64>,
    /// The LSN of the leader's snapshot the node was rebuilt from, if it was (it was empty, or
    /// behind the leader's log horizon: `--retain-log`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<i64>))]
    pub snapshot_lsn: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_body_reads_with_defaults() {
        let status: SupervisorStatus = serde_json::from_str(r#"{"leader": null, "a_future_field": 1}"#).unwrap();
        assert_eq!(status, SupervisorStatus::default());
        let node: NodeReport = serde_json::from_str(r#"{"address": "127.0.0.1:8000", "role": "leader"}"#).unwrap();
        assert_eq!(node.role, Some(Role::Leader));
        assert!(!node.alive);
    }

    #[test]
    fn every_field_is_sent_even_when_empty() {
        let v = serde_json::to_value(SupervisorStatus::default()).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut expected = [
            "store",
            "active",
            "active_supervisor",
            "store_error",
            "cluster_id",
            "min_copies",
            "term",
            "config_version",
            "leader",
            "members",
            "writes_available",
            "message",
            "nodes",
            "last_failover",
            "failovers",
            "recovering",
            "recoveries",
            "diverged",
            "clients",
            "maintenance",
            "events",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(v["last_failover"], serde_json::Value::Null);
    }

    #[test]
    fn a_report_round_trips() {
        let failover = FailoverReport {
            at_ms: 1,
            old_leader: Some("a".into()),
            new_leader: "b".into(),
            term: 2,
            detection_ms: 3,
            election_ms: 4,
            unavailable_ms: 7,
            in_doubt_committed: 1,
            in_doubt_aborted: 0,
        };
        let text = serde_json::to_string(&failover).unwrap();
        assert_eq!(serde_json::from_str::<FailoverReport>(&text).unwrap(), failover);
    }
}
