//! The HTTP edge: parse into typed values, call the node, map the result. Handlers stay thin.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
#[allow(unused_imports)] // Some are named only in the OpenAPI annotations.
use protocol::{
    AgentStatus, BatchStateResponse, ClusterBirth, ClusterConfig, CommitRequest, CommitResponse, DecideRequest,
    DecideResponse, DrillResponse, ErrorBody, FenceResponse, JoinRequest, LogPage, Lsn, Outcome, PauseRequest,
    PauseResponse, PrepareRequest, PrepareResponse, PromoteResponse, ReadRequest, ReadResponse, RecoverRequest,
    RecoverResponse, ResetResponse, Role, RoleCheck, SnapshotHeader, DEFAULT_LOG_PAGE, MAX_BODY_BYTES, MAX_LOG_PAGE,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use uuid::Uuid;

use crate::error::ApiError;
use crate::node::Node;
use crate::two_phase::TxnOutcome;
use protocol::api_keys::Scope;

/// Internal messages carry whole batches: up to `MAX_BATCH` transactions of up to
/// `MAX_SET_LEN` writes each.
pub const MAX_INTERNAL_BODY_BYTES: usize = 64 * 1024 * 1024;

pub fn router(node: Arc<Node>) -> Router {
    // Internal endpoints, the drills and log paging: behind the cluster token when one is set.
    let mut internal = Router::new()
        .route("/internal/prepare", post(prepare))
        .route("/internal/decide", post(decide))
        .route("/internal/batch_state", get(batch_state))
        .route("/internal/fence", post(fence))
        .route("/internal/promote", post(promote))
        .route("/internal/config", post(config))
        .route("/internal/pause", post(pause))
        .route("/internal/join", post(join))
        .route("/internal/recover", post(recover))
        .route("/internal/cluster_id", post(cluster_id))
        .route("/internal/reset", post(reset))
        .route("/replication_log/", get(replication_log))
        .route("/internal/snapshot", get(snapshot))
        .route("/down_leader/", get(down_leader))
        .route("/up_node/", get(up_node))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_INTERNAL_BODY_BYTES));
    internal = service::guard(internal, node.cfg.token.as_deref());
    // With mutual TLS, only programs holding a certificate from the cluster's CA get past here.
    internal = service::guard_client_cert(internal, node.cfg.tls.as_ref().is_some_and(service::Tls::client_auth));
    // The transactions: behind client API keys when there are some.
    let keys = node.cfg.api_keys.as_ref();
    let reads = crate::client_keys::guard(Router::new().route("/read/", post(read)), keys, Scope::Read);
    let commits = crate::client_keys::guard(Router::new().route("/commit/", post(commit)), keys, Scope::Write);
    // The document describes this agent as configured (with or without the token and keys):
    // built once.
    let spec: Arc<str> = crate::openapi::json(node.cfg.token.is_some(), keys.is_some()).into();
    Router::new()
        .route("/openapi.json", get(move || async move { ([(CONTENT_TYPE, "application/json")], spec.to_string()) }))
        .merge(reads)
        .merge(commits)
        .route("/status", get(status))
        .route("/health", get(health))
        .route("/primary", get(primary))
        .route("/replica", get(replica))
        .route("/read-only", get(read_only))
        .route("/metrics", get(metrics))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .merge(internal)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            ApiError::Internal("a handler panicked".into()).into_response()
        }))
        .layer(axum::middleware::from_fn(service::close_when_body_unread))
        .with_state(node)
}

/// A JSON body, accepted whatever the `Content-Type` (the original's users send it both ways),
/// with every rejection turned into a 400 that says what is wrong.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::BadRequest(format!("the request body is larger than the limit of {MAX_BODY_BYTES} bytes"))
            } else {
                ApiError::BadRequest(format!("could not read the request body: {}", rejection.body_text()))
            }
        })?;
        serde_json::from_slice(&bytes).map(ApiJson).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
    }
}

