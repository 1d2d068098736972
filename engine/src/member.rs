//! One member's side of the modified two-phase commit, as a state machine.
//!
//! [`Member`] owns everything a member decides by: its durable term and configuration, the
//! leader it votes for in that term, where its log ends, the batches it holds prepared, and
//! its role. It does no I/O. Each request is *stepped*: the member answers it, or names the one
//! thing the runtime must do first ([`Step`]). The runtime does that outside any lock (a
//! PostgreSQL call on its own connection, a durable write of the configuration), feeds the
//! result back, and steps the request again. Because the member never waits, its lock is held
//! for microseconds, and a round's PREPARE can run while the previous round's COMMIT PREPARED
//! does: the order is kept by the slots below, not by a mutex.
//!
//! Invariants kept here:
//! - The term only grows, and is durable before it is acted on: a request from a higher term
//!   first gets [`Step::Persist`], so a restarted member never votes for a deposed leader.
//! - One leader per term: the first leader a member hears of in a term (from the supervisor's
//!   fence or from the first PREPARE) is the only one it votes for in that term.
//! - Slots are in LSN order and contiguous after `applied`: slot k follows slot k-1 (or the
//!   applied LSN). A member votes YES only to a batch that follows its last slot or its log.
//!   Only the first slot is ever committed, so the log grows strictly in LSN order.
//! - A batch is appended behind undecided ones only if they are of the same term (the same
//!   leader's pipeline). A batch left by an older term is resolved first (by the in-doubt rules
//!   or by a recovery), never built on.
//! - A later round (same or higher term) whose PREPARE follows a slot boundary supersedes the
//!   slots after it: the leader's log ends there, so they were aborted. An earlier round is
//!   refused.
//! - Aborting a slot aborts every slot behind it: they follow its LSNs and can never commit.
//! - While a PostgreSQL call is in flight for a slot, nothing else touches that slot; when a
//!   call failed half-way the member is *uncertain* and re-reads PostgreSQL (the ground truth)
//!   before it acts again.

use std::collections::VecDeque;

use protocol::{BatchState, ClusterConfig, Decision, Lsn, PendingInfo, Role, Term};
use uuid::Uuid;

use crate::batch::{Batch, LogEnd, PreparedHere, RoundId};
use crate::cluster::{membership, Membership};

/// Most undecided batches a member holds: the depth of the leader's pipeline, with room.
pub const MAX_SLOTS: usize = 8;

/// What the runtime must do before a request can be answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<A> {
    /// The answer.
    Answer(A),
    /// Something in flight blocks this request: wait for the member to change, then step again.
    /// The text says what it waits for (the runtime bounds the wait).
    Wait(String),
    /// Store this configuration durably (never replacing a newer one), feed it to
    /// [`Member::adopted`], then step again.
    Persist(ClusterConfig),
    /// Re-read the log's end and the prepared batches from PostgreSQL, feed them to
    /// [`Member::reconciled`], then step again.
    Reconcile,
    /// Run this PostgreSQL operation and feed its result back as the operation says.
    Run(Op),
}

impl<A> Step<A> {
    /// The same step with its answer transformed.
    pub fn map<B>(self, f: impl FnOnce(A) -> B) -> Step<B> {
        match self {
            Step::Answer(a) => Step::Answer(f(a)),
            Step::Wait(why) => Step::Wait(why),
            Step::Persist(config) => Step::Persist(config),
            Step::Reconcile => Step::Reconcile,
            Step::Run(op) => Step::Run(op),
        }
    }
}

/// The PostgreSQL operations a member asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `PREPARE TRANSACTION` the batch with the request's entries, store `adopt` as the
    /// cluster id if given, then call [`Member::prepared`].
    Prepare { batch: Batch, adopt: Option<Uuid> },
    /// `COMMIT PREPARED`, then call [`Member::committed`].
    Commit(Batch),
    /// `ROLLBACK PREPARED` each, then call [`Member::rolled_back`] and step again.
    RollBack(Vec<Batch>),
    /// Ask the log whether it holds this batch (`BatchState::Committed`) or not (`Absent`).
    /// Entries at or below the applied LSN never change, so the answer is final.
    CheckLog(Batch),
}

