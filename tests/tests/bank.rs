//! A concurrent bank: clients move money between random accounts on the leader while an auditor
//! reads every account on every node. Money is never created or lost, every acknowledged commit
//! is in every node's log at its LSN, no aborted transfer is visible, the log replays to the
//! table, and every transfer read the values that the commit order says it read (serializability).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use e2e::{Cluster, LogRow};
use protocol::{Account, Balance, CommitResponse, Lsn, Outcome, Timestamp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

const ACCOUNTS: Account = 20;
const INITIAL_BALANCE: Balance = 1_000;
const TOTAL: Balance = ACCOUNTS * INITIAL_BALANCE;
const CLIENTS: u64 = 8;
const TRANSACTIONS: usize = 2_000;
/// A workload that has not finished by then is stuck.
const WORKLOAD_LIMIT: Duration = Duration::from_secs(600);

/// An acknowledged transfer and what its read saw.
#[derive(Debug)]
struct Committed {
    txn_id: Uuid,
    lsn: Lsn,
    commit_ts: Timestamp,
    read: [(Account, Balance); 2],
}

#[derive(Debug, Default)]
struct ClientTally {
    committed: Vec<Committed>,
    aborted: Vec<(Uuid, String)>,
}

async fn client(c: &Cluster, id: u64, seed: u64, attempts: &AtomicUsize) -> ClientTally {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(id));
    let mut tally = ClientTally::default();
    while attempts.fetch_add(1, Ordering::SeqCst) < TRANSACTIONS {
        let a = rng.random_range(1..=ACCOUNTS);
        let b = loop {
            let b = rng.random_range(1..=ACCOUNTS);
            if b != a {
                break b;
            }
        };
        let read = c.read(0, &[a, b]).await;
        let balance = |account: Account| -> Balance {
            *read.values.get(&account).unwrap_or_else(|| panic!("account {account} missing from {read:?}"))
        };
        let (va, vb) = (balance(a), balance(b));
        let amount: Balance = rng.random_range(1..=100);
        let txn_id = Uuid::new_v4();
        let body = json!({"transaction": {
            "read_set": [a, b],
            "write_set": {a.to_string(): va - amount, b.to_string(): vb + amount},
            "time_stamp": read.timestamp,
            "txn_id": txn_id,
        }});
        let (status, answer) = c.commit(0, body.clone()).await;
        let r: CommitResponse = serde_json::from_value(answer.clone())
            .unwrap_or_else(|e| panic!("commit {body}: HTTP {status}, not a commit answer ({e}): {answer}"));
        assert_eq!(r.txn_id, txn_id, "{answer}");
        match status {
            StatusCode::OK => {
                assert_eq!(r.commit, Outcome::Commit, "{answer}");
                tally.committed.push(Committed {
                    txn_id,
                    lsn: r.lsn.unwrap_or_else(|| panic!("a commit without lsn: {answer}")),
                    commit_ts: r.commit_ts.unwrap_or_else(|| panic!("a commit without commit_ts: {answer}")),
                    read: [(a, va), (b, vb)],
                });
            }
            StatusCode::CONFLICT => {
                assert_eq!(r.commit, Outcome::Abort, "{answer}");
                let reason = answer["reason"].as_str().unwrap_or_else(|| panic!("an abort without reason: {answer}"));
                assert!(
                    reason == "stale_read" || reason == "key_locked",
                    "a conflict abort in a healthy cluster is stale_read or key_locked: {answer}"
                );
                assert!(
                    r.key == Some(a) || r.key == Some(b),
                    "the abort names one of the accounts read ({a}, {b}): {answer}"
                );
                tally.aborted.push((txn_id, reason.to_owned()));
            }
            other => {
                panic!("commit {body}: HTTP {other} is neither a commit nor a conflict: {answer}")
            }
        }
    }
    tally
}