/// Query parameters, with rejections turned into a 400.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| ApiError::BadRequest(format!("invalid query: {}", e.body_text())))
    }
}

/// `POST /read/`: the balances of some accounts, with the read timestamp to commit with.
#[utoipa::path(post, path = "/read/", tag = "transactions",
    request_body(content = ReadRequest, description = "The accounts to read (`read_set`, non-empty; no `write_set`), and optionally the LSN to wait for (`min_lsn`) or to read at (`as_of_lsn`)"),
    responses(
        (status = 200, description = "The values read: a snapshot that is exactly the effect of the log up to `lsn` (`as_of_lsn` when given)", body = ReadResponse),
        (status = 400, description = "Malformed input (empty or oversized read set, a write set, a negative account, `min_lsn` or `as_of_lsn`); nothing changed", body = ErrorBody),
        (status = 410, description = "`log_trimmed`: `as_of_lsn` is at or below this node's log horizon (`--retain-log`); `horizon` says where its log starts", body = ErrorBody),
        (status = 503, description = "The node is down, cannot reach its PostgreSQL, did not reach `min_lsn` or `as_of_lsn`, or an account stayed locked, within 5 s", body = ErrorBody),
    ))]
async fn read(State(node): State<Arc<Node>>, ApiJson(req): ApiJson<ReadRequest>) -> Result<Response, ApiError> {
    let read = req.validate().map_err(|e| ApiError::BadRequest(e.0))?;
    metrics::counter!("rmw_reads_total").increment(1);
    Ok(Json(node.read(read).await?).into_response())
}

/// `POST /commit/`: validate, replicate to every member, answer once durable everywhere.
#[utoipa::path(post, path = "/commit/", tag = "transactions",
    request_body(content = CommitRequest, description = "The read set with the read's `time_stamp`, the write set, and optionally a `txn_id` that makes retries safe"),
    responses(
        (status = 200, description = "COMMIT: durable on every member", body = CommitResponse),
        (status = 400, description = "Malformed input (empty transaction, missing `time_stamp`, a negative account, an account given twice, a set over its limit, `min_copies` out of range), or `bad_timestamp`: a `time_stamp` above every timestamp the cluster handed out; nothing changed", body = ErrorBody),
        (status = 409, description = "ABORT by a conflict: `reason` is `stale_read` or `key_locked`, `key` the account. Final: a retry of the `txn_id` gets the same answer on any leader", body = CommitResponse),
        (status = 410, description = "`log_trimmed`: a `txn_id` the log does not hold, with a `time_stamp` older than the log's first entry (`--retain-log`): if it is a retry, its outcome is no longer known; nothing was done", body = ErrorBody),
        (status = 421, description = "Not the leader: send the commit to `leader`", body = ErrorBody),
        (status = 503, description = "ABORT with `reason` `not_enough_replicas` (fewer nodes reachable than the durability floor) or `replication_failed` (nothing applied either way; retry with the same `txn_id`), or an error: the node is down, no leader is known, the outcome is not known yet (retry with the same `txn_id`), or too many commits are waiting (`Retry-After`)",
            body = crate::openapi::CommitUnavailable,
            headers(("Retry-After" = u32, description = "Seconds to wait, when the leader is overloaded"))),
    ))]
async fn commit(State(node): State<Arc<Node>>, ApiJson(req): ApiJson<CommitRequest>) -> Result<Response, ApiError> {
    let txn = req.validate().map_err(|e| ApiError::BadRequest(e.0))?;
    node.check_serving()?;
    let Some(leader) = node.leader() else {
        return Err(node.not_leader());
    };
    let started = std::time::Instant::now();
    let (txn_id, outcome) = leader.commit(txn, &node).await?;
    let label = match &outcome {
        TxnOutcome::Committed { .. } => "commit",
        TxnOutcome::Aborted { .. } => "abort",
        TxnOutcome::NotApplied | TxnOutcome::Unknown { .. } => "unknown",
    };
    metrics::histogram!("rmw_commit_seconds", "outcome" => label).record(started.elapsed().as_secs_f64());
    match outcome {
        TxnOutcome::NotApplied => Err(node.not_leader()),
        TxnOutcome::Unknown { message } => Err(ApiError::OutcomeUnknown(format!("transaction {txn_id}: {message}"))),
        outcome => Ok(commit_response(txn_id, outcome)),
    }
}

