//! The supervisor's runtime: polls the agents, carries out the decisions of [`crate::failover`],
//! keeps the configuration durable, and serves its HTTP interface.
//!
//! Invariants kept here:
//! - A new configuration is written to the state file (atomically, fsynced) before any agent
//!   hears of it, so a restarted supervisor never reuses a term.
//! - One mutation at a time: failover, member removal and the final step of a recovery hold
//!   the same lock, so each starts from the configuration the previous one left.
//! - Every outbound call has a timeout; a pause of the leader is always ended (by the new
//!   configuration, or by a resume if recovery fails, or by the pause's own deadline).

use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use protocol::{
    AgentStatus, ClusterConfig, ErrorBody, FailureKind, FailureReport, FenceResponse, JoinRequest, LeaderChanged, Lsn,
    PauseRequest, PauseResponse, PromoteResponse, RecoverRequest, RecoverResponse, RegisterClient, Role,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Mutex;
use uuid::Uuid;

use protocol::supervisor_status::{FailoverReport, NodeReport, RecoveryReport, SupervisorStatus};

use crate::failover::{decide, on_failure_report, with_member, Action, Known, Observed, ReportCheck};
use crate::store::{Persisted, Store, StoreError, StoreSpec};

/// How long recovery may take to apply the bulk of a returning node's missing log.
const BULK_RECOVERY_TIMEOUT: Duration = Duration::from_secs(300);
/// The leader's pause during a recovery's final catch-up ends by itself after this.
const MAX_PAUSE: Duration = Duration::from_secs(3);
/// Control calls (fence, config, tail recovery, promote) must finish within this.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// Fencing the candidate must be quick: the failover waits for it.
const FENCE_TIMEOUT: Duration = Duration::from_secs(1);
/// Configuration pushes and client announcements run in the background with this timeout.
const PUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// Recoveries and failovers remembered for `GET /status`.
const HISTORY: usize = 20;
/// Longest wait before a failed recovery is tried again.
const MAX_RECOVERY_BACKOFF: Duration = Duration::from_secs(10);
/// A candidate that failed this many elections in a row is passed over for a while.
const MAX_PROMOTION_FAILURES: u32 = 2;
/// How long a candidate passed over after failed elections waits, at most, before it may be
/// tried again (the wait doubles with each failure from 1 s): a node that failed once, say
/// its PostgreSQL was restarting, must not stay unelectable forever.
const MAX_PROMOTION_BACKOFF: Duration = Duration::from_secs(30);
/// A member reported again within this long after a report that was refused is removed.
const REPORTED_AGAIN_WITHIN: Duration = Duration::from_secs(30);
/// The supervisor's own probe of a member the leader reports unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// Connecting to an agent: one that takes longer is down or cut off, and a poll must not wait.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
/// How many times the supervisor sends a joining configuration to the leader before it gives up
/// (the recovery is then tried again from the start).
const JOIN_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone)]
pub struct Settings {
    /// The cluster token: sent on every call to an agent, required on the mutating endpoints.
    pub token: Option<String>,
    pub agents: Vec<String>,
    pub poll_interval: Duration,
    pub misses: u32,
    /// The durability floor: the member set never shrinks below it.
    pub min_copies: usize,
    /// Where the configuration is kept: the state file, or etcd.
    pub store: StoreSpec,
    pub state_file: PathBuf,
    /// This supervisor's address as the others and the agents reach it (named in etcd's
    /// `active` key).
    pub advertise: String,
    /// The TTL of the lease on etcd's `active` key: a standby takes over within about this
    /// long after the active supervisor dies.
    pub lease_ttl: Duration,
    /// Tests only: act without holding the lease (the configuration's revision still guards
    /// every write).
    pub act_without_lease: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
struct NodeObs {
    address: String,
    /// Consecutive polls without a healthy answer.
    misses: u32,
    #[serde(skip)]
    last_ok: Option<Instant>,
    status: Option<AgentStatus>,
    error: Option<String>,
}

#[derive(Debug, Default)]
struct History {
    failovers: VecDeque<FailoverReport>,
    recoveries: VecDeque<RecoveryReport>,
    recovering: BTreeSet<String>,
    /// Nodes refused for a diverged log: never recovered automatically.
    diverged: BTreeSet<String>,
    /// Nodes whose last recovery failed: not retried before the instant, and how many times
    /// in a row it failed (the pause doubles each time, up to `MAX_RECOVERY_BACKOFF`).
    retry_after: std::collections::BTreeMap<String, (Instant, u32)>,
    /// Candidates that could not be fenced or promoted: how many times in a row, and until
    /// when they are passed over (from `MAX_PROMOTION_FAILURES` on, with a doubling backoff).
    failed_promotions: std::collections::BTreeMap<String, (u32, Instant)>,
    /// Members the leader reported and the supervisor kept (it could reach them), and when.
    kept_after_report: std::collections::BTreeMap<String, Instant>,
    no_leader: Option<String>,
}

pub struct Supervisor {
    settings: Settings,
    http: reqwest::Client,
    /// Where the configuration is kept, and (with etcd) whether this supervisor is the active one.
    store: Store,
    /// The configuration and clients; the lock serialises every mutation.
    state: Mutex<Persisted>,
    /// The store's revision of `state`: what the next write compares. Changed only under `state`.
    revision: AtomicI64,
    /// Whether `state` was read from the store since this supervisor last became active: it
    /// acts only on a configuration at least as new as the one the previous active one left.
    fresh: AtomicBool,
    /// A copy of the last saved state, for `GET /status`, which must answer even while a
    /// failover or a recovery holds `state`.
    published: SyncMutex<Persisted>,
    observed: SyncMutex<Vec<NodeObs>>,
    history: SyncMutex<History>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn lock<T>(m: &SyncMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn push_bounded<T>(q: &mut VecDeque<T>, item: T) {
    q.push_back(item);
    while q.len() > HISTORY {
        q.pop_front();
    }
}

impl Supervisor {
    /// Opens the store. A state file is read at once (a damaged one stops the start); etcd is
    /// read when this supervisor first becomes active, and meanwhile as a standby.
    pub async fn new(settings: Settings) -> anyhow::Result<Arc<Supervisor>> {
        let store = Store::open(&settings.store, &settings.state_file, settings.act_without_lease)?;
        let (persisted, revision, fresh) = match &settings.store {
            StoreSpec::File => {
                let loaded = store.load().await?;
                (loaded.persisted.unwrap_or_else(Persisted::empty), loaded.revision, true)
            }
            StoreSpec::Etcd { .. } => (Persisted::empty(), 0, false),
        };
        let http = service::client_builder(settings.token.as_deref())?.connect_timeout(CONNECT_TIMEOUT).build()?;
        let observed = settings.agents.iter().map(|a| NodeObs { address: a.clone(), ..Default::default() }).collect();
        Ok(Arc::new(Supervisor {
            settings,
            http,
            store,
            published: SyncMutex::new(persisted.clone()),
            state: Mutex::new(persisted),
            revision: AtomicI64::new(revision),
            fresh: AtomicBool::new(fresh),
            observed: SyncMutex::new(observed),
            history: SyncMutex::new(History::default()),
        }))
    }

    /// Whether this supervisor acts now: it holds the lease (always, with a state file) and has
    /// read the configuration since it took it.
    fn acting(&self) -> bool {
        self.store.is_active() && self.fresh.load(Ordering::SeqCst)
    }

    /// Writes `next` in place of `state` if nobody else wrote since `state` was read. When
    /// another supervisor did, or this one is no longer active, `state` becomes what the store
    /// holds now and the error says why: the caller starts again from it, or stops.
    async fn save(&self, state: &mut Persisted, next: Persisted) -> Result<(), StoreError> {
        if !self.acting() {
            return Err(StoreError::NotActive);
        }
        let expected = self.revision.load(Ordering::SeqCst);
        match self.store.save(&next, expected).await {
            Ok(revision) => {
                self.revision.store(revision, Ordering::SeqCst);
                *state = next;
                *lock(&self.published) = state.clone();
                Ok(())
            }
            Err(e) => {
                if matches!(e, StoreError::Conflict(_) | StoreError::NotActive) {
                    tracing::warn!(error = %e, "the configuration was not written; reading the store again");
                    self.fresh.store(false, Ordering::SeqCst);
                    if let Err(r) = self.reload(state).await {
                        tracing::warn!(error = %r, "could not read the configuration store");
                    }
                }
                Err(e)
            }
        }
    }

    /// Replaces `state` with what the store holds (kept as is when the store holds nothing yet).
    async fn reload(&self, state: &mut Persisted) -> Result<(), StoreError> {
        let loaded = self.store.load().await?;
        if let Some(persisted) = loaded.persisted {
            *state = persisted;
        }
        self.revision.store(loaded.revision, Ordering::SeqCst);
        *lock(&self.published) = state.clone();
        Ok(())
    }

    /// With etcd: holds (or tries to take) the lease on the `active` key, every poll interval,
    /// apart from the polls so that an unreachable etcd never slows them. A standby reads the
    /// configuration each time, so that its `/status` is current and a takeover starts from it.
    async fn campaign(self: Arc<Self>) {
        if matches!(self.settings.store, StoreSpec::File) {
            return;
        }
        let mut tick = tokio::time::interval(self.settings.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_active = false;
        loop {
            tick.tick().await;
            if self.store.campaign(&self.settings.advertise, self.settings.lease_ttl).await {
                tracing::warn!(address = %self.settings.advertise, "this supervisor is now the active one");
            }
            let active = self.store.is_active();
            if was_active && !active {
                tracing::warn!("this supervisor is no longer the active one: it stops acting");
                self.fresh.store(false, Ordering::SeqCst);
            }
            was_active = active;
            if !active || !self.fresh.load(Ordering::SeqCst) {
                let mut state = self.state.lock().await;
                match self.reload(&mut state).await {
                    Ok(()) => self.fresh.store(active, Ordering::SeqCst),
                    Err(e) => tracing::debug!(error = %e, "could not read the configuration store"),
                }
            }
        }
    }

    /// Gives up the lease (with etcd) so that a standby takes over at once.
    pub async fn resign(&self) {
        self.store.resign().await;
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T, String> {
        let url = format!("http://{addr}{path}");
        let req = match body {
            Some(body) => self.http.post(url).json(body),
            None => self.http.get(url),
        };
        let resp = req.timeout(timeout).send().await.map_err(|e| format!("{addr} did not answer: {e}"))?;
        let status = resp.status();
        if status.is_success() {
            return resp.json().await.map_err(|e| format!("{addr} sent an unreadable answer: {e}"));
        }
        let message = resp.json::<ErrorBody>().await.map(|b| b.message).unwrap_or_default();
        Err(format!("{addr} answered {status}: {message}"))
    }

    /// Polls forever; acts only while active (always, with a state file).
    pub async fn run(self: Arc<Self>) {
        tokio::spawn(self.clone().campaign());
        let mut tick = tokio::time::interval(self.settings.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.poll().await;
            if self.acting() {
                self.adopt_newer_config().await;
                self.step().await;
            }
        }
    }

    async fn poll(&self) {
        let timeout = self.settings.poll_interval.max(Duration::from_millis(250));
        // The poll carries the current term, so a leader of an older term steps down as soon as
        // it answers (a resumed SIGSTOP, a healed partition), before it is fenced.
        let health_path = format!("/health?term={}", lock(&self.published).config.term);
        let health_path = health_path.as_str();
        let results = futures::future::join_all(self.settings.agents.iter().map(|addr| async move {
            let health: Result<serde_json::Value, String> = self.call::<(), _>(addr, health_path, None, timeout).await;
            // A frozen agent costs one timeout per poll, not two: detection time stays bounded.
            let status: Result<AgentStatus, String> = match &health {
                Ok(_) => self.call::<(), _>(addr, "/status", None, timeout).await,
                Err(e) if e.contains("answered") => self.call::<(), _>(addr, "/status", None, timeout).await,
                Err(e) => Err(e.clone()),
            };
            (health, status)
        }))
        .await;
        let mut observed = lock(&self.observed);
        for (obs, (health, status)) in observed.iter_mut().zip(results) {
            match health {
                Ok(_) => {
                    obs.misses = 0;
                    obs.last_ok = Some(Instant::now());
                    obs.error = None;
                }
                Err(e) => {
                    obs.misses = obs.misses.saturating_add(1);
                    obs.error = Some(e);
                }
            }
            obs.status = status.ok();
        }
    }

    fn observed(&self) -> Vec<Observed> {
        lock(&self.observed)
            .iter()
            .map(|o| Observed {
                address: o.address.clone(),
                alive: o.misses < self.settings.misses && o.last_ok.is_some(),
                status: o.status.clone(),
            })
            .collect()
    }

    /// A restarted supervisor, or one whose state file is behind, adopts the newest
    /// configuration any agent reports (the highest term wins).
    async fn adopt_newer_config(&self) {
        let newest = lock(&self.observed)
            .iter()
            .filter_map(|o| o.status.as_ref())
            .map(|s| ClusterConfig {
                term: s.term,
                version: s.config_version,
                leader: s.leader.clone(),
                members: s.members.clone(),
            })
            .max_by_key(|c| (c.term, c.version));
        let Some(newest) = newest else { return };
        let mut state = self.state.lock().await;
        if newest.is_newer_than(&state.config) {
            tracing::info!(term = newest.term, version = newest.version, leader = ?newest.leader, "adopting the newest configuration an agent reports");
            let next = Persisted { config: newest, ..state.clone() };
            if let Err(e) = self.save(&mut state, next).await {
                tracing::error!(error = %e, "could not store the adopted configuration");
            }
        }
    }

    async fn step(self: &Arc<Self>) {
        // Decide only once every agent is known: answered at least once, or missed enough polls
        // to count as down. Otherwise a whole-cluster restart would elect whichever agent
        // happened to start first.
        let still_learning =
            lock(&self.observed).iter().any(|o| o.last_ok.is_none() && o.misses < self.settings.misses);
        if still_learning {
            return;
        }
        let observed = self.observed();
        let (config, recovering, unelectable, cluster_id) = {
            let mut state = self.state.lock().await;
            self.learn_cluster_id(&mut state, &observed).await;
            let history = lock(&self.history);
            let now = Instant::now();
            let backing_off = history.retry_after.iter().filter(|(_, (until, _))| *until > now).map(|(n, _)| n);
            let skip: Vec<String> =
                history.recovering.iter().chain(&history.diverged).chain(backing_off).cloned().collect();
            let unelectable: Vec<String> = history
                .failed_promotions
                .iter()
                .filter(|(_, (failures, until))| *failures >= MAX_PROMOTION_FAILURES && *until > now)
                .map(|(n, _)| n.clone())
                .collect();
            (state.config.clone(), skip, unelectable, state.cluster_id)
        };
        if config.term == 0 {
            return; // no configuration adopted yet
        }
        let known = Known { min_copies: self.settings.min_copies, cluster_id };
        match decide(&config, &self.settings.agents, &observed, &recovering, &unelectable, known) {
            Action::Steady => lock(&self.history).no_leader = None,
            Action::NoLeaderPossible { reason } => {
                let mut history = lock(&self.history);
                if history.no_leader.as_deref() != Some(reason.as_str()) {
                    tracing::error!(%reason, "writes unavailable");
                }
                history.no_leader = Some(reason);
            }
            Action::Failover { old_leader, candidate, config: next } => {
                self.failover(&config, old_leader, candidate, next).await
            }
            Action::Promote { candidate, config: next } => {
                tracing::warn!(%candidate, term = next.term, "the named leader does not lead: finishing its election");
                self.failover(&config, None, candidate, next).await
            }
            Action::Recover { node } => {
                lock(&self.history).recovering.insert(node.clone());
                let me = self.clone();
                tokio::spawn(async move {
                    let report = me.recover(&node).await;
                    let mut history = lock(&me.history);
                    history.recovering.remove(&node);
                    if report.message.starts_with("diverged") {
                        history.diverged.insert(node.clone());
                    }
                    if report.ok {
                        history.retry_after.remove(&node);
                    } else {
                        let failures = history.retry_after.get(&node).map_or(0, |(_, n)| *n) + 1;
                        let pause = (Duration::from_millis(250) * 2u32.saturating_pow(failures.min(8)))
                            .min(MAX_RECOVERY_BACKOFF);
                        history.retry_after.insert(node.clone(), (Instant::now() + pause, failures));
                    }
                    push_bounded(&mut history.recoveries, report);
                });
            }
        }
    }

    /// Sends `config` to every agent in the background: an agent that is frozen or gone must
    /// not hold up the supervisor (each learns the configuration later by fence or recovery).
    fn push_config(self: &Arc<Self>, config: &ClusterConfig) {
        for addr in self.settings.agents.clone() {
            let (me, config) = (self.clone(), config.clone());
            tokio::spawn(async move {
                let r: Result<AgentStatus, String> =
                    me.call(&addr, "/internal/config", Some(&config), PUSH_TIMEOUT).await;
                if let Err(e) = r {
                    tracing::debug!(%addr, error = %e, "configuration not delivered");
                }
            });
        }
    }

    async fn failover(
        self: &Arc<Self>,
        current: &ClusterConfig,
        old_leader: Option<String>,
        candidate: String,
        next: ClusterConfig,
    ) {
        let decided = Instant::now();
        let last_ok = old_leader
            .as_ref()
            .and_then(|old| lock(&self.observed).iter().find(|o| &o.address == old).and_then(|o| o.last_ok));
        let mut state = self.state.lock().await;
        if state.config != *current {
            return;
        }
        // 1. The new term is durable before anyone hears of it, and only if no other
        //    supervisor wrote since this one read: two can never both win a term.
        let stored = Persisted { config: next.clone(), ..state.clone() };
        if let Err(e) = self.save(&mut state, stored).await {
            tracing::error!(error = %e, "could not store the new term; not failing over");
            return;
        }
        tracing::warn!(old = ?old_leader, new = %candidate, term = next.term, "leader failed: electing the next member");
        // 2. Fence every reachable agent with the new term. Only the candidate's fence is waited
        //    for: once it refuses the old term, the old leader (which needs every member's YES)
        //    cannot commit again; the others are fenced in the background.
        for addr in self.settings.agents.iter().filter(|a| **a != candidate) {
            let (me, next, addr) = (self.clone(), next.clone(), addr.clone());
            tokio::spawn(async move {
                let r: Result<FenceResponse, String> =
                    me.call(&addr, "/internal/fence", Some(&next), FENCE_TIMEOUT).await;
                if let Err(e) = r {
                    tracing::debug!(%addr, error = %e, "not fenced (unreachable)");
                }
            });
        }
        let fenced: Result<FenceResponse, String> =
            self.call(&candidate, "/internal/fence", Some(&next), FENCE_TIMEOUT).await;
        if let Err(e) = fenced {
            tracing::error!(%candidate, error = %e, "the candidate could not be fenced; trying again at the next poll");
            self.promotion_failed(&candidate);
            return;
        }
        // 3. The new leader resolves in-doubt batches, then takes commits.
        let promoted: Result<PromoteResponse, String> =
            self.call(&candidate, "/internal/promote", Some(&next), CONTROL_TIMEOUT).await;
        let promoted = match promoted {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(%candidate, error = %e, "promotion failed; a new election follows at the next poll");
                self.promotion_failed(&candidate);
                return;
            }
        };
        drop(state);
        let report = FailoverReport {
            at_ms: now_ms(),
            old_leader: old_leader.clone(),
            new_leader: candidate.clone(),
            term: next.term,
            detection_ms: last_ok.map_or(0, |t| decided.saturating_duration_since(t).as_millis() as u64),
            election_ms: decided.elapsed().as_millis() as u64,
            unavailable_ms: last_ok.map_or(0, |t| t.elapsed().as_millis() as u64),
            in_doubt_committed: promoted.in_doubt_committed,
            in_doubt_aborted: promoted.in_doubt_aborted,
        };
        tracing::warn!(
            old = ?old_leader, new = %candidate, term = next.term,
            detection_ms = report.detection_ms, election_ms = report.election_ms,
            unavailable_ms = report.unavailable_ms,
            in_doubt_committed = report.in_doubt_committed, in_doubt_aborted = report.in_doubt_aborted,
            "failover done: writes unavailable for {} ms", report.unavailable_ms
        );
        metrics::counter!("rmw_failovers_total").increment(1);
        metrics::histogram!("rmw_failover_unavailable_seconds").record(report.unavailable_ms as f64 / 1000.0);
        {
            let mut history = lock(&self.history);
            history.failed_promotions.clear();
            push_bounded(&mut history.failovers, report);
        }
        self.push_config(&next);
        let me = self.clone();
        tokio::spawn(async move { me.announce(&candidate, next.term).await });
    }

    /// Learns the cluster's id from the leader of the configuration once it reports one (the
    /// first leader of a new cluster makes it; a supervisor that lost its state file learns it
    /// again the same way).
    async fn learn_cluster_id(&self, state: &mut Persisted, observed: &[Observed]) {
        if state.cluster_id.is_some() {
            return;
        }
        let Some(leader) = state.config.leader.as_deref() else { return };
        let reported = observed
            .iter()
            .find(|o| o.address == leader && o.alive)
            .and_then(|o| o.status.as_ref())
            .filter(|s| s.role == Role::Leader && s.term == state.config.term)
            .and_then(|s| s.cluster_id);
        if let Some(id) = reported {
            tracing::info!(cluster_id = %id, "learnt the cluster's id from its leader");
            let next = Persisted { cluster_id: Some(id), ..state.clone() };
            if let Err(e) = self.save(state, next).await {
                tracing::error!(error = %e, "could not store the cluster's id");
            }
        }
    }

    /// Counts a failed election of `candidate`; from `MAX_PROMOTION_FAILURES` on it is passed
    /// over for a doubling while.
    fn promotion_failed(&self, candidate: &str) {
        let mut history = lock(&self.history);
        let entry = history.failed_promotions.entry(candidate.to_string()).or_insert((0, Instant::now()));
        entry.0 += 1;
        entry.1 = Instant::now() + promotion_backoff(entry.0);
    }

    /// Tells every registered client the new leader (`POST /leader_changed/`).
    async fn announce(&self, leader: &str, term: i64) {
        let clients = self.state.lock().await.clients.clone();
        let body = LeaderChanged { leader: leader.to_string(), term: Some(term) };
        futures::future::join_all(clients.iter().map(|url| {
            let req = self.http.post(url).json(&body).timeout(PUSH_TIMEOUT).send();
            async move {
                if let Err(e) = req.await {
                    tracing::warn!(%url, error = %e, "could not tell a client the new leader");
                }
            }
        }))
        .await;
    }

    /// Brings `node` back: bulk catch-up, then a short pause of the leader for the tail, then
    /// membership (DESIGN 6).
    async fn recover(self: &Arc<Self>, node: &str) -> RecoveryReport {
        let started = Instant::now();
        let mut report = RecoveryReport {
            node: node.to_string(),
            at_ms: now_ms(),
            ok: false,
            message: String::new(),
            entries_applied: 0,
            duration_ms: 0,
            commit_pause_ms: None,
        };
        let result = self.try_recover(node, &mut report).await;
        report.duration_ms = started.elapsed().as_millis() as u64;
        metrics::counter!("rmw_recoveries_total", "result" => if result.is_ok() { "ok" } else { "failed" })
            .increment(1);
        if let (Ok(()), Some(pause)) = (&result, report.commit_pause_ms) {
            metrics::histogram!("rmw_recovery_seconds").record(report.duration_ms as f64 / 1000.0);
            metrics::histogram!("rmw_recovery_pause_seconds").record(pause as f64 / 1000.0);
        }
        match result {
            Ok(()) => {
                report.ok = true;
                report.message = "in sync and back in the member set".into();
                tracing::info!(%node, entries = report.entries_applied, duration_ms = report.duration_ms,
                    commit_pause_ms = ?report.commit_pause_ms, "recovery done");
            }
            Err(e) => {
                tracing::warn!(%node, error = %e, "recovery did not finish; it will be tried again");
                report.message = e;
            }
        }
        report
    }

    async fn try_recover(self: &Arc<Self>, node: &str, report: &mut RecoveryReport) -> Result<(), String> {
        let (config, cluster_id) = {
            let state = self.state.lock().await;
            (state.config.clone(), state.cluster_id)
        };
        let leader = config.leader.clone().ok_or("no leader to recover from")?;
        let _: FenceResponse = self.call(node, "/internal/fence", Some(&config), CONTROL_TIMEOUT).await?;
        let req = RecoverRequest { term: config.term, leader: leader.clone(), cluster_id };
        let bulk: RecoverResponse =
            self.call(node, "/internal/recover", Some(&req), BULK_RECOVERY_TIMEOUT).await.map_err(diverged)?;
        report.entries_applied += bulk.entries_applied;

        let mut state = self.state.lock().await;
        if state.config != config {
            return Err("the configuration changed during recovery".into());
        }
        let paused_at = Instant::now();
        let pause = PauseRequest { term: config.term, max_ms: MAX_PAUSE.as_millis() as u64 };
        // Bounded by the pause's own length: a leader stuck in a round must not hold the
        // supervisor (and so any failover) for long.
        let paused: PauseResponse = self.call(&leader, "/internal/pause", Some(&pause), MAX_PAUSE).await?;
        let tail: Result<RecoverResponse, String> =
            self.call(node, "/internal/recover", Some(&req), CONTROL_TIMEOUT).await;
        let next = with_member(&config, &self.settings.agents, node);
        let caught_up = match tail {
            Ok(tail) => {
                report.entries_applied += tail.entries_applied;
                caught_up_to(tail.applied_lsn, paused.applied_lsn)
            }
            Err(e) => Err(diverged(e)),
        };
        // Step one: the leader stores the new member set, and only if its log still ends where
        // the node's does (it checks that itself, with no round in flight). Adopting it ends
        // the pause. Step two, below: the supervisor records it.
        let joined = match caught_up {
            Ok(lsn) => self.join(&leader, &next, lsn).await,
            Err(e) => Err(e),
        };
        report.commit_pause_ms = Some(paused_at.elapsed().as_millis() as u64);
        if let Err(e) = joined {
            // The old configuration ends the pause; the leader never took the new one.
            let resumed: Result<AgentStatus, String> =
                self.call(&leader, "/internal/config", Some(&config), CONTROL_TIMEOUT).await;
            if let Err(r) = resumed {
                tracing::warn!(error = %r, "the leader did not confirm the resume; its pause ends by itself");
            }
            return Err(e);
        }
        let stored = Persisted { config: next.clone(), ..state.clone() };
        // Not stored (the store is down, another supervisor acts): the leader has the new
        // member set and reports it on every poll; the active supervisor adopts it from there.
        self.save(&mut state, stored).await.map_err(|e| e.to_string())?;
        drop(state);
        self.push_config(&next);
        Ok(())
    }

    /// Sends `next` to the leader until it confirms it stored it (or refuses it for good):
    /// the joining node must not count as a member anywhere before the leader has it.
    async fn join(&self, leader: &str, next: &ClusterConfig, applied_lsn: Lsn) -> Result<(), String> {
        let req = JoinRequest { config: next.clone(), applied_lsn };
        let mut last = String::new();
        for attempt in 1..=JOIN_ATTEMPTS {
            match self.call::<_, AgentStatus>(leader, "/internal/join", Some(&req), CONTROL_TIMEOUT).await {
                Ok(status) if status.config_version == next.version && status.term == next.term => return Ok(()),
                Ok(status) => {
                    last = format!("the leader answered with configuration version {}", status.config_version)
                }
                // Refused: the leader's log moved past the node's, or the term changed. The
                // recovery starts over; nothing was adopted.
                Err(e) if e.contains("409") => return Err(e),
                Err(e) => last = e,
            }
            // The answer may have been lost after the leader stored it: its status tells.
            let status: Result<AgentStatus, String> = self.call::<(), _>(leader, "/status", None, PUSH_TIMEOUT).await;
            if let Ok(status) = status {
                if status.term == next.term && status.config_version >= next.version {
                    return Ok(());
                }
            }
            tracing::warn!(attempt, error = %last, "the leader did not confirm the joining configuration; sending it again");
        }
        Err(format!("the leader did not confirm the new member set: {last}"))
    }

    /// A member that must stay (the floor) but voted NO because it is behind: it catches up
    /// from the leader's log where it is. The leader cannot commit without it meanwhile, so
    /// no entry can slip past.
    fn recover_in_place(self: Arc<Self>, member: String, config: ClusterConfig, cluster_id: Option<Uuid>) {
        {
            let mut history = lock(&self.history);
            if !history.recovering.insert(member.clone()) {
                return;
            }
        }
        tokio::spawn(async move {
            let result: Result<RecoverResponse, String> = match config.leader.clone() {
                Some(leader) => {
                    let req = RecoverRequest { term: config.term, leader, cluster_id };
                    self.call(&member, "/internal/recover", Some(&req), BULK_RECOVERY_TIMEOUT).await
                }
                None => Err("no leader".into()),
            };
            match &result {
                Ok(r) => {
                    tracing::info!(%member, entries = r.entries_applied, "a member behind the leader caught up in place")
                }
                Err(e) => tracing::warn!(%member, error = %e, "a member behind the leader could not catch up in place"),
            }
            lock(&self.history).recovering.remove(&member);
        });
    }

    async fn status(&self) -> SupervisorStatus {
        let Persisted { config, clients, cluster_id } = lock(&self.published).clone();
        let observed = lock(&self.observed).clone();
        let history = lock(&self.history);
        let leader_applied = config
            .leader
            .as_ref()
            .and_then(|l| observed.iter().find(|o| &o.address == l))
            .and_then(|o| o.status.as_ref().map(|s| s.applied_lsn));
        let alive = |o: &NodeObs| o.misses < self.settings.misses && o.last_ok.is_some();
        let nodes: Vec<NodeReport> = observed
            .iter()
            .map(|o| NodeReport {
                address: o.address.clone(),
                alive: alive(o),
                member: config.members.contains(&o.address),
                role: o.status.as_ref().map(|s| s.role),
                term: o.status.as_ref().map(|s| s.term),
                applied_lsn: o.status.as_ref().map(|s| s.applied_lsn),
                lag: match (leader_applied, o.status.as_ref()) {
                    (Some(l), Some(s)) => Some((l - s.applied_lsn).max(0)),
                    _ => None,
                },
                error: o.error.clone(),
                status: o.status.clone(),
            })
            .collect();
        let leader_serving = config.leader.as_ref().is_some_and(|l| {
            observed
                .iter()
                .any(|o| &o.address == l && alive(o) && o.status.as_ref().is_some_and(|s| s.role == Role::Leader))
        });
        let answering = config.members.iter().filter(|m| observed.iter().any(|o| &o.address == *m && alive(o))).count();
        let members_alive = answering == config.members.len();
        let writes_available = leader_serving && members_alive;
        let active = self.acting();
        let (holder, store_error) = self.store.active_holder();
        let active_supervisor = if active { Some(self.settings.advertise.clone()) } else { holder };
        let message = if writes_available {
            format!("writes go to {}", config.leader.clone().unwrap_or_default())
        } else if let Some(reason) = &history.no_leader {
            reason.clone()
        } else if !leader_serving {
            "no leader is serving: a failover is in progress or pending".into()
        } else if answering < self.settings.min_copies {
            format!(
                "{answering} of {} members answer, below the durability floor of {}: commits answer 503 \
                 not_enough_replicas until one is back (reads go on)",
                config.members.len(),
                self.settings.min_copies
            )
        } else {
            "a member does not answer the supervisor: commits wait for it until the leader reports it and it is \
             removed, or it answers again"
                .into()
        };
        SupervisorStatus {
            store: self.store.describe(),
            active,
            active_supervisor,
            store_error,
            cluster_id,
            min_copies: self.settings.min_copies,
            term: config.term,
            config_version: config.version,
            leader: config.leader.clone(),
            members: config.members.clone(),
            writes_available,
            message,
            nodes,
            last_failover: history.failovers.back().cloned(),
            failovers: history.failovers.iter().cloned().collect(),
            recovering: history.recovering.iter().cloned().collect(),
            recoveries: history.recoveries.iter().cloned().collect(),
            diverged: history.diverged.iter().cloned().collect(),
            clients,
        }
    }
}

/// How long a candidate that failed `failures` elections in a row is passed over: not at all
/// before `MAX_PROMOTION_FAILURES`, then 1 s, doubling up to `MAX_PROMOTION_BACKOFF`. It always
/// ends: a node that failed while, say, its PostgreSQL restarted must be electable again.
fn promotion_backoff(failures: u32) -> Duration {
    if failures < MAX_PROMOTION_FAILURES {
        return Duration::ZERO;
    }
    (Duration::from_secs(1) * 2u32.saturating_pow((failures - MAX_PROMOTION_FAILURES).min(8)))
        .min(MAX_PROMOTION_BACKOFF)
}

/// Where a recovery's tail left the node, against the LSN the leader paused at: short of it is
/// a retry; beyond it is not divergence (the pause ended by itself and the leader committed
/// more, which the tail fetched): the leader's own check at the join decides.
fn caught_up_to(node_lsn: Lsn, paused_lsn: Lsn) -> Result<Lsn, String> {
    if node_lsn < paused_lsn {
        return Err(format!("the node reached LSN {node_lsn} but the leader is at {paused_lsn}; trying again"));
    }
    Ok(node_lsn)
}

/// A recovery refused for divergence says so first, so it is not retried blindly.
fn diverged(e: String) -> String {
    if e.contains("diverged") {
        format!("diverged: {e}")
    } else {
        e
    }
}

pub fn router(sup: Arc<Supervisor>) -> Router {
    let guarded =
        Router::new().route("/register_client/", post(register_client)).route("/report_failure", post(report_failure));
    let guarded = service::guard(guarded, sup.settings.token.as_deref());
    // The document describes this supervisor as configured (with or without the token).
    let spec: Arc<str> = crate::openapi::json(sup.settings.token.is_some()).into();
    Router::new()
        .route(
            "/openapi.json",
            get(move || async move { ([(axum::http::header::CONTENT_TYPE, "application/json")], spec.to_string()) }),
        )
        .route("/status", get(status))
        .route("/health", get(|| async { Json(serde_json::json!({"status": "ok"})) }))
        .route("/metrics", get(metrics_text))
        .merge(guarded)
        .with_state(sup)
}

/// A standby (with etcd) does not change the configuration: 503 `standby`, naming the active
/// supervisor, so that the caller tries the next supervisor it knows.
fn standby_refusal(sup: &Supervisor) -> Option<Response> {
    if sup.acting() {
        return None;
    }
    let (holder, store_error) = sup.store.active_holder();
    let message = match (holder, store_error) {
        (_, Some(e)) => format!("this supervisor is not active: it cannot reach the configuration store ({e})"),
        (Some(active), None) => format!("this supervisor is a standby; the active one is {active}"),
        (None, None) => "this supervisor is a standby and no supervisor is active yet; try again shortly".into(),
    };
    Some(error(StatusCode::SERVICE_UNAVAILABLE, "standby", message))
}

/// A change that could not be stored: 503 when trying again may help (another supervisor
/// wrote first, the store is unreachable, this one stopped being active), 500 otherwise.
fn store_error(e: StoreError) -> Response {
    match e {
        StoreError::NotActive => error(StatusCode::SERVICE_UNAVAILABLE, "standby", e.to_string()),
        StoreError::Conflict(_) | StoreError::Unavailable(_) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", format!("could not store the change: {e}"))
        }
        StoreError::Corrupt(_) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("could not store the change: {e}"))
        }
    }
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(ErrorBody { error: code.into(), message, leader: None, term: None })).into_response()
}

