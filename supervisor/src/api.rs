//! The supervisor's HTTP edge: the router, thin handlers that parse into `protocol` types and
//! call the runtime, and one error type, [`ApiError`], that maps every failure to a status code
//! and an [`ErrorBody`].
//!
//! Architecture invariant: no decision here. A handler parses, refuses on a standby, calls
//! [`Supervisor`], and maps the result.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use protocol::operator::{
    HistoryPage, MaintenanceResponse, NodeAccepted, NodeRequest, SwitchoverRequest, SwitchoverResponse,
    DEFAULT_HISTORY_LIMIT, MAX_HISTORY_EVENTS,
};
use protocol::supervisor_status::SupervisorStatus;
use protocol::{ClusterConfig, ErrorBody, FailureReport, RegisterClient};
use serde::de::DeserializeOwned;

use crate::history::latest;
use crate::membership::ReportError;
use crate::operator::OperatorError;
use crate::planned::{valid_address, Refused, Rejected};
use crate::run::Supervisor;
use crate::store::StoreError;
use crate::switchover::SwitchoverError;

/// Every error answer of the supervisor.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `bad_request`: not JSON, or not a valid value.
    #[error("{0}")]
    BadRequest(String),
    /// 503 `standby`: this supervisor does not act; the caller tries the next one it knows.
    #[error("{0}")]
    Standby(String),
    /// 409 `refused`: a failure report that does not remove the member.
    #[error("{0}")]
    Refused(String),
    /// 409 with the refusal's own code (`not_in_sync`, `below_floor`, ...): an operator's act
    /// that may not go ahead now; nothing changed.
    #[error(transparent)]
    Operator(#[from] Refused),
    /// 404 `not_found`: a node the supervisor does not know.
    #[error("{0}")]
    NotFound(String),
    /// 503 `unavailable`: a change begun and not finished; the supervisor finishes it itself.
    #[error("{0}")]
    Unfinished(String),
    /// 503 or 500: a change that could not be stored.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// 503 `unavailable`: `GET /metrics` in a process without a recorder.
    #[error("metrics are not enabled in this process")]
    MetricsDisabled,
}

impl From<ReportError> for ApiError {
    fn from(e: ReportError) -> ApiError {
        match e {
            ReportError::Refused(message) => ApiError::Refused(message),
            ReportError::Store(e) => ApiError::Store(e),
        }
    }
}

impl From<OperatorError> for ApiError {
    fn from(e: OperatorError) -> ApiError {
        match e {
            OperatorError::Rejected(Rejected::Refused(r)) => ApiError::Operator(r),
            OperatorError::Rejected(Rejected::Unknown(u)) => ApiError::NotFound(u.0),
            OperatorError::Store(e) => ApiError::Store(e),
        }
    }
}

impl From<SwitchoverError> for ApiError {
    fn from(e: SwitchoverError) -> ApiError {
        match e {
            SwitchoverError::Refused(r) => ApiError::Operator(r),
            SwitchoverError::Store(e) => ApiError::Store(e),
            SwitchoverError::Unfinished(message) => ApiError::Unfinished(message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Standby(_) => (StatusCode::SERVICE_UNAVAILABLE, "standby"),
            ApiError::Refused(_) => (StatusCode::CONFLICT, "refused"),
            ApiError::Operator(r) => (StatusCode::CONFLICT, r.code.code()),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Unfinished(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::MetricsDisabled => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            // Trying again may help: another supervisor wrote first, the store is unreachable,
            // or this one stopped being active.
            ApiError::Store(StoreError::NotActive) => (StatusCode::SERVICE_UNAVAILABLE, "standby"),
            ApiError::Store(StoreError::Conflict(_) | StoreError::Unavailable(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
            }
            ApiError::Store(StoreError::Corrupt(_)) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let message = match &self {
            ApiError::Store(StoreError::NotActive) => self.to_string(),
            ApiError::Store(e) => format!("could not store the change: {e}"),
            other => other.to_string(),
        };
        (status, Json(ErrorBody { error: code.into(), message, leader: None, term: None, horizon: None }))
            .into_response()
    }
}

pub fn router(sup: Arc<Supervisor>) -> Router {
    // Called by the cluster's own programs: with mutual TLS, only with a certificate from the CA.
    let internal =
        Router::new().route("/register_client/", post(register_client)).route("/report_failure", post(report_failure));
    let internal =
        service::guard_client_cert(internal, sup.settings.tls.as_ref().is_some_and(service::Tls::client_auth));
    // The operator's endpoints take the token alone: an operator's `client` need not hold a
    // certificate of the cluster's.
    let guarded = Router::new()
        .merge(internal)
        .route("/switchover", post(switchover))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .route("/members/add", post(add_member))
        .route("/members/remove", post(remove_member))
        .route("/rebuild", post(rebuild));
    let guarded = service::guard(guarded, sup.settings.token.as_deref());
    // The document describes this supervisor as configured (with or without the token).
    let spec: Arc<str> = crate::openapi::json(sup.settings.token.is_some()).into();
    Router::new()
        .route(
            "/openapi.json",
            get(move || async move { ([(axum::http::header::CONTENT_TYPE, "application/json")], spec.to_string()) }),
        )
        .route("/status", get(status))
        .route("/history", get(history))
        .route("/health", get(|| async { Json(serde_json::json!({"status": "ok"})) }))
        .route("/metrics", get(metrics_text))
        .merge(guarded)
        .layer(axum::middleware::from_fn(service::close_when_body_unread))
        .with_state(sup)
}

/// A JSON body, whatever the `Content-Type`.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// A standby (with etcd) does not change the configuration: 503 `standby`, naming the active
/// supervisor, so that the caller tries the next supervisor it knows.
fn refuse_on_standby(sup: &Supervisor) -> Result<(), ApiError> {
    if sup.config.acting() {
        return Ok(());
    }
    let message = match sup.config.active_holder() {
        (_, Some(e)) => format!("this supervisor is not active: it cannot reach the configuration store ({e})"),
        (Some(active), None) => format!("this supervisor is a standby; the active one is {active}"),
        (None, None) => "this supervisor is a standby and no supervisor is active yet; try again shortly".into(),
    };
    Err(ApiError::Standby(message))
}

/// `GET /metrics`: counters and histograms as recorded, gauges from the last polls.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
        (status = 503, description = "Metrics are not enabled in this process", body = ErrorBody),
    ))]
pub(crate) async fn metrics_text(State(sup): State<Arc<Supervisor>>) -> Result<Response, ApiError> {
    let status = sup.status();
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
    let handle = crate::METRICS.get().ok_or(ApiError::MetricsDisabled)?;
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response())
}

