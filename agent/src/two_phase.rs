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
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use protocol::{
    AbortReason, Account, Balance, DecideRequest, Decision, LogEntry, Lsn, PrepareRequest, Term,
    Timestamp, ValidCommit, Vote,
};
use tokio::sync::{oneshot, Notify};
use uuid::Uuid;

use crate::error::ApiError;
use crate::node::Node;
use crate::validation::Validator;

/// Most transactions in one round. Bounds the size of one PREPARE and of one PostgreSQL
/// transaction; at the throughput of one machine a round rarely fills it.
pub const MAX_BATCH: usize = 256;
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
    /// Wakes the pipeline when something is queued.
    queued: Notify,
    /// Wakes readers waiting for locks when a round ends.
    round_done: Notify,
}

enum Admission {
    Done(TxnOutcome),
    Wait(oneshot::Receiver<TxnOutcome>),
}

impl Leader {
    pub fn new(node: Weak<Node>, term: Term) -> Arc<Leader> {
        Arc::new(Leader {
            node,
            term,
            state: Mutex::new(LeaderState::default()),
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
        tracing::info!(
            term = self.term,
            applied_lsn,
            highest_committed,
            "leader pipeline started"
        );
        let leader = self.clone();
        tokio::spawn(async move { leader.pipeline().await });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LeaderState> {
        // A panic while holding this lock is a bug; the state it protects stays usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Validates, replicates and commits one transaction; returns its outcome.
    pub async fn commit(
        &self,
        txn: ValidCommit,
        node: &Node,
    ) -> Result<(Uuid, TxnOutcome), ApiError> {
        let txn_id = txn.txn_id.unwrap_or_else(Uuid::new_v4);
        if txn.txn_id.is_some() {
            let seen = known(&mut self.lock(), txn_id);
            match seen {
                Some(Admission::Done(outcome)) => return Ok((txn_id, outcome)),
                Some(Admission::Wait(rx)) => return Ok((txn_id, wait(rx).await?)),
                None => {}
            }
            // Not in memory: it may have committed before a restart.
            if let Some(entry) = node
                .store
                .find_txn(txn_id)
                .await
                .map_err(ApiError::unavailable)?
            {
                return Ok((
                    txn_id,
                    TxnOutcome::Committed {
                        lsn: entry.lsn,
                        commit_ts: entry.commit_ts,
                    },
                ));
            }
        }
        let admission = {
            let mut state = self.lock();
            match known(&mut state, txn_id) {
                Some(admission) => admission,
                None => match state.validator.admit(
                    &txn.read_set,
                    txn.read_ts,
                    &txn.write_set,
                    now_ns(),
                ) {
                    Err(conflict) => {
                        let outcome = TxnOutcome::Aborted {
                            reason: conflict.reason,
                            key: Some(conflict.key),
                            message: format!(
                                "account {}: {}",
                                conflict.key,
                                conflict.reason.explain()
                            ),
                        };
                        state.outcomes.insert(txn_id, outcome.clone());
                        Admission::Done(outcome)
                    }
                    Ok(commit_ts) => {
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
    pub async fn wait_unlocked(
        &self,
        accounts: &BTreeSet<Account>,
        deadline: tokio::time::Instant,
    ) -> Result<(), ApiError> {
        loop {
            let notified = self.round_done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
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
            let batch: Vec<Admitted> = {
                let mut state = self.lock();
                let n = state.queue.len().min(MAX_BATCH);
                state.queue.drain(..n).collect()
            };
            if batch.is_empty() {
                self.queued.notified().await;
                continue;
            }
            let Some(node) = self.node.upgrade() else {
                return;
            };
            round += 1;
            let outcomes = self.run_round(&node, round, &batch).await;
            let mut state = self.lock();
            for (txn, outcome) in batch.iter().zip(outcomes) {
                let committed_at = match &outcome {
                    TxnOutcome::Committed { commit_ts, .. } => Some(*commit_ts),
                    TxnOutcome::Aborted { .. } => None,
                };
                state.validator.finish(&txn.write_set, committed_at);
                state.outcomes.insert(txn.txn_id, outcome.clone());
                for waiter in state.waiting.remove(&txn.txn_id).unwrap_or_default() {
                    let _ = waiter.send(outcome.clone());
                }
            }
            drop(state);
            self.round_done.notify_waiters();
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
        let prepare = PrepareRequest {
            term: self.term,
            round,
            prev_lsn,
            entries,
        };
        let replicas: Vec<&String> = node.replicas().collect();

        // Phase one: every member in parallel, this one included.
        let prepare_ref = &prepare;
        let remote = futures::future::join_all(replicas.iter().map(|peer| async move {
            match node.peers.prepare(peer, prepare_ref).await {
                Ok(answer) if answer.vote == Vote::Yes => Ok(()),
                Ok(answer) => Err(format!(
                    "{peer} voted NO: {}",
                    answer.reason.unwrap_or_default()
                )),
                Err(e) => Err(e.to_string()),
            }
        }));
        let local = async {
            match node.prepare(&prepare).await {
                Ok(answer) if answer.vote == Vote::Yes => Ok(()),
                Ok(answer) => Err(format!(
                    "the leader voted NO: {}",
                    answer.reason.unwrap_or_default()
                )),
                Err(e) => Err(format!("the leader could not prepare: {e}")),
            }
        };
        let (local, remote) = tokio::join!(local, remote);
        let refusals: Vec<String> = std::iter::once(local)
            .chain(remote)
            .filter_map(Result::err)
            .collect();
        let decision = if refusals.is_empty() {
            Decision::Commit
        } else {
            Decision::Abort
        };
        if !refusals.is_empty() {
            tracing::warn!(round, last_lsn, ?refusals, "aborting round");
        }

        // Phase two: replicas first; the leader commits its own once one replica has.
        let decide = DecideRequest {
            term: self.term,
            last_lsn,
            decision,
        };
        let mut pending: FuturesUnordered<_> = replicas
            .iter()
            .map(|peer| self.decide_until_acked(node, peer, &decide))
            .collect();
        if decision == Decision::Commit && !pending.is_empty() {
            pending.next().await;
        }
        self.decide_locally(node, &decide).await;
        while pending.next().await.is_some() {}

        match decision {
            Decision::Commit => prepare
                .entries
                .iter()
                .map(|e| TxnOutcome::Committed {
                    lsn: e.lsn,
                    commit_ts: e.commit_ts,
                })
                .collect(),
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

    /// Sends a decision until the member acknowledges it. The round cannot end before: a
    /// client is answered only once the decision is durable on every member.
    async fn decide_until_acked(&self, node: &Node, peer: &str, req: &DecideRequest) {
        let mut pause = Duration::from_millis(20);
        loop {
            match node.peers.decide(peer, req).await {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, last_lsn = req.last_lsn, "decision not acknowledged; retrying");
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_RETRY_PAUSE);
        }
    }

    async fn decide_locally(&self, node: &Node, req: &DecideRequest) {
        let mut pause = Duration::from_millis(20);
        while let Err(e) = node.decide(req).await {
            tracing::error!(error = %e, last_lsn = req.last_lsn, "could not apply the decision locally; retrying");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_RETRY_PAUSE);
        }
    }
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
    rx.await.map_err(|_| {
        ApiError::Unavailable("the leader stopped before the transaction finished".into())
    })
}

fn now_ns() -> Timestamp {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as Timestamp)
}
