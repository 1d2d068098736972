//! The supervisor: watches every agent, fails over to the next member round-robin when the
//! leader fails, removes members that stop answering, and brings returning nodes back
//! (DESIGN.md sections 5 and 6). `main.rs` only parses the options and serves.
//!
//! The modules, pure first:
//! - [`failover`]: the decisions (`decide(...) -> Action`, failure reports, backoffs, where a
//!   recovery's tail stands), and [`history`]: what the supervisor remembers of its attempts,
//!   and [`status`]: `GET /status` made from both. No I/O, time passed in.
//! - [`run`]: the loop (poll, adopt, decide, carry out) over [`polling`] (the agents'
//!   answers) and [`agent_client`] (every call to an agent, with a typed error).
//! - Carrying decisions out: [`election`] (store the term, fence, promote), [`recovery`] (a
//!   returning node, and a member behind at the floor), [`membership`] (the leader's failure
//!   reports, client registrations).
//! - The operator's own acts: [`planned`] decides (pure) whether a switchover, a member's
//!   addition or removal, or a rebuild may go ahead; [`switchover`] and [`operator`] carry
//!   them out, and maintenance (`POST /pause`) turns the automatic decisions off.
//! - [`config_keeper`]: the configuration held in step with [`store`] (a state file, or etcd
//!   through [`etcd`], shared with standby supervisors): compare-and-swap writes, re-read on
//!   conflict, the lease of the active supervisor.
//! - [`api`]: the HTTP edge (router, handlers, one error type); [`openapi`] describes it.
//!
//! A library so that other crates can read the OpenAPI document without starting a supervisor
//! (`tests/tests/api_docs.rs` renders docs/api.md from it).

pub mod agent_client;
pub mod api;
pub mod config_keeper;
pub mod election;
pub mod etcd;
pub mod failover;
pub mod history;
pub mod membership;
pub mod metrics;
pub mod openapi;
pub mod operator;
pub mod planned;
pub mod polling;
pub mod recovery;
pub mod run;
pub mod status;
pub mod store;
pub mod switchover;

/// The Prometheus recorder's handle, for `GET /metrics`; `main` installs it.
pub static METRICS: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> = std::sync::OnceLock::new();
