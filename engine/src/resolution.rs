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

use protocol::{BatchState, PendingInfo, Term};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Commit,
    Abort,
}

/// `states` holds the answer of every live member of the batch's configuration (the asking
/// node included); unreachable members are left out.
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

#[cfg(test)]
mod tests {
    use super::*;
    use BatchState::*;

    #[test]
    fn the_three_rules() {
        assert_eq!(resolve(&[Prepared, Committed, Absent]), Resolution::Commit);
        assert_eq!(resolve(&[Prepared, Absent]), Resolution::Abort);
        assert_eq!(resolve(&[Prepared, Prepared, Prepared]), Resolution::Commit);
        assert_eq!(resolve(&[Prepared]), Resolution::Commit);
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
