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
//!   returns it from the outcome cache or the log.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use protocol::{
    AbortReason, Account, Balance, DecideRequest, Decision, LogEntry, Lsn, PrepareRequest, Term, Timestamp,
    ValidCommit, Vote,
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
    /// Outcomes this leader decided itself, and so may repeat to a retry.
    fn is_final(&self) -> bool {
        matches!(self, TxnOutcome::Committed { .. } | TxnOutcome::Aborted { .. })
    }
}

/// A validated transaction waiting for its round.
struct Admitted {
    txn_id: Uuid,
    read_set: BTreeSet<Account>,
    write_set: BTreeMap<Account, Balance>,
    commit_ts: Timestamp,
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
    pub fn new(node: Weak<Node>, term: Term) -> Arc<Leader> {
        Arc::new(Leader {
            node,
            term,
            state: Mutex::new(LeaderState::default()),
            deposed: AtomicBool::new(false),
            paused_until: Mutex::new(None),
            round_lock: AsyncMutex::new(()),
            queued: Notify::new(),
            round_done: Notify::new(),
        })
    }

    /// Loads the committed write timestamps and starts the pipeline task.
    pub fn start(
        self: &Arc<Self>,
        last_write: HashMap<Account, Timestamp>,
        highest_committed: Timestamp,
        applied_lsn: Lsn,
    ) {
        self.lock().validator = Validator::new(last_write, highest_committed);
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
        if txn.txn_id.is_some() {
            let seen = known(&mut self.lock(), txn_id);
            match seen {
                Some(Admission::Done(outcome)) => return Ok((txn_id, outcome)),
                Some(Admission::Wait(rx)) => return Ok((txn_id, wait(rx).await?)),
                None => {}
            }
            // Not in memory: it may have committed before a restart or under another leader.
            if let Some(entry) = node.store.find_txn(txn_id).await.map_err(ApiError::unavailable)? {
                return Ok((txn_id, TxnOutcome::Committed { lsn: entry.lsn, commit_ts: entry.commit_ts }));
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
            match known(&mut state, txn_id) {
                Some(admission) => admission,
                None => match state.validator.admit(&txn.read_set, txn.read_ts, &txn.write_set, now_ns()) {
                    Err(conflict) => {
                        metrics::counter!("rmw_aborts_total", "reason" => conflict.reason.as_str()).increment(1);
                        tracing::debug!(%txn_id, reason = conflict.reason.as_str(), key = conflict.key, "txn aborted");
                        let outcome = TxnOutcome::Aborted {
                            reason: conflict.reason,
                            key: Some(conflict.key),
                            message: format!("account {}: {}", conflict.key, conflict.reason.explain()),
                        };
                        state.outcomes.insert(txn_id, outcome.clone());
                        Admission::Done(outcome)
                    }
                    Ok(commit_ts) => {
                        tracing::debug!(%txn_id, commit_ts, "txn admitted");
                        let (tx, rx) = oneshot::channel();
                        state.waiting.insert(txn_id, vec![tx]);
                        state.queue.push_back(Admitted {
                            txn_id,
                            read_set: txn.read_set,
                            write_set: txn.write_set,
                            commit_ts,
                        });
                        Admission::Wait(rx)
                    }
                },
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
        let entries: Vec<LogEntry> = batch
            .iter()
            .enumerate()
            .map(|(i, t)| LogEntry {
                lsn: prev_lsn + 1 + i as Lsn,
                term: self.term,
                txn_id: t.txn_id,
                commit_ts: t.commit_ts,
                read_set: t.read_set.iter().copied().collect(),
                write_set: t.write_set.clone(),
            })
            .collect();
        let last_lsn = prev_lsn + entries.len() as Lsn;
        let last_txn = entries.last().map(|e| e.txn_id).unwrap_or_default();
        let prepare = PrepareRequest { term: self.term, round, prev_lsn, entries };
        let mut replicas = node.replicas();

        metrics::histogram!("rmw_batch_size").record(batch.len() as f64);
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
        for (peer, answer) in remote {
            match answer {
                Ok(answer) if answer.vote == Vote::Yes => {}
                Ok(answer) => {
                    let reason = format!("{peer} voted NO: {}", answer.reason.unwrap_or_default());
                    // A member that is behind cannot vote YES until it recovers.
                    self.report(node, &peer, &reason).await;
                    refusals.push(reason);
                }
                Err(PeerError::StaleTerm { term, .. }) => {
                    self.depose();
                    refusals.push(format!("{peer} is in term {term}: this leader was deposed"));
                }
                Err(e) => {
                    // Not answering is not a NO: the supervisor may remove the member, and the
                    // round then goes on without it (it resolves its batch when it recovers).
                    let reason = e.to_string();
                    if self.report(node, &peer, &reason).await {
                        replicas.retain(|r| *r != peer);
                    } else {
                        refusals.push(reason);
                    }
                }
            }
        }
        let decision = if refusals.is_empty() && !self.is_deposed() { Decision::Commit } else { Decision::Abort };
        if decision == Decision::Abort {
            tracing::warn!(round, last_lsn, ?refusals, "aborting round");
        }

        metrics::histogram!("rmw_phase_seconds", "phase" => "prepare").record(phase_one.elapsed().as_secs_f64());
        let phase_two = std::time::Instant::now();
        // Phase two: replicas first; the leader commits its own once one replica has.
        let decide = DecideRequest { term: self.term, last_lsn, last_txn, decision };
        let wait_for_ack = decision == Decision::Commit && !replicas.is_empty();
        let (acked, leader_done) = decide_in_order(
            replicas.iter().map(|peer| self.decide_until_acked(node, peer, &decide)).collect(),
            wait_for_ack,
            self.decide_locally(node, &decide),
        )
        .await;

        metrics::histogram!("rmw_phase_seconds", "phase" => "decide").record(phase_two.elapsed().as_secs_f64());
        let durable_everywhere = leader_done && acked == replicas.len();
        if !durable_everywhere {
            let message = format!(
                "leadership changed while this transaction was being replicated (round {round}); \
                 the new leader decides it: retry with the same txn_id to learn the outcome"
            );
            return batch.iter().map(|_| TxnOutcome::Unknown { message: message.clone() }).collect();
        }
        let counted = batch.len() as u64;
        match decision {
            Decision::Commit => metrics::counter!("rmw_commits_total").increment(counted),
            Decision::Abort => {
                metrics::counter!("rmw_aborts_total", "reason" => AbortReason::ReplicationFailed.as_str())
                    .increment(counted)
            }
        }
        match decision {
            Decision::Commit => {
                prepare.entries.iter().map(|e| TxnOutcome::Committed { lsn: e.lsn, commit_ts: e.commit_ts }).collect()
            }
            Decision::Abort => {
                let message = format!("{}; nothing was applied", refusals.join("; "));
                batch
                    .iter()
                    .map(|_| TxnOutcome::Aborted {
                        reason: AbortReason::ReplicationFailed,
                        key: None,
                        message: message.clone(),
                    })
                    .collect()
            }
        }
    }

    /// Asks the supervisor to remove `peer`; true if it did.
    async fn report(&self, node: &Node, peer: &str, reason: &str) -> bool {
        match node.report_failure(self.term, peer, reason).await {
            Some(config) => !config.members.iter().any(|m| m == peer),
            None => false,
        }
    }

    /// Sends a decision until the member acknowledges it (true), or is removed from the
    /// members, or this leader is deposed (false). The round cannot end before: a client is
    /// answered only once the decision is durable on every member.
    async fn decide_until_acked(&self, node: &Node, peer: &str, req: &DecideRequest) -> bool {
        let mut pause = Duration::from_millis(20);
        let mut reported = false;
        loop {
            match node.peers.decide(peer, req).await {
                Ok(_) => return true,
                Err(PeerError::StaleTerm { .. }) => {
                    self.depose();
                    return false;
                }
                Err(e) => {
                    tracing::warn!(%peer, error = %e, last_lsn = req.last_lsn, "decision not acknowledged; retrying");
                    if !reported {
                        reported = true;
                        if self.report(node, peer, &e.to_string()).await {
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