/// Reads every account on every node, over and over, until `done`: each read is one snapshot, so
/// the balances must always add up. Returns the number of audits.
async fn auditor(c: &Cluster, done: &AtomicBool) -> usize {
    let all: Vec<Account> = (1..=ACCOUNTS).collect();
    let mut audits = 0;
    while !done.load(Ordering::SeqCst) {
        let node = audits % c.len();
        let r = c.read(node, &all).await;
        assert_eq!(r.values.len(), ACCOUNTS as usize, "node {node} lost an account: {r:?}");
        let sum: Balance = r.values.values().sum();
        assert_eq!(sum, TOTAL, "node {node} at lsn {}: balances add up to {sum}: {r:?}", r.lsn);
        audits += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    audits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_keep_the_bank_consistent() {
    let seed: u64 = std::env::var("RMW_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("bank workload seed: {seed} (set RMW_SEED to repeat it)");

    let c = Cluster::start(3).await;
    let init = c.write(0, &(1..=ACCOUNTS).map(|a| (a, INITIAL_BALANCE)).collect::<Vec<_>>()).await;
    assert_eq!(init.lsn, Some(1));

    let attempts = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    let started = Instant::now();
    let workload = async {
        let clients = futures::future::join_all((0..CLIENTS).map(|id| client(&c, id, seed, &attempts)));
        let audit = auditor(&c, &done);
        let clients = async {
            let tallies = clients.await;
            done.store(true, Ordering::SeqCst);
            tallies
        };
        futures::join!(clients, audit)
    };
    let (tallies, audits) = tokio::time::timeout(WORKLOAD_LIMIT, workload)
        .await
        .unwrap_or_else(|_| panic!("the workload did not finish in {WORKLOAD_LIMIT:?}"));
    let elapsed = started.elapsed();

    let (mut committed, mut aborted) = (Vec::new(), Vec::new());
    for tally in tallies {
        committed.extend(tally.committed);
        aborted.extend(tally.aborted);
    }
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, reason) in &aborted {
        *reasons.entry(reason.as_str()).or_default() += 1;
    }
    println!(
        "{} transactions in {elapsed:.1?}: {} committed, {} aborted {reasons:?}, {audits} audits",
        committed.len() + aborted.len(),
        committed.len(),
        aborted.len()
    );
    assert_eq!(committed.len() + aborted.len(), TRANSACTIONS);
    assert!(!committed.is_empty(), "no transfer committed");

    // Every node: identical table and log, dense LSNs, increasing commit_ts, log replays to table.
    let converged = c.assert_converged().await;
    for i in 0..c.len() {
        let table = c.table(i).await;
        assert_eq!(table.len(), ACCOUNTS as usize, "node {i}");
        let sum: Balance = table.iter().map(|row| row.1).sum();
        assert_eq!(sum, TOTAL, "node {i}: balances add up to {sum}");
    }
    let log = &converged.log;
    // A conflict's ABORT is final: the log records it (writing nothing) before the client hears
    // 409. Other aborts (503) applied nothing and left no entry.
    let final_aborts: HashSet<Uuid> = aborted
        .iter()
        .filter(|(_, reason)| reason == "stale_read" || reason == "key_locked")
        .map(|(id, _)| *id)
        .collect();
    let commits: Vec<&LogRow> = log.iter().filter(|e| e.is_commit()).collect();
    assert_eq!(commits.len(), 1 + committed.len(), "commits in the log = the initial write + acknowledged commits");
    assert_eq!(log.len(), commits.len() + final_aborts.len(), "every 409 ABORT is recorded in the log, once");
    assert_eq!(log[0].txn_id, init.txn_id);

    // Each acknowledged commit is in every node's log, at the acknowledged LSN and timestamp.
    for i in 0..c.len() {
        let node_log = c.log(i).await;
        let by_txn: HashMap<Uuid, &LogRow> = node_log.iter().map(|e| (e.txn_id, e)).collect();
        for ack in &committed {
            let entry = by_txn
                .get(&ack.txn_id)
                .unwrap_or_else(|| panic!("node {i}: acknowledged commit {ack:?} is not in the log"));
            assert_eq!((entry.lsn, entry.commit_ts), (ack.lsn, ack.commit_ts), "node {i}: {ack:?}");
        }
        let aborted_ids: HashSet<Uuid> = aborted.iter().map(|(id, _)| *id).collect();
        if let Some(e) = node_log.iter().find(|e| e.is_commit() && aborted_ids.contains(&e.txn_id)) {
            panic!("node {i}: an aborted transfer is in the log as a commit: {e:?}");
        }
        for e in node_log.iter().filter(|e| !e.is_commit()) {
            assert!(final_aborts.contains(&e.txn_id), "node {i}: an abort record for a txn not answered 409: {e:?}");
            assert!(e.writes().is_empty(), "node {i}: an abort record with writes: {e:?}");
        }
    }

    // Replaying the log in LSN order, every transfer read exactly the balances current at its
    // place in that order, and moved money between its two accounts without creating any.
    let reads: HashMap<Uuid, &Committed> = committed.iter().map(|c| (c.txn_id, c)).collect();
    let mut state: BTreeMap<Account, Balance> = BTreeMap::new();
    for entry in log.iter().filter(|e| e.is_commit()) {
        let writes = entry.writes();
        if let Some(ack) = reads.get(&entry.txn_id) {
            for (account, balance) in ack.read {
                assert_eq!(
                    state.get(&account),
                    Some(&balance),
                    "lsn {}: the transfer read account {account} = {balance}, but in commit order it held {:?}",
                    entry.lsn,
                    state.get(&account)
                );
            }
            let mut read_set = entry.reads();
            read_set.sort_unstable();
            let mut expected: Vec<Account> = ack.read.iter().map(|(a, _)| *a).collect();
            expected.sort_unstable();
            assert_eq!(read_set, expected, "lsn {}: read_set in the log", entry.lsn);
            let before: Balance = ack.read.iter().map(|(_, b)| b).sum();
            let after: Balance = writes.values().sum();
            assert_eq!(before, after, "lsn {}: a transfer changed the total", entry.lsn);
        }
        state.extend(writes);
    }

    // The leader's /replication_log/, paged, is the same log.
    let mut from_api = Vec::new();
    let mut after = 0;
    loop {
        let page = c.replication_log(0, after, Some(500)).await;
        assert!(page.entries.len() <= 500, "a page longer than its limit");
        from_api.extend(page.entries.iter().cloned());
        match page.entries.last() {
            Some(last) if page.more => after = last.lsn,
            _ => break,
        }
    }
    assert_eq!(from_api.len(), log.len(), "/replication_log/ and recovery_log disagree on length");
    for (api, db) in from_api.iter().zip(log) {
        assert_eq!(api.aborted.is_some(), db.aborted.is_some(), "lsn {}: the abort record differs", api.lsn);
    }
    for (api, db) in from_api.iter().zip(log) {
        assert_eq!(
            (api.lsn, api.term, api.txn_id, api.commit_ts, &api.write_set),
            (db.lsn, db.term, db.txn_id, db.commit_ts, &db.writes()),
            "/replication_log/ and recovery_log disagree"
        );
    }
}
