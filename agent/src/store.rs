//! Everything the agent asks of its PostgreSQL server.
//!
//! Invariants kept here:
//! - A batch's data writes and its recovery-log entries are one PostgreSQL transaction, prepared
//!   with `PREPARE TRANSACTION` (durable across crashes) and then committed or rolled back, so the
//!   table is always exactly the effect of the log.
//! - Every read is one SQL statement, hence one snapshot: the balances it returns are exactly the
//!   effect of the log up to the LSN it returns with them.

use std::collections::{BTreeMap, HashMap};

use protocol::{AbortRecord, Account, AccountRow, Balance, BatchState, ClusterConfig, LogEntry, Lsn, Term, Timestamp};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor, PgPool, Row};
use uuid::Uuid;

use engine::batch::Batch as PendingBatch;
pub use engine::batch::LogEnd;

/// The accounts as a snapshot carries them: PostgreSQL's COPY text format, these columns.
const COPY_OUT: &str = "COPY bank_balance (account_number, balance, created_at, updated_at) TO STDOUT";
const COPY_IN: &str = "COPY bank_balance (account_number, balance, created_at, updated_at) FROM STDIN";

/// A snapshot's rows as they stream out of PostgreSQL.
pub type SnapshotRows = tokio_stream::wrappers::ReceiverStream<Result<bytes::Bytes, std::io::Error>>;

/// Connections to the local PostgreSQL. Enough for the commit path (one at a time) plus reads.
pub const DEFAULT_POOL_SIZE: u32 = 16;

