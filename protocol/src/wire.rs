//! JSON bodies of every HTTP endpoint, user-facing and internal.
//!
//! User-facing request bodies are the original system's, unchanged
//! (`{"transaction": {"read_set": [1], "write_set": {"2": 22}, "time_stamp": 17}}`); responses keep
//! the original's keys and add what a user needs. Internal messages always carry the sender's term.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An account number. Always non-negative.
pub type Account = i64;
/// A balance. May be negative.
pub type Balance = i64;
/// A commit or read timestamp: nanoseconds since the Unix epoch on the leader's hybrid logical clock.
pub type Timestamp = i64;
/// A position in the recovery log. The first entry is 1; 0 means "nothing applied".
pub type Lsn = i64;
/// A leadership term. Messages from a lower term are rejected.
pub type Term = i64;

/// Largest request body an agent accepts, in bytes. Far above any sensible transaction, small
/// enough that a hostile client cannot make an agent buffer much.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest read set or write set of one transaction. Bounds the time a commit holds its locks.
pub const MAX_SET_LEN: usize = 1_000;
/// Largest page of `GET /replication_log/`.
pub const MAX_LOG_PAGE: i64 = 10_000;
/// Default page of `GET /replication_log/`.
pub const DEFAULT_LOG_PAGE: i64 = 1_000;

/// The `transaction` object of `/read/` and `/commit/` as it arrives on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TransactionBody {
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::accounts))]
    pub read_set: Vec<Account>,
    /// JSON object keys are strings; serde parses them into [`Account`] here, at the edge. A key
    /// given twice (`{"1": 1, "1": 2}`, or `"1"` and `"01"`) is refused, not silently resolved.
    #[serde(default, deserialize_with = "unique_accounts")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::account_map))]
    pub write_set: BTreeMap<Account, Balance>,
    /// The read timestamp (`timestamp` of the read answer). Required when `read_set` is not empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<i64>))]
    pub time_stamp: Option<Timestamp>,
    /// Makes a commit idempotent: committing the same id again returns the first outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn_id: Option<Uuid>,
}

/// `POST /read/`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReadRequest {
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::read_transaction))]
    pub transaction: TransactionBody,
    /// On a replica: wait (bounded) until the replica has applied at least this LSN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<i64>, minimum = 0))]
    pub min_lsn: Option<Lsn>,
    /// Read the accounts as they were right after this LSN (a past state, from the node's
    /// snapshot base plus its log): 410 `log_trimmed` with the horizon when the node's log no
    /// longer reaches it; a node that has not applied it yet waits for it like `min_lsn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<i64>, minimum = 0))]
    pub as_of_lsn: Option<Lsn>,
}

/// `POST /commit/`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CommitRequest {
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::commit_transaction))]
    pub transaction: TransactionBody,
    /// This commit's own durability floor: acknowledge it only once at least this many nodes
    /// hold it (the cluster's `--min-copies` applies when it is higher or this is absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 16))]
    pub min_copies: Option<u32>,
}

/// Largest `min_copies` a commit may ask for: more nodes than any cluster of ours has.
pub const MAX_MIN_COPIES: u32 = 16;

/// Deserializes a write set, refusing an account given twice: JSON allows duplicate keys and
/// serde would keep the last one silently, so a client's typo would write a value it did not
/// mean.
fn unique_accounts<'de, D>(deserializer: D) -> Result<BTreeMap<Account, Balance>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = BTreeMap<Account, Balance>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object of account numbers (as strings) to balances")
        }
        fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
            let mut out = BTreeMap::new();
            while let Some((account, balance)) = map.next_entry::<Account, Balance>()? {
                if out.insert(account, balance).is_some() {
                    return Err(serde::de::Error::custom(format!(
                        "account {account} appears twice in write_set; give each account once"
                    )));
                }
            }
            Ok(out)
        }
    }
    deserializer.deserialize_map(Visitor)
}

/// Why a request body was refused (HTTP 400). The message is for a human.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidTransaction(pub String);

/// A read request after validation: a non-empty set of valid accounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidRead {
    pub accounts: BTreeSet<Account>,
    pub min_lsn: Option<Lsn>,
    pub as_of_lsn: Option<Lsn>,
}

