//! The participant's side of the modified two-phase commit: pure decision rules, no I/O.
//!
//! Every member (the leader included) holds at most one batch prepared at a time, because the
//! leader runs one round at a time and answers its clients only after every member has durably
//! decided. The rules:
//! - A message from a lower term is refused; a higher term is adopted.
//! - A member votes YES only if it has applied exactly the leader's predecessor LSN (`prev_lsn`):
//!   it then holds every earlier entry, so batches are applied strictly in LSN order.
//! - A pending batch is superseded by a PREPARE from a later round (same or higher term) whose
//!   `prev_lsn` is this member's applied LSN: the leader's committed log ends there, so the
//!   pending batch was aborted (its ABORT was lost or arrived before a late PREPARE).
//! - A PREPARE from an earlier round than the pending batch is stale and refused.
//! - One leader per term: the first leader a member hears of in a term (from the supervisor's
//!   fence or from the first PREPARE) is the only one it votes for in that term. A second
//!   leader of the same term (a supervisor that lost its state and reused the term) gets
//!   `stale_term` and steps down, so two leaders can never both collect this member's YES.

use protocol::{Decision, Lsn, Term};
use uuid::Uuid;

/// Identifies one round of the leader: later rounds compare greater.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RoundId {
    pub term: Term,
    pub round: u64,
}

/// A batch this member holds prepared in PostgreSQL and has not decided yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingBatch {
    pub id: RoundId,
    pub last_lsn: Lsn,
    /// Transaction id of the batch's last entry: names the batch across restarts.
    pub last_txn: Uuid,
}

impl PendingBatch {
    /// The batch a [`protocol::PendingInfo`] names (its round is not part of its identity).
    pub fn from_info(info: &protocol::PendingInfo) -> PendingBatch {
        PendingBatch { id: RoundId { term: info.term, round: 0 }, last_lsn: info.last_lsn, last_txn: info.last_txn }
    }

    pub fn info(&self) -> protocol::PendingInfo {
        protocol::PendingInfo { last_lsn: self.last_lsn, last_txn: self.last_txn, term: self.id.term }
    }

    /// The PostgreSQL global transaction id: `rmw-<last lsn>-<term>-<last txn id>`.
    pub fn gid(&self) -> String {
        format!("rmw-{}-{}-{}", self.last_lsn, self.id.term, self.last_txn)
    }

    /// Parses a gid made by [`PendingBatch::gid`]; the round is unknown after a restart (0).
    pub fn from_gid(gid: &str) -> Option<PendingBatch> {
        let rest = gid.strip_prefix("rmw-")?;
        let mut parts = rest.splitn(3, '-');
        let last_lsn = parts.next()?.parse().ok()?;
        let term = parts.next()?.parse().ok()?;
        let last_txn = parts.next()?.parse().ok()?;
        Some(PendingBatch { id: RoundId { term, round: 0 }, last_lsn, last_txn })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantState {
    pub term: Term,
    /// The leader this member votes for in `term`, once it knows it.
    pub term_leader: Option<String>,
    pub applied_lsn: Lsn,
    pub pending: Option<PendingBatch>,
    /// What this process knows of the pending batch because it prepared it (nothing after a
    /// restart).
    pub pending_detail: Option<PreparedHere>,
    /// Set when a PostgreSQL call failed half-way (a lost answer, a server stopped mid-call):
    /// PostgreSQL may then hold a prepared batch, or a commit, that this state does not show.
    /// The runtime re-reads both from PostgreSQL before acting again.
    pub uncertain: bool,
}

/// Details of a batch this process prepared itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedHere {
    /// The commit timestamp of the batch's last entry: saves re-reading it from the log after
    /// COMMIT PREPARED.
    pub last_commit_ts: protocol::Timestamp,
    /// Every entry's LSN and transaction id, so that the decision can be logged per transaction.
    pub txns: Vec<(Lsn, Uuid)>,
}

/// What to do with a PREPARE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrepareStep {
    /// Prepare the batch (after rolling back `supersede`, if given).
    Prepare { supersede: Option<PendingBatch> },
    /// The very same batch is already prepared: vote YES again.
    AlreadyPrepared,
    /// Vote NO, for this reason.
    Refuse(String),
    /// The sender's term is lower than ours.
    StaleTerm(Term),
}

/// How a member's cluster id relates to the one a leader or the supervisor names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// Same cluster, or no id named (a cluster made before ids existed).
    Same,
    /// This database has no id yet (new or wiped): it takes this one once it holds the
    /// cluster's log up to the point it was asked to follow.
    Adopt(Uuid),
    /// This database belongs to another cluster: it never votes YES, never recovers, never
    /// leads here.
    Foreign { ours: Uuid, theirs: Uuid },
}

/// The rule behind [`Membership`].
pub fn membership(ours: Option<Uuid>, theirs: Option<Uuid>) -> Membership {
    match (ours, theirs) {
        (_, None) => Membership::Same,
        (None, Some(theirs)) => Membership::Adopt(theirs),
        (Some(ours), Some(theirs)) if ours == theirs => Membership::Same,
        (Some(ours), Some(theirs)) => Membership::Foreign { ours, theirs },
    }
}

