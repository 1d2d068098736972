//! The peers' load: pgbench with custom scripts equivalent to our two workloads, and its
//! per-transaction log for the latency percentiles.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::load::{new_histogram, Outcome, Workload, ACCOUNTS};
use crate::procs::{PgServer, Workspace};

/// The table the agents create, and the peers get the same.
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS bank_balance (\
    account_number BIGINT PRIMARY KEY, balance BIGINT NOT NULL, created_at BIGINT, updated_at BIGINT)";

/// Two different random accounts, in order (so that two transactions never lock the same two
/// rows in opposite orders), and two balances.
fn accounts_prelude() -> String {
    format!(
        "\\set a random(1, {ACCOUNTS})\n\
         \\set d random(1, {})\n\
         \\set b 1 + (:a - 1 + :d) % {ACCOUNTS}\n\
         \\set lo least(:a, :b)\n\
         \\set hi greatest(:a, :b)\n\
         \\set x random(0, 999999)\n\
         \\set y random(0, 999999)\n",
        ACCOUNTS - 1
    )
}

/// What the agent runs for a write set of two (one upsert statement), with a commit timestamp.
const UPSERT: &str = "INSERT INTO bank_balance (account_number, balance, created_at, updated_at) \
    SELECT v.k, v.b, t.ts, t.ts FROM (VALUES (:lo, :x), (:hi, :y)) AS v(k, b), \
    (SELECT (extract(epoch FROM clock_timestamp()) * 1000000000)::bigint AS ts) AS t \
    ON CONFLICT (account_number) DO UPDATE SET balance = EXCLUDED.balance, updated_at = EXCLUDED.updated_at;\n";

pub fn script(workload: Workload) -> String {
    match workload {
        // One statement: one transaction, one commit flush.
        Workload::Blind => format!("{}{UPSERT}", accounts_prelude()),
        // The same guarantee as ours: serializable. A serialization failure is counted as an abort.
        Workload::ReadCommit => format!(
            "{}BEGIN ISOLATION LEVEL SERIALIZABLE;\n\
             SELECT account_number, balance, updated_at FROM bank_balance WHERE account_number IN (:lo, :hi);\n\
             {UPSERT}END;\n",
            accounts_prelude()
        ),
    }
}

/// Writes both scripts into `dir`; returns their paths by workload.
pub fn write_scripts(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let blind = dir.join("blind.sql");
    let rc = dir.join("read_commit.sql");
    fs::write(&blind, script(Workload::Blind))?;
    fs::write(&rc, script(Workload::ReadCommit))?;
    Ok((blind, rc))
}

/// pgbench's own numbers from its summary.
struct Summary {
    tps: Option<f64>,
    failed: u64,
}

fn parse_summary(stdout: &str) -> Summary {
    let mut s = Summary { tps: None, failed: 0 };
    for line in stdout.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("tps = ") {
            // "tps = 1234.5 (without initial connection time)"
            if line.contains("without initial connection time") {
                s.tps = rest.split_whitespace().next().and_then(|x| x.parse().ok());
            }
        } else if let Some(rest) = line.strip_prefix("number of failed transactions:") {
            s.failed = rest.split_whitespace().next().and_then(|x| x.parse().ok()).unwrap_or(0);
        }
    }
    s
}

/// Runs pgbench with `script` against `server`; returns what it measured, its throughput and
/// the CPU seconds it used (pgbench is a waited-for child of this process).
pub async fn run(
    ws: &Workspace,
    server: &PgServer,
    script: &Path,
    clients: usize,
    duration: Duration,
    log_dir: &Path,
    tag: &str,
) -> Result<(Outcome, f64, f64)> {
    let prefix = log_dir.join(tag);
    let threads = clients.min(2);
    let args: Vec<String> = vec![
        "-n".into(),
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        server.port.to_string(),
        "-U".into(),
        "postgres".into(),
        "-c".into(),
        clients.to_string(),
        "-j".into(),
        threads.to_string(),
        "-T".into(),
        duration.as_secs().max(1).to_string(),
        "-f".into(),
        script.to_str().context("path")?.into(),
        "-l".into(),
        format!("--log-prefix={}", prefix.display()),
        "postgres".into(),
    ];
    let cpu_before = crate::stats::children_cpu_s();
    let out = ws
        .pg_command_async("pgbench")
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .context("run pgbench")?;
    let cpu = crate::stats::children_cpu_s() - cpu_before;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("pgbench {} failed: {}\n{stdout}\n{}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr));
    }
    let summary = parse_summary(&stdout);

    // Log lines: client_id transaction_no time script_no time_epoch time_us [...]; time is the
    // latency in microseconds, or a word for a failed transaction.
    let mut hist = new_histogram();
    let mut committed = 0u64;
    let mut failed_in_log = 0u64;
    let name = prefix.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    for entry in fs::read_dir(log_dir)?.filter_map(|e| e.ok()) {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else { continue };
        if !file_name.starts_with(&format!("{name}.")) {
            continue;
        }
        let text = fs::read_to_string(entry.path())?;
        for line in text.lines() {
            match line.split_whitespace().nth(2).map(|t| t.parse::<u64>()) {
                Some(Ok(us)) => {
                    committed += 1;
                    let _ = hist.record(us.max(1));
                }
                Some(Err(_)) => failed_in_log += 1,
                None => {}
            }
        }
        let _ = fs::remove_file(entry.path());
    }
    let failed = summary.failed.max(failed_in_log);
    let outcome =
        Outcome { committed, aborted: failed, errors: 0, first_error: None, elapsed: duration, latency_us: hist };
    // pgbench's own figure leaves out the time to connect; ours connect within microseconds.
    let tps = summary.tps.unwrap_or(committed as f64 / duration.as_secs_f64());
    Ok((outcome, tps, cpu))
}