/// A commit request after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidCommit {
    pub read_set: BTreeSet<Account>,
    pub write_set: BTreeMap<Account, Balance>,
    /// Present whenever `read_set` is not empty.
    pub read_ts: Option<Timestamp>,
    pub txn_id: Option<Uuid>,
    /// The commit's own durability floor, if it asked for one (1..=[`MAX_MIN_COPIES`]).
    pub min_copies: Option<usize>,
}

/// The first account that appears twice in `accounts`, if any.
fn first_duplicate(accounts: &[Account]) -> Option<Account> {
    let mut seen = BTreeSet::new();
    accounts.iter().copied().find(|a| !seen.insert(*a))
}

fn check_accounts<'a>(
    what: &str,
    accounts: impl ExactSizeIterator<Item = &'a Account>,
) -> Result<(), InvalidTransaction> {
    if accounts.len() > MAX_SET_LEN {
        return Err(InvalidTransaction(format!(
            "{what} has {} accounts; at most {MAX_SET_LEN} are allowed",
            accounts.len()
        )));
    }
    for &account in accounts {
        if account < 0 {
            return Err(InvalidTransaction(format!(
                "account {account} in {what} is negative; account numbers are 0 or more"
            )));
        }
    }
    Ok(())
}

impl ReadRequest {
    pub fn validate(self) -> Result<ValidRead, InvalidTransaction> {
        let t = self.transaction;
        if !t.write_set.is_empty() {
            return Err(InvalidTransaction("a read takes no write_set; send writes to /commit/".into()));
        }
        if t.read_set.is_empty() {
            return Err(InvalidTransaction("read_set is empty: name at least one account to read".into()));
        }
        check_accounts("read_set", t.read_set.iter())?;
        if let Some(account) = first_duplicate(&t.read_set) {
            return Err(InvalidTransaction(format!(
                "account {account} appears twice in read_set; give each account once"
            )));
        }
        if let Some(lsn) = self.min_lsn {
            if lsn < 0 {
                return Err(InvalidTransaction(format!("min_lsn {lsn} is negative")));
            }
        }
        if let Some(lsn) = self.as_of_lsn {
            if lsn < 0 {
                return Err(InvalidTransaction(format!("as_of_lsn {lsn} is negative")));
            }
        }
        Ok(ValidRead { accounts: t.read_set.into_iter().collect(), min_lsn: self.min_lsn, as_of_lsn: self.as_of_lsn })
    }
}

impl CommitRequest {
    pub fn validate(self) -> Result<ValidCommit, InvalidTransaction> {
        let t = self.transaction;
        if t.read_set.is_empty() && t.write_set.is_empty() {
            return Err(InvalidTransaction("the transaction is empty: give a read_set, a write_set or both".into()));
        }
        check_accounts("read_set", t.read_set.iter())?;
        check_accounts("write_set", t.write_set.keys())?;
        if let Some(account) = first_duplicate(&t.read_set) {
            return Err(InvalidTransaction(format!(
                "account {account} appears twice in read_set; give each account once"
            )));
        }
        let min_copies = match self.min_copies {
            None => None,
            Some(n @ 1..=MAX_MIN_COPIES) => Some(n as usize),
            Some(n) => {
                return Err(InvalidTransaction(format!(
                    "min_copies {n} is out of range: ask for 1 to {MAX_MIN_COPIES} copies"
                )))
            }
        };
        if !t.read_set.is_empty() && t.time_stamp.is_none() {
            return Err(InvalidTransaction(
                "time_stamp is missing: a commit with a read_set must carry the timestamp its read returned".into(),
            ));
        }
        if let Some(ts) = t.time_stamp {
            if ts < 0 {
                return Err(InvalidTransaction(format!("time_stamp {ts} is negative")));
            }
        }
        Ok(ValidCommit {
            read_set: t.read_set.into_iter().collect(),
            write_set: t.write_set,
            read_ts: t.time_stamp,
            txn_id: t.txn_id,
            min_copies,
        })
    }
}

/// One row of `bank_balance` as a read returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AccountRow {
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub account_number: Account,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub balance: Balance,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<i64>))]
    pub created_at: Option<Timestamp>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<i64>))]
    pub updated_at: Option<Timestamp>,
}

