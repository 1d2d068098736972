//! `GET /status`: the cluster as the supervisor sees it, made from the last saved configuration,
//! the last polls and the history. Pure, so that what the page says in each state (writes
//! available or not, and why) is a unit test.

use protocol::operator::STATUS_EVENTS;
use protocol::supervisor_status::{NodeReport, SupervisorStatus};
use protocol::Role;

use crate::history::History;
use crate::polling::NodeObs;
use crate::store::Persisted;

/// Who this supervisor is, as `GET /status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    /// Where the configuration is kept (`file <path>`, `etcd <endpoints> <prefix>`).
    pub store: String,
    /// Whether this supervisor acts.
    pub active: bool,
    /// The active supervisor's address (this one's, when active).
    pub active_supervisor: Option<String>,
    /// The last error talking to the configuration store.
    pub store_error: Option<String>,
    /// `--min-copies`.
    pub min_copies: usize,
    /// `--misses`.
    pub misses: u32,
}

/// The status from the saved configuration, what the polls saw and what the supervisor did.
pub fn cluster_status(
    persisted: Persisted,
    observed: &[NodeObs],
    history: &History,
    standing: Standing,
) -> SupervisorStatus {
    let Persisted { config, clients, cluster_id, events, maintenance, nodes: _ } = persisted;
    let Standing { store, active, active_supervisor, store_error, min_copies, misses } = standing;
    let leader_applied = config
        .leader
        .as_ref()
        .and_then(|l| observed.iter().find(|o| &o.address == l))
        .and_then(|o| o.status.as_ref().map(|s| s.applied_lsn));
    let nodes: Vec<NodeReport> = observed
        .iter()
        .map(|o| NodeReport {
            address: o.address.clone(),
            alive: o.alive(misses),
            member: config.members.contains(&o.address),
            role: o.status.as_ref().map(|s| s.role),
            term: o.status.as_ref().map(|s| s.term),
            applied_lsn: o.status.as_ref().map(|s| s.applied_lsn),
            lag: match (leader_applied, o.status.as_ref()) {
                (Some(l), Some(s)) => Some((l - s.applied_lsn).max(0)),
                _ => None,
            },
            error: o.error.clone(),
            status: o.status.clone(),
        })
        .collect();
    let leader_serving = config.leader.as_ref().is_some_and(|l| {
        observed
            .iter()
            .any(|o| &o.address == l && o.alive(misses) && o.status.as_ref().is_some_and(|s| s.role == Role::Leader))
    });
    let answering =
        config.members.iter().filter(|m| observed.iter().any(|o| &o.address == *m && o.alive(misses))).count();
    let members_alive = answering == config.members.len();
    let writes_available = leader_serving && members_alive;
    let message = if writes_available {
        format!("writes go to {}", config.leader.clone().unwrap_or_default())
    } else if let Some(reason) = &history.no_leader {
        reason.clone()
    } else if !leader_serving {
        "no leader is serving: a failover is in progress or pending".into()
    } else if answering < min_copies {
        format!(
            "{answering} of {} members answer, below the durability floor of {min_copies}: commits answer 503 \
             not_enough_replicas until one is back (reads go on)",
            config.members.len(),
        )
    } else {
        "a member does not answer the supervisor: commits wait for it until the leader reports it and it is \
         removed, or it answers again"
            .into()
    };
    let message = if maintenance {
        format!("maintenance: automatic failover and recovery are off (POST /resume turns them on); {message}")
    } else {
        message
    };
    SupervisorStatus {
        store,
        active,
        active_supervisor,
        store_error,
        cluster_id,
        min_copies,
        term: config.term,
        config_version: config.version,
        leader: config.leader.clone(),
        members: config.members.clone(),
        writes_available,
        message,
        nodes,
        last_failover: history.failovers.back().cloned(),
        failovers: history.failovers.iter().cloned().collect(),
        recovering: history.recovering.iter().cloned().collect(),
        recoveries: history.recoveries.iter().cloned().collect(),
        diverged: history.diverged.iter().cloned().collect(),
        clients,
        maintenance,
        events: events[events.len().saturating_sub(STATUS_EVENTS)..].to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use protocol::{AgentStatus, ClusterConfig, Lsn};

    use super::*;

    fn node(address: &str, role: Role, applied_lsn: Lsn) -> NodeObs {
        let status = AgentStatus {
            node_id: address.into(),
            address: address.into(),
            role,
            term: 2,
            leader: Some("a:1".into()),
            applied_lsn,
            last_commit_ts: 0,
            last_term: 2,
            min_copies: 2,
            cluster_id: None,
            members: vec![],
            prepared_batch: None,
            config_version: 3,
            supervisor: None,
        };
        NodeObs { address: address.into(), misses: 0, last_ok: Some(Instant::now()), status: Some(status), error: None }
    }

    fn down(address: &str) -> NodeObs {
        NodeObs {
            address: address.into(),
            misses: 5,
            error: Some(format!("{address} did not answer")),
            ..Default::default()
        }
    }

    fn persisted(members: &[&str]) -> Persisted {
        Persisted {
            config: ClusterConfig {
                term: 2,
                version: 3,
                leader: Some("a:1".into()),
                members: members.iter().map(|m| m.to_string()).collect(),
            },
            clients: vec![],
            cluster_id: None,
            ..Persisted::empty()
        }
    }

    fn standing() -> Standing {
        Standing {
            store: "file s.json".into(),
            active: true,
            active_supervisor: Some("127.0.0.1:9000".into()),
            store_error: None,
            min_copies: 2,
            misses: 3,
        }
    }

    #[test]
    fn writes_are_available_when_the_leader_serves_and_every_member_answers() {
        let nodes = [node("a:1", Role::Leader, 12), node("b:2", Role::Replica, 9), down("c:3")];
        let status = cluster_status(persisted(&["a:1", "b:2"]), &nodes, &History::default(), standing());
        assert!(status.writes_available);
        assert_eq!(status.message, "writes go to a:1");
        assert_eq!(status.nodes.iter().map(|n| n.lag).collect::<Vec<_>>(), [Some(0), Some(3), None]);
        assert_eq!(status.nodes.iter().map(|n| n.member).collect::<Vec<_>>(), [true, true, false]);
        assert!(!status.nodes[2].alive);
    }

    #[test]
    fn a_silent_member_stops_writes_and_the_message_says_why() {
        let nodes = [node("a:1", Role::Leader, 12), node("b:2", Role::Replica, 12), down("c:3")];
        let status = cluster_status(persisted(&["a:1", "b:2", "c:3"]), &nodes, &History::default(), standing());
        assert!(!status.writes_available);
        assert!(status.message.starts_with("a member does not answer the supervisor"), "{}", status.message);

        let nodes = [node("a:1", Role::Leader, 12), down("b:2")];
        let status = cluster_status(persisted(&["a:1", "b:2"]), &nodes, &History::default(), standing());
        assert!(status.message.starts_with("1 of 2 members answer, below the durability floor of 2"));

        let nodes = [node("a:1", Role::Replica, 12), node("b:2", Role::Replica, 12)];
        let status = cluster_status(persisted(&["a:1", "b:2"]), &nodes, &History::default(), standing());
        assert_eq!(status.message, "no leader is serving: a failover is in progress or pending");
        let mut history = History::default();
        history.no_leader(Some("no live member can lead".into()));
        let status = cluster_status(persisted(&["a:1", "b:2"]), &nodes, &history, standing());
        assert_eq!(status.message, "no live member can lead");
    }

    #[test]
    fn maintenance_shows_and_says_automatic_failover_is_off_and_the_status_carries_the_latest_events() {
        let nodes = [node("a:1", Role::Leader, 12), node("b:2", Role::Replica, 12)];
        let mut state = persisted(&["a:1", "b:2"]);
        state.maintenance = true;
        for at_ms in 0..STATUS_EVENTS as u64 + 3 {
            state.events.push(protocol::operator::HistoryEvent {
                at_ms,
                kind: protocol::operator::HistoryKind::Recovery,
                node: None,
                term: 2,
                ok: true,
                message: String::new(),
            });
        }
        let status = cluster_status(state, &nodes, &History::default(), standing());
        assert!(status.maintenance);
        assert!(
            status.message.starts_with("maintenance: automatic failover and recovery are off"),
            "{}",
            status.message
        );
        assert!(status.message.ends_with("writes go to a:1"), "{}", status.message);
        assert_eq!(status.events.len(), STATUS_EVENTS);
        assert_eq!(status.events.last().map(|e| e.at_ms), Some(STATUS_EVENTS as u64 + 2), "newest last");
    }
}
