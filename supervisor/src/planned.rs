//! The rules of the changes an operator asks for, pure: whether a switchover, a member's
//! addition or removal, or a rebuild may go ahead, and the configuration each one leads to.
//! No I/O; [`crate::switchover`] and [`crate::operator`] carry them out. The safety argument is
//! in docs/guarantees.md ("A switchover loses no acknowledged commit", "Adding and removing
//! members keeps the floor and the evidence rules").
//!
//! Invariants kept here:
//! - A switchover only ever names a live member, in sync with a serving leader, and keeps every
//!   member (the old leader included) in the new configuration, in a new term.
//! - A removal never takes the leader, and never leaves fewer members than the floor.
//! - A rebuild (which empties a database) never touches a member.

use protocol::operator::OperatorRefusal;
use protocol::{AgentStatus, ClusterConfig, Lsn, Role};

use crate::failover::{highest_term, Observed};

/// How far behind the leader, in log entries, a member may be and still count as in sync for
/// a switchover: one full round (the leader batches at most 256 transactions in a round). Polls
/// of the leader and of the member are a few milliseconds apart, so under load the member can
/// look a round behind; the pause that follows closes that gap exactly, or refuses.
pub const IN_SYNC_ENTRIES: Lsn = 256;

/// A request refused, with the code the client matches and a message a person acts on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    pub code: OperatorRefusal,
    pub message: String,
}

fn refuse<T>(code: OperatorRefusal, message: String) -> Result<T, Refused> {
    Err(Refused { code, message })
}

/// Where a switchover stands before the pause: the leader and the target, as last polled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchoverPlan {
    pub leader: String,
    pub target: String,
}

/// Whether leadership may move to `to` now, from the configuration and the last polls.
pub fn check_switchover(config: &ClusterConfig, observed: &[Observed], to: &str) -> Result<SwitchoverPlan, Refused> {
    let seen = |addr: &str| observed.iter().find(|o| o.address == addr);
    let status = |addr: &str| seen(addr).filter(|o| o.alive).and_then(|o| o.status.as_ref());
    let Some(leader) = config.leader.clone() else {
        return refuse(OperatorRefusal::NoLeader, "there is no leader now: a failover is due, not a switchover".into());
    };
    // Before the polls are asked: right after a switchover they may not show the new leader yet.
    if to == leader {
        return refuse(OperatorRefusal::AlreadyLeader, format!("{to} already leads term {}", config.term));
    }
    let leading = status(&leader).filter(|s| s.role == Role::Leader && s.term == config.term);
    let Some(leader_status) = leading else {
        return refuse(
            OperatorRefusal::NoLeader,
            format!("the leader {leader} is not serving now: a failover is due, not a switchover"),
        );
    };
    if !config.members.iter().any(|m| m == to) {
        return refuse(
            OperatorRefusal::NotMember,
            format!(
                "{to} is not a member (members: {}); only a member holds every commit and can lead",
                config.members.join(", ")
            ),
        );
    }
    let Some(target_status) = status(to) else {
        return refuse(
            OperatorRefusal::NotAlive,
            format!("{to} does not answer the supervisor's polls; pick a live member or wait until it answers"),
        );
    };
    let behind = entries_behind(leader_status, target_status);
    if behind > IN_SYNC_ENTRIES {
        return refuse(
            OperatorRefusal::NotInSync,
            format!(
                "{to} is {behind} entries behind the leader (LSN {} against {}); wait until it catches up and try again",
                target_status.applied_lsn, leader_status.applied_lsn
            ),
        );
    }
    Ok(SwitchoverPlan { leader, target: to.to_string() })
}

/// Entries the target has not applied yet that the leader has (0 when it is level or ahead).
pub fn entries_behind(leader: &AgentStatus, target: &AgentStatus) -> Lsn {
    (leader.applied_lsn - target.applied_lsn).max(0)
}

/// The configuration that makes `target` leader: a term above every term seen, the next
/// version, the same members (the old leader stays one, as a replica).
pub fn switchover_config(config: &ClusterConfig, observed: &[Observed], target: &str) -> ClusterConfig {
    ClusterConfig {
        term: highest_term(config, observed) + 1,
        version: config.version + 1,
        leader: Some(target.to_string()),
        members: config.members.clone(),
    }
}

/// Whether `node` may be added to the supervisor's node list.
pub fn check_add(nodes: &[String], node: &str) -> Result<(), Refused> {
    if nodes.iter().any(|n| n == node) {
        return refuse(
            OperatorRefusal::AlreadyKnown,
            format!("{node} is already one of the supervisor's nodes ({})", nodes.join(", ")),
        );
    }
    Ok(())
}

/// What removing a node changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    /// The configuration without it: the same if it was not a member, else the next version in
    /// the same term.
    pub config: ClusterConfig,
    /// The node list without it.
    pub nodes: Vec<String>,
}