/// The role of an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Leader,
    /// A member of the in-sync set that is not the leader.
    Replica,
    /// Up but not in the member set: waiting for, or in the middle of, recovery. Serves reads
    /// of its own (possibly stale) state.
    Standby,
    /// Stopped by the `/down_leader/` drill: serves nothing but status until `/up_node/`.
    Down,
}

/// Answer of `POST /read/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReadResponse {
    /// Always `"success"` (failures are HTTP errors with an [`ErrorBody`]).
    pub read_status: String,
    /// The rows that exist, in account order (accounts never written are absent).
    pub data: Vec<AccountRow>,
    /// The read timestamp: pass it back as `time_stamp` when committing.
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub timestamp: Timestamp,
    /// Account to balance; an account never written is absent.
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::account_map))]
    pub values: BTreeMap<Account, Balance>,
    /// The snapshot is exactly the effect of the log up to this LSN.
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub lsn: Lsn,
    /// Which node answered, and in which role.
    pub node: String,
    pub role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "UPPERCASE")]
pub enum Outcome {
    Commit,
    Abort,
}

/// Why a transaction was aborted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AbortReason {
    /// A read key was written after the read timestamp.
    StaleRead,
    /// A read key is being written by a transaction still in flight.
    KeyLocked,
    /// A member refused or could not be reached during PREPARE; nothing was applied.
    ReplicationFailed,
    /// Fewer nodes are reachable than the durability floor (`min_copies`) asks for; nothing
    /// was applied.
    NotEnoughReplicas,
}

impl AbortReason {
    /// The wire name (`stale_read`, ...), also used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            AbortReason::StaleRead => "stale_read",
            AbortReason::KeyLocked => "key_locked",
            AbortReason::ReplicationFailed => "replication_failed",
            AbortReason::NotEnoughReplicas => "not_enough_replicas",
        }
    }

    pub fn explain(self) -> &'static str {
        match self {
            AbortReason::StaleRead => "an account in the read set was written after the read timestamp",
            AbortReason::KeyLocked => "an account in the read set is being written by a transaction still in flight",
            AbortReason::ReplicationFailed => {
                "a member of the cluster refused or did not answer the PREPARE; nothing was applied"
            }
            AbortReason::NotEnoughReplicas => {
                "fewer nodes are reachable than the durability floor (min_copies) needs; nothing was applied"
            }
        }
    }

    /// A conflict is a final answer (409), remembered for the `txn_id` on every node; the
    /// others mean "nothing applied, retry" (503) and are not outcomes.
    pub fn is_final(self) -> bool {
        matches!(self, AbortReason::StaleRead | AbortReason::KeyLocked)
    }
}

/// Answer of `POST /commit/` (HTTP 200 for COMMIT, 409 or 503 for ABORT).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommitResponse {
    pub commit: Outcome,
    pub txn_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<i64>))]
    pub commit_ts: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<i64>))]
    pub lsn: Option<Lsn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<AbortReason>,
    /// The conflicting account, when one account caused the abort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<i64>))]
    pub key: Option<Account>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The JSON body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// A stable machine-readable code: `bad_request`, `not_leader`, `stale_term`, `conflict`,
    /// `unavailable`, `overloaded`, `unauthorized`, `not_found`, `method_not_allowed`,
    /// `log_trimmed`, `internal` (and the supervisor's `refused`).
    pub error: String,
    /// What went wrong, for a human.
    pub message: String,
    /// On `not_leader`: the leader's address (`host:port`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// On `stale_term`: the receiver's current term.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<i64>))]
    pub term: Option<Term>,
    /// On `log_trimmed` (410): the node's log horizon, the highest LSN it no longer holds; its
    /// log starts at `horizon + 1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<i64>))]
    pub horizon: Option<Lsn>,
}

/// One entry of the recovery log: one committed transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogEntry {
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub lsn: Lsn,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub term: Term,
    pub txn_id: Uuid,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub commit_ts: Timestamp,
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::accounts))]
    pub read_set: Vec<Account>,
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::account_map))]
    pub write_set: BTreeMap<Account, Balance>,
    /// Set on the entry of a transaction that was ABORTED by a conflict: the log keeps the
    /// outcome so that a retry of the `txn_id` gets the same answer on any leader. Such an
    /// entry has empty sets and changes no balance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted: Option<AbortRecord>,
}

