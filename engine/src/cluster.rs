//! Which cluster a database belongs to. A database keeps the first cluster id it stores: when
//! it bootstraps a new cluster as its first leader, or once it holds a cluster's log up to the
//! point it was asked to follow. A wiped database has none; another cluster's never joins.

use protocol::Lsn;
use uuid::Uuid;

/// How a member's cluster id relates to the one a leader or the supervisor names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// Same cluster, or no id named (a cluster made before ids existed).
    Same,
    /// This database has no id yet (new or wiped): it takes this one once it holds the
    /// cluster's log up to the point it was asked to follow.
    Adopt(Uuid),
    /// This database belongs to another cluster: it never votes YES, never recovers, never
    /// leads here.
    Foreign { ours: Uuid, theirs: Uuid },
}

/// The rule behind [`Membership`]. `empty`: this database holds no log entry and no prepared
/// batch. An id protects data: an empty database has none to mix up, so it takes the cluster's
/// id even if it took another one before (a first leader that started so late that the
/// cluster had elected another, and made an id of its own meanwhile).
pub fn membership(ours: Option<Uuid>, theirs: Option<Uuid>, empty: bool) -> Membership {
    match (ours, theirs) {
        (_, None) => Membership::Same,
        (None, Some(theirs)) => Membership::Adopt(theirs),
        (Some(ours), Some(theirs)) if ours == theirs => Membership::Same,
        (Some(_), Some(theirs)) if empty => Membership::Adopt(theirs),
        (Some(ours), Some(theirs)) => Membership::Foreign { ours, theirs },
    }
}

/// Why a database refuses a new cluster's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BirthRefusal {
    OtherCluster { ours: Uuid, offered: Uuid },
    HasLog { applied_lsn: Lsn },
}

impl std::fmt::Display for BirthRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BirthRefusal::OtherCluster { ours, offered } => {
                write!(f, "this database belongs to cluster {ours}, not {offered}")
            }
            BirthRefusal::HasLog { applied_lsn } => write!(
                f,
                "this database has a log (LSN {applied_lsn}) but no cluster id: it joins through a round or a recovery"
            ),
        }
    }
}

/// Whether a member takes the id a new cluster's first leader offers (`POST /internal/cluster_id`):
/// only an empty database. One with a log, or a prepared batch,
/// joins through a round or a recovery, which check that it holds the cluster's log; one of
/// another cluster never does. Ok(true): take it; Ok(false): already the same.
pub fn birth_check(ours: Option<Uuid>, applied_lsn: Lsn, pending: bool, offered: Uuid) -> Result<bool, BirthRefusal> {
    let empty = applied_lsn == 0 && !pending;
    match ours {
        Some(id) if id == offered => Ok(false),
        // An empty database has no data to mix up (see `membership`).
        Some(_) if empty => Ok(true),
        Some(ours) => Err(BirthRefusal::OtherCluster { ours, offered }),
        None if !empty => Err(BirthRefusal::HasLog { applied_lsn }),
        None => Ok(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Found by the failover benchmark with etcd: the first leader of a new cluster failed
    // before its first commit, and no replica could be elected (none carried the cluster's id,
    // so each counted as another cluster's). The first leader now gives the id at once; only an
    // empty database takes it.
    #[test]
    fn only_an_empty_database_takes_a_new_clusters_id() {
        let (new, other) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(birth_check(None, 0, false, new), Ok(true));
        assert_eq!(birth_check(Some(new), 0, false, new), Ok(false), "already taken: nothing to do");
        assert_eq!(birth_check(Some(other), 0, false, new), Ok(true), "an empty database has nothing to mix up");
        assert_eq!(
            birth_check(Some(other), 3, false, new),
            Err(BirthRefusal::OtherCluster { ours: other, offered: new })
        );
        // A log or a prepared batch joins through a round or a recovery, which check the log.
        assert!(birth_check(None, 7, false, new).is_err());
        assert!(birth_check(None, 0, true, new).is_err());
    }

    // Finding 3: a wiped database takes the cluster's id only by catching up; another
    // cluster's database never joins.
    #[test]
    fn cluster_ids_are_adopted_once_and_never_mixed() {
        let (a, b) = (Uuid::from_u128(100), Uuid::from_u128(200));
        assert_eq!(membership(Some(a), Some(a), false), Membership::Same);
        assert_eq!(membership(None, Some(a), false), Membership::Adopt(a));
        assert_eq!(membership(Some(a), Some(b), false), Membership::Foreign { ours: a, theirs: b });
        assert_eq!(membership(Some(a), None, false), Membership::Same);
        assert_eq!(membership(None, None, false), Membership::Same);
    }

    // Found by the benchmark at start-up: the named first leader started late, the supervisor
    // elected another node meanwhile (which made the cluster's id), and the late leader made an
    // id of its own before it learned of the newer term. Its database was empty: it must join,
    // not count as another cluster's forever.
    #[test]
    fn an_empty_database_takes_the_cluster_id_whatever_it_took_before() {
        let (mine, cluster) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(membership(Some(mine), Some(cluster), true), Membership::Adopt(cluster));
        assert_eq!(membership(Some(cluster), Some(cluster), true), Membership::Same);
    }
}
