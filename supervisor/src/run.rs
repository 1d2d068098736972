//! The supervisor's runtime loop: every poll interval it polls the agents ([`crate::polling`]),
//! adopts what they report of a newer configuration, asks [`crate::failover::decide`] what to do
//! and carries the [`Action`] out: an election ([`crate::election`]) or the recovery of a
//! returning node ([`crate::recovery`]). Member removals arrive from the leader over HTTP
//! ([`crate::membership`], [`crate::api`]), planned changes from an operator
//! ([`crate::switchover`], [`crate::operator`]).
//!
//! Invariants kept here:
//! - Only an active supervisor acts (always, with a state file); a standby polls and reports.
//! - Nothing is decided before every agent is known: answered once, or missed enough polls to
//!   count as down.
//! - The agents are the stored node list (`Persisted::nodes`, which an operator changes), or
//!   `--agents` until one does: polls, pushes, elections and recoveries all read the same list.
//! - In maintenance (`Persisted::maintenance`) nothing is elected or recovered automatically;
//!   the polls, the leader's failure reports and the operator's own acts go on.
//! - Every outbound call has a timeout; a pause of the leader is always ended (by the new
//!   configuration, or by a resume if recovery fails, or by the pause's own deadline).
//! - Configuration pushes run in the background: a frozen agent never holds up the supervisor.

use std::path::PathBuf;
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use protocol::operator::{HistoryEvent, HistoryKind};
use protocol::supervisor_status::SupervisorStatus;
use protocol::{ClusterConfig, Term};

use crate::agent_client::AgentClient;
use crate::config_keeper::{lock, ConfigKeeper};
use crate::failover::{decide, reported_cluster_id, Action, Known, Observed};
use crate::history::{push_event, History};
use crate::polling::Observations;
use crate::status::{cluster_status, Standing};
use crate::store::{Persisted, StoreSpec};

/// Configuration pushes and client announcements run in the background with this timeout.
pub(crate) const PUSH_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// TLS (`--tls-*`): the supervisor serves HTTPS and calls the agents and clients over
    /// HTTPS; with client auth `/report_failure` and `/register_client/` need a certificate
    /// from the CA.
    pub tls: Option<service::Tls>,
}

pub struct Supervisor {
    pub(crate) settings: Settings,
    pub(crate) agents: AgentClient,
    /// The configuration and clients, kept in step with the store.
    pub(crate) config: ConfigKeeper,
    pub(crate) observations: Observations,
    /// Held for microseconds, never across a call.
    pub(crate) history: SyncMutex<History>,
}

