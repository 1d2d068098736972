//! `Connection: close` on the answers that may leave the request's body unread.
//!
//! A refusal made before the body is read (no token or key, no client certificate, a route or
//! method that does not exist, a body over the limit) leaves the rest of the body on the
//! connection, and hyper then closes the connection after the answer instead of reading it.
//! Without a word of it in the answer, a client that pools connections may send its next
//! request on that connection just as it closes, and lose it to a reset ("EOF occurred in
//! violation of protocol" over TLS; found by schemathesis under load). Saying
//! `Connection: close` makes the client open a new connection instead.

use axum::extract::Request;
use axum::http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

/// The statuses a server gives before (or instead of) reading a body. A 409 or a 503 comes from
/// a handler that read it; a 400 may come from a body over the limit.
fn may_leave_body_unread(status: StatusCode) -> bool {
    matches!(status.as_u16(), 400 | 401 | 403 | 404 | 405 | 408 | 411 | 413 | 414 | 415 | 431)
}

fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(TRANSFER_ENCODING)
        || headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

/// Outermost layer of a program's router: `.layer(axum::middleware::from_fn(close_when_body_unread))`.
pub async fn close_when_body_unread(req: Request, next: Next) -> Response {
    let body = has_body(req.headers());
    let mut response = next.run(req).await;
    if body && may_leave_body_unread(response.status()) {
        response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::post;
    use axum::Router;
    use tower::ServiceExt;

    use super::*;

    fn app() -> Router {
        let guarded = crate::guard(Router::new().route("/guarded", post(|| async { "done" })), Some("s3cret"));
        Router::new()
            .route("/conflict", post(|body: String| async move { (StatusCode::CONFLICT, body) }))
            .merge(guarded)
            .layer(axum::middleware::from_fn(close_when_body_unread))
    }

    async fn connection(path: &str, body: &'static str) -> (StatusCode, Option<String>) {
        let req = Request::builder()
            .method("POST")
            .uri(path)
            .header(CONTENT_LENGTH, body.len())
            .body(Body::from(body))
            .unwrap();
        let resp = app().oneshot(req).await.unwrap();
        (resp.status(), resp.headers().get(CONNECTION).map(|v| v.to_str().unwrap().to_string()))
    }

    #[tokio::test]
    async fn a_refusal_that_left_a_body_unread_closes_the_connection() {
        assert_eq!(connection("/guarded", "{}").await, (StatusCode::UNAUTHORIZED, Some("close".into())));
        assert_eq!(connection("/nowhere", "{}").await, (StatusCode::NOT_FOUND, Some("close".into())));
        // Nothing left unread, or a handler that read it: the connection stays.
        assert_eq!(connection("/guarded", "").await, (StatusCode::UNAUTHORIZED, None));
        assert_eq!(connection("/conflict", "{}").await, (StatusCode::CONFLICT, None));
    }
}
