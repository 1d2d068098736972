//! The bank workload: transfer clients on the leader, read-only clients on any node.
//!
//! A transfer reads two accounts on the leader, then commits `a -= x, b += x` with the read's
//! timestamp and a fresh `txn_id`, through the harness's [`Follower`]: it follows a 421 to the
//! leader it names, asks the supervisor on a 503 or a dead connection, and retries only with the
//! same `txn_id`. A read-only transaction reads two accounts (or all of them) on a random node.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::{Ack, Cluster, Follower};
use protocol::{Account, Balance, ReadResponse, Role};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::history::{History, Mop, Op, OpType, TxnKind};

/// Timeout of one read-only request.
const READ_TIMEOUT: Duration = Duration::from_secs(4);

/// Counters for the progress display and the summary.
#[derive(Default)]
pub struct Stats {
    pub attempted: AtomicU64,
    pub committed: AtomicU64,
    pub indeterminate: AtomicU64,
    /// Transfers whose read no leader served (nothing was sent to commit).
    pub read_unavailable: AtomicU64,
    pub aborted: Mutex<BTreeMap<String, u64>>,
    pub ro_ok: AtomicU64,
    pub ro_failed: AtomicU64,
    pub ro_info: AtomicU64,
    /// Answers the API's rules do not explain (a 500, a body that is not JSON, ...).
    pub surprises: Mutex<Vec<String>>,
}

impl Stats {
    pub fn aborted_total(&self) -> u64 {
        self.aborted.lock().unwrap().values().sum()
    }
}

fn role_name(role: Role) -> String {
    serde_json::to_value(role).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_else(|| format!("{role:?}"))
}

fn read_fields(op: &mut Op, r: &ReadResponse) {
    op.read_lsn = Some(r.lsn);
    op.read_ts = Some(r.timestamp);
    op.node = Some(r.node.clone());
    op.role = Some(role_name(r.role));
}

/// The initial deposit: every account gets `balance`, as one blind write. Retried (same
/// `txn_id`) until it commits.
pub async fn deposit(
    c: &Cluster,
    history: &History,
    process: u64,
    accounts: Account,
    balance: Balance,
) -> anyhow::Result<()> {
    let id = Uuid::new_v4();
    let writes: Vec<Mop> = (1..=accounts).map(|k| Mop::Write(k, Some(balance))).collect();
    let mut invoke = Op::new(OpType::Invoke, process, TxnKind::Init, writes.clone());
    invoke.txn_id = Some(id);
    history.record(invoke);
    let write_set: serde_json::Map<String, serde_json::Value> =
        (1..=accounts).map(|k| (k.to_string(), json!(balance))).collect();
    let mut follower = Follower::new(c, c.initial_leader());
    for _ in 0..5 {
        let sent = follower.commit(json!({"write_set": write_set, "txn_id": id})).await;
        let mut done = Op::new(OpType::Ok, process, TxnKind::Init, writes.clone());
        done.txn_id = Some(id);
        match sent.ack {
            Ack::Commit { lsn, commit_ts } => {
                done.lsn = Some(lsn);
                done.commit_ts = Some(commit_ts);
                history.record(done);
                return Ok(());
            }
            Ack::Abort { status, reason } => {
                done.kind = OpType::Fail;
                done.error = Some(format!("HTTP {status}: {reason}"));
                history.record(done);
                anyhow::bail!("the initial deposit was aborted: HTTP {status}: {reason}");
            }
            Ack::Indeterminate { .. } => continue,
        }
    }
    anyhow::bail!("the initial deposit did not commit: no leader answered")
}

