//! `client serve`: the web pages.
//!
//! - `/create/`: the transaction form. GET shows it; POST runs the transaction with the same
//!   [`Runner::run`] as `client run` and shows the outcome under the form, keeping what was
//!   typed.
//! - `/cluster/`: the cluster as the supervisor sees it, with the drills and the transactions
//!   run from this client. Its live part is `/cluster/live`, an HTML fragment the page's script
//!   fetches every 500 ms; `/cluster/status.json` is the same as JSON.
//! - `/leader_changed/`: the supervisor tells this client the new leader.
//! - `/metrics`: what this client did, in Prometheus text format (see `metrics.rs`).
//!
//! Pages are askama templates (`client/templates`), which escape every value; the pages work
//! without JavaScript (`static/app.js` only adds the live updates and confirmation dialogs).
//!
//! Architecture invariant: this client calls agents' drill endpoints only on addresses the
//! supervisor lists as nodes of the cluster, so the drill form cannot be used to make the client
//! send requests elsewhere.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use askama::Template;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use protocol::{DrillResponse, ErrorBody, Outcome};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::metrics::{Announcement, DrillResult, FormOutcome};
use crate::run::{
    base_url, describe_writes, role_name, root_cause, wire_name, ReadFrom, RunError, RunOptions, RunReport, Runner,
    Verdict,
};
use crate::status::{self, clock_time, ClusterStatus, NodeReport};

/// What the text box shows on a fresh form: the original system's example.
pub const SAMPLE_TRANSACTION: &str = "r(1)w(2=22)r(3)w(5=34)";
/// Largest form the page accepts. A transaction of a thousand operations fits many times over.
const MAX_FORM_BYTES: usize = 64 * 1024;
/// Transactions and drills the cluster page lists.
pub const HISTORY_LEN: usize = 20;
/// How long one supervisor status serves every viewer: the pages poll every 500 ms, so many
/// open pages cost the supervisor one request per this period, not one each.
const STATUS_CACHE_TTL: Duration = Duration::from_millis(250);
/// A drill is one quick local change on the agent.
const DRILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest transaction text kept in the history.
const HISTORY_TEXT_CHARS: usize = 80;

const STYLE_CSS: &str = include_str!("../static/style.css");
const APP_JS: &str = include_str!("../static/app.js");

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
    cache: tokio::sync::Mutex<Option<(Instant, Result<ClusterStatus, String>)>>,
    log: Mutex<Log>,
    /// Rotates "any node" reads over the live nodes.
    next_any: AtomicUsize,
    /// The cluster token, when the cluster has one: `/leader_changed/` must carry it.
    token: Option<String>,
    /// Renders `GET /metrics`; `None` (503) unless `client serve` installed a recorder.
    metrics: Option<PrometheusHandle>,
}

/// `builder` with the cluster token as a default `Authorization` header, when there is one.
pub fn client_with_token(builder: reqwest::ClientBuilder, token: Option<&str>) -> reqwest::ClientBuilder {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(value) = token.and_then(|t| reqwest::header::HeaderValue::from_str(&protocol::auth::bearer(t)).ok()) {
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    builder.default_headers(headers)
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
    pub outcome: String,
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

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl AppState {
    /// `leader` is where transactions go first; the runner asks its supervisor, if it has
    /// one, when the leader does not answer, and the cluster page shows that supervisor's view.
    pub fn new(leader: &str, runner: Runner) -> anyhow::Result<AppState> {
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(1)).build()?;
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
            }),
        })
    }

    /// Sends the cluster token on the calls that need it (drills, the supervisor) and requires
    /// it on `/leader_changed/`.
    pub fn with_token(mut self, token: Option<&str>) -> anyhow::Result<AppState> {
        let Some(token) = token else { return Ok(self) };
        let http = client_with_token(reqwest::Client::builder().connect_timeout(Duration::from_secs(1)), Some(token))
            .build()?;
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

    fn supervisor(&self) -> Option<&str> {
        self.inner.runner.supervisor()
    }

    /// The supervisor's status, at most [`STATUS_CACHE_TTL`] old. Concurrent callers share one
    /// fetch.
    async fn cluster(&self) -> Result<ClusterStatus, String> {
        let mut cache = self.inner.cache.lock().await;
        if let Some((at, status)) = cache.as_ref() {
            if at.elapsed() < STATUS_CACHE_TTL {
                return status.clone();
            }
        }
        let fetched = match self.supervisor() {
            Some(supervisor) => status::fetch(&self.inner.http, supervisor).await,
            None => Err("this client has no supervisor to ask (--supervisor)".to_string()),
        };
        *cache = Some((Instant::now(), fetched.clone()));
        fetched
    }

    /// The last status fetched, however old, without asking the supervisor: for what a page
    /// merely offers (the "read from" menu), so that a slow supervisor does not slow a run.
    async fn cached_cluster(&self) -> Option<ClusterStatus> {
        self.inner.cache.lock().await.as_ref().and_then(|(_, status)| status.as_ref().ok().cloned())
    }

    async fn forget_cluster(&self) {
        *self.inner.cache.lock().await = None;
    }

    fn record_run(&self, entry: HistoryEntry) {
        let mut log = lock(&self.inner.log);
        log.runs.push_back(entry);
        while log.runs.len() > HISTORY_LEN {
            log.runs.pop_front();
        }
    }

    fn record_drill(&self, action: &str, node: &str, changed: bool, message: String) -> u64 {
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

    /// Transactions run from here, newest first.
    pub fn history(&self) -> Vec<HistoryEntry> {
        lock(&self.inner.log).runs.iter().rev().cloned().collect()
    }

    fn drills(&self) -> Vec<DrillEntry> {
        lock(&self.inner.log).drills.iter().rev().cloned().collect()
    }
}

pub fn app(state: AppState) -> Router {
    // The document describes this client as configured (with or without the token).
    let spec: Arc<str> = crate::openapi::json(state.inner.token.is_some()).into();
    Router::new()
        .route(
            "/openapi.json",
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], spec.to_string()) }),
        )
        .route("/", get(|| async { Redirect::to("/create/") }))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/create/", get(show_form).post(create))
        .route("/cluster", get(|| async { Redirect::permanent("/cluster/") }))
        .route("/cluster/", get(cluster_page))
        .route("/cluster/live", get(cluster_live))
        .route("/cluster/status.json", get(cluster_json))
        .route("/cluster/drill", post(drill))
        .route("/leader_changed/", post(leader_changed))
        .route("/static/style.css", get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }))
        .route("/static/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .with_state(state)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "max-age=300")], body).into_response()
}

/// Renders a page; a template that fails to render (a bug) is a 500 that says nothing internal.
fn render(template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a page failed to render");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page could not be rendered; see the client's log").into_response()
        }
    }
}

