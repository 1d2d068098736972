//! The leader's commit path: validation, group commit, and the modified two-phase commit
//! (DESIGN 4).
//!
//! Handlers validate a transaction under a short synchronous lock (no I/O) and queue it; one
//! pipeline task takes everything queued (up to [`MAX_BATCH`]) as one *round*: one PREPARE per
//! member carrying the whole batch, then one decision. While a round is in flight new
//! transactions queue up for the next one, so PostgreSQL flushes are shared by the batch and an
//! idle system adds no wait.
//!
//! Invariants kept here:
//! - One round at a time, and a round ends only when its decision is durable on every member:
//!   so every member applies batches strictly in LSN order, and LSNs are dense (an aborted
//!   round's LSNs are reused by the next one).
//! - The leader commits its own prepared batch only after at least one replica acknowledged
//!   COMMIT (or it is the only member), and answers clients only after every member did.
//! - A transaction id has one outcome: a repeated commit waits for the first one's outcome or
//!   returns it from the outcome cache or the log. A conflict's ABORT is final too: it is
//!   written to the log as an entry of its own (no writes) by the next round, and the client
//!   hears 409 only once that round is durable, so every later leader finds it.
//! - The durability floor: a round commits only with at least `min_copies` members (this one
//!   included) having voted YES, and the largest floor any of its transactions asked for;
//!   otherwise nothing is applied and the clients hear 503 `not_enough_replicas`. An entry
//!   found in the log is answered COMMIT only up to `durable_lsn`, the last LSN this leader
//!   saw reach the floor, so an in-doubt batch a new leader committed alone is not
//!   acknowledged before a round has copied it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use protocol::{
    AbortReason, AbortRecord, Account, Balance, DecideRequest, Decision, FailureKind, LogEntry, Lsn, PrepareRequest,
    Term, Timestamp, ValidCommit, Vote,
};
use tokio::sync::{oneshot, Mutex as AsyncMutex, Notify};
use tokio::time::Instant;
use uuid::Uuid;

use crate::error::ApiError;
use crate::node::Node;
use crate::peers::PeerError;
use crate::validation::Validator;

/// Most transactions in one round. Bounds the size of one PREPARE and of one PostgreSQL
/// transaction; at the throughput of one machine a round rarely fills it.
pub const MAX_BATCH: usize = 256;
/// Most transactions waiting for a round. Beyond it a commit is refused with 503 and
/// `Retry-After` rather than queued: under overload, latency must stay bounded and memory flat.
pub const MAX_QUEUED: usize = 10_000;
/// Outcomes remembered for idempotent retries of a `txn_id` (committed ones are also in the log).
pub const OUTCOME_CACHE: usize = 100_000;
/// Longest pause between retries of a decision to a member that does not answer.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// How long an ABORT is retried to a member that does not acknowledge it before the round
/// ends anyway. Its clients then hear "outcome unknown, retry with the same txn_id" rather than
/// "nothing applied": the member may hold the batch prepared, and a later leader could commit
/// it by the in-doubt rules. A COMMIT, by contrast, is retried until the member acknowledges it
/// or is removed.
const ABORT_ACK_WAIT: Duration = Duration::from_secs(1);

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
    /// The round was in flight when this leader was deposed; the new leader decides it by the
    /// in-doubt rules. A retry with the same `txn_id` at the new leader returns the outcome.
    Unknown {
        message: String,
    },
}

impl TxnOutcome {
    /// Outcomes that are answers for good, and so may be repeated to a retry: a commit, and a
    /// conflict's abort. "Nothing applied, retry" (503) is not one.
    fn is_final(&self) -> bool {
        match self {
            TxnOutcome::Committed { .. } => true,
            TxnOutcome::Aborted { reason, .. } => reason.is_final(),
            TxnOutcome::NotApplied | TxnOutcome::Unknown { .. } => false,
        }
    }