/// The outcome of an aborted transaction, as its log entry keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AbortRecord {
    pub reason: AbortReason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<i64>))]
    pub key: Option<Account>,
    pub message: String,
}

/// `GET /replication_log/?after=N&limit=M`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogPage {
    pub entries: Vec<LogEntry>,
    /// The node's applied LSN when the page was read.
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub applied_lsn: Lsn,
    /// True when entries after the last one returned exist.
    pub more: bool,
}

/// The first line of `GET /internal/snapshot`: the log entry the snapshot's accounts are the
/// effect of (up to and including it); None when the sender's log is empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SnapshotHeader {
    pub base: Option<LogEntry>,
}

/// `POST /internal/prepare`: phase one for a batch of consecutive log entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PrepareRequest {
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub term: Term,
    /// The leader's round number, increasing within a term: a late PREPARE from an earlier
    /// round can then be told from a current one.
    pub round: u64,
    /// The LSN the receiver must have applied: the leader's last committed entry before this batch.
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub prev_lsn: Lsn,
    /// Non-empty, consecutive LSNs starting at `prev_lsn + 1`.
    pub entries: Vec<LogEntry>,
    /// The sending leader's address: a member votes for one leader per term.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// The leader's cluster id: a member of another cluster votes NO; a member with an empty
    /// database that holds every earlier entry takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<Uuid>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "UPPERCASE")]
pub enum Vote {
    Yes,
    No,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PrepareResponse {
    pub vote: Vote,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub term: Term,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub applied_lsn: Lsn,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "UPPERCASE")]
pub enum Decision {
    Commit,
    Abort,
}

/// `POST /internal/decide`: phase two for the batch whose last entry is `last_lsn`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DecideRequest {
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub term: Term,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub last_lsn: Lsn,
    /// Transaction id of the batch's last entry: tells the batch apart from another one that
    /// reused its LSNs after an abort.
    pub last_txn: Uuid,
    pub decision: Decision,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DecideResponse {
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub term: Term,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub applied_lsn: Lsn,
}

/// Where a node stands on a batch (`GET /internal/batch_state?last_lsn=N`), for in-doubt resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BatchState {
    /// The node's log holds the batch's last entry.
    Committed,
    /// The node holds the batch prepared, undecided.
    Prepared,
    /// Neither: the node never prepared it, or rolled it back.
    Absent,
    /// The node's log no longer reaches the batch's LSN (trimmed by `--retain-log`, or the node
    /// was rebuilt from a snapshot after it): the node cannot tell, which counts as no answer.
    Trimmed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BatchStateResponse {
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub term: Term,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub last_lsn: Lsn,
    pub state: BatchState,
}

/// `GET /status` of an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentStatus {
    pub node_id: String,
    /// This agent's address as peers reach it.
    pub address: String,
    pub role: Role,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub term: Term,
    /// The leader's address, when known.
    pub leader: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub applied_lsn: Lsn,
    /// Highest commit timestamp applied here.
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub last_commit_ts: Timestamp,
    /// Term of the last entry in this node's log (0 for an empty log). Elections compare
    /// logs by (`last_term`, `applied_lsn`): a node behind another is never elected.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub last_term: Term,
    /// The durability floor this agent keeps when it leads (`--min-copies`).
    #[serde(default)]
    pub min_copies: u32,
    /// The id of the cluster this node's database belongs to, stored in PostgreSQL when it
    /// first joined one; null for an empty (new or wiped) database, which is never elected.
    #[serde(default)]
    pub cluster_id: Option<Uuid>,
    /// Addresses of the members in sync (the leader included), in configured order.
    pub members: Vec<String>,
    /// The batch this node holds prepared and undecided, if any.
    pub prepared_batch: Option<PendingInfo>,
    /// Version of the cluster configuration this node knows.
    pub config_version: u64,
    /// The supervisor this agent reports to, if any (without one the leader is fixed).
    pub supervisor: Option<String>,
}

/// The cluster's configuration as the supervisor decides it. Agents keep the newest they have
/// seen (by term, then version) durably.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterConfig {
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub term: Term,
    /// Increases with every change of leader or members.
    pub version: u64,
    /// null while an election is in progress.
    pub leader: Option<String>,
    /// The agents in sync, in configured order, the leader included.
    pub members: Vec<String>,
}

