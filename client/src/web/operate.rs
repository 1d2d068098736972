//! `POST /cluster/operate`: an operator action asked for on the cluster page (switch over to a
//! member, pause or resume automatic failover, add or remove a member, rebuild a node), sent to
//! the supervisor once the person confirmed, then back to the cluster page with the
//! supervisor's answer (or its refusal, in words).
//!
//! Like the drills, nothing runs without a confirmation: the page's script asks in a dialog;
//! without the script, this handler answers a page that asks. Unlike the drills, the request
//! goes to the supervisor only, which checks the node itself (`crate::operator`'s invariant):
//! the address typed into "add a member" reaches no one but the supervisor.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::drill::ConfirmPage;
use super::page::{message_page, render};
use super::AppState;
use crate::operator::{self, Operation};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct OperateForm {
    /// `switchover`, `pause`, `resume`, `member_add`, `member_remove` or `rebuild`.
    #[serde(default)]
    #[schema(pattern = "^(switchover|pause|resume|member_add|member_remove|rebuild)$")]
    action: String,
    /// The node's address (`host:port`); not for `pause` and `resume`.
    #[serde(default)]
    node: String,
    /// `yes` once the person confirmed (the page's dialog, or the confirmation page).
    #[serde(default)]
    confirmed: String,
}

/// Why an operator action was not sent.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum OperateRefusal {
    #[error(
        "{given:?} is not an operator action: they are switchover, pause, resume, member_add, member_remove and \
         rebuild."
    )]
    NoSuchAction { given: String },
    #[error("{action} needs the node's address (host:port), and {given:?} is not one.")]
    NotAnAddress { action: &'static str, given: String },
    #[error("This client has no supervisor to ask (--supervisor).")]
    NoSupervisor,
}