    /// The outcome a log entry records.
    fn of_entry(entry: &LogEntry) -> TxnOutcome {
        match &entry.aborted {
            None => TxnOutcome::Committed { lsn: entry.lsn, commit_ts: entry.commit_ts },
            Some(record) => {
                TxnOutcome::Aborted { reason: record.reason, key: record.key, message: record.message.clone() }
            }
        }
    }
}

/// A validated transaction waiting for its round, or the record of a conflict's abort that
/// the round makes durable before the client hears it.
struct Admitted {
    txn_id: Uuid,
    read_set: BTreeSet<Account>,
    write_set: BTreeMap<Account, Balance>,
    commit_ts: Timestamp,
    /// The copies this transaction needs before it is acknowledged.
    min_copies: usize,
    aborted: Option<AbortRecord>,
}

#[derive(Default)]
struct LeaderState {
    validator: Validator,
    queue: VecDeque<Admitted>,
    /// Callers waiting for the outcome of a transaction in flight, by id.
    waiting: HashMap<Uuid, Vec<oneshot::Sender<TxnOutcome>>>,
    outcomes: OutcomeCache,
}

/// Bounded memory of recent outcomes; the oldest are forgotten first.
#[derive(Default)]
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

pub struct Leader {
    node: Weak<Node>,
    term: Term,
    /// The cluster's durability floor (`--min-copies`).
    min_copies: usize,
    /// The highest LSN this leader knows to be durable on at least `min_copies` nodes: what
    /// a retry may be told from the log.
    durable_lsn: AtomicI64,
    /// Members whose last call failed. Before a round, each is probed; when too few members
    /// answer for the floor, the round is refused at once (503 `not_enough_replicas`) with
    /// nothing prepared anywhere, instead of waiting a peer timeout per round.
    suspects: Mutex<BTreeSet<String>>,
    state: Mutex<LeaderState>,
    /// Set once a higher term is seen (or the drill downs the node): no new round starts.
    deposed: AtomicBool,
    /// While set and in the future, no new round starts (recovery's final catch-up).
    paused_until: Mutex<Option<Instant>>,
    /// Held by the pipeline for the whole of a round, so `pause` can wait for it to end.
    round_lock: AsyncMutex<()>,
    /// Wakes the pipeline when something is queued (or on resume and depose).
    queued: Notify,
    /// Wakes readers waiting for locks when a round ends.
    round_done: Notify,
}

enum Admission {
    Done(TxnOutcome),
    Wait(oneshot::Receiver<TxnOutcome>),
}