fn commit_response(txn_id: Uuid, outcome: TxnOutcome) -> Response {
    match outcome {
        TxnOutcome::Committed { lsn, commit_ts } => Json(CommitResponse {
            commit: Outcome::Commit,
            txn_id,
            commit_ts: Some(commit_ts),
            lsn: Some(lsn),
            reason: None,
            key: None,
            message: None,
        })
        .into_response(),
        TxnOutcome::NotApplied | TxnOutcome::Unknown { .. } => {
            ApiError::Internal("undecided outcome reached the response".into()).into_response()
        }
        TxnOutcome::Aborted { reason, key, message } => {
            // A conflict is a final answer; anything else applied nothing and may be retried.
            let status = if reason.is_final() { StatusCode::CONFLICT } else { StatusCode::SERVICE_UNAVAILABLE };
            let body = CommitResponse {
                commit: Outcome::Abort,
                txn_id,
                commit_ts: None,
                lsn: None,
                reason: Some(reason),
                key,
                message: Some(message),
            };
            (status, Json(body)).into_response()
        }
    }
}

/// `GET /metrics`: counters and histograms as recorded, gauges read now.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
        (status = 503, description = "Metrics are not enabled in this process", body = ErrorBody),
    ))]
async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let status = node.status();
    metrics::gauge!("rmw_applied_lsn").set(status.applied_lsn as f64);
    metrics::gauge!("rmw_term").set(status.term as f64);
    metrics::gauge!("rmw_is_leader").set(if status.role == protocol::Role::Leader { 1.0 } else { 0.0 });
    metrics::gauge!("rmw_members").set(status.members.len() as f64);
    match crate::metrics::render() {
        Some(text) => ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        None => ApiError::Unavailable("metrics are not enabled in this process".into()).into_response(),
    }
}

/// `GET /status`: where this agent stands. Always 200, whatever the role.
#[utoipa::path(get, path = "/status", tag = "operations",
    responses((status = 200, description = "Role, term, leader, applied LSN, members", body = AgentStatus)))]
async fn status(State(node): State<Arc<Node>>) -> Response {
    Json(node.status()).into_response()
}

#[derive(Deserialize)]
struct HealthQuery {
    term: Option<protocol::Term>,
}

/// `GET /health`: 200 only when the node serves and reaches its PostgreSQL. The supervisor's
/// polls carry its current `term`: a leader that sees a newer term steps down at once.
#[utoipa::path(get, path = "/health", tag = "operations",
    params(("term" = Option<i64>, Query, description = "The supervisor's current term: a leader of an older term steps down. Honoured only with the cluster token (when one is configured) and on an agent that has a supervisor")),
    responses(
        (status = 200, description = "Serving", body = crate::openapi::Health),
        (status = 400, description = "A `term` that is not an integer", body = ErrorBody),
        (status = 503, description = "Down, or PostgreSQL unreachable", body = ErrorBody),
    ))]
async fn health(
    State(node): State<Arc<Node>>,
    headers: axum::http::HeaderMap,
    ApiQuery(q): ApiQuery<HealthQuery>,
) -> Result<Response, ApiError> {
    node.check_serving()?;
    // `/health` is open, but stepping down is a change of cluster state: the term counts only
    // from a caller holding the cluster token (when one is configured), and only where a
    // supervisor exists to elect the next leader (a fixed leader has nobody to replace it).
    let from_supervisor = node.cfg.supervisor.is_some()
        && node.cfg.token.as_deref().is_none_or(|token| {
            let given = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            protocol::auth::authorized(given, token)
        });
    if let (Some(term), true) = (q.term, from_supervisor) {
        node.step_down_if_behind(term);
    }
    node.store.ping().await.map_err(ApiError::unavailable)?;
    Ok(Json(serde_json::json!({"status": "ok", "role": node.role()})).into_response())
}

