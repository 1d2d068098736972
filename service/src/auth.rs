//! The cluster token on guarded routes.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use protocol::ErrorBody;

/// The message of the 401 answer, the same in every program.
pub const UNAUTHORIZED_MESSAGE: &str = "this endpoint needs the cluster token: send 'Authorization: Bearer <token>'";

/// The routes of `router` refuse a call without `token`, when there is one; without a token
/// they are open (a cluster run without one, as in development).
pub fn guard<S: Clone + Send + Sync + 'static>(router: Router<S>, token: Option<&str>) -> Router<S> {
    match token {
        Some(token) => router.route_layer(axum::middleware::from_fn_with_state(Arc::<str>::from(token), require_token)),
        None => router,
    }
}

/// Refuses a call without the cluster token (401 `unauthorized`), before it can change
/// anything. Use as `axum::middleware::from_fn_with_state(Arc<str>, require_token)`, or
/// through [`guard`].
pub async fn require_token(State(token): State<Arc<str>>, req: Request, next: Next) -> Response {
    let header = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    if protocol::auth::authorized(header, &token) {
        return next.run(req).await;
    }
    tracing::warn!(path = %req.uri().path(), given = header.is_some(), "refused: missing or wrong cluster token");
    unauthorized()
}

/// The 401 answer: an [`ErrorBody`] with the code `unauthorized`.
pub fn unauthorized() -> Response {
    let body = ErrorBody {
        error: "unauthorized".into(),
        message: UNAUTHORIZED_MESSAGE.into(),
        leader: None,
        term: None,
        horizon: None,
    };
    (StatusCode::UNAUTHORIZED, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    fn app(token: Option<&str>) -> Router {
        let guarded = guard(Router::new().route("/guarded", get(|| async { "done" })), token);
        Router::new().route("/open", get(|| async { "open" })).merge(guarded)
    }

    async fn call(app: Router, path: &str, authorization: Option<&str>) -> (StatusCode, String) {
        let mut req = Request::builder().uri(path);
        if let Some(value) = authorization {
            req = req.header(AUTHORIZATION, value);
        }
        let resp = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 64 * 1024).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_guarded_route_needs_the_exact_token() {
        let ok = call(app(Some("s3cret")), "/guarded", Some("Bearer s3cret")).await;
        assert_eq!(ok, (StatusCode::OK, "done".to_string()));
        for given in [None, Some("Bearer wrong"), Some("s3cret")] {
            let (status, body) = call(app(Some("s3cret")), "/guarded", given).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{given:?}");
            let body: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body, serde_json::json!({"error": "unauthorized", "message": UNAUTHORIZED_MESSAGE}));
        }
    }

    #[tokio::test]
    async fn open_routes_and_a_cluster_without_a_token_need_none() {
        assert_eq!(call(app(Some("s3cret")), "/open", None).await.0, StatusCode::OK);
        assert_eq!(call(app(None), "/guarded", None).await, (StatusCode::OK, "done".to_string()));
    }
}
