//! The history of a run in the format of Jepsen's Elle: one JSON object per line, an `invoke`
//! when a client starts a transaction and an `ok`, `fail` or `info` when it ends:
//!
//! ```json
//! {"type":"invoke","f":"txn","process":3,"time":1520000,"index":7,"value":[["r",4,null],["r",9,null],["w",4,null],["w",9,null]]}
//! {"type":"ok","f":"txn","process":3,"time":9120000,"index":8,"value":[["r",4,1000],["r",9,980],["w",4,955],["w",9,1025]],"txn_id":"…","lsn":42,…}
//! ```
//!
//! `ok` is an acknowledged COMMIT (or a successful read-only transaction), `fail` a transaction
//! that certainly had no effect (an ABORT, or a read that no leader served, so nothing was
//! committed), `info` one whose outcome the client does not know (a timeout, a lost connection:
//! it may or may not have committed). Fields beyond Elle's (`txn_id`, `lsn`, `read_lsn`, …)
//! carry what the checker needs to match the history against the nodes' logs; Elle ignores them.

use std::fs::File;
use std::io::{BufRead, BufReader, LineWriter, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use protocol::{Account, Balance, Lsn, Timestamp};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// One micro-operation: `["r", account, balance or null]` or `["w", account, balance]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mop {
    Read(Account, Option<Balance>),
    /// The value is null only in an `invoke`, before the read that decides it.
    Write(Account, Option<Balance>),
}

impl Serialize for Mop {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Mop::Read(k, v) => ("r", k, v).serialize(s),
            Mop::Write(k, v) => ("w", k, v).serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Mop {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (f, k, v): (String, Account, Option<Balance>) = Deserialize::deserialize(d)?;
        match f.as_str() {
            "r" => Ok(Mop::Read(k, v)),
            "w" => Ok(Mop::Write(k, v)),
            other => Err(D::Error::custom(format!("unknown micro-operation {other:?} (expected \"r\" or \"w\")"))),
        }
    }
}

/// What kind of transaction a client ran (not an Elle field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnKind {
    /// The initial deposit: a blind write of every account.
    Init,
    /// Read two accounts on the leader, commit a transfer between them.
    Transfer,
    /// A read-only transaction, sent to any node (replicas included).
    ReadOnly,
    /// A transfer's `txn_id` that was already answered (200 COMMIT or 409 ABORT) sent again,
    /// with the same body, later (often after a failover): the answer must be the first one.
    /// Its value is empty (Elle sees a no-op); `retry_of` names the first answer.
    Retry,
    /// A transfer committed with a far-future `time_stamp` after a read on the leader: it must
    /// be refused (400 `bad_timestamp`), never acknowledged.
    FutureTs,
}

impl TxnKind {
    /// Whether the transaction was sent to `/commit/` (anything but a read-only one).
    pub fn is_commit(self) -> bool {
        !matches!(self, TxnKind::ReadOnly)
    }
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    #[serde(rename = "type")]
    pub kind: OpType,
    pub f: String,
    pub process: u64,
    /// Nanoseconds since the run started.
    pub time: u64,
    pub index: u64,
    pub value: Vec<Mop>,
    pub txn: TxnKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn_id: Option<Uuid>,
    /// The LSN and commit timestamp of an acknowledged commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<Lsn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_ts: Option<Timestamp>,
    /// What the read reported: the snapshot is the log up to `read_lsn`, its timestamp `read_ts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_lsn: Option<Lsn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_ts: Option<Timestamp>,
    /// The node that answered the read (its `node` field) and the role it answered in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Why a transaction failed or is indeterminate; the abort reason for an ABORT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The HTTP status of the answer the client kept (none: no answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// For a retry: the history index of the completion whose answer it repeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<u64>,
    /// The `time_stamp` sent with the commit when it is not the read's (a far-future one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_stamp: Option<Timestamp>,
}

impl Op {
    /// A new operation with no extra fields; `time` and `index` are set when it is recorded.
    pub fn new(kind: OpType, process: u64, txn: TxnKind, value: Vec<Mop>) -> Op {
        Op {
            kind,
            f: "txn".into(),
            process,
            time: 0,
            index: 0,
            value,
            txn,
            txn_id: None,
            lsn: None,
            commit_ts: None,
            read_lsn: None,
            read_ts: None,
            node: None,
            role: None,
            error: None,
            http_status: None,
            retry_of: None,
            time_stamp: None,
        }
    }

    /// The HTTP status of the answer: the field, else the `(HTTP 409)` an older history wrote
    /// into `error`.
    pub fn status(&self) -> Option<u16> {
        self.http_status.or_else(|| {
            let e = self.error.as_deref()?;
            let at = e.find("(HTTP ")? + "(HTTP ".len();
            e[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
        })
    }

    /// The reads of the value, with what they saw.
    pub fn reads(&self) -> impl Iterator<Item = (Account, Option<Balance>)> + '_ {
        self.value.iter().filter_map(|m| match *m {
            Mop::Read(k, v) => Some((k, v)),
            Mop::Write(..) => None,
        })
    }

