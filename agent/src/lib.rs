//! The agent: one beside each PostgreSQL server. See `docs/architecture.md` for the map.
//!
//! The protocol's rules are pure and live in the `engine` crate (the member's state machine,
//! timestamp ordering, the in-doubt rules). This crate is their runtime: [`store`]
//! (PostgreSQL), [`peers`] (HTTP to other agents), [`node`] (the member under its lock and the
//! effects it asks for), [`replica`] (PREPARE and decisions), [`recovery`], [`promotion`],
//! [`two_phase`] (the leader's commit path) and [`api`] (the HTTP edge).

pub mod api;
pub mod client_keys;
pub mod error;
pub mod metrics;
pub mod node;
pub mod openapi;
pub mod peers;
pub mod promotion;
pub mod recovery;
pub mod replica;
pub mod retention;
pub mod store;
pub mod two_phase;

// The pure rules live in the engine crate; these names keep the agent's paths.
pub use engine::{resolution, validation};
