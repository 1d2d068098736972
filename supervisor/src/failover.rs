//! The supervisor's decisions, pure: given the configuration and what the last polls saw,
//! what to do next. No I/O; the runtime (`run.rs` and the modules it drives: `election.rs`,
//! `membership.rs`, `recovery.rs`) carries the decision out.
//!
//! Invariants kept here:
//! - Only a member can become leader: a node outside the member set may lack committed entries.
//! - The next leader is the first live member after the old one in configured order
//!   (round-robin) among those whose log is the most advanced (last term, then applied LSN):
//!   a member behind another is never elected, so no acknowledged commit is left behind.
//! - Every election uses a term higher than any term the supervisor or any agent has seen;
//!   the runtime stores it before fencing, so two leaders never share a term.
//! - Membership only shrinks on a report from the leader that carries evidence, never below
//!   the durability floor (`min_copies`), and only grows through recovery (`Action::Recover`).

use std::time::Duration;

use protocol::{AgentStatus, ClusterConfig, FailureKind, FailureReport, Lsn, Role, Term};
use uuid::Uuid;

/// A candidate that failed this many elections in a row is passed over for a while.
pub const MAX_PROMOTION_FAILURES: u32 = 2;
/// How long a candidate passed over after failed elections waits, at most, before it may be
/// tried again (the wait doubles with each failure from 1 s): a node that failed once, say
/// its PostgreSQL was restarting, must not stay unelectable forever.
pub const MAX_PROMOTION_BACKOFF: Duration = Duration::from_secs(30);

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