impl ClusterConfig {
    /// Orders configurations: a higher term wins, then a higher version.
    pub fn is_newer_than(&self, other: &ClusterConfig) -> bool {
        (self.term, self.version) > (other.term, other.version)
    }
}

/// A batch a node holds prepared and undecided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PendingInfo {
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub last_lsn: Lsn,
    pub last_txn: Uuid,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub term: Term,
}

/// Answer of `POST /internal/fence` (body: [`ClusterConfig`] with a term at least the agent's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FenceResponse {
    pub node_id: String,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub term: Term,
    pub role: Role,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub applied_lsn: Lsn,
    pub pending: Option<PendingInfo>,
}

/// Answer of `POST /internal/promote` (body: [`ClusterConfig`] naming the receiver as leader).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PromoteResponse {
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub term: Term,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub applied_lsn: Lsn,
    /// In-doubt batches resolved before taking new transactions.
    pub in_doubt_committed: u32,
    pub in_doubt_aborted: u32,
}

/// `POST /internal/pause`: the leader finishes the round in flight and starts no new one until
/// a configuration arrives or `max_ms` pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PauseRequest {
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub term: Term,
    pub max_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PauseResponse {
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub applied_lsn: Lsn,
}

/// `POST /internal/join` on the leader: adopt `config`, which adds a node that has caught up to
/// `applied_lsn`, only if the leader's own log still ends there (no commit slipped in after the
/// node's last page). The leader stores it before the supervisor records it, and adopting it
/// ends the recovery pause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JoinRequest {
    pub config: ClusterConfig,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub applied_lsn: Lsn,
}

/// `POST /internal/cluster_id`: the first leader of a new cluster gives its id to the members
/// before any commit, so that they count as the cluster's (and can be elected) from the start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterBirth {
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub term: Term,
    pub leader: String,
    pub cluster_id: Uuid,
}

/// `POST /internal/recover`: a standby catches up from the leader's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecoverRequest {
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub term: Term,
    pub leader: String,
    /// The cluster's id, when the supervisor knows it: a node with an empty database takes it
    /// once it has caught up; a node of another cluster refuses (it must be rebuilt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecoverResponse {
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub applied_lsn: Lsn,
    pub entries_applied: u64,
    /// What happened to a batch the node held prepared, if any.
    pub resolved_pending: Option<Decision>,
    /// The LSN of the leader's snapshot the node loaded before replaying the log after it, if
    /// it was rebuilt from one (an empty node, when the leader's log no longer starts at 1, or
    /// is longer than one page of recovery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<i64>))]
    pub snapshot_lsn: Option<Lsn>,
}

/// Answer of `POST /internal/reset` (body: the supervisor's [`ClusterConfig`], in which this
/// node must not be a member): the node's database was emptied for a rebuild.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResetResponse {
    /// How many log entries the node held before (all gone now).
    pub wiped_entries: u64,
    /// How many prepared batches it rolled back.
    pub rolled_back: u64,
}

/// The answer of the role checks `GET /primary`, `/replica` and `/read-only` when the node
/// passes (a 503 `ErrorBody` when it does not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RoleCheck {
    /// Always `ok`.
    pub status: String,
    pub role: Role,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub term: Term,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub applied_lsn: Lsn,
    /// Entries this node holds prepared but not applied yet (0 on an idle replica).
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub lag: Lsn,
}

/// `POST /report_failure` on the supervisor: the leader could not reach a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FailureReport {
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub term: Term,
    pub member: String,
    pub reason: String,
    /// What the leader saw. Only `unreachable` is checked against the supervisor's own view
    /// (a member the supervisor reaches stays, unless it is reported again); the others carry
    /// the member's own answer as evidence.
    #[serde(default)]
    pub kind: FailureKind,
}

/// What made the leader report a member.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// A PREPARE got no answer within the peer timeout.
    #[default]
    Unreachable,
    /// The member answered NO: it is behind and must recover before it can vote YES.
    VotedNo,
    /// The member did not acknowledge a decision.
    DecisionFailed,
}

/// `POST /register_client/` on the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegisterClient {
    /// The client's `/leader_changed/` URL, e.g. `http://127.0.0.1:5000/leader_changed/`.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[Hh][Tt][Tt][Pp][Ss]?://"))]
    pub url: String,
}