/// What a role check passes on: the roles it accepts, and for a replica how far behind it may be.
async fn role_check(node: &Node, accept: &[Role], max_lag: Option<Lsn>) -> Result<Response, ApiError> {
    node.check_serving()?;
    let role = node.role();
    if !accept.contains(&role) {
        let (code, wanted) = match accept {
            [Role::Leader] => ("not_primary", "the leader"),
            [Role::Replica] => ("not_replica", "a member replica"),
            _ => ("not_replica", "the leader or a member replica"),
        };
        let is = serde_json::to_value(role).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        let leader = match node.status().leader {
            _ if role == Role::Leader => String::new(),
            Some(leader) if leader != node.cfg.address => format!("; the leader is {leader}"),
            _ => "; no leader is known".to_string(),
        };
        return Err(ApiError::RoleCheck {
            code,
            message: format!("this node is not {wanted} (it is the {is}{leader})"),
        });
    }
    let (term, applied_lsn, lag, cluster) = node.look(|m| (m.term(), m.applied().lsn, m.lag(), m.cluster_id()));
    if cluster.is_none() {
        // A new or wiped database that names itself a member in its start-up configuration:
        // it holds nothing until the supervisor has recovered it into the cluster.
        return Err(ApiError::RoleCheck {
            code: "not_replica",
            message: "this node's database belongs to no cluster yet (new or wiped): it serves reads once the \
                      supervisor has recovered it into the member set"
                .into(),
        });
    }
    if let Some(max) = max_lag.filter(|max| lag > *max) {
        return Err(ApiError::RoleCheck {
            code: "lagging",
            message: format!("this replica is {lag} entries behind what its leader sent, more than max_lag={max}"),
        });
    }
    node.store.ping().await.map_err(ApiError::unavailable)?;
    Ok(Json(RoleCheck { status: "ok".into(), role, term, applied_lsn, lag }).into_response())
}

/// `GET /primary`: 200 only on the leader that accepts writes (for a load balancer's write
/// backend; HAProxy: `option httpchk GET /primary`).
#[utoipa::path(get, path = "/primary", tag = "operations",
    responses(
        (status = 200, description = "This node leads, serves and reaches its PostgreSQL", body = RoleCheck),
        (status = 503, description = "Not the leader (`not_primary`, naming the leader when known), down, or PostgreSQL unreachable", body = ErrorBody),
    ))]
async fn primary(State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    role_check(&node, &[Role::Leader], None).await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ReplicaQuery {
    /// Fail the check when this replica holds more than this many entries prepared but not
    /// applied yet (default: no bound).
    #[param(value_type = Option<i64>, minimum = 0)]
    max_lag: Option<Lsn>,
}

/// `GET /replica`: 200 on a member replica (it holds every acknowledged commit and serves
/// reads), optionally not more than `max_lag` entries behind.
#[utoipa::path(get, path = "/replica", tag = "operations", params(ReplicaQuery),
    responses(
        (status = 200, description = "A member replica that serves and reaches its PostgreSQL", body = RoleCheck),
        (status = 400, description = "A `max_lag` that is not a non-negative integer", body = ErrorBody),
        (status = 503, description = "Not a member replica (`not_replica`: the leader, a standby outside the member set, or down), behind by more than `max_lag` (`lagging`), or PostgreSQL unreachable", body = ErrorBody),
    ))]
async fn replica(State(node): State<Arc<Node>>, ApiQuery(q): ApiQuery<ReplicaQuery>) -> Result<Response, ApiError> {
    if q.max_lag.is_some_and(|l| l < 0) {
        return Err(ApiError::BadRequest("max_lag must be 0 or more".into()));
    }
    role_check(&node, &[Role::Replica], q.max_lag).await
}