/// A batch this member holds, by what is happening to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// `PREPARE TRANSACTION` is running.
    Preparing(Batch),
    /// Prepared and undecided.
    Prepared(Batch),
    /// `COMMIT PREPARED` or `ROLLBACK PREPARED` is running.
    Deciding(Batch, Decision),
}

impl Slot {
    pub fn batch(&self) -> &Batch {
        match self {
            Slot::Preparing(b) | Slot::Prepared(b) | Slot::Deciding(b, _) => b,
        }
    }

    fn in_flight(&self) -> bool {
        !matches!(self, Slot::Prepared(_))
    }
}

/// Whether the member's memory can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Sound,
    /// A PostgreSQL call failed half-way: PostgreSQL may hold a prepared batch, or a commit,
    /// that the slots do not show.
    Uncertain,
    /// The runtime is re-reading PostgreSQL.
    Reconciling,
    /// A recovery owns the log: it resolves the slots and applies the leader's log.
    Recovering,
}

/// The answer to a PREPARE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrepareAnswer {
    Yes,
    No(String),
    /// The sender's term is lower than ours (or another leader holds this term).
    Stale(Term),
}

/// The answer to a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecideAnswer {
    Done,
    Stale(Term),
    /// A COMMIT for a batch this member neither holds nor has applied: it cannot happen when
    /// the protocol is followed, and is reported loudly.
    Unknown(String),
    /// PostgreSQL failed; the member re-reads it before acting again.
    Failed(String),
}

/// The answer to a new configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigAnswer {
    /// The configuration is the member's now (or an older one was ignored).
    Current,
    Stale(Term),
}

/// What a PREPARE asks for, with the entries left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareArgs {
    pub id: RoundId,
    pub prev_lsn: Lsn,
    pub last_lsn: Lsn,
    pub last_txn: Uuid,
    pub leader: Option<String>,
    pub cluster_id: Option<Uuid>,
    pub detail: Option<PreparedHere>,
}

/// What changed for the leader running on this node when a configuration was adopted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaderChange {
    None,
    /// This node led `term` and must stop.
    Deposed(Term),
    /// This node still leads (a membership change in its term also ends a pause).
    StillLeading,
}

/// The state of one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    address: String,
    config: ClusterConfig,
    term: Term,
    /// The leader this member votes for in `term`, once it knows it.
    term_leader: Option<String>,
    applied: LogEnd,
    slots: VecDeque<Slot>,
    mode: Mode,
    cluster_id: Option<Uuid>,
    /// The term this node leads, once promoted.
    leading: Option<Term>,
    /// Set by the `/down_leader/` drill.
    down: bool,
}

/// Splits the prepared batches PostgreSQL holds into those that continue the log (kept, in
/// LSN order) and those that can never commit (to roll back): at or below the applied LSN, or
/// a second batch ending at the same LSN (the newer term wins).
pub fn chain(applied: Lsn, mut prepared: Vec<Batch>) -> (Vec<Batch>, Vec<Batch>) {
    prepared.sort_by_key(|b| (b.last_lsn, std::cmp::Reverse(b.id.term)));
    let (mut keep, mut stale): (Vec<Batch>, Vec<Batch>) = (Vec::new(), Vec::new());
    for batch in prepared {
        let tail = keep.last().map_or(applied, |b| b.last_lsn);
        if batch.last_lsn > tail {
            keep.push(batch);
        } else {
            stale.push(batch);
        }
    }
    (keep, stale)
}

impl Member {
    /// A member as PostgreSQL left it: its stored configuration, its log's end and the batches
    /// it holds prepared (already split by [`chain`]).
    pub fn restore(
        address: String,
        config: ClusterConfig,
        applied: LogEnd,
        prepared: Vec<Batch>,
        cluster_id: Option<Uuid>,
    ) -> Member {
        let term = prepared.iter().map(|b| b.id.term).fold(config.term, Term::max);
        let term_leader = config.leader.clone().filter(|_| config.term == term);
        Member {
            address,
            config,
            term,
            term_leader,
            applied,
            slots: prepared.into_iter().map(Slot::Prepared).collect(),
            mode: Mode::Sound,
            cluster_id,
            leading: None,
            down: false,
        }
    }

    // ---- what the member knows ----