/// `POST /leader_changed/` on a client (as the original, with an address instead of a port).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaderChanged {
    pub leader: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<i64>))]
    pub term: Option<Term>,
}

/// Answer of the drills `GET /down_leader/` and `GET /up_node/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DrillResponse {
    pub node_id: String,
    /// The node's role after the call.
    pub role: Role,
    /// False when the call changed nothing (called twice, or on the wrong node).
    pub changed: bool,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(json: &str) -> Result<ValidCommit, String> {
        let req: CommitRequest = serde_json::from_str(json).map_err(|e| e.to_string())?;
        req.validate().map_err(|e| e.0)
    }

    #[test]
    fn original_commit_body_parses_with_string_keys() {
        let c = commit(r#"{"transaction": {"read_set": [1], "write_set": {"2": 22}, "time_stamp": 5}}"#).unwrap();
        assert_eq!(c.write_set, BTreeMap::from([(2, 22)]));
        assert_eq!(c.read_set, BTreeSet::from([1]));
        assert_eq!(c.read_ts, Some(5));
        assert_eq!(c.min_copies, None);
        let c = commit(r#"{"transaction": {"write_set": {"2": 22}}, "min_copies": 3}"#).unwrap();
        assert_eq!(c.min_copies, Some(3));
    }

    #[test]
    fn a_read_at_a_past_lsn_is_checked_like_min_lsn() {
        let read = |json: &str| serde_json::from_str::<ReadRequest>(json).map_err(|e| e.to_string());
        let ok = read(r#"{"transaction": {"read_set": [1, 2]}, "as_of_lsn": 7}"#).unwrap().validate().unwrap();
        assert_eq!((ok.as_of_lsn, ok.min_lsn), (Some(7), None));
        let negative = read(r#"{"transaction": {"read_set": [1]}, "as_of_lsn": -1}"#).unwrap().validate();
        assert_eq!(negative.unwrap_err().0, "as_of_lsn -1 is negative");
        assert!(read(r#"{"transaction": {"read_set": [1]}, "as_of_lsn": "7"}"#).is_err());
    }

    #[test]
    fn bad_bodies_are_refused_with_a_reason() {
        for (body, expect) in [
            (r#"{"transaction": {"read_set": [1], "write_set": {}}}"#, "time_stamp is missing"),
            (r#"{"transaction": {"read_set": [], "write_set": {}}}"#, "empty"),
            (r#"{"transaction": {"write_set": {"x": 1}}}"#, "invalid"),
            (r#"{"transaction": {"write_set": {"1": 1.5}}}"#, "invalid"),
            (r#"{"transaction": {"write_set": {"1": 99999999999999999999}}}"#, "invalid"),
            (r#"{"transaction": {"write_set": {"-1": 1}}}"#, "negative"),
            (r#"{"transaction": {"write_set": {"1": 1}, "bogus": 1}}"#, "unknown field"),
            (r#"{"transaction": {"read_set": ["1"], "time_stamp": 1}}"#, "invalid type"),
            (r#"{"transaction": {"write_set": {"1": 1, "1": 2}}}"#, "account 1 appears twice in write_set"),
            (r#"{"transaction": {"write_set": {"7": 1, "07": 2}}}"#, "invalid number"),
            (r#"{"transaction": {"read_set": [3, 4, 3], "time_stamp": 1}}"#, "account 3 appears twice in read_set"),
            (r#"{"transaction": {"write_set": {"1": 1}}, "min_copies": 0}"#, "min_copies 0 is out of range"),
            (r#"{"transaction": {"write_set": {"1": 1}}, "min_copies": 17}"#, "min_copies 17 is out of range"),
        ] {
            let err = commit(body).unwrap_err();
            assert!(err.contains(expect), "{body}: {err}");
        }
    }

    #[test]
    fn oversized_write_set_is_refused() {
        let ws: BTreeMap<Account, Balance> = (0..=MAX_SET_LEN as i64).map(|k| (k, 1)).collect();
        let req =
            CommitRequest { transaction: TransactionBody { write_set: ws, ..Default::default() }, min_copies: None };
        assert!(req.validate().unwrap_err().0.contains("at most"));
    }
}
