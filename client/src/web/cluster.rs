//! `/cluster/`: the cluster as the supervisor sees it, with the drills and the transactions run
//! from this client. Its live part is `/cluster/live`, an HTML fragment the page's script fetches
//! every 500 ms; `/cluster/status.json` is the same as JSON.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::page::render;
use super::sampler::PLOT_WINDOW;
use super::state::now_ms;
use super::view::cluster::{flash, live_view, Flash, LiveView};
use super::view::plot::charts;
use super::AppState;
use crate::status::{StatusError, SupervisorStatus};

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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ClusterQuery {
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
pub(crate) async fn cluster_page(State(state): State<AppState>, Query(query): Query<ClusterQuery>) -> Response {
    let cluster = state.cluster().await;
    let flash = query.drill.and_then(|seq| state.drills().into_iter().find(|d| d.seq == seq)).map(|d| flash(&d));
    render(&ClusterPage {
        active: "cluster",
        supervisor: state.supervisor().unwrap_or("(none)").to_string(),
        flash,
        live: live(&state, &cluster),
    })
}

/// `GET /cluster/live`: the live part of the cluster page, which its script fetches every 500 ms.
#[utoipa::path(get, path = "/cluster/live", tag = "pages",
    responses((status = 200, description = "An HTML fragment", body = String, content_type = "text/html")))]
pub(crate) async fn cluster_live(State(state): State<AppState>) -> Response {
    let cluster = state.cluster().await;
    let mut response = render(&ClusterLive { live: live(&state, &cluster) });
    response.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    response
}

/// The cluster page's data as JSON: the supervisor's status (or why it is missing), where this
/// client sends commits, and what it ran.
#[utoipa::path(get, path = "/cluster/status.json", tag = "operations",
    responses((status = 200, description = "The cluster page's data", body = crate::openapi::ClusterJson)))]
pub(crate) async fn cluster_json(State(state): State<AppState>) -> Json<Value> {
    let cluster = state.cluster().await;
    let (supervisor, error) = match cluster {
        Ok(status) => (serde_json::to_value(status).unwrap_or(Value::Null), None),
        Err(e) => (Value::Null, Some(e.to_string())),
    };
    Json(json!({
        "supervisor": supervisor,
        "error": error,
        "leader": state.leader(),
        "history": state.history(),
        "drills": state.drills(),
    }))
}

/// The live view of `cluster` with this client's side: its leader, history and drills, and the
/// plots of the leader's commits as sampled.
fn live(state: &AppState, cluster: &Result<SupervisorStatus, StatusError>) -> LiveView {
    let plots = charts(&state.samples(), now_ms(), PLOT_WINDOW.as_millis() as u64);
    live_view(cluster, state.leader(), state.history(), state.drills(), plots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_agent::{self, Fake, FakeSupervisor};
    use crate::web::test_support::{get_page, post_form, state_for};

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
    async fn the_cluster_page_offers_the_operator_actions_and_shows_the_timeline() {
        let supervisor = FakeSupervisor::start(None).await;
        let mut status: Value = serde_json::from_str(crate::status::tests::AFTER_FAILOVER).unwrap();
        status["events"] = json!([
            {"at_ms": 3600000, "kind": "failover", "node": "127.0.0.1:8001", "term": 2, "ok": true,
             "message": "127.0.0.1:8000 stopped answering"},
            {"at_ms": 3723000, "kind": "recovery", "node": "127.0.0.1:8002", "term": 2, "ok": false,
             "message": "cannot reach <it>"}
        ]);
        supervisor.set_status(status);
        let state = state_for("127.0.0.1:1", Some(&supervisor.address));
        let html = get_page(&state, "/cluster/").await.body;
        // node0 (a replica member) can lead or leave, node2 (not a member) can be rebuilt.
        let op = |action: &str, node: &str| {
            format!(
                "<input type=\"hidden\" name=\"action\" value=\"{action}\">\n      <input type=\"hidden\" name=\"node\" value=\"{node}\">"
            )
        };
        assert!(html.contains(&op("switchover", "127.0.0.1:8000")), "{html}");
        assert!(html.contains(&op("member_remove", "127.0.0.1:8000")), "{html}");
        assert!(html.contains(&op("rebuild", "127.0.0.1:8002")), "{html}");
        assert!(!html.contains(&op("switchover", "127.0.0.1:8001")), "not to the leader: {html}");
        assert!(html.contains(r#"data-confirm="Pause automatic failover (POST /pause)?"#), "{html}");
        assert!(!html.contains(r#"id="maintenance""#), "{html}");
        assert!(html.contains(r#"<form method="post" action="/cluster/operate" class="add-member""#), "{html}");
        // The timeline, newest first, escaped.
        let timeline = &html[html.find(r#"id="timeline""#).unwrap()..];
        let recovery = timeline.find(r#"<span class="kind recovery">recovery</span> <span class="no">failed</span>"#);
        let failover = timeline.find(r#"<span class="kind failover">failover</span>"#);
        assert!(recovery.is_some() && recovery < failover, "{timeline}");
        assert!(timeline.contains("cannot reach &#60;it&#62;"), "{timeline}");
    }

    #[tokio::test]
    async fn the_cluster_page_says_when_the_supervisor_is_unreachable() {
        let closed = fake_agent::closed_port().await;
        let state = state_for("127.0.0.1:1", Some(&closed));
        let html = get_page(&state, "/cluster/live").await.body;
        assert!(html.contains("Supervisor unreachable"), "{html}");
        assert!(html.contains("cannot reach the supervisor"), "{html}");
    }
}
