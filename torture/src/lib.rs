//! The torture run: a bank workload against a real supervised cluster while a nemesis injects
//! faults, a history in Jepsen Elle's format, and a checker that proves nothing was lost.
//! `./setup.sh torture` runs it; the README's "Torture run" says how to read its report.

pub mod archive;
pub mod checker;
pub mod history;
pub mod logs;
pub mod nemesis;
pub mod net;
pub mod pgdata;
pub mod planned;
pub mod report;
pub mod run;
pub mod workload;