#[derive(Debug, thiserror::Error)]
#[error("PostgreSQL: {0}")]
pub struct StoreError(#[from] sqlx::Error);

/// A consistent read: rows plus the log position they reflect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub rows: Vec<AccountRow>,
    pub lsn: Lsn,
    pub commit_ts: Timestamp,
    /// The term of the entry at `lsn` (0 for an empty log).
    pub term: Term,
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS bank_balance (
    account_number BIGINT PRIMARY KEY,
    balance BIGINT NOT NULL,
    created_at BIGINT,
    updated_at BIGINT
);
CREATE TABLE IF NOT EXISTS recovery_log (
    lsn BIGINT PRIMARY KEY,
    term BIGINT NOT NULL,
    txn_id UUID NOT NULL UNIQUE,
    commit_ts BIGINT NOT NULL,
    read_set JSONB NOT NULL,
    write_set JSONB NOT NULL,
    -- A transaction ABORTED by a conflict keeps its outcome in the log too (empty sets, no
    -- writes), so that a retry of its txn_id is answered ABORT by any leader, forever.
    aborted JSONB
);
-- The accounts as of `agent_log_base.lsn`: the state the log after it applies to. Trimming
-- (`--retain-log`) folds the entries it removes into it, and a rebuild loads the leader's
-- snapshot into it; with a whole log it stays empty at LSN 0. Reads at a past LSN start here.
CREATE TABLE IF NOT EXISTS bank_balance_base (
    account_number BIGINT PRIMARY KEY,
    balance BIGINT NOT NULL,
    created_at BIGINT,
    updated_at BIGINT
);
CREATE TABLE IF NOT EXISTS agent_log_base (
    id INT PRIMARY KEY CHECK (id = 1),
    lsn BIGINT NOT NULL
);
-- The cluster this database belongs to, stored once: when it bootstraps a new cluster as its
-- first leader, or when it has caught up with a cluster's leader. A wiped database has none.
CREATE TABLE IF NOT EXISTS agent_identity (
    id INT PRIMARY KEY CHECK (id = 1),
    cluster_id UUID NOT NULL
);
-- The newest cluster configuration this agent has seen: its term must survive a restart, or a
-- deposed leader could win this agent's vote again.
CREATE TABLE IF NOT EXISTS agent_cluster_config (
    id INT PRIMARY KEY CHECK (id = 1),
    config JSONB NOT NULL
);
"#;

impl Store {
    /// Connects to `url`, with `password` (from `--database-password-file`) instead of one in
    /// the URL when given.
    pub async fn connect(url: &str, password: Option<&str>, pool_size: u32) -> Result<Store, StoreError> {
        // Every batch ends with a COMMIT after its PREPARE TRANSACTION (see `apply`), which
        // PostgreSQL answers with a WARNING notice; on the agent's own sessions only errors are
        // worth a line, in the server's log and in the agent's.
        let mut options: PgConnectOptions =
            url.parse::<PgConnectOptions>()?.options([("log_min_messages", "error"), ("client_min_messages", "error")]);
        if let Some(password) = password {
            options = options.password(password);
        }
        let pool = PgPoolOptions::new()
            .max_connections(pool_size)
            // With PostgreSQL stopped, sqlx keeps retrying the connect until this deadline: every
            // call would hang that long. A healthy pool hands out a connection in microseconds.
            .acquire_timeout(std::time::Duration::from_secs(1))
            .connect_with(options)
            .await?;
        Ok(Store { pool })
    }

    /// Creates the tables if absent, and checks that two-phase commit is enabled.
    pub async fn init_schema(&self) -> Result<(), anyhow::Error> {
        let mut conn = self.pool.acquire().await?;
        // Several agents may share one server in tests; serialise DDL per database.
        conn.execute("SELECT pg_advisory_lock(7478)").await?;
        let created = conn.execute(SCHEMA).await;
        let upgraded = match created {
            Ok(_) => upgrade_log(&mut conn).await,
            Err(e) => Err(e.into()),
        };
        conn.execute("SELECT pg_advisory_unlock(7478)").await?;
        upgraded?;
        let max: String = sqlx::query_scalar("SHOW max_prepared_transactions").fetch_one(&mut *conn).await?;
        if max.parse::<i64>().unwrap_or(0) < 2 {
            anyhow::bail!(
                "PostgreSQL has max_prepared_transactions = {max}; the agent needs PREPARE TRANSACTION: \
                 set max_prepared_transactions to 64 in postgresql.conf and restart PostgreSQL"
            );
        }
        Ok(())
    }

    pub async fn load_config(&self) -> Result<Option<ClusterConfig>, StoreError> {
        let config: Option<sqlx::types::Json<ClusterConfig>> =
            sqlx::query_scalar("SELECT config FROM agent_cluster_config WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?;
        Ok(config.map(|c| c.0))
    }

    /// Stores `config` unless a newer one (higher term, then higher version) is stored: writes
    /// from concurrent requests may land in any order and the stored term still only grows.
    pub async fn save_config(&self, config: &ClusterConfig) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO agent_cluster_config (id, config) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET config = EXCLUDED.config \
             WHERE ((agent_cluster_config.config->>'term')::bigint, (agent_cluster_config.config->>'version')::bigint) \
                <= ((EXCLUDED.config->>'term')::bigint, (EXCLUDED.config->>'version')::bigint)",
        )
        .bind(sqlx::types::Json(config))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The cluster this database belongs to, if it joined one.
    pub async fn cluster_id(&self) -> Result<Option<Uuid>, StoreError> {
        Ok(sqlx::query_scalar("SELECT cluster_id FROM agent_identity WHERE id = 1").fetch_optional(&self.pool).await?)
    }

    /// Stores `id` as this database's cluster unless it already has one and a log (an empty
    /// database takes the cluster's id whatever it took before); returns the one kept.
    pub async fn adopt_cluster_id(&self, id: Uuid) -> Result<Uuid, StoreError> {
        sqlx::query(
            "INSERT INTO agent_identity (id, cluster_id) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET cluster_id = EXCLUDED.cluster_id \
             WHERE NOT EXISTS (SELECT 1 FROM recovery_log)",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(self.cluster_id().await?.unwrap_or(id))
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Reads `accounts` and the last applied log position in one statement (one snapshot).
    pub async fn read(&self, accounts: &[Account]) -> Result<Snapshot, StoreError> {
        let rows = sqlx::query(
            "WITH last AS (SELECT lsn, commit_ts, term FROM recovery_log ORDER BY lsn DESC LIMIT 1) \
             SELECT b.account_number, b.balance, b.created_at, b.updated_at, l.lsn, l.commit_ts, l.term \
             FROM (SELECT 1) AS one \
             LEFT JOIN last AS l ON true \
             LEFT JOIN bank_balance AS b ON b.account_number = ANY($1) \
             ORDER BY b.account_number",
        )
        .bind(accounts)
        .fetch_all(&self.pool)
        .await?;
        let mut snapshot = Snapshot { rows: Vec::new(), lsn: 0, commit_ts: 0, term: 0 };
        for row in rows {
            snapshot.lsn = row.try_get::<Option<i64>, _>("lsn")?.unwrap_or(0);
            snapshot.commit_ts = row.try_get::<Option<i64>, _>("commit_ts")?.unwrap_or(0);
            snapshot.term = row.try_get::<Option<i64>, _>("term")?.unwrap_or(0);
            if let Some(account_number) = row.try_get::<Option<i64>, _>("account_number")? {
                snapshot.rows.push(AccountRow {
                    account_number,
                    balance: row.try_get("balance")?,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                });
            }
        }
        Ok(snapshot)
    }

    /// The last applied entry's LSN, commit timestamp and term (all 0 for an empty log).
    pub async fn applied(&self) -> Result<LogEnd, StoreError> {
        let snapshot = self.read(&[]).await?;
        Ok(LogEnd { lsn: snapshot.lsn, commit_ts: snapshot.commit_ts, term: snapshot.term })
    }

    /// `updated_at` of every account: what the leader's validator needs in memory.
    pub async fn write_timestamps(&self) -> Result<HashMap<Account, Timestamp>, StoreError> {
        let rows: Vec<(i64, Option<i64>)> =
            sqlx::query_as("SELECT account_number, updated_at FROM bank_balance").fetch_all(&self.pool).await?;
        Ok(rows.into_iter().filter_map(|(k, ts)| ts.map(|ts| (k, ts))).collect())
    }

    /// Phase one: apply `entries` and log them in one transaction, and prepare it as `batch`.
    ///
    /// One message, one round trip to PostgreSQL: `BEGIN`, both inserts as one statement, and
    /// `PREPARE TRANSACTION`. The batch travels as dollar-quoted JSON: it is our own
    /// serialisation of numbers and UUIDs, so it cannot contain the quote tag, and the gid is
    /// made of numbers and a UUID only.
    pub async fn prepare(&self, batch: &PendingBatch, entries: &[LogEntry]) -> Result<(), StoreError> {
        let (log, writes) = batch_json(entries);
        let sql = format!(
            "BEGIN; \
             WITH logged AS ( \
               INSERT INTO recovery_log (lsn, term, txn_id, commit_ts, read_set, write_set, aborted) \
               SELECT e.lsn, e.term, e.txn_id, e.commit_ts, e.read_set, e.write_set, e.aborted \
               FROM jsonb_to_recordset($rmw${log}$rmw$::jsonb) \
                 AS e(lsn bigint, term bigint, txn_id uuid, commit_ts bigint, read_set jsonb, write_set jsonb, aborted jsonb)) \
             INSERT INTO bank_balance (account_number, balance, created_at, updated_at) \
             SELECT w.account_number, w.balance, w.created_at, w.updated_at \
             FROM jsonb_to_recordset($rmw${writes}$rmw$::jsonb) \
               AS w(account_number bigint, balance bigint, created_at bigint, updated_at bigint) \
             ON CONFLICT (account_number) DO UPDATE SET balance = EXCLUDED.balance, updated_at = EXCLUDED.updated_at; \
             PREPARE TRANSACTION '{gid}'",
            gid = batch.gid()
        );
        let started = std::time::Instant::now();
        let mut conn = self.pool.acquire().await?;
        // A query without arguments goes over the simple-query protocol, which runs several
        // statements in one message.
        if let Err(e) = conn.execute(sql.as_str()).await {
            // The session may be left inside the failed transaction: end it, or never reuse it.
            if conn.execute("ROLLBACK").await.is_err() {
                conn.close_on_drop();
            }
            return Err(e.into());
        }
        metrics::histogram!("rmw_store_seconds", "op" => "prepare").record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Recovery: apply entries fetched from the leader's log and commit them at once.
    pub async fn apply_committed(&self, entries: &[LogEntry]) -> Result<(), StoreError> {
        self.apply(entries).await
    }

    /// Applies `entries` (data and log) in one transaction and commits it.
    async fn apply(&self, entries: &[LogEntry]) -> Result<(), StoreError> {
        let (log, writes) = batch_json(entries);
        // sqlx's transaction rolls back if this future is dropped half-way, so a connection
        // never returns to the pool inside a transaction.
        let mut tx = self.pool.begin().await?;
        insert_log(&mut tx, &log).await?;
        sqlx::query(
            "INSERT INTO bank_balance (account_number, balance, created_at, updated_at) \
             SELECT w.account_number, w.balance, w.created_at, w.updated_at \
             FROM jsonb_to_recordset($1) AS w(account_number bigint, balance bigint, created_at bigint, updated_at bigint) \
             ON CONFLICT (account_number) DO UPDATE SET balance = EXCLUDED.balance, updated_at = EXCLUDED.updated_at",
        )
        .bind(sqlx::types::Json(&writes))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn commit_prepared(&self, batch: &PendingBatch) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        self.pool.execute(format!("COMMIT PREPARED '{}'", batch.gid()).as_str()).await?;
        metrics::histogram!("rmw_store_seconds", "op" => "commit_prepared").record(started.elapsed().as_secs_f64());
        Ok(())
    }

    pub async fn rollback_prepared(&self, batch: &PendingBatch) -> Result<(), StoreError> {
        self.pool.execute(format!("ROLLBACK PREPARED '{}'", batch.gid()).as_str()).await?;
        Ok(())
    }

    /// Batches prepared in this database and not yet decided (normally at most one).
    pub async fn prepared_batches(&self) -> Result<Vec<PendingBatch>, StoreError> {
        let gids: Vec<String> = sqlx::query_scalar(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND gid LIKE 'rmw-%' ORDER BY prepared",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(gids.iter().filter_map(|g| PendingBatch::from_gid(g)).collect())
    }

    /// Empties this database for a rebuild: rolls back every prepared batch, then removes the
    /// balances, the log and the cluster id in one transaction (the stored configuration, with
    /// its term, stays). Returns (log entries removed, batches rolled back).
    pub async fn wipe(&self) -> Result<(u64, u64), StoreError> {
        let prepared = self.prepared_batches().await?;
        for batch in &prepared {
            self.rollback_prepared(batch).await?;
        }
        let mut tx = self.pool.begin().await?;
        let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM recovery_log").fetch_one(&mut *tx).await?;
        sqlx::query("TRUNCATE bank_balance, recovery_log, agent_identity, bank_balance_base, agent_log_base")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((entries.max(0) as u64, prepared.len() as u64))
    }

    /// Whether this node's log holds the batch: its last entry at its LSN, from its term. The
    /// transaction id alone is not enough: a client may have retried it, and a later leader
    /// committed it elsewhere while this batch was never committed.
    pub async fn batch_committed(&self, batch: &PendingBatch) -> Result<bool, StoreError> {
        Ok(self.batch_in_log(batch).await? == BatchState::Committed)
    }

    /// What the log says of a batch at or below the applied LSN: `Committed`, `Absent`, or
    /// `Trimmed` when the log no longer starts before the batch's LSN (then it cannot tell).
    pub async fn batch_in_log(&self, batch: &PendingBatch) -> Result<BatchState, StoreError> {
        let (held, first): (bool, Option<i64>) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM recovery_log WHERE lsn = $1 AND txn_id = $2 AND term = $3), \
                    (SELECT min(lsn) FROM recovery_log)",
        )
        .bind(batch.last_lsn)
        .bind(batch.last_txn)
        .bind(batch.id.term)
        .fetch_one(&self.pool)
        .await?;
        Ok(match first {
            _ if held => BatchState::Committed,
            Some(first) if batch.last_lsn < first => BatchState::Trimmed,
            _ => BatchState::Absent,
        })
    }

    /// This log's first entry: its LSN and commit timestamp (None for an empty log). Entries
    /// before it were trimmed, or replaced by the snapshot this node was rebuilt from.
    pub async fn log_start(&self) -> Result<Option<(Lsn, Timestamp)>, StoreError> {
        Ok(sqlx::query_as("SELECT lsn, commit_ts FROM recovery_log ORDER BY lsn LIMIT 1")
            .fetch_optional(&self.pool)
            .await?)
    }

    /// The horizon: the highest LSN this log no longer holds (0 when it starts at LSN 1).
    pub async fn horizon(&self) -> Result<Lsn, StoreError> {
        Ok(self.log_start().await?.map_or(0, |(first, _)| first - 1))
    }

    /// Deletes the oldest entries, at most `chunk` of them, that are not among the last `keep`,
    /// whose commit timestamp is below `before` and whose LSN is at most `upto`; returns how
    /// many. One statement on the
    /// primary key's range: it never touches the last entry (`keep` >= 1), from which the node
    /// learns where its log ends.
    ///
    /// The same statement folds the entries it removes into `bank_balance_base` and moves the
    /// base LSN up to the last of them, so that the base plus the log is always the whole
    /// history (what reads at a past LSN need).
    pub async fn trim(&self, keep: i64, before: Timestamp, upto: Lsn, chunk: i64) -> Result<u64, StoreError> {
        let deleted: i64 = sqlx::query_scalar(
            "WITH ends AS (SELECT min(lsn) AS lo, max(lsn) AS hi FROM recovery_log), \
             gone AS (DELETE FROM recovery_log AS r USING ends \
                 WHERE r.lsn <= LEAST(ends.hi - $1, ends.lo + $2 - 1, $4) AND r.commit_ts < $3 \
                 RETURNING r.lsn, r.commit_ts, r.write_set), \
             w AS (SELECT e.key::bigint AS account, e.value::bigint AS balance, g.lsn, g.commit_ts \
                 FROM gone AS g, jsonb_each_text(g.write_set) AS e), \
             net AS (SELECT DISTINCT ON (account) account, balance, commit_ts AS updated_at, \
                     min(commit_ts) OVER (PARTITION BY account) AS created_at \
                 FROM w ORDER BY account, lsn DESC), \
             folded AS (INSERT INTO bank_balance_base (account_number, balance, created_at, updated_at) \
                 SELECT account, balance, created_at, updated_at FROM net \
                 ON CONFLICT (account_number) DO UPDATE SET balance = EXCLUDED.balance, updated_at = EXCLUDED.updated_at), \
             based AS (INSERT INTO agent_log_base (id, lsn) SELECT 1, max(lsn) FROM gone HAVING count(*) > 0 \
                 ON CONFLICT (id) DO UPDATE SET lsn = GREATEST(agent_log_base.lsn, EXCLUDED.lsn)) \
             SELECT count(*) FROM gone",
        )
        .bind(keep.max(1))
        .bind(chunk.max(1))
        .bind(before)
        .bind(upto)
        .fetch_one(&self.pool)
        .await?;
        Ok(deleted.max(0) as u64)
    }

    /// The accounts as they were right after `lsn`, from the base and the log after it, in
    /// one snapshot. `Ok(None)` when the log no longer reaches `lsn` (it is below the base, or
    /// its entry was trimmed); the caller makes sure the node has applied `lsn`.
    pub async fn read_as_of(&self, accounts: &[Account], lsn: Lsn) -> Result<Option<Snapshot>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
        let (base, entry): (i64, Option<(Timestamp, Term)>) = {
            let row: (Option<i64>, Option<i64>, Option<i64>) = sqlx::query_as(
                "SELECT (SELECT lsn FROM agent_log_base WHERE id = 1), \
                        (SELECT commit_ts FROM recovery_log WHERE lsn = $1), (SELECT term FROM recovery_log WHERE lsn = $1)",
            )
            .bind(lsn)
            .fetch_one(&mut *tx)
            .await?;
            (row.0.unwrap_or(0), row.1.zip(row.2))
        };
        let (commit_ts, term) = match entry {
            Some(at) if lsn >= base => at,
            None if lsn == 0 && base == 0 => (0, 0),
            _ => return Ok(None),
        };
        let base_rows: Vec<(i64, i64, Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT account_number, balance, created_at, updated_at FROM bank_balance_base WHERE account_number = ANY($1)",
        )
        .bind(accounts)
        .fetch_all(&mut *tx)
        .await?;
        let keys: Vec<String> = accounts.iter().map(i64::to_string).collect();
        let history: Vec<(i64, sqlx::types::Json<BTreeMap<Account, Balance>>)> = sqlx::query_as(
            "SELECT commit_ts, write_set FROM recovery_log WHERE lsn > $1 AND lsn <= $2 AND write_set ?| $3 ORDER BY lsn",
        )
        .bind(base)
        .bind(lsn)
        .bind(&keys)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut rows: BTreeMap<Account, AccountRow> = base_rows
            .into_iter()
            .map(|(account_number, balance, created_at, updated_at)| {
                (account_number, AccountRow { account_number, balance, created_at, updated_at })
            })
            .collect();
        for (ts, writes) in &history {
            for (&account, &balance) in writes.0.iter().filter(|(k, _)| accounts.contains(k)) {
                let row = rows.entry(account).or_insert(AccountRow {
                    account_number: account,
                    balance,
                    created_at: Some(*ts),
                    updated_at: Some(*ts),
                });
                row.balance = balance;
                row.updated_at = Some(*ts);
            }
        }
        Ok(Some(Snapshot { rows: rows.into_values().collect(), lsn, commit_ts, term }))
    }

    /// A consistent snapshot of the accounts for a rebuild: the last committed log entry (the
    /// snapshot's base; None for an empty log) and the table as of it, in PostgreSQL's COPY text
    /// format, streamed. One REPEATABLE READ transaction reads both, so the rows are exactly
    /// the effect of the log up to the base (batches commit in LSN order).
    pub async fn export_snapshot(&self) -> Result<(Option<LogEntry>, SnapshotRows), StoreError> {
        let mut conn = self.pool.acquire().await?;
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY").await?;
        let base = sqlx::query(
            "SELECT lsn, term, txn_id, commit_ts, read_set, write_set, aborted FROM recovery_log ORDER BY lsn DESC LIMIT 1",
        )
        .fetch_optional(&mut *conn)
        .await;
        let base = match base {
            Ok(row) => row.map(|r| log_entry(&r)).transpose(),
            Err(e) => Err(e.into()),
        };
        let base = match base {
            Ok(base) => base,
            Err(e) => {
                conn.close_on_drop();
                return Err(e);
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(16);
        tokio::spawn(async move {
            let copied = async {
                let mut rows = conn.copy_out_raw(COPY_OUT).await?;
                while let Some(chunk) = futures::StreamExt::next(&mut rows).await {
                    if tx.send(Ok(chunk?)).await.is_err() {
                        // The receiver went away: abandon the snapshot.
                        return Err(sqlx::Error::Protocol("the snapshot's receiver went away".into()));
                    }
                }
                drop(rows);
                conn.execute("COMMIT").await?;
                Ok::<_, sqlx::Error>(())
            }
            .await;
            if let Err(e) = copied {
                // A connection left inside COPY or the transaction is not returned to the pool.
                conn.close_on_drop();
                let _ = tx.send(Err(std::io::Error::other(format!("the snapshot's COPY failed: {e}")))).await;
            }
        });
        Ok((base, tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    /// Loads a snapshot into this (empty) database in one transaction: the rows, in COPY text
    /// format, and `base` as the log's only entry. Returns the number of accounts loaded. A
    /// failure half-way leaves the database as it was.
    pub async fn import_snapshot<S, E>(&self, base: &LogEntry, mut rows: S) -> Result<u64, anyhow::Error>
    where
        S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut tx = self.pool.begin().await?;
        sqlx::query("TRUNCATE bank_balance, recovery_log").execute(&mut *tx).await?;
        let mut copy = tx.copy_in_raw(COPY_IN).await?;
        while let Some(chunk) = futures::StreamExt::next(&mut rows).await {
            match chunk {
                Ok(chunk) => {
                    copy.send(chunk).await?;
                }
                Err(e) => {
                    let message = format!("the snapshot stream broke: {e}");
                    copy.abort(message.clone()).await?;
                    anyhow::bail!(message);
                }
            }
        }
        let loaded = copy.finish().await?;
        // The snapshot is the state at its base LSN: the base reads at a past LSN start from.
        sqlx::query("TRUNCATE bank_balance_base").execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO bank_balance_base SELECT account_number, balance, created_at, updated_at FROM bank_balance",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO agent_log_base (id, lsn) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET lsn = EXCLUDED.lsn",
        )
        .bind(base.lsn)
        .execute(&mut *tx)
        .await?;
        let (log, _) = batch_json(std::slice::from_ref(base));
        insert_log(&mut tx, &log).await?;
        tx.commit().await?;
        Ok(loaded)
    }

    /// Whether PostgreSQL holds the batch prepared: the ground truth, whatever the agent's memory.
    pub async fn batch_prepared(&self, batch: &PendingBatch) -> Result<bool, StoreError> {
        Ok(self.prepared_batches().await?.iter().any(|p| p.gid() == batch.gid()))
    }

    /// The log entry at `lsn`, if this node has it.
    pub async fn entry_at(&self, lsn: Lsn) -> Result<Option<LogEntry>, StoreError> {
        Ok(self.log_page(lsn - 1, 1).await?.into_iter().find(|e| e.lsn == lsn))
    }

    /// The log entry of a decided transaction, if the log holds it, and where the log starts
    /// (as [`Store::log_start`]), in one statement: a miss means "never decided" only if the
    /// log reaches back far enough.
    pub async fn find_txn(&self, txn_id: Uuid) -> Result<(Option<LogEntry>, Option<(Lsn, Timestamp)>), StoreError> {
        let row = sqlx::query(
            "SELECT f.first_lsn, f.first_ts, e.lsn, e.term, e.txn_id, e.commit_ts, e.read_set, e.write_set, e.aborted \
             FROM (SELECT lsn AS first_lsn, commit_ts AS first_ts FROM recovery_log ORDER BY lsn LIMIT 1) AS f \
             LEFT JOIN recovery_log AS e ON e.txn_id = $1",
        )
        .bind(txn_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok((None, None));
        };
        let start = (row.try_get("first_lsn")?, row.try_get("first_ts")?);
        let found = row.try_get::<Option<Uuid>, _>("txn_id")?.is_some();
        Ok((if found { Some(log_entry(&row)?) } else { None }, Some(start)))
    }

    /// Up to `limit` log entries after `after`, in LSN order.
    pub async fn log_page(&self, after: Lsn, limit: i64) -> Result<Vec<LogEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT lsn, term, txn_id, commit_ts, read_set, write_set, aborted FROM recovery_log \
             WHERE lsn > $1 ORDER BY lsn LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(log_entry).collect()
    }
}

/// Adds the `aborted` column to a recovery log made by an older agent. Only then: ALTER TABLE
/// waits for every lock on the table, and a batch left prepared by a crash holds one until this
/// agent resolves it, after start-up.
async fn upgrade_log(conn: &mut sqlx::PgConnection) -> Result<(), anyhow::Error> {
    let has_column: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = 'recovery_log' AND column_name = 'aborted')",
    )
    .fetch_one(&mut *conn)
    .await?;
    if has_column {
        return Ok(());
    }
    tracing::warn!("upgrading recovery_log: adding the column that records aborted transactions");
    conn.execute("SET lock_timeout = '10s'").await?;
    let altered = conn.execute("ALTER TABLE recovery_log ADD COLUMN IF NOT EXISTS aborted JSONB").await;
    conn.execute("RESET lock_timeout").await?;
    altered.map_err(|e| {
        anyhow::anyhow!(
            "could not add the column 'aborted' to recovery_log ({e}); if a prepared transaction holds the \
             table (SELECT gid FROM pg_prepared_xacts), start the previous agent version once to resolve it"
        )
    })?;
    Ok(())
}

/// Inserts log entries (`batch_json`'s first array) inside `tx`.
async fn insert_log(tx: &mut sqlx::PgConnection, log: &serde_json::Value) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO recovery_log (lsn, term, txn_id, commit_ts, read_set, write_set, aborted) \
         SELECT e.lsn, e.term, e.txn_id, e.commit_ts, e.read_set, e.write_set, e.aborted \
         FROM jsonb_to_recordset($1) AS e(lsn bigint, term bigint, txn_id uuid, commit_ts bigint, read_set jsonb, write_set jsonb, aborted jsonb)",
    )
    .bind(sqlx::types::Json(log))
    .execute(tx)
    .await?;
    Ok(())
}

