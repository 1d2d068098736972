//! What the supervisor remembers of its own recent actions: the failovers and recoveries it
//! reports on `GET /status`, the recoveries under way, the nodes it must not touch for a while
//! (a recovery that failed backs off, a candidate that failed elections is passed over) or at
//! all (a diverged log). Pure: time comes in as a value, and the runtime keeps one `History`
//! behind a lock it holds for microseconds.
//!
//! Invariants kept here:
//! - Every pause ends: a failed recovery is retried after at most `MAX_RECOVERY_BACKOFF`, a
//!   candidate passed over is electable again after at most `failover::MAX_PROMOTION_BACKOFF`.
//! - A node refused for a diverged log stays out of automatic recovery for the life of this
//!   supervisor: merging it would lose or invent commits.
//! - The reports are bounded: the latest `HISTORY` of each kind.
//! - The durable history (`Persisted::events`, kept in the store) is bounded too: the latest
//!   `MAX_HISTORY_EVENTS`, oldest dropped first ([`push_event`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use protocol::operator::{HistoryEvent, HistoryKind, MAX_HISTORY_EVENTS};
use protocol::supervisor_status::{FailoverReport, RecoveryReport};

use crate::failover::{promotion_backoff, MAX_PROMOTION_FAILURES};

/// Recoveries and failovers remembered for `GET /status`.
pub const HISTORY: usize = 20;
/// Longest wait before a failed recovery is tried again.
pub const MAX_RECOVERY_BACKOFF: Duration = Duration::from_secs(10);
/// A member reported again within this long after a report that was refused is removed.
pub const REPORTED_AGAIN_WITHIN: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct History {
    pub failovers: VecDeque<FailoverReport>,
    pub recoveries: VecDeque<RecoveryReport>,
    pub recovering: BTreeSet<String>,
    /// Nodes refused for a diverged log: never recovered automatically.
    pub diverged: BTreeSet<String>,
    /// Nodes whose last recovery failed: not retried before the instant, and how many times
    /// in a row it failed (the pause doubles each time, up to `MAX_RECOVERY_BACKOFF`).
    retry_after: BTreeMap<String, (Instant, u32)>,
    /// Candidates that could not be fenced or promoted: how many times in a row, and until
    /// when they are passed over (from `MAX_PROMOTION_FAILURES` on, with a doubling backoff).
    failed_promotions: BTreeMap<String, (u32, Instant)>,
    /// Members the leader reported and the supervisor kept (it could reach them), and when.
    kept_after_report: BTreeMap<String, Instant>,
    /// Why no leader can be elected, while that lasts.
    pub no_leader: Option<String>,
}

/// How long after `failures` failed recoveries in a row the next one waits: 500 ms, doubling,
/// up to `MAX_RECOVERY_BACKOFF`.
pub fn recovery_backoff(failures: u32) -> Duration {
    (Duration::from_millis(250) * 2u32.saturating_pow(failures.min(8))).min(MAX_RECOVERY_BACKOFF)
}

fn push_bounded<T>(q: &mut VecDeque<T>, item: T) {
    q.push_back(item);
    while q.len() > HISTORY {
        q.pop_front();
    }
}

/// Appends `event` to the durable history, dropping the oldest beyond `MAX_HISTORY_EVENTS`.
pub fn push_event(events: &mut Vec<HistoryEvent>, event: HistoryEvent) {
    events.push(event);
    let excess = events.len().saturating_sub(MAX_HISTORY_EVENTS);
    events.drain(..excess);
}

/// The latest `limit` events, oldest first.
pub fn latest(events: &[HistoryEvent], limit: usize) -> &[HistoryEvent] {
    &events[events.len().saturating_sub(limit)..]
}

/// Whether a failed recovery of `node` goes into the durable history: only the first of a
/// streak (a node that keeps failing is retried every few seconds, and would otherwise push
/// everything else out of the history). Every success does.
pub fn worth_recording(events: &[HistoryEvent], node: &str, ok: bool) -> bool {
    ok || events
        .iter()
        .rev()
        .find(|e| e.kind == HistoryKind::Recovery && e.node.as_deref() == Some(node))
        .is_none_or(|last| last.ok)
}