    pub fn address(&self) -> &str {
        &self.address
    }
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }
    pub fn term(&self) -> Term {
        self.term
    }
    pub fn term_leader(&self) -> Option<&str> {
        self.term_leader.as_deref()
    }
    pub fn applied(&self) -> LogEnd {
        self.applied
    }
    pub fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter()
    }
    pub fn mode(&self) -> Mode {
        self.mode
    }
    pub fn cluster_id(&self) -> Option<Uuid> {
        self.cluster_id
    }
    pub fn leading(&self) -> Option<Term> {
        self.leading.filter(|_| !self.down)
    }
    pub fn is_down(&self) -> bool {
        self.down
    }

    /// The first undecided batch, as `/status` and the fence report it.
    pub fn pending(&self) -> Option<PendingInfo> {
        self.slots.front().map(|s| s.batch().info())
    }

    pub fn role(&self) -> Role {
        if self.down {
            Role::Down
        } else if self.leading.is_some() {
            Role::Leader
        } else if self.config.members.contains(&self.address) {
            Role::Replica
        } else {
            Role::Standby
        }
    }

    /// The members other than this node, in configured order.
    pub fn replicas(&self) -> Vec<String> {
        self.config.members.iter().filter(|m| **m != self.address).cloned().collect()
    }

    // ---- shared gates ----

    /// Holds requests back while memory cannot be trusted or a recovery owns the log.
    fn gate<A>(&mut self) -> Option<Step<A>> {
        match self.mode {
            Mode::Sound => None,
            Mode::Uncertain if self.slots.iter().any(Slot::in_flight) => {
                Some(Step::Wait("a PostgreSQL call in flight before re-reading PostgreSQL".into()))
            }
            Mode::Uncertain => {
                self.mode = Mode::Reconciling;
                Some(Step::Reconcile)
            }
            Mode::Reconciling => Some(Step::Wait("this node is re-reading its PostgreSQL".into())),
            Mode::Recovering => Some(Step::Wait("this node is recovering from the leader's log".into())),
        }
    }

    /// A lower term is refused; a higher one is made durable first.
    fn term_gate<A>(&self, term: Term, stale: impl FnOnce(Term) -> A) -> Option<Step<A>> {
        if term < self.term {
            Some(Step::Answer(stale(self.term)))
        } else if term > self.term {
            Some(Step::Persist(ClusterConfig { term, leader: None, ..self.config.clone() }))
        } else {
            None
        }
    }

    /// Learns the leader of `term` (a newer term replaces the old leader; within a term the
    /// first one known stays). Returns false if `leader` contradicts the one known.
    fn learn_leader(&mut self, term: Term, leader: Option<&str>) -> bool {
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

    fn position(&self, last_lsn: Lsn, last_txn: Uuid) -> Option<usize> {
        self.slots.iter().position(|s| s.batch().same(last_lsn, last_txn))
    }

    /// The LSN the log will end at when every slot commits.
    fn tail(&self) -> Lsn {
        self.slots.back().map_or(self.applied.lsn, |s| s.batch().last_lsn)
    }

    // ---- phase one ----

    pub fn prepare(&mut self, req: &PrepareArgs) -> Step<PrepareAnswer> {
        if let Some(step) = self.gate() {
            return step;
        }
        if let Some(step) = self.term_gate(req.id.term, PrepareAnswer::Stale) {
            return step;
        }
        if !self.learn_leader(req.id.term, req.leader.as_deref()) {
            return Step::Answer(PrepareAnswer::Stale(self.term));
        }
        let empty = self.applied.lsn == 0 && self.slots.is_empty();
        let adopt = match membership(self.cluster_id, req.cluster_id, empty) {
            Membership::Same => None,
            Membership::Adopt(id) => Some(id),
            Membership::Foreign { ours, theirs } => {
                return Step::Answer(PrepareAnswer::No(format!(
                    "this node's database belongs to cluster {ours}, the leader's to {theirs}"
                )))
            }
        };
        if let Some(i) = self.position(req.last_lsn, req.last_txn) {
            return match &self.slots[i] {
                Slot::Prepared(_) => Step::Answer(PrepareAnswer::Yes),
                _ => Step::Wait("the same batch is being prepared or decided".into()),
            };
        }
        // The slots the request supersedes: those after its predecessor.
        let boundary = std::iter::once(self.applied.lsn).chain(self.slots.iter().map(|s| s.batch().last_lsn));
        let Some(keep) = boundary.clone().position(|lsn| lsn == req.prev_lsn) else {
            return self.out_of_order(req);
        };
        if let Some(later) = self.slots.iter().skip(keep).find(|s| s.batch().id >= req.id) {
            return Step::Answer(PrepareAnswer::No(format!(
                "stale PREPARE from round {:?}; round {:?} is undecided here",
                req.id,
                later.batch().id
            )));
        }
        if keep < self.slots.len() {
            if self.slots.iter().skip(keep).any(Slot::in_flight) {
                return Step::Wait("a superseded batch is still being prepared or decided".into());
            }
            return Step::Run(Op::RollBack(self.start_rollback(keep)));
        }
        // The request follows the last slot (or the log): built on only within one term.
        if let Some(last) = self.slots.back() {
            let last = last.batch();
            if last.id.term != req.id.term {
                return Step::Answer(PrepareAnswer::No(format!(
                    "this node holds batch {} of term {} undecided; it must be resolved before a batch of term {} \
                     can follow it",
                    last.gid(),
                    last.id.term,
                    req.id.term
                )));
            }
            if matches!(self.slots.back(), Some(Slot::Deciding(_, Decision::Abort))) {
                return Step::Answer(PrepareAnswer::No("the batch before this one is being rolled back".into()));
            }
        }
        if self.slots.len() >= MAX_SLOTS {
            return Step::Answer(PrepareAnswer::No(format!("this node already holds {MAX_SLOTS} undecided batches")));
        }
        let batch = Batch { id: req.id, last_lsn: req.last_lsn, last_txn: req.last_txn, detail: req.detail.clone() };
        self.slots.push_back(Slot::Preparing(batch.clone()));
        Step::Run(Op::Prepare { batch, adopt })
    }

    /// A PREPARE whose predecessor is neither the log's end nor a slot's.
    fn out_of_order(&self, req: &PrepareArgs) -> Step<PrepareAnswer> {
        // Within one leader's pipeline, round r+1's PREPARE can overtake round r's on the way:
        // wait for it (the runtime bounds the wait and then votes NO).
        let same_pipeline = self.slots.back().is_some_and(|s| s.batch().id.term == req.id.term);
        if req.prev_lsn > self.tail() && same_pipeline {
            return Step::Wait(format!("the batch before LSN {} has not arrived", req.prev_lsn + 1));
        }
        Step::Answer(PrepareAnswer::No(format!(
            "out of order: this member has applied LSN {}, the batch follows LSN {}",
            self.applied.lsn, req.prev_lsn
        )))
    }

    /// Marks the slots from index `from` on as being rolled back, and returns their batches.
    fn start_rollback(&mut self, from: usize) -> Vec<Batch> {
        let mut batches = Vec::new();
        for slot in self.slots.iter_mut().skip(from) {
            let batch = slot.batch().clone();
            *slot = Slot::Deciding(batch.clone(), Decision::Abort);
            batches.push(batch);
        }
        batches
    }

    /// The result of [`Op::Prepare`]: `Ok(adopted cluster id)` or what failed.
    pub fn prepared(&mut self, batch: &Batch, result: Result<Option<Uuid>, String>) -> PrepareAnswer {
        let Some(i) = self.position(batch.last_lsn, batch.last_txn) else {
            // A reconcile replaced the slots meanwhile: PostgreSQL's word stands.
            return PrepareAnswer::No("the batch was lost track of while it was prepared".into());
        };
        match result {
            Ok(adopted) => {
                if adopted.is_some() {
                    self.cluster_id = adopted;
                }
                self.slots[i] = Slot::Prepared(self.slots[i].batch().clone());
                PrepareAnswer::Yes
            }
            Err(reason) => {
                self.slots.remove(i);
                self.mode = Mode::Uncertain;
                PrepareAnswer::No(format!("PostgreSQL refused the batch: {reason}"))
            }
        }
    }

    // ---- phase two ----

    pub fn decide(&mut self, term: Term, last_lsn: Lsn, last_txn: Uuid, decision: Decision) -> Step<DecideAnswer> {
        if let Some(step) = self.gate() {
            return step;
        }
        if let Some(step) = self.term_gate(term, DecideAnswer::Stale) {
            return step;
        }
        self.decide_slot(last_lsn, last_txn, decision)
    }

    fn decide_slot(&mut self, last_lsn: Lsn, last_txn: Uuid, decision: Decision) -> Step<DecideAnswer> {
        match (self.position(last_lsn, last_txn), decision) {
            (Some(i), _) if self.slots[i].in_flight() => Step::Wait("the batch is being prepared or decided".into()),
            (Some(0), Decision::Commit) => {
                let batch = self.slots[0].batch().clone();
                self.slots[0] = Slot::Deciding(batch.clone(), Decision::Commit);
                Step::Run(Op::Commit(batch))
            }
            (Some(_), Decision::Commit) => Step::Wait("an earlier batch is undecided".into()),
            (Some(i), Decision::Abort) if self.slots.iter().skip(i).any(Slot::in_flight) => {
                Step::Wait("a batch behind it is being prepared or decided".into())
            }
            (Some(i), Decision::Abort) => Step::Run(Op::RollBack(self.start_rollback(i))),
            (None, Decision::Commit) if self.applied.lsn >= last_lsn => Step::Answer(DecideAnswer::Done),
            (None, Decision::Abort) => Step::Answer(DecideAnswer::Done),
            (None, Decision::Commit) => Step::Answer(DecideAnswer::Unknown(format!(
                "COMMIT for the batch ending at LSN {last_lsn}, which this member neither holds prepared nor has \
                 applied (applied LSN {})",
                self.applied.lsn
            ))),
        }
    }

    /// The result of [`Op::Commit`]: where the log ends now, or what failed (after the runtime
    /// checked that the commit did not land anyway).
    pub fn committed(&mut self, batch: &Batch, result: Result<LogEnd, String>) -> DecideAnswer {
        let i = self.position(batch.last_lsn, batch.last_txn);
        if let Some(i) = i {
            self.slots.remove(i);
        }
        match result {
            Ok(end) => {
                if end.lsn > self.applied.lsn {
                    self.applied = end;
                }
                DecideAnswer::Done
            }
            Err(reason) => {
                self.mode = Mode::Uncertain;
                DecideAnswer::Failed(reason)
            }
        }
    }

    /// The result of [`Op::RollBack`]: false if any rollback failed (and the batch may remain).
    pub fn rolled_back(&mut self, batches: &[Batch], ok: bool) {
        self.slots.retain(|s| !batches.iter().any(|b| s.batch().same(b.last_lsn, b.last_txn)));
        if !ok {
            self.mode = Mode::Uncertain;
        }
    }

    /// Where this member stands on `batch`, for the in-doubt rules and for recoveries.
    pub fn batch_state(&mut self, info: &PendingInfo) -> Step<BatchState> {
        if let Some(step) = self.gate() {
            return step;
        }
        match self.position(info.last_lsn, info.last_txn).map(|i| &self.slots[i]) {
            Some(Slot::Prepared(_)) => Step::Answer(BatchState::Prepared),
            Some(_) => Step::Wait("the batch is being prepared or decided".into()),
            None if self.applied.lsn >= info.last_lsn => Step::Run(Op::CheckLog(Batch::from_info(info))),
            None => Step::Answer(BatchState::Absent),
        }
    }

    // ---- memory against PostgreSQL ----

    /// The result of [`Step::Reconcile`]: PostgreSQL's log end and the batches it holds
    /// prepared, already split by [`chain`] (the runtime rolled the stale ones back).
    pub fn reconciled(&mut self, applied: LogEnd, prepared: Vec<Batch>) {
        self.applied = applied;
        self.slots = prepared.into_iter().map(Slot::Prepared).collect();
        self.mode = Mode::Sound;
    }

    /// The re-read could not be done: the member stays uncertain.
    pub fn reconcile_failed(&mut self) {
        self.mode = Mode::Uncertain;
    }

    // ---- configuration and role ----

    /// A configuration from the supervisor (a fence, a membership change) or from a report.
    pub fn configure(&mut self, config: &ClusterConfig) -> Step<ConfigAnswer> {
        if config.term < self.term {
            return Step::Answer(ConfigAnswer::Stale(self.term));
        }
        let older = config.term == self.config.term && config.version < self.config.version;
        if older || *config == self.config {
            return Step::Answer(ConfigAnswer::Current);
        }
        Step::Persist(config.clone())
    }

    /// `config` is durable now: adopt it unless a newer one was adopted meanwhile.
    pub fn adopted(&mut self, config: &ClusterConfig) -> LeaderChange {
        if config.term < self.config.term || (config.term == self.config.term && config.version < self.config.version) {
            return LeaderChange::None;
        }
        // A configuration naming a second leader for a term does not change this member's vote
        // (the runtime reports it, see `contradicts_vote`).
        self.learn_leader(config.term, config.leader.as_deref());
        self.term = self.term.max(config.term);
        self.config = config.clone();
        match self.leading {
            Some(led) if led < config.term || config.leader.as_deref() != Some(self.address.as_str()) => {
                self.leading = None;
                LeaderChange::Deposed(led)
            }
            Some(_) => LeaderChange::StillLeading,
            None => LeaderChange::None,
        }
    }

    /// Whether `config` names a leader for its term other than the one this member votes for.
    pub fn contradicts_vote(&self, config: &ClusterConfig) -> bool {
        config.term == self.term
            && matches!((&self.term_leader, &config.leader), (Some(known), Some(named)) if known != named)
    }

    /// Whether this node can start leading `config`: Ok(true) if it leads that term already.
    pub fn may_promote(&self, config: &ClusterConfig) -> Result<bool, PromoteRefusal> {
        if config.leader.as_deref() != Some(self.address.as_str()) {
            return Err(PromoteRefusal::NotNamed(config.leader.clone()));
        }
        if config.term < self.term {
            return Err(PromoteRefusal::Stale(self.term));
        }
        Ok(self.leading() == Some(config.term))
    }

    /// In-doubt batches are resolved and this node's configuration names it leader of `term`.
    pub fn promoted(&mut self, term: Term) -> Result<(), PromoteRefusal> {
        if term != self.term || self.config.leader.as_deref() != Some(self.address.as_str()) {
            return Err(PromoteRefusal::Stale(self.term));
        }
        self.leading = Some(term);
        Ok(())
    }

    /// This node stops leading (it saw a newer term, or a member ahead of its log).
    pub fn step_down(&mut self, below: Term) -> Option<Term> {
        let led = self.leading.filter(|led| *led < below)?;
        self.leading = None;
        Some(led)
    }

    /// The `/down_leader/` drill: true if this node led and is down now.
    pub fn drill_down(&mut self) -> Result<Term, DrillRefusal> {
        match (self.down, self.leading) {
            (true, _) => Err(DrillRefusal::AlreadyDown),
            (false, None) => Err(DrillRefusal::NotLeader(self.config.leader.clone())),
            (false, Some(term)) => {
                self.down = true;
                self.leading = None;
                Ok(term)
            }
        }
    }

    /// The `/up_node/` drill: the configuration to adopt (without this node as leader or
    /// member) if it was down.
    pub fn drill_up(&mut self) -> Option<ClusterConfig> {
        if !std::mem::replace(&mut self.down, false) {
            return None;
        }
        let mut config = self.config.clone();
        if config.leader.as_deref() == Some(self.address.as_str()) {
            config.leader = None;
        }
        config.members.retain(|m| *m != self.address);
        Some(config)
    }

    /// The cluster id this database took (stored by the runtime).
    pub fn took_cluster_id(&mut self, id: Uuid) {
        self.cluster_id = Some(id);
    }

    // ---- recovery ----

    /// Starts a recovery from the leader's log in `term`. The answer lists the slots to resolve
    /// first, with the leader's word ([`Member::resolve`]).
    pub fn begin_recovery(&mut self, term: Term) -> Step<Result<Vec<Batch>, RecoveryRefusal>> {
        if self.leading().is_some() {
            return Step::Answer(Err(RecoveryRefusal::Leading));
        }
        if let Some(step) = self.gate() {
            return step;
        }
        if let Some(step) = self.term_gate(term, |t| Err(RecoveryRefusal::Stale(t))) {
            return step;
        }
        if self.slots.iter().any(Slot::in_flight) {
            return Step::Wait("a batch is being prepared or decided".into());
        }
        self.mode = Mode::Recovering;
        Step::Answer(Ok(self.slots.iter().map(|s| s.batch().clone()).collect()))
    }

    /// During a recovery: decide a slot as the leader's log says, by the same rules as a
    /// decision (the runtime resolves the slots first to last).
    pub fn resolve(&mut self, batch: &Batch, decision: Decision) -> Option<Op> {
        match self.decide_slot(batch.last_lsn, batch.last_txn, decision) {
            Step::Run(op) => Some(op),
            _ => None,
        }
    }

    /// During a recovery: a page of the leader's log is applied and committed.
    pub fn recovered(&mut self, end: LogEnd) {
        self.applied = end;
    }

    /// The recovery is over; `uncertain` if a PostgreSQL call failed half-way.
    pub fn end_recovery(&mut self, uncertain: bool) {
        if self.mode == Mode::Recovering {
            self.mode = if uncertain { Mode::Uncertain } else { Mode::Sound };
        }
    }

    // ---- rebuild ----

    /// Before the runtime empties this node's database for a rebuild: only a node that neither
    /// leads nor is a member of the configuration it holds (the supervisor's, adopted first)
    /// may forget its log, since a member's copies count towards acknowledged commits. Owns the
    /// log as a recovery does (`Recovering`); returns the batches held prepared, to roll back.
    /// [`Member::wiped`] or [`Member::end_recovery`] ends it.
    pub fn begin_reset(&mut self) -> Step<Result<Vec<Batch>, ResetRefusal>> {
        if self.leading().is_some() {
            return Step::Answer(Err(ResetRefusal::Leading));
        }
        if self.config.members.contains(&self.address) {
            return Step::Answer(Err(ResetRefusal::Member));
        }
        if let Some(step) = self.gate() {
            return step;
        }
        if self.slots.iter().any(Slot::in_flight) {
            return Step::Wait("a batch is being prepared or decided".into());
        }
        self.mode = Mode::Recovering;
        Step::Answer(Ok(self.slots.iter().map(|s| s.batch().clone()).collect()))
    }

    /// The database is empty now: no log, no prepared batch, no cluster. The term and the
    /// configuration stay (a vote must never be given twice in a term).
    pub fn wiped(&mut self) {
        self.applied = LogEnd::default();
        self.slots.clear();
        self.cluster_id = None;
        if self.mode == Mode::Recovering {
            self.mode = Mode::Sound;
        }
    }

    /// Whether a node that caught up to `joiner_applied` may join the members of this leader
    /// now (the runtime holds new rounds while it asks). Only if the two logs end at the same
    /// entry and this leader holds no batch prepared here and not applied yet: such a batch
    /// was prepared without the joiner, and if it commits after the join, a member misses it.
    pub fn admit_joiner(&self, joiner_applied: Lsn) -> Result<(), JoinRefusal> {
        if let Some(last) = self.slots.back() {
            return Err(JoinRefusal::Undecided { last_lsn: last.batch().last_lsn });
        }
        if joiner_applied != self.applied.lsn {
            return Err(JoinRefusal::NotCaughtUp { leader: self.applied.lsn, joiner: joiner_applied });
        }
        Ok(())
    }

    /// Entries prepared here but not applied yet: how far this member is behind what its
    /// leader has sent it (`GET /replica?max_lag=`).
    pub fn lag(&self) -> Lsn {
        self.tail() - self.applied.lsn
    }
}

/// Why a caught-up node may not join the members yet (it catches up again and asks again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinRefusal {
    /// This leader holds the batch ending at `last_lsn` prepared and not applied.
    Undecided { last_lsn: Lsn },
    /// The leader's log ends at `leader`, the joiner's at `joiner`.
    NotCaughtUp { leader: Lsn, joiner: Lsn },
}

/// Why a rebuild's reset is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetRefusal {
    Leading,
    Member,
}

/// Why a promotion is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromoteRefusal {
    NotNamed(Option<String>),
    Stale(Term),
}

/// Why the `/down_leader/` drill did nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrillRefusal {
    AlreadyDown,
    NotLeader(Option<String>),
}

/// Why a recovery is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryRefusal {
    Leading,
    Stale(Term),
}