/// What the supervisor knows of the cluster besides its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    /// The durability floor (`--min-copies`).
    pub min_copies: usize,
    /// The cluster's id, once learnt from its leader: a node whose database carries no id or
    /// another one is never elected, and only one without an id is recovered as a new node.
    pub cluster_id: Option<Uuid>,
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
    known: Known,
) -> Action {
    let Known { min_copies, cluster_id } = known;
    let seen = |addr: &str| observed.iter().find(|o| o.address == addr);
    let carried_id = |addr: &str| seen(addr).and_then(|o| o.status.as_ref()).map(|s| s.cluster_id);
    // Ours: the database carries the cluster's id (or the cluster has none yet).
    let ours = |addr: &str| cluster_id.is_none() || carried_id(addr).is_none_or(|id| id == cluster_id);
    let alive = |addr: &str| seen(addr).is_some_and(|o| o.alive) && ours(addr);
    let is_member = |addr: &str| config.members.iter().any(|m| m == addr);

    // The leader is healthy only if it answers and still leads the current term.
    let leader_ok = config.leader.as_deref().is_some_and(|leader| {
        seen(leader).is_some_and(|o| {
            o.alive && ours(leader) && o.status.as_ref().is_none_or(|s| s.role == Role::Leader && s.term == config.term)
        })
    });
    if !leader_ok {
        let old = config.leader.as_deref();
        let live_members: Vec<&String> = agents.iter().filter(|a| is_member(a) && alive(a)).collect();
        // Logs are compared among the members that answer; one whose log is unknown could be
        // the most advanced, so nobody is elected until it answers or counts as down.
        if let Some(unknown) = live_members.iter().find(|a| seen(a).and_then(|o| o.status.as_ref()).is_none()) {
            return Action::NoLeaderPossible {
                reason: format!("waiting for member {unknown} to report its log before electing a leader"),
            };
        }
        let position = |a: &str| seen(a).and_then(|o| o.status.as_ref()).map(log_position);
        let Some(best) = live_members.iter().filter_map(|a| position(a)).max() else {
            return Action::NoLeaderPossible {
                reason: format!(
                    "no live member can lead (members: {}); writes are unavailable until one comes back",
                    config.members.join(", ")
                ),
            };
        };
        let most_advanced = |a: &str| position(a) == Some(best);
        let electable = |a: &str| alive(a) && is_member(a) && most_advanced(a) && !unelectable.iter().any(|u| u == a);
        let unfinished = old.filter(|leader| {
            electable(leader)
                && seen(leader)
                    .and_then(|o| o.status.as_ref())
                    .is_some_and(|s| s.role == Role::Replica && s.term <= config.term)
        });
        if let Some(leader) = unfinished {
            return Action::Promote { candidate: leader.to_string(), config: config.clone() };
        }
        let Some(candidate) = round_robin_next(agents, old, |a| Some(a) != old && electable(a)) else {
            return Action::NoLeaderPossible {
                reason: format!(
                    "no live member with the most advanced log (term {}, LSN {}) can lead (members: {}); \
                     writes are unavailable until one comes back",
                    best.0,
                    best.1,
                    config.members.join(", ")
                ),
            };
        };
        let mut members: Vec<String> =
            live_members.iter().filter(|a| Some(a.as_str()) != old).map(|a| a.to_string()).collect();
        // Below the floor, members that do not answer stay in the set: commits then wait for
        // them (503 `not_enough_replicas`) instead of being acknowledged on too few disks.
        let silent: Vec<&String> = config.members.iter().filter(|m| !members.contains(m)).collect();
        for dead in silent {
            if members.len() >= min_copies {
                break;
            }
            members.push(dead.clone());
        }
        members.sort_by_key(|m| agents.iter().position(|a| a == m));
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

    // A member that stops answering is not removed here: only a report from the leader,
    // checked against these polls (`on_failure_report`), removes one. A member the leader
    // still reaches must stay even when the supervisor cannot poll it.
    // A database with another cluster's id is never recovered here: it needs a rebuild.
    let foreign = |a: &str| cluster_id.is_some() && carried_id(a).flatten().is_some_and(|id| Some(id) != cluster_id);
    let returning = agents.iter().find(|a| {
        !is_member(a)
            && !recovering.contains(a)
            && !foreign(a)
            && seen(a).is_some_and(|o| o.alive && o.status.as_ref().is_some_and(|s| s.role != Role::Down))
    });
    match returning {
        Some(node) => Action::Recover { node: node.clone() },
        None => Action::Steady,
    }
}

/// Where a node's log ends, as elections compare it: the term of its last entry, then its
/// applied LSN.
pub fn log_position(status: &AgentStatus) -> (Term, Lsn) {
    (status.last_term, status.applied_lsn)
}

/// The member set after `node` rejoins, in configured order.
pub fn with_member(config: &ClusterConfig, agents: &[String], node: &str) -> ClusterConfig {
    let mut next = config.clone();
    next.version += 1;
    next.members = agents.iter().filter(|a| config.members.contains(a) || a.as_str() == node).cloned().collect();
    next
}

/// Why a failure report did not remove the member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    /// Refused only because of the durability floor: the member stays and, if it is behind,
    /// must be recovered in place.
    pub at_floor: bool,
}

/// What the supervisor saw of a reported member when the report arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportCheck {
    /// The supervisor's own probe of the member answered.
    pub supervisor_reaches: bool,
    /// The same member was reported, and kept, a short while ago.
    pub reported_before: bool,
}

/// The configuration after the leader reports `report.member`, or why it stays.
///
/// A member is removed only with evidence: the supervisor cannot reach it either, or the
/// member itself answered badly (a NO, a failed decision), or the leader reports it again
/// after a first report was refused. Never below `min_copies` members.
pub fn on_failure_report(
    config: &ClusterConfig,
    report: &FailureReport,
    check: ReportCheck,
    min_copies: usize,
) -> Result<ClusterConfig, Refusal> {
    let refuse = |message: String| Err(Refusal { message, at_floor: false });
    if report.term != config.term {
        return refuse(format!("the report is from term {}; the current term is {}", report.term, config.term));
    }
    if config.leader.as_deref() == Some(report.member.as_str()) {
        return refuse("the leader cannot be removed by a report; it is replaced by a failover".into());
    }
    if !config.members.contains(&report.member) {
        return Ok(config.clone());
    }
    let evidence = report.kind != FailureKind::Unreachable || !check.supervisor_reaches || check.reported_before;
    if !evidence {
        return refuse(format!(
            "the supervisor reaches {} itself, so it stays a member; reported again, it is removed",
            report.member
        ));
    }
    if config.members.len() <= min_copies {
        return Err(Refusal {
            message: format!(
                "removing {} would leave {} members, below the durability floor of {min_copies}; \
                 commits wait for it (503 not_enough_replicas)",
                report.member,
                config.members.len() - 1
            ),
            at_floor: true,
        });
    }
    let mut next = config.clone();
    next.version += 1;
    next.members.retain(|m| *m != report.member);
    Ok(next)
}

