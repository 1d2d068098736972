//! `GET /openapi.json`: the agent's HTTP interface as an OpenAPI 3.1 document, generated from
//! the handlers' `#[utoipa::path]` annotations (`api.rs`) and the wire types (`protocol`).
//!
//! The document describes this agent as configured: with a cluster token, the internal
//! endpoints, the drills and log paging declare the `cluster_token` bearer scheme and a 401
//! answer; without one they are open and declare neither
//! ([`protocol::openapi::apply_cluster_token`]). `tests/tests/schemathesis.rs` checks
//! the document against a running agent.

use protocol::{CommitResponse, ErrorBody, Role};
use serde::Serialize;
use utoipa::openapi::OpenApi as Document;
use utoipa::{OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Replication middleware agent",
        description = "One agent runs beside each PostgreSQL server. `POST /read/` and `POST /commit/` are for \
            users; the leader validates commits by timestamp ordering and replicates them to every member with \
            two-phase commit. Every error answer is an `ErrorBody`. See docs/api.md."
    ),
    paths(
        crate::api::read,
        crate::api::commit,
        crate::api::status,
        crate::api::health,
        crate::api::primary,
        crate::api::replica,
        crate::api::read_only,
        crate::api::metrics,
        openapi_json,
        crate::api::replication_log,
        crate::api::snapshot,
        crate::api::down_leader,
        crate::api::up_node,
        crate::api::prepare,
        crate::api::decide,
        crate::api::batch_state,
        crate::api::fence,
        crate::api::promote,
        crate::api::config,
        crate::api::pause,
        crate::api::join,
        crate::api::recover,
        crate::api::cluster_id,
        crate::api::reset,
    ),
    // Named by `ReadRequest` and `CommitRequest` through `protocol::openapi`.
    components(schemas(protocol::TransactionBody, protocol::SnapshotHeader)),
    tags(
        (name = "transactions", description = "Reads and commits"),
        (name = "operations", description = "Status, health, metrics and this document"),
        (name = "recovery", description = "Paging through the recovery log"),
        (name = "drills", description = "Failover drills"),
        (name = "internal", description = "Agent to agent and supervisor to agent; every message carries the sender's term"),
    )
)]
struct AgentApi;

/// `GET /openapi.json`: this document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This document", body = Object)))]
#[allow(dead_code)]
fn openapi_json() {}

/// The answer of `GET /health` when the node serves.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
    pub role: Role,
}

/// A 503 on `POST /commit/`: an ABORT (`replication_failed`), or an error.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum CommitUnavailable {
    Abort(CommitResponse),
    Error(ErrorBody),
}

/// The name of the client API key scheme in the document.
pub const API_KEY: &str = "api_key";

/// The document for an agent with (`token_configured`) or without a cluster token, and with
/// (`keys_configured`) or without client API keys.
pub fn document(token_configured: bool, keys_configured: bool) -> Document {
    let mut doc = protocol::openapi::document::<AgentApi>(token_configured);
    if keys_configured {
        apply_api_keys(&mut doc);
    }
    doc
}

/// The document as JSON text, as `GET /openapi.json` serves it.
pub fn json(token_configured: bool, keys_configured: bool) -> String {
    document(token_configured, keys_configured).to_json().expect("the OpenAPI document serializes")
}