    /// The writes of the value (those with a known value).
    pub fn writes(&self) -> impl Iterator<Item = (Account, Balance)> + '_ {
        self.value.iter().filter_map(|m| match *m {
            Mop::Write(k, Some(v)) => Some((k, v)),
            _ => None,
        })
    }
}

/// The history being recorded: written to its file line by line as it happens (a run that dies
/// leaves what it had), and kept in memory for the checker.
pub struct History {
    start: Instant,
    inner: Mutex<Inner>,
}

struct Inner {
    file: Option<LineWriter<File>>,
    next_index: u64,
    ops: Vec<Op>,
    write_error: Option<String>,
    /// The lowest LSN acknowledged (an `ok` with an `lsn`) since the last [`History::checkpoint`].
    acked_low: Option<Lsn>,
}

impl History {
    /// A history written to `path` (created or truncated), with times counted from `start`.
    pub fn create(path: &Path, start: Instant) -> std::io::Result<History> {
        let file = LineWriter::new(File::create(path)?);
        Ok(History {
            start,
            inner: Mutex::new(Inner {
                file: Some(file),
                next_index: 0,
                ops: Vec::new(),
                write_error: None,
                acked_low: None,
            }),
        })
    }

    /// Nanoseconds since the run started.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Records `op` now: sets its time and index, appends it to the file. Returns it as recorded.
    pub fn record(&self, mut op: Op) -> Op {
        let mut inner = self.inner.lock().unwrap();
        op.time = self.now();
        op.index = inner.next_index;
        inner.next_index += 1;
        let line = serde_json::to_string(&op).expect("an op serializes");
        if let Some(file) = inner.file.as_mut() {
            if let Err(e) = writeln!(file, "{line}") {
                inner.write_error = Some(e.to_string());
                inner.file = None;
            }
        }
        if let (OpType::Ok, Some(lsn)) = (op.kind, op.lsn) {
            inner.acked_low = Some(inner.acked_low.map_or(lsn, |l| l.min(lsn)));
        }
        inner.ops.push(op.clone());
        op
    }

    /// Now, and the lowest LSN acknowledged since the previous checkpoint (taken atomically:
    /// every acknowledgement recorded before the returned time is counted in it, or in an
    /// earlier checkpoint's). For the log snapshots taken during the run.
    pub fn checkpoint(&self) -> (u64, Option<Lsn>) {
        let mut inner = self.inner.lock().unwrap();
        (self.now(), inner.acked_low.take())
    }

    /// Everything recorded so far, in order.
    pub fn ops(&self) -> Vec<Op> {
        self.inner.lock().unwrap().ops.clone()
    }

    /// Flushes the file; the first write error, if any.
    pub fn finish(&self) -> Result<(), String> {
        let mut inner = self.inner.lock().unwrap();
        if let Some(file) = inner.file.as_mut() {
            if let Err(e) = file.flush() {
                inner.write_error.get_or_insert(e.to_string());
            }
        }
        match &inner.write_error {
            Some(e) => Err(format!("writing the history failed: {e}")),
            None => Ok(()),
        }
    }
}

/// Reads a history file back (for `torture check`).
pub fn read_history(path: &Path) -> anyhow::Result<Vec<Op>> {
    let file = File::open(path).map_err(|e| anyhow::anyhow!("open {}: {e}", path.display()))?;
    let mut ops = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let op: Op = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("{} line {}: not a history operation ({e}): {line}", path.display(), n + 1))?;
        ops.push(op);
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_op_is_an_elle_line() {
        let mut op = Op::new(OpType::Ok, 3, TxnKind::Transfer, vec![Mop::Read(4, Some(10)), Mop::Write(4, Some(5))]);
        op.lsn = Some(9);
        let line = serde_json::to_value(&op).unwrap();
        assert_eq!(line["type"], "ok");
        assert_eq!(line["f"], "txn");
        assert_eq!(line["value"], serde_json::json!([["r", 4, 10], ["w", 4, 5]]));
        assert_eq!(line["lsn"], 9);
        assert!(line.get("txn_id").is_none());
        let back: Op = serde_json::from_value(line).unwrap();
        assert_eq!(back, op);
    }

    #[test]
    fn an_unread_value_is_null() {
        let op = Op::new(OpType::Invoke, 0, TxnKind::ReadOnly, vec![Mop::Read(1, None)]);
        let line = serde_json::to_value(&op).unwrap();
        assert_eq!(line["value"], serde_json::json!([["r", 1, null]]));
    }

    #[test]
    fn the_status_comes_from_the_field_or_an_older_error_text() {
        let mut op = Op::new(OpType::Fail, 0, TxnKind::Transfer, vec![]);
        assert_eq!(op.status(), None);
        op.error = Some("stale_read (HTTP 409)".into());
        assert_eq!(op.status(), Some(409));
        op.http_status = Some(503);
        assert_eq!(op.status(), Some(503));
    }
}
