//! The leader's side of the modified two-phase commit, as a state machine.
//!
//! [`Coordinator`] owns the leader's life, its queue of validated transactions, the rounds in
//! flight and every outcome it remembers. It does no I/O: each event (a transaction admitted,
//! a vote, an acknowledgement, a report's answer) returns the [`Effect`]s the runtime carries
//! out, and the runtime feeds their results back as events.
//!
//! A round's life: **voting** (PREPARE sent to every member, the leader included) ->
//! **deciding** (the decision sent to the replicas; the leader decides its own batch once one
//! replica acknowledged a COMMIT) -> **done** (its clients are answered, in round order).
//! Up to `depth` rounds are in flight at once: round r+1 is prepared while round r is decided,
//! so PostgreSQL can share one WAL flush between them.
//!
//! Invariants kept here:
//! - A round's LSNs follow the round before it (or the leader's log): every member applies
//!   batches strictly in LSN order, and LSNs are dense.
//! - A round commits only if every remaining member voted YES, at least `required` members
//!   (this one included) hold it, this leader is not deposed, and the round before it
//!   committed. An aborted round aborts every round behind it (they follow its LSNs), and no
//!   new round starts until the aborted ones are done, so their LSNs are reused.
//! - The leader commits its own batch only after at least one replica acknowledged COMMIT (or
//!   it is the only member), and answers clients only after every member did.
//! - A transaction id has one outcome: a repeated commit waits for the first one's outcome or
//!   gets it from the outcome cache. A conflict's ABORT is final too: it is logged as an entry
//!   of its own (no writes) by the next round, and the client hears 409 only once that round
//!   is durable.
//! - An entry found in the log is answered COMMIT only up to `durable_lsn`, the last LSN this
//!   leader saw reach the floor.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use protocol::{
    AbortReason, AbortRecord, Account, Balance, DecideRequest, Decision, FailureKind, LogEntry, Lsn, PrepareRequest,
    Term, Timestamp,
};
use uuid::Uuid;

use crate::batch::RoundId;
use crate::validation::Validator;

/// Most transactions in one round. Bounds the size of one PREPARE and of one PostgreSQL
/// transaction; at the throughput of one machine a round rarely fills it.
pub const MAX_BATCH: usize = 256;
/// Most transactions waiting for a round. Beyond it a commit is refused with 503 and
/// `Retry-After` rather than queued: under overload, latency must stay bounded and memory flat.
pub const MAX_QUEUED: usize = 10_000;
/// Outcomes remembered for idempotent retries of a `txn_id` (committed ones are also in the log).
pub const OUTCOME_CACHE: usize = 100_000;

/// What happened to one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutcome {
    Committed {
        lsn: Lsn,
        commit_ts: Timestamp,
    },
    Aborted {
        reason: AbortReason,
        key: Option<Account>,
        message: String,
    },
    /// Never prepared: this leader was deposed first. Safe to retry at the new leader.
    NotApplied,
    /// The round was in flight when leadership or membership changed; the new leader decides
    /// it by the in-doubt rules. A retry with the same `txn_id` returns the outcome.
    Unknown {
        message: String,
    },
}

impl TxnOutcome {
    /// Outcomes that are answers for good, and so may be repeated to a retry: a commit, and a
    /// conflict's abort. "Nothing applied, retry" (503) is not one.
    pub fn is_final(&self) -> bool {
        match self {
            TxnOutcome::Committed { .. } => true,
            TxnOutcome::Aborted { reason, .. } => reason.is_final(),
            TxnOutcome::NotApplied | TxnOutcome::Unknown { .. } => false,
        }
    }

    /// The outcome a log entry records.
    pub fn of_entry(entry: &LogEntry) -> TxnOutcome {
        match &entry.aborted {
            None => TxnOutcome::Committed { lsn: entry.lsn, commit_ts: entry.commit_ts },
            Some(record) => {
                TxnOutcome::Aborted { reason: record.reason, key: record.key, message: record.message.clone() }
            }
        }
    }
}