/// A panic while holding one of these locks is a bug; the state they protect stays usable.
fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Leader {
    pub fn new(node: Weak<Node>, term: Term, min_copies: usize) -> Arc<Leader> {
        Arc::new(Leader {
            node,
            term,
            min_copies: min_copies.max(1),
            durable_lsn: AtomicI64::new(0),
            suspects: Mutex::new(BTreeSet::new()),
            state: Mutex::new(LeaderState::default()),
            deposed: AtomicBool::new(false),
            paused_until: Mutex::new(None),
            round_lock: AsyncMutex::new(()),
            queued: Notify::new(),
            round_done: Notify::new(),
        })
    }

    /// Loads the committed write timestamps and starts the pipeline task. `durable_lsn` is
    /// where this node's log ended before it resolved in-doubt batches: everything up to it
    /// was acknowledged by an earlier leader, hence held by `min_copies` nodes.
    pub fn start(
        self: &Arc<Self>,
        last_write: HashMap<Account, Timestamp>,
        highest_committed: Timestamp,
        applied_lsn: Lsn,
        durable_lsn: Lsn,
    ) {
        self.lock().validator = Validator::new(last_write, highest_committed);
        self.durable_lsn.store(durable_lsn, Ordering::SeqCst);
        tracing::info!(term = self.term, applied_lsn, highest_committed, "leader pipeline started");
        let leader = self.clone();
        tokio::spawn(async move { leader.pipeline().await });
    }

    pub fn term(&self) -> Term {
        self.term
    }

    pub fn is_deposed(&self) -> bool {
        self.deposed.load(Ordering::SeqCst)
    }

    /// Stops taking rounds. Transactions queued and not yet prepared are answered `NotApplied`.
    pub fn depose(&self) {
        if !self.deposed.swap(true, Ordering::SeqCst) {
            tracing::warn!(term = self.term, "leader deposed");
        }
        self.queued.notify_one();
        self.round_done.notify_waiters();
    }

    /// Finishes the round in flight and starts no new one for at most `max` (or until
    /// [`Leader::resume`]). Returns once no round is in flight.
    pub async fn pause(&self, max: Duration) {
        *locked(&self.paused_until) = Some(Instant::now() + max);
        let _idle = self.round_lock.lock().await;
        tracing::info!(max_ms = max.as_millis() as u64, "commits paused");
    }

    /// Waits for the round in flight to end and keeps any other from starting while the
    /// guard lives.
    pub async fn hold_rounds(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.round_lock.lock().await
    }

    pub fn resume(&self) {
        if locked(&self.paused_until).take().is_some() {
            tracing::info!("commits resumed");
        }
        self.queued.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LeaderState> {
        locked(&self.state)
    }

    /// Validates, replicates and commits one transaction; returns its outcome.
    pub async fn commit(&self, txn: ValidCommit, node: &Node) -> Result<(Uuid, TxnOutcome), ApiError> {
        let txn_id = txn.txn_id.unwrap_or_else(Uuid::new_v4);
        // More copies than the cluster has nodes can never be had: that is the caller's
        // mistake (400), not a passing shortage (503).
        let nodes = node.cfg.initial.members.len();
        if let Some(wanted) = txn.min_copies.filter(|wanted| *wanted > nodes) {
            return Err(ApiError::BadRequest(format!(
                "min_copies {wanted} is more than the {nodes} nodes of this cluster; ask for at most {nodes}"
            )));
        }
        if txn.txn_id.is_some() {
            let seen = known(&mut self.lock(), txn_id);
            match seen {
                Some(Admission::Done(outcome)) => return Ok((txn_id, outcome)),
                Some(Admission::Wait(rx)) => return Ok((txn_id, wait(rx).await?)),
                None => {}
            }
            // Not in memory: it may have been decided before a restart or under another leader.
            if let Some(entry) = node.store.find_txn(txn_id).await.map_err(ApiError::unavailable)? {
                let durable = self.durable_lsn.load(Ordering::SeqCst);
                if entry.lsn > durable {
                    return Ok((
                        txn_id,
                        TxnOutcome::Unknown {
                            message: format!(
                                "its log entry (LSN {}) is not yet known to be on {} nodes; retry with the same txn_id",
                                entry.lsn, self.min_copies
                            ),
                        },
                    ));
                }
                return Ok((txn_id, TxnOutcome::of_entry(&entry)));
            }
        }
        if self.is_deposed() {
            return Ok((txn_id, TxnOutcome::NotApplied));
        }
        let admission = {
            let mut state = self.lock();
            if state.queue.len() >= MAX_QUEUED {
                return Err(ApiError::Overloaded(format!(
                    "the leader already has {MAX_QUEUED} transactions waiting to be replicated; retry shortly"
                )));
            }
            if let Some(admission) = known(&mut state, txn_id) {
                admission
            } else {
                if let Err(bound) = state.validator.check_read_ts(txn.read_ts) {
                    return Err(ApiError::BadTimestamp(format!(
                        "time_stamp {} is above the highest timestamp this cluster has handed out ({bound}); \
                         commit with the timestamp your read returned",
                        txn.read_ts.unwrap_or_default()
                    )));
                }
                let min_copies = txn.min_copies.unwrap_or(0).max(self.min_copies);
                let queued = match state.validator.admit(&txn.read_set, txn.read_ts, &txn.write_set, now_ns()) {
                    Err(conflict) => {
                        tracing::debug!(%txn_id, reason = conflict.reason.as_str(), key = conflict.key, "txn aborted by a conflict");
                        // The abort is an outcome for good: it goes to the log with the next
                        // round, and the client hears it once that round is durable.
                        Admitted {
                            txn_id,
                            read_set: BTreeSet::new(),
                            write_set: BTreeMap::new(),
                            commit_ts: state.validator.stamp(now_ns()),
                            min_copies: self.min_copies,
                            aborted: Some(AbortRecord {
                                reason: conflict.reason,
                                key: Some(conflict.key),
                                message: format!("account {}: {}", conflict.key, conflict.reason.explain()),
                            }),
                        }
                    }
                    Ok(commit_ts) => {
                        tracing::debug!(%txn_id, commit_ts, "txn admitted");
                        Admitted {
                            txn_id,
                            read_set: txn.read_set,
                            write_set: txn.write_set,
                            commit_ts,
                            min_copies,
                            aborted: None,
                        }
                    }
                };
                let (tx, rx) = oneshot::channel();
                state.waiting.insert(txn_id, vec![tx]);
                state.queue.push_back(queued);
                Admission::Wait(rx)
            }
        };
        let outcome = match admission {
            Admission::Done(outcome) => outcome,
            Admission::Wait(rx) => {
                self.queued.notify_one();
                wait(rx).await?
            }
        };
        Ok((txn_id, outcome))
    }

    /// Waits until no transaction in flight writes any of `accounts`, or the deadline passes.
    pub async fn wait_unlocked(&self, accounts: &BTreeSet<Account>, deadline: Instant) -> Result<(), ApiError> {
        loop {
            let notified = self.round_done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_deposed() {
                return Ok(());
            }
            let Some(key) = self.lock().validator.first_locked(accounts) else {
                return Ok(());
            };
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(ApiError::Unavailable(format!(
                    "account {key} is being written by a transaction that has not finished; try again"
                )));
            }
        }
    }

    async fn pipeline(self: Arc<Self>) {
        let mut round = now_ns() as u64;
        loop {
            if self.is_deposed() {
                self.answer_queued_not_applied();
                return;
            }
            // The pause flag is checked under the round lock, so once `pause` holds that lock
            // no round can start until the pause ends.
            let idle = self.round_lock.lock().await;
            let paused = *locked(&self.paused_until);
            if let Some(until) = paused.filter(|until| *until > Instant::now()) {
                drop(idle);
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = self.queued.notified() => {}
                }
                continue;
            }
            let batch: Vec<Admitted> = {
                let mut state = self.lock();
                let n = state.queue.len().min(MAX_BATCH);
                state.queue.drain(..n).collect()
            };
            if batch.is_empty() {
                drop(idle);
                self.queued.notified().await;
                continue;
            }
            let Some(node) = self.node.upgrade() else {
                return;
            };
            round += 1;
            let outcomes = self.run_round(&node, round, &batch).await;
            drop(idle);
            let mut state = self.lock();
            for (txn, outcome) in batch.iter().zip(outcomes) {
                tracing::debug!(txn_id = %txn.txn_id, round, ?outcome, "txn answered");
                let committed_at = match &outcome {
                    TxnOutcome::Committed { commit_ts, .. } => Some(*commit_ts),
                    _ => None,
                };
                state.validator.finish(&txn.write_set, committed_at);
                if outcome.is_final() {
                    state.outcomes.insert(txn.txn_id, outcome.clone());
                }
                for waiter in state.waiting.remove(&txn.txn_id).unwrap_or_default() {
                    let _ = waiter.send(outcome.clone());
                }
            }
            drop(state);
            self.round_done.notify_waiters();
        }
    }

    fn answer_queued_not_applied(&self) {
        let mut state = self.lock();
        let queued: Vec<Admitted> = state.queue.drain(..).collect();
        for txn in queued {
            for waiter in state.waiting.remove(&txn.txn_id).unwrap_or_default() {
                let _ = waiter.send(TxnOutcome::NotApplied);
            }
        }
    }

    /// One round of two-phase commit for `batch`; returns each transaction's outcome.
    async fn run_round(&self, node: &Node, round: u64, batch: &[Admitted]) -> Vec<TxnOutcome> {
        let prev_lsn = node.applied().0;
        let mut replicas = node.replicas();
        // A transaction that asks for more copies than there are members cannot be
        // acknowledged: it is answered before anything is prepared, and the rest go on.
        let members = 1 + replicas.len();
        let outcomes: Vec<Option<TxnOutcome>> =
            batch.iter().map(|t| (t.min_copies > members).then(|| not_enough(t.min_copies, members))).collect();
        let included: Vec<&Admitted> =
            batch.iter().zip(&outcomes).filter(|(_, o)| o.is_none()).map(|(t, _)| t).collect();
        if included.is_empty() {
            return outcomes.into_iter().flatten().collect();
        }
        let required = included.iter().map(|t| t.min_copies).max().unwrap_or(self.min_copies).max(self.min_copies);
        let answering = 1 + replicas.len() - self.still_gone(node, &replicas).await;
        if answering < required {
            let message = format!(
                "{answering} of {members} members answer and this commit needs {required} copies; \
                 nothing was applied, retry with the same txn_id once more nodes are back"
            );
            metrics::counter!("rmw_aborts_total", "reason" => AbortReason::NotEnoughReplicas.as_str())
                .increment(included.len() as u64);
            return answer_the_rest(outcomes, std::iter::repeat(not_enough_replicas(message)));
        }
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
        let last_lsn = prev_lsn + entries.len() as Lsn;
        let last_txn = entries.last().map(|e| e.txn_id).unwrap_or_default();
        let prepare = PrepareRequest {
            term: self.term,
            round,
            prev_lsn,
            entries,
            leader: Some(node.cfg.address.clone()),
            cluster_id: node.cluster_id(),
        };

        metrics::histogram!("rmw_batch_size").record(included.len() as f64);
        let phase_one = std::time::Instant::now();
        // Phase one: every member in parallel, this one included.
        let prepare_ref = &prepare;
        let remote = futures::future::join_all(
            replicas.iter().map(|peer| async move { (peer.clone(), node.peers.prepare(peer, prepare_ref).await) }),
        );
        let local = async {
            match node.prepare(&prepare).await {
                Ok(answer) if answer.vote == Vote::Yes => Ok(()),
                Ok(answer) => Err(format!("the leader voted NO: {}", answer.reason.unwrap_or_default())),
                Err(e) => Err(format!("the leader could not prepare: {e}")),
            }
        };
        let (local, remote) = tokio::join!(local, remote);
        let mut refusals: Vec<String> = local.err().into_iter().collect();
        let mut yes = usize::from(refusals.is_empty());
        for (peer, answer) in remote {
            match answer {
                Ok(answer) if answer.vote == Vote::Yes => {
                    locked(&self.suspects).remove(&peer);
                    yes += 1
                }
                Ok(answer) if answer.applied_lsn > prev_lsn => {
                    // The member holds entries this leader does not: this leader's log is the
                    // shorter one, so it must not lead (and the member must not be removed).
                    tracing::error!(%peer, member_lsn = answer.applied_lsn, prev_lsn,
                        "a member is ahead of this leader's log: stepping down");
                    self.depose();
                    refusals.push(format!(
                        "{peer} has applied LSN {}, beyond this leader's {prev_lsn}: this leader stepped down",
                        answer.applied_lsn
                    ));
                }
                Ok(answer) => {
                    let reason = format!("{peer} voted NO: {}", answer.reason.unwrap_or_default());
                    // A member that is behind cannot vote YES until it recovers: the NO is the
                    // evidence the supervisor needs to remove it.
                    self.report(node, &peer, &reason, FailureKind::VotedNo).await;
                    refusals.push(reason);
                }
                Err(PeerError::StaleTerm { term, .. }) => {
                    self.depose();
                    refusals.push(format!("{peer} is in term {term}: this leader was deposed"));
                }
                Err(e) => {
                    // Not answering is not a NO: the supervisor may remove the member (it checks
                    // that it cannot reach it either, and never goes below the floor), and the
                    // round then goes on without it (it resolves its batch when it recovers).
                    let reason = e.to_string();
                    locked(&self.suspects).insert(peer.clone());
                    if self.report(node, &peer, &reason, FailureKind::Unreachable).await {
                        replicas.retain(|r| *r != peer);
                    } else {
                        refusals.push(reason);
                    }
                }
            }
        }
        let copies = 1 + replicas.len();
        let decision = if refusals.is_empty() && !self.is_deposed() && copies >= required {
            Decision::Commit
        } else {
            Decision::Abort
        };
        if decision == Decision::Abort {
            tracing::warn!(round, last_lsn, ?refusals, copies, required, "aborting round");
        }

        metrics::histogram!("rmw_phase_seconds", "phase" => "prepare").record(phase_one.elapsed().as_secs_f64());
        let phase_two = std::time::Instant::now();
        // Phase two: replicas first; the leader commits its own once one replica has.
        let decide = DecideRequest { term: self.term, last_lsn, last_txn, decision };
        let wait_for_ack = decision == Decision::Commit && !replicas.is_empty();
        let give_up_at = (decision == Decision::Abort).then(|| Instant::now() + ABORT_ACK_WAIT);
        let (acked, leader_done) = decide_in_order(
            replicas.iter().map(|peer| self.decide_until_acked(node, peer, &decide, give_up_at)).collect(),
            wait_for_ack,
            self.decide_locally(node, &decide),
        )
        .await;

        metrics::histogram!("rmw_phase_seconds", "phase" => "decide").record(phase_two.elapsed().as_secs_f64());
        // A replica removed during phase two counts as acknowledged (it learns the outcome when
        // it recovers) but holds no copy: the floor counts the members that are left.
        let still_members = node.replicas();
        let copies_now = 1 + replicas.iter().filter(|r| still_members.contains(r)).count();
        let durable_everywhere = leader_done && acked == replicas.len();
        if !durable_everywhere || (decision == Decision::Commit && copies_now < required) {
            let message = format!(
                "leadership or membership changed while this transaction was being replicated (round {round}); \
                 retry with the same txn_id to learn the outcome"
            );
            return answer_the_rest(outcomes, std::iter::repeat(TxnOutcome::Unknown { message }));
        }
        let decided = match decision {
            Decision::Commit => {
                self.durable_lsn.fetch_max(last_lsn, Ordering::SeqCst);
                let written = prepare.entries.iter().filter(|e| e.aborted.is_none()).count() as u64;
                metrics::counter!("rmw_commits_total").increment(written);
                for e in prepare.entries.iter().filter_map(|e| e.aborted.as_ref()) {
                    metrics::counter!("rmw_aborts_total", "reason" => e.reason.as_str()).increment(1);
                }
                prepare.entries.iter().map(TxnOutcome::of_entry).collect::<Vec<_>>()
            }
            Decision::Abort => {
                let reason =
                    if yes < required { AbortReason::NotEnoughReplicas } else { AbortReason::ReplicationFailed };
                metrics::counter!("rmw_aborts_total", "reason" => reason.as_str()).increment(included.len() as u64);
                let message = format!("{}; nothing was applied, retry with the same txn_id", refusals.join("; "));
                included
                    .iter()
                    .map(|_| TxnOutcome::Aborted { reason, key: None, message: message.clone() })
                    .collect::<Vec<_>>()
            }
        };
        answer_the_rest(outcomes, decided)
    }

    /// Asks the supervisor to remove `peer`; true if it did.
    async fn report(&self, node: &Node, peer: &str, reason: &str, kind: FailureKind) -> bool {
        match node.report_failure(self.term, peer, reason, kind).await {
            Some(config) => !config.members.iter().any(|m| m == peer),
            None => false,
        }
    }

    /// Sends a decision until the member acknowledges it (true), or is removed from the
    /// members, or this leader is deposed (false). The round cannot end before: a client is
    /// answered only once the decision is durable on every member.
    async fn decide_until_acked(
        &self,
        node: &Node,
        peer: &str,
        req: &DecideRequest,
        give_up_at: Option<Instant>,
    ) -> bool {
        let mut pause = Duration::from_millis(20);
        let mut reported = false;
        loop {
            match node.peers.decide(peer, req).await {
                Ok(_) => {
                    locked(&self.suspects).remove(peer);
                    return true;
                }
                Err(PeerError::StaleTerm { .. }) => {
                    self.depose();
                    return false;
                }
                Err(e) => {
                    tracing::warn!(%peer, error = %e, last_lsn = req.last_lsn, "decision not acknowledged; retrying");
                    locked(&self.suspects).insert(peer.to_string());
                    if give_up_at.is_some_and(|at| Instant::now() >= at) {
                        return false;
                    }
                    if !reported {
                        reported = true;
                        if self.report(node, peer, &e.to_string(), FailureKind::DecisionFailed).await {
                            // Removed: the member learns the outcome when it recovers.
                            return true;
                        }
                    }
                }
            }
            if !node.replicas().iter().any(|r| r == peer) {
                return true;
            }
            if self.is_deposed() {
                return false;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_RETRY_PAUSE);
        }
    }

    /// How many of `replicas` failed their last call and do not answer a probe now.
    async fn still_gone(&self, node: &Node, replicas: &[String]) -> usize {
        let suspects: Vec<String> = {
            let suspects = locked(&self.suspects);
            replicas.iter().filter(|r| suspects.contains(*r)).cloned().collect()
        };
        let probes = futures::future::join_all(suspects.iter().map(|s| node.peers.probe(s))).await;
        let mut gone = 0;
        for (suspect, answered) in suspects.iter().zip(probes) {
            if answered {
                locked(&self.suspects).remove(suspect);
            } else {
                gone += 1;
            }
        }
        gone
    }

    /// Applies the decision to this node's own prepared batch; false if deposed first.
    async fn decide_locally(&self, node: &Node, req: &DecideRequest) -> bool {
        let mut pause = Duration::from_millis(20);
        loop {
            match node.decide(req).await {
                Ok(_) => return true,
                Err(ApiError::StaleTerm(_)) => {
                    self.depose();
                    return false;
                }
                Err(e) => {
                    tracing::error!(error = %e, last_lsn = req.last_lsn, "could not apply the decision locally; retrying")
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_RETRY_PAUSE);
        }
    }
}