/// `GET /read-only`: 200 on the leader or a member replica: a node whose reads hold every
/// acknowledged commit (for a load balancer's read backend).
#[utoipa::path(get, path = "/read-only", tag = "operations",
    responses(
        (status = 200, description = "The leader or a member replica, serving and reaching its PostgreSQL", body = RoleCheck),
        (status = 503, description = "A standby outside the member set, down, or PostgreSQL unreachable (`not_replica`)", body = ErrorBody),
    ))]
async fn read_only(State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    role_check(&node, &[Role::Leader, Role::Replica], None).await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    /// Entries with an LSN greater than this (default 0: from the start).
    #[serde(default)]
    #[param(value_type = Option<i64>, minimum = 0)]
    after: Lsn,
    /// At most this many entries (default 1000).
    #[param(minimum = 1, maximum = 10_000)]
    limit: Option<i64>,
}

/// `GET /replication_log/`: a page of the recovery log, for a node catching up.
#[utoipa::path(get, path = "/replication_log/", tag = "recovery", params(LogQuery),
    security(("cluster_token" = [])),
    responses(
        (status = 200, description = "The entries after `after`, in LSN order", body = LogPage),
        (status = 400, description = "A negative `after`, a `limit` out of range, or an unknown parameter", body = ErrorBody),
        (status = 410, description = "`log_trimmed`: the entries after `after` are no longer in this node's log (`--retain-log`, or it was rebuilt from a snapshot); `horizon` is the highest LSN it no longer holds", body = ErrorBody),
        (status = 503, description = "PostgreSQL unreachable", body = ErrorBody),
    ))]
async fn replication_log(State(node): State<Arc<Node>>, ApiQuery(q): ApiQuery<LogQuery>) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_LOG_PAGE);
    if !(1..=MAX_LOG_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!("limit must be between 1 and {MAX_LOG_PAGE}, got {limit}")));
    }
    if q.after < 0 {
        return Err(ApiError::BadRequest(format!("after must be 0 or more, got {}", q.after)));
    }
    let applied_lsn = node.applied().0;
    // One more than asked tells whether another page follows.
    let mut entries = node.store.log_page(q.after, limit + 1).await.map_err(ApiError::unavailable)?;
    if let Some(first) = entries.first().filter(|e| e.lsn > q.after + 1) {
        let horizon = first.lsn - 1;
        return Err(ApiError::LogTrimmed {
            horizon,
            message: format!(
                "this node's log starts at LSN {}: the entries after {} up to {horizon} were trimmed \
                 (--retain-log) or replaced by a snapshot; a node that far behind is rebuilt from a snapshot",
                first.lsn, q.after
            ),
        });
    }
    let more = entries.len() as i64 > limit;
    entries.truncate(limit as usize);
    Ok(Json(LogPage { entries, applied_lsn, more }).into_response())
}

/// `GET /internal/snapshot`: a consistent snapshot of the accounts, for a rebuild.
#[utoipa::path(get, path = "/internal/snapshot", tag = "recovery",
    security(("cluster_token" = [])),
    responses(
        (status = 200, description = "First line: a JSON `SnapshotHeader` (the log entry the snapshot is at, null for an empty log); \
            then the accounts in PostgreSQL's COPY text format (account_number, balance, created_at, updated_at), streamed", content_type = "text/plain"),
        (status = 503, description = "PostgreSQL unreachable", body = ErrorBody),
    ))]
