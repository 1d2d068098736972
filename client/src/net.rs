//! How this client process reaches the cluster: plain HTTP, or HTTPS trusting the cluster's CA
//! (`--tls-ca`, with `--tls-cert`/`--tls-key` as its own certificate for mutual TLS).
//!
//! One choice per process, made once at start-up by [`init`] before any request: every
//! program of a cluster runs with TLS or every one without, so the client's many callers (the
//! runner, the status, the operator commands, the pages' drills and plots) share it rather than
//! each carrying it. Before [`init`] (as in unit tests) it is plain HTTP.

use std::sync::OnceLock;

static TLS: OnceLock<Option<service::Tls>> = OnceLock::new();

/// Sets this process's TLS, once; a second call is refused (it would change the scheme under
/// requests already made).
pub fn init(tls: Option<service::Tls>) -> Result<(), &'static str> {
    TLS.set(tls).map_err(|_| "the client's TLS was already set")
}

/// This process's TLS, if any (`client serve` serves HTTPS with it).
pub fn tls() -> Option<&'static service::Tls> {
    TLS.get().and_then(Option::as_ref)
}

/// Whether this process calls the cluster over HTTPS.
pub fn https() -> bool {
    tls().is_some()
}

/// Whether this process, serving, requires a client certificate on its internal endpoint
/// (`/leader_changed/`, which the supervisor calls).
pub fn client_auth() -> bool {
    tls().is_some_and(service::Tls::client_auth)
}

/// A client builder for calls to the cluster's programs, with `token` on every call when given.
pub fn builder(token: Option<&str>) -> Result<reqwest::ClientBuilder, service::ClientError> {
    service::client_builder_tls(token, tls())
}

/// `host:port` as a URL with this process's scheme; a full `http://` or `https://` URL is kept
/// as given (without a trailing slash).
pub fn base_url(address: &str) -> String {
    let address = address.trim().trim_end_matches('/');
    if address.starts_with("http://") || address.starts_with("https://") {
        address.to_string()
    } else {
        service::base_url(address, https())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_the_scheme_and_a_url_keeps_its_own() {
        // Unit tests never call `init`: plain HTTP.
        assert_eq!(base_url("127.0.0.1:8000"), "http://127.0.0.1:8000");
        assert_eq!(base_url(" http://h:1/ "), "http://h:1");
        assert_eq!(base_url("https://h:1"), "https://h:1");
    }
}
