//! The runtime pieces every program of the cluster (agent, supervisor, web client) needs at its
//! edges and must do the same way:
//!
//! - [`shutdown_signal`]: stop gracefully on SIGINT or SIGTERM (what `./setup.sh stop` sends).
//! - [`http_client`] and [`client_builder`]: outbound HTTP that carries the cluster token on
//!   every call; [`http_client_tls`] and [`client_builder_tls`] also over HTTPS.
//! - [`require_token`] and [`guard`]: the axum middleware that refuses a call without the
//!   cluster token with the same 401 body in every program.
//! - [`TlsOptions`], [`Tls`], [`serve`] and [`guard_client_cert`]: HTTPS between the programs
//!   (`--tls-cert`, `--tls-key`, `--tls-ca`, `--tls-client-auth`), and plain HTTP without it;
//!   [`generate_local_pki`] makes the certificates of a local cluster.
//!
//! Architecture invariant: no protocol logic here. This crate does I/O plumbing only; what a
//! token is and how it is compared lives in [`protocol::auth`], which is pure.

mod auth;
mod http_client;
mod shutdown;
mod tls;
mod unread_body;

pub use auth::{guard, require_token, unauthorized, UNAUTHORIZED_MESSAGE};
pub use http_client::{client_builder, client_builder_tls, http_client, http_client_tls, ClientError};
pub use shutdown::shutdown_signal;
pub use tls::{
    base_url, client_certificate_required, generate_local_pki, guard_client_cert, require_client_cert, serve,
    IssuedCert, LocalCa, LocalPki, PeerInfo, PkiError, PlainListener, ProgramFiles, Tls, TlsError, TlsListener,
    TlsOptions, Validity, CLIENT_CERT_REQUIRED_MESSAGE, HANDSHAKE_TIMEOUT, MAX_HANDSHAKES_IN_FLIGHT,
};
pub use unread_body::close_when_body_unread;
