//! Timestamp-ordering validation on the leader: pure, no I/O.
//!
//! Invariants kept here:
//! - Every commit timestamp is greater than every commit timestamp assigned before it, and greater
//!   than every read timestamp handed out before it: a read timestamp is the highest *committed*
//!   timestamp at read time, and a new commit gets `max(now, last_assigned + 1)` where
//!   `last_assigned >= highest committed`.
//! - A transaction commits only if, for every account it read, the last committed write of that
//!   account is at or before its read timestamp and no transaction in flight writes it. Together
//!   with the first point this makes the history serializable in commit-timestamp order.
//! - No read timestamp above the highest timestamp handed out is accepted ([`Validator::check_read_ts`]):
//!   such a timestamp was never returned by a read, and it would pass every `updated_at <= rts`
//!   check, hiding a stale read (write skew from one buggy or hostile client).
//! - Write locks are counted, not owned: blind writes to the same account by two in-flight
//!   transactions are ordered by their LSNs, and both are applied in that order.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use protocol::{AbortReason, Account, Balance, Timestamp};

/// Why validation refused a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflict {
    pub reason: AbortReason,
    pub key: Account,
}

/// The leader's in-memory view of what timestamp ordering needs: committed write timestamps,
/// in-flight write locks and the clock.
#[derive(Debug, Default)]
pub struct Validator {
    /// `updated_at` of every account as committed (the commit timestamp of its last write).
    last_write: HashMap<Account, Timestamp>,
    /// How many validated, unfinished transactions write each account.
    locks: HashMap<Account, u32>,
    /// Highest commit timestamp assigned so far (committed or in flight).
    last_assigned: Timestamp,
}

/// The next commit timestamp of a hybrid logical clock: wall-clock time when it is ahead,
/// otherwise one more than the last one, so timestamps never go backwards with the clock.
pub fn next_timestamp(now: Timestamp, last: Timestamp) -> Timestamp {
    now.max(last.saturating_add(1))
}

impl Validator {
    /// A validator for a leader whose committed state has these write timestamps and whose
    /// highest committed timestamp is `highest_committed`.
    pub fn new(last_write: HashMap<Account, Timestamp>, highest_committed: Timestamp) -> Self {
        Validator { last_write, locks: HashMap::new(), last_assigned: highest_committed }
    }

    /// Validates a transaction that read `read_set` at `read_ts` and writes `write_set`. On
    /// success the write set is locked and the commit timestamp returned; the caller must call
    /// [`Validator::finish`] exactly once afterwards.
    pub fn admit(
        &mut self,
        read_set: &BTreeSet<Account>,
        read_ts: Option<Timestamp>,
        write_set: &BTreeMap<Account, Balance>,
        now: Timestamp,
    ) -> Result<Timestamp, Conflict> {
        let read_ts = read_ts.unwrap_or(Timestamp::MIN);
        for &key in read_set {
            if self.locks.contains_key(&key) {
                return Err(Conflict { reason: AbortReason::KeyLocked, key });
            }
            if self.last_write.get(&key).is_some_and(|&written| written > read_ts) {
                return Err(Conflict { reason: AbortReason::StaleRead, key });
            }
        }
        let commit_ts = next_timestamp(now, self.last_assigned);
        self.last_assigned = commit_ts;
        for &key in write_set.keys() {
            *self.locks.entry(key).or_insert(0) += 1;
        }
        Ok(commit_ts)
    }

    /// Refuses a read timestamp that no read can have returned: above the highest timestamp
    /// assigned (every read timestamp is a committed, hence assigned, timestamp). Returns the
    /// bound in the error.
    pub fn check_read_ts(&self, read_ts: Option<Timestamp>) -> Result<(), Timestamp> {
        match read_ts {
            Some(ts) if ts > self.last_assigned => Err(self.last_assigned),
            _ => Ok(()),
        }
    }

    /// A timestamp for a log entry that records an abort: it takes its place in the clock's
    /// order (a read after it returns it) but locks and writes nothing.
    pub fn stamp(&mut self, now: Timestamp) -> Timestamp {
        self.last_assigned = next_timestamp(now, self.last_assigned);
        self.last_assigned
    }