/// A batch as the two JSON arrays its inserts read: the log entries, and the net writes.
fn batch_json(entries: &[LogEntry]) -> (serde_json::Value, serde_json::Value) {
    let log = entries
        .iter()
        .map(|e| {
            json!({"lsn": e.lsn, "term": e.term, "txn_id": e.txn_id, "commit_ts": e.commit_ts,
                   "read_set": e.read_set, "write_set": e.write_set, "aborted": e.aborted})
        })
        .collect();
    let writes = net_writes(entries)
        .into_iter()
        .map(|(k, (balance, created_at, updated_at))| {
            json!({"account_number": k, "balance": balance, "created_at": created_at, "updated_at": updated_at})
        })
        .collect();
    (serde_json::Value::Array(log), serde_json::Value::Array(writes))
}

fn log_entry(row: &sqlx::postgres::PgRow) -> Result<LogEntry, StoreError> {
    let read_set: sqlx::types::Json<Vec<Account>> = row.try_get("read_set")?;
    let write_set: sqlx::types::Json<BTreeMap<Account, Balance>> = row.try_get("write_set")?;
    let aborted: Option<sqlx::types::Json<AbortRecord>> = row.try_get("aborted")?;
    Ok(LogEntry {
        lsn: row.try_get("lsn")?,
        term: row.try_get("term")?,
        txn_id: row.try_get("txn_id")?,
        commit_ts: row.try_get("commit_ts")?,
        read_set: read_set.0,
        write_set: write_set.0,
        aborted: aborted.map(|a| a.0),
    })
}

