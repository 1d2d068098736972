//! `POST /leader_changed/`: the supervisor tells this client the new leader.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::ErrorBody;
use serde_json::json;

use super::AppState;
use crate::metrics::Announcement;

/// The supervisor announces a new leader (as the original did, with an address for a port).
#[utoipa::path(post, path = "/leader_changed/", tag = "supervisor",
    request_body(content = protocol::LeaderChanged, description = "The new leader's address, and its term"),
    security(("cluster_token" = [])),
    responses(
        (status = 200, description = "The next transactions go to that leader", body = crate::openapi::LeaderAdopted),
        (status = 400, description = "Not a `LeaderChanged` body", body = ErrorBody),
        (status = 413, description = "A body over 64 KiB", body = String, content_type = "text/plain"),
    ))]
pub(crate) async fn leader_changed(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(token) = state.token() {
        let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if !protocol::auth::authorized(given, token) {
            tracing::warn!("refused a /leader_changed/ without the cluster token");
            crate::metrics::leader_announcement(Announcement::Unauthorized, None);
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({ "error": "unauthorized", "message": "this endpoint needs the cluster token" })),
            )
                .into_response();
        }
    }
    match serde_json::from_slice::<protocol::LeaderChanged>(&body) {
        Ok(change) => {
            tracing::info!(leader = %change.leader, term = ?change.term, "the supervisor announced a new leader");
            crate::metrics::leader_announcement(Announcement::Accepted, change.term);
            state.set_leader(&change.leader);
            state.forget_cluster().await;
            Json(json!({ "leader": change.leader })).into_response()
        }
        Err(e) => {
            crate::metrics::leader_announcement(Announcement::BadRequest, None);
            (
                StatusCode::BAD_REQUEST,
                Json(ErrorBody {
                    error: "bad_request".into(),
                    message: format!("expected {{\"leader\": \"host:port\", \"term\": N}}: {e}"),
                    leader: None,
                    term: None,
                    horizon: None,
                }),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::test_support::{send, state_for};
    use axum::body::Body;
    use axum::http::Request;

    #[tokio::test]
    async fn leader_changed_moves_the_next_transaction() {
        let state = state_for("127.0.0.1:1", None);
        let request = Request::post("/leader_changed/")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"leader": "127.0.0.1:8001", "term": 2}"#))
            .unwrap();
        assert_eq!(send(&state, request).await.code, StatusCode::OK);
        assert_eq!(state.leader(), "127.0.0.1:8001");
        let bad = Request::post("/leader_changed/").body(Body::from("{")).unwrap();
        assert_eq!(send(&state, bad).await.code, StatusCode::BAD_REQUEST);
        assert_eq!(state.leader(), "127.0.0.1:8001");
    }
}
