//! The supervisor's decisions, pure: given the configuration and what the last polls saw,
//! what to do next. No I/O; the runtime in `main.rs`/`run.rs` carries the decision out.
//!
//! Invariants kept here:
//! - Only a member can become leader: a node outside the member set may lack committed entries.
//! - The next leader is the first live member after the old one in configured order
//!   (round-robin), so repeated failovers walk the ring and wrap.
//! - Every election uses a term higher than any term the supervisor or any agent has seen;
//!   the runtime stores it before fencing, so two leaders never share a term.
//! - Membership only shrinks by removing a node that is down or reported unreachable, and only
//!   grows through recovery (see `Action::Recover`).

use protocol::{AgentStatus, ClusterConfig, Role, Term};

/// What the supervisor knows of one agent after its last polls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub address: String,
    /// Answered `/health` within the last `misses` polls.
    pub alive: bool,
    /// Its last `/status`, if it answered.
    pub status: Option<AgentStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do.
    Steady,
    /// Elect `candidate` leader in `config.term` (a new term); `old_leader` failed.
    Failover { old_leader: Option<String>, candidate: String, config: ClusterConfig },
    /// The named leader is alive and a member but does not lead: its agent restarted, or an
    /// election was interrupted (the supervisor itself restarted). Finish electing it in the
    /// same term: the term is already durable and no other node was promoted in it.
    Promote { candidate: String, config: ClusterConfig },
    /// Remove failed members (same term, new version).
    RemoveMembers { removed: Vec<String>, config: ClusterConfig },
    /// Bring a live node outside the member set back in sync.
    Recover { node: String },
    /// No live member can lead: writes are unavailable (reads go on).
    NoLeaderPossible { reason: String },
}

/// The highest term among the configuration and every agent's report.
pub fn highest_term(config: &ClusterConfig, observed: &[Observed]) -> Term {
    observed.iter().filter_map(|o| o.status.as_ref().map(|s| s.term)).fold(config.term, Term::max)
}

/// The next leader after `old` in configured order among `eligible` nodes.
pub fn round_robin_next<'a>(
    agents: &'a [String],
    old: Option<&str>,
    eligible: impl Fn(&str) -> bool,
) -> Option<&'a String> {
    let start = old.and_then(|old| agents.iter().position(|a| a == old)).map_or(0, |i| i + 1);
    (0..agents.len()).map(|k| &agents[(start + k) % agents.len()]).find(|a| Some(a.as_str()) != old && eligible(a))
}

/// Decides the next step. `agents` is the configured order; `recovering` lists nodes whose
/// recovery is under way or backing off; `unelectable` lists nodes that failed to be fenced or
/// promoted lately, which are passed over as candidates.
pub fn decide(
    config: &ClusterConfig,
    agents: &[String],
    observed: &[Observed],
    recovering: &[String],
    unelectable: &[String],
) -> Action {
    let seen = |addr: &str| observed.iter().find(|o| o.address == addr);
    let alive = |addr: &str| seen(addr).is_some_and(|o| o.alive);
    let electable = |addr: &str| alive(addr) && !unelectable.iter().any(|u| u == addr);
    let is_member = |addr: &str| config.members.iter().any(|m| m == addr);

    // The leader is healthy only if it answers and still leads the current term.
    let leader_ok = config.leader.as_deref().is_some_and(|leader| {
        seen(leader).is_some_and(|o| {
            o.alive && o.status.as_ref().is_none_or(|s| s.role == Role::Leader && s.term == config.term)
        })
    });
    if !leader_ok {
        let old = config.leader.as_deref();
        let unfinished = old.filter(|leader| {
            electable(leader)
                && is_member(leader)
                && seen(leader)
                    .and_then(|o| o.status.as_ref())
                    .is_some_and(|s| s.role == Role::Replica && s.term <= config.term)
        });
        if let Some(leader) = unfinished {
            return Action::Promote { candidate: leader.to_string(), config: config.clone() };
        }
        let members: Vec<String> =
            agents.iter().filter(|a| is_member(a) && Some(a.as_str()) != old && alive(a)).cloned().collect();
        let eligible = |a: &str| members.iter().any(|m| m == a) && electable(a);
        let Some(candidate) = round_robin_next(agents, old, eligible) else {
            return Action::NoLeaderPossible {
                reason: format!(
                    "no live member can lead (members: {}); writes are unavailable until one comes back",
                    config.members.join(", ")
                ),
            };
        };
        return Action::Failover {
            old_leader: old.map(str::to_string),
            candidate: candidate.clone(),
            config: ClusterConfig {
                term: highest_term(config, observed) + 1,
                version: config.version + 1,
                leader: Some(candidate.clone()),
                members,
            },
        };
    }

    let removed: Vec<String> = config.members.iter().filter(|m| !alive(m)).cloned().collect();
    if !removed.is_empty() {
        let mut next = config.clone();
        next.version += 1;
        next.members.retain(|m| !removed.contains(m));
        return Action::RemoveMembers { removed, config: next };
    }

    let returning = agents.iter().find(|a| {
        !is_member(a)
            && !recovering.contains(a)
            && seen(a).is_some_and(|o| o.alive && o.status.as_ref().is_some_and(|s| s.role != Role::Down))
    });
    match returning {
        Some(node) => Action::Recover { node: node.clone() },
        None => Action::Steady,
    }
}