/// Why a node is not found: 404, not a refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unknown(pub String);

/// The outcome of a removal's or a rebuild's checks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(transparent)]
    Unknown(#[from] Unknown),
}

fn unknown(nodes: &[String], node: &str) -> Unknown {
    Unknown(format!("{node} is not one of the supervisor's nodes ({})", nodes.join(", ")))
}

/// The configuration and node list without `node`, or why it must stay.
pub fn remove_member(
    config: &ClusterConfig,
    nodes: &[String],
    node: &str,
    min_copies: usize,
) -> Result<Removal, Rejected> {
    let member = config.members.iter().any(|m| m == node);
    if !member && !nodes.iter().any(|n| n == node) {
        return Err(unknown(nodes, node).into());
    }
    if config.leader.as_deref() == Some(node) {
        return Err(Refused {
            code: OperatorRefusal::IsLeader,
            message: format!("{node} leads term {}: switch over to another member first", config.term),
        }
        .into());
    }
    let mut next = config.clone();
    if member {
        if config.members.len() <= min_copies {
            return Err(Refused {
                code: OperatorRefusal::BelowFloor,
                message: format!(
                    "removing {node} would leave {} of {} members, below the durability floor of {min_copies} \
                     (--min-copies); add a node first",
                    config.members.len() - 1,
                    config.members.len()
                ),
            }
            .into());
        }
        next.version += 1;
        next.members.retain(|m| m != node);
    }
    Ok(Removal { config: next, nodes: nodes.iter().filter(|n| *n != node).cloned().collect() })
}

/// Whether `node`'s database may be emptied and rebuilt.
pub fn check_rebuild(config: &ClusterConfig, nodes: &[String], node: &str) -> Result<(), Rejected> {
    if !nodes.iter().any(|n| n == node) {
        return Err(unknown(nodes, node).into());
    }
    if config.members.iter().any(|m| m == node) {
        return Err(Refused {
            code: OperatorRefusal::IsMember,
            message: format!(
                "{node} is a member and holds acknowledged commits; remove it from the members first \
                 (then add it back, or rebuild it)"
            ),
        }
        .into());
    }
    Ok(())
}