    /// Releases the locks of an admitted transaction; `committed_at` records its writes.
    pub fn finish(&mut self, write_set: &BTreeMap<Account, Balance>, committed_at: Option<Timestamp>) {
        for &key in write_set.keys() {
            if let Some(count) = self.locks.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    self.locks.remove(&key);
                }
            }
            if let Some(ts) = committed_at {
                let slot = self.last_write.entry(key).or_insert(ts);
                *slot = (*slot).max(ts);
            }
        }
    }

    /// The first of `keys` that an in-flight transaction writes, if any.
    pub fn first_locked<'a>(&self, keys: impl IntoIterator<Item = &'a Account>) -> Option<Account> {
        keys.into_iter().find(|k| self.locks.contains_key(k)).copied()
    }

    pub fn in_flight_locks(&self) -> usize {
        self.locks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(keys: &[Account]) -> BTreeSet<Account> {
        keys.iter().copied().collect()
    }
    fn writes(pairs: &[(Account, Balance)]) -> BTreeMap<Account, Balance> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn a_read_at_or_after_the_last_write_commits() {
        let mut v = Validator::new(HashMap::from([(1, 100)]), 100);
        assert!(v.admit(&set(&[1]), Some(100), &writes(&[(2, 5)]), 50).is_ok());
    }

    #[test]
    fn a_read_before_the_last_write_aborts_naming_the_key() {
        let mut v = Validator::new(HashMap::from([(1, 100), (2, 300)]), 300);
        let err = v.admit(&set(&[1, 2]), Some(200), &writes(&[]), 0).unwrap_err();
        assert_eq!(err, Conflict { reason: AbortReason::StaleRead, key: 2 });
    }

    #[test]
    fn reading_a_key_written_in_flight_aborts_until_it_finishes() {
        let mut v = Validator::new(HashMap::new(), 0);
        let w = writes(&[(7, 1)]);
        let ts = v.admit(&set(&[]), None, &w, 10).unwrap();
        let err = v.admit(&set(&[7]), Some(5), &writes(&[]), 11).unwrap_err();
        assert_eq!(err, Conflict { reason: AbortReason::KeyLocked, key: 7 });
        v.finish(&w, Some(ts));
        // Committed after the read timestamp: now a stale read.
        let err = v.admit(&set(&[7]), Some(5), &writes(&[]), 12).unwrap_err();
        assert_eq!(err.reason, AbortReason::StaleRead);
        // A fresh read succeeds.
        assert!(v.admit(&set(&[7]), Some(ts), &writes(&[]), 12).is_ok());
    }

    #[test]
    fn an_aborted_writer_leaves_no_trace() {
        let mut v = Validator::new(HashMap::new(), 0);
        let w = writes(&[(7, 1)]);
        v.admit(&set(&[]), None, &w, 10).unwrap();
        v.finish(&w, None);
        assert!(v.admit(&set(&[7]), Some(0), &writes(&[]), 11).is_ok());
        assert_eq!(v.in_flight_locks(), 0);
    }

    #[test]
    fn blind_writes_to_one_key_count_their_locks() {
        let mut v = Validator::new(HashMap::new(), 0);
        let w = writes(&[(1, 1)]);
        v.admit(&set(&[]), None, &w, 1).unwrap();
        v.admit(&set(&[]), None, &w, 1).unwrap();
        v.finish(&w, Some(1));
        assert_eq!(v.first_locked(&[1]), Some(1));
        v.finish(&w, Some(2));
        assert_eq!(v.first_locked(&[1]), None);
    }

    #[test]
    fn commit_timestamps_increase_even_when_the_clock_goes_back() {
        let mut v = Validator::new(HashMap::new(), 1_000);
        let a = v.admit(&set(&[]), None, &writes(&[(1, 1)]), 5).unwrap();
        let b = v.admit(&set(&[]), None, &writes(&[(2, 1)]), 3).unwrap();
        let c = v.admit(&set(&[]), None, &writes(&[(3, 1)]), 2_000).unwrap();
        assert_eq!((a, b, c), (1_001, 1_002, 2_000));
    }

    #[test]
    fn a_read_timestamp_from_the_future_is_refused() {
        let mut v = Validator::new(HashMap::from([(1, 100)]), 100);
        assert_eq!(v.check_read_ts(Some(100)), Ok(()));
        assert_eq!(v.check_read_ts(None), Ok(()));
        assert_eq!(v.check_read_ts(Some(9_000_000_000_000_000_000)), Err(100));
        // Timestamps assigned in flight count as handed out (a replica may answer a read at
        // one before the leader committed it).
        let ts = v.admit(&set(&[]), None, &writes(&[(2, 1)]), 500).unwrap();
        assert_eq!(v.check_read_ts(Some(ts)), Ok(()));
        assert!(v.stamp(0) > ts);
    }

    #[test]
    fn commit_timestamps_exceed_every_read_timestamp_handed_out() {
        // A read timestamp is the highest committed timestamp; the leader starts from it.
        let highest_committed = 9_999;
        let mut v = Validator::new(HashMap::new(), highest_committed);
        let ts = v.admit(&set(&[]), None, &writes(&[(1, 1)]), 0).unwrap();
        assert!(ts > highest_committed);
    }
}