/// Phase two's order (DESIGN 4): the decision goes to every replica at once; the leader applies
/// it to its own batch once one replica acknowledged a COMMIT (at once for an ABORT, or when it
/// is the only member). Returns the replicas that acknowledged (or were removed) and whether
/// the leader's own decision landed.
///
/// The replicas' futures are polled all along, also while the leader decides locally: one of
/// them may hold the participant lock (reporting a member adopts the supervisor's answer under
/// it) that the local decision needs. Awaiting the first acknowledgement and then the local
/// decision, with the other futures left unpolled, deadlocked the leader in the torture run.
async fn decide_in_order<R, L>(replicas: Vec<R>, wait_for_ack: bool, local: L) -> (usize, bool)
where
    R: Future<Output = bool>,
    L: Future<Output = bool>,
{
    let (first_ack, acked_once) = oneshot::channel::<()>();
    let replicas_done = async move {
        let mut pending: FuturesUnordered<R> = replicas.into_iter().collect();
        let mut first_ack = Some(first_ack);
        let mut acked = 0;
        while let Some(ok) = pending.next().await {
            if ok {
                acked += 1;
                if let Some(tx) = first_ack.take() {
                    let _ = tx.send(());
                }
            }
        }
        acked
    };
    let leader = async move {
        // Without any acknowledgement the sender is dropped when every replica has finished.
        if wait_for_ack && acked_once.await.is_err() {
            return false;
        }
        local.await
    };
    tokio::join!(replicas_done, leader)
}