/// One transfer client, until `stop`.
pub async fn transfer_client(
    c: Arc<Cluster>,
    history: Arc<History>,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    process: u64,
    seed: u64,
    accounts: Account,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut follower = Follower::new(&c, c.initial_leader());
    while !stop.load(Ordering::SeqCst) {
        let a = rng.random_range(1..=accounts);
        let b = loop {
            let b = rng.random_range(1..=accounts);
            if b != a {
                break b;
            }
        };
        let amount: Balance = rng.random_range(1..=100);
        let id = Uuid::new_v4();
        stats.attempted.fetch_add(1, Ordering::Relaxed);
        let mut invoke = Op::new(
            OpType::Invoke,
            process,
            TxnKind::Transfer,
            vec![Mop::Read(a, None), Mop::Read(b, None), Mop::Write(a, None), Mop::Write(b, None)],
        );
        invoke.txn_id = Some(id);
        let invoke = history.record(invoke);

        let read = follower.read(&[a, b]).await;
        let read = match read {
            Ok(r) => r,
            Err(e) => {
                // Nothing was sent to commit: certainly no effect.
                let mut done = invoke.clone();
                done.kind = OpType::Fail;
                done.error = Some(format!("read_unavailable: {e}"));
                history.record(done);
                stats.read_unavailable.fetch_add(1, Ordering::Relaxed);
                stats.surprises.lock().unwrap().append(&mut follower.surprises);
                continue;
            }
        };
        let (Some(&va), Some(&vb)) = (read.values.get(&a), read.values.get(&b)) else {
            // The checker flags this read against the log; nothing to commit.
            let mut done = invoke.clone();
            done.kind = OpType::Fail;
            done.value = vec![Mop::Read(a, read.values.get(&a).copied()), Mop::Read(b, read.values.get(&b).copied())];
            done.error = Some("account_missing: the read did not return both accounts".into());
            read_fields(&mut done, &read);
            history.record(done);
            continue;
        };
        let value = vec![
            Mop::Read(a, Some(va)),
            Mop::Read(b, Some(vb)),
            Mop::Write(a, Some(va - amount)),
            Mop::Write(b, Some(vb + amount)),
        ];
        let transaction = json!({
            "read_set": [a, b],
            "write_set": {a.to_string(): va - amount, b.to_string(): vb + amount},
            "time_stamp": read.timestamp,
            "txn_id": id,
        });
        let sent = follower.commit(transaction).await;
        let mut done = Op::new(OpType::Ok, process, TxnKind::Transfer, value);
        done.txn_id = Some(id);
        read_fields(&mut done, &read);
        match sent.ack {
            Ack::Commit { lsn, commit_ts } => {
                done.lsn = Some(lsn);
                done.commit_ts = Some(commit_ts);
                stats.committed.fetch_add(1, Ordering::Relaxed);
            }
            Ack::Abort { status, reason } => {
                done.kind = OpType::Fail;
                done.error = Some(format!("{reason} (HTTP {status})"));
                *stats.aborted.lock().unwrap().entry(reason).or_default() += 1;
            }
            Ack::Indeterminate { last_error } => {
                done.kind = OpType::Info;
                done.error = Some(format!("indeterminate after {} attempts: {last_error}", sent.attempts));
                stats.indeterminate.fetch_add(1, Ordering::Relaxed);
            }
        }
        history.record(done);
        stats.surprises.lock().unwrap().append(&mut follower.surprises);
    }
}

/// One read-only client, until `stop`: reads on a random node (any role).
pub async fn read_client(
    c: Arc<Cluster>,
    history: Arc<History>,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    process: u64,
    seed: u64,
    accounts: Account,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::SeqCst) {
        let node = rng.random_range(0..c.len());
        let keys: Vec<Account> = if rng.random_bool(0.3) {
            (1..=accounts).collect()
        } else {
            let a = rng.random_range(1..=accounts);
            let b = loop {
                let b = rng.random_range(1..=accounts);
                if b != a {
                    break b;
                }
            };
            vec![a, b]
        };
        let invoke = history.record(Op::new(
            OpType::Invoke,
            process,
            TxnKind::ReadOnly,
            keys.iter().map(|&k| Mop::Read(k, None)).collect(),
        ));
        let body = json!({"transaction": {"read_set": keys, "write_set": {}}});
        let sent = c.http().post(format!("{}/read/", c.url(node))).json(&body).timeout(READ_TIMEOUT).send().await;
        let mut done = invoke.clone();
        match sent {
            Ok(resp) if resp.status() == StatusCode::OK => match resp.json::<ReadResponse>().await {
                Ok(r) => {
                    done.kind = OpType::Ok;
                    done.value = keys.iter().map(|&k| Mop::Read(k, r.values.get(&k).copied())).collect();
                    read_fields(&mut done, &r);
                    stats.ro_ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    done.kind = OpType::Info;
                    done.error = Some(format!("node{node}: the answer was lost or is not a read answer: {e}"));
                    stats.ro_info.fetch_add(1, Ordering::Relaxed);
                }
            },
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                done.kind = OpType::Fail;
                done.error = Some(format!("node{node}: HTTP {status}: {}", text.chars().take(200).collect::<String>()));
                stats.ro_failed.fetch_add(1, Ordering::Relaxed);
                if status != StatusCode::SERVICE_UNAVAILABLE && status != StatusCode::MISDIRECTED_REQUEST {
                    stats.surprises.lock().unwrap().push(format!("read on node{node}: HTTP {status}: {text}"));
                }
            }
            Err(e) => {
                done.kind = OpType::Info;
                done.error = Some(format!("node{node}: {e}"));
                stats.ro_info.fetch_add(1, Ordering::Relaxed);
            }
        }
        history.record(done);
        tokio::time::sleep(Duration::from_millis(rng.random_range(10..=40))).await;
    }
}