/// `GET /metrics`: counters and histograms as recorded, gauges from the last polls.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
        (status = 503, description = "Metrics are not enabled in this process", body = ErrorBody),
    ))]
async fn metrics_text(State(sup): State<Arc<Supervisor>>) -> Response {
    let status = sup.status().await;
    metrics::gauge!("rmw_term").set(status.term as f64);
    metrics::gauge!("rmw_writes_available").set(if status.writes_available { 1.0 } else { 0.0 });
    metrics::gauge!("rmw_members").set(status.members.len() as f64);
    for node in &status.nodes {
        let labels = [("node", node.address.clone())];
        metrics::gauge!("rmw_node_alive", &labels).set(if node.alive { 1.0 } else { 0.0 });
        if let Some(lsn) = node.applied_lsn {
            metrics::gauge!("rmw_node_applied_lsn", &labels).set(lsn as f64);
        }
        if let Some(lag) = node.lag {
            metrics::gauge!("rmw_node_lag", &labels).set(lag as f64);
        }
    }
    match crate::METRICS.get() {
        Some(handle) => {
            ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response()
        }
        None => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "metrics are not enabled in this process".into()),
    }
}

/// `GET /status`: the cluster as the supervisor sees it, from its last polls.
#[utoipa::path(get, path = "/status", tag = "operations",
    responses((status = 200, description = "Term, leader, members, every node, failovers and recoveries", body = SupervisorStatus)))]
