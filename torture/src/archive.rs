//! Every node's recovery log as it grows, kept by the harness while the run goes on.
//!
//! With `--retain-log` the nodes trim their logs, and a node rebuilt from a snapshot holds only
//! the log after it: at the end no node may hold the whole history the checker needs (the sum
//! of balances along the log, every read against the log before it, every acknowledged commit
//! in place). So the harness pages through each node's log every few hundred milliseconds and
//! keeps the union, one entry per LSN. Two different entries at one LSN (from two nodes, or
//! from one node before and after a rebuild) are a divergence, kept for the checker.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::Cluster;
use protocol::Lsn;
use serde::{Deserialize, Serialize};

use crate::checker::Entry;

/// How often each node's log is read.
const EVERY: Duration = Duration::from_millis(300);

/// The union of the nodes' logs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Archive {
    /// One entry per LSN, as the first node that served it gave it.
    pub entries: BTreeMap<Lsn, Entry>,
    /// Two different entries at one LSN: what the checker reports as `divergent_lsn`.
    pub conflicts: Vec<String>,
    /// Per node, the last LSN read from it.
    #[serde(default)]
    cursors: Vec<Lsn>,
}

impl Archive {
    pub fn new(nodes: usize) -> Archive {
        Archive { cursors: vec![0; nodes], ..Archive::default() }
    }

    /// Where reading `node`'s log goes on from.
    pub fn cursor(&self, node: usize) -> Lsn {
        self.cursors.get(node).copied().unwrap_or(0)
    }

    /// Adds entries read from `node`'s log (pure).
    pub fn add(&mut self, node: usize, entries: &[Entry]) {
        for e in entries {
            match self.entries.get(&e.lsn) {
                Some(kept) if kept != e => {
                    if self.conflicts.len() < 100 {
                        self.conflicts.push(format!(
                            "two entries at lsn {}: {:?} (kept first) and {:?} (read from node {node})",
                            e.lsn, kept, e
                        ));
                    }
                }
                Some(_) => {}
                None => {
                    self.entries.insert(e.lsn, e.clone());
                }
            }
        }
        if let (Some(last), Some(cursor)) = (entries.last(), self.cursors.get_mut(node)) {
            *cursor = (*cursor).max(last.lsn);
        }
    }

    /// The entries from LSN 1 on, as long as they are dense; and the first LSN missing before
    /// the last one kept, if any.
    pub fn dense_prefix(&self) -> (Vec<Entry>, Option<Lsn>) {
        let mut out = Vec::with_capacity(self.entries.len());
        for (i, (&lsn, e)) in self.entries.iter().enumerate() {
            if lsn != i as Lsn + 1 {
                return (out, Some(i as Lsn + 1));
            }
            out.push(e.clone());
        }
        (out, None)
    }
}

/// Reads every node's new entries every [`EVERY`] until `stop`; a node that cannot be read is
/// read again next time.
pub async fn keep(c: Arc<Cluster>, archive: Arc<Mutex<Archive>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        read_all(&c, &archive).await;
        tokio::time::sleep(EVERY).await;
    }
}

/// One pass over every node (also the last one, after the run).
pub async fn read_all(c: &Cluster, archive: &Mutex<Archive>) {
    for i in 0..c.len() {
        let after = archive.lock().unwrap().cursor(i);
        if let Ok(entries) = crate::logs::fetch(c, i, after).await {
            archive.lock().unwrap().add(i, &entries);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(lsn: Lsn, txn: u128) -> Entry {
        Entry {
            lsn,
            term: 1,
            txn_id: uuid::Uuid::from_u128(txn),
            commit_ts: lsn * 10,
            read_set: vec![],
            write_set: BTreeMap::new(),
            aborted: None,
        }
    }

    #[test]
    fn the_union_of_the_logs_is_kept_and_a_second_entry_at_an_lsn_is_a_conflict() {
        let mut a = Archive::new(2);
        a.add(0, &[entry(1, 1), entry(2, 2)]);
        a.add(1, &[entry(2, 2), entry(3, 3)]);
        assert_eq!((a.cursor(0), a.cursor(1)), (2, 3));
        let (dense, gap) = a.dense_prefix();
        assert_eq!((dense.len(), gap), (3, None));
        assert!(a.conflicts.is_empty());
        a.add(0, &[entry(3, 99)]);
        assert_eq!(a.conflicts.len(), 1, "{:?}", a.conflicts);
        assert_eq!(a.entries[&3].txn_id, uuid::Uuid::from_u128(3), "the first one is kept");
    }

    #[test]
    fn a_hole_ends_the_dense_prefix() {
        let mut a = Archive::new(1);
        a.add(0, &[entry(1, 1), entry(2, 2), entry(5, 5)]);
        let (dense, gap) = a.dense_prefix();
        assert_eq!((dense.len(), gap), (2, Some(3)));
    }
}