async fn snapshot(State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    let (base, rows) = node.store.export_snapshot().await.map_err(ApiError::unavailable)?;
    tracing::info!(base_lsn = ?base.as_ref().map(|b| b.lsn), "sending a snapshot");
    // The rebuild replays the log after the base next: trimming keeps it until the node joins.
    if let (Some(base), Ok(mut holds)) = (&base, node.log_holds.lock()) {
        holds.hold(base.lsn, tokio::time::Instant::now());
    }
    let mut header = serde_json::to_vec(&SnapshotHeader { base }).map_err(ApiError::internal)?;
    header.push(b'\n');
    let first = futures::stream::once(async move { Ok::<_, std::io::Error>(bytes::Bytes::from(header)) });
    let body = axum::body::Body::from_stream(futures::StreamExt::chain(first, rows));
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

/// Phase one of a round: prepare the leader's batch in PostgreSQL (`PREPARE TRANSACTION`) and vote.
#[utoipa::path(post, path = "/internal/prepare", tag = "internal",
    request_body(content = PrepareRequest, description = "Phase one for a batch of consecutive log entries"),
    security(("cluster_token" = [])),
    responses(
        (status = 200, description = "The vote: `YES` only if the term matches and this node holds every entry up to `prev_lsn`", body = PrepareResponse),
        (status = 400, description = "Malformed batch", body = ErrorBody),
        (status = 409, description = "A stale term (`stale_term`, with this node's `term`), or a batch that contradicts this node's state", body = ErrorBody),
        (status = 503, description = "Down, or PostgreSQL unreachable", body = ErrorBody),
    ))]
async fn prepare(State(node): State<Arc<Node>>, ApiJson(req): ApiJson<PrepareRequest>) -> Result<Response, ApiError> {
    Ok(Json(detached(async move { node.prepare(&req).await }).await?).into_response())
}

/// Phase two: commit or roll back the prepared batch, as the leader decided.
#[utoipa::path(post, path = "/internal/decide", tag = "internal",
    request_body(content = DecideRequest, description = "Phase two: COMMIT or ABORT of the prepared batch ending at `last_lsn`"),
    security(("cluster_token" = [])),
    responses(
        (status = 200, description = "Decided (also when it already was)", body = DecideResponse),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 409, description = "A stale term, or a decision that contradicts this node's state", body = ErrorBody),
        (status = 503, description = "Down, or PostgreSQL unreachable", body = ErrorBody),
    ))]
async fn decide(State(node): State<Arc<Node>>, ApiJson(req): ApiJson<DecideRequest>) -> Result<Response, ApiError> {
    Ok(Json(detached(async move { node.decide(&req).await }).await?).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct BatchQuery {
    /// The LSN of the batch's last entry.
    #[param(value_type = i64)]
    last_lsn: Lsn,
    /// The transaction id of the batch's last entry.
    last_txn: Uuid,
    /// The term of the batch.
    #[param(value_type = i64)]
    term: protocol::Term,
}

/// Where this member stands on a batch (prepared, committed, absent): in-doubt resolution asks it.
#[utoipa::path(get, path = "/internal/batch_state", tag = "internal", params(BatchQuery),
    security(("cluster_token" = [])),
    responses(
        (status = 200, description = "Whether this node holds the batch committed, prepared or neither", body = BatchStateResponse),
        (status = 400, description = "A missing or malformed parameter", body = ErrorBody),
        (status = 503, description = "PostgreSQL unreachable", body = ErrorBody),
    ))]
async fn batch_state(State(node): State<Arc<Node>>, ApiQuery(q): ApiQuery<BatchQuery>) -> Result<Response, ApiError> {
    let batch = protocol::PendingInfo { last_lsn: q.last_lsn, last_txn: q.last_txn, term: q.term };
    Ok(Json(node.batch_state(&batch).await?).into_response())
}

/// Runs `work` to completion even if the caller goes away. Hyper drops a handler's future
/// when its connection closes (a killed leader, a timed-out call); a PREPARE or COMMIT
/// PREPARED abandoned half-way would leave PostgreSQL and the agent's memory disagreeing.
async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(work).await.map_err(|e| ApiError::Internal(format!("the work of a request failed: {e}")))?
}

/// The supervisor's new term and configuration: adopted durably; a leader of a lower term stops.
#[utoipa::path(post, path = "/internal/fence", tag = "internal",
    request_body(content = ClusterConfig, description = "A configuration with a term at least this node's"),
    security(("cluster_token" = [])),
    responses(
        (status = 200, description = "Adopted; where this node stands", body = FenceResponse),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 409, description = "A stale term", body = ErrorBody),
        (status = 503, description = "Down, or PostgreSQL unreachable", body = ErrorBody),
    ))]
