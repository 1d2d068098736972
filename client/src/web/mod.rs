//! `client serve`: the web pages.
//!
//! - `/create/` (`form.rs`): the transaction form. GET shows it; POST runs the transaction with
//!   the same [`Runner::run`](crate::run::Runner::run) as `client run` and shows the outcome
//!   under the form, keeping what was typed.
//! - `/cluster/` (`cluster.rs`): the cluster as the supervisor sees it, with the drills
//!   (`drill.rs`) and the transactions run from this client. Its live part is `/cluster/live`, an
//!   HTML fragment the page's script fetches every 500 ms; `/cluster/status.json` is the same as
//!   JSON.
//! - `/leader_changed/` (`leader_changed.rs`): the supervisor tells this client the new leader.
//! - `/metrics`: what this client did, in Prometheus text format (see `metrics.rs`).
//!
//! The handlers are thin: they read the state (`state.rs`), call the runner or an agent, and
//! hand what came back to the pure builders of `view/`, which turn a run's report or error and
//! the supervisor's status into the structs the templates print (`page.rs` renders them).
//!
//! Pages are askama templates (`client/templates`), which escape every value; the pages work
//! without JavaScript (`static/app.js` only adds the live updates and confirmation dialogs).
//!
//! Architecture invariant: this client calls agents' drill endpoints only on addresses the
//! supervisor lists as nodes of the cluster, so the drill form cannot be used to make the client
//! send requests elsewhere.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use protocol::ErrorBody;
use serde_json::{json, Value};

pub(crate) mod cluster;
pub(crate) mod drill;
pub(crate) mod form;
pub(crate) mod leader_changed;
pub(crate) mod operate;
mod page;
pub mod sampler;
mod state;
mod view;

#[cfg(test)]
mod test_support;

pub use state::{AppState, DrillEntry, HistoryEntry, HISTORY_LEN};

/// Largest form the page accepts. A transaction of a thousand operations fits many times over.
const MAX_FORM_BYTES: usize = 64 * 1024;

const STYLE_CSS: &str = include_str!("../../static/style.css");
const APP_JS: &str = include_str!("../../static/app.js");

/// The router of every page, for `client serve` and for tests (`oneshot`).
pub fn app(state: AppState) -> Router {
    // The document describes this client as configured (with or without the token).
    let spec: Arc<str> = crate::openapi::json(state.token().is_some()).into();
    // The supervisor calls it: with mutual TLS, only with a certificate from the cluster's CA.
    let internal = service::guard_client_cert(
        Router::new().route("/leader_changed/", post(leader_changed::leader_changed)),
        crate::net::client_auth(),
    );
    Router::new()
        .route(
            "/openapi.json",
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], spec.to_string()) }),
        )
        .route("/", get(|| async { Redirect::to("/create/") }))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/create/", get(form::show_form).post(form::create))
        .route("/cluster", get(|| async { Redirect::permanent("/cluster/") }))
        .route("/cluster/", get(cluster::cluster_page))
        .route("/cluster/live", get(cluster::cluster_live))
        .route("/cluster/status.json", get(cluster::cluster_json))
        .route("/cluster/drill", post(drill::drill))
        .route("/cluster/operate", post(operate::operate))
        .merge(internal)
        .route("/static/style.css", get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }))
        .route("/static/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(axum::middleware::from_fn(service::close_when_body_unread))
        .with_state(state)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "max-age=300")], body).into_response()
}

/// `GET /health`: the client serves.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Always `{\"status\": \"ok\"}`", body = crate::openapi::Health)))]
pub(crate) async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /metrics`: counters and histograms as recorded, the leader followed read now.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format: the `rmw_client_*` metrics", body = String, content_type = "text/plain"),
        (status = 503, description = "Metrics are not enabled in this process", body = ErrorBody),
    ))]
pub(crate) async fn metrics_text(State(state): State<AppState>) -> Response {
    let Some(handle) = state.metrics() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(ErrorBody {
                error: "unavailable".into(),
                message: "metrics are not enabled in this process".into(),
                leader: None,
                term: None,
                horizon: None,
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

async fn not_found(uri: axum::http::Uri) -> Response {
    page::message_page(
        StatusCode::NOT_FOUND,
        "No such page",
        format!("There is nothing at {}. The pages are /create/ and /cluster/.", uri.path()),
    )
}

#[cfg(test)]
mod tests {
    use super::test_support::{get_page, post_form, sample, send, state_for, supervisor_of};
    use super::*;
    use crate::fake_agent::{self, Fake};
    use axum::body::Body;
    use axum::http::Request;
    use std::collections::BTreeMap;

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
}
