//! `GET /openapi.json`: the web client's HTTP interface as an OpenAPI 3.1 document, generated
//! from the handlers' `#[utoipa::path]` annotations (`web/`). Most answers are HTML pages;
//! `/cluster/status.json`, `/health` and `/leader_changed/` are JSON, `/metrics` is Prometheus
//! text. With a cluster token configured, `/leader_changed/` declares it and its 401 answer
//! ([`protocol::openapi::apply_cluster_token`]).

use protocol::ErrorBody;
use serde::Serialize;
use utoipa::openapi::OpenApi as Document;
use utoipa::{OpenApi, ToSchema};

use crate::web::{DrillEntry, HistoryEntry};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Replication middleware web client",
        description = "The transaction form (`/create/`), the live cluster page with the failover drills and the \
            operator actions \
            (`/cluster/`), and `/leader_changed/` for the supervisor. See docs/api.md."
    ),
    paths(
        root,
        crate::web::health,
        crate::web::metrics_text,
        crate::web::form::show_form,
        crate::web::form::create,
        cluster_redirect,
        crate::web::cluster::cluster_page,
        crate::web::cluster::cluster_live,
        crate::web::cluster::cluster_json,
        crate::web::drill::drill,
        crate::web::operate::operate,
        crate::web::leader_changed::leader_changed,
        style_css,
        app_js,
        openapi_json,
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "pages", description = "HTML pages for a person"),
        (name = "operations", description = "Health, metrics, the cluster page's data, this document"),
        (name = "supervisor", description = "Called by the supervisor"),
    )
)]
struct ClientApi;

/// `GET /`: on to the form.
#[utoipa::path(get, path = "/", tag = "pages",
    responses((status = 303, description = "To `/create/`", headers(("Location" = String)))))]
#[allow(dead_code)]
fn root() {}

/// `GET /cluster`: on to `/cluster/`.
#[utoipa::path(get, path = "/cluster", tag = "pages",
    responses((status = 308, description = "To `/cluster/`", headers(("Location" = String)))))]
#[allow(dead_code)]
fn cluster_redirect() {}

/// The pages' style sheet.
#[utoipa::path(get, path = "/static/style.css", tag = "pages",
    responses((status = 200, description = "The pages' style sheet", body = String, content_type = "text/css")))]
#[allow(dead_code)]
fn style_css() {}

/// The pages' script (live updates, confirmation dialogs).
#[utoipa::path(get, path = "/static/app.js", tag = "pages",
    responses((status = 200, description = "The pages' script (live updates, confirmation dialogs)", body = String, content_type = "text/javascript")))]
#[allow(dead_code)]
fn app_js() {}

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

/// The answer of `POST /leader_changed/`.
#[derive(Serialize, ToSchema)]
pub struct LeaderAdopted {
    /// Where this client now sends transactions.
    pub leader: String,
}

/// `GET /cluster/status.json`: what the cluster page shows.
#[derive(Serialize, ToSchema)]
pub struct ClusterJson {
    /// The supervisor's `GET /status`, or null when it could not be fetched.
    #[schema(value_type = Option<Object>)]
    pub supervisor: Option<serde_json::Value>,
    /// Why the supervisor's status is missing, if it is.
    pub error: Option<String>,
    /// Where this client sends commits.
    pub leader: String,
    /// Transactions run from this client, newest first (at most 20).
    pub history: Vec<HistoryEntry>,
    /// Drills run from this client, newest first (at most 20).
    pub drills: Vec<DrillEntry>,
}

/// A `u64`: utoipa's own schema for it says `int64`, which refuses the upper half.
pub fn uint64() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaFormat, Type};
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::Custom("uint64".into())))
        .minimum(Some(0))
        .build()
}

/// The document for a client with (`token_configured`) or without a cluster token.
pub fn document(token_configured: bool) -> Document {
    protocol::openapi::document::<ClientApi>(token_configured)
}

