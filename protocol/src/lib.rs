//! Wire types and the transaction language shared by every program of the cluster.
//!
//! Everything a user or a peer sends is parsed here into typed values at the edge:
//! accounts and balances are one 64-bit integer type everywhere ([`Account`], [`Balance`]),
//! whether they arrive as JSON numbers (read sets) or as JSON object keys (write sets), so a
//! write's lock and a read of the same account always meet.

pub mod api_keys;
pub mod auth;
#[cfg(feature = "config-file")]
pub mod config_file;
pub mod language;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod operator;
pub mod secrets;
pub mod supervisor_status;
pub mod wire;

pub use language::{parse_transaction, Op, ParseError, ParsedTransaction};
pub use wire::*;
