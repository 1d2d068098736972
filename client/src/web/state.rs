//! The web app's shared state: where transactions go, the supervisor's status (cached), and what
//! this client did (the history the cluster page lists).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use uuid::Uuid;

use super::sampler::SAMPLES_KEPT;
use super::view::plot::Sample;
use crate::metrics::FormOutcome;
use crate::run::Runner;
use crate::status::{self, StatusError, SupervisorStatus};

/// Transactions and drills the cluster page lists.
pub const HISTORY_LEN: usize = 20;
/// How long one supervisor status serves every viewer: the pages poll every 500 ms, so many
/// open pages cost the supervisor one request per this period, not one each.
const STATUS_CACHE_TTL: Duration = Duration::from_millis(250);
/// Connecting to the supervisor or an agent for a page: a dead host must not hold the page (the
/// calls set their own overall timeouts).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The web app's state. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

struct Shared {
    /// The agent read-write transactions go to first (`host:port`): the leader as last heard
    /// from the supervisor (`/leader_changed/`) or found by a run.
    leader: RwLock<String>,
    runner: Runner,
    /// Talks to the supervisor (status) and to agents (drills), with short timeouts.
    http: reqwest::Client,
    /// The last supervisor status and when it was fetched (see [`STATUS_CACHE_TTL`]).
    cache: tokio::sync::Mutex<Option<(Instant, Result<SupervisorStatus, StatusError>)>>,
    log: Mutex<Log>,
    /// Rotates "any node" reads over the live nodes.
    next_any: AtomicUsize,
    /// The cluster token, when the cluster has one: `/leader_changed/` must carry it.
    token: Option<String>,
    /// Renders `GET /metrics`; `None` (503) unless `client serve` installed a recorder.
    metrics: Option<PrometheusHandle>,
    /// The leader's commit metrics as the sampler read them, oldest first, for the plots
    /// (at most [`SAMPLES_KEPT`]).
    samples: Mutex<VecDeque<Sample>>,
}

