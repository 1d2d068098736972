//! `POST /cluster/drill`: a failover drill on a node, asked for on the cluster page.

use std::time::Duration;

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use protocol::{DrillResponse, ErrorBody};
use serde::Deserialize;

use super::page::{message_page, render};
use super::AppState;
use crate::metrics::DrillResult;
use crate::run::{base_url, role_name, root_cause};
use crate::status::StatusError;

/// A drill is one quick local change on the agent.
const DRILL_TIMEOUT: Duration = Duration::from_secs(5);

/// The drills the cluster page offers. Each is one `GET` on the agent's endpoint
/// ([`Drill::path`]); the agent answers whether it changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drill {
    /// Stop the leader: the supervisor then elects the next member.
    DownLeader,
    /// Bring a stopped node back: it replays the leader's log and rejoins the members.
    UpNode,
}

impl Drill {
    /// The drill named `name` in a form (`down_leader`, `up_node`).
    pub fn from_name(name: &str) -> Option<Drill> {
        match name {
            "down_leader" => Some(Drill::DownLeader),
            "up_node" => Some(Drill::UpNode),
            _ => None,
        }
    }

    /// The name in forms, the history and the metrics' `action` label.
    pub fn name(self) -> &'static str {
        match self {
            Drill::DownLeader => "down_leader",
            Drill::UpNode => "up_node",
        }
    }

    /// The agent's endpoint the drill calls with `GET`.
    pub fn path(self) -> &'static str {
        match self {
            Drill::DownLeader => "/down_leader/",
            Drill::UpNode => "/up_node/",
        }
    }

    /// The button on a node's row of the cluster page.
    pub fn button(self) -> &'static str {
        match self {
            Drill::DownLeader => "Stop leader",
            Drill::UpNode => "Bring back",
        }
    }

    /// The button of the confirmation page.
    pub fn confirm_button(self) -> &'static str {
        match self {
            Drill::DownLeader => "Stop the leader",
            Drill::UpNode => "Bring it back",
        }
    }

    /// What the person is asked before the drill runs on `node`.
    pub fn question(self, node: &str) -> String {
        match self {
            Drill::DownLeader => format!(
                "Stop the leader {node} (GET /down_leader/)? The supervisor will elect the next member as leader."
            ),
            Drill::UpNode => {
                format!("Bring {node} back (GET /up_node/)? It replays the leader's log and rejoins the members.")
            }
        }
    }
}

/// The page that asks before a drill or an operator action runs, for a browser without the
/// script's dialog: it posts the same form to `path` with `confirmed=yes`.
#[derive(Template)]
#[template(path = "confirm.html")]
pub(super) struct ConfirmPage {
    pub(super) active: &'static str,
    pub(super) path: &'static str,
    pub(super) question: String,
    pub(super) action: &'static str,
    pub(super) node: String,
    pub(super) label: &'static str,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct DrillForm {
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
pub(crate) async fn drill(State(state): State<AppState>, Form(form): Form<DrillForm>) -> Response {
    let Some(drill) = Drill::from_name(&form.action) else {
        return refuse("unknown", DrillRefusal::NoSuchDrill { given: form.action });
    };
    let action = drill.name();
    state.forget_cluster().await;
    let nodes = match state.cluster().await {
        Ok(cluster) => cluster.nodes,
        Err(e) => return refuse(action, DrillRefusal::NoNodeList(e)),
    };
    if !nodes.iter().any(|n| n.address == form.node) {
        return refuse(action, DrillRefusal::NotANode { node: form.node });
    }
    if form.confirmed != "yes" {
        let question = drill.question(&form.node);
        let label = drill.confirm_button();
        return render(&ConfirmPage {
            active: "cluster",
            path: "/cluster/drill",
            question,
            action,
            node: form.node,
            label,
        });
    }

    let (result, message) = call_drill(state.http(), &form.node, drill.path()).await;
    crate::metrics::drill(action, result);
    let changed = result == DrillResult::Changed;
    tracing::info!(node = %form.node, action, changed, %message, "ran a drill");
    let seq = state.record_drill(action, &form.node, changed, message);
    state.forget_cluster().await;
    Redirect::to(&format!("/cluster/?drill={seq}")).into_response()
}

/// Why a drill was not run.
#[derive(Debug, thiserror::Error)]
enum DrillRefusal {
    /// Not one of the [`Drill`]s.
    #[error("{given:?} is not a drill: the drills are down_leader and up_node.")]
    NoSuchDrill { given: String },
    /// The supervisor's list of nodes could not be had, so the node could not be checked.
    #[error("The drill needs the supervisor's list of nodes, and {0}.")]
    NoNodeList(StatusError),
    /// An address the supervisor does not list: no drill is sent there (the module's invariant).
    #[error("{node:?} is not a node of the cluster as the supervisor lists it.")]
    NotANode { node: String },
}

impl DrillRefusal {
    fn status(&self) -> StatusCode {
        match self {
            DrillRefusal::NoSuchDrill { .. } | DrillRefusal::NotANode { .. } => StatusCode::BAD_REQUEST,
            DrillRefusal::NoNodeList(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn title(&self) -> &'static str {
        match self {
            DrillRefusal::NoSuchDrill { .. } => "No such drill",
            DrillRefusal::NoNodeList(_) => "Cannot run the drill",
            DrillRefusal::NotANode { .. } => "No such node",
        }
    }

    /// How the metrics count it: refused (the person's move) or failed (the supervisor's).
    fn result(&self) -> DrillResult {
        match self {
            DrillRefusal::NoSuchDrill { .. } | DrillRefusal::NotANode { .. } => DrillResult::Refused,
            DrillRefusal::NoNodeList(_) => DrillResult::Failed,
        }
    }
}

/// Counts the refusal of the drill `action` (`unknown` for no drill) and answers its page.
fn refuse(action: &'static str, refusal: DrillRefusal) -> Response {
    crate::metrics::drill(action, refusal.result());
    message_page(refusal.status(), refusal.title(), refusal.to_string())
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
    use crate::fake_agent::{self, Fake};
    use crate::web::test_support::{get_page, post_form, state_for, supervisor_of};

    #[test]
    fn each_drill_has_its_name_and_the_agent_s_endpoint() {
        for (drill, name, path) in
            [(Drill::DownLeader, "down_leader", "/down_leader/"), (Drill::UpNode, "up_node", "/up_node/")]
        {
            assert_eq!((drill.name(), drill.path()), (name, path));
            assert_eq!(Drill::from_name(name), Some(drill));
            assert!(drill.question("h:1").contains(&format!("(GET {path})")), "{}", drill.question("h:1"));
        }
        assert_eq!(Drill::from_name("rm"), None);
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
}