/// How long a candidate that failed `failures` elections in a row is passed over: not at all
/// before `MAX_PROMOTION_FAILURES`, then 1 s, doubling up to `MAX_PROMOTION_BACKOFF`. It always
/// ends: a node that failed while, say, its PostgreSQL restarted must be electable again.
pub fn promotion_backoff(failures: u32) -> Duration {
    if failures < MAX_PROMOTION_FAILURES {
        return Duration::ZERO;
    }
    (Duration::from_secs(1) * 2u32.saturating_pow((failures - MAX_PROMOTION_FAILURES).min(8)))
        .min(MAX_PROMOTION_BACKOFF)
}

/// A recovery's tail left the node short of where the leader paused: tried again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the node reached LSN {reached} but the leader is at {leader}; trying again")]
pub struct ShortOfLeader {
    pub reached: Lsn,
    pub leader: Lsn,
}

/// Where a recovery's tail left the node, against the LSN the leader paused at: short of it is
/// a retry; beyond it is not divergence (the pause ended by itself and the leader committed
/// more, which the tail fetched): the leader's own check at the join decides.
pub fn caught_up_to(node_lsn: Lsn, paused_lsn: Lsn) -> Result<Lsn, ShortOfLeader> {
    if node_lsn < paused_lsn {
        return Err(ShortOfLeader { reached: node_lsn, leader: paused_lsn });
    }
    Ok(node_lsn)
}

/// The newest configuration any agent reports (the highest term, then version), which a
/// restarted supervisor, or one whose store is behind, adopts if it is newer than its own.
pub fn newest_reported<'a>(statuses: impl IntoIterator<Item = &'a AgentStatus>) -> Option<ClusterConfig> {
    statuses
        .into_iter()
        .map(|s| ClusterConfig {
            term: s.term,
            version: s.config_version,
            leader: s.leader.clone(),
            members: s.members.clone(),
        })
        .max_by_key(|c| (c.term, c.version))
}

