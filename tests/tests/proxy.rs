//! HAProxy in front of the agents, configured as `./setup.sh` configures it with
//! `RMW_PROXY=haproxy` (`e2e::haproxy`): a client that knows only HAProxy's two ports keeps
//! committing and reading across failovers, the `/down_leader/` drill and then the leader's agent
//! killed, and every commit it was told about is there afterwards.
//!
//! Two writers commit blind writes of accounts of their own (account n gets balance n), each
//! with a `txn_id` it chose, and retry the same id until they learn the outcome: a 503 from
//! HAProxy (no server up yet), a 503 or 421 from an agent that no longer leads, or no answer at
//! all say nothing about the outcome. The reader reads through the read port all along.
//! Afterwards:
//! - every acknowledged commit is read back through the read port, and is in every node's log;
//! - the writes and the reads each stopped for less than the failover budget at a time;
//! - `GET /primary` answers 200 on exactly one agent, the supervisor's leader.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::haproxy::Haproxy;
use e2e::{Cluster, ClusterOptions, FAILOVER_TIMEOUT};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

/// One request through HAProxy: what the client waits before it asks again.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);
/// How long the writer keeps retrying one `txn_id` before the test fails.
const COMMIT_BUDGET: Duration = Duration::from_secs(30);
/// The longest the writes (or the reads) may stop through HAProxy: the failover itself, HAProxy's
/// checks (every 200 ms, 2 failures down, 1 success up) and a request that was cut.
const OUTAGE_LIMIT: Duration = FAILOVER_TIMEOUT;

#[derive(Debug, Clone)]
struct Acked {
    account: i64,
    txn_id: Uuid,
    lsn: i64,
    at: Instant,
}

#[derive(Default)]
struct Log {
    acked: Vec<Acked>,
    /// When each read through the read port succeeded.
    reads: Vec<Instant>,
    /// Answers that broke the rules (a conflict on a blind write, a 4xx other than 421).
    wrong: Vec<String>,
}