/// One event of the durable history, at the current time.
pub(crate) fn event(kind: HistoryKind, node: Option<&str>, term: Term, ok: bool, message: String) -> HistoryEvent {
    HistoryEvent { at_ms: now_ms(), kind, node: node.map(str::to_string), term, ok, message }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Supervisor {
    /// Opens the store. A state file is read at once (a damaged one stops the start); etcd is
    /// read when this supervisor first becomes active, and meanwhile as a standby.
    pub async fn new(settings: Settings) -> anyhow::Result<Arc<Supervisor>> {
        let config = ConfigKeeper::open(&settings.store, &settings.state_file, settings.act_without_lease).await?;
        let agents = AgentClient::new(settings.token.as_deref(), settings.tls.as_ref())?;
        let observations = Observations::new(&settings.agents, settings.misses);
        Ok(Arc::new(Supervisor { settings, agents, config, observations, history: SyncMutex::default() }))
    }

    /// Gives up the lease (with etcd) so that a standby takes over at once.
    pub async fn resign(&self) {
        self.config.resign().await;
    }

    /// Polls forever; acts only while active (always, with a state file).
    pub async fn run(self: Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let s = &me.settings;
            me.config.campaign(&s.store, &s.advertise, s.lease_ttl, s.poll_interval).await
        });
        let mut tick = tokio::time::interval(self.settings.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let term = self.config.published_term();
            let nodes = self.nodes();
            self.observations.poll(&self.agents, &nodes, term, self.settings.poll_interval).await;
            if self.config.acting() {
                self.adopt_newer_config().await;
                self.step().await;
            }
        }
    }

    /// A restarted supervisor, or one whose store is behind, adopts the newest configuration
    /// any agent reports (the highest term wins).
    async fn adopt_newer_config(&self) {
        let Some(newest) = self.observations.newest_config() else { return };
        let mut state = self.config.lock().await;
        if newest.is_newer_than(&state.config) {
            tracing::info!(term = newest.term, version = newest.version, leader = ?newest.leader, "adopting the newest configuration an agent reports");
            let next = Persisted { config: newest, ..state.clone() };
            if let Err(e) = self.config.save(&mut state, next).await {
                tracing::error!(error = %e, "could not store the adopted configuration");
            }
        }
    }

    /// One decision after a poll, carried out.
    async fn step(self: &Arc<Self>) {
        if self.observations.still_learning() || !self.observations.fresh() {
            return;
        }
        let observed = self.observations.observed();
        let (config, not_to_recover, unelectable, cluster_id, maintenance, nodes) = {
            let mut state = self.config.lock().await;
            self.learn_cluster_id(&mut state, &observed).await;
            let history = lock(&self.history);
            let now = Instant::now();
            let nodes = state.nodes_or(&self.settings.agents).to_vec();
            let (maintenance, cluster_id) = (state.maintenance, state.cluster_id);
            (
                state.config.clone(),
                history.not_to_recover(now),
                history.unelectable(now),
                cluster_id,
                maintenance,
                nodes,
            )
        };
        if config.term == 0 {
            return; // no configuration adopted yet
        }
        let known = Known { min_copies: self.settings.min_copies, cluster_id };
        match decide(&config, &nodes, &observed, &not_to_recover, &unelectable, known) {
            Action::Steady => {
                lock(&self.history).no_leader(None);
            }
            Action::NoLeaderPossible { reason } => {
                if lock(&self.history).no_leader(Some(reason.clone())) {
                    tracing::error!(%reason, "writes unavailable");
                }
            }
            // A promotion only finishes an election already stored (an interrupted switchover,
            // a restarted leader): it goes on in maintenance; choosing a new leader does not.
            Action::Failover { candidate, .. } if maintenance => {
                let reason = format!(
                    "no leader is serving, and automatic failover is off (maintenance): {candidate} would be \
                     elected; POST /resume, or switch over, to elect a leader"
                );
                if lock(&self.history).no_leader(Some(reason.clone())) {
                    tracing::error!(%reason, "writes unavailable");
                }
            }
            Action::Recover { node } if maintenance => {
                lock(&self.history).no_leader(None);
                tracing::debug!(%node, "not recovered: automatic recovery is off (maintenance)");
            }
            Action::Failover { old_leader, candidate, config: next } => {
                self.failover(&config, old_leader, candidate, next).await
            }
            Action::Promote { candidate, config: next } => {
                tracing::warn!(%candidate, term = next.term, "the named leader does not lead: finishing its election");
                self.failover(&config, None, candidate, next).await
            }
            Action::Recover { node } => self.start_recovery(node),
        }
    }

    /// Learns the cluster's id from the leader of the configuration once it reports one (the
    /// first leader of a new cluster makes it; a supervisor that lost its state file learns it
    /// again the same way).
    async fn learn_cluster_id(&self, state: &mut Persisted, observed: &[Observed]) {
        if state.cluster_id.is_some() {
            return;
        }
        if let Some(id) = reported_cluster_id(&state.config, observed) {
            tracing::info!(cluster_id = %id, "learnt the cluster's id from its leader");
            let next = Persisted { cluster_id: Some(id), ..state.clone() };
            if let Err(e) = self.config.save(state, next).await {
                tracing::error!(error = %e, "could not store the cluster's id");
            }
        }
    }

    /// Sends `config` to every agent in the background: an agent that is frozen or gone must
    /// not hold up the supervisor (each learns the configuration later by fence or recovery).
    pub(crate) fn push_config(self: &Arc<Self>, config: &ClusterConfig) {
        self.push_config_to(self.nodes(), config);
    }

    /// Sends `config` to each of `nodes` in the background.
    pub(crate) fn push_config_to(self: &Arc<Self>, nodes: Vec<String>, config: &ClusterConfig) {
        for addr in nodes {
            let (me, config) = (self.clone(), config.clone());
            tokio::spawn(async move {
                if let Err(e) = me.agents.send_config(&addr, &config, PUSH_TIMEOUT).await {
                    tracing::debug!(%addr, error = %e, "configuration not delivered");
                }
            });
        }
    }

    /// The nodes the supervisor watches, in round-robin order: the stored list once an operator
    /// changed it, else `--agents`.
    pub(crate) fn nodes(&self) -> Vec<String> {
        self.config.published_nodes().unwrap_or_else(|| self.settings.agents.clone())
    }

    /// Stores `events` in the durable history; the caller holds the configuration. A store
    /// that refuses is logged, not fatal: the events are a record, and the change they
    /// describe has happened.
    pub(crate) async fn record_locked(&self, state: &mut Persisted, events: impl IntoIterator<Item = HistoryEvent>) {
        let mut next = state.clone();
        for e in events {
            push_event(&mut next.events, e);
        }
        if let Err(e) = self.config.save(state, next).await {
            tracing::warn!(error = %e, "could not store an event of the history");
        }
    }

    /// The cluster as this supervisor sees it now, from its last polls. Never waits for a
    /// mutation under way.
    pub fn status(&self) -> SupervisorStatus {
        let persisted = self.config.published();
        let observed = self.observations.snapshot();
        let active = self.config.acting();
        let (holder, store_error) = self.config.active_holder();
        let standing = Standing {
            store: self.config.describe(),
            active,
            active_supervisor: if active { Some(self.settings.advertise.clone()) } else { holder },
            store_error,
            min_copies: self.settings.min_copies,
            misses: self.settings.misses,
        };
        cluster_status(persisted, &observed, &lock(&self.history), standing)
    }
}