async fn fence(State(node): State<Arc<Node>>, ApiJson(req): ApiJson<ClusterConfig>) -> Result<Response, ApiError> {
    node.check_serving()?;
    Ok(Json(detached(async move { node.fence(&req).await }).await?).into_response())
}

/// Makes this node the leader of the given term: resolves in-doubt batches, then takes commits.
#[utoipa::path(post, path = "/internal/promote", tag = "internal",
    request_body(content = ClusterConfig, description = "A configuration naming this node as the leader"),
    security(("cluster_token" = [])),
    responses(
        (status = 200, description = "This node leads the term; in-doubt batches were resolved first", body = PromoteResponse),
        (status = 400, description = "Malformed body, or a configuration that names another leader", body = ErrorBody),
        (status = 409, description = "A stale term, or a state that forbids the promotion", body = ErrorBody),
        (status = 503, description = "Down, or a member or PostgreSQL unreachable", body = ErrorBody),
    ))]
async fn promote(State(node): State<Arc<Node>>, ApiJson(req): ApiJson<ClusterConfig>) -> Result<Response, ApiError> {
    node.check_serving()?;
    Ok(Json(detached(async move { node.promote(req).await }).await?).into_response())
}

/// A new configuration version in the same term (a member removed or added).
#[utoipa::path(post, path = "/internal/config", tag = "internal",
    request_body(content = ClusterConfig, description = "A membership change within the current term"),
    security(("cluster_token" = [])),
    responses(
        (status = 200, description = "Adopted; this node's status", body = AgentStatus),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 409, description = "A stale term", body = ErrorBody),
        (status = 503, description = "Down, or PostgreSQL unreachable", body = ErrorBody),
    ))]
async fn config(State(node): State<Arc<Node>>, ApiJson(req): ApiJson<ClusterConfig>) -> Result<Response, ApiError> {
    node.check_serving()?;
    Ok(Json(detached(async move { node.apply_config(&req).await }).await?).into_response())
}

/// A new cluster's first leader gives its id: an empty database that belongs to no cluster takes it.
#[utoipa::path(post, path = "/internal/cluster_id", tag = "internal",
    request_body(content = ClusterBirth, description = "The new cluster's id, from its first leader"),
    security(("cluster_token" = [])),
    responses(
        (status = 200, description = "Taken (or already this node's); this node's status", body = AgentStatus),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 409, description = "A stale term, a database of another cluster, or one with a log", body = ErrorBody),
        (status = 503, description = "Down, or PostgreSQL unreachable", body = ErrorBody),
    ))]
async fn cluster_id(State(node): State<Arc<Node>>, ApiJson(req): ApiJson<ClusterBirth>) -> Result<Response, ApiError> {
    node.check_serving()?;
    Ok(Json(detached(async move { node.take_birth(&req).await }).await?).into_response())
}

/// A rebuild: empties this node's database (balances, log, cluster id; prepared batches rolled
/// back; the term stays) so that recovery replays the whole log onto it. Only for a node that
/// neither leads nor is a member of the configuration sent.
#[utoipa::path(post, path = "/internal/reset", tag = "internal",
    request_body(content = ClusterConfig, description = "The supervisor's configuration, adopted first; this node must not be among its members"),
    security(("cluster_token" = [])),
    responses(
        (status = 200, description = "Emptied", body = ResetResponse),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 409, description = "A stale term, or this node leads or is a member: it keeps its data", body = ErrorBody),
        (status = 503, description = "Down, or PostgreSQL unreachable (then retry: nothing, or only part, was emptied)", body = ErrorBody),
    ))]
async fn reset(State(node): State<Arc<Node>>, ApiJson(config): ApiJson<ClusterConfig>) -> Result<Response, ApiError> {
    Ok(Json(detached(async move { node.reset(&config).await }).await?).into_response())
}