/// The member set after `node` rejoins, in configured order.
pub fn with_member(config: &ClusterConfig, agents: &[String], node: &str) -> ClusterConfig {
    let mut next = config.clone();
    next.version += 1;
    next.members = agents.iter().filter(|a| config.members.contains(a) || a.as_str() == node).cloned().collect();
    next
}

/// The configuration after the leader reports `member` unreachable, or `None` to refuse.
pub fn on_failure_report(config: &ClusterConfig, term: Term, member: &str) -> Result<ClusterConfig, String> {
    if term != config.term {
        return Err(format!("the report is from term {term}; the current term is {}", config.term));
    }
    if config.leader.as_deref() == Some(member) {
        return Err("the leader cannot be removed by a report; it is replaced by a failover".into());
    }
    let mut next = config.clone();
    if next.members.iter().any(|m| m == member) {
        next.version += 1;
        next.members.retain(|m| m != member);
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agents() -> Vec<String> {
        ["a:1", "b:2", "c:3"].iter().map(|s| s.to_string()).collect()
    }

    fn config(term: Term, leader: &str, members: &[&str]) -> ClusterConfig {
        ClusterConfig {
            term,
            version: 7,
            leader: Some(leader.into()),
            members: members.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn status(addr: &str, role: Role, term: Term) -> AgentStatus {
        AgentStatus {
            node_id: addr.into(),
            address: addr.into(),
            role,
            term,
            leader: None,
            applied_lsn: 0,
            last_commit_ts: 0,
            members: vec![],
            prepared_batch: None,
            config_version: 0,
            supervisor: None,
        }
    }

    fn up(addr: &str, role: Role, term: Term) -> Observed {
        Observed { address: addr.into(), alive: true, status: Some(status(addr, role, term)) }
    }

    fn down(addr: &str) -> Observed {
        Observed { address: addr.into(), alive: false, status: None }
    }

    #[test]
    fn a_healthy_cluster_is_left_alone() {
        let c = config(1, "a:1", &["a:1", "b:2", "c:3"]);
        let seen = [up("a:1", Role::Leader, 1), up("b:2", Role::Replica, 1), up("c:3", Role::Replica, 1)];
        assert_eq!(decide(&c, &agents(), &seen, &[], &[]), Action::Steady);
    }

    #[test]
    fn the_next_live_member_in_order_takes_over_in_a_new_term() {
        let c = config(1, "a:1", &["a:1", "b:2", "c:3"]);
        let seen = [down("a:1"), up("b:2", Role::Replica, 1), up("c:3", Role::Replica, 1)];
        match decide(&c, &agents(), &seen, &[], &[]) {
            Action::Failover { candidate, config, old_leader } => {
                assert_eq!(candidate, "b:2");
                assert_eq!(old_leader.as_deref(), Some("a:1"));
                assert_eq!(config.term, 2);
                assert_eq!(config.members, vec!["b:2", "c:3"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn round_robin_skips_dead_members_and_wraps() {
        let c = config(4, "b:2", &["a:1", "b:2", "c:3"]);
        let seen = [up("a:1", Role::Replica, 4), down("b:2"), down("c:3")];
        match decide(&c, &agents(), &seen, &[], &[]) {
            Action::Failover { candidate, config, .. } => {
                assert_eq!(candidate, "a:1");
                assert_eq!(config.members, vec!["a:1"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_live_node_outside_the_members_never_leads() {
        let c = config(3, "a:1", &["a:1", "b:2"]);
        let seen = [down("a:1"), down("b:2"), up("c:3", Role::Standby, 3)];
        assert!(matches!(decide(&c, &agents(), &seen, &[], &[]), Action::NoLeaderPossible { .. }));
    }

    #[test]
    fn the_new_term_exceeds_every_term_an_agent_reports() {
        let c = config(3, "a:1", &["a:1", "b:2", "c:3"]);
        let seen = [down("a:1"), up("b:2", Role::Replica, 9), up("c:3", Role::Replica, 3)];
        let Action::Failover { config, .. } = decide(&c, &agents(), &seen, &[], &[]) else { panic!() };
        assert_eq!(config.term, 10);
    }

    #[test]
    fn a_named_leader_that_does_not_lead_yet_is_promoted_in_the_same_term() {
        // Its agent restarted, or the supervisor restarted before promoting it.
        let c = config(2, "a:1", &["a:1", "b:2", "c:3"]);
        let seen = [up("a:1", Role::Replica, 1), up("b:2", Role::Replica, 2), up("c:3", Role::Replica, 2)];
        assert_eq!(
            decide(&c, &agents(), &seen, &[], &[]),
            Action::Promote { candidate: "a:1".into(), config: c.clone() }
        );
        // Passed over once it failed to be promoted: the next member is elected in a new term.
        let Action::Failover { candidate, config: next, .. } = decide(&c, &agents(), &seen, &[], &["a:1".into()])
        else {
            panic!()
        };
        assert_eq!((candidate.as_str(), next.term), ("b:2", 3));
    }

    #[test]
    fn a_leader_that_stepped_down_or_went_down_is_replaced() {
        let c = config(2, "a:1", &["a:1", "b:2", "c:3"]);
        let seen = [up("a:1", Role::Down, 2), up("b:2", Role::Replica, 2), up("c:3", Role::Replica, 2)];
        assert!(matches!(decide(&c, &agents(), &seen, &[], &[]), Action::Failover { .. }));
        let seen = [up("a:1", Role::Standby, 2), up("b:2", Role::Replica, 2), up("c:3", Role::Replica, 2)];
        assert!(matches!(decide(&c, &agents(), &seen, &[], &[]), Action::Failover { .. }));
    }

    #[test]
    fn candidates_that_failed_promotion_are_passed_over() {
        let c = config(1, "a:1", &["a:1", "b:2", "c:3"]);
        let seen = [down("a:1"), up("b:2", Role::Replica, 1), up("c:3", Role::Replica, 1)];
        let Action::Failover { candidate, .. } = decide(&c, &agents(), &seen, &[], &["b:2".into()]) else { panic!() };
        assert_eq!(candidate, "c:3");
    }

    #[test]
    fn a_dead_replica_is_removed_and_a_returning_one_recovered() {
        let c = config(1, "a:1", &["a:1", "b:2", "c:3"]);
        let seen = [up("a:1", Role::Leader, 1), up("b:2", Role::Replica, 1), down("c:3")];
        let Action::RemoveMembers { removed, config } = decide(&c, &agents(), &seen, &[], &[]) else { panic!() };
        assert_eq!(removed, vec!["c:3"]);
        assert_eq!(config.version, 8);
        let seen = [up("a:1", Role::Leader, 1), up("b:2", Role::Replica, 1), up("c:3", Role::Standby, 1)];
        assert_eq!(decide(&config, &agents(), &seen, &[], &[]), Action::Recover { node: "c:3".into() });
        assert_eq!(decide(&config, &agents(), &seen, &["c:3".into()], &[]), Action::Steady);
        assert_eq!(with_member(&config, &agents(), "c:3").members, vec!["a:1", "b:2", "c:3"]);
    }

    #[test]
    fn a_downed_node_is_not_recovered_until_it_is_up() {
        let c = config(1, "b:2", &["b:2", "c:3"]);
        let seen = [up("a:1", Role::Down, 1), up("b:2", Role::Leader, 1), up("c:3", Role::Replica, 1)];
        assert_eq!(decide(&c, &agents(), &seen, &[], &[]), Action::Steady);
    }

    #[test]
    fn failure_reports_from_an_old_term_or_about_the_leader_are_refused() {
        let c = config(2, "a:1", &["a:1", "b:2", "c:3"]);
        assert!(on_failure_report(&c, 1, "b:2").is_err());
        assert!(on_failure_report(&c, 2, "a:1").is_err());
        assert_eq!(on_failure_report(&c, 2, "b:2").unwrap().members, vec!["a:1", "c:3"]);
    }
}