/// `GET /status`: the cluster as the supervisor sees it, from its last polls.
#[utoipa::path(get, path = "/status", tag = "operations",
    responses((status = 200, description = "Term, leader, members, every node, failovers and recoveries", body = SupervisorStatus)))]
pub(crate) async fn status(State(sup): State<Arc<Supervisor>>) -> Json<SupervisorStatus> {
    Json(sup.status())
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
pub(crate) async fn register_client(
    State(sup): State<Arc<Supervisor>>,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req: RegisterClient = parse(&body)?;
    if reqwest::Url::parse(&req.url).map_or(true, |u| u.scheme() != "http" && u.scheme() != "https") {
        return Err(ApiError::BadRequest(format!("url {:?} is not an http(s) URL", req.url)));
    }
    refuse_on_standby(&sup)?;
    let (leader, term) = sup.register_client(&req.url).await?;
    Ok(Json(serde_json::json!({"registered": req.url, "leader": leader, "term": term})))
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
pub(crate) async fn report_failure(
    State(sup): State<Arc<Supervisor>>,
    body: axum::body::Bytes,
) -> Result<Json<ClusterConfig>, ApiError> {
    let report: FailureReport = parse(&body)?;
    refuse_on_standby(&sup)?;
    Ok(Json(sup.on_failure_report(&report).await?))
}

/// `GET /history?limit=N`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct HistoryQuery {
    /// How many of the latest events (1 to 1000; default 100).
    limit: Option<String>,
}

/// The `limit` of `GET /history`: 1 to `MAX_HISTORY_EVENTS`, `DEFAULT_HISTORY_LIMIT` when absent.
fn history_limit(limit: Option<&str>) -> Result<usize, ApiError> {
    let Some(text) = limit else { return Ok(DEFAULT_HISTORY_LIMIT) };
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_HISTORY_EVENTS).contains(&n) => Ok(n),
        _ => Err(ApiError::BadRequest(format!("limit {text:?} is not a number from 1 to {MAX_HISTORY_EVENTS}"))),
    }
}

/// `GET /history`: what the supervisor did, from its store.
#[utoipa::path(get, path = "/history", tag = "operations", params(HistoryQuery),
    responses(
        (status = 200, description = "The latest events, oldest first (newest last)", body = HistoryPage),
        (status = 400, description = "A `limit` that is not a number from 1 to 1000", body = ErrorBody),
    ))]
