//! In-doubt resolution: what to do with a batch that some member holds prepared when its
//! leader is gone or restarted. Pure.
//!
//! - any member COMMITTED it: commit everywhere;
//! - any live member never prepared it, or rolled it back: abort everywhere;
//! - every live member holds it PREPARED: commit (presumed commit: the old leader could only
//!   have stopped after everyone voted YES, and no client was answered yet);
//! - batches are resolved in LSN order, and an aborted batch aborts every later batch of its
//!   term: within one leader's pipeline a batch follows the one before it, and can never
//!   commit without it.

use protocol::{BatchState, Lsn, PendingInfo, Term};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Commit,
    Abort,
}

/// `states` holds the answer of every live member of the batch's configuration (the asking
/// node included); unreachable members are left out, and so are those whose log no longer
/// reaches the batch (`Trimmed`, which says nothing of it: with `--retain-log` at or above its
/// floor no member's log is trimmed that close to a batch still in doubt).
pub fn resolve(states: &[BatchState]) -> Resolution {
    if states.contains(&BatchState::Committed) {
        Resolution::Commit
    } else if states.contains(&BatchState::Absent) {
        Resolution::Abort
    } else {
        Resolution::Commit
    }
}

/// Resolves several in-doubt batches: `batches` holds each batch with the answers of the live
/// members; the result is in LSN order.
pub fn resolve_in_order(mut batches: Vec<(PendingInfo, Vec<BatchState>)>) -> Vec<(PendingInfo, Resolution)> {
    batches.sort_by_key(|(b, _)| b.last_lsn);
    let mut aborted_terms: Vec<Term> = Vec::new();
    batches
        .into_iter()
        .map(|(batch, states)| {
            let resolution = if aborted_terms.contains(&batch.term) { Resolution::Abort } else { resolve(&states) };
            if resolution == Resolution::Abort {
                aborted_terms.push(batch.term);
            }
            (batch, resolution)
        })
        .collect()
}

/// The highest LSN that at least `min_copies` nodes hold, given where each node's log ends (the
/// new leader's included). Every member's log is a dense prefix of the leader's, so a node whose
/// log ends at or after an LSN holds it. A new leader answers a retried transaction COMMIT only
/// up to here: beyond it, an entry it resolved from the old leader's last batch may be on fewer
/// copies than promised.
pub fn held_by(ends: &[Lsn], min_copies: usize) -> Lsn {
    let mut ends = ends.to_vec();
    ends.sort_unstable_by(|a, b| b.cmp(a));
    ends.get(min_copies.max(1) - 1).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use BatchState::*;

    #[test]
    fn an_lsn_is_held_when_enough_logs_reach_it() {
        assert_eq!(held_by(&[12, 12, 10], 2), 12, "the leader and a replica resolved the batch");
        assert_eq!(held_by(&[12, 10, 10], 2), 10, "only the leader committed it");
        assert_eq!(held_by(&[12, 10], 3), 0, "fewer nodes answered than the floor asks");
        assert_eq!(held_by(&[12], 1), 12);
        assert_eq!(held_by(&[12, 9], 0), 12, "a floor of 0 counts as 1");
    }

    #[test]
    fn the_three_rules() {
        assert_eq!(resolve(&[Prepared, Committed, Absent]), Resolution::Commit);
        assert_eq!(resolve(&[Prepared, Absent]), Resolution::Abort);
        assert_eq!(resolve(&[Prepared, Prepared, Prepared]), Resolution::Commit);
        assert_eq!(resolve(&[Prepared]), Resolution::Commit);
    }

    #[test]
    fn a_trimmed_log_is_no_answer() {
        assert_eq!(resolve(&[Prepared, Trimmed]), Resolution::Commit, "as if that member were unreachable");
        assert_eq!(resolve(&[Prepared, Trimmed, Absent]), Resolution::Abort);
        assert_eq!(resolve(&[Prepared, Trimmed, Committed]), Resolution::Commit);
    }

    #[test]
    fn an_aborted_batch_aborts_the_rest_of_its_pipeline() {
        let batch = |last_lsn, term| PendingInfo { last_lsn, last_txn: uuid::Uuid::from_u128(last_lsn as u128), term };
        let resolved = resolve_in_order(vec![
            (batch(14, 2), vec![Prepared, Prepared]),
            (batch(12, 2), vec![Prepared, Absent]),
            (batch(16, 3), vec![Prepared, Prepared]),
        ]);
        let order: Vec<_> = resolved.iter().map(|(b, r)| (b.last_lsn, *r)).collect();
        assert_eq!(order, [(12, Resolution::Abort), (14, Resolution::Abort), (16, Resolution::Commit)]);
    }
}