/// Whether a member takes the id a new cluster's first leader offers (`POST /internal/cluster_id`):
/// only an empty database that belongs to no cluster yet. One with a log, or a prepared batch,
/// joins through a round or a recovery, which check that it holds the cluster's log; one of
/// another cluster never does. Ok(true): take it; Ok(false): already the same.
pub fn birth_check(ours: Option<Uuid>, applied_lsn: Lsn, pending: bool, offered: Uuid) -> Result<bool, String> {
    match ours {
        Some(id) if id == offered => Ok(false),
        Some(id) => Err(format!("this database belongs to cluster {id}, not {offered}")),
        None if applied_lsn > 0 || pending => Err(format!(
            "this database has a log (LSN {applied_lsn}) but no cluster id: it joins through a round or a recovery"
        )),
        None => Ok(true),
    }
}

/// What to do with a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecideStep {
    CommitPending,
    RollbackPending,
    /// Nothing pending matches and nothing needs doing (a repeated decision, or an ABORT of a
    /// batch never prepared here).
    AlreadyDone,
    /// A COMMIT for a batch this member neither holds nor has applied: it cannot happen when
    /// the protocol is followed, and is reported loudly.
    Unknown(String),
    StaleTerm(Term),
}

impl ParticipantState {
    /// Learns the leader of `term` (a newer term replaces the old leader; within a term the
    /// first one known stays). Returns false if `leader` contradicts the one known.
    pub fn learn_leader(&mut self, term: Term, leader: Option<&str>) -> bool {
        if term > self.term {
            self.term = term;
            self.term_leader = leader.map(str::to_string);
            return true;
        }
        match (&self.term_leader, leader) {
            (Some(known), Some(leader)) if term == self.term => known == leader,
            (None, Some(leader)) if term == self.term => {
                self.term_leader = Some(leader.to_string());
                true
            }
            _ => true,
        }
    }

    pub fn on_prepare(
        &mut self,
        id: RoundId,
        prev_lsn: Lsn,
        last_lsn: Lsn,
        last_txn: Uuid,
        leader: Option<&str>,
    ) -> PrepareStep {
        if id.term < self.term || !self.learn_leader(id.term, leader) {
            return PrepareStep::StaleTerm(self.term);
        }
        if let Some(p) = &self.pending {
            if p.last_txn == last_txn && p.last_lsn == last_lsn {
                return PrepareStep::AlreadyPrepared;
            }
            if id < p.id {
                return PrepareStep::Refuse(format!("stale PREPARE from round {:?}; round {:?} is pending", id, p.id));
            }
        }
        if prev_lsn != self.applied_lsn {
            return PrepareStep::Refuse(format!(
                "out of order: this member has applied LSN {}, the batch follows LSN {prev_lsn}",
                self.applied_lsn
            ));
        }
        PrepareStep::Prepare { supersede: self.pending.clone() }
    }