/// The document as JSON text, as `GET /openapi.json` serves it.
pub fn json(token_configured: bool) -> String {
    protocol::openapi::json::<ClientApi>(token_configured)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route of `web::app`.
    const ROUTES: &[(&str, &str)] = &[
        ("get", "/"),
        ("get", "/health"),
        ("get", "/metrics"),
        ("get", "/create/"),
        ("post", "/create/"),
        ("get", "/cluster"),
        ("get", "/cluster/"),
        ("get", "/cluster/live"),
        ("get", "/cluster/status.json"),
        ("post", "/cluster/drill"),
        ("post", "/cluster/operate"),
        ("post", "/leader_changed/"),
        ("get", "/static/style.css"),
        ("get", "/static/app.js"),
        ("get", "/openapi.json"),
    ];

    #[test]
    fn every_route_is_documented_and_the_token_as_configured() {
        for token in [true, false] {
            let doc: serde_json::Value = serde_json::from_str(&json(token)).unwrap();
            let documented: usize =
                doc["paths"].as_object().unwrap().values().map(|i| i.as_object().unwrap().len()).sum();
            assert_eq!(documented, ROUTES.len());
            for (method, path) in ROUTES {
                let op = &doc["paths"][path][method];
                let responses = op["responses"].as_object().unwrap_or_else(|| panic!("{method} {path} undocumented"));
                if op.get("requestBody").is_some() {
                    assert!(responses.contains_key("400"), "{method} {path}");
                }
                let guarded = token && *path == "/leader_changed/";
                assert_eq!(responses.contains_key("401"), guarded, "{method} {path}, token {token}");
            }
            let text = doc.to_string();
            for name in text.split("#/components/schemas/").skip(1) {
                let name = name.split('"').next().unwrap();
                assert!(doc["components"]["schemas"].get(name).is_some(), "a $ref to the missing schema {name}");
            }
        }
    }

    #[tokio::test]
    async fn the_app_serves_the_document_for_its_configuration() {
        use tower::ServiceExt;
        for token in [None, Some("t0ken")] {
            let runner = crate::run::Runner::new().unwrap();
            let state = crate::web::AppState::new("127.0.0.1:9", runner).unwrap().with_token(token).unwrap();
            let request = axum::http::Request::get("/openapi.json").body(axum::body::Body::empty()).unwrap();
            let response = crate::web::app(state.clone()).oneshot(request).await.unwrap();
            assert_eq!(response.status(), axum::http::StatusCode::OK);
            assert_eq!(response.headers()[axum::http::header::CONTENT_TYPE], "application/json");
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
            assert_eq!(std::str::from_utf8(&bytes).unwrap(), json(token.is_some()));
        }
    }

    /// The form endpoints' documented refusals are the ones axum's `Form` gives.
    #[tokio::test]
    async fn an_oversized_or_mistyped_form_gets_a_documented_status() {
        use tower::ServiceExt;
        let doc: serde_json::Value = serde_json::from_str(&json(false)).unwrap();
        for path in ["/create/", "/cluster/drill", "/cluster/operate"] {
            let documented = doc["paths"][path]["post"]["responses"].as_object().unwrap();
            let runner = crate::run::Runner::new().unwrap();
            let state = crate::web::AppState::new("127.0.0.1:9", runner).unwrap();
            let big = format!("transaction={}", "r".repeat(70 * 1024));
            for (content_type, body) in
                [("application/x-www-form-urlencoded", big), ("application/json", "{}".to_string())]
            {
                let request = axum::http::Request::post(path)
                    .header(axum::http::header::CONTENT_TYPE, content_type)
                    .body(axum::body::Body::from(body))
                    .unwrap();
                let status = crate::web::app(state.clone()).oneshot(request).await.unwrap().status();
                assert!(documented.contains_key(status.as_str()), "{path} {content_type}: {status} undocumented");
            }
        }
    }
}
