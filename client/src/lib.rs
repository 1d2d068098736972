//! The client: runs transactions typed in the transaction language (`r(1)w(2=22)`) against the
//! cluster, from the command line or from a web page, and shows the cluster's status.
//!
//! - [`run`]: the transaction logic shared by `client run` and the form: the runner, leader
//!   following, the report and the errors by kind;
//! - [`status`]: the supervisor's status (`protocol::supervisor_status`), fetched from the
//!   active supervisor, and `client status`'s table;
//! - [`web`]: `client serve`'s pages, one module per page, with the pure view builders in
//!   `web/view` (askama templates in `client/templates`);
//! - [`operator`]: the supervisor's operator endpoints (switchover, pause and resume, members,
//!   rebuild) as the operator commands and the cluster page's buttons call them;
//! - [`metrics`]: what `client serve` counts, for `GET /metrics`;
//! - [`net`]: plain HTTP or HTTPS to the cluster, chosen once per process (`--tls-*`);
//! - [`openapi`]: the web client's OpenAPI document (also rendered into docs/api.md).
//!
//! `main.rs` only parses the options and runs a subcommand.

pub mod metrics;
pub mod net;
pub mod openapi;
pub mod operator;
pub mod run;
pub mod status;
pub mod web;

#[cfg(test)]
mod fake_agent;
