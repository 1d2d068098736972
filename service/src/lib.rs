//! The runtime pieces every program of the cluster (agent, supervisor, web client) needs at its
//! edges and must do the same way:
//!
//! - [`shutdown_signal`]: stop gracefully on SIGINT or SIGTERM (what `./setup.sh stop` sends).
//! - [`http_client`] and [`client_builder`]: outbound HTTP that carries the cluster token on
//!   every call.
//! - [`require_token`] and [`guard`]: the axum middleware that refuses a call without the
//!   cluster token with the same 401 body in every program.
//!
//! Architecture invariant: no protocol logic here. This crate does I/O plumbing only; what a
//! token is and how it is compared lives in [`protocol::auth`], which is pure.

mod auth;
mod http_client;
mod shutdown;

pub use auth::{guard, require_token, unauthorized, UNAUTHORIZED_MESSAGE};
pub use http_client::{client_builder, http_client, ClientError};
pub use shutdown::shutdown_signal;
