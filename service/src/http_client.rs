//! Outbound HTTP with the cluster token, and over TLS when the cluster uses it.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};

use crate::Tls;

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
/// its own timeouts and pool settings. Plain HTTP: [`client_builder_tls`] for a cluster with
/// TLS.
pub fn client_builder(token: Option<&str>) -> Result<reqwest::ClientBuilder, ClientError> {
    client_builder_tls(token, None)
}

/// As [`client_builder`], and with `tls` every call goes over HTTPS (an `http://` URL is
/// refused rather than sent in clear), trusts the cluster's CA only, and presents the
/// program's certificate to a server that asks for one (`--tls-client-auth`).
///
/// The TLS configuration is handed to reqwest whole, so reqwest's own TLS settings
/// (`add_root_certificate`, `identity`, ...) do not apply to the builder returned.
pub fn client_builder_tls(token: Option<&str>, tls: Option<&Tls>) -> Result<reqwest::ClientBuilder, ClientError> {
    let mut headers = HeaderMap::new();
    if let Some(token) = token {
        let value = HeaderValue::from_str(&protocol::auth::bearer(token)).map_err(|_| ClientError::InvalidToken)?;
        headers.insert(AUTHORIZATION, value);
    }
    let builder = reqwest::Client::builder().default_headers(headers).tcp_nodelay(true);
    Ok(match tls {
        // reqwest accepts this `rustls::ClientConfig` because both use the same rustls (0.23);
        // were they to differ, `build()` would fail, and the tests here would say so.
        Some(tls) => builder.use_preconfigured_tls(rustls::ClientConfig::clone(&tls.client_config())).https_only(true),
        None => builder,
    })
}

/// A client as [`client_builder`] makes it, where every request (connecting included) must
/// finish within `timeout` unless the request sets its own.
pub fn http_client(token: Option<&str>, timeout: Duration) -> Result<reqwest::Client, ClientError> {
    http_client_tls(token, timeout, None)
}

/// A client as [`client_builder_tls`] makes it, with the timeouts of [`http_client`].
pub fn http_client_tls(
    token: Option<&str>,
    timeout: Duration,
    tls: Option<&Tls>,
) -> Result<reqwest::Client, ClientError> {
    Ok(client_builder_tls(token, tls)?.timeout(timeout).connect_timeout(timeout).build()?)
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

    #[tokio::test]
    async fn with_tls_a_call_in_clear_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pki =
            crate::generate_local_pki(dir.path(), &[("client", &["127.0.0.1"])], Duration::from_secs(3600)).unwrap();
        let tls = pki.options("client", false).unwrap().load().unwrap().unwrap();
        let url = echo_authorization().await;
        let client = http_client_tls(Some("s3cret"), Duration::from_secs(5), Some(&tls)).unwrap();
        let error = client.get(&url).send().await.unwrap_err();
        assert!(error.is_builder(), "{error}");
    }

    #[test]
    fn a_token_that_cannot_travel_is_refused() {
        assert!(matches!(client_builder(Some("bad\ntoken")), Err(ClientError::InvalidToken)));
    }
}
