//! One agent: its PostgreSQL, its member state machine, and (when it leads) the coordinator.
//!
//! The runtime around [`engine::member::Member`]: every request is stepped under a plain
//! mutex held for microseconds, and what the member asks for (a PostgreSQL call, a durable
//! configuration, a re-read) is done outside it; the result is fed back and the request is
//! stepped again. The member's rules live in the engine; this file and its siblings only carry
//! out effects: [`crate::replica`] (PREPARE, decisions, configurations), [`crate::recovery`]
//! (catching up from the leader's log), [`crate::promotion`] (becoming leader, in-doubt
//! batches, membership changes).
//!
//! Invariants kept here:
//! - No lock is held across an await on I/O: `/status` never waits behind a PREPARE or a
//!   recovery.
//! - Every change of the member wakes the requests waiting on it ([`Node::with_member`]) and
//!   publishes where the log ends.
//! - A leader object serves only while the member leads its term.

use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex as SyncMutex, Weak};
use std::time::Duration;

use engine::member::{chain, LeaderChange, Member, Op, Step};
use protocol::{AgentStatus, ClusterConfig, DrillResponse, Lsn, ReadResponse, Role, Term, Timestamp, ValidRead};
use tokio::sync::{futures::Notified, watch, Notify};
use tokio::time::Instant;
use uuid::Uuid;

use crate::error::ApiError;
use crate::peers::Peers;
use crate::store::{LogEnd, Store};
use crate::two_phase::Leader;

/// How long a read waits for an in-flight write of one of its accounts to finish, or for a
/// node to reach `min_lsn`, before giving up with 503.
pub const READ_WAIT: Duration = Duration::from_secs(5);
/// How long an internal request waits for what blocks it on this member (a batch being
/// prepared or decided, a re-read, a recovery) before it is answered 503.
pub const STEP_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: String,
    /// This agent's address as its peers reach it.
    pub address: String,
    /// The configuration to start from when none is stored (first start).
    pub initial: ClusterConfig,
    /// The supervisor's address; without one the leader is fixed.
    pub supervisor: Option<String>,
    /// The cluster token: required on internal endpoints and sent on every internal call.
    pub token: Option<String>,
    pub peer_timeout: Duration,
    /// The durability floor: as leader, acknowledge a commit only once at least this many
    /// nodes (this one included) hold it durably.
    pub min_copies: usize,
    /// Rounds the leader keeps in flight at once (`--pipeline-depth`).
    pub pipeline_depth: usize,
    /// Client API keys (`--api-keys`): with them `/read/` needs a read or write key and
    /// `/commit/` a write key; without them both are open.
    pub api_keys: Option<std::sync::Arc<protocol::api_keys::ApiKeys>>,
    /// TLS (`--tls-*`): this agent serves HTTPS and calls its peers and the supervisor over
    /// HTTPS; with client auth its internal endpoints need a certificate from the CA.
    pub tls: Option<service::Tls>,
    /// `--retain-log`: trim the log beyond this bound in the background; None keeps it all.
    pub retention: Option<crate::retention::Retention>,
}

pub struct Node {
    pub cfg: NodeConfig,
    pub store: Store,
    pub peers: Peers,
    member: SyncMutex<Member>,
    /// Woken whenever the member changes: requests told to wait step again.
    changed: Notify,
    /// Where the local log ends, published after every change.
    applied: watch::Sender<LogEnd>,
    /// The coordinator of the term this node leads, if it does.
    leader: SyncMutex<Option<Arc<Leader>>>,
    /// Set while a promotion runs: a second one (a retry) is refused rather than run twice.
    pub(crate) promoting: AtomicBool,
    /// The log entries rebuilds still replay (`--retain-log` keeps them).
    pub(crate) log_holds: SyncMutex<crate::retention::Holds>,
    pub(crate) me: Weak<Node>,
}

/// What a settled step leaves to the caller.
pub(crate) enum Next<A> {
    Answer(A),
    /// Step again.
    Again,
    /// An operation only the caller knows how to run.
    Run(Op),
}

