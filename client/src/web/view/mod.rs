//! The pure view builders: a run's report or error, the supervisor's status and this client's
//! history, turned into the structs the templates print, every value already text.
//!
//! Architecture invariant: nothing here does I/O, reads the clock or touches the app's state;
//! the handlers fetch, time and record, then call these. So every page's content is tested here
//! without a server, and a template only prints.

pub(crate) mod cluster;
pub(crate) mod form;
pub(crate) mod plot;
