//! Outbound HTTP with the cluster token.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Cannot happen with a token from [`protocol::auth::resolve_token`], which admits
    /// header-safe ASCII only; refused rather than dropped, since every call would then
    /// answer 401 for no visible reason.
    #[error("the cluster token cannot be sent in an HTTP header")]
    InvalidToken,
    #[error("cannot set up the HTTP client: {0}")]
    Build(#[from] reqwest::Error),
}

/// A client builder whose every request carries `Authorization: Bearer <token>` when there is a
/// token, with Nagle's algorithm off (the calls are small and latency-bound). The caller adds
/// its own timeouts and pool settings.
pub fn client_builder(token: Option<&str>) -> Result<reqwest::ClientBuilder, ClientError> {
    let mut headers = HeaderMap::new();
    if let Some(token) = token {
        let value = HeaderValue::from_str(&protocol::auth::bearer(token)).map_err(|_| ClientError::InvalidToken)?;
        headers.insert(AUTHORIZATION, value);
    }
    Ok(reqwest::Client::builder().default_headers(headers).tcp_nodelay(true))
}

/// A client as [`client_builder`] makes it, where every request (connecting included) must
/// finish within `timeout` unless the request sets its own.
pub fn http_client(token: Option<&str>, timeout: Duration) -> Result<reqwest::Client, ClientError> {
    Ok(client_builder(token)?.timeout(timeout).connect_timeout(timeout).build()?)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::HeaderMap;
    use axum::routing::get;
    use axum::Router;

    use super::*;

    /// A server that answers each request with the `Authorization` header it got (or `-`).
    async fn echo_authorization() -> String {
        let app = Router::new().route(
            "/",
            get(|headers: HeaderMap| async move {
                headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("-").to_string()
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/")
    }

    #[tokio::test]
    async fn every_call_carries_the_token_when_there_is_one() {
        let url = echo_authorization().await;
        let with = http_client(Some("s3cret"), Duration::from_secs(5)).unwrap();
        assert_eq!(with.get(&url).send().await.unwrap().text().await.unwrap(), "Bearer s3cret");
        let without = http_client(None, Duration::from_secs(5)).unwrap();
        assert_eq!(without.get(&url).send().await.unwrap().text().await.unwrap(), "-");
    }

    #[test]
    fn a_token_that_cannot_travel_is_refused() {
        assert!(matches!(client_builder(Some("bad\ntoken")), Err(ClientError::InvalidToken)));
    }
}
