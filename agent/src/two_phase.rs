//! The leader's runtime: it drives [`engine::coordinator::Coordinator`].
//!
//! Handlers admit a transaction under a short synchronous lock (no I/O) and wait for its
//! answer. One starter task opens a round whenever the coordinator is ready (something queued,
//! fewer than `depth` rounds in flight, not paused). Every effect the coordinator asks for
//! runs in its own task: the PREPARE to each member, the report to the supervisor, the
//! decision delivered until acknowledged. Each result is fed back under the lock, and the
//! effects that follow are started in turn. While a round is in flight new transactions queue
//! for the next one, so PostgreSQL flushes are shared by the batch and an idle system adds no
//! wait.
//!
//! The rules (what commits, in which order, who is answered what) are the coordinator's;
//! this file only carries them out. Invariants kept here:
//! - Every effect's result is fed back exactly once, so no round waits forever: each task
//!   ends in an event (a delivery retries until acknowledged, removed or deposed).
//! - A transaction found in the log is answered COMMIT only up to the coordinator's
//!   `durable_lsn`.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use engine::batch::RoundId;
use engine::coordinator::{AckResult, Admission, Coordinator, Effect, Txn, VoteResult};
pub use engine::coordinator::{TxnOutcome, MAX_BATCH, MAX_QUEUED};
use engine::validation::Validator;
use protocol::{Account, DecideRequest, FailureKind, Lsn, Term, Timestamp, ValidCommit, Vote};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use uuid::Uuid;

use crate::error::ApiError;
use crate::node::Node;
use crate::peers::PeerError;

/// Longest pause between retries of a decision to a member that does not answer.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// How long an ABORT is retried to a member that does not acknowledge it before the round
/// ends anyway. Its clients then hear "outcome unknown, retry with the same txn_id" rather than
/// "nothing applied": the member may hold the batch prepared, and a later leader could commit
/// it by the in-doubt rules. A COMMIT, by contrast, is retried until the member acknowledges it
/// or is removed.
const ABORT_ACK_WAIT: Duration = Duration::from_secs(1);
/// How long the starter sleeps when nothing wakes it: a pause's end is noticed this late at most.
const IDLE_CHECK: Duration = Duration::from_millis(50);

type Waiter = oneshot::Sender<TxnOutcome>;

pub struct Leader {
    node: Weak<Node>,
    term: Term,
    core: Mutex<Coordinator<Waiter>>,
    /// The clock the coordinator's pauses are measured on.
    epoch: Instant,
    /// Wakes the starter: something queued, a round decided or finished, a resume, a depose.
    kick: Notify,
    /// Wakes readers waiting for locks, and pauses waiting for rounds to drain, when a round
    /// ends.
    round_done: Notify,
    /// When each round in flight started, and when it was decided (for the phase metrics).
    phases: Mutex<HashMap<RoundId, (Instant, Option<Instant>)>>,
    /// Per replica, the PREPAREs in round order: a round's PREPARE leaves for a replica only
    /// once the previous round's PREPARE to it was answered, so a member never sees round r+1
    /// before round r (its PostgreSQL then prepares them in order too, while round r's
    /// decision overlaps round r+1's PREPARE).
    lanes: Mutex<HashMap<String, Lane>>,
}

/// The order of PREPAREs to one replica: tickets handed out in round order, served in turn.
#[derive(Clone)]
struct Lane {
    next: u64,
    served: tokio::sync::watch::Sender<u64>,
}

impl Lane {
    fn new() -> Lane {
        Lane { next: 0, served: tokio::sync::watch::channel(0).0 }
    }
}

/// A panic while holding one of these locks is a bug; the state they protect stays usable.
fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Keeps rounds from starting while it lives (see [`Leader::hold_rounds`]).
pub struct RoundHold<'a>(&'a Leader);

impl Drop for RoundHold<'_> {
    fn drop(&mut self) {
        locked(&self.0.core).release();
        self.0.kick.notify_one();
    }
}