/// A node's address as the supervisor lists them: `host:port`, nothing else.
pub fn valid_address(node: &str) -> Result<(), String> {
    let ok = node.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains(['/', ' ', '?', '#', '@']) && port.parse::<u16>().is_ok_and(|p| p > 0)
    });
    if ok {
        Ok(())
    } else {
        Err(format!("{node:?} is not an agent address: give host:port, e.g. 127.0.0.1:8003"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> Vec<String> {
        ["a:1", "b:2", "c:3"].iter().map(|s| s.to_string()).collect()
    }

    fn config(leader: &str, members: &[&str]) -> ClusterConfig {
        ClusterConfig {
            term: 3,
            version: 5,
            leader: Some(leader.into()),
            members: members.iter().map(|m| m.to_string()).collect(),
        }
    }

    fn seen(addr: &str, role: Role, term: i64, applied_lsn: Lsn) -> Observed {
        let status = AgentStatus {
            node_id: addr.into(),
            address: addr.into(),
            role,
            term,
            leader: None,
            applied_lsn,
            last_commit_ts: 0,
            last_term: term,
            min_copies: 2,
            cluster_id: None,
            members: vec![],
            prepared_batch: None,
            config_version: 5,
            supervisor: None,
        };
        Observed { address: addr.into(), alive: true, status: Some(status) }
    }

    fn dead(addr: &str) -> Observed {
        Observed { address: addr.into(), alive: false, status: None }
    }

    fn code<T: std::fmt::Debug>(r: Result<T, Refused>) -> OperatorRefusal {
        r.unwrap_err().code
    }

    #[test]
    fn a_switchover_goes_to_a_live_member_in_sync_in_a_new_term_keeping_every_member() {
        let c = config("a:1", &["a:1", "b:2", "c:3"]);
        let polls =
            [seen("a:1", Role::Leader, 3, 100), seen("b:2", Role::Replica, 3, 98), seen("c:3", Role::Replica, 4, 0)];
        let plan = check_switchover(&c, &polls, "b:2").unwrap();
        assert_eq!(plan, SwitchoverPlan { leader: "a:1".into(), target: "b:2".into() });
        let next = switchover_config(&c, &polls, "b:2");
        assert_eq!(next.term, 5, "above every term seen, c:3's 4 included");
        assert_eq!(next.version, 6);
        assert_eq!(next.leader.as_deref(), Some("b:2"));
        assert_eq!(next.members, c.members, "the old leader stays a member");
    }

    #[test]
    fn a_switchover_is_refused_with_a_code_for_each_reason() {
        let c = config("a:1", &["a:1", "b:2"]);
        let polls =
            [seen("a:1", Role::Leader, 3, 1000), seen("b:2", Role::Replica, 3, 1000), seen("c:3", Role::Replica, 3, 0)];
        assert_eq!(code(check_switchover(&c, &polls, "a:1")), OperatorRefusal::AlreadyLeader);
        assert_eq!(code(check_switchover(&c, &polls, "c:3")), OperatorRefusal::NotMember);
        assert_eq!(code(check_switchover(&c, &polls, "z:9")), OperatorRefusal::NotMember);
        // Right after a switchover to b:2 the polls still show a:1 leading the old term.
        let switched = ClusterConfig { term: 4, leader: Some("b:2".into()), ..c.clone() };
        assert_eq!(code(check_switchover(&switched, &polls, "b:2")), OperatorRefusal::AlreadyLeader);
        let no_leader = ClusterConfig { leader: None, ..c.clone() };
        assert_eq!(code(check_switchover(&no_leader, &polls, "b:2")), OperatorRefusal::NoLeader);
        let leader_down = [dead("a:1"), seen("b:2", Role::Replica, 3, 1000)];
        assert_eq!(code(check_switchover(&c, &leader_down, "b:2")), OperatorRefusal::NoLeader);
        let leader_stale = [seen("a:1", Role::Leader, 2, 1000), seen("b:2", Role::Replica, 3, 1000)];
        assert_eq!(code(check_switchover(&c, &leader_stale, "b:2")), OperatorRefusal::NoLeader);
        let target_down = [seen("a:1", Role::Leader, 3, 1000), dead("b:2")];
        assert_eq!(code(check_switchover(&c, &target_down, "b:2")), OperatorRefusal::NotAlive);
    }

    #[test]
    fn a_member_more_than_a_round_behind_is_not_in_sync_and_the_message_says_by_how_much() {
        let c = config("a:1", &["a:1", "b:2"]);
        let at = |lsn| [seen("a:1", Role::Leader, 3, 1000), seen("b:2", Role::Replica, 3, lsn)];
        assert!(check_switchover(&c, &at(1000 - IN_SYNC_ENTRIES), "b:2").is_ok());
        let refused = check_switchover(&c, &at(600), "b:2").unwrap_err();
        assert_eq!(refused.code, OperatorRefusal::NotInSync);
        assert!(refused.message.contains("400 entries behind"), "{}", refused.message);
        assert!(check_switchover(&c, &at(1003), "b:2").is_ok(), "ahead by an answer's delay is in sync");
    }

    #[test]
    fn a_removal_keeps_the_leader_and_the_floor() {
        let c = config("a:1", &["a:1", "b:2", "c:3"]);
        let removed = remove_member(&c, &nodes(), "c:3", 2).unwrap();
        assert_eq!((removed.config.term, removed.config.version), (3, 6), "same term, next version");
        assert_eq!(removed.config.members, ["a:1", "b:2"]);
        assert_eq!(removed.nodes, ["a:1", "b:2"]);
        let refused = |r: Result<Removal, Rejected>| match r {
            Err(Rejected::Refused(r)) => r.code,
            other => panic!("{other:?}"),
        };
        assert_eq!(refused(remove_member(&c, &nodes(), "a:1", 2)), OperatorRefusal::IsLeader);
        assert_eq!(refused(remove_member(&removed.config, &nodes(), "b:2", 2)), OperatorRefusal::BelowFloor);
        assert!(matches!(remove_member(&c, &nodes(), "z:9", 2), Err(Rejected::Unknown(_))));
    }

    #[test]
    fn a_node_outside_the_members_leaves_the_node_list_only() {
        let c = config("a:1", &["a:1", "b:2"]);
        let removed = remove_member(&c, &nodes(), "c:3", 2).unwrap();
        assert_eq!(removed.config, c, "the configuration does not change");
        assert_eq!(removed.nodes, ["a:1", "b:2"]);
    }

    #[test]
    fn adding_a_known_node_and_rebuilding_a_member_are_refused() {
        assert_eq!(check_add(&nodes(), "b:2").unwrap_err().code, OperatorRefusal::AlreadyKnown);
        assert!(check_add(&nodes(), "d:4").is_ok());
        let c = config("a:1", &["a:1", "b:2"]);
        assert!(check_rebuild(&c, &nodes(), "c:3").is_ok());
        assert!(
            matches!(check_rebuild(&c, &nodes(), "b:2"), Err(Rejected::Refused(r)) if r.code == OperatorRefusal::IsMember)
        );
        assert!(matches!(check_rebuild(&c, &nodes(), "d:4"), Err(Rejected::Unknown(_))));
    }

    #[test]
    fn only_host_and_port_are_addresses() {
        for good in ["127.0.0.1:8003", "node-4:8000", "[::1]:8000"] {
            assert!(valid_address(good).is_ok(), "{good}");
        }
        for bad in ["", "127.0.0.1", ":8000", "a:0", "a:70000", "http://a:1", "a b:1"] {
            assert!(valid_address(bad).is_err(), "{bad}");
        }
    }
}