/// `GET /health`: the client serves.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Always `{\"status\": \"ok\"}`", body = crate::openapi::Health)))]
async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /metrics`: counters and histograms as recorded, the leader followed read now.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format: the `rmw_client_*` metrics", body = String, content_type = "text/plain"),
        (status = 503, description = "Metrics are not enabled in this process", body = ErrorBody),
    ))]
async fn metrics_text(State(state): State<AppState>) -> Response {
    let Some(handle) = state.inner.metrics.as_ref() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(ErrorBody {
                error: "unavailable".into(),
                message: "metrics are not enabled in this process".into(),
                leader: None,
                term: None,
            }),
        )
            .into_response();
    };
    // The order of the supervisor's nodes does not change, so any status it gave will do: ask it
    // only when there is none yet.
    let cluster = match state.cached_cluster().await {
        Some(cluster) => Some(cluster),
        None => state.cluster().await.ok(),
    };
    let leader = state.leader();
    crate::metrics::leader_followed(cluster.and_then(|c| c.nodes.iter().position(|n| n.address == leader)));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response()
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    active: &'static str,
    title: String,
    message: String,
}

fn message_page(code: StatusCode, title: &str, message: String) -> Response {
    let mut response = render(&MessagePage { active: "", title: title.to_string(), message });
    *response.status_mut() = code;
    response
}

async fn not_found(uri: axum::http::Uri) -> Response {
    message_page(
        StatusCode::NOT_FOUND,
        "No such page",
        format!("There is nothing at {}. The pages are /create/ and /cluster/.", uri.path()),
    )
}

/// The supervisor announces a new leader (as the original did, with an address for a port).
#[utoipa::path(post, path = "/leader_changed/", tag = "supervisor",
    request_body(content = protocol::LeaderChanged, description = "The new leader's address, and its term"),
    security(("cluster_token" = [])),
    responses(
        (status = 200, description = "The next transactions go to that leader", body = crate::openapi::LeaderAdopted),
        (status = 400, description = "Not a `LeaderChanged` body", body = ErrorBody),
        (status = 413, description = "A body over 64 KiB", body = String, content_type = "text/plain"),
    ))]
async fn leader_changed(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(token) = &state.inner.token {
        let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if !protocol::auth::authorized(given, token) {
            tracing::warn!("refused a /leader_changed/ without the cluster token");
            crate::metrics::leader_announcement(Announcement::Unauthorized, None);
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({ "error": "unauthorized", "message": "this endpoint needs the cluster token" })),
            )
                .into_response();
        }
    }
    match serde_json::from_slice::<protocol::LeaderChanged>(&body) {
        Ok(change) => {
            tracing::info!(leader = %change.leader, term = ?change.term, "the supervisor announced a new leader");
            crate::metrics::leader_announcement(Announcement::Accepted, change.term);
            state.set_leader(&change.leader);
            state.forget_cluster().await;
            Json(json!({ "leader": change.leader })).into_response()
        }
        Err(e) => {
            crate::metrics::leader_announcement(Announcement::BadRequest, None);
            (
                StatusCode::BAD_REQUEST,
                Json(ErrorBody {
                    error: "bad_request".into(),
                    message: format!("expected {{\"leader\": \"host:port\", \"term\": N}}: {e}"),
                    leader: None,
                    term: None,
                }),
            )
                .into_response()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The form

#[derive(Template)]
#[template(path = "create.html")]
struct CreatePage {
    active: &'static str,
    sample: &'static str,
    leader: String,
    text: String,
    read_choices: Vec<Choice>,
    result: Option<ResultView>,
    error: Option<ErrorView>,
}

struct Choice {
    value: String,
    label: String,
    selected: bool,
}

struct ResultView {
    /// `commit`, `abort` or `read`: the CSS class.
    class: &'static str,
    headline: &'static str,
    words: String,
    values: Vec<ValueRow>,
    facts: Vec<Fact>,
    notes: Vec<String>,
}

struct ValueRow {
    account: i64,
    balance: String,
    missing: bool,
}

struct Fact {
    /// For the element id: `fact-<id>`.
    id: &'static str,
    name: &'static str,
    value: String,
}

struct ErrorView {
    title: String,
    message: String,
    pointer: Option<Pointer>,
    /// A commit whose outcome is unknown: the form offers to run it again with this id.
    retry_txn: Option<Uuid>,
    notes: Vec<String>,
}

/// The input split around the column a parse error points at.
struct Pointer {
    column: usize,
    before: String,
    at: String,
    after: String,
    caret: String,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
struct CreateForm {
    /// Missing is the same as empty: the page then says what to type.
    #[serde(default)]
    transaction: String,
    /// `leader` (the default), `any`, or a node's address.
    #[serde(default)]
    read_from: String,
    /// To run a commit again whose outcome is unknown.
    #[serde(default)]
    txn_id: String,
}

/// `GET /create/`: the transaction form.
#[utoipa::path(get, path = "/create/", tag = "pages",
    responses((status = 200, description = "The form, with the sample transaction", body = String, content_type = "text/html")))]
async fn show_form(State(state): State<AppState>) -> Response {
    let cluster = state.cluster().await.ok();
    render(&CreatePage {
        active: "create",
        sample: SAMPLE_TRANSACTION,
        leader: state.leader(),
        text: SAMPLE_TRANSACTION.to_string(),
        read_choices: read_choices(cluster.as_ref(), "leader"),
        result: None,
        error: None,
    })
}

/// The "read from" menu: the leader, any node, then each node the supervisor knows.
fn read_choices(cluster: Option<&ClusterStatus>, selected: &str) -> Vec<Choice> {
    let mut choices = vec![
        Choice { value: "leader".into(), label: "the leader".into(), selected: false },
        Choice { value: "any".into(), label: "any node (in turn)".into(), selected: false },
    ];
    for node in cluster.map(|c| c.nodes.as_slice()).unwrap_or_default() {
        let label = format!("{} ({}, {})", node.address, node.node_id(), node.role());
        choices.push(Choice { value: node.address.clone(), label, selected: false });
    }
    let index = choices.iter().position(|c| c.value == selected).unwrap_or(0);
    choices[index].selected = true;
    choices
}

/// `POST /create/`: runs the transaction typed in the form and shows the outcome under it.
#[utoipa::path(post, path = "/create/", tag = "pages",
    request_body(content = CreateForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "The form again, with the outcome (COMMIT, ABORT with the reason, the values read) or what is wrong with the input", body = String, content_type = "text/html"),
        (status = 400, description = "The form could not be read", body = String, content_type = "text/plain"),
        (status = 413, description = "The form is over 64 KiB", body = String, content_type = "text/plain"),
        (status = 415, description = "Not `application/x-www-form-urlencoded`", body = String, content_type = "text/plain"),
        (status = 422, description = "The form could not be read", body = String, content_type = "text/plain"),
    ))]
async fn create(State(state): State<AppState>, Form(form): Form<CreateForm>) -> Response {
    let text = form.transaction;
    let leader = state.leader();
    let selected = if form.read_from.is_empty() { "leader".to_string() } else { form.read_from };
    // Only a read from elsewhere than the leader needs the supervisor's list of nodes now.
    let cluster = if selected == "leader" { state.cached_cluster().await } else { state.cluster().await.ok() };
    let page = |result, error| CreatePage {
        active: "create",
        sample: SAMPLE_TRANSACTION,
        leader: state.leader(),
        text: text.clone(),
        read_choices: read_choices(cluster.as_ref(), &selected),
        result,
        error,
    };

    let options = match run_options(&state, cluster.as_ref(), &selected, &form.txn_id) {
        Ok(options) => options,
        Err(message) => {
            crate::metrics::transaction(FormOutcome::Refused, None);
            let error =
                ErrorView { title: "Cannot run this".into(), message, pointer: None, retry_txn: None, notes: vec![] };
            return render(&page(None, Some(error)));
        }
    };
    let started = Instant::now();
    let result = state.inner.runner.run(&leader, &text, &options).await;
    crate::metrics::transaction(FormOutcome::of(&result), Some(started.elapsed()));
    match &result {
        Ok(report) => {
            tracing::info!(
                transaction = %report.transaction,
                outcome = report.headline(),
                leader = ?report.leader,
                latency_ms = report.latency.as_millis() as u64,
                "ran a transaction"
            );
            if let Some(found) = report.leader.as_ref().filter(|l| **l != leader) {
                tracing::info!(leader = %found, "following the leader this run found");
                state.set_leader(found);
            }
            state.record_run(history_of_report(report));
        }
        Err(RunError::Parse(_)) => {}
        Err(e) => {
            tracing::warn!("transaction {text:?} failed: {e}");
            state.record_run(history_of_error(&text, e));
        }
    }
    match result {
        Ok(report) => render(&page(Some(result_view(&report)), None)),
        Err(error) => render(&page(None, Some(error_view(&text, &error)))),
    }
}

/// Reads the form's choices into [`RunOptions`], or says what is wrong with them.
fn run_options(
    state: &AppState,
    cluster: Option<&ClusterStatus>,
    read_from: &str,
    txn_id: &str,
) -> Result<RunOptions, String> {
    let txn_id = match txn_id.trim() {
        "" => None,
        id => Some(Uuid::parse_str(id).map_err(|e| format!("txn_id {id:?} is not a UUID: {e}"))?),
    };
    let nodes = cluster.map(|c| c.nodes.as_slice()).unwrap_or_default();
    let read_from = match read_from {
        "leader" => ReadFrom::Leader,
        "any" => {
            let mut alive: Vec<String> = nodes.iter().filter(|n| n.alive).map(|n| n.address.clone()).collect();
            if alive.is_empty() {
                ReadFrom::Leader
            } else {
                let start = state.inner.next_any.fetch_add(1, Ordering::Relaxed) % alive.len();
                alive.rotate_left(start);
                ReadFrom::Nodes(alive)
            }
        }
        address => {
            if !nodes.iter().any(|n| n.address == address) {
                return Err(format!(
                    "{address:?} is not a node of the cluster as the supervisor lists it; choose another place to read from"
                ));
            }
            ReadFrom::Nodes(vec![address.to_string()])
        }
    };
    Ok(RunOptions { txn_id, read_from })
}

fn result_view(report: &RunReport) -> ResultView {
    let verdict = report.verdict();
    let mut facts = Vec::new();
    let mut fact = |id, name, value: String| facts.push(Fact { id, name, value });
    fact("transaction", "transaction", report.transaction.clone());
    if let Some(commit) = &report.commit {
        fact("txn_id", "txn_id", commit.txn_id.to_string());
        match commit.commit {
            Outcome::Commit => {
                fact("commit_ts", "commit_ts", commit.commit_ts.map_or("?".into(), |t| t.to_string()));
                fact("lsn", "lsn", commit.lsn.map_or("?".into(), |l| l.to_string()));
                fact("written", "written", describe_writes(&report.writes));
            }
            Outcome::Abort => {
                fact("reason", "reason", commit.reason.map_or_else(|| "none given".into(), |r| wire_name(&r)));
                if let Some(key) = commit.key {
                    fact("key", "conflicting account", key.to_string());
                }
                if let Some(message) = &commit.message {
                    fact("message", "the leader says", message.clone());
                }
            }
        }
    }
    if let Some(leader) = report.leader_text() {
        fact("leader", "leader", leader);
    }
    if let Some(read) = &report.read {
        fact(
            "read_from",
            "read from",
            format!("{} ({}) at {}, LSN {}", read.node, role_name(read.role), read.agent, read.lsn),
        );
        fact("read_ts", "read timestamp", read.timestamp.to_string());
    }
    fact("latency", "latency", format!("{:.1} ms", report.latency_ms()));

    let values = report
        .read
        .as_ref()
        .map(|read| {
            read.values
                .iter()
                .map(|(account, balance)| ValueRow {
                    account: *account,
                    balance: balance.map_or_else(String::new, |b| b.to_string()),
                    missing: balance.is_none(),
                })
                .collect()
        })
        .unwrap_or_default();
    ResultView {
        class: match verdict {
            Verdict::Commit => "commit",
            Verdict::Abort => "abort",
            Verdict::Read => "read",
        },
        headline: report.headline(),
        words: report.in_words(),
        values,
        facts,
        notes: report.notes.clone(),
    }
}

fn error_view(text: &str, error: &RunError) -> ErrorView {
    match error {
        RunError::Parse(e) => {
            let chars: Vec<char> = text.chars().collect();
            let at = e.column.saturating_sub(1).min(chars.len());
            ErrorView {
                title: format!("Not a transaction: error at column {}", e.column),
                message: e.to_string(),
                pointer: Some(Pointer {
                    column: e.column,
                    before: chars[..at].iter().collect(),
                    // One past the end: mark the gap where something was expected.
                    at: chars.get(at).map_or_else(|| " ".to_string(), |c| c.to_string()),
                    after: chars.get(at + 1..).map(|rest| rest.iter().collect()).unwrap_or_default(),
                    caret: " ".repeat(at) + "^",
                }),
                retry_txn: None,
                notes: vec!["Nothing was sent to the cluster.".into()],
            }
        }
        RunError::Rejected(message) => ErrorView {
            title: "Refused".into(),
            message: message.clone(),
            pointer: None,
            retry_txn: None,
            notes: vec!["Nothing was applied.".into()],
        },
        RunError::Unavailable { message, unknown_txn } => ErrorView {
            title: "The cluster is unavailable".into(),
            message: message.clone(),
            pointer: None,
            retry_txn: *unknown_txn,
            notes: vec![match unknown_txn {
                Some(id) => format!(
                    "The commit may or may not have happened. Running it again with the same txn_id ({id}) \
                     is safe: it returns the first outcome and applies nothing twice."
                ),
                None => "Nothing was committed. The page waited for a leader; try again in a moment.".into(),
            }],
        },
    }
}

fn short(text: &str) -> String {
    match text.char_indices().nth(HISTORY_TEXT_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

fn history_of_report(report: &RunReport) -> HistoryEntry {
    let read_at = report.read.as_ref().map(|r| r.agent.clone());
    HistoryEntry {
        at_ms: now_ms(),
        transaction: short(&report.transaction),
        outcome: report.headline().to_string(),
        leader: report.leader.clone().or(read_at),
        latency_ms: report.latency_ms(),
        txn_id: report.commit.as_ref().map(|c| c.txn_id),
        detail: report.in_words(),
    }
}

fn history_of_error(text: &str, error: &RunError) -> HistoryEntry {
    let (outcome, txn_id) = match error {
        RunError::Unavailable { unknown_txn, .. } => ("UNAVAILABLE", *unknown_txn),
        RunError::Parse(_) | RunError::Rejected(_) => ("REFUSED", None),
    };
    HistoryEntry {
        at_ms: now_ms(),
        transaction: short(text.trim()),
        outcome: outcome.into(),
        leader: None,
        latency_ms: 0.0,
        txn_id,
        detail: error.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster page

#[derive(Template)]
#[template(path = "cluster.html")]
struct ClusterPage {
    active: &'static str,
    supervisor: String,
    flash: Option<Flash>,
    live: LiveView,
}

#[derive(Template)]
#[template(path = "cluster_live.html")]
struct ClusterLive {
    live: LiveView,
}

struct Flash {
    /// `ok` or `bad`.
    class: &'static str,
    text: String,
}

/// Everything the live part of the cluster page shows, as text ready to print.
struct LiveView {
    reachable: bool,
    error: String,
    writes_available: bool,
    message: String,
    term: i64,
    config_version: u64,
    leader: String,
    members: Vec<String>,
    nodes: Vec<NodeRow>,
    last_failover: Option<FailoverView>,
    failover_count: usize,
    recovering: Vec<String>,
    recoveries: Vec<RecoveryView>,
    diverged: Vec<String>,
    client_leader: String,
    history: Vec<HistoryRow>,
    history_cap: usize,
    drills: Vec<DrillRow>,
}

struct NodeRow {
    address: String,
    node_id: String,
    /// `leader`, `replica`, `standby`, `down`, or `unknown` when it does not answer.
    role: String,
    alive: bool,
    member: bool,
    term: String,
    applied_lsn: String,
    lag: String,
    error: String,
    action: Option<DrillAction>,
}

struct DrillAction {
    /// `down_leader` or `up_node`: the agent's endpoint.
    action: &'static str,
    label: &'static str,
    confirm: String,
}

struct FailoverView {
    at: String,
    at_ms: u64,
    old_leader: String,
    new_leader: String,
    term: i64,
    detection_ms: u64,
    election_ms: u64,
    unavailable_ms: u64,
    in_doubt_committed: u32,
    in_doubt_aborted: u32,
}

struct RecoveryView {
    node: String,
    at: String,
    at_ms: u64,
    ok: bool,
    entries: u64,
    duration_ms: u64,
    pause: String,
    message: String,
}

struct HistoryRow {
    at: String,
    transaction: String,
    outcome: String,
    /// The CSS class of the outcome.
    class: &'static str,
    leader: String,
    latency: String,
    detail: String,
}

struct DrillRow {
    at: String,
    action: String,
    node: String,
    message: String,
}

fn dash(value: Option<i64>) -> String {
    value.map_or_else(|| "–".to_string(), |v| v.to_string())
}

/// The drill a node offers: stop it if it leads, bring it back if it is down.
fn drill_for(node: &NodeReport) -> Option<DrillAction> {
    match node.role.as_deref() {
        Some("leader") => Some(DrillAction {
            action: "down_leader",
            label: "Stop leader",
            confirm: format!(
                "Stop the leader {} (GET /down_leader/)? The supervisor will elect the next member as leader.",
                node.address
            ),
        }),
        Some("down") => Some(DrillAction {
            action: "up_node",
            label: "Bring back",
            confirm: format!(
                "Bring {} back (GET /up_node/)? It replays the leader's log and rejoins the members.",
                node.address
            ),
        }),
        _ => None,
    }
}

fn live_view(state: &AppState, cluster: &Result<ClusterStatus, String>) -> LiveView {
    let history = state
        .history()
        .into_iter()
        .map(|h| HistoryRow {
            at: clock_time(h.at_ms),
            class: match h.outcome.as_str() {
                "COMMIT" => "commit",
                "ABORT" => "abort",
                "READ" => "read",
                _ => "error",
            },
            transaction: h.transaction,
            outcome: h.outcome,
            leader: h.leader.unwrap_or_else(|| "–".into()),
            latency: if h.latency_ms > 0.0 { format!("{:.1} ms", h.latency_ms) } else { "–".into() },
            detail: h.detail,
        })
        .collect();
    let drills = state
        .drills()
        .into_iter()
        .map(|d| DrillRow { at: clock_time(d.at_ms), action: d.action, node: d.node, message: d.message })
        .collect();
    let mut view = LiveView {
        reachable: cluster.is_ok(),
        error: cluster.as_ref().err().cloned().unwrap_or_default(),
        writes_available: false,
        message: String::new(),
        term: 0,
        config_version: 0,
        leader: "none".into(),
        members: Vec::new(),
        nodes: Vec::new(),
        last_failover: None,
        failover_count: 0,
        recovering: Vec::new(),
        recoveries: Vec::new(),
        diverged: Vec::new(),
        client_leader: state.leader(),
        history,
        history_cap: HISTORY_LEN,
        drills,
    };
    let Ok(c) = cluster else {
        return view;
    };
    view.writes_available = c.writes_available;
    view.message = c.message.clone();
    view.term = c.term;
    view.config_version = c.config_version;
    view.leader = c.leader.clone().unwrap_or_else(|| "none".into());
    view.members = c.members.clone();
    view.nodes = c
        .nodes
        .iter()
        .map(|n| NodeRow {
            address: n.address.clone(),
            node_id: n.node_id().to_string(),
            role: n.role().to_string(),
            alive: n.alive,
            member: n.member,
            term: dash(n.term),
            applied_lsn: dash(n.applied_lsn),
            lag: dash(n.lag),
            error: n.error.clone().unwrap_or_default(),
            action: drill_for(n),
        })
        .collect();
    view.last_failover = c.last_failover.as_ref().map(|f| FailoverView {
        at: clock_time(f.at_ms),
        at_ms: f.at_ms,
        old_leader: f.old_leader.clone().unwrap_or_else(|| "(none)".into()),
        new_leader: f.new_leader.clone(),
        term: f.term,
        detection_ms: f.detection_ms,
        election_ms: f.election_ms,
        unavailable_ms: f.unavailable_ms,
        in_doubt_committed: f.in_doubt_committed,
        in_doubt_aborted: f.in_doubt_aborted,
    });
    view.failover_count = c.failovers.len().max(usize::from(c.last_failover.is_some()));
    view.recovering = c.recovering.clone();
    view.recoveries = c
        .recoveries
        .iter()
        .rev()
        .take(5)
        .map(|r| RecoveryView {
            node: r.node.clone(),
            at: clock_time(r.at_ms),
            at_ms: r.at_ms,
            ok: r.ok,
            entries: r.entries_applied,
            duration_ms: r.duration_ms,
            pause: r.commit_pause_ms.map_or_else(|| "–".into(), |p| format!("{p} ms")),
            message: r.message.clone(),
        })
        .collect();
    view.diverged = c.diverged.clone();
    view
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ClusterQuery {
    /// The drill whose result to show (after the drill form's redirect).
    #[param(schema_with = crate::openapi::uint64)]
    drill: Option<u64>,
}

/// `GET /cluster/`: the cluster as the supervisor sees it, the drills, the history.
#[utoipa::path(get, path = "/cluster/", tag = "pages", params(ClusterQuery),
    responses(
        (status = 200, description = "The page", body = String, content_type = "text/html"),
        (status = 400, description = "`drill` is not a number", body = String, content_type = "text/plain"),
    ))]
async fn cluster_page(State(state): State<AppState>, Query(query): Query<ClusterQuery>) -> Response {
    let cluster = state.cluster().await;
    let flash = query.drill.and_then(|seq| state.drills().into_iter().find(|d| d.seq == seq)).map(|d| Flash {
        class: if d.changed { "ok" } else { "bad" },
        text: format!("{} on {}: {}", d.action, d.node, d.message),
    });
    render(&ClusterPage {
        active: "cluster",
        supervisor: state.supervisor().unwrap_or("(none)").to_string(),
        flash,
        live: live_view(&state, &cluster),
    })
}

/// `GET /cluster/live`: the live part of the cluster page, which its script fetches every 500 ms.
#[utoipa::path(get, path = "/cluster/live", tag = "pages",
    responses((status = 200, description = "An HTML fragment", body = String, content_type = "text/html")))]
async fn cluster_live(State(state): State<AppState>) -> Response {
    let cluster = state.cluster().await;
    let mut response = render(&ClusterLive { live: live_view(&state, &cluster) });
    response.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    response
}

/// The cluster page's data as JSON: the supervisor's status (or why it is missing), where this
/// client sends commits, and what it ran.
#[utoipa::path(get, path = "/cluster/status.json", tag = "operations",
    responses((status = 200, description = "The cluster page's data", body = crate::openapi::ClusterJson)))]
async fn cluster_json(State(state): State<AppState>) -> Json<Value> {
    let cluster = state.cluster().await;
    let (supervisor, error) = match cluster {
        Ok(status) => (serde_json::to_value(status).unwrap_or(Value::Null), None),
        Err(e) => (Value::Null, Some(e)),
    };
    Json(json!({
        "supervisor": supervisor,
        "error": error,
        "leader": state.leader(),
        "history": state.history(),
        "drills": state.drills(),
    }))
}

#[derive(Template)]
#[template(path = "confirm.html")]
struct ConfirmPage {
    active: &'static str,
    question: String,
    action: &'static str,
    node: String,
    label: &'static str,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct DrillForm {
    /// `down_leader` or `up_node`.
    #[serde(default)]
    #[schema(pattern = "^(down_leader|up_node)$")]
    action: String,
    /// The agent's address (`host:port`), as the supervisor lists it.
    #[serde(default)]
    node: String,
    /// `yes` once the person confirmed (the page's dialog, or the confirmation page).
    #[serde(default)]
    confirmed: String,
}

/// Runs a drill on a node: `GET /down_leader/` or `GET /up_node/` on the agent, then back to
/// the cluster page with the agent's answer.
#[utoipa::path(post, path = "/cluster/drill", tag = "pages",
    request_body(content = DrillForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Without `confirmed=yes`: a page that asks for confirmation", body = String, content_type = "text/html"),
        (status = 303, description = "Done: on to `/cluster/?drill=<n>`, which shows the agent's answer", headers(("Location" = String))),
        (status = 400, description = "Not a drill, or not a node the supervisor lists (HTML page), or a form that could not be read (text)", body = String, content_type = "text/html"),
        (status = 413, description = "The form is over 64 KiB", body = String, content_type = "text/plain"),
        (status = 415, description = "Not `application/x-www-form-urlencoded`", body = String, content_type = "text/plain"),
        (status = 422, description = "The form could not be read", body = String, content_type = "text/plain"),
        (status = 503, description = "The supervisor cannot be reached for its list of nodes", body = String, content_type = "text/html"),
    ))]
async fn drill(State(state): State<AppState>, Form(form): Form<DrillForm>) -> Response {
    let (action, path, label, question) = match form.action.as_str() {
        "down_leader" => (
            "down_leader",
            "/down_leader/",
            "Stop the leader",
            format!(
                "Stop the leader {} (GET /down_leader/)? The supervisor will elect the next member as leader.",
                form.node
            ),
        ),
        "up_node" => (
            "up_node",
            "/up_node/",
            "Bring it back",
            format!("Bring {} back (GET /up_node/)? It replays the leader's log and rejoins the members.", form.node),
        ),
        other => {
            crate::metrics::drill("unknown", DrillResult::Refused);
            return message_page(
                StatusCode::BAD_REQUEST,
                "No such drill",
                format!("{other:?} is not a drill: the drills are down_leader and up_node."),
            );
        }
    };
    state.forget_cluster().await;
    let nodes = match state.cluster().await {
        Ok(cluster) => cluster.nodes,
        Err(e) => {
            crate::metrics::drill(action, DrillResult::Failed);
            return message_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Cannot run the drill",
                format!("The drill needs the supervisor's list of nodes, and {e}."),
            );
        }
    };
    if !nodes.iter().any(|n| n.address == form.node) {
        crate::metrics::drill(action, DrillResult::Refused);
        return message_page(
            StatusCode::BAD_REQUEST,
            "No such node",
            format!("{:?} is not a node of the cluster as the supervisor lists it.", form.node),
        );
    }
    if form.confirmed != "yes" {
        return render(&ConfirmPage { active: "cluster", question, action, node: form.node, label });
    }

    let (result, message) = call_drill(&state.inner.http, &form.node, path).await;
    crate::metrics::drill(action, result);
    let changed = result == DrillResult::Changed;
    tracing::info!(node = %form.node, action, changed, %message, "ran a drill");
    let seq = state.record_drill(action, &form.node, changed, message);
    state.forget_cluster().await;
    Redirect::to(&format!("/cluster/?drill={seq}")).into_response()
}

/// Calls the drill at `path` on the agent; returns what came of it and what the agent said.
async fn call_drill(http: &reqwest::Client, node: &str, path: &'static str) -> (DrillResult, String) {
    let url = format!("{}{path}", base_url(node));
    let response = match http.get(&url).timeout(DRILL_TIMEOUT).send().await {
        Ok(response) => response,
        Err(e) => {
            crate::metrics::agent_call_failed(path, &e);
            return (DrillResult::Failed, format!("cannot reach {node}: {}", root_cause(&e)));
        }
    };
    let code = response.status();
    let bytes = response.bytes().await.unwrap_or_default();
    if let Ok(answer) = serde_json::from_slice::<DrillResponse>(&bytes) {
        let result = if answer.changed { DrillResult::Changed } else { DrillResult::Unchanged };
        return (result, format!("{} (now {})", answer.message, role_name(answer.role)));
    }
    let message = match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(error) => error.message,
        Err(_) => String::from_utf8_lossy(&bytes).chars().take(200).collect(),
    };
    (DrillResult::Failed, format!("HTTP {code}: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_agent::{self, Fake, FakeSupervisor};
    use axum::body::Body;
    use axum::http::Request;
    use std::collections::BTreeMap;
    use tower::ServiceExt;

    struct Sent {
        code: StatusCode,
        body: String,
        location: Option<String>,
    }

    fn state_for(agent: &str, supervisor: Option<&str>) -> AppState {
        let runner = Runner::new().unwrap().with_supervisor(supervisor).with_follow_budget(Duration::from_secs(2));
        AppState::new(agent, runner).unwrap()
    }

    async fn send(state: &AppState, request: Request<Body>) -> Sent {
        let response = app(state.clone()).oneshot(request).await.unwrap();
        let code = response.status();
        let location = response.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_string);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        Sent { code, body: String::from_utf8(bytes.to_vec()).unwrap(), location }
    }

    async fn get_page(state: &AppState, path: &str) -> Sent {
        send(state, Request::get(path).body(Body::empty()).unwrap()).await
    }

    async fn post_form(state: &AppState, path: &str, body: &str) -> Sent {
        let request = Request::post(path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body.to_string()))
            .unwrap();
        send(state, request).await
    }

    /// A supervisor listing `nodes` as (address, role), the first leader.
    async fn supervisor_of(nodes: &[(&str, &str)]) -> FakeSupervisor {
        let supervisor = FakeSupervisor::start(Some(nodes[0].0.to_string())).await;
        let mut status: Value = serde_json::from_str(crate::status::tests::AFTER_FAILOVER).unwrap();
        status["leader"] = json!(nodes[0].0);
        status["nodes"] = nodes
            .iter()
            .enumerate()
            .map(|(i, (address, role))| {
                json!({"address": address, "alive": *role != "dead", "member": true, "role": role,
                       "term": 2, "applied_lsn": 12, "lag": 0, "error": null,
                       "status": {"node_id": format!("node{i}")}})
            })
            .collect();
        supervisor.set_status(status);
        supervisor
    }

    #[tokio::test]
    async fn root_redirects_to_the_form_and_the_form_has_the_sample() {
        let state = state_for("127.0.0.1:1", None);
        let sent = get_page(&state, "/").await;
        assert!(sent.code.is_redirection());
        assert_eq!(sent.location.as_deref(), Some("/create/"));

        let sent = get_page(&state, "/create/").await;
        assert_eq!(sent.code, StatusCode::OK);
        assert!(sent.body.contains(r#"name="transaction" value="r(1)w(2=22)r(3)w(5=34)""#), "{}", sent.body);
        assert!(sent.body.contains(r#"<option value="leader" selected>the leader</option>"#), "{}", sent.body);
        assert!(sent.body.contains(r#"<link rel="stylesheet" href="/static/style.css">"#), "{}", sent.body);

        let sent = get_page(&state, "/health").await;
        assert_eq!((sent.code, sent.body.as_str()), (StatusCode::OK, r#"{"status":"ok"}"#));

        let css = get_page(&state, "/static/style.css").await;
        assert_eq!(css.code, StatusCode::OK);
        assert!(css.body.contains(".result.commit"));
        assert_eq!(get_page(&state, "/nowhere").await.code, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn a_parse_error_is_shown_inline_keeping_the_escaped_input() {
        let state = state_for("127.0.0.1:1", None);
        // r(1)"<b> url-encoded
        let sent = post_form(&state, "/create/", "transaction=r%281%29%22%3Cb%3E").await;
        assert_eq!(sent.code, StatusCode::OK);
        let html = sent.body;
        assert!(html.contains(r#"value="r(1)&#34;&#60;b&#62;""#), "{html}");
        assert!(html.contains("error at column 5"), "{html}");
        assert!(html.contains("r(1)<mark>&#34;</mark>&#60;b&#62;\n    ^ column 5</pre>"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        assert!(html.contains(r#"aria-invalid="true""#), "{html}");
        assert!(state.history().is_empty(), "a parse error sends nothing");
    }

    #[tokio::test]
    async fn a_transaction_runs_and_shows_values_outcome_and_leader() {
        let fake = Fake { balances: BTreeMap::from([(1, 100)]), ..Fake::default() };
        let agent = fake_agent::start(fake).await;
        let state = state_for(&agent, None);
        let sent = post_form(&state, "/create/", "transaction=r%281%29w%282%3D22%29r%283%29").await;
        assert_eq!(sent.code, StatusCode::OK);
        let html = sent.body;
        assert!(html.contains(r#"<section id="result" class="card result commit">"#), "{html}");
        assert!(html.contains(r#"<h2 id="outcome">COMMIT</h2>"#), "{html}");
        assert!(html.contains("The transaction committed"), "{html}");
        assert!(html.contains("<tr><td>1</td><td>100</td></tr>"), "{html}");
        assert!(html.contains(r#"<tr><td>3</td><td><span class="muted">no such account</span></td></tr>"#), "{html}");
        assert!(html.contains(r#"<td id="fact-commit_ts">2000</td>"#), "{html}");
        assert!(html.contains(r#"<td id="fact-lsn">4</td>"#), "{html}");
        assert!(html.contains(&format!(r#"<td id="fact-leader">node0 at {agent}</td>"#)), "{html}");
        assert!(html.contains(r#"<td id="fact-latency">"#), "{html}");
        assert!(html.contains(r#"value="r(1)w(2=22)r(3)""#), "{html}");

        let history = state.history();
        assert_eq!(history.len(), 1);
        assert_eq!((history[0].outcome.as_str(), history[0].leader.as_deref()), ("COMMIT", Some(agent.as_str())));
    }

    #[tokio::test]
    async fn an_abort_shows_the_reason_and_the_key() {
        let fake = Fake { stale_account: Some(1), balances: BTreeMap::from([(1, 100)]), ..Fake::default() };
        let agent = fake_agent::start(fake).await;
        let state = state_for(&agent, None);
        let html = post_form(&state, "/create/", "transaction=r%281%29w%281%3D5%29").await.body;
        assert!(html.contains(r#"<h2 id="outcome">ABORT</h2>"#), "{html}");
        assert!(html.contains("nothing was written: account 1 was changed by another transaction"), "{html}");
        assert!(html.contains(r#"<td id="fact-reason">stale_read</td>"#), "{html}");
        assert!(html.contains(r#"<td id="fact-key">1</td>"#), "{html}");
    }

    #[tokio::test]
    async fn the_form_follows_the_leader_a_replica_names_and_remembers_it() {
        let leader = fake_agent::start(Fake::default()).await;
        let replica = fake_agent::start(Fake::replica_of(&leader)).await;
        let state = state_for(&replica, None);
        let html = post_form(&state, "/create/", "transaction=w%281%3D1%29").await.body;
        assert!(html.contains(r#"<h2 id="outcome">COMMIT</h2>"#), "{html}");
        assert!(html.contains("is not the leader; sent /commit/ to the leader"), "{html}");
        assert_eq!(state.leader(), leader);
    }

    #[tokio::test]
    async fn read_only_transactions_can_read_from_a_chosen_node() {
        let leader = fake_agent::start(Fake { balances: BTreeMap::from([(1, 7)]), ..Fake::default() }).await;
        let replica_fake = Fake { balances: BTreeMap::from([(1, 7)]), ..Fake::replica_of(&leader) };
        let replica = fake_agent::start(replica_fake).await;
        let supervisor = supervisor_of(&[(&leader, "leader"), (&replica, "replica")]).await;
        let state = state_for(&leader, Some(&supervisor.address));

        let form = get_page(&state, "/create/").await.body;
        assert!(form.contains(&format!(r#"<option value="{replica}">{replica} (node1, replica)</option>"#)), "{form}");

        let body = format!("transaction=r%281%29&read_from={replica}");
        let html = post_form(&state, "/create/", &body).await.body;
        assert!(html.contains(r#"<h2 id="outcome">READ</h2>"#), "{html}");
        assert!(html.contains(&format!("node1 (replica) at {replica}")), "{html}");
        assert!(html.contains(&format!(r#"<option value="{replica}" selected>"#)), "{html}");

        let html = post_form(&state, "/create/", "transaction=r%281%29&read_from=127.0.0.1%3A1").await.body;
        assert!(html.contains("is not a node of the cluster"), "{html}");
        let html = post_form(&state, "/create/", "transaction=r%281%29&txn_id=nope").await.body;
        assert!(html.contains("is not a UUID"), "{html}");
    }

    #[tokio::test]
    async fn an_unavailable_cluster_is_explained_and_an_unknown_commit_can_be_retried() {
        let closed = fake_agent::closed_port().await;
        let state = state_for(&closed, Some(&fake_agent::closed_port().await));
        let html = post_form(&state, "/create/", "transaction=r%281%29").await.body;
        assert!(html.contains("The cluster is unavailable"), "{html}");
        assert!(html.contains("the cluster seems to be stopped"), "{html}");
        assert_eq!(state.history()[0].outcome, "UNAVAILABLE");

        let deposed = Fake { unavailable_commits: fake_agent::counter(100), name_txn_in_503: true, ..Fake::default() };
        let agent = fake_agent::start(deposed.clone()).await;
        let supervisor = FakeSupervisor::start(Some(agent.clone())).await;
        let runner = Runner::new()
            .unwrap()
            .with_supervisor(Some(&supervisor.address))
            .with_follow_budget(Duration::from_millis(300));
        let state = AppState::new(&agent, runner).unwrap();
        let html = post_form(&state, "/create/", "transaction=w%281%3D1%29").await.body;
        let id = deposed.tries()[0].transaction.txn_id.unwrap();
        assert!(html.contains(&format!(r#"<input type="hidden" name="txn_id" value="{id}">"#)), "{html}");
        assert!(html.contains("Run it again with the same txn_id"), "{html}");

        // Running it again sends the same id.
        deposed.unavailable_commits.store(0, Ordering::SeqCst);
        let html = post_form(&state, "/create/", &format!("transaction=w%281%3D1%29&txn_id={id}")).await.body;
        assert!(html.contains(r#"<h2 id="outcome">COMMIT</h2>"#), "{html}");
        assert_eq!(deposed.commits()[0].transaction.txn_id, Some(id));
    }

    #[tokio::test]
    async fn leader_changed_moves_the_next_transaction() {
        let state = state_for("127.0.0.1:1", None);
        let request = Request::post("/leader_changed/")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"leader": "127.0.0.1:8001", "term": 2}"#))
            .unwrap();
        assert_eq!(send(&state, request).await.code, StatusCode::OK);
        assert_eq!(state.leader(), "127.0.0.1:8001");
        let bad = Request::post("/leader_changed/").body(Body::from("{")).unwrap();
        assert_eq!(send(&state, bad).await.code, StatusCode::BAD_REQUEST);
        assert_eq!(state.leader(), "127.0.0.1:8001");
    }

    #[tokio::test]
    async fn the_cluster_page_shows_nodes_failover_recoveries_and_history() {
        let supervisor = FakeSupervisor::start(None).await;
        supervisor.set_status(serde_json::from_str(crate::status::tests::AFTER_FAILOVER).unwrap());
        let agent = fake_agent::start(Fake::default()).await;
        let state = state_for(&agent, Some(&supervisor.address));
        post_form(&state, "/create/", "transaction=w%287%3D70%29").await;

        let html = get_page(&state, "/cluster/").await.body;
        assert!(html.contains(r#"<div id="live">"#), "{html}");
        assert!(html.contains(r#"<strong id="writes">Writes unavailable</strong>"#), "{html}");
        assert!(html.contains(r#"<code id="cluster-leader">127.0.0.1:8001</code>"#), "{html}");
        assert!(html.contains(r#"<tr data-address="127.0.0.1:8001" data-role="leader">"#), "{html}");
        assert!(html.contains(r#"<tr data-address="127.0.0.1:8002" data-role="unknown" class="dead">"#), "{html}");
        assert!(html.contains("Connection refused"), "{html}");
        assert!(html.contains("<code>127.0.0.1:8000</code> → <code>127.0.0.1:8001</code> in term 2"), "{html}");
        assert!(html.contains("<dd>218 ms</dd>"), "{html}");
        assert!(html.contains("<td class=\"num\">15 ms</td>"), "{html}");
        assert!(html.contains("<code>w(7=70)</code>"), "{html}");
        assert!(html.contains(r#"<span class="outcome commit">COMMIT</span>"#), "{html}");
        // Exactly one drill: stop the leader.
        assert_eq!(html.matches("action=\"/cluster/drill\"").count(), 1, "{html}");
        assert!(html.contains(r#"data-confirm="Stop the leader 127.0.0.1:8001"#), "{html}");

        let fragment = get_page(&state, "/cluster/live").await;
        assert!(
            fragment.body.starts_with("\n<section id=\"state\"") || fragment.body.contains("<section id=\"state\"")
        );
        assert!(!fragment.body.contains("<html"), "a fragment, not a page");

        let json: Value = serde_json::from_str(&get_page(&state, "/cluster/status.json").await.body).unwrap();
        assert_eq!(json["supervisor"]["leader"], "127.0.0.1:8001");
        assert_eq!(json["history"][0]["outcome"], "COMMIT");
    }

    #[tokio::test]
    async fn the_cluster_page_says_when_the_supervisor_is_unreachable() {
        let closed = fake_agent::closed_port().await;
        let state = state_for("127.0.0.1:1", Some(&closed));
        let html = get_page(&state, "/cluster/live").await.body;
        assert!(html.contains("Supervisor unreachable"), "{html}");
        assert!(html.contains("cannot reach the supervisor"), "{html}");
    }

    #[tokio::test]
    async fn a_drill_asks_first_then_calls_the_agent_and_shows_its_answer() {
        let leader = Fake::default();
        let leader_address = fake_agent::start(leader.clone()).await;
        let supervisor = supervisor_of(&[(&leader_address, "leader")]).await;
        let state = state_for(&leader_address, Some(&supervisor.address));
        let form = format!("action=down_leader&node={leader_address}");

        // Without a confirmation: a page that asks, and nothing done.
        let sent = post_form(&state, "/cluster/drill", &form).await;
        assert_eq!(sent.code, StatusCode::OK);
        assert!(sent.body.contains(&format!("Stop the leader {leader_address} (GET /down_leader/)?")), "{}", sent.body);
        assert!(sent.body.contains(r#"<input type="hidden" name="confirmed" value="yes">"#), "{}", sent.body);
        assert!(leader.drills().is_empty());

        let sent = post_form(&state, "/cluster/drill", &format!("{form}&confirmed=yes")).await;
        assert_eq!(sent.code, StatusCode::SEE_OTHER);
        assert_eq!(sent.location.as_deref(), Some("/cluster/?drill=1"));
        assert_eq!(leader.drills(), vec!["/down_leader/"]);
        let html = get_page(&state, "/cluster/?drill=1").await.body;
        assert!(
            html.contains(&format!(
                r#"<p id="flash" class="flash ok">down_leader on {leader_address}: /down_leader/: done (now down)</p>"#
            )),
            "{html}"
        );

        // Again: the agent changes nothing and says so.
        post_form(&state, "/cluster/drill", &format!("{form}&confirmed=yes")).await;
        let html = get_page(&state, "/cluster/?drill=2").await.body;
        assert!(html.contains(r#"class="flash bad""#), "{html}");

        // Only nodes of the cluster, only the two drills.
        let sent = post_form(&state, "/cluster/drill", "action=down_leader&node=example.com%3A80&confirmed=yes").await;
        assert_eq!(sent.code, StatusCode::BAD_REQUEST);
        assert!(sent.body.contains("is not a node of the cluster"), "{}", sent.body);
        let sent = post_form(&state, "/cluster/drill", &format!("action=rm&node={leader_address}&confirmed=yes")).await;
        assert_eq!(sent.code, StatusCode::BAD_REQUEST);
        assert_eq!(leader.drills().len(), 2);
    }

    /// The value of one series in Prometheus text, such as
    /// `rmw_client_transactions_total{outcome="commit"}`; `None` when it was never recorded.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    // The metrics tests give the app a recorder of their own, set as their thread's recorder: a
    // `#[tokio::test]` runs the app, the runner and the fakes on that one thread, so these tests
    // count exactly what they did, whatever the other tests do at the same time on theirs.

    #[tokio::test]
    async fn metrics_count_the_form_s_transactions_by_outcome() {
        let agent = fake_agent::start(Fake { balances: BTreeMap::from([(1, 100)]), ..Fake::default() }).await;
        let sent = get_page(&state_for(&agent, None), "/metrics").await;
        assert_eq!(sent.code, StatusCode::SERVICE_UNAVAILABLE, "no recorder, no metrics");
        assert!(sent.body.contains("metrics are not enabled"), "{}", sent.body);

        let recorder = crate::metrics::recorder();
        let _local = ::metrics::set_default_local_recorder(&recorder);
        let state = state_for(&agent, None).with_metrics(recorder.handle()).unwrap();
        let commits = r#"rmw_client_transactions_total{outcome="commit"}"#;
        let before = get_page(&state, "/metrics").await;
        assert_eq!(before.code, StatusCode::OK);
        assert_eq!(sample(&before.body, commits), None, "{}", before.body);

        let html = post_form(&state, "/create/", "transaction=r%281%29w%282%3D22%29").await.body;
        assert!(html.contains(r#"<h2 id="outcome">COMMIT</h2>"#), "{html}");
        let after = get_page(&state, "/metrics").await.body;
        assert_eq!(sample(&after, commits), Some(1.0), "{after}");
        assert_eq!(sample(&after, r#"rmw_client_transaction_seconds_count{outcome="commit"}"#), Some(1.0), "{after}");
        assert!(after.contains("# TYPE rmw_client_transaction_seconds histogram"), "{after}");

        // An abort, a text that is not a transaction, and a leader that cannot be reached.
        let stale = fake_agent::start(Fake { stale_account: Some(1), ..Fake::default() }).await;
        state.set_leader(&stale);
        post_form(&state, "/create/", "transaction=r%281%29w%281%3D5%29").await;
        post_form(&state, "/create/", "transaction=r%281").await;
        state.set_leader(&fake_agent::closed_port().await);
        post_form(&state, "/create/", "transaction=r%281%29").await;
        let text = get_page(&state, "/metrics").await.body;
        for (outcome, count) in [("commit", 1.0), ("abort", 1.0), ("refused", 1.0), ("unavailable", 1.0)] {
            let series = format!(r#"rmw_client_transactions_total{{outcome="{outcome}"}}"#);
            assert_eq!(sample(&text, &series), Some(count), "{series} in {text}");
        }
        let failed = r#"rmw_client_agent_call_failures_total{path="/read/",error="connect"}"#;
        assert_eq!(sample(&text, failed), Some(1.0), "{text}");
    }

    #[tokio::test]
    async fn metrics_count_leader_announcements_and_drills_and_show_the_leader_followed() {
        let leader = fake_agent::start(Fake::default()).await;
        let replica = fake_agent::start(Fake::replica_of(&leader)).await;
        let supervisor = supervisor_of(&[(&leader, "leader"), (&replica, "replica")]).await;
        let recorder = crate::metrics::recorder();
        let _local = ::metrics::set_default_local_recorder(&recorder);
        let state = state_for(&leader, Some(&supervisor.address)).with_metrics(recorder.handle()).unwrap();
        let text = get_page(&state, "/metrics").await.body;
        assert_eq!(sample(&text, "rmw_client_leader_node"), Some(0.0), "{text}");

        let announce = |body: &str| {
            Request::post("/leader_changed/")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .unwrap()
        };
        let body = format!(r#"{{"leader": "{replica}", "term": 3}}"#);
        assert_eq!(send(&state, announce(&body)).await.code, StatusCode::OK);
        assert_eq!(send(&state, announce("{")).await.code, StatusCode::BAD_REQUEST);
        let guarded = state_for(&leader, None).with_token(Some("t0ken")).unwrap();
        assert_eq!(send(&guarded, announce(&body)).await.code, StatusCode::UNAUTHORIZED);
        let text = get_page(&state, "/metrics").await.body;
        for (result, count) in [("accepted", 1.0), ("bad_request", 1.0), ("unauthorized", 1.0)] {
            let series = format!(r#"rmw_client_leader_announcements_total{{result="{result}"}}"#);
            assert_eq!(sample(&text, &series), Some(count), "{series} in {text}");
        }
        assert_eq!(sample(&text, "rmw_client_leader_term"), Some(3.0), "{text}");
        assert_eq!(sample(&text, "rmw_client_leader_node"), Some(1.0), "{text}");

        // Asking for confirmation is not a drill; the agent stopping, then having nothing to
        // stop, are; so are a drill that is not one and a node the supervisor does not list.
        let drill = format!("action=down_leader&node={leader}");
        post_form(&state, "/cluster/drill", &drill).await;
        post_form(&state, "/cluster/drill", &format!("{drill}&confirmed=yes")).await;
        post_form(&state, "/cluster/drill", &format!("{drill}&confirmed=yes")).await;
        post_form(&state, "/cluster/drill", "action=down_leader&node=example.com%3A80&confirmed=yes").await;
        post_form(&state, "/cluster/drill", &format!("action=rm&node={leader}&confirmed=yes")).await;
        let text = get_page(&state, "/metrics").await.body;
        for (action, result) in [
            ("down_leader", "changed"),
            ("down_leader", "unchanged"),
            ("down_leader", "refused"),
            ("unknown", "refused"),
        ] {
            let series = format!(r#"rmw_client_drills_total{{action="{action}",result="{result}"}}"#);
            assert_eq!(sample(&text, &series), Some(1.0), "{series} in {text}");
        }
        assert_eq!(text.matches("rmw_client_drills_total{").count(), 4, "{text}");
    }

    #[tokio::test]
    async fn history_keeps_the_last_twenty() {
        let agent = fake_agent::start(Fake::default()).await;
        let state = state_for(&agent, None);
        for i in 0..(HISTORY_LEN + 3) {
            post_form(&state, "/create/", &format!("transaction=w%28{i}%3D1%29")).await;
        }
        let history = state.history();
        assert_eq!(history.len(), HISTORY_LEN);
        assert_eq!(history[0].transaction, format!("w({}=1)", HISTORY_LEN + 2));
    }
}