pub(crate) async fn history(
    State(sup): State<Arc<Supervisor>>,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<HistoryPage>, ApiError> {
    let limit = history_limit(query.limit.as_deref())?;
    let persisted = sup.config.published();
    Ok(Json(HistoryPage { events: latest(&persisted.events, limit).to_vec() }))
}

/// `POST /switchover`: a planned change of leader.
#[utoipa::path(post, path = "/switchover", tag = "operator",
    request_body(content = SwitchoverRequest, description = "The member to lead next"),
    security(("cluster_token" = [])),
    responses(
        (status = 200, description = "The target leads a new term; the old leader is a replica and a member", body = SwitchoverResponse),
        (status = 400, description = "Not JSON, or not `{\"to\": \"host:port\"}`", body = ErrorBody),
        (status = 409, description = "Refused, nothing changed: `no_leader`, `not_member`, `not_alive`, `already_leader`, `not_in_sync`", body = ErrorBody),
        (status = 413, description = "A body over 2 MiB (axum's default limit)", body = String, content_type = "text/plain"),
        (status = 503, description = "A standby (`standby`), the store is unavailable (`store_unavailable`), or the new term is stored and the supervisor finishes the election itself (`unavailable`)", body = ErrorBody),
        (status = 500, description = "The store holds something unreadable", body = ErrorBody),
    ))]
pub(crate) async fn switchover(
    State(sup): State<Arc<Supervisor>>,
    body: axum::body::Bytes,
) -> Result<Json<SwitchoverResponse>, ApiError> {
    let req: SwitchoverRequest = parse(&body)?;
    valid_address(&req.to).map_err(ApiError::BadRequest)?;
    refuse_on_standby(&sup)?;
    Ok(Json(sup.switchover(&req.to).await?))
}

/// `POST /pause`: maintenance on.
#[utoipa::path(post, path = "/pause", tag = "operator",
    security(("cluster_token" = [])),
    responses(
        (status = 200, description = "Automatic failover and recovery are off (stored)", body = MaintenanceResponse),
        (status = 503, description = "A standby (`standby`), or the store is unavailable (`store_unavailable`)", body = ErrorBody),
        (status = 500, description = "The store holds something unreadable", body = ErrorBody),
    ))]
pub(crate) async fn pause(State(sup): State<Arc<Supervisor>>) -> Result<Json<MaintenanceResponse>, ApiError> {
    refuse_on_standby(&sup)?;
    Ok(Json(sup.set_maintenance(true).await?))
}

/// `POST /resume`: maintenance off.
#[utoipa::path(post, path = "/resume", tag = "operator",
    security(("cluster_token" = [])),
    responses(
        (status = 200, description = "Automatic failover and recovery are on (stored)", body = MaintenanceResponse),
        (status = 503, description = "A standby (`standby`), or the store is unavailable (`store_unavailable`)", body = ErrorBody),
        (status = 500, description = "The store holds something unreadable", body = ErrorBody),
    ))]
pub(crate) async fn resume(State(sup): State<Arc<Supervisor>>) -> Result<Json<MaintenanceResponse>, ApiError> {
    refuse_on_standby(&sup)?;
    Ok(Json(sup.set_maintenance(false).await?))
}

/// The node of a `NodeRequest` body, checked.
fn node_of(body: &[u8]) -> Result<String, ApiError> {
    let req: NodeRequest = parse(body)?;
    valid_address(&req.node).map_err(ApiError::BadRequest)?;
    Ok(req.node)
}

/// `POST /members/add`: a new node, recovered into the member set.
#[utoipa::path(post, path = "/members/add", tag = "operator",
    request_body(content = NodeRequest, description = "The agent's address"),
    security(("cluster_token" = [])),
    responses(
        (status = 202, description = "Added to the supervisor's nodes; its recovery has started", body = NodeAccepted),
        (status = 400, description = "Not JSON, or not `{\"node\": \"host:port\"}`", body = ErrorBody),
        (status = 409, description = "Refused, nothing changed: `already_known`, `unreachable`", body = ErrorBody),
        (status = 413, description = "A body over 2 MiB (axum's default limit)", body = String, content_type = "text/plain"),
        (status = 503, description = "A standby (`standby`), or the store is unavailable (`store_unavailable`)", body = ErrorBody),
        (status = 500, description = "The store holds something unreadable", body = ErrorBody),
    ))]
pub(crate) async fn add_member(
    State(sup): State<Arc<Supervisor>>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<NodeAccepted>), ApiError> {
    let node = node_of(&body)?;
    refuse_on_standby(&sup)?;
    Ok((StatusCode::ACCEPTED, Json(sup.add_member(&node).await?)))
}

/// `POST /members/remove`: a member leaves the member set and the supervisor's nodes.
#[utoipa::path(post, path = "/members/remove", tag = "operator",
    request_body(content = NodeRequest, description = "The agent's address"),
    security(("cluster_token" = [])),
    responses(
        (status = 200, description = "The new configuration (same term, next version), pushed to every agent", body = ClusterConfig),
        (status = 400, description = "Not JSON, or not `{\"node\": \"host:port\"}`", body = ErrorBody),
        (status = 404, description = "Not one of the supervisor's nodes (`not_found`)", body = ErrorBody),
        (status = 409, description = "Refused, nothing changed: `is_leader` (switch over first), `below_floor`", body = ErrorBody),
        (status = 413, description = "A body over 2 MiB (axum's default limit)", body = String, content_type = "text/plain"),
        (status = 503, description = "A standby (`standby`), or the store is unavailable (`store_unavailable`)", body = ErrorBody),
        (status = 500, description = "The store holds something unreadable", body = ErrorBody),
    ))]