/// What this client did, newest last, for the cluster page.
#[derive(Default)]
struct Log {
    runs: VecDeque<HistoryEntry>,
    drills: VecDeque<DrillEntry>,
    next_drill: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    pub at_ms: u64,
    pub transaction: String,
    /// `COMMIT`, `ABORT`, `READ`, `UNAVAILABLE` or `REFUSED`.
    #[schema(value_type = String)]
    pub outcome: FormOutcome,
    pub leader: Option<String>,
    pub latency_ms: f64,
    pub txn_id: Option<Uuid>,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DrillEntry {
    pub seq: u64,
    pub at_ms: u64,
    pub action: String,
    pub node: String,
    /// Whether the agent changed something.
    pub changed: bool,
    pub message: String,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The wall clock in Unix milliseconds, for the history's entries.
pub(super) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl AppState {
    /// `leader` is where transactions go first; the runner asks its supervisor, if it has
    /// one, when the leader does not answer, and the cluster page shows that supervisor's view.
    pub fn new(leader: &str, runner: Runner) -> anyhow::Result<AppState> {
        let http = crate::net::builder(None)?.connect_timeout(CONNECT_TIMEOUT).build()?;
        Ok(AppState {
            inner: Arc::new(Shared {
                leader: RwLock::new(leader.trim().to_string()),
                runner,
                http,
                cache: tokio::sync::Mutex::new(None),
                log: Mutex::new(Log::default()),
                next_any: AtomicUsize::new(0),
                token: None,
                metrics: None,
                samples: Mutex::new(VecDeque::with_capacity(SAMPLES_KEPT)),
            }),
        })
    }

    /// Sends the cluster token on the calls that need it (drills, the supervisor) and requires
    /// it on `/leader_changed/`.
    pub fn with_token(mut self, token: Option<&str>) -> anyhow::Result<AppState> {
        let Some(token) = token else { return Ok(self) };
        let http = crate::net::builder(Some(token))?.connect_timeout(CONNECT_TIMEOUT).build()?;
        let shared = Arc::get_mut(&mut self.inner).ok_or_else(|| anyhow::anyhow!("the state is already shared"))?;
        shared.http = http;
        shared.token = Some(token.to_string());
        Ok(self)
    }

    /// Serves `GET /metrics` from this recorder's handle.
    pub fn with_metrics(mut self, handle: PrometheusHandle) -> anyhow::Result<AppState> {
        let shared = Arc::get_mut(&mut self.inner).ok_or_else(|| anyhow::anyhow!("the state is already shared"))?;
        shared.metrics = Some(handle);
        Ok(self)
    }

    /// The agent to send the next transaction to.
    pub fn leader(&self) -> String {
        self.inner.leader.read().map_or_else(|p| p.into_inner().clone(), |a| a.clone())
    }

    pub fn set_leader(&self, leader: &str) {
        match self.inner.leader.write() {
            Ok(mut current) => *current = leader.to_string(),
            Err(p) => *p.into_inner() = leader.to_string(),
        }
    }

    pub(super) fn supervisor(&self) -> Option<&str> {
        self.inner.runner.supervisor()
    }

    /// The supervisor's status, at most [`STATUS_CACHE_TTL`] old. Concurrent callers share one
    /// fetch.
    pub(super) async fn cluster(&self) -> Result<SupervisorStatus, StatusError> {
        let mut cache = self.inner.cache.lock().await;
        if let Some((at, status)) = cache.as_ref() {
            if at.elapsed() < STATUS_CACHE_TTL {
                return status.clone();
            }
        }
        let fetched = match self.supervisor() {
            Some(supervisor) => status::fetch(&self.inner.http, supervisor).await,
            None => Err(StatusError::NotConfigured),
        };
        *cache = Some((Instant::now(), fetched.clone()));
        fetched
    }

    /// The last status fetched, however old, without asking the supervisor: for what a page
    /// merely offers (the "read from" menu), so that a slow supervisor does not slow a run.
    pub(super) async fn cached_cluster(&self) -> Option<SupervisorStatus> {
        self.inner.cache.lock().await.as_ref().and_then(|(_, status)| status.as_ref().ok().cloned())
    }

    pub(super) async fn forget_cluster(&self) {
        *self.inner.cache.lock().await = None;
    }

    pub(super) fn record_run(&self, entry: HistoryEntry) {
        let mut log = lock(&self.inner.log);
        log.runs.push_back(entry);
        while log.runs.len() > HISTORY_LEN {
            log.runs.pop_front();
        }
    }

    pub(super) fn record_drill(&self, action: &str, node: &str, changed: bool, message: String) -> u64 {
        let mut log = lock(&self.inner.log);
        log.next_drill += 1;
        let seq = log.next_drill;
        log.drills.push_back(DrillEntry {
            seq,
            at_ms: now_ms(),
            action: action.to_string(),
            node: node.to_string(),
            changed,
            message,
        });
        while log.drills.len() > HISTORY_LEN {
            log.drills.pop_front();
        }
        seq
    }

    /// Keeps one sample of the leader's metrics, forgetting the oldest beyond [`SAMPLES_KEPT`].
    pub(super) fn record_sample(&self, sample: Sample) {
        let mut samples = lock(&self.inner.samples);
        samples.push_back(sample);
        while samples.len() > SAMPLES_KEPT {
            samples.pop_front();
        }
    }

    /// The samples kept, oldest first.
    pub(super) fn samples(&self) -> Vec<Sample> {
        lock(&self.inner.samples).iter().cloned().collect()
    }

    /// Transactions run from here, newest first.
    pub fn history(&self) -> Vec<HistoryEntry> {
        lock(&self.inner.log).runs.iter().rev().cloned().collect()
    }

    pub(super) fn drills(&self) -> Vec<DrillEntry> {
        lock(&self.inner.log).drills.iter().rev().cloned().collect()
    }

    pub(super) fn runner(&self) -> &Runner {
        &self.inner.runner
    }

    /// The client for the supervisor and the agents' drills (with the token, when there is one).
    pub(super) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    /// The cluster token, when the cluster has one: `/leader_changed/` must carry it.
    pub(super) fn token(&self) -> Option<&str> {
        self.inner.token.as_deref()
    }

    pub(super) fn metrics(&self) -> Option<&PrometheusHandle> {
        self.inner.metrics.as_ref()
    }

    /// The next turn of the rotation of "any node" reads over the live nodes.
    pub(super) fn next_any_turn(&self) -> usize {
        self.inner.next_any.fetch_add(1, Ordering::Relaxed)
    }
}