impl Leader {
    /// A leader of `term` for `node`. `durable_lsn` is where the node's log ended before it
    /// resolved in-doubt batches: everything up to it was acknowledged by an earlier leader,
    /// hence held by `min_copies` nodes.
    pub fn new(
        node: Weak<Node>,
        term: Term,
        min_copies: usize,
        depth: usize,
        validator: Validator,
        durable_lsn: Lsn,
    ) -> Arc<Leader> {
        let address = node.upgrade().map(|n| n.cfg.address.clone()).unwrap_or_default();
        // Round ids grow across restarts of a term's leader too: a late PREPARE from before a
        // restart is then told from a current one.
        let first_round = now_ns() as u64;
        let core = Coordinator::new(term, address, min_copies, depth, validator, durable_lsn, first_round);
        Arc::new(Leader {
            node,
            term,
            core: Mutex::new(core),
            epoch: Instant::now(),
            kick: Notify::new(),
            round_done: Notify::new(),
            phases: Mutex::new(HashMap::new()),
            lanes: Mutex::new(HashMap::new()),
        })
    }

    /// Starts the task that opens rounds.
    pub fn start(self: &Arc<Self>, applied_lsn: Lsn, highest_committed: Timestamp) {
        tracing::info!(term = self.term, applied_lsn, highest_committed, "leader pipeline started");
        let leader = self.clone();
        tokio::spawn(async move { leader.starter().await });
    }

    pub fn term(&self) -> Term {
        self.term
    }

    pub fn is_deposed(&self) -> bool {
        locked(&self.core).is_deposed()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Stops taking rounds. Transactions queued and not yet prepared are answered `NotApplied`.
    pub fn depose(&self) {
        let (was, effects) = {
            let mut core = locked(&self.core);
            (core.is_deposed(), core.depose())
        };
        if !was {
            tracing::warn!(term = self.term, "leader deposed");
        }
        self.answer(effects);
        self.kick.notify_one();
        self.round_done.notify_waiters();
    }

    /// Finishes the rounds in flight and starts no new one for at most `max` (or until
    /// [`Leader::resume`]). Returns once no round is in flight.
    pub async fn pause(&self, max: Duration) {
        let until = self.now_ms() + max.as_millis() as u64;
        locked(&self.core).pause(until);
        self.drain().await;
        tracing::info!(max_ms = max.as_millis() as u64, "commits paused");
    }

    /// Waits for the rounds in flight to end and keeps any other from starting while the
    /// guard lives.
    pub async fn hold_rounds(&self) -> RoundHold<'_> {
        locked(&self.core).hold();
        self.drain().await;
        RoundHold(self)
    }

    /// Waits until no round is in flight (the caller has stopped new ones from starting).
    async fn drain(&self) {
        loop {
            let done = self.round_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if locked(&self.core).rounds_in_flight() == 0 || self.is_deposed() {
                return;
            }
            let _ = tokio::time::timeout(IDLE_CHECK, done).await;
        }
    }

    pub fn resume(&self) {
        if locked(&self.core).resume() {
            tracing::info!("commits resumed");
        }
        self.kick.notify_one();
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
        let (tx, rx) = oneshot::channel();
        let mut waiter = Some(tx);
        if txn.txn_id.is_some() {
            let seen = locked(&self.core).known(txn_id, waiter.take().expect("the waiter is used once"));
            match seen {
                Ok(Admission::Done(outcome)) => return Ok((txn_id, outcome)),
                Ok(_) => return Ok((txn_id, wait(rx).await?)),
                Err(tx) => waiter = Some(tx),
            }
            // Not in memory: it may have been decided before a restart or under another leader.
            let (found, start) = node.store.find_txn(txn_id).await.map_err(ApiError::unavailable)?;
            if let Some(refusal) = beyond_horizon(found.is_some(), start, txn.read_ts) {
                return Err(refusal);
            }
            if let Some(entry) = found {
                let durable = locked(&self.core).durable_lsn();
                if entry.lsn > durable {
                    let message = format!(
                        "its log entry (LSN {}) is not yet known to be on {} nodes; retry with the same txn_id",
                        entry.lsn,
                        locked(&self.core).min_copies()
                    );
                    return Ok((txn_id, TxnOutcome::Unknown { message }));
                }
                return Ok((txn_id, TxnOutcome::of_entry(&entry)));
            }
        }
        let request = Txn {
            txn_id,
            read_set: txn.read_set,
            write_set: txn.write_set,
            read_ts: txn.read_ts,
            min_copies: txn.min_copies.unwrap_or(0),
        };
        let admission = locked(&self.core).admit(request, now_ns(), waiter.take().expect("the waiter is used once"));
        match admission {
            Admission::Done(outcome) => Ok((txn_id, outcome)),
            Admission::Waiting => {
                self.kick.notify_one();
                Ok((txn_id, wait(rx).await?))
            }
            Admission::NotLeading => Ok((txn_id, TxnOutcome::NotApplied)),
            Admission::Overloaded => Err(ApiError::Overloaded(format!(
                "the leader already has {MAX_QUEUED} transactions waiting to be replicated; retry shortly"
            ))),
            Admission::FutureTimestamp(bound) => Err(ApiError::BadTimestamp(format!(
                "time_stamp {} is above the highest timestamp this cluster has handed out ({bound}); \
                 commit with the timestamp your read returned",
                txn.read_ts.unwrap_or_default()
            ))),
        }
    }