/// The cluster's id as the configuration's leader reports it, once it leads the configuration's
/// term: the first leader of a new cluster makes the id, and a supervisor that lost its state
/// learns it again the same way. None while the leader has not reported one.
pub fn reported_cluster_id(config: &ClusterConfig, observed: &[Observed]) -> Option<Uuid> {
    let leader = config.leader.as_deref()?;
    observed
        .iter()
        .find(|o| o.address == leader && o.alive)
        .and_then(|o| o.status.as_ref())
        .filter(|s| s.role == Role::Leader && s.term == config.term)
        .and_then(|s| s.cluster_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOOR: usize = 2;

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

    fn status(addr: &str, role: Role, term: Term, last_term: Term, lsn: Lsn) -> AgentStatus {
        AgentStatus {
            node_id: addr.into(),
            address: addr.into(),
            role,
            term,
            leader: None,
            applied_lsn: lsn,
            last_commit_ts: 0,
            last_term,
            min_copies: FLOOR as u32,
            cluster_id: None,
            members: vec![],
            prepared_batch: None,
            config_version: 0,
            supervisor: None,
        }
    }

    /// A live agent whose log ends at LSN 10 of term 1.
    fn up(addr: &str, role: Role, term: Term) -> Observed {
        at(addr, role, term, (1, 10))
    }

    /// A live agent whose log ends at `(last term, lsn)`.
    fn at(addr: &str, role: Role, term: Term, (last_term, lsn): (Term, Lsn)) -> Observed {
        Observed { address: addr.into(), alive: true, status: Some(status(addr, role, term, last_term, lsn)) }
    }

    fn down(addr: &str) -> Observed {
        Observed { address: addr.into(), alive: false, status: None }
    }

    const KNOWN: Known = Known { min_copies: FLOOR, cluster_id: None };

    fn decide2(c: &ClusterConfig, seen: &[Observed], unelectable: &[String]) -> Action {
        decide(c, &agents(), seen, &[], unelectable, KNOWN)
    }

    fn report(term: Term, member: &str, kind: FailureKind) -> FailureReport {
        FailureReport { term, member: member.into(), reason: "test".into(), kind }
    }

    const UNREACHABLE: ReportCheck = ReportCheck { supervisor_reaches: false, reported_before: false };
    const REACHABLE: ReportCheck = ReportCheck { supervisor_reaches: true, reported_before: false };

    #[test]
    fn a_healthy_cluster_is_left_alone() {
        let c = config(1, "a:1", &["a:1", "b:2", "c:3"]);
        let seen = [up("a:1", Role::Leader, 1), up("b:2", Role::Replica, 1), up("c:3", Role::Replica, 1)];
        assert_eq!(decide2(&c, &seen, &[]), Action::Steady);
    }

    #[test]
    fn the_next_live_member_in_order_takes_over_in_a_new_term() {
        let c = config(1, "a:1", &["a:1", "b:2", "c:3"]);
        let seen = [down("a:1"), up("b:2", Role::Replica, 1), up("c:3", Role::Replica, 1)];
        match decide2(&c, &seen, &[]) {
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
        match decide(&c, &agents(), &seen, &[], &[], Known { min_copies: 1, ..KNOWN }) {
            Action::Failover { candidate, config, .. } => {
                assert_eq!(candidate, "a:1");
                assert_eq!(config.members, vec!["a:1"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn below_the_floor_a_failover_keeps_members_that_do_not_answer() {
        // With one live member and a floor of two, the set keeps a dead member: the new leader
        // then answers 503 until it is back, instead of acknowledging commits on one disk.
        let c = config(4, "b:2", &["a:1", "b:2", "c:3"]);
        let seen = [up("a:1", Role::Replica, 4), down("b:2"), down("c:3")];
        let Action::Failover { candidate, config, .. } = decide2(&c, &seen, &[]) else { panic!() };
        assert_eq!(candidate, "a:1");
        assert_eq!(config.members, vec!["a:1", "b:2"]);
    }

    #[test]
    fn a_live_node_outside_the_members_never_leads() {
        let c = config(3, "a:1", &["a:1", "b:2"]);
        let seen = [down("a:1"), down("b:2"), up("c:3", Role::Standby, 3)];
        assert!(matches!(decide2(&c, &seen, &[]), Action::NoLeaderPossible { .. }));
    }

    #[test]
    fn the_new_term_exceeds_every_term_an_agent_reports() {
        let c = config(3, "a:1", &["a:1", "b:2", "c:3"]);
        let seen = [down("a:1"), up("b:2", Role::Replica, 9), up("c:3", Role::Replica, 3)];
        let Action::Failover { config, .. } = decide2(&c, &seen, &[]) else { panic!() };
        assert_eq!(config.term, 10);
    }

    #[test]
    fn a_named_leader_that_does_not_lead_yet_is_promoted_in_the_same_term() {
        // Its agent restarted, or the supervisor restarted before promoting it.
        let c = config(2, "a:1", &["a:1", "b:2", "c:3"]);
        let seen = [up("a:1", Role::Replica, 1), up("b:2", Role::Replica, 2), up("c:3", Role::Replica, 2)];
        assert_eq!(decide2(&c, &seen, &[]), Action::Promote { candidate: "a:1".into(), config: c.clone() });
        // Passed over once it failed to be promoted: the next member is elected in a new term.
        let Action::Failover { candidate, config: next, .. } = decide2(&c, &seen, &["a:1".into()]) else { panic!() };
        assert_eq!((candidate.as_str(), next.term), ("b:2", 3));
    }

    #[test]
    fn a_leader_that_stepped_down_or_went_down_is_replaced() {
        let c = config(2, "a:1", &["a:1", "b:2", "c:3"]);
        let seen = [up("a:1", Role::Down, 2), up("b:2", Role::Replica, 2), up("c:3", Role::Replica, 2)];
        assert!(matches!(decide2(&c, &seen, &[]), Action::Failover { .. }));
        let seen = [up("a:1", Role::Standby, 2), up("b:2", Role::Replica, 2), up("c:3", Role::Replica, 2)];
        assert!(matches!(decide2(&c, &seen, &[]), Action::Failover { .. }));
    }

    #[test]
    fn candidates_that_failed_promotion_are_passed_over() {
        let c = config(1, "a:1", &["a:1", "b:2", "c:3"]);
        let seen = [down("a:1"), up("b:2", Role::Replica, 1), up("c:3", Role::Replica, 1)];
        let Action::Failover { candidate, .. } = decide2(&c, &seen, &["b:2".into()]) else { panic!() };
        assert_eq!(candidate, "c:3");
    }

    #[test]
    fn a_returning_node_is_recovered() {
        let c = config(1, "a:1", &["a:1", "b:2"]);
        let seen = [up("a:1", Role::Leader, 1), up("b:2", Role::Replica, 1), up("c:3", Role::Standby, 1)];
        assert_eq!(decide2(&c, &seen, &[]), Action::Recover { node: "c:3".into() });
        assert_eq!(decide(&c, &agents(), &seen, &["c:3".into()], &[], KNOWN), Action::Steady);
        assert_eq!(with_member(&c, &agents(), "c:3").members, vec!["a:1", "b:2", "c:3"]);
    }

    #[test]
    fn a_downed_node_is_not_recovered_until_it_is_up() {
        let c = config(1, "b:2", &["b:2", "c:3"]);
        let seen = [up("a:1", Role::Down, 1), up("b:2", Role::Leader, 1), up("c:3", Role::Replica, 1)];
        assert_eq!(decide2(&c, &seen, &[]), Action::Steady);
    }

    // Finding 1: a re-added member that missed acknowledged commits must not be elected.
    #[test]
    fn a_member_behind_another_is_never_elected() {
        let c = config(3, "a:1", &["a:1", "b:2", "c:3"]);
        let seen = [down("a:1"), at("b:2", Role::Replica, 3, (3, 40)), at("c:3", Role::Replica, 3, (3, 57))];
        let Action::Failover { candidate, config, .. } = decide2(&c, &seen, &[]) else { panic!() };
        assert_eq!(candidate, "c:3", "b:2 is next in order but behind");
        assert_eq!(config.members, vec!["b:2", "c:3"]);
        // The last entry's term counts first: a longer log from an older term loses.
        let seen = [down("a:1"), at("b:2", Role::Replica, 3, (2, 90)), at("c:3", Role::Replica, 3, (3, 57))];
        let Action::Failover { candidate, .. } = decide2(&c, &seen, &[]) else { panic!() };
        assert_eq!(candidate, "c:3");
        // Equal logs: round-robin decides.
        let seen = [down("a:1"), at("b:2", Role::Replica, 3, (3, 57)), at("c:3", Role::Replica, 3, (3, 57))];
        let Action::Failover { candidate, .. } = decide2(&c, &seen, &[]) else { panic!() };
        assert_eq!(candidate, "b:2");
    }

    #[test]
    fn a_member_whose_log_is_unknown_holds_the_election() {
        let c = config(3, "a:1", &["a:1", "b:2", "c:3"]);
        let silent = Observed { address: "c:3".into(), alive: true, status: None };
        let seen = [down("a:1"), at("b:2", Role::Replica, 3, (3, 40)), silent];
        assert!(matches!(decide2(&c, &seen, &[]), Action::NoLeaderPossible { .. }));
    }

    // Finding 3: a wiped node (empty log) under the old leader's name is not re-promoted.
    #[test]
    fn a_named_leader_with_a_shorter_log_is_not_promoted_again() {
        let c = config(2, "a:1", &["a:1", "b:2", "c:3"]);
        let seen = [
            at("a:1", Role::Replica, 2, (0, 0)),
            at("b:2", Role::Replica, 2, (2, 30)),
            at("c:3", Role::Replica, 2, (2, 30)),
        ];
        let Action::Failover { candidate, config, .. } = decide2(&c, &seen, &[]) else { panic!() };
        assert_eq!((candidate.as_str(), config.term), ("b:2", 3));
    }

    // Finding 3 again, by identity: with the cluster's id known, an empty database (no id) or
    // another cluster's is never elected, even when its log looks longer.
    #[test]
    fn a_node_without_the_clusters_id_is_never_elected() {
        let id = Uuid::from_u128(7);
        let known = Known { cluster_id: Some(id), ..KNOWN };
        let with_id = |mut o: Observed, cluster: Option<Uuid>| {
            if let Some(s) = o.status.as_mut() {
                s.cluster_id = cluster;
            }
            o
        };
        let c = config(2, "a:1", &["a:1", "b:2", "c:3"]);
        let seen = [
            down("a:1"),
            with_id(at("b:2", Role::Replica, 2, (2, 99)), Some(Uuid::from_u128(8))),
            with_id(at("c:3", Role::Replica, 2, (2, 30)), Some(id)),
        ];
        let Action::Failover { candidate, config: next, .. } = decide(&c, &agents(), &seen, &[], &[], known) else {
            panic!()
        };
        assert_eq!(candidate, "c:3");
        assert!(next.members.contains(&"c:3".to_string()));
        // Wiped (no id): not a candidate; a live non-member without an id is recovered, one of
        // another cluster is not.
        let c = config(2, "a:1", &["a:1", "c:3"]);
        let seen = [
            with_id(at("a:1", Role::Leader, 2, (2, 30)), Some(id)),
            with_id(at("b:2", Role::Standby, 2, (0, 0)), None),
            with_id(at("c:3", Role::Replica, 2, (2, 30)), Some(id)),
        ];
        assert_eq!(decide(&c, &agents(), &seen, &[], &[], known), Action::Recover { node: "b:2".into() });
        let seen = [seen[0].clone(), with_id(seen[1].clone(), Some(Uuid::from_u128(8))), seen[2].clone()];
        assert_eq!(decide(&c, &agents(), &seen, &[], &[], known), Action::Steady);
    }

    // Finding 2: no floor, and removals the leader did not ask for.
    #[test]
    fn polls_alone_never_remove_a_member() {
        // The supervisor cannot poll the replicas (a partition), the leader still reaches them.
        let c = config(1, "a:1", &["a:1", "b:2", "c:3"]);
        let seen = [up("a:1", Role::Leader, 1), down("b:2"), down("c:3")];
        assert_eq!(decide2(&c, &seen, &[]), Action::Steady);
    }

    #[test]
    fn a_reported_member_the_supervisor_reaches_stays_until_reported_again() {
        let c = config(2, "a:1", &["a:1", "b:2", "c:3"]);
        let unreachable = report(2, "b:2", FailureKind::Unreachable);
        let refused = on_failure_report(&c, &unreachable, REACHABLE, FLOOR).unwrap_err();
        assert!(!refused.at_floor);
        let again = ReportCheck { supervisor_reaches: true, reported_before: true };
        assert_eq!(on_failure_report(&c, &unreachable, again, FLOOR).unwrap().members, vec!["a:1", "c:3"]);
        // Unreachable for the supervisor too: removed at once.
        assert_eq!(on_failure_report(&c, &unreachable, UNREACHABLE, FLOOR).unwrap().members, vec!["a:1", "c:3"]);
        // A NO or a failed decision is evidence of its own.
        for kind in [FailureKind::VotedNo, FailureKind::DecisionFailed] {
            assert_eq!(on_failure_report(&c, &report(2, "b:2", kind), REACHABLE, FLOOR).unwrap().version, 8);
        }
    }

    #[test]
    fn reports_never_shrink_the_members_below_the_floor() {
        // Both replicas frozen: the first is removed, the second stays and commits wait.
        let c = config(2, "a:1", &["a:1", "b:2", "c:3"]);
        let c = on_failure_report(&c, &report(2, "b:2", FailureKind::Unreachable), UNREACHABLE, FLOOR).unwrap();
        let refused =
            on_failure_report(&c, &report(2, "c:3", FailureKind::Unreachable), UNREACHABLE, FLOOR).unwrap_err();
        assert!(refused.at_floor, "{}", refused.message);
        // With a floor of one (availability first), the leader may be left alone.
        let alone = on_failure_report(&c, &report(2, "c:3", FailureKind::Unreachable), UNREACHABLE, 1).unwrap();
        assert_eq!(alone.members, vec!["a:1"]);
    }

    #[test]
    fn failure_reports_from_an_old_term_or_about_the_leader_are_refused() {
        let c = config(2, "a:1", &["a:1", "b:2", "c:3"]);
        assert!(on_failure_report(&c, &report(1, "b:2", FailureKind::Unreachable), UNREACHABLE, FLOOR).is_err());
        assert!(on_failure_report(&c, &report(2, "a:1", FailureKind::Unreachable), UNREACHABLE, FLOOR).is_err());
        let gone = config(2, "a:1", &["a:1", "c:3"]);
        assert_eq!(
            on_failure_report(&gone, &report(2, "b:2", FailureKind::VotedNo), REACHABLE, FLOOR),
            Ok(gone.clone())
        );
    }

    // Finding 5: failed promotions never expired; a node passed over stayed unelectable.
    #[test]
    fn a_candidate_passed_over_is_tried_again_after_a_bounded_wait() {
        assert_eq!(promotion_backoff(1), Duration::ZERO);
        assert_eq!(promotion_backoff(2), Duration::from_secs(1));
        assert_eq!(promotion_backoff(3), Duration::from_secs(2));
        assert_eq!(promotion_backoff(40), MAX_PROMOTION_BACKOFF);
    }

    // Finding 5: a tail recovery that fetched past the paused LSN was marked "diverged" for good.
    #[test]
    fn a_tail_past_the_paused_lsn_is_not_divergence() {
        assert_eq!(caught_up_to(50, 50), Ok(50));
        assert_eq!(caught_up_to(57, 50), Ok(57));
        assert_eq!(caught_up_to(40, 50), Err(ShortOfLeader { reached: 40, leader: 50 }));
        assert!(caught_up_to(40, 50).unwrap_err().to_string().ends_with("trying again"));
    }

    #[test]
    fn the_newest_reported_configuration_is_the_highest_term_then_version() {
        let mut a = status("a:1", Role::Replica, 3, 1, 10);
        a.config_version = 9;
        let mut b = status("b:2", Role::Leader, 4, 1, 10);
        b.config_version = 2;
        b.leader = Some("b:2".into());
        let newest = newest_reported([&a, &b]).unwrap();
        assert_eq!((newest.term, newest.version, newest.leader.as_deref()), (4, 2, Some("b:2")));
        assert_eq!(newest_reported([]), None);
    }

    #[test]
    fn the_cluster_id_is_learnt_only_from_the_leader_of_the_term() {
        let id = Uuid::from_u128(7);
        let c = config(2, "a:1", &["a:1", "b:2"]);
        let mut leader = up("a:1", Role::Leader, 2);
        leader.status.as_mut().unwrap().cluster_id = Some(id);
        let mut replica = up("b:2", Role::Replica, 2);
        replica.status.as_mut().unwrap().cluster_id = Some(Uuid::from_u128(8));
        assert_eq!(reported_cluster_id(&c, &[leader.clone(), replica.clone()]), Some(id));
        // A leader of an older term, or one that does not answer, tells nothing.
        assert_eq!(reported_cluster_id(&config(3, "a:1", &["a:1"]), &[leader.clone()]), None);
        leader.alive = false;
        assert_eq!(reported_cluster_id(&c, &[leader, replica]), None);
    }
}