/// Recovers a lock whose holder panicked: the member is replaced only by whole steps.
fn locked<T>(m: &SyncMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Node {
    /// Opens the node: restores its member state from PostgreSQL and, if the configuration
    /// names it leader, resolves what it left prepared and starts leading.
    pub async fn start(cfg: NodeConfig, store: Store) -> anyhow::Result<Arc<Node>> {
        let peers = Peers::new(cfg.peer_timeout, cfg.token.as_deref(), cfg.tls.as_ref())?;
        let (end, prepared) = ground_truth(&store).await?;
        let cluster_id = store.cluster_id().await?;
        let (config, restarted) = match store.load_config().await? {
            Some(stored) if !cfg.initial.is_newer_than(&stored) => (stored, true),
            _ => {
                store.save_config(&cfg.initial).await?;
                (cfg.initial.clone(), false)
            }
        };
        let member = Member::restore(cfg.address.clone(), config.clone(), end, prepared, cluster_id);
        let term = member.term();
        let (applied, _) = watch::channel(end);
        let node = Arc::new_cyclic(|me| Node {
            cfg,
            store,
            peers,
            member: SyncMutex::new(member),
            changed: Notify::new(),
            applied,
            leader: SyncMutex::new(None),
            promoting: AtomicBool::new(false),
            log_holds: SyncMutex::default(),
            me: me.clone(),
        });
        // Without a supervisor the leader is fixed and resumes at once. With one, a restarted
        // agent never promotes itself: it may have missed a failover, and resolving its own
        // prepared batch alone (presumed commit with no peer answering) could diverge from what
        // the cluster decided. The supervisor elects a leader, or recovers this node.
        // On a first start nothing can have happened yet, so the configured leader leads at once.
        let named_leader = config.leader.as_deref() == Some(node.cfg.address.as_str());
        let first_start = !restarted && end.lsn == 0;
        if named_leader && node.cfg.supervisor.is_some() && first_start {
            // An empty database under the first leader's name is either a new cluster or a
            // node whose data was wiped. In the second case leading would serve an empty log
            // and refuse the good nodes as "diverged": a peer with a history tells.
            if let Some(peer) = node.peer_with_history(&config).await {
                tracing::warn!(%peer, "this node's database is empty but the cluster has a history: \
                    not leading; the supervisor recovers it as a new node");
            } else {
                node.promote(config).await.map_err(|e| anyhow::anyhow!("starting as leader: {e}"))?;
            }
        } else if named_leader && (node.cfg.supervisor.is_none() || !restarted) {
            node.promote(config).await.map_err(|e| anyhow::anyhow!("resuming as leader: {e}"))?;
        } else if !named_leader {
            // In the background: the named leader may itself be starting, and waiting for it
            // here would keep this agent from serving (and the supervisor from seeing it).
            let asking = node.clone();
            tokio::spawn(async move { asking.ask_for_birth().await });
        }
        if let Some(retention) = node.cfg.retention {
            crate::retention::spawn(Arc::downgrade(&node), retention);
        }
        tracing::info!(node = %node.cfg.node_id, role = ?node.role(), term, applied_lsn = end.lsn, "node ready");
        Ok(node)
    }

    /// A member of `config` that reports a log or a term beyond a fresh cluster's, if any
    /// answers.
    async fn peer_with_history(&self, config: &ClusterConfig) -> Option<String> {
        for peer in config.members.iter().filter(|m| **m != self.cfg.address) {
            match self.peers.status(peer).await {
                Ok(status) if status.applied_lsn > 0 || status.term > config.term => return Some(peer.clone()),
                Ok(_) => {}
                Err(e) => tracing::debug!(%peer, error = %e, "peer unreachable at start-up"),
            }
        }
        None
    }

    // ---- the member, under its lock ----

    /// Runs `f` on the member (microseconds, no I/O), then wakes waiting requests and
    /// publishes where the log ends.
    pub(crate) fn with_member<R>(&self, f: impl FnOnce(&mut Member) -> R) -> R {
        self.change(f, |_| true)
    }

    /// Steps a request on the member: as [`Node::with_member`], except that a step that only
    /// says to wait changes nothing and wakes no one. (Waking would wake the caller itself,
    /// whose wait started before the step, and it would spin without yielding.)
    pub(crate) fn step<A>(&self, f: impl FnOnce(&mut Member) -> Step<A>) -> Step<A> {
        self.change(f, |step| !matches!(step, Step::Wait(_)))
    }

    /// Runs `f` on the member under its lock, publishes where the log ends, and wakes the
    /// waiting requests if `wakes` says the result changed something.
    fn change<R>(&self, f: impl FnOnce(&mut Member) -> R, wakes: impl FnOnce(&R) -> bool) -> R {
        let (result, end) = {
            let mut member = locked(&self.member);
            let result = f(&mut member);
            (result, member.applied())
        };
        if *self.applied.borrow() != end {
            self.applied.send_replace(end);
        }
        if wakes(&result) {
            self.changed.notify_waiters();
        }
        result
    }

    /// A read-only look at the member.
    pub(crate) fn look<R>(&self, f: impl FnOnce(&Member) -> R) -> R {
        f(&locked(&self.member))
    }

    /// A future that completes at the member's next change; create it *before* stepping, so
    /// that a change between the step and the wait is not missed.
    pub(crate) fn next_change(&self) -> Pin<Box<Notified<'_>>> {
        let mut changed = Box::pin(self.changed.notified());
        changed.as_mut().enable();
        changed
    }

    /// Carries out what every request may be asked for (wait, persist, re-read, roll back);
    /// returns the answer, `Again`, or an operation for the caller.
    pub(crate) async fn settle<A>(
        &self,
        step: Step<A>,
        changed: Pin<Box<Notified<'_>>>,
        deadline: Instant,
    ) -> Result<Next<A>, ApiError> {
        match step {
            Step::Answer(answer) => Ok(Next::Answer(answer)),
            Step::Wait(why) => match tokio::time::timeout_at(deadline, changed).await {
                Ok(()) => Ok(Next::Again),
                Err(_) => Err(ApiError::Unavailable(format!("this node is busy ({why}); retry"))),
            },
            Step::Persist(config) => {
                self.persist(&config).await?;
                Ok(Next::Again)
            }
            Step::Reconcile => {
                self.reconcile().await?;
                Ok(Next::Again)
            }
            Step::Run(Op::RollBack(batches)) => {
                let ok = self.roll_back(&batches).await;
                self.with_member(|m| m.rolled_back(&batches, ok));
                Ok(Next::Again)
            }
            Step::Run(op) => Ok(Next::Run(op)),
        }
    }

    /// Stores `config` durably, then lets the member adopt it.
    pub(crate) async fn persist(&self, config: &ClusterConfig) -> Result<(), ApiError> {
        if let Err(e) = self.store.save_config(config).await {
            // The new term cannot be stored, so this node must not vote in it; but stepping
            // down is always safe, and a leader that knows it was replaced must stop acting
            // (and answering reads) as one.
            self.step_down_if_behind(config.term);
            return Err(ApiError::unavailable(e));
        }
        if self.look(|m| m.contradicts_vote(config)) {
            tracing::error!(term = config.term, named = ?config.leader,
                "a configuration names a second leader for this term; this member keeps voting for the first");
        }
        match self.with_member(|m| m.adopted(config)) {
            LeaderChange::Deposed(term) => {
                tracing::warn!(old_term = term, new_term = config.term, "deposed: no longer the leader");
                if let Some(leader) = locked(&self.leader).take() {
                    leader.depose();
                }
            }
            LeaderChange::StillLeading => {
                if let Some(leader) = self.leader() {
                    leader.resume();
                }
            }
            LeaderChange::None => {}
        }
        Ok(())
    }

    /// After a PostgreSQL call failed half-way the member cannot tell whether a PREPARE, a
    /// COMMIT PREPARED or a recovery page landed: it re-reads the prepared batches and the
    /// log's end. (An orphaned prepared batch would otherwise hold its row locks forever and
    /// block every later write of those rows.)
    async fn reconcile(&self) -> Result<(), ApiError> {
        match ground_truth(&self.store).await {
            Ok((end, keep)) => {
                for batch in &keep {
                    tracing::warn!(gid = %batch.gid(), "PostgreSQL holds a prepared batch (re-read after a failed call)");
                }
                self.with_member(|m| m.reconciled(end, keep));
                Ok(())
            }
            Err(e) => {
                self.with_member(|m| m.reconcile_failed());
                Err(ApiError::unavailable(e))
            }
        }
    }

    /// ROLLBACK PREPARED each batch; false if one may remain.
    pub(crate) async fn roll_back(&self, batches: &[engine::Batch]) -> bool {
        let mut ok = true;
        for batch in batches {
            tracing::info!(gid = %batch.gid(), "rolling back a prepared batch");
            if let Err(e) = self.store.rollback_prepared(batch).await {
                // Gone already (rolled back by an earlier attempt) is as good as done.
                let still_there = self.store.batch_prepared(batch).await.unwrap_or(true);
                if still_there {
                    tracing::error!(gid = %batch.gid(), error = %e, "ROLLBACK PREPARED failed");
                    ok = false;
                }
            } else if let Some(detail) = &batch.detail {
                log_decided(detail, "txn rolled back");
            }
        }
        ok
    }

    // ---- what the node knows ----

    /// The cluster this node's database belongs to, if any.
    pub fn cluster_id(&self) -> Option<Uuid> {
        self.look(Member::cluster_id)
    }

    pub fn config(&self) -> ClusterConfig {
        self.look(|m| m.config().clone())
    }

    pub fn role(&self) -> Role {
        let (down, in_members) = self.look(|m| (m.is_down(), m.config().members.contains(&self.cfg.address)));
        if down {
            Role::Down
        } else if self.leader().is_some() {
            Role::Leader
        } else if in_members {
            Role::Replica
        } else {
            Role::Standby
        }
    }

    /// The coordinator, if this node leads and serves.
    pub fn leader(&self) -> Option<Arc<Leader>> {
        let leading = self.look(Member::leading)?;
        locked(&self.leader).clone().filter(|l| l.term() == leading && !l.is_deposed())
    }

    pub(crate) fn install_leader(&self, leader: Option<Arc<Leader>>) -> Option<Arc<Leader>> {
        std::mem::replace(&mut *locked(&self.leader), leader)
    }

    /// A leader that learns of a newer term stops acting as one at once, in memory: it learns
    /// the new term durably when it is fenced. Until then it would go on answering reads as
    /// "leader" with data the new leader has moved past.
    pub fn step_down_if_behind(&self, term: Term) {
        if let Some(led) = self.with_member(|m| m.step_down(term)) {
            tracing::warn!(old_term = led, new_term = term, "stepping down: a newer term exists");
            if let Some(leader) = locked(&self.leader).take() {
                leader.depose();
            }
        }
    }

    /// Refuses anything but status while the drill holds this node down.
    pub fn check_serving(&self) -> Result<(), ApiError> {
        if self.look(Member::is_down) {
            return Err(ApiError::Unavailable(
                "this node is down (the /down_leader/ drill); GET /up_node/ brings it back".into(),
            ));
        }
        Ok(())
    }

    /// The answer for a commit sent to a node that cannot take it.
    pub fn not_leader(&self) -> ApiError {
        match self.look(|m| m.config().leader.clone()) {
            Some(leader) if leader != self.cfg.address => ApiError::NotLeader { leader: Some(leader) },
            _ => ApiError::Unavailable("no leader at the moment (an election is in progress); retry shortly".into()),
        }
    }

    /// (applied LSN, its commit timestamp).
    pub fn applied(&self) -> (Lsn, Timestamp) {
        let end = *self.applied.borrow();
        (end.lsn, end.commit_ts)
    }

    /// Where the local log ends, with the term of its last entry.
    pub fn log_end(&self) -> LogEnd {
        *self.applied.borrow()
    }

    /// The members other than this node, in configured order.
    pub fn replicas(&self) -> Vec<String> {
        self.look(Member::replicas)
    }

    pub fn status(&self) -> AgentStatus {
        let role = self.role();
        self.look(|m| {
            let end = m.applied();
            AgentStatus {
                node_id: self.cfg.node_id.clone(),
                address: self.cfg.address.clone(),
                role,
                term: m.term(),
                leader: m.config().leader.clone(),
                applied_lsn: end.lsn,
                last_commit_ts: end.commit_ts,
                last_term: end.term,
                min_copies: self.cfg.min_copies as u32,
                cluster_id: m.cluster_id(),
                members: m.config().members.clone(),
                prepared_batch: m.pending(),
                config_version: m.config().version,
                supervisor: self.cfg.supervisor.clone(),
            }
        })
    }

    // ---- drills and reads ----

    /// `GET /down_leader/`: the drill. The leader stops serving; the supervisor then fails over.
    pub async fn down_leader(&self) -> DrillResponse {
        use engine::member::DrillRefusal;
        let (changed, message) = match self.with_member(Member::drill_down) {
            Ok(_) => {
                if let Some(leader) = self.install_leader(None) {
                    leader.depose();
                }
                (true, "the leader stopped serving; the supervisor will elect a new one".to_string())
            }
            Err(DrillRefusal::AlreadyDown) => {
                (false, "this node is already down; GET /up_node/ brings it back".to_string())
            }
            Err(DrillRefusal::NotLeader(leader)) => {
                let leader = leader.unwrap_or_else(|| "unknown".into());
                (false, format!("this node is not the leader, so nothing was done; the leader is {leader}"))
            }
        };
        tracing::warn!(changed, "drill: down_leader");
        DrillResponse { node_id: self.cfg.node_id.clone(), role: self.role(), changed, message }
    }

    /// `GET /up_node/`: brings a downed node back as a standby; the supervisor then recovers it.
    pub async fn up_node(&self) -> DrillResponse {
        let rejoin = self.with_member(Member::drill_up);
        let changed = rejoin.is_some();
        if let Some(config) = rejoin {
            // It was the leader when it went down; it now rejoins as an ordinary node.
            if let Err(e) = self.persist(&config).await {
                tracing::warn!(error = %e, "could not store the configuration without this node");
            }
        }
        let message = if changed {
            "this node is up again as a standby; the supervisor will recover it and add it back to the members"
        } else {
            "this node was not down, so nothing was done"
        };
        tracing::warn!(changed, "drill: up_node");
        DrillResponse { node_id: self.cfg.node_id.clone(), role: self.role(), changed, message: message.into() }
    }

    /// A consistent read of `read.accounts`: on the leader it first waits for in-flight writes
    /// of those accounts; on any node it can wait for `min_lsn`.
    pub async fn read(&self, read: ValidRead) -> Result<ReadResponse, ApiError> {
        self.check_serving()?;
        let deadline = Instant::now() + READ_WAIT;
        // A past state never changes: no in-flight write can touch it.
        if let (Some(leader), None) = (self.leader(), read.as_of_lsn) {
            leader.wait_unlocked(&read.accounts, deadline).await?;
        }
        // A read at a past LSN waits for it like one with `min_lsn`.
        let wanted = match (read.min_lsn, read.as_of_lsn) {
            (Some(min), Some(as_of)) if min > as_of => Some(("min_lsn", min)),
            (_, Some(as_of)) => Some(("as_of_lsn", as_of)),
            (Some(min), None) => Some(("min_lsn", min)),
            (None, None) => None,
        };
        if let Some((what, lsn)) = wanted {
            let mut applied = self.applied.subscribe();
            let reached = tokio::time::timeout_at(deadline, applied.wait_for(|end| end.lsn >= lsn)).await;
            if !matches!(reached, Ok(Ok(_))) {
                return Err(ApiError::Unavailable(format!(
                    "this node has applied LSN {} and did not reach {what} {lsn} within {} s",
                    self.applied().0,
                    READ_WAIT.as_secs()
                )));
            }
        }
        let accounts: Vec<i64> = read.accounts.iter().copied().collect();
        let snapshot = match read.as_of_lsn {
            None => self.store.read(&accounts).await.map_err(ApiError::unavailable)?,
            Some(lsn) => match self.store.read_as_of(&accounts, lsn).await.map_err(ApiError::unavailable)? {
                Some(snapshot) => snapshot,
                None => {
                    let horizon = self.store.horizon().await.map_err(ApiError::unavailable)?;
                    return Err(ApiError::LogTrimmed {
                        horizon,
                        message: format!(
                            "as_of_lsn {lsn} is at or below this node's log horizon (LSN {horizon}): its log no longer \
                             reaches that far back (--retain-log); read at a later LSN"
                        ),
                    });
                }
            },
        };
        Ok(ReadResponse {
            read_status: "success".into(),
            values: snapshot.rows.iter().map(|r| (r.account_number, r.balance)).collect(),
            data: snapshot.rows,
            timestamp: snapshot.commit_ts,
            lsn: snapshot.lsn,
            node: self.cfg.node_id.clone(),
            role: self.role(),
        })
    }
}

/// Where PostgreSQL's log ends and the prepared batches that continue it, after rolling back
/// those that can never commit (at or below the log's end, or a second batch at one LSN).
async fn ground_truth(store: &Store) -> Result<(LogEnd, Vec<engine::Batch>), crate::store::StoreError> {
    let end = store.applied().await?;
    let (keep, stale) = chain(end.lsn, store.prepared_batches().await?);
    for batch in &stale {
        tracing::warn!(gid = %batch.gid(), "rolling back a prepared batch that can never commit");
        store.rollback_prepared(batch).await?;
    }
    Ok((end, keep))
}

/// One debug line per transaction of a decided batch, so that a `txn_id` can be followed
/// through every node's log (`RUST_LOG=agent=debug`).
pub(crate) fn log_decided(detail: &engine::PreparedHere, what: &'static str) {
    if tracing::enabled!(tracing::Level::DEBUG) {
        for (lsn, txn_id) in &detail.txns {
            tracing::debug!(%txn_id, lsn, "{what}");
        }
    }
}
