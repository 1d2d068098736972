//! Helpers for the web app's tests: an app over fake agents and a fake supervisor, driven with
//! `oneshot` requests.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::{app, AppState};
use crate::fake_agent::{self, FakeSupervisor};
use crate::run::Runner;

pub(super) struct Sent {
    pub(super) code: StatusCode,
    pub(super) body: String,
    pub(super) location: Option<String>,
}

pub(super) fn state_for(agent: &str, supervisor: Option<&str>) -> AppState {
    let runner = Runner::new().unwrap().with_supervisor(supervisor).with_follow_budget(Duration::from_secs(2));
    AppState::new(agent, runner).unwrap()
}

pub(super) async fn send(state: &AppState, request: Request<Body>) -> Sent {
    let response = app(state.clone()).oneshot(request).await.unwrap();
    let code = response.status();
    let location = response.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_string);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    Sent { code, body: String::from_utf8(bytes.to_vec()).unwrap(), location }
}

pub(super) async fn get_page(state: &AppState, path: &str) -> Sent {
    send(state, Request::get(path).body(Body::empty()).unwrap()).await
}

pub(super) async fn post_form(state: &AppState, path: &str, body: &str) -> Sent {
    let request = Request::post(path)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body.to_string()))
        .unwrap();
    send(state, request).await
}

/// A supervisor listing `nodes` as (address, role), the first leader.
pub(super) async fn supervisor_of(nodes: &[(&str, &str)]) -> FakeSupervisor {
    let supervisor = FakeSupervisor::start(Some(nodes[0].0.to_string())).await;
    let mut status: Value = serde_json::from_str(crate::status::tests::AFTER_FAILOVER).unwrap();
    status["leader"] = json!(nodes[0].0);
    status["nodes"] = nodes
        .iter()
        .enumerate()
        .map(|(i, (address, role))| {
            json!({"address": address, "alive": *role != "dead", "member": true, "role": role,
                   "term": 2, "applied_lsn": 12, "lag": 0, "error": null,
                   "status": fake_agent::agent_status(i, address, role)})
        })
        .collect();
    supervisor.set_status(status);
    supervisor
}

/// The value of one series in Prometheus text, such as
/// `rmw_client_transactions_total{outcome="commit"}`; `None` when it was never recorded.
pub(super) fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