/// A transaction to commit, as the edge validated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Txn {
    pub txn_id: Uuid,
    pub read_set: BTreeSet<Account>,
    pub write_set: BTreeMap<Account, Balance>,
    pub read_ts: Option<Timestamp>,
    /// The copies this transaction needs before it is acknowledged (at least the floor).
    pub min_copies: usize,
}

/// A validated transaction waiting for its round, or the record of a conflict's abort that
/// the round makes durable before the client hears it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Admitted {
    txn_id: Uuid,
    read_set: BTreeSet<Account>,
    write_set: BTreeMap<Account, Balance>,
    commit_ts: Timestamp,
    min_copies: usize,
    aborted: Option<AbortRecord>,
}

/// What admitting a transaction gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Its outcome is known (a repeated id).
    Done(TxnOutcome),
    /// Queued, or already in flight: the waiter is answered with an [`Effect::Answer`].
    Waiting,
    /// The leader has [`MAX_QUEUED`] transactions waiting.
    Overloaded,
    /// A read timestamp above every timestamp handed out (the bound is given).
    FutureTimestamp(Timestamp),
    /// This leader is deposed: nothing was queued.
    NotLeading,
}

/// The leader's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Life {
    Leading,
    /// No new round starts before `until` (milliseconds on the runtime's clock), or a resume
    /// (a recovering node's final catch-up).
    Paused {
        until: u64,
    },
    /// A newer term exists, or a member holds entries this leader lacks. Final.
    Deposed,
}

/// A replica's answer to a PREPARE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoteResult {
    Yes,
    No { applied_lsn: Lsn, reason: String },
    Stale(Term),
    Unreachable(String),
}

/// How delivering a decision to a replica ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckResult {
    Acknowledged,
    /// The supervisor removed the replica: it learns the outcome when it recovers.
    Removed,
    /// An ABORT not acknowledged in time, or this leader was deposed meanwhile.
    GaveUp,
    /// The replica is in a newer term.
    Stale,
}

