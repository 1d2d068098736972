//! `GET /openapi.json`: the supervisor's HTTP interface as an OpenAPI 3.1 document, generated
//! from the handlers' `#[utoipa::path]` annotations (`api.rs`) and the wire types (`protocol`).
//! With a cluster token configured, every endpoint that changes something (`/register_client/`,
//! `/report_failure` and the operator's) declares it and its 401 answer ([`protocol::openapi::apply_cluster_token`]).

use protocol::operator::{
    HistoryEvent, HistoryKind, HistoryPage, MaintenanceResponse, NodeAccepted, NodeRequest, SwitchoverRequest,
    SwitchoverResponse,
};
use protocol::{ClusterConfig, ErrorBody, Term};
use serde::Serialize;
use utoipa::openapi::OpenApi as Document;
use utoipa::{OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Replication middleware supervisor",
        description = "Watches the agents, elects leaders round-robin, removes members that stop answering and \
            recovers returning nodes. Every error answer is an `ErrorBody`. See docs/api.md."
    ),
    paths(
        crate::api::status,
        health,
        crate::api::metrics_text,
        openapi_json,
        crate::api::history,
        crate::api::register_client,
        crate::api::report_failure,
        crate::api::switchover,
        crate::api::pause,
        crate::api::resume,
        crate::api::add_member,
        crate::api::remove_member,
        crate::api::rebuild,
    ),
    components(schemas(
        ErrorBody, ClusterConfig, HistoryEvent, HistoryKind, HistoryPage, SwitchoverRequest, SwitchoverResponse,
        MaintenanceResponse, NodeRequest, NodeAccepted
    )),
    tags(
        (name = "operations", description = "Status, health, metrics and this document"),
        (name = "clients", description = "Web clients that want to hear of every new leader"),
        (name = "agents", description = "Called by the leader agent"),
        (name = "operator", description = "Planned changes: switchover, maintenance, members, rebuild"),
    )
)]
struct SupervisorApi;

/// `GET /health`: the supervisor answers.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Always `{\"status\": \"ok\"}`", body = Health)))]
#[allow(dead_code)]
fn health() {}

/// `GET /openapi.json`: this document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This document", body = Object)))]
#[allow(dead_code)]
fn openapi_json() {}

/// `{"status": "ok"}`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

/// The answer of `POST /register_client/`.
#[derive(Serialize, ToSchema)]
pub struct Registered {
    /// The URL registered.
    pub registered: String,
    /// The current leader, if there is one.
    pub leader: Option<String>,
    #[schema(value_type = i64)]
    pub term: Term,
}

/// The document for a supervisor with (`token_configured`) or without a cluster token.
pub fn document(token_configured: bool) -> Document {
    protocol::openapi::document::<SupervisorApi>(token_configured)
}

/// The document as JSON text, as `GET /openapi.json` serves it.
pub fn json(token_configured: bool) -> String {
    protocol::openapi::json::<SupervisorApi>(token_configured)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &[(&str, &str)] = &[
        ("get", "/status"),
        ("get", "/health"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
        ("post", "/register_client/"),
        ("post", "/report_failure"),
        ("get", "/history"),
        ("post", "/switchover"),
        ("post", "/pause"),
        ("post", "/resume"),
        ("post", "/members/add"),
        ("post", "/members/remove"),
        ("post", "/rebuild"),
    ];
    const GUARDED: &[&str] = &[
        "/register_client/",
        "/report_failure",
        "/switchover",
        "/pause",
        "/resume",
        "/members/add",
        "/members/remove",
        "/rebuild",
    ];

    #[test]
    fn every_route_is_documented_with_its_errors_and_the_token_as_configured() {
        for token in [true, false] {
            let doc: serde_json::Value = serde_json::from_str(&json(token)).unwrap();
            let documented: usize =
                doc["paths"].as_object().unwrap().values().map(|i| i.as_object().unwrap().len()).sum();
            assert_eq!(documented, ROUTES.len());
            for (method, path) in ROUTES {
                let op = &doc["paths"][path][method];
                let responses = op["responses"].as_object().unwrap_or_else(|| panic!("{method} {path} undocumented"));
                assert!(responses.contains_key("200") || responses.contains_key("202"), "{method} {path}");
                if op.get("requestBody").is_some() {
                    assert!(responses.contains_key("400"), "{method} {path}");
                }
                let guarded = token && GUARDED.contains(path);
                assert_eq!(responses.contains_key("401"), guarded, "{method} {path}, token {token}");
                assert_eq!(op.get("security").is_some(), guarded, "{method} {path}, token {token}");
            }
            let text = doc.to_string();
            for name in text.split("#/components/schemas/").skip(1) {
                let name = name.split('"').next().unwrap();
                assert!(doc["components"]["schemas"].get(name).is_some(), "a $ref to the missing schema {name}");
            }
        }
    }
}
