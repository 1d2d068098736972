//! In-doubt resolution (DESIGN 5): what to do with a batch that some member holds prepared
//! when its leader is gone or restarted. Pure.
//!
//! - any member COMMITTED it: commit everywhere;
//! - any live member never prepared it, or rolled it back: abort everywhere;
//! - every live member holds it PREPARED: commit (presumed commit: the old leader could only
//!   have stopped after everyone voted YES, and no client was answered yet).

use protocol::BatchState;

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
}