/// The outcome, or a place in the queue of waiters, of a transaction id already seen.
fn known(state: &mut LeaderState, txn_id: Uuid) -> Option<Admission> {
    if let Some(outcome) = state.outcomes.map.get(&txn_id) {
        return Some(Admission::Done(outcome.clone()));
    }
    let waiters = state.waiting.get_mut(&txn_id)?;
    let (tx, rx) = oneshot::channel();
    waiters.push(tx);
    Some(Admission::Wait(rx))
}

async fn wait(rx: oneshot::Receiver<TxnOutcome>) -> Result<TxnOutcome, ApiError> {
    rx.await.map_err(|_| ApiError::Unavailable("the leader stopped before the transaction finished".into()))
}

/// The answer for a transaction that asks for more copies than the cluster has members.
fn not_enough(wanted: usize, members: usize) -> TxnOutcome {
    not_enough_replicas(format!(
        "this commit needs {wanted} copies and the cluster has {members} members in sync; nothing was applied, \
         retry with the same txn_id once more nodes are back"
    ))
}

/// 503 `not_enough_replicas`: nothing was applied.
fn not_enough_replicas(message: String) -> TxnOutcome {
    TxnOutcome::Aborted { reason: AbortReason::NotEnoughReplicas, key: None, message }
}

/// A round's outcomes: those already given (refused before the round), and the rest from
/// `rest`, in batch order.
fn answer_the_rest(outcomes: Vec<Option<TxnOutcome>>, rest: impl IntoIterator<Item = TxnOutcome>) -> Vec<TxnOutcome> {
    let mut rest = rest.into_iter();
    outcomes.into_iter().filter_map(|given| given.or_else(|| rest.next())).collect()
}