/// What the runtime must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect<W> {
    /// Send the PREPARE to each replica and to this node's own member; feed
    /// [`Coordinator::voted`] and [`Coordinator::voted_here`].
    Prepare { round: RoundId, request: PrepareRequest, replicas: Vec<String> },
    /// Ask the supervisor to remove `peer`. If `answer`, feed [`Coordinator::reported`].
    Report { round: RoundId, peer: String, reason: String, kind: FailureKind, answer: bool },
    /// Deliver the decision to `peer` until it acknowledges, is removed, or (`give_up`, an
    /// ABORT) a short while passes; feed [`Coordinator::acked`].
    Decide { round: RoundId, peer: String, request: DecideRequest, give_up: bool },
    /// Apply the decision to this node's own batch; feed [`Coordinator::decided_here`].
    DecideHere { round: RoundId, request: DecideRequest },
    /// Answer the waiters of a transaction.
    Answer { txn_id: Uuid, outcome: TxnOutcome, waiters: Vec<W> },
    /// This leader stepped down: the node stops leading.
    SteppedDown { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Voting {
        /// Replicas whose vote (or whose report's answer) is still awaited.
        awaiting: BTreeSet<String>,
        /// Whether this node's own vote is in.
        voted_here: bool,
        yes: usize,
        refusals: Vec<String>,
    },
    Deciding {
        decision: Decision,
        awaiting: BTreeSet<String>,
        acked: usize,
        removed: usize,
        /// None until the leader's own decision is sent; then whether it landed.
        here: Option<Option<bool>>,
        reason: AbortReason,
        refusals: Vec<String>,
    },
    Done {
        decision: Decision,
        durable: bool,
        outcomes: Vec<TxnOutcome>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Round {
    id: RoundId,
    prev_lsn: Lsn,
    last_lsn: Lsn,
    last_txn: Uuid,
    txns: Vec<Admitted>,
    replicas: Vec<String>,
    required: usize,
    phase: Phase,
}

impl Round {
    /// The round's decision, once made.
    fn decision(&self) -> Option<Decision> {
        match &self.phase {
            Phase::Voting { .. } => None,
            Phase::Deciding { decision, .. } | Phase::Done { decision, .. } => Some(*decision),
        }
    }

    fn request(&self, term: Term, decision: Decision) -> DecideRequest {
        DecideRequest { term, last_lsn: self.last_lsn, last_txn: self.last_txn, decision }
    }
}

/// Bounded memory of recent outcomes; the oldest are forgotten first.
#[derive(Debug, Default)]
struct OutcomeCache {
    map: HashMap<Uuid, TxnOutcome>,
    order: VecDeque<Uuid>,
}

impl OutcomeCache {
    fn insert(&mut self, id: Uuid, outcome: TxnOutcome) {
        if self.map.insert(id, outcome).is_none() {
            self.order.push_back(id);
            if self.order.len() > OUTCOME_CACHE {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}

/// The leader of one term. `W` is the runtime's handle for a waiting client.
#[derive(Debug)]
pub struct Coordinator<W> {
    term: Term,
    address: String,
    /// The cluster's durability floor (`--min-copies`).
    min_copies: usize,
    /// How many rounds may be in flight at once.
    depth: usize,
    life: Life,
    /// Holders that keep rounds from starting (a joining node's final check).
    holds: usize,
    /// How many holds were ever taken: a round starts only on members read since the last one
    /// (a hold may change them: a node joins).
    hold_epoch: u64,
    validator: Validator,
    queue: VecDeque<Admitted>,
    waiting: HashMap<Uuid, Vec<W>>,
    outcomes: OutcomeCache,
    rounds: VecDeque<Round>,
    /// Whether the round before the first of `rounds` was aborted: then every round in flight
    /// aborts too (they follow its LSNs), and no new round starts until they are done.
    after_abort: bool,
    next_round: u64,
    /// The highest LSN known to be durable on at least `min_copies` nodes: what a retry may be
    /// told from the log.
    durable_lsn: Lsn,
    /// Members whose last call failed: probed before a round, so that a round that cannot
    /// reach the floor is refused at once instead of waiting a timeout.
    suspects: BTreeSet<String>,
}

impl<W> Coordinator<W> {
    /// A leader of `term`; everything up to `durable_lsn` in its log was
    /// acknowledged by an earlier leader. `first_round` keeps round ids increasing across
    /// restarts (the runtime passes the clock).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        term: Term,
        address: String,
        min_copies: usize,
        depth: usize,
        validator: Validator,
        durable_lsn: Lsn,
        first_round: u64,
    ) -> Self {
        Coordinator {
            term,
            address,
            min_copies: min_copies.max(1),
            depth: depth.max(1),
            life: Life::Leading,
            holds: 0,
            hold_epoch: 0,
            validator,
            queue: VecDeque::new(),
            waiting: HashMap::new(),
            outcomes: OutcomeCache::default(),
            rounds: VecDeque::new(),
            after_abort: false,
            next_round: first_round,
            durable_lsn,
            suspects: BTreeSet::new(),
        }
    }

    pub fn term(&self) -> Term {
        self.term
    }
    pub fn life(&self) -> Life {
        self.life
    }
    pub fn is_deposed(&self) -> bool {
        self.life == Life::Deposed
    }
    pub fn durable_lsn(&self) -> Lsn {
        self.durable_lsn
    }
    pub fn min_copies(&self) -> usize {
        self.min_copies
    }
    pub fn rounds_in_flight(&self) -> usize {
        self.rounds.len()
    }
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
    /// The first of `keys` an in-flight transaction writes, if any.
    pub fn first_locked<'a>(&self, keys: impl IntoIterator<Item = &'a Account>) -> Option<Account> {
        self.validator.first_locked(keys)
    }
    /// The members among `replicas` whose last call failed.
    pub fn suspects(&self, replicas: &[String]) -> Vec<String> {
        replicas.iter().filter(|r| self.suspects.contains(*r)).cloned().collect()
    }
    /// A suspect answered a probe.
    pub fn answered(&mut self, peer: &str) {
        self.suspects.remove(peer);
    }

    // ---- admission ----

    /// The outcome, or a place among the waiters, of a transaction id already seen.
    pub fn known(&mut self, txn_id: Uuid, waiter: W) -> Result<Admission, W> {
        if let Some(outcome) = self.outcomes.map.get(&txn_id) {
            return Ok(Admission::Done(outcome.clone()));
        }
        match self.waiting.get_mut(&txn_id) {
            Some(waiters) => {
                waiters.push(waiter);
                Ok(Admission::Waiting)
            }
            None => Err(waiter),
        }
    }

    /// Validates `txn` by timestamp ordering and queues it (a conflict queues its ABORT
    /// record). `now` is the wall clock in nanoseconds.
    pub fn admit(&mut self, txn: Txn, now: Timestamp, waiter: W) -> Admission {
        let waiter = match self.known(txn.txn_id, waiter) {
            Ok(admission) => return admission,
            Err(waiter) => waiter,
        };
        if self.life == Life::Deposed {
            return Admission::NotLeading;
        }
        if self.queue.len() >= MAX_QUEUED {
            return Admission::Overloaded;
        }
        if let Err(bound) = self.validator.check_read_ts(txn.read_ts) {
            return Admission::FutureTimestamp(bound);
        }
        let admitted = match self.validator.admit(&txn.read_set, txn.read_ts, &txn.write_set, now) {
            // The abort is an outcome for good: it goes to the log with the next round, and
            // the client hears it once that round is durable.
            Err(conflict) => Admitted {
                txn_id: txn.txn_id,
                read_set: BTreeSet::new(),
                write_set: BTreeMap::new(),
                commit_ts: self.validator.stamp(now),
                min_copies: self.min_copies,
                aborted: Some(AbortRecord {
                    reason: conflict.reason,
                    key: Some(conflict.key),
                    message: format!("account {}: {}", conflict.key, conflict.reason.explain()),
                }),
            },
            Ok(commit_ts) => Admitted {
                txn_id: txn.txn_id,
                read_set: txn.read_set,
                write_set: txn.write_set,
                commit_ts,
                min_copies: txn.min_copies.max(self.min_copies),
                aborted: None,
            },
        };
        self.waiting.insert(txn.txn_id, vec![waiter]);
        self.queue.push_back(admitted);
        Admission::Waiting
    }

    // ---- life ----

    /// Stops taking rounds for good; queued transactions are answered `NotApplied`.
    pub fn depose(&mut self) -> Vec<Effect<W>> {
        if self.life == Life::Deposed {
            return Vec::new();
        }
        self.life = Life::Deposed;
        let queued: Vec<Admitted> = self.queue.drain(..).collect();
        queued.into_iter().filter_map(|txn| self.finish(txn, TxnOutcome::NotApplied)).collect()
    }

    /// No new round starts until `until` (or a resume); rounds in flight finish.
    pub fn pause(&mut self, until: u64) {
        if self.life != Life::Deposed {
            self.life = Life::Paused { until };
        }
    }

    /// Ends a pause.
    pub fn resume(&mut self) -> bool {
        let paused = matches!(self.life, Life::Paused { .. });
        if paused {
            self.life = Life::Leading;
        }
        paused
    }

    /// Keeps rounds from starting while held (the runtime waits for the rounds in flight).
    pub fn hold(&mut self) {
        self.holds += 1;
        self.hold_epoch += 1;
    }

    /// Read with the members a round is to be prepared on, and given back to
    /// [`Coordinator::start_round`].
    pub fn hold_epoch(&self) -> u64 {
        self.hold_epoch
    }
    pub fn release(&mut self) {
        self.holds = self.holds.saturating_sub(1);
    }

    // ---- rounds ----

    /// Whether a round could start now (the runtime then probes suspects and calls
    /// [`Coordinator::start_round`]).
    pub fn ready(&mut self, now_ms: u64) -> bool {
        if let Life::Paused { until } = self.life {
            if now_ms < until {
                return false;
            }
            self.life = Life::Leading;
        }
        self.life == Life::Leading
            && self.holds == 0
            && !self.queue.is_empty()
            && self.rounds.len() < self.depth
            && !self.after_abort
            && self.rounds.iter().all(|r| r.decision() != Some(Decision::Abort))
    }

    /// Starts a round with what is queued. `applied_lsn` is where this node's log ends;
    /// `replicas` the other members now, read when [`Coordinator::hold_epoch`] was
    /// `members_read_at`; `gone` how many of them failed their last call and do not answer a
    /// probe. Nothing starts if a hold was taken since the members were read: a node may have
    /// joined, and a round prepared without it would leave a member without an entry.
    pub fn start_round(
        &mut self,
        now_ms: u64,
        applied_lsn: Lsn,
        replicas: Vec<String>,
        members_read_at: u64,
        gone: usize,
        cluster_id: Option<Uuid>,
    ) -> Vec<Effect<W>> {
        if !self.ready(now_ms) || members_read_at != self.hold_epoch {
            return Vec::new();
        }
        let members = 1 + replicas.len();
        let n = self.queue.len().min(MAX_BATCH);
        let batch: Vec<Admitted> = self.queue.drain(..n).collect();
        let mut effects = Vec::new();
        // A transaction that asks for more copies than there are members cannot be
        // acknowledged: it is answered before anything is prepared, and the rest go on.
        let (included, too_many): (Vec<Admitted>, Vec<Admitted>) =
            batch.into_iter().partition(|t| t.min_copies <= members);
        for txn in too_many {
            let wanted = txn.min_copies;
            effects.extend(self.finish(
                txn,
                not_enough_replicas(format!(
                "this commit needs {wanted} copies and the cluster has {members} members in sync; nothing was applied, \
                 retry with the same txn_id once more nodes are back"
            )),
            ));
        }
        if included.is_empty() {
            return effects;
        }
        let required = included.iter().map(|t| t.min_copies).max().unwrap_or(self.min_copies).max(self.min_copies);
        let answering = members - gone.min(replicas.len());
        if answering < required {
            let message = format!(
                "{answering} of {members} members answer and this commit needs {required} copies; \
                 nothing was applied, retry with the same txn_id once more nodes are back"
            );
            for txn in included {
                effects.extend(self.finish(txn, not_enough_replicas(message.clone())));
            }
            return effects;
        }
        let prev_lsn = self.rounds.back().map_or(applied_lsn, |r| r.last_lsn);
        let entries: Vec<LogEntry> = included
            .iter()
            .enumerate()
            .map(|(i, t)| LogEntry {
                lsn: prev_lsn + 1 + i as Lsn,
                term: self.term,
                txn_id: t.txn_id,
                commit_ts: t.commit_ts,
                read_set: t.read_set.iter().copied().collect(),
                write_set: t.write_set.clone(),
                aborted: t.aborted.clone(),
            })
            .collect();
        self.next_round += 1;
        let id = RoundId { term: self.term, round: self.next_round };
        let last_lsn = prev_lsn + entries.len() as Lsn;
        let last_txn = entries.last().map(|e| e.txn_id).unwrap_or_default();
        let request = PrepareRequest {
            term: self.term,
            round: id.round,
            prev_lsn,
            entries,
            leader: Some(self.address.clone()),
            cluster_id,
        };
        self.rounds.push_back(Round {
            id,
            prev_lsn,
            last_lsn,
            last_txn,
            txns: included,
            replicas: replicas.clone(),
            required,
            phase: Phase::Voting {
                awaiting: replicas.iter().cloned().collect(),
                voted_here: false,
                yes: 0,
                refusals: Vec::new(),
            },
        });
        effects.push(Effect::Prepare { round: id, request, replicas });
        effects
    }

    fn round_mut(&mut self, id: RoundId) -> Option<&mut Round> {
        self.rounds.iter_mut().find(|r| r.id == id)
    }

    /// This node's own vote on the round.
    pub fn voted_here(&mut self, id: RoundId, result: Result<(), String>) -> Vec<Effect<W>> {
        if let Some(Round { phase: Phase::Voting { voted_here, yes, refusals, .. }, .. }) = self.round_mut(id) {
            match result {
                Ok(()) => *yes += 1,
                Err(reason) => refusals.push(reason),
            }
            *voted_here = true;
        }
        self.advance()
    }

    /// A replica's vote on the round.
    pub fn voted(&mut self, id: RoundId, peer: &str, result: VoteResult) -> Vec<Effect<W>> {
        let mut effects = Vec::new();
        let Some(round) = self.round_mut(id) else {
            return effects;
        };
        let prev_lsn = round.prev_lsn;
        let Phase::Voting { awaiting, yes, refusals, .. } = &mut round.phase else {
            return effects;
        };
        let mut step_down = None;
        match result {
            VoteResult::Yes => {
                awaiting.remove(peer);
                *yes += 1;
                self.suspects.remove(peer);
            }
            // The member holds entries this leader does not: this leader's log is the shorter
            // one, so it must not lead (and the member must not be removed).
            VoteResult::No { applied_lsn, .. } if applied_lsn > prev_lsn => {
                awaiting.remove(peer);
                let reason = format!(
                    "{peer} has applied LSN {applied_lsn}, beyond this leader's {prev_lsn}: this leader stepped down"
                );
                refusals.push(reason.clone());
                step_down = Some(reason);
            }
            // A member that is behind cannot vote YES until it recovers: the NO is the
            // evidence the supervisor needs to remove it.
            VoteResult::No { reason, .. } => {
                awaiting.remove(peer);
                let reason = format!("{peer} voted NO: {reason}");
                refusals.push(reason.clone());
                effects.push(Effect::Report {
                    round: id,
                    peer: peer.into(),
                    reason,
                    kind: FailureKind::VotedNo,
                    answer: false,
                });
            }
            VoteResult::Stale(term) => {
                awaiting.remove(peer);
                let reason = format!("{peer} is in term {term}: this leader was deposed");
                refusals.push(reason.clone());
                step_down = Some(reason);
            }
            // Not answering is not a NO: the supervisor may remove the member (it checks that
            // it cannot reach it either, and never goes below the floor), and the round then
            // goes on without it. The vote stays awaited until the report is answered.
            VoteResult::Unreachable(reason) => {
                self.suspects.insert(peer.to_string());
                effects.push(Effect::Report {
                    round: id,
                    peer: peer.into(),
                    reason,
                    kind: FailureKind::Unreachable,
                    answer: true,
                });
            }
        }
        if let Some(reason) = step_down {
            effects.extend(self.step_down(reason));
        }
        effects.extend(self.advance());
        effects
    }

    /// The supervisor's answer to a report that a replica did not answer: `removed` or not.
    pub fn reported(&mut self, id: RoundId, peer: &str, reason: String, removed: bool) -> Vec<Effect<W>> {
        if let Some(round) = self.round_mut(id) {
            if let Phase::Voting { awaiting, refusals, .. } = &mut round.phase {
                if awaiting.remove(peer) {
                    if removed {
                        round.replicas.retain(|r| r != peer);
                    } else {
                        refusals.push(reason);
                    }
                }
            }
        }
        self.advance()
    }

    /// How delivering the decision to `peer` ended.
    pub fn acked(&mut self, id: RoundId, peer: &str, result: AckResult) -> Vec<Effect<W>> {
        let term = self.term;
        let mut effects = Vec::new();
        if result == AckResult::Stale {
            effects.extend(self.step_down(format!("{peer} is in a newer term")));
        }
        if let Some(round) = self.round_mut(id) {
            let request = round.request(term, Decision::Commit);
            if let Phase::Deciding { awaiting, acked, removed, here, decision, .. } = &mut round.phase {
                if awaiting.remove(peer) {
                    match result {
                        AckResult::Acknowledged => *acked += 1,
                        AckResult::Removed => {
                            *acked += 1;
                            *removed += 1;
                        }
                        AckResult::GaveUp | AckResult::Stale => {}
                    }
                    // The leader commits its own batch once one replica has.
                    if *decision == Decision::Commit && here.is_none() && *acked > 0 {
                        *here = Some(None);
                        effects.push(Effect::DecideHere { round: id, request });
                    }
                }
            }
        }
        effects.extend(self.advance());
        effects
    }

    /// Whether this node's own decision landed (false: deposed first).
    pub fn decided_here(&mut self, id: RoundId, landed: bool) -> Vec<Effect<W>> {
        if let Some(Round { phase: Phase::Deciding { here, .. }, .. }) = self.round_mut(id) {
            *here = Some(Some(landed));
        }
        self.advance()
    }

    fn step_down(&mut self, reason: String) -> Vec<Effect<W>> {
        if self.life == Life::Deposed {
            return Vec::new();
        }
        let mut effects = self.depose();
        effects.push(Effect::SteppedDown { reason });
        effects
    }

    /// Moves every round as far as its events allow: decides rounds whose votes are in (in
    /// order), finishes rounds whose decision is durable, and answers finished rounds in order.
    fn advance(&mut self) -> Vec<Effect<W>> {
        let mut effects = Vec::new();
        let term = self.term;
        let deposed = self.life == Life::Deposed;
        // A round is decided only after the round before it, and commits only if that one did.
        let mut previous = Some(if self.after_abort { Decision::Abort } else { Decision::Commit });
        for round in self.rounds.iter_mut() {
            if let (Some(before), Phase::Voting { awaiting, voted_here: true, yes, refusals }) =
                (previous, &round.phase)
            {
                if awaiting.is_empty() {
                    let copies = 1 + round.replicas.len();
                    let commit =
                        refusals.is_empty() && !deposed && copies >= round.required && before == Decision::Commit;
                    let decision = if commit { Decision::Commit } else { Decision::Abort };
                    let reason = if *yes < round.required {
                        AbortReason::NotEnoughReplicas
                    } else {
                        AbortReason::ReplicationFailed
                    };
                    let mut refusals = refusals.clone();
                    if before == Decision::Abort {
                        refusals.push("the round before this one was aborted".into());
                    }
                    effects.extend(decide(round, term, decision, reason, refusals));
                }
            }
            previous = round.decision().filter(|_| previous.is_some());
        }
        for round in self.rounds.iter_mut() {
            finish_if_durable(round);
        }
        // Answer finished rounds in order.
        while let Some(Round { phase: Phase::Done { .. }, .. }) = self.rounds.front() {
            let Some(round) = self.rounds.pop_front() else { break };
            let Phase::Done { decision, durable, outcomes } = round.phase else { continue };
            if decision == Decision::Commit && durable {
                self.durable_lsn = self.durable_lsn.max(round.last_lsn);
            }
            self.after_abort = decision == Decision::Abort && !self.rounds.is_empty();
            for (txn, outcome) in round.txns.into_iter().zip(outcomes) {
                effects.extend(self.finish(txn, outcome));
            }
        }
        if self.rounds.is_empty() {
            self.after_abort = false;
        }
        effects
    }

    /// Releases a transaction's locks, remembers a final outcome, and answers its waiters.
    fn finish(&mut self, txn: Admitted, outcome: TxnOutcome) -> Option<Effect<W>> {
        let committed_at = match &outcome {
            TxnOutcome::Committed { commit_ts, .. } => Some(*commit_ts),
            _ => None,
        };
        self.validator.finish(&txn.write_set, committed_at);
        if outcome.is_final() {
            self.outcomes.insert(txn.txn_id, outcome.clone());
        }
        let waiters = self.waiting.remove(&txn.txn_id).unwrap_or_default();
        Some(Effect::Answer { txn_id: txn.txn_id, outcome, waiters })
    }

    /// Ids of transactions in flight or queued (for tests and metrics).
    pub fn in_flight(&self) -> HashSet<Uuid> {
        self.waiting.keys().copied().collect()
    }
}

/// Sends a round's decision: to every replica, and to this node at once for an ABORT or a
/// leader alone (a COMMIT waits for one replica's acknowledgement).
fn decide<W>(
    round: &mut Round,
    term: Term,
    decision: Decision,
    reason: AbortReason,
    refusals: Vec<String>,
) -> Vec<Effect<W>> {
    let request = round.request(term, decision);
    let mut effects: Vec<Effect<W>> = round
        .replicas
        .iter()
        .map(|peer| Effect::Decide {
            round: round.id,
            peer: peer.clone(),
            request: request.clone(),
            give_up: decision == Decision::Abort,
        })
        .collect();
    let here_now = decision == Decision::Abort || round.replicas.is_empty();
    if here_now {
        effects.push(Effect::DecideHere { round: round.id, request });
    }
    round.phase = Phase::Deciding {
        decision,
        awaiting: round.replicas.iter().cloned().collect(),
        acked: 0,
        removed: 0,
        here: here_now.then_some(None),
        reason,
        refusals,
    };
    effects
}

/// A round whose decision every replica has answered for, and this node applied (or never
/// will: no replica acknowledged a COMMIT), is done: its outcomes are fixed.
fn finish_if_durable(round: &mut Round) {
    let Phase::Deciding { decision, awaiting, acked, removed, here, reason, refusals } = &round.phase else {
        return;
    };
    let landed = match here {
        _ if !awaiting.is_empty() => return,
        Some(None) => return,
        Some(Some(landed)) => *landed,
        None => false,
    };
    let durable_everywhere = landed && *acked == round.replicas.len();
    // A replica removed during phase two counts as acknowledged (it learns the outcome when it
    // recovers) but holds no copy: the floor counts the members that are left.
    let copies_now = 1 + round.replicas.len() - removed;
    let durable = durable_everywhere && (*decision == Decision::Abort || copies_now >= round.required);
    let outcomes: Vec<TxnOutcome> = if !durable {
        let message = format!(
            "leadership or membership changed while this transaction was being replicated (round {}); \
             retry with the same txn_id to learn the outcome",
            round.id.round
        );
        round.txns.iter().map(|_| TxnOutcome::Unknown { message: message.clone() }).collect()
    } else if *decision == Decision::Commit {
        round
            .txns
            .iter()
            .enumerate()
            .map(|(i, t)| match &t.aborted {
                None => TxnOutcome::Committed { lsn: round.prev_lsn + 1 + i as Lsn, commit_ts: t.commit_ts },
                Some(r) => TxnOutcome::Aborted { reason: r.reason, key: r.key, message: r.message.clone() },
            })
            .collect()
    } else {
        let message = format!("{}; nothing was applied, retry with the same txn_id", refusals.join("; "));
        round
            .txns
            .iter()
            .map(|_| TxnOutcome::Aborted { reason: *reason, key: None, message: message.clone() })
            .collect()
    };
    round.phase = Phase::Done { decision: *decision, durable, outcomes };
}

/// 503 `not_enough_replicas`: nothing was applied.
fn not_enough_replicas(message: String) -> TxnOutcome {
    TxnOutcome::Aborted { reason: AbortReason::NotEnoughReplicas, key: None, message }
}