pub(crate) async fn remove_member(
    State(sup): State<Arc<Supervisor>>,
    body: axum::body::Bytes,
) -> Result<Json<ClusterConfig>, ApiError> {
    let node = node_of(&body)?;
    refuse_on_standby(&sup)?;
    Ok(Json(sup.remove_member(&node).await?))
}

/// `POST /rebuild`: a diverged or wiped node outside the members is emptied and recovered.
#[utoipa::path(post, path = "/rebuild", tag = "operator",
    request_body(content = NodeRequest, description = "The agent's address"),
    security(("cluster_token" = [])),
    responses(
        (status = 202, description = "Its database was emptied; its recovery has started", body = NodeAccepted),
        (status = 400, description = "Not JSON, or not `{\"node\": \"host:port\"}`", body = ErrorBody),
        (status = 404, description = "Not one of the supervisor's nodes (`not_found`)", body = ErrorBody),
        (status = 409, description = "Refused, nothing changed: `is_member` (remove it first), `busy` (a recovery is under way), `unreachable`, `reset_refused` (the agent leads or counts itself a member)", body = ErrorBody),
        (status = 413, description = "A body over 2 MiB (axum's default limit)", body = String, content_type = "text/plain"),
        (status = 503, description = "A standby (`standby`), or the store is unavailable (`store_unavailable`)", body = ErrorBody),
        (status = 500, description = "The store holds something unreadable", body = ErrorBody),
    ))]
pub(crate) async fn rebuild(
    State(sup): State<Arc<Supervisor>>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<NodeAccepted>), ApiError> {
    let node = node_of(&body)?;
    refuse_on_standby(&sup)?;
    Ok((StatusCode::ACCEPTED, Json(sup.rebuild(&node).await?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    use protocol::operator::OperatorRefusal;

    #[test]
    fn the_history_limit_is_one_to_a_thousand_and_defaults_to_a_hundred() {
        assert_eq!(history_limit(None).unwrap(), DEFAULT_HISTORY_LIMIT);
        assert_eq!(history_limit(Some("1000")).unwrap(), 1000);
        for bad in ["0", "1001", "-1", "ten", ""] {
            assert!(matches!(history_limit(Some(bad)), Err(ApiError::BadRequest(_))), "{bad}");
        }
    }

    async fn answer(e: ApiError) -> (StatusCode, serde_json::Value) {
        let resp = e.into_response();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 64 * 1024).await.unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn each_error_has_its_status_code_and_body() {
        let (status, body) = answer(ApiError::Refused("kept".into())).await;
        assert_eq!((status, body), (StatusCode::CONFLICT, serde_json::json!({"error": "refused", "message": "kept"})));
        let (status, body) = answer(ApiError::Store(StoreError::Conflict(7))).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"], "store_unavailable");
        assert!(body["message"].as_str().unwrap().starts_with("could not store the change: another supervisor"));
        let (status, body) = answer(ApiError::Store(StoreError::NotActive)).await;
        assert_eq!((status, &body["error"]), (StatusCode::SERVICE_UNAVAILABLE, &serde_json::json!("standby")));
        assert!(body["message"].as_str().unwrap().starts_with("this supervisor is a standby"));
        let (status, body) = answer(ApiError::Store(StoreError::Corrupt("x".into()))).await;
        assert_eq!((status, &body["error"]), (StatusCode::INTERNAL_SERVER_ERROR, &serde_json::json!("internal")));
        let (status, body) = answer(ApiError::BadRequest("invalid JSON body: x".into())).await;
        assert_eq!((status, &body["error"]), (StatusCode::BAD_REQUEST, &serde_json::json!("bad_request")));
        let refused = Refused { code: OperatorRefusal::NotInSync, message: "behind".into() };
        let (status, body) = answer(ApiError::Operator(refused)).await;
        assert_eq!(
            (status, body),
            (StatusCode::CONFLICT, serde_json::json!({"error": "not_in_sync", "message": "behind"}))
        );
        let (status, body) = answer(ApiError::NotFound("x".into())).await;
        assert_eq!((status, &body["error"]), (StatusCode::NOT_FOUND, &serde_json::json!("not_found")));
        let (status, body) = answer(ApiError::MetricsDisabled).await;
        assert_eq!((status, &body["error"]), (StatusCode::SERVICE_UNAVAILABLE, &serde_json::json!("unavailable")));
    }
}