impl History {
    /// Nodes `failover::decide` must not pick for recovery at `now`: under way, diverged, or
    /// backing off after a failure.
    pub fn not_to_recover(&self, now: Instant) -> Vec<String> {
        let backing_off = self.retry_after.iter().filter(|(_, (until, _))| *until > now).map(|(n, _)| n);
        self.recovering.iter().chain(&self.diverged).chain(backing_off).cloned().collect()
    }

    /// Candidates passed over at `now` after failed elections.
    pub fn unelectable(&self, now: Instant) -> Vec<String> {
        self.failed_promotions
            .iter()
            .filter(|(_, (failures, until))| *failures >= MAX_PROMOTION_FAILURES && *until > now)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Marks `node` as being recovered; false if it already is.
    pub fn begin_recovery(&mut self, node: &str) -> bool {
        self.recovering.insert(node.to_string())
    }

    /// A recovery of `node` in place (a member behind the leader) ended: nothing else to note.
    pub fn end_recovery_in_place(&mut self, node: &str) {
        self.recovering.remove(node);
    }

    /// A recovery ended: a diverged node is set aside for good, a failed one backs off, and
    /// the report is kept.
    pub fn recovery_finished(&mut self, report: RecoveryReport, diverged: bool, now: Instant) {
        let node = report.node.clone();
        self.recovering.remove(&node);
        if diverged {
            self.diverged.insert(node.clone());
        }
        if report.ok {
            self.retry_after.remove(&node);
        } else {
            let failures = self.retry_after.get(&node).map_or(0, |(_, n)| *n) + 1;
            self.retry_after.insert(node, (now + recovery_backoff(failures), failures));
        }
        push_bounded(&mut self.recoveries, report);
    }

    /// Counts a failed election of `candidate`; from `MAX_PROMOTION_FAILURES` on it is passed
    /// over for a doubling while.
    pub fn promotion_failed(&mut self, candidate: &str, now: Instant) {
        let entry = self.failed_promotions.entry(candidate.to_string()).or_insert((0, now));
        entry.0 += 1;
        entry.1 = now + promotion_backoff(entry.0);
    }

    /// A failover succeeded: every candidate is electable again.
    pub fn failover_done(&mut self, report: FailoverReport) {
        self.failed_promotions.clear();
        push_bounded(&mut self.failovers, report);
    }

    /// Whether `member` was reported and kept within `REPORTED_AGAIN_WITHIN` before `now`.
    pub fn reported_before(&self, member: &str, now: Instant) -> bool {
        self.kept_after_report.get(member).is_some_and(|at| now.saturating_duration_since(*at) < REPORTED_AGAIN_WITHIN)
    }

    /// The leader reported `member` and the supervisor kept it.
    pub fn kept_after_report(&mut self, member: &str, now: Instant) {
        self.kept_after_report.insert(member.to_string(), now);
    }

    /// `member` was removed after a report.
    pub fn removed_after_report(&mut self, member: &str) {
        self.kept_after_report.remove(member);
    }

    /// An operator rebuilt `node` (its database is empty now): its divergence and its backoff
    /// are forgotten, so that it is recovered at once.
    pub fn forget(&mut self, node: &str) {
        self.diverged.remove(node);
        self.retry_after.remove(node);
    }

    /// Records why no leader is possible (None: a leader is serving again). True when the
    /// reason is new, so that it is logged once, not on every poll.
    pub fn no_leader(&mut self, reason: Option<String>) -> bool {
        let changed = reason.is_some() && self.no_leader != reason;
        self.no_leader = reason;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recovery(node: &str, ok: bool) -> RecoveryReport {
        RecoveryReport { node: node.into(), ok, ..Default::default() }
    }

    #[test]
    fn a_failed_recovery_backs_off_doubling_and_bounded() {
        assert_eq!(recovery_backoff(1), Duration::from_millis(500));
        assert_eq!(recovery_backoff(2), Duration::from_secs(1));
        assert_eq!(recovery_backoff(50), MAX_RECOVERY_BACKOFF);

        let now = Instant::now();
        let mut history = History::default();
        assert!(history.begin_recovery("c:3"));
        assert!(!history.begin_recovery("c:3"), "one recovery of a node at a time");
        assert_eq!(history.not_to_recover(now), ["c:3"]);
        history.recovery_finished(recovery("c:3", false), false, now);
        assert_eq!(history.not_to_recover(now), ["c:3"], "backing off");
        assert!(history.not_to_recover(now + Duration::from_millis(501)).is_empty());
        history.begin_recovery("c:3");
        history.recovery_finished(recovery("c:3", true), false, now);
        assert!(history.not_to_recover(now).is_empty(), "a success ends the backoff");
        assert_eq!(history.recoveries.len(), 2);
    }

    #[test]
    fn a_diverged_node_is_never_recovered_again() {
        let now = Instant::now();
        let mut history = History::default();
        history.begin_recovery("b:2");
        history.recovery_finished(recovery("b:2", false), true, now);
        assert!(history.not_to_recover(now + Duration::from_secs(3600)).contains(&"b:2".to_string()));
        assert_eq!(history.diverged.iter().collect::<Vec<_>>(), ["b:2"]);
    }

    #[test]
    fn a_candidate_that_failed_twice_is_passed_over_until_its_backoff_ends() {
        let now = Instant::now();
        let mut history = History::default();
        history.promotion_failed("a:1", now);
        assert!(history.unelectable(now).is_empty(), "one failure is forgiven");
        history.promotion_failed("a:1", now);
        assert_eq!(history.unelectable(now), ["a:1"]);
        assert!(history.unelectable(now + Duration::from_secs(1)).is_empty());
        history.promotion_failed("a:1", now);
        history.failover_done(FailoverReport::default());
        assert!(history.unelectable(now).is_empty(), "a failover clears the failures");
    }

    #[test]
    fn reports_are_bounded_and_reports_of_a_member_expire() {
        let now = Instant::now();
        let mut history = History::default();
        for _ in 0..HISTORY + 5 {
            history.failover_done(FailoverReport::default());
        }
        assert_eq!(history.failovers.len(), HISTORY);
        history.kept_after_report("b:2", now);
        assert!(history.reported_before("b:2", now + Duration::from_secs(29)));
        assert!(!history.reported_before("b:2", now + REPORTED_AGAIN_WITHIN));
        history.removed_after_report("b:2");
        assert!(!history.reported_before("b:2", now));
    }

    fn event(kind: HistoryKind, node: &str, ok: bool) -> HistoryEvent {
        HistoryEvent { at_ms: 0, kind, node: Some(node.into()), term: 1, ok, message: String::new() }
    }

    #[test]
    fn the_durable_history_keeps_the_latest_events_oldest_first() {
        let mut events = vec![];
        for at_ms in 0..MAX_HISTORY_EVENTS as u64 + 7 {
            push_event(&mut events, HistoryEvent { at_ms, ..event(HistoryKind::Failover, "a:1", true) });
        }
        assert_eq!(events.len(), MAX_HISTORY_EVENTS);
        assert_eq!(events[0].at_ms, 7, "the oldest were dropped");
        let last = latest(&events, 3);
        assert_eq!(last.iter().map(|e| e.at_ms).collect::<Vec<_>>(), [1004, 1005, 1006]);
        assert_eq!(latest(&events[..2], 100).len(), 2);
    }

    #[test]
    fn a_streak_of_failed_recoveries_is_recorded_once() {
        let mut events = vec![event(HistoryKind::Recovery, "c:3", false)];
        assert!(!worth_recording(&events, "c:3", false), "the streak is already recorded");
        assert!(worth_recording(&events, "b:2", false), "another node");
        assert!(worth_recording(&events, "c:3", true), "a success always is");
        events.push(event(HistoryKind::Recovery, "c:3", true));
        assert!(worth_recording(&events, "c:3", false), "a new streak");
    }

    #[test]
    fn a_rebuilt_node_is_recovered_again_at_once() {
        let now = Instant::now();
        let mut history = History::default();
        history.begin_recovery("b:2");
        history.recovery_finished(recovery("b:2", false), true, now);
        history.forget("b:2");
        assert!(history.not_to_recover(now).is_empty());
        assert!(history.diverged.is_empty());
    }

    #[test]
    fn a_reason_for_no_leader_is_new_once() {
        let mut history = History::default();
        assert!(history.no_leader(Some("x".into())));
        assert!(!history.no_leader(Some("x".into())));
        assert!(!history.no_leader(None));
        assert!(history.no_leader(Some("x".into())));
    }
}