    pub fn on_decide(&mut self, term: Term, last_lsn: Lsn, last_txn: Uuid, decision: Decision) -> DecideStep {
        if term < self.term {
            return DecideStep::StaleTerm(self.term);
        }
        self.term = term;
        let holds = |p: &PendingBatch| p.last_lsn == last_lsn && p.last_txn == last_txn;
        match (&self.pending, decision) {
            (Some(p), Decision::Commit) if holds(p) => DecideStep::CommitPending,
            (Some(p), Decision::Abort) if holds(p) => DecideStep::RollbackPending,
            (_, Decision::Commit) if self.applied_lsn >= last_lsn => DecideStep::AlreadyDone,
            (_, Decision::Abort) => DecideStep::AlreadyDone,
            (_, Decision::Commit) => DecideStep::Unknown(format!(
                "COMMIT for the batch ending at LSN {last_lsn}, which this member neither holds prepared nor has applied (applied LSN {})",
                self.applied_lsn
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Found by the failover benchmark with etcd: the first leader of a new cluster failed
    // before its first commit, and no replica could be elected (none carried the cluster's id,
    // so each counted as another cluster's). The first leader now gives the id at once; only an
    // empty database that belongs to no cluster takes it.
    #[test]
    fn only_an_empty_database_of_no_cluster_takes_a_new_clusters_id() {
        let (new, other) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(birth_check(None, 0, false, new), Ok(true));
        assert_eq!(birth_check(Some(new), 0, false, new), Ok(false), "already taken: nothing to do");
        assert!(birth_check(Some(other), 0, false, new).unwrap_err().contains("belongs to cluster"));
        // A log or a prepared batch joins through a round or a recovery, which check the log.
        assert!(birth_check(None, 7, false, new).is_err());
        assert!(birth_check(None, 0, true, new).is_err());
    }

    fn txn(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }
    fn round(term: Term, round: u64) -> RoundId {
        RoundId { term, round }
    }
    fn fresh() -> ParticipantState {
        ParticipantState {
            term: 1,
            term_leader: None,
            applied_lsn: 10,
            pending: None,
            pending_detail: None,
            uncertain: false,
        }
    }

    #[test]
    fn gid_round_trips() {
        let p = PendingBatch { id: round(3, 0), last_lsn: 42, last_txn: txn(7) };
        assert_eq!(PendingBatch::from_gid(&p.gid()), Some(p));
        assert_eq!(PendingBatch::from_gid("other-1"), None);
    }

    #[test]
    fn votes_yes_only_after_its_predecessor() {
        let mut s = fresh();
        assert_eq!(s.on_prepare(round(1, 5), 10, 12, txn(1), None), PrepareStep::Prepare { supersede: None });
        assert!(matches!(s.on_prepare(round(1, 5), 11, 12, txn(1), None), PrepareStep::Refuse(_)));
    }

    #[test]
    fn a_lower_term_is_fenced_off() {
        let mut s = ParticipantState { term: 4, ..fresh() };
        assert_eq!(s.on_prepare(round(3, 9), 10, 11, txn(1), None), PrepareStep::StaleTerm(4));
        assert_eq!(s.on_decide(3, 11, txn(1), Decision::Commit), DecideStep::StaleTerm(4));
    }

    // Finding 4: a supervisor that lost its state reuses a term for a second leader.
    #[test]
    fn a_member_votes_for_one_leader_per_term() {
        let mut s = fresh();
        assert_eq!(s.on_prepare(round(2, 1), 10, 11, txn(1), Some("a:1")), PrepareStep::Prepare { supersede: None });
        assert_eq!(s.term_leader.as_deref(), Some("a:1"));
        // Another leader claiming the same term is refused as stale: it steps down.
        assert_eq!(s.on_prepare(round(2, 2), 10, 11, txn(2), Some("b:2")), PrepareStep::StaleTerm(2));
        // A higher term belongs to whoever leads it.
        assert!(matches!(s.on_prepare(round(3, 1), 10, 11, txn(3), Some("b:2")), PrepareStep::Prepare { .. }));
        assert_eq!((s.term, s.term_leader.as_deref()), (3, Some("b:2")));
        // The fence names the leader first: then only that one gets votes in the term.
        let mut s = fresh();
        assert!(s.learn_leader(4, Some("c:3")));
        assert_eq!(s.on_prepare(round(4, 1), 10, 11, txn(1), Some("a:1")), PrepareStep::StaleTerm(4));
    }

    // Finding 3: a wiped database takes the cluster's id only by catching up; another
    // cluster's database never joins.
    #[test]
    fn cluster_ids_are_adopted_once_and_never_mixed() {
        let (a, b) = (txn(100), txn(200));
        assert_eq!(membership(Some(a), Some(a)), Membership::Same);
        assert_eq!(membership(None, Some(a)), Membership::Adopt(a));
        assert_eq!(membership(Some(a), Some(b)), Membership::Foreign { ours: a, theirs: b });
        assert_eq!(membership(Some(a), None), Membership::Same);
        assert_eq!(membership(None, None), Membership::Same);
    }

    #[test]
    fn a_repeated_prepare_is_answered_again() {
        let mut s = fresh();
        s.pending = Some(PendingBatch { id: round(1, 5), last_lsn: 12, last_txn: txn(1) });
        assert_eq!(s.on_prepare(round(1, 5), 10, 12, txn(1), None), PrepareStep::AlreadyPrepared);
    }

    #[test]
    fn a_later_round_supersedes_an_undecided_batch() {
        let mut s = fresh();
        let old = PendingBatch { id: round(1, 5), last_lsn: 12, last_txn: txn(1) };
        s.pending = Some(old.clone());
        assert_eq!(s.on_prepare(round(1, 6), 10, 11, txn(2), None), PrepareStep::Prepare { supersede: Some(old) });
    }

    #[test]
    fn a_late_prepare_from_an_earlier_round_is_refused() {
        let mut s = fresh();
        s.pending = Some(PendingBatch { id: round(1, 6), last_lsn: 11, last_txn: txn(2) });
        assert!(matches!(s.on_prepare(round(1, 5), 10, 12, txn(1), None), PrepareStep::Refuse(_)));
    }

    #[test]
    fn decisions_are_idempotent() {
        let mut s = fresh();
        s.pending = Some(PendingBatch { id: round(1, 5), last_lsn: 12, last_txn: txn(1) });
        assert_eq!(s.on_decide(1, 12, txn(1), Decision::Commit), DecideStep::CommitPending);
        s.pending = None;
        s.applied_lsn = 12;
        assert_eq!(s.on_decide(1, 12, txn(1), Decision::Commit), DecideStep::AlreadyDone);
        assert_eq!(s.on_decide(1, 13, txn(2), Decision::Abort), DecideStep::AlreadyDone);
        assert!(matches!(s.on_decide(1, 13, txn(2), Decision::Commit), DecideStep::Unknown(_)));
    }

    #[test]
    fn a_decision_for_another_batch_with_the_same_lsn_leaves_the_pending_one() {
        let mut s = fresh();
        s.pending = Some(PendingBatch { id: round(1, 5), last_lsn: 12, last_txn: txn(1) });
        assert_eq!(s.on_decide(1, 12, txn(9), Decision::Abort), DecideStep::AlreadyDone);
        assert!(s.pending.is_some());
    }
}