fn now_ns() -> Timestamp {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as Timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::{BoxFuture, FutureExt};

    async fn within_5s<F: Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(5), f).await.expect("phase two stalled")
    }

    /// The torture run's deadlock, reduced: replica B's future takes the lock the leader's own
    /// decision needs and holds it across an await; replica A acknowledges meanwhile.
    #[tokio::test]
    async fn a_replica_holding_the_lock_does_not_stall_the_leaders_own_decision() {
        let lock = Arc::new(AsyncMutex::new(()));
        let b_lock = lock.clone();
        let a: BoxFuture<'static, bool> = async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            true
        }
        .boxed();
        let b: BoxFuture<'static, bool> = async move {
            let _held = b_lock.lock().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            true
        }
        .boxed();
        let local = async move {
            let _needed = lock.lock().await;
            true
        };
        assert_eq!(within_5s(decide_in_order(vec![a, b], true, local)).await, (2, true));
    }

    #[tokio::test]
    async fn the_leader_commits_only_after_an_acknowledgement() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let (o1, o2) = (order.clone(), order.clone());
        let replica = async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            o1.lock().unwrap().push("replica");
            true
        };
        let local = async move {
            o2.lock().unwrap().push("leader");
            true
        };
        assert_eq!(within_5s(decide_in_order(vec![replica], true, local)).await, (1, true));
        assert_eq!(*order.lock().unwrap(), ["replica", "leader"]);
    }

    #[tokio::test]
    async fn without_any_acknowledgement_the_leader_does_not_commit() {
        let replicas: Vec<BoxFuture<'static, bool>> = vec![async { false }.boxed(), async { false }.boxed()];
        assert_eq!(within_5s(decide_in_order(replicas, true, async { true })).await, (0, false));
    }

    #[tokio::test]
    async fn an_abort_or_a_lone_leader_decides_at_once() {
        let never: BoxFuture<'static, bool> = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            false
        }
        .boxed();
        assert_eq!(within_5s(decide_in_order(vec![never], false, async { true })).await, (0, true));
        let none: Vec<BoxFuture<'static, bool>> = Vec::new();
        assert_eq!(within_5s(decide_in_order(none, false, async { true })).await, (0, true));
    }
}