    /// Waits until no transaction in flight writes any of `accounts`, or the deadline passes.
    pub async fn wait_unlocked(&self, accounts: &BTreeSet<Account>, deadline: Instant) -> Result<(), ApiError> {
        loop {
            let notified = self.round_done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let key = {
                let core = locked(&self.core);
                if core.is_deposed() {
                    return Ok(());
                }
                core.first_locked(accounts)
            };
            let Some(key) = key else {
                return Ok(());
            };
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(ApiError::Unavailable(format!(
                    "account {key} is being written by a transaction that has not finished; try again"
                )));
            }
        }
    }

    /// Opens a round whenever the coordinator is ready, until this leader is deposed.
    async fn starter(self: Arc<Self>) {
        loop {
            let kicked = self.kick.notified();
            tokio::pin!(kicked);
            kicked.as_mut().enable();
            if self.is_deposed() {
                return;
            }
            let ready = locked(&self.core).ready(self.now_ms());
            if !ready {
                let _ = tokio::time::timeout(IDLE_CHECK, kicked).await;
                continue;
            }
            let Some(node) = self.node.upgrade() else {
                return;
            };
            // The members, with the hold epoch under the lock a join's hold needs: a node that
            // joins while the suspects are probed makes start_round refuse, and the next pass
            // reads the new member set.
            let (replicas, read_at) = {
                let core = locked(&self.core);
                (node.replicas(), core.hold_epoch())
            };
            let gone = self.still_gone(&node, &replicas).await;
            let effects = {
                let mut core = locked(&self.core);
                core.start_round(self.now_ms(), node.applied().0, replicas, read_at, gone, node.cluster_id())
            };
            self.execute(&node, effects);
        }
    }

    /// How many of `replicas` failed their last call and do not answer a probe now.
    async fn still_gone(&self, node: &Node, replicas: &[String]) -> usize {
        let suspects = locked(&self.core).suspects(replicas);
        let probes = futures::future::join_all(suspects.iter().map(|s| node.peers.probe(s))).await;
        let mut gone = 0;
        for (suspect, answered) in suspects.iter().zip(probes) {
            if answered {
                locked(&self.core).answered(suspect);
            } else {
                gone += 1;
            }
        }
        gone
    }

    /// Feeds an event to the coordinator and carries out what follows.
    fn feed(self: &Arc<Self>, node: &Arc<Node>, event: impl FnOnce(&mut Coordinator<Waiter>) -> Vec<Effect<Waiter>>) {
        let effects = event(&mut locked(&self.core));
        self.execute(node, effects);
        // A round decided or finished may let the next one start.
        self.kick.notify_one();
    }

    /// Starts each effect: I/O in a task of its own, answers at once.
    fn execute(self: &Arc<Self>, node: &Arc<Node>, effects: Vec<Effect<Waiter>>) {
        let mut answers = Vec::new();
        for effect in effects {
            match effect {
                Effect::Prepare { round, request, replicas } => {
                    metrics::histogram!("rmw_batch_size").record(request.entries.len() as f64);
                    locked(&self.phases).insert(round, (Instant::now(), None));
                    let request = Arc::new(request);
                    for peer in replicas {
                        let (leader, node, request) = (self.clone(), node.clone(), request.clone());
                        let turn = self.ticket(&peer);
                        tokio::spawn(async move {
                            let vote = match in_turn(turn, node.peers.prepare(&peer, &request)).await {
                                Ok(answer) if answer.vote == Vote::Yes => VoteResult::Yes,
                                Ok(answer) => VoteResult::No {
                                    applied_lsn: answer.applied_lsn,
                                    reason: answer.reason.unwrap_or_default(),
                                },
                                Err(PeerError::StaleTerm { term, .. }) => VoteResult::Stale(term),
                                Err(e) => VoteResult::Unreachable(e.to_string()),
                            };
                            leader.feed(&node, |core| core.voted(round, &peer, vote));
                        });
                    }
                    let (leader, node) = (self.clone(), node.clone());
                    let turn = self.ticket(&node.cfg.address);
                    tokio::spawn(async move {
                        let vote = match in_turn(turn, node.prepare(&request)).await {
                            Ok(answer) if answer.vote == Vote::Yes => Ok(()),
                            Ok(answer) => Err(format!("the leader voted NO: {}", answer.reason.unwrap_or_default())),
                            Err(e) => Err(format!("the leader could not prepare: {e}")),
                        };
                        leader.feed(&node, |core| core.voted_here(round, vote));
                    });
                }
                Effect::Report { round, peer, reason, kind, answer } => {
                    let (leader, node) = (self.clone(), node.clone());
                    tokio::spawn(async move {
                        let removed = leader.report(&node, &peer, &reason, kind).await;
                        if answer {
                            leader.feed(&node, |core| core.reported(round, &peer, reason, removed));
                        }
                    });
                }
                Effect::Decide { round, peer, request, give_up } => {
                    self.phase_decided(round);
                    let (leader, node) = (self.clone(), node.clone());
                    tokio::spawn(async move {
                        let give_up_at = give_up.then(|| Instant::now() + ABORT_ACK_WAIT);
                        let result = leader.decide_until_acked(&node, &peer, &request, give_up_at).await;
                        leader.feed(&node, |core| core.acked(round, &peer, result));
                    });
                }
                Effect::DecideHere { round, request } => {
                    self.phase_decided(round);
                    let (leader, node) = (self.clone(), node.clone());
                    tokio::spawn(async move {
                        let landed = leader.decide_here(&node, &request).await;
                        if let Some((_, Some(decided))) = locked(&leader.phases).remove(&round) {
                            metrics::histogram!("rmw_phase_seconds", "phase" => "decide")
                                .record(decided.elapsed().as_secs_f64());
                        }
                        leader.feed(&node, |core| core.decided_here(round, landed));
                    });
                }
                Effect::SteppedDown { reason } => {
                    tracing::error!(term = self.term, %reason, "this leader stepped down");
                    node.step_down_if_behind(self.term + 1);
                }
                answer @ Effect::Answer { .. } => answers.push(answer),
            }
        }
        if !answers.is_empty() {
            self.answer(answers);
            if locked(&self.core).rounds_in_flight() == 0 {
                // A round that never reached its own decision leaves its start time behind.
                locked(&self.phases).clear();
            }
            self.round_done.notify_waiters();
        }
    }

    /// A place in the order of PREPAREs to `peer`.
    fn ticket(&self, peer: &str) -> (u64, tokio::sync::watch::Sender<u64>) {
        let mut lanes = locked(&self.lanes);
        let lane = lanes.entry(peer.to_string()).or_insert_with(Lane::new);
        lane.next += 1;
        (lane.next - 1, lane.served.clone())
    }

    /// The prepare phase of `round` ended: its decision is being sent.
    fn phase_decided(&self, round: RoundId) {
        if let Some((started, decided)) = locked(&self.phases).get_mut(&round) {
            if decided.is_none() {
                metrics::histogram!("rmw_phase_seconds", "phase" => "prepare").record(started.elapsed().as_secs_f64());
                *decided = Some(Instant::now());
            }
        }
    }

    /// Answers the waiters of finished transactions and counts the outcomes.
    fn answer(&self, effects: Vec<Effect<Waiter>>) {
        for effect in effects {
            let Effect::Answer { txn_id, outcome, waiters } = effect else {
                continue;
            };
            match &outcome {
                TxnOutcome::Committed { .. } => metrics::counter!("rmw_commits_total").increment(1),
                TxnOutcome::Aborted { reason, .. } => {
                    metrics::counter!("rmw_aborts_total", "reason" => reason.as_str()).increment(1)
                }
                TxnOutcome::NotApplied | TxnOutcome::Unknown { .. } => {}
            }
            tracing::debug!(%txn_id, ?outcome, "txn answered");
            for waiter in waiters {
                let _ = waiter.send(outcome.clone());
            }
        }
    }

    /// Asks the supervisor to remove `peer`; true if it did.
    async fn report(&self, node: &Node, peer: &str, reason: &str, kind: FailureKind) -> bool {
        match node.report_failure(self.term, peer, reason, kind).await {
            Some(config) => !config.members.iter().any(|m| m == peer),
            None => false,
        }
    }

    /// Sends a decision until the member acknowledges it, or is removed from the members, or
    /// this leader is deposed, or (an ABORT) `give_up_at` passes.
    async fn decide_until_acked(
        &self,
        node: &Node,
        peer: &str,
        req: &DecideRequest,
        give_up_at: Option<Instant>,
    ) -> AckResult {
        let mut pause = Duration::from_millis(20);
        let mut reported = false;
        loop {
            match node.peers.decide(peer, req).await {
                Ok(_) => {
                    locked(&self.core).answered(peer);
                    return AckResult::Acknowledged;
                }
                Err(PeerError::StaleTerm { .. }) => return AckResult::Stale,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, last_lsn = req.last_lsn, "decision not acknowledged; retrying");
                    if give_up_at.is_some_and(|at| Instant::now() >= at) {
                        return AckResult::GaveUp;
                    }
                    if !reported {
                        reported = true;
                        if self.report(node, peer, &e.to_string(), FailureKind::DecisionFailed).await {
                            // Removed: the member learns the outcome when it recovers.
                            return AckResult::Removed;
                        }
                    }
                }
            }
            if !node.replicas().iter().any(|r| r == peer) {
                return AckResult::Removed;
            }
            if self.is_deposed() {
                return AckResult::GaveUp;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_RETRY_PAUSE);
        }
    }

    /// Applies the decision to this node's own prepared batch; false if deposed first.
    async fn decide_here(&self, node: &Node, req: &DecideRequest) -> bool {
        let mut pause = Duration::from_millis(20);
        loop {
            match node.decide(req).await {
                Ok(_) => return true,
                Err(ApiError::StaleTerm(_)) => return false,
                Err(e) => {
                    tracing::error!(error = %e, last_lsn = req.last_lsn, "could not apply the decision locally; retrying")
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_RETRY_PAUSE);
        }
    }
}

