//! The replication protocol as pure state machines.
//!
//! A cluster of agents keeps one bank table identical on several PostgreSQL servers. One agent
//! leads a *term*: it validates each transaction by timestamp ordering ([`validation`]), groups
//! what arrives into *rounds*, and replicates each round's batch to every member with a
//! two-phase commit built on PostgreSQL's `PREPARE TRANSACTION`: every member votes on the
//! batch ([`member`]), the leader decides, and a client hears COMMIT only when the decision is
//! durable on every member. A supervisor fences the old term and names a new leader when one
//! fails; the new leader first decides what its predecessor left prepared ([`resolution`]).
//!
//! Architecture invariant: nothing in this crate does I/O or waits. There is no tokio, sqlx or
//! reqwest here (`tests/pure.rs` checks the manifest), no clock (time comes in as a value), and
//! no randomness. The agent's runtime steps these machines under a lock held for microseconds,
//! performs the effects they ask for outside it, and feeds the results back. The hard cases
//! (a crash between PREPARE and COMMIT, a stale term, a superseded batch) are scenario tests in
//! `tests/scripts/` that run in milliseconds.

pub mod batch;
pub mod cluster;
pub mod coordinator;
pub mod member;
pub mod resolution;
pub mod validation;

pub use batch::{Batch, LogEnd, PreparedHere, RoundId};