async fn status(State(sup): State<Arc<Supervisor>>) -> Json<SupervisorStatus> {
    Json(sup.status().await)
}

/// `POST /register_client/`: a client asks to be told every new leader.
#[utoipa::path(post, path = "/register_client/", tag = "clients",
    request_body(content = RegisterClient, description = "The client's `/leader_changed/` URL"),
    security(("cluster_token" = [])),
    responses(
        (status = 200, description = "Registered (kept in the store); the current leader", body = crate::openapi::Registered),
        (status = 503, description = "A standby supervisor (`standby`: register with the active one), or the store is unavailable", body = ErrorBody),
        (status = 400, description = "Not JSON, or a URL that is not http(s)", body = ErrorBody),
        (status = 413, description = "A body over 2 MiB (axum's default limit)", body = String, content_type = "text/plain"),
    ))]
async fn register_client(State(sup): State<Arc<Supervisor>>, body: axum::body::Bytes) -> Response {
    let req: RegisterClient = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", format!("invalid JSON body: {e}")),
    };
    if reqwest::Url::parse(&req.url).map_or(true, |u| u.scheme() != "http" && u.scheme() != "https") {
        return error(StatusCode::BAD_REQUEST, "bad_request", format!("url {:?} is not an http(s) URL", req.url));
    }
    if let Some(refused) = standby_refusal(&sup) {
        return refused;
    }
    let mut state = sup.state.lock().await;
    if !state.clients.contains(&req.url) {
        let mut next = state.clone();
        next.clients.push(req.url.clone());
        if let Err(e) = sup.save(&mut state, next).await {
            return store_error(e);
        }
    }
    Json(serde_json::json!({"registered": req.url, "leader": state.config.leader, "term": state.config.term}))
        .into_response()
}