/// Commits `account = account` with a fresh `txn_id` through the write port, retrying that id
/// until the outcome is known. Returns the commit's LSN, or `None` for an ABORT (a member
/// refused: nothing was applied, and the client may send the write again under a new id).
async fn commit(http: &reqwest::Client, url: &str, account: i64, log: &Mutex<Log>) -> Option<i64> {
    let txn_id = Uuid::new_v4();
    let body = json!({"transaction": {"write_set": {account.to_string(): account}, "txn_id": txn_id}});
    let deadline = Instant::now() + COMMIT_BUDGET;
    let mut last = String::from("no answer");
    loop {
        assert!(
            Instant::now() < deadline,
            "no outcome for txn {txn_id} through HAProxy within {COMMIT_BUDGET:?}; the last answer: {last}"
        );
        if let Ok(response) = http.post(format!("{url}/commit/")).json(&body).send().await {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            last = format!("{status} {text}");
            match (status, answer["commit"].as_str()) {
                (StatusCode::OK, Some("COMMIT")) => {
                    let lsn = answer["lsn"].as_i64().unwrap_or_else(|| panic!("a COMMIT without lsn: {answer}"));
                    assert_eq!(answer["txn_id"], json!(txn_id), "{answer}");
                    log.lock().unwrap().acked.push(Acked { account, txn_id, lsn, at: Instant::now() });
                    return Some(lsn);
                }
                // A member refused or too few answer: final, nothing applied.
                (StatusCode::SERVICE_UNAVAILABLE, Some("ABORT")) => return None,
                // HAProxy with no server up, an agent deposed or not serving, or one that no
                // longer leads: the outcome is unknown, ask again with the same id.
                (StatusCode::SERVICE_UNAVAILABLE | StatusCode::MISDIRECTED_REQUEST | StatusCode::BAD_GATEWAY, _) => {}
                (StatusCode::GATEWAY_TIMEOUT, _) => {}
                _ => log.lock().unwrap().wrong.push(format!("commit {txn_id}: {status} {answer}")),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The longest time between two consecutive instants of `times` (and from `start`, to `end`).
fn longest_gap(start: Instant, times: &[Instant], end: Instant) -> Duration {
    let mut all: Vec<Instant> = times.to_vec();
    all.sort();
    let mut previous = start;
    let mut longest = Duration::ZERO;
    for t in all.into_iter().chain([end]) {
        longest = longest.max(t.saturating_duration_since(previous));
        previous = t;
    }
    longest
}

/// Which agents answer `GET /primary` with 200.
async fn primaries(c: &Cluster) -> Vec<usize> {
    let mut found = Vec::new();
    for i in 0..c.len() {
        if let Ok(r) = c.http().get(format!("{}/primary", c.url(i))).send().await {
            if r.status() == StatusCode::OK {
                found.push(i);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_and_reads_through_haproxy_survive_failovers() {
    through_haproxy_across_failovers(2).await;
}

/// The same with one writer alone: after the leader's agent is killed, its retry of a
/// transaction the new leader committed while settling the old leader's batch must be answered
/// by the new leader itself, without another client's commit to make it run a round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_writer_through_haproxy_survives_failovers() {
    through_haproxy_across_failovers(1).await;
}

async fn through_haproxy_across_failovers(writers: i64) {
    let c = Cluster::start_with(ClusterOptions::supervised(3)).await;
    let proxy = Haproxy::start(&c);
    proxy.wait_writable().await;
    let http = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().expect("an HTTP client");
    let log = Arc::new(Mutex::new(Log::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();

    // The writers: each one commit after the other, each a new account (writer w writes the
    // accounts w, w + writers, ...).
    let writers: Vec<_> = (1..=writers)
        .map(|first| {
            let (http, url, log, stop) = (http.clone(), proxy.write_url(), log.clone(), stop.clone());
            tokio::spawn(async move {
                let mut account = first;
                while !stop.load(Ordering::SeqCst) {
                    if commit(&http, &url, account, &log).await.is_some() {
                        account += writers;
                    }
                }
            })
        })
        .collect();
    // The reader: reads two accounts through the read port, again and again.
    let reader = {
        let (http, url, log, stop) = (http.clone(), proxy.read_url(), log.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let body = json!({"transaction": {"read_set": [1, 2], "write_set": {}}});
                if let Ok(r) = http.post(format!("{url}/read/")).json(&body).send().await {
                    if r.status() == StatusCode::OK {
                        log.lock().unwrap().reads.push(Instant::now());
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let acked = |log: &Mutex<Log>| log.lock().unwrap().acked.len();
    let wait_more_commits = |n: usize| {
        let log = log.clone();
        async move {
            let target = acked(&log) + n;
            let deadline = Instant::now() + OUTAGE_LIMIT * 2;
            while acked(&log) < target {
                assert!(Instant::now() < deadline, "fewer than {n} commits through HAProxy in {:?}", OUTAGE_LIMIT * 2);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_more_commits(20).await;

    // 1. The drill: the leader stops serving; the supervisor elects node 1.
    let (status, answer) = c.down_leader(0).await;
    assert_eq!(status, StatusCode::OK, "{answer:?}");
    let leader = c.wait_leader_change(0).await;
    wait_more_commits(20).await;
    let (status, answer) = c.up_node(0).await;
    assert_eq!(status, StatusCode::OK, "{answer:?}");
    c.wait_member(0).await;
    wait_more_commits(20).await;

    // 2. A real fault: the new leader's agent is killed.
    c.kill_agent(leader);
    let next = c.wait_leader_change(leader).await;
    wait_more_commits(20).await;
    c.start_agent(leader).await;
    c.wait_member(leader).await;
    wait_more_commits(20).await;

    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.expect("a writer");
    }
    reader.await.expect("the reader");
    let ended = Instant::now();
    let log = Arc::try_unwrap(log).ok().expect("the tasks are done").into_inner().unwrap();
    assert!(log.wrong.is_empty(), "answers that break the API's rules:\n{}", log.wrong.join("\n"));

    // The writes and the reads went on through HAProxy, each outage shorter than the budget.
    let commit_times: Vec<Instant> = log.acked.iter().map(|a| a.at).collect();
    let write_gap = longest_gap(started, &commit_times, ended);
    let read_gap = longest_gap(started, &log.reads, ended);
    println!(
        "{} commits and {} reads through HAProxy; longest stop of the writes {write_gap:?}, of the reads {read_gap:?}",
        log.acked.len(),
        log.reads.len()
    );
    assert!(write_gap < OUTAGE_LIMIT, "writes through HAProxy stopped for {write_gap:?}:\n{}", proxy.log(30));
    assert!(read_gap < OUTAGE_LIMIT, "reads through HAProxy stopped for {read_gap:?}:\n{}", proxy.log(30));

    // Every acknowledged commit is read back through the read port, from whichever member
    // HAProxy picks (a replica answers with everything acknowledged).
    let accounts: Vec<i64> = log.acked.iter().map(|a| a.account).collect();
    for chunk in accounts.chunks(500) {
        for _ in 0..3 {
            let r = http
                .post(format!("{}/read/", proxy.read_url()))
                .json(&json!({"transaction": {"read_set": chunk, "write_set": {}}}))
                .send()
                .await
                .expect("a read through HAProxy");
            assert_eq!(r.status(), StatusCode::OK);
            let answer: Value = r.json().await.expect("a JSON read answer");
            for account in chunk {
                assert_eq!(
                    answer["values"][account.to_string()],
                    json!(account),
                    "acknowledged account {account} missing from a read through HAProxy by {}: {answer}",
                    answer["node"]
                );
            }
        }
    }

    // And in every node's log, at the LSN the client was given.
    let converged = c.assert_converged().await;
    for a in &log.acked {
        let entry = converged.log.iter().find(|e| e.lsn == a.lsn).unwrap_or_else(|| panic!("{a:?} is in no log"));
        assert_eq!(entry.txn_id, a.txn_id, "{a:?}: another transaction at its LSN: {entry:?}");
        assert!(entry.is_commit(), "{a:?}: {entry:?}");
    }

    // One agent takes writes: the supervisor's leader.
    let deadline = Instant::now() + OUTAGE_LIMIT;
    loop {
        let found = primaries(&c).await;
        if found == [next] {
            break;
        }
        assert!(Instant::now() < deadline, "GET /primary answers 200 on {found:?}, the leader is {next}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(proxy);
}