/// With keys, `/read/` and `/commit/` declare the `api_key` bearer scheme and their 401 (no
/// valid key) and 403 (a read key on `/commit/`) answers.
fn apply_api_keys(doc: &mut Document) {
    use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let answer = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build())
            .build()
    };
    for (path, forbidden) in [("/read/", false), ("/commit/", true)] {
        let Some(op) = doc.paths.paths.get_mut(path).and_then(|item| item.post.as_mut()) else {
            continue;
        };
        op.security = Some(vec![SecurityRequirement::new(API_KEY, Vec::<String>::new())]);
        op.responses.responses.insert(
            "401".into(),
            answer("`unauthorized`: no API key, or one the agent does not know; nothing changed").into(),
        );
        if forbidden {
            op.responses.responses.insert(
                "403".into(),
                answer("`forbidden`: a read key; commits need a write key; nothing changed").into(),
            );
        }
    }
    let mut scheme = Http::new(HttpAuthScheme::Bearer);
    scheme.description =
        Some("A client API key from the agent's `--api-keys` file: `Authorization: Bearer <key>`.".into());
    doc.components.get_or_insert_with(Default::default).add_security_scheme(API_KEY, SecurityScheme::Http(scheme));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route of `api::router`, as (method, path): the document must list exactly these.
    const ROUTES: &[(&str, &str)] = &[
        ("post", "/read/"),
        ("post", "/commit/"),
        ("get", "/status"),
        ("get", "/health"),
        ("get", "/primary"),
        ("get", "/replica"),
        ("get", "/read-only"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
        ("get", "/replication_log/"),
        ("get", "/internal/snapshot"),
        ("get", "/down_leader/"),
        ("get", "/up_node/"),
        ("post", "/internal/prepare"),
        ("post", "/internal/decide"),
        ("get", "/internal/batch_state"),
        ("post", "/internal/fence"),
        ("post", "/internal/promote"),
        ("post", "/internal/config"),
        ("post", "/internal/pause"),
        ("post", "/internal/join"),
        ("post", "/internal/recover"),
        ("post", "/internal/cluster_id"),
        ("post", "/internal/reset"),
    ];

    /// Routes open whatever the configuration.
    const OPEN: &[&str] = &[
        "/read/",
        "/commit/",
        "/status",
        "/health",
        "/primary",
        "/replica",
        "/read-only",
        "/metrics",
        "/openapi.json",
    ];

    fn value(token: bool) -> serde_json::Value {
        serde_json::from_str(&json(token, false)).unwrap()
    }

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let doc = value(false);
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                documented.push((method.clone(), path.clone()));
            }
        }
        let mut expected: Vec<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
        documented.sort();
        expected.sort();
        assert_eq!(documented, expected);
    }

    #[test]
    fn every_operation_documents_its_answers_and_errors() {
        let doc = value(true);
        for (method, path) in ROUTES {
            let op = &doc["paths"][path][method];
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.contains_key("200"), "{method} {path}: no 200");
            if op.get("requestBody").is_some() || op.get("parameters").is_some() {
                assert!(responses.contains_key("400"), "{method} {path} takes input but documents no 400");
                let body = &op["requestBody"]["content"]["application/json"]["schema"];
                assert!(op.get("requestBody").is_none() || body.is_object(), "{method} {path}: {op}");
            }
            for (code, response) in responses {
                if code.starts_with('4') || code.starts_with('5') {
                    assert!(
                        response["content"]["application/json"]["schema"].is_object(),
                        "{method} {path} {code}: no JSON body: {response}"
                    );
                }
            }
        }
    }

    #[test]
    fn guarded_routes_declare_the_token_only_when_one_is_configured() {
        let with = value(true);
        let without = value(false);
        assert!(with["components"]["securitySchemes"]["cluster_token"].is_object());
        assert!(without["components"]["securitySchemes"].as_object().is_none_or(|s| s.is_empty()));
        for (method, path) in ROUTES {
            let guarded = !OPEN.contains(path);
            let op = &with["paths"][path][method];
            assert_eq!(op["responses"].get("401").is_some(), guarded, "{method} {path} with a token");
            assert_eq!(op.get("security").is_some(), guarded, "{method} {path} with a token");
            let op = &without["paths"][path][method];
            assert!(op["responses"].get("401").is_none(), "{method} {path} without a token");
            assert!(op.get("security").is_none(), "{method} {path} without a token");
        }
    }

    #[test]
    fn with_keys_reads_and_commits_declare_the_key_and_its_refusals() {
        let with: serde_json::Value = serde_json::from_str(&json(false, true)).unwrap();
        assert!(with["components"]["securitySchemes"][API_KEY].is_object());
        for (path, forbidden) in [("/read/", false), ("/commit/", true)] {
            let op = &with["paths"][path]["post"];
            assert_eq!(op["security"][0][API_KEY], serde_json::json!([]), "{path}");
            assert!(op["responses"]["401"].is_object(), "{path}");
            assert_eq!(op["responses"].get("403").is_some(), forbidden, "{path}");
        }
        assert!(with["paths"]["/status"]["get"].get("security").is_none());
        let without = value(false);
        assert!(without["paths"]["/commit/"]["post"].get("security").is_none());
    }

    #[test]
    fn account_numbers_are_integers_and_write_set_keys_decimal_strings() {
        let doc = value(false);
        let schemas = &doc["components"]["schemas"];
        let body = &schemas["TransactionBody"]["properties"];
        assert_eq!(body["read_set"]["items"]["type"], "integer");
        assert_eq!(body["read_set"]["items"]["minimum"], 0);
        assert_eq!(body["write_set"]["propertyNames"]["type"], "string");
        assert_eq!(schemas["TransactionBody"]["additionalProperties"], false);
        // No `$ref` to a schema that does not exist (an alias such as `Account` would make one).
        let text = doc.to_string();
        for name in text.split("#/components/schemas/").skip(1) {
            let name = name.split('"').next().unwrap();
            assert!(schemas.get(name).is_some(), "a $ref to the missing schema {name}");
        }
    }
}
