//! A bounded recovery log (`--retain-log`), seen from outside: each node's log stays near its
//! bound, paging below the horizon answers 410 with it, a retry the log can no longer recognise
//! is refused rather than run twice, and a node that was down while its missing entries were
//! trimmed is rebuilt from the leader's snapshot by the supervisor alone, with no data lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::{Cluster, ClusterOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

/// The smallest bound the agent accepts.
const RETAIN: i64 = 4_096;
/// Accounts the writers spread over.
const ACCOUNTS: i64 = 200;

fn options() -> ClusterOptions {
    let mut options = ClusterOptions::supervised(3);
    options.agent_args =
        ["--retain-log", &RETAIN.to_string(), "--retain-log-secs", "0"].iter().map(|s| s.to_string()).collect();
    options
}

/// Commits `count` blind writes at `leader`, 16 at a time.
async fn write_many(c: &Arc<Cluster>, leader: usize, count: i64) {
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut i = w;
                while i < count {
                    let account = 1 + i % ACCOUNTS;
                    let (code, body) =
                        c.commit(leader, json!({"transaction": {"write_set": {account.to_string(): i}}})).await;
                    assert_eq!(code, StatusCode::OK, "commit {i}: {body}");
                    i += 16;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("a writer panicked");
    }
}

/// Waits until every node's log holds at most `RETAIN` entries plus what a trim leaves.
async fn wait_trimmed(c: &Cluster, nodes: &[usize]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut all = Vec::new();
        for &i in nodes {
            all.push(c.log_bounds(i).await);
        }
        if all.iter().all(|&(first, _, count)| first > 1 && count <= RETAIN) {
            return;
        }
        assert!(Instant::now() < deadline, "the logs were not trimmed to {RETAIN} entries: {all:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_the_log_no_longer_reaches_is_rebuilt_from_a_snapshot() {
    let c = Arc::new(Cluster::start_with(options()).await);
    // Every account once, and a read whose timestamp will be older than the trimmed log.
    let all: serde_json::Map<String, Value> = (1..=ACCOUNTS).map(|k| (k.to_string(), json!(100))).collect();
    let (code, body) = c.commit(0, json!({"transaction": {"write_set": all}})).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let old_read = c.read(0, &[1]).await;

    // Node 2 goes down; the others commit well past the bound and trim.
    // (The first commits wait until the leader reports it and the supervisor removes it.)
    c.kill_agent(2);
    write_many(&c, 0, 3_000).await;
    c.wait_supervisor("it removed the dead node", Duration::from_secs(10), |s| {
        s["members"].as_array().is_some_and(|m| m.len() == 2)
    })
    .await;
    let history = c.log(0).await;
    let then = history.last().map_or(0, |e| e.lsn);
    write_many(&c, 0, 3_000).await;
    wait_trimmed(&c, &[0, 1]).await;
    let (first, last, _) = c.log_bounds(0).await;
    assert!(first > 1 && first <= then, "the test wants LSN {then} inside the trimmed log ({first}..{last})");

    // A read at a past LSN the log still reaches: the base the trimmed entries were folded
    // into, plus the log after it, give the accounts exactly as the whole log did then.
    let accounts: Vec<i64> = (1..=ACCOUNTS).collect();
    let expected: Vec<(i64, i64)> = e2e::replay(&history).iter().map(|r| (r.0, r.1)).collect();
    let (code, body) = c.read_json(1, json!({"transaction": {"read_set": accounts}, "as_of_lsn": then})).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let read: protocol::ReadResponse = serde_json::from_value(body).expect("a ReadResponse");
    assert_eq!(read.lsn, then);
    assert_eq!(read.timestamp, history.last().map_or(0, |e| e.commit_ts));
    assert_eq!(read.values.into_iter().collect::<Vec<_>>(), expected, "as_of_lsn {then} on node 1");
    // Below the horizon: 410 with it.
    let (code, body) = c.read_json(0, json!({"transaction": {"read_set": [1]}, "as_of_lsn": first - 1})).await;
    assert_eq!((code, body["horizon"].as_i64()), (StatusCode::GONE, Some(first - 1)), "{body}");

    // Paging below the horizon: 410 with the horizon.
    let (code, body) = c.get(0, "/replication_log/?after=0").await;
    assert_eq!(code, StatusCode::GONE, "{body}");
    assert_eq!((body["error"].as_str(), body["horizon"].as_i64()), (Some("log_trimmed"), Some(first - 1)), "{body}");
    let page = c.replication_log(0, first - 1, Some(2)).await;
    assert_eq!(page.entries.first().map(|e| e.lsn), Some(first), "paging from the horizon works");

    // A txn_id the log does not hold with a time_stamp older than the log: it may be a retry of
    // a trimmed transaction, so it is refused, and nothing changes.
    let before = c.table(0).await;
    let retry = json!({"transaction": {"read_set": [1], "write_set": {"1": 7}, "time_stamp": old_read.timestamp,
        "txn_id": Uuid::new_v4()}});
    let (code, body) = c.commit(0, retry).await;
    assert_eq!((code, body["error"].as_str()), (StatusCode::GONE, Some("log_trimmed")), "{body}");
    assert_eq!(c.table(0).await, before, "a refused retry changed the table");

    // The snapshot the leader serves: its header names the last entry, then one row per account.
    let raw = c.get_raw(0, "/internal/snapshot").await;
    assert_eq!(raw.status, StatusCode::OK, "{}", raw.body);
    let mut lines = raw.body.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap_or_default()).expect("a JSON header line");
    assert!(header["base"]["lsn"].as_i64() >= Some(last), "{header}");
    assert_eq!(lines.count() as i64, ACCOUNTS, "one COPY line per account");

    // Node 2 returns: its next entry is gone from every log, so the supervisor empties it and
    // it loads the leader's snapshot, then replays the tail, while commits go on.
    c.start_agent(2).await;
    let more = {
        let c = c.clone();
        tokio::spawn(async move { write_many(&c, 0, 300).await })
    };
    c.wait_member(2).await;
    more.await.expect("the writers during the rebuild");
    let s = c.supervisor_status().await;
    let report = s["recoveries"]
        .as_array()
        .and_then(|r| r.iter().rev().find(|r| r["node"] == json!(c.node(2).address()) && r["ok"] == json!(true)))
        .unwrap_or_else(|| panic!("no successful recovery of node 2: {s}"))
        .clone();
    assert!(report["snapshot_lsn"].as_i64().is_some_and(|lsn| lsn >= last), "not rebuilt from a snapshot: {report}");
    assert!(
        s["events"].to_string().contains("rebuild it from a snapshot"),
        "the history does not tell of the rebuild: {}",
        s["events"]
    );
    // The leader kept the log after the snapshot for the rebuild; once the node joined it trims
    // to the bound again.
    write_many(&c, 0, 100).await;
    wait_trimmed(&c, &[0, 1, 2]).await;
    let converged = c.assert_converged().await;
    assert_eq!(converged.table.len() as i64, ACCOUNTS);
    let (first2, _, _) = c.log_bounds(2).await;
    assert!(first2 > 1, "node 2's log starts at the snapshot, not at LSN 1");
    // A rebuilt node serves reads like the others, at its snapshot's LSN too.
    let read = c.read(2, &[1, 2]).await;
    assert_eq!(read.values.len(), 2);
    let at = report["snapshot_lsn"].clone();
    let (code, on_2) = c.read_json(2, json!({"transaction": {"read_set": [1, 2, 3]}, "as_of_lsn": at})).await;
    assert_eq!(code, StatusCode::OK, "{on_2}");
    let (_, on_0) = c.read_json(0, json!({"transaction": {"read_set": [1, 2, 3]}, "as_of_lsn": at})).await;
    assert_eq!((&on_2["values"], &on_2["data"]), (&on_0["values"], &on_0["data"]), "as_of_lsn {at}");
}
