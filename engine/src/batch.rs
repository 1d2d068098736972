//! A batch: the unit of replication. One round of the leader carries one batch, a run of log
//! entries with consecutive LSNs, prepared on every member as one PostgreSQL transaction and
//! decided as one.

use protocol::{Lsn, PendingInfo, Term, Timestamp};
use uuid::Uuid;

/// Identifies one round of the leader: later rounds compare greater.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoundId {
    pub term: Term,
    pub round: u64,
}

/// Where a node's log ends: what elections compare and what reads report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogEnd {
    pub lsn: Lsn,
    pub commit_ts: Timestamp,
    pub term: Term,
}

/// A batch a member holds (or is about to hold) prepared in PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub id: RoundId,
    pub last_lsn: Lsn,
    /// Transaction id of the batch's last entry: names the batch across restarts.
    pub last_txn: Uuid,
    /// What this process knows because it prepared the batch itself (nothing after a restart).
    pub detail: Option<PreparedHere>,
}

/// Details of a batch this process prepared itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedHere {
    /// The commit timestamp of the batch's last entry: saves re-reading it after COMMIT PREPARED.
    pub last_commit_ts: Timestamp,
    /// Every entry's LSN and transaction id, so that the decision can be logged per transaction.
    pub txns: Vec<(Lsn, Uuid)>,
}

impl Batch {
    /// The batch a [`PendingInfo`] names (its round is not part of its identity).
    pub fn from_info(info: &PendingInfo) -> Batch {
        Batch {
            id: RoundId { term: info.term, round: 0 },
            last_lsn: info.last_lsn,
            last_txn: info.last_txn,
            detail: None,
        }
    }

    pub fn info(&self) -> PendingInfo {
        PendingInfo { last_lsn: self.last_lsn, last_txn: self.last_txn, term: self.id.term }
    }

    /// Whether `other` names the same batch (the round and the details are not its identity).
    pub fn same(&self, last_lsn: Lsn, last_txn: Uuid) -> bool {
        self.last_lsn == last_lsn && self.last_txn == last_txn
    }

    /// The PostgreSQL global transaction id: `rmw-<last lsn>-<term>-<last txn id>`. It is made
    /// of numbers and a UUID only, so it can be written into SQL text without quoting issues.
    pub fn gid(&self) -> String {
        format!("rmw-{}-{}-{}", self.last_lsn, self.id.term, self.last_txn)
    }

    /// Parses a gid made by [`Batch::gid`]; the round is unknown after a restart (0).
    pub fn from_gid(gid: &str) -> Option<Batch> {
        let rest = gid.strip_prefix("rmw-")?;
        let mut parts = rest.splitn(3, '-');
        let last_lsn = parts.next()?.parse().ok()?;
        let term = parts.next()?.parse().ok()?;
        let last_txn = parts.next()?.parse().ok()?;
        Some(Batch { id: RoundId { term, round: 0 }, last_lsn, last_txn, detail: None })
    }

    /// Where the log ends once this batch is committed, if this process knows its timestamp.
    pub fn end(&self) -> Option<LogEnd> {
        self.detail.as_ref().map(|d| LogEnd { lsn: self.last_lsn, commit_ts: d.last_commit_ts, term: self.id.term })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gid_round_trips() {
        let b = Batch { id: RoundId { term: 3, round: 0 }, last_lsn: 42, last_txn: Uuid::from_u128(7), detail: None };
        assert_eq!(Batch::from_gid(&b.gid()), Some(b));
        assert_eq!(Batch::from_gid("other-1"), None);
        assert_eq!(Batch::from_gid("rmw-1-2-not-a-uuid"), None);
    }
}
