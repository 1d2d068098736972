//! The agent: one beside each PostgreSQL server. See `docs/architecture.md` for the map.
//!
//! Pure protocol logic (no I/O): [`validation`] (timestamp ordering), [`participant`] (a
//! member's two-phase-commit rules), [`resolution`] (in-doubt batches). Runtime: [`store`]
//! (PostgreSQL), [`peers`] (HTTP to other agents), [`two_phase`] (the leader's commit path),
//! [`node`] (one agent's state), [`api`] (the HTTP edge).

pub mod api;
pub mod error;
pub mod metrics;
pub mod node;
pub mod openapi;
pub mod participant;
pub mod peers;
pub mod store;
pub mod two_phase;

// The pure rules live in the engine crate; these names keep the agent's paths.
pub use engine::{resolution, validation};
