//! The supervisor: watches every agent, fails over to the next member round-robin when the
//! leader fails, removes members that stop answering, and brings returning nodes back
//! (DESIGN.md sections 5 and 6). The decisions are pure ([`failover`]); [`run`] does the I/O;
//! [`store`] keeps the configuration (a state file, or etcd through [`etcd`], shared with
//! standby supervisors); [`openapi`] describes the HTTP interface. `main.rs` only parses the
//! options and serves.
//!
//! A library so that other crates can read the OpenAPI document without starting a supervisor
//! (`tests/tests/api_docs.rs` renders docs/api.md from it).

pub mod etcd;
pub mod failover;
pub mod openapi;
pub mod run;
pub mod store;

/// The Prometheus recorder's handle, for `GET /metrics`; `main` installs it.
pub static METRICS: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> = std::sync::OnceLock::new();
