//! Client API keys on `/read/` and `/commit/` (`--api-keys FILE`; off by default, so that a
//! cluster without keys answers anyone who reaches the port, as the original did).
//!
//! With keys, a request without a known key is refused with 401 before its body is read, a read
//! key on `/commit/` with 403, and each transaction that passes is logged with the key's name
//! (never the key) under the `audit` target.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use protocol::api_keys::{ApiKeys, Scope};
use protocol::ErrorBody;

/// What a route needs, with the keys to check it against.
#[derive(Clone)]
struct Needs {
    keys: Arc<ApiKeys>,
    scope: Scope,
}

/// The routes of `router` need a key of `scope` (or wider) when there are keys; without keys
/// they stay open.
pub fn guard<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    keys: Option<&Arc<ApiKeys>>,
    scope: Scope,
) -> Router<S> {
    match keys {
        Some(keys) => {
            router.route_layer(axum::middleware::from_fn_with_state(Needs { keys: keys.clone(), scope }, require_key))
        }
        None => router,
    }
}

async fn require_key(State(needs): State<Needs>, req: Request, next: Next) -> Response {
    let header = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    let path = req.uri().path().to_string();
    let Some(key) = needs.keys.find(header) else {
        tracing::warn!(target: "audit", path = %path, given = header.is_some(), "refused: no valid API key");
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!("{path} needs an API key: send 'Authorization: Bearer <key>' with a key from the agent's --api-keys file"),
        );
    };
    if !key.scope.allows(needs.scope) {
        tracing::warn!(target: "audit", path = %path, key = %key.name, scope = %key.scope, "refused: the key's scope is too narrow");
        return refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("the key '{}' may only {}: {path} needs a {} key", key.name, key.scope, needs.scope),
        );
    }
    let (name, scope) = (key.name.clone(), key.scope);
    let started = Instant::now();
    let response = next.run(req).await;
    tracing::info!(
        target: "audit",
        path = %path,
        key = %name,
        scope = %scope,
        status = response.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "transaction"
    );
    response
}

fn refuse(status: StatusCode, error: &str, message: String) -> Response {
    (status, Json(ErrorBody { error: error.into(), message, leader: None, term: None, horizon: None })).into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::post;
    use tower::ServiceExt;

    use super::*;

    const WRITE: &str = "9b1d2c3e4f5a6b7c8d9e0f1a2b3c4d5e";
    const READ: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";

    fn app(keys: Option<&Arc<ApiKeys>>) -> Router {
        let read = guard(Router::new().route("/read/", post(|| async { "read" })), keys, Scope::Read);
        let commit = guard(Router::new().route("/commit/", post(|| async { "committed" })), keys, Scope::Write);
        read.merge(commit)
    }

    async fn call(app: Router, path: &str, key: Option<&str>) -> (StatusCode, String) {
        let mut req = Request::builder().method("POST").uri(path);
        if let Some(key) = key {
            req = req.header(AUTHORIZATION, format!("Bearer {key}"));
        }
        let resp = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 64 * 1024).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn keys_by_scope_and_no_keys_means_open() {
        let keys = Arc::new(ApiKeys::parse(&format!("{WRITE} write teller\n{READ} read report\n")).unwrap());
        let app = || app(Some(&keys));
        assert_eq!(call(app(), "/read/", Some(READ)).await, (StatusCode::OK, "read".into()));
        assert_eq!(call(app(), "/read/", Some(WRITE)).await, (StatusCode::OK, "read".into()));
        assert_eq!(call(app(), "/commit/", Some(WRITE)).await, (StatusCode::OK, "committed".into()));

        let (status, body) = call(app(), "/commit/", Some(READ)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(body.contains("\"forbidden\"") && body.contains("report") && !body.contains(READ), "{body}");
        for key in [None, Some(""), Some("0a1b2c3d4e5f60718293a4b5c6d7e8f8")] {
            for path in ["/read/", "/commit/"] {
                let (status, body) = call(app(), path, key).await;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} {key:?}");
                assert!(body.contains("\"unauthorized\"") && body.contains("--api-keys"), "{body}");
            }
        }
        assert_eq!(call(self::app(None), "/commit/", None).await, (StatusCode::OK, "committed".into()));
    }
}
