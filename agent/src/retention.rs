//! A bounded recovery log (`--retain-log`): each node trims, in the background, the entries
//! that are both beyond the newest `entries` and older than `min_age`.
//!
//! Why this is safe (docs/guarantees.md, "A bounded log"):
//! - every member holds every committed entry, and a batch can be in doubt only within the
//!   leader's pipeline (at most `pipeline depth x MAX_BATCH` = 2,048 entries past the slowest
//!   member's applied LSN); the floor of 4,096 entries keeps every entry a member may still ask
//!   about (`/internal/batch_state`, an in-doubt resolution) in every member's log;
//! - the last entry is never trimmed: a node learns from it where its log ends;
//! - a node the log no longer reaches (down too long, or wiped) is rebuilt from a snapshot
//!   (`GET /internal/snapshot`) plus the log after it; the leader that served the snapshot
//!   keeps the entries after its base until the node joins ([`Holds`]), or a load slower than N
//!   commits would find them trimmed and start over, again and again;
//! - a retry of a `txn_id` whose entry was trimmed cannot be recognised: entries younger than
//!   `min_age` are kept for retries, and a retry carrying a `time_stamp` from before the
//!   log's first entry is refused (410) rather than run again.

use std::sync::Weak;
use std::time::Duration;

use protocol::Lsn;
use tokio::time::Instant;

use crate::node::Node;

/// The smallest `--retain-log`: twice the most entries a batch can lie beyond the slowest
/// member's applied LSN (8 rounds of 256 entries in flight).
pub const MIN_RETAIN_LOG: i64 = 4_096;

/// How often a node looks for entries to trim.
const EVERY: Duration = Duration::from_secs(1);
/// At most this many entries per DELETE, so that one statement stays short.
const CHUNK: i64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Keep at least the newest this many entries.
    pub entries: i64,
    /// Keep every entry younger than this.
    pub min_age: Duration,
}

/// The longest a hold lasts: a rebuild that has not joined by then has failed (it starts over
/// with a new snapshot, and a new hold).
pub const HOLD_TTL: Duration = Duration::from_secs(300);

/// The log entries rebuilds still need. After serving a snapshot at LSN `base`, the leader
/// keeps every entry after `base` until the rebuilt node joins (at or past `base`), the leader
/// stops leading (the node then recovers from the next leader), or [`HOLD_TTL`] passes, however
/// far `--retain-log` would trim. Without it a snapshot that takes longer to load than the
/// cluster takes to commit N entries would find the log after it trimmed, and the rebuild would
/// start over, again and again. Keeping entries longer is always safe. Other readers of the log
/// (a monitor, the torture's archive) neither take nor refresh a hold.
#[derive(Debug, Default)]
pub struct Holds {
    holds: Vec<(Lsn, Instant)>,
}

impl Holds {
    /// A snapshot at `base` was served.
    pub fn hold(&mut self, base: Lsn, now: Instant) {
        self.holds.push((base, now));
    }

    /// A node joined at `applied`: the rebuilds it replayed past are done.
    pub fn joined(&mut self, applied: Lsn) {
        self.holds.retain(|(base, _)| *base > applied);
    }

    /// This node no longer leads: no rebuild reads its log now.
    pub fn clear(&mut self) {
        self.holds.clear();
    }

    /// The highest LSN trimming may remove now (None: no hold), dropping the lapsed holds.
    pub fn bound(&mut self, now: Instant) -> Option<Lsn> {
        self.holds.retain(|(_, at)| now.saturating_duration_since(*at) < HOLD_TTL);
        self.holds.iter().map(|(base, _)| *base).min()
    }
}

/// Trims `node`'s log as `retention` says until the node is gone.
pub fn spawn(node: Weak<Node>, retention: Retention) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(node) = node.upgrade() else {
                return;
            };
            trim(&node, retention).await;
        }
    });
}

async fn trim(node: &Node, retention: Retention) {
    let before =
        crate::two_phase::now_ns().saturating_sub(i64::try_from(retention.min_age.as_nanos()).unwrap_or(i64::MAX));
    let leading = node.leader().is_some();
    let upto = node
        .log_holds
        .lock()
        .map_or(None, |mut holds| {
            if !leading {
                holds.clear();
            }
            holds.bound(Instant::now())
        })
        .unwrap_or(Lsn::MAX);
    let mut trimmed = 0u64;
    loop {
        match node.store.trim(retention.entries, before, upto, CHUNK).await {
            Ok(n) => {
                trimmed += n;
                if n < CHUNK as u64 {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not trim the recovery log; trying again shortly");
                break;
            }
        }
    }
    if trimmed > 0 {
        metrics::counter!("rmw_log_trimmed_entries_total").increment(trimmed);
        tracing::debug!(trimmed, "trimmed the recovery log");
    }
    if let Ok(start) = node.store.log_start().await {
        let horizon = start.map_or(0, |(first, _)| first - 1);
        metrics::gauge!("rmw_log_horizon").set(horizon as f64);
        metrics::gauge!("rmw_log_entries").set((node.applied().0 - horizon).max(0) as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rebuild_keeps_the_log_after_its_snapshot_until_it_joins() {
        let start = Instant::now();
        let mut holds = Holds::default();
        assert_eq!(holds.bound(start), None, "no rebuild: trim as the bound says");
        holds.hold(500, start);
        holds.hold(800, start);
        assert_eq!(holds.bound(start), Some(500), "the older snapshot's entries are needed longest");
        holds.joined(600);
        assert_eq!(holds.bound(start), Some(800), "the node rebuilt from 500 joined at 600");
        assert_eq!(holds.bound(start + HOLD_TTL), None, "a rebuild that never joins lets go in the end");
        holds.hold(900, start);
        holds.clear();
        assert_eq!(holds.bound(start), None, "a node that no longer leads holds nothing");
    }
}
