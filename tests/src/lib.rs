//! End-to-end test harness: real PostgreSQL servers and real agent processes on free loopback
//! ports, one set of data folders per test.
//!
//! ```no_run
//! # async fn example() {
//! use e2e::Cluster;
//! use serde_json::json;
//!
//! let c = Cluster::start(3).await;
//! let r = c.read(0, &[1, 2]).await; // POST /read/ on the leader
//! let (status, body) = c.commit(0, json!({"transaction": {"write_set": {"1": 100}}})).await;
//! c.wait_applied(2, body["lsn"].as_i64().unwrap()).await;
//! assert_eq!(c.table(2).await, c.table(0).await); // straight from PostgreSQL
//! c.assert_converged().await; // identical tables and logs, log replays to the table
//! # }
//! ```
//!
//! With a supervisor ([`ClusterOptions::supervised`]), the failover drills and real faults:
//!
//! ```no_run
//! # async fn example() {
//! use e2e::{Cluster, ClusterOptions, Follower};
//! use serde_json::json;
//!
//! let c = Cluster::start_with(ClusterOptions::supervised(3)).await;
//! c.kill_agent(0); // or c.down_leader(0), c.pause_agent(0), c.stop_postgres(0)
//! let new_leader = c.wait_leader_change(0).await; // node 1: round-robin
//! let mut client = Follower::new(&c, 0); // follows 421s, asks the supervisor, retries the txn_id
//! let sent = client.commit(json!({"write_set": {"1": 5}})).await;
//! assert!(sent.committed());
//! c.start_agent(0).await;
//! c.wait_member(0).await; // recovered and back in the member set
//! c.assert_converged().await;
//! # }
//! ```
//!
//! Guarantees the tests rely on:
//! - Everything a [`Cluster`] started is stopped when it is dropped, also when the test panics:
//!   the supervisor and agents get SIGKILL, PostgreSQL `pg_ctl stop -m immediate`, and the
//!   cluster's folder under the temp dir is removed (set `RMW_KEEP=1` to keep it for a
//!   post-mortem). On a panic the tail of every agent's log, and the supervisor's, is printed.
//! - A supervised cluster is returned only once the supervisor has adopted the agents' first
//!   configuration (term 1, the first leader, every node a member).
//! - `initdb` runs once per test process; each node gets a copy of that template.
//! - A test process that was killed outright leaves folders named after its pid; the next test
//!   process that starts a cluster stops what they still run and removes them.
//!
//! Environment: `RMW_BIN_DIR` (where the `agent` and `supervisor` binaries are; default: the
//! cargo target folder the tests were built into), `RMW_PG_BINDIR` (PostgreSQL's binaries;
//! default: the newest under `/usr/lib/postgresql`, else `pg_config --bindir`), `RMW_KEEP`.

pub mod api_docs;
pub mod browser;
mod cluster;
mod etcd;
mod follow;
pub mod haproxy;
mod hosts;
mod invariants;
mod listener;
mod operator;
mod pg;
mod ports;
mod supervisor;
pub mod tls;

pub use cluster::{BalanceRow, Cluster, ClusterOptions, LogRow, Node, RawResponse};
pub use follow::{Ack, Follower, Sent, FOLLOW_BUDGET, REQUEST_TIMEOUT};
pub use hosts::{Host, HostId};
pub use invariants::{replay, Converged};
pub use listener::LeaderChangedListener;
pub use ports::free_port;
pub use supervisor::{LeaderHistory, LeaderWatch, FAILOVER_TIMEOUT, REJOIN_TIMEOUT};

/// How long the harness waits for anything to become ready (a server to start, a node to apply
/// an LSN) before failing the test with the relevant log.
pub const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