impl OperateRefusal {
    fn status(&self) -> StatusCode {
        match self {
            OperateRefusal::NoSuchAction { .. } | OperateRefusal::NotAnAddress { .. } => StatusCode::BAD_REQUEST,
            OperateRefusal::NoSupervisor => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// The operation the form asks for, or why it cannot be sent.
fn operation_of(form: &OperateForm) -> Result<Operation, OperateRefusal> {
    let operation = Operation::from_form(&form.action, &form.node)
        .ok_or_else(|| OperateRefusal::NoSuchAction { given: form.action.clone() })?;
    match operation.node() {
        Some(node) if !operator::is_address(node) => {
            Err(OperateRefusal::NotAnAddress { action: operation.name(), given: node.to_string() })
        }
        _ => Ok(operation),
    }
}

/// Asks the supervisor for an operator action, then back to the cluster page with its answer.
#[utoipa::path(post, path = "/cluster/operate", tag = "pages",
    request_body(content = OperateForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Without `confirmed=yes`: a page that asks for confirmation", body = String, content_type = "text/html"),
        (status = 303, description = "Sent: on to `/cluster/?drill=<n>`, which shows the supervisor's answer or its refusal", headers(("Location" = String))),
        (status = 400, description = "Not an operator action, or a node that is not `host:port` (HTML page), or a form that could not be read (text)", body = String, content_type = "text/html"),
        (status = 413, description = "The form is over 64 KiB", body = String, content_type = "text/plain"),
        (status = 415, description = "Not `application/x-www-form-urlencoded`", body = String, content_type = "text/plain"),
        (status = 422, description = "The form could not be read", body = String, content_type = "text/plain"),
        (status = 503, description = "This client has no supervisor", body = String, content_type = "text/html"),
    ))]
pub(crate) async fn operate(State(state): State<AppState>, Form(form): Form<OperateForm>) -> Response {
    let operation = match operation_of(&form) {
        Ok(operation) => operation,
        Err(refusal) => return message_page(refusal.status(), "Cannot do that", refusal.to_string()),
    };
    let Some(supervisor) = state.supervisor().map(str::to_string) else {
        let refusal = OperateRefusal::NoSupervisor;
        return message_page(refusal.status(), "Cannot do that", refusal.to_string());
    };
    let node = operation.node().unwrap_or_default().to_string();
    if form.confirmed != "yes" {
        let page = ConfirmPage {
            active: "cluster",
            path: "/cluster/operate",
            question: operation.question(),
            action: operation.name(),
            node,
            label: operation.confirm_button(),
        };
        return render(&page);
    }

    let (ok, message) = match operator::send(state.http(), &supervisor, &operation).await {
        Ok(answer) => (true, answer.message),
        Err(e) => (false, e.to_string()),
    };
    tracing::info!(action = operation.name(), %node, ok, %message, "asked the supervisor for an operator action");
    let seq = state.record_drill(operation.name(), &node, ok, message);
    state.forget_cluster().await;
    Redirect::to(&format!("/cluster/?drill={seq}")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_agent::{self, Fake};
    use crate::web::test_support::{get_page, post_form, state_for, supervisor_of};

    fn form(action: &str, node: &str) -> OperateForm {
        OperateForm { action: action.into(), node: node.into(), confirmed: String::new() }
    }

    #[test]
    fn the_form_names_an_operation_on_an_address() {
        assert_eq!(operation_of(&form("pause", "")), Ok(Operation::Pause));
        assert_eq!(operation_of(&form("switchover", "h:1")), Ok(Operation::Switchover { to: "h:1".into() }));
        assert_eq!(
            operation_of(&form("rebuild", "node2")),
            Err(OperateRefusal::NotAnAddress { action: "rebuild", given: "node2".into() })
        );
        let refusal = operation_of(&form("drop", "h:1")).unwrap_err();
        assert_eq!(refusal.status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn an_action_asks_first_then_shows_the_supervisor_s_answer_or_refusal() {
        let leader = fake_agent::start(Fake::default()).await;
        let replica = fake_agent::start(Fake::replica_of(&leader)).await;
        let supervisor = supervisor_of(&[(&leader, "leader"), (&replica, "replica")]).await;
        let state = state_for(&leader, Some(&supervisor.address));

        // Without a confirmation: a page that asks, and nothing sent.
        let sent = post_form(&state, "/cluster/operate", "action=pause").await;
        assert_eq!(sent.code, StatusCode::OK);
        assert!(sent.body.contains("Pause automatic failover (POST /pause)?"), "{}", sent.body);
        assert!(sent.body.contains(r#"<form method="post" action="/cluster/operate""#), "{}", sent.body);
        assert!(supervisor.operations().is_empty());

        let sent = post_form(&state, "/cluster/operate", "action=pause&confirmed=yes").await;
        assert_eq!((sent.code, sent.location.as_deref()), (StatusCode::SEE_OTHER, Some("/cluster/?drill=1")));
        assert_eq!(supervisor.operations(), vec![("/pause".to_string(), "{}".to_string())]);
        let html = get_page(&state, "/cluster/?drill=1").await.body;
        assert!(html.contains(r#"<p id="flash" class="flash ok">pause: automatic failover is OFF"#), "{html}");
        assert!(html.contains(r#"id="maintenance""#), "the banner: {html}");

        // A refusal, in the supervisor's words.
        let body = format!("action=member_remove&node={leader}&confirmed=yes");
        post_form(&state, "/cluster/operate", &body).await;
        let html = get_page(&state, "/cluster/?drill=2").await.body;
        assert!(html.contains(r#"class="flash bad">member_remove on "#), "{html}");
        assert!(html.contains("refused (is_leader): "), "{html}");

        let sent = post_form(&state, "/cluster/operate", "action=member_add&node=nowhere&confirmed=yes").await;
        assert_eq!(sent.code, StatusCode::BAD_REQUEST);
        assert!(sent.body.contains("is not one"), "{}", sent.body);
        assert_eq!(supervisor.operations().len(), 2);
    }
}