/// Recovery's final catch-up: the leader finishes its round and starts no new one for a moment.
#[utoipa::path(post, path = "/internal/pause", tag = "internal",
    request_body(content = PauseRequest, description = "Finish the round in flight, start no new one for at most `max_ms`"),
    security(("cluster_token" = [])),
    responses(
        (status = 200, description = "Paused", body = PauseResponse),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 409, description = "A stale term", body = ErrorBody),
        (status = 421, description = "Not the leader", body = ErrorBody),
        (status = 503, description = "Down, or no leader", body = ErrorBody),
    ))]
async fn pause(State(node): State<Arc<Node>>, ApiJson(req): ApiJson<PauseRequest>) -> Result<Response, ApiError> {
    node.check_serving()?;
    Ok(Json(node.pause(&req).await?).into_response())
}

/// Recovery's last step: the leader stores the member set that adds the caught-up node, if its
/// own log still ends where the node's does; adopting it ends the pause.
#[utoipa::path(post, path = "/internal/join", tag = "internal",
    request_body(content = JoinRequest, description = "The new configuration and the LSN the joining node reached"),
    security(("cluster_token" = [])),
    responses(
        (status = 200, description = "Stored: the leader's status with the new configuration", body = AgentStatus),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 409, description = "A stale term, or the leader's log moved past the node's (`conflict`): nothing changed", body = ErrorBody),
        (status = 421, description = "Not the leader", body = ErrorBody),
        (status = 503, description = "Down, or PostgreSQL unreachable", body = ErrorBody),
    ))]
async fn join(State(node): State<Arc<Node>>, ApiJson(req): ApiJson<JoinRequest>) -> Result<Response, ApiError> {
    node.check_serving()?;
    Ok(Json(detached(async move { node.join(&req).await }).await?).into_response())
}

/// Brings this node up to date from the leader's log (its prepared batch resolved first).
#[utoipa::path(post, path = "/internal/recover", tag = "internal",
    request_body(content = RecoverRequest, description = "Catch up from `leader`'s log"),
    security(("cluster_token" = [])),
    responses(
        (status = 200, description = "Caught up", body = RecoverResponse),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 409, description = "A stale term, the leader itself, or a diverged log (refused, never merged)", body = ErrorBody),
        (status = 503, description = "Down, or the leader or PostgreSQL unreachable", body = ErrorBody),
    ))]
async fn recover(State(node): State<Arc<Node>>, ApiJson(req): ApiJson<RecoverRequest>) -> Result<Response, ApiError> {
    Ok(Json(detached(async move { node.recover(&req).await }).await?).into_response())
}

/// `GET /down_leader/`: the drill that stops the leader.
#[utoipa::path(get, path = "/down_leader/", tag = "drills",
    security(("cluster_token" = [])),
    responses(
        (status = 200, description = "The leader stopped serving; the supervisor elects another", body = DrillResponse),
        (status = 409, description = "Nothing changed (not the leader, or already down)", body = DrillResponse),
    ))]
async fn down_leader(State(node): State<Arc<Node>>) -> Response {
    let answer = node.down_leader().await;
    let status = if answer.changed { StatusCode::OK } else { StatusCode::CONFLICT };
    (status, Json(answer)).into_response()
}

/// `GET /up_node/`: the drill that brings a downed node back as a standby.
#[utoipa::path(get, path = "/up_node/", tag = "drills",
    security(("cluster_token" = [])),
    responses(
        (status = 200, description = "Up again as a standby; the supervisor recovers it", body = DrillResponse),
        (status = 409, description = "Nothing changed (the node was not down)", body = DrillResponse),
    ))]
async fn up_node(State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    let answer = detached(async move { Ok(node.up_node().await) }).await?;
    let status = if answer.changed { StatusCode::OK } else { StatusCode::CONFLICT };
    Ok((status, Json(answer)).into_response())
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no such endpoint: {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let body = protocol::ErrorBody {
        error: "method_not_allowed".into(),
        message: format!("{method} is not allowed on {}", uri.path()),
        leader: None,
        term: None,
        horizon: None,
    };
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}