/// The net effect of applying `entries` in LSN order, per account: (balance, created_at if the
/// row is new, updated_at). Collapsing lets one upsert statement apply a whole batch even when
/// two entries write the same account.
fn net_writes(entries: &[LogEntry]) -> BTreeMap<Account, (Balance, Timestamp, Timestamp)> {
    let mut net = BTreeMap::new();
    for entry in entries {
        for (&account, &balance) in &entry.write_set {
            net.entry(account)
                .and_modify(|w: &mut (Balance, Timestamp, Timestamp)| {
                    w.0 = balance;
                    w.2 = entry.commit_ts;
                })
                .or_insert((balance, entry.commit_ts, entry.commit_ts));
        }
    }
    net
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_entries_win_and_the_first_write_creates() {
        let entry = |lsn, ts, writes: &[(i64, i64)]| LogEntry {
            lsn,
            term: 1,
            txn_id: Uuid::from_u128(lsn as u128),
            commit_ts: ts,
            read_set: vec![],
            write_set: writes.iter().copied().collect(),
            aborted: None,
        };
        let net = net_writes(&[entry(1, 10, &[(1, 5), (2, 6)]), entry(2, 20, &[(1, 7)])]);
        assert_eq!(net[&1], (7, 10, 20));
        assert_eq!(net[&2], (6, 10, 10));
    }
}