/// `POST /report_failure`: the leader could not reach a member.
#[utoipa::path(post, path = "/report_failure", tag = "agents",
    request_body(content = FailureReport, description = "The leader's term and the member it could not reach"),
    security(("cluster_token" = [])),
    responses(
        (status = 200, description = "The configuration without that member (or unchanged, if it was already removed)", body = ClusterConfig),
        (status = 400, description = "Not JSON", body = ErrorBody),
        (status = 413, description = "A body over 2 MiB (axum's default limit)", body = String, content_type = "text/plain"),
        (status = 409, description = "A report from another term, or about the leader itself (`refused`)", body = ErrorBody),
        (status = 503, description = "A standby supervisor (`standby`: try the next one), or the change could not be stored (`store_unavailable`)", body = ErrorBody),
        (status = 500, description = "The store holds something unreadable", body = ErrorBody),
    ))]
async fn report_failure(State(sup): State<Arc<Supervisor>>, body: axum::body::Bytes) -> Response {
    let report: FailureReport = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", format!("invalid JSON body: {e}")),
    };
    if let Some(refused) = standby_refusal(&sup) {
        return refused;
    }
    // The supervisor's own view of the member, taken before the state lock: a member the
    // leader cannot reach but the supervisor can may be cut from the leader only.
    let supervisor_reaches = report.kind == FailureKind::Unreachable
        && sup.call::<(), serde_json::Value>(&report.member, "/health", None, PROBE_TIMEOUT).await.is_ok();
    let reported_before =
        lock(&sup.history).kept_after_report.get(&report.member).is_some_and(|at| at.elapsed() < REPORTED_AGAIN_WITHIN);
    let check = ReportCheck { supervisor_reaches, reported_before };
    let mut state = sup.state.lock().await;
    match on_failure_report(&state.config, &report, check, sup.settings.min_copies) {
        Err(refusal) => {
            tracing::warn!(member = %report.member, kind = ?report.kind, reason = %report.reason,
                refused = %refusal.message, "kept a member the leader reported");
            lock(&sup.history).kept_after_report.insert(report.member.clone(), Instant::now());
            if refusal.at_floor && report.kind == FailureKind::VotedNo {
                // It stays (the floor) but is behind: bring it up to date where it is.
                sup.clone().recover_in_place(report.member.clone(), state.config.clone(), state.cluster_id);
            }
            error(StatusCode::CONFLICT, "refused", refusal.message)
        }
        Ok(next) => {
            if next != state.config {
                tracing::warn!(member = %report.member, kind = ?report.kind, reason = %report.reason,
                    "the leader reported a member, with evidence: removing it");
                let stored = Persisted { config: next.clone(), ..state.clone() };
                if let Err(e) = sup.save(&mut state, stored).await {
                    return store_error(e);
                }
                lock(&sup.history).kept_after_report.remove(&report.member);
                // The leader gets the configuration in this answer; the others by push.
                sup.push_config(&next);
            }
            Json(next).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let short = caught_up_to(40, 50).unwrap_err();
        assert!(short.contains("trying again") && !short.starts_with("diverged"), "{short}");
    }
}