/// Runs `call` once every call that took an earlier ticket in the same lane has finished.
async fn in_turn<T>((ticket, served): (u64, tokio::sync::watch::Sender<u64>), call: impl Future<Output = T>) -> T {
    let _ = served.subscribe().wait_for(|served| *served >= ticket).await;
    let out = call.await;
    served.send_modify(|served| *served = (*served).max(ticket + 1));
    out
}

/// A commit with a `txn_id` the log does not hold, whose `time_stamp` is older than the log's
/// first entry: it may be a retry of a transaction whose entry was trimmed (a transaction
/// commits after the timestamp it read), so it is refused rather than run a second time.
fn beyond_horizon(found: bool, start: Option<(Lsn, Timestamp)>, read_ts: Option<Timestamp>) -> Option<ApiError> {
    let (first_lsn, first_ts) = start?;
    let read_ts = read_ts?;
    (!found && first_lsn > 1 && read_ts < first_ts).then(|| ApiError::LogTrimmed {
        horizon: first_lsn - 1,
        message: format!(
            "this txn_id is not in the log, but the log no longer reaches back to time_stamp {read_ts} (it starts at \
             LSN {first_lsn}): if this is a retry, its outcome is no longer known; read again and commit with a new txn_id"
        ),
    })
}

async fn wait(rx: oneshot::Receiver<TxnOutcome>) -> Result<TxnOutcome, ApiError> {
    rx.await.map_err(|_| ApiError::Unavailable("the leader stopped before the transaction finished".into()))
}

pub(crate) fn now_ns() -> Timestamp {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as Timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_txn_id_older_than_the_log_is_refused_not_run_again() {
        let trimmed = Some((101, 5_000));
        assert!(beyond_horizon(false, trimmed, Some(4_999)).is_some(), "read before the first kept entry");
        assert!(beyond_horizon(false, trimmed, Some(5_000)).is_none(), "its entry would be kept");
        assert!(beyond_horizon(true, trimmed, Some(1)).is_none(), "found: answered from the log");
        assert!(beyond_horizon(false, trimmed, None).is_none(), "write-only: only the age bound protects it");
        assert!(beyond_horizon(false, Some((1, 5_000)), Some(1)).is_none(), "a whole log reaches everything");
        assert!(beyond_horizon(false, None, Some(1)).is_none(), "an empty log");
    }
}
