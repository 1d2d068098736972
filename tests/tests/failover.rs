//! Failover and recovery with a supervisor, as users meet them: the `/down_leader/` and
//! `/up_node/` drills, and real faults (SIGKILL of an agent, an immediate stop of PostgreSQL,
//! SIGSTOP of the leader, the supervisor killed while it fails over) under a bank workload of
//! clients that follow the leader and retry with the same `txn_id`.
//!
//! What every fault test checks when the faults have healed: the money adds up on every node,
//! every acknowledged COMMIT is in every node's log (at the LSN and timestamp the client was
//! given), no acknowledged ABORT is in any log, nothing is in a log that no client sent, every
//! client learned the outcome of every transaction, no answer broke the API's status-code rules,
//! and all nodes converge (identical tables and logs, the log replays to the table, terms never
//! go back along the log).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use e2e::{Ack, Cluster, ClusterOptions, Follower, LeaderChangedListener, Sent};
use protocol::{Account, Balance, Role};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

const ACCOUNTS: Account = 20;
const INITIAL_BALANCE: Balance = 1_000;
const TOTAL: Balance = ACCOUNTS * INITIAL_BALANCE;
/// A fault scenario, workload included, that has not finished by then is stuck.
const SCENARIO_LIMIT: Duration = Duration::from_secs(40);

fn seed() -> u64 {
    let seed = std::env::var("RMW_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("workload seed: {seed} (set RMW_SEED to repeat it)");
    seed
}

fn addr(c: &Cluster, i: usize) -> String {
    c.node(i).address()
}

fn addresses(c: &Cluster, nodes: &[usize]) -> Value {
    json!(nodes.iter().map(|&i| addr(c, i)).collect::<Vec<_>>())
}

fn term_of(status: &Value) -> i64 {
    status["term"].as_i64().unwrap_or_else(|| panic!("the supervisor's status has no term: {status}"))
}

// ---------------------------------------------------------------------------------------------
// The bank workload

/// What one client did.
#[derive(Debug, Default)]
struct Tally {
    sent: Vec<Sent>,
    surprises: Vec<String>,
    redirects: u32,
    retries: u32,
}

/// How hard the clients push.
#[derive(Debug, Clone, Copy)]
struct Load {
    clients: u64,
    /// Pause between one client's transactions.
    think: Duration,
}

const HEAVY: Load = Load { clients: 8, think: Duration::ZERO };
const LIGHT: Load = Load { clients: 2, think: Duration::from_millis(50) };

/// Writes the initial balances on the first leader; returns that transaction's id.
async fn open_accounts(c: &Cluster) -> Uuid {
    let init = c.write(c.initial_leader(), &(1..=ACCOUNTS).map(|a| (a, INITIAL_BALANCE)).collect::<Vec<_>>()).await;
    init.txn_id
}

/// One client moving money between random accounts through whoever leads, until `stop`.
async fn transfers(c: &Cluster, id: u64, seed: u64, load: Load, stop: &AtomicBool) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(id));
    let mut client = Follower::new(c, c.initial_leader());
    let mut tally = Tally::default();
    while !stop.load(Ordering::SeqCst) {
        let a = rng.random_range(1..=ACCOUNTS);
        let b = loop {
            let b = rng.random_range(1..=ACCOUNTS);
            if b != a {
                break b;
            }
        };
        let read = client
            .read(&[a, b])
            .await
            .unwrap_or_else(|e| panic!("client {id}: no leader served a read within the retry budget: {e}"));
        let balance = |account: Account| -> Balance {
            *read.values.get(&account).unwrap_or_else(|| panic!("account {account} missing from {read:?}"))
        };
        let amount: Balance = rng.random_range(1..=100);
        let sent = client
            .commit(json!({
                "read_set": [a, b],
                "write_set": {a.to_string(): balance(a) - amount, b.to_string(): balance(b) + amount},
                "time_stamp": read.timestamp,
                "txn_id": Uuid::new_v4(),
            }))
            .await;
        tally.sent.push(sent);
        if !load.think.is_zero() {
            tokio::time::sleep(load.think).await;
        }
    }
    tally.surprises = std::mem::take(&mut client.surprises);
    tally.redirects = client.redirects;
    tally.retries = client.retries;
    tally
}

/// Runs `load` against the cluster while `script` injects faults; the clients stop when the
/// script returns. Returns every client's tally and what the script returned.
async fn under_load<T>(c: &Cluster, load: Load, script: impl std::future::Future<Output = T>) -> (Vec<Tally>, T) {
    let seed = seed();
    let stop = AtomicBool::new(false);
    let stop = &stop;
    let clients = futures::future::join_all((0..load.clients).map(|id| transfers(c, id, seed, load, stop)));
    let script = async {
        let out = script.await;
        stop.store(true, Ordering::SeqCst);
        out
    };
    tokio::time::timeout(SCENARIO_LIMIT, async { futures::join!(clients, script) })
        .await
        .unwrap_or_else(|_| panic!("the scenario did not finish within {SCENARIO_LIMIT:?}"))
}

/// What the clients were told, all clients together.
struct Outcomes {
    committed: HashMap<Uuid, (i64, i64)>,
    aborted: HashSet<Uuid>,
    indeterminate: Vec<Sent>,
    /// When each acknowledged commit was acknowledged.
    commit_times: Vec<Instant>,
}

/// Checks everything a user of the bank relies on after the faults healed (see the module
/// docs); `init` is the transaction that opened the accounts.
async fn check_bank(c: &Cluster, tallies: &[Tally], init: Uuid) -> Outcomes {
    let mut outcomes = Outcomes {
        committed: HashMap::new(),
        aborted: HashSet::new(),
        indeterminate: Vec::new(),
        commit_times: vec![],
    };
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let surprises: Vec<&String> = tallies.iter().flat_map(|t| &t.surprises).collect();
    for sent in tallies.iter().flat_map(|t| &t.sent) {
        match &sent.ack {
            Ack::Commit { lsn, commit_ts } => {
                outcomes.committed.insert(sent.txn_id, (*lsn, *commit_ts));
                outcomes.commit_times.push(sent.done_at);
            }
            Ack::Abort { status, reason } => {
                outcomes.aborted.insert(sent.txn_id);
                *reasons.entry(format!("{status} {reason}")).or_default() += 1;
            }
            Ack::Indeterminate { .. } => outcomes.indeterminate.push(sent.clone()),
        }
    }
    println!(
        "clients: {} committed, {} aborted {reasons:?}, {} indeterminate; {} redirects, {} retries",
        outcomes.committed.len(),
        outcomes.aborted.len(),
        outcomes.indeterminate.len(),
        tallies.iter().map(|t| t.redirects).sum::<u32>(),
        tallies.iter().map(|t| t.retries).sum::<u32>(),
    );
    assert!(surprises.is_empty(), "answers that break the API's rules:\n{surprises:#?}");
    assert!(
        outcomes.indeterminate.is_empty(),
        "clients retrying the same txn_id never learned these outcomes: {:#?}",
        outcomes.indeterminate
    );
    assert!(!outcomes.committed.is_empty(), "no transfer committed at all");

    let converged = c.assert_converged().await;
    for i in 0..c.len() {
        let table = c.table(i).await;
        assert_eq!(table.len(), ACCOUNTS as usize, "node {i}: {table:?}");
        let sum: Balance = table.iter().map(|row| row.1).sum();
        assert_eq!(sum, TOTAL, "node {i}: the balances add up to {sum}, not {TOTAL}");

        let log = c.log(i).await;
        let by_txn: HashMap<Uuid, (i64, i64)> = log.iter().map(|e| (e.txn_id, (e.lsn, e.commit_ts))).collect();
        for (txn, acked) in &outcomes.committed {
            let logged =
                by_txn.get(txn).unwrap_or_else(|| panic!("node {i}: acknowledged commit {txn} is not in the log"));
            assert_eq!(
                logged, acked,
                "node {i}: commit {txn} is logged at (lsn, commit_ts) {logged:?}, acknowledged at {acked:?}"
            );
        }
        if let Some(e) = log.iter().find(|e| e.is_commit() && outcomes.aborted.contains(&e.txn_id)) {
            panic!("node {i}: a transaction acknowledged as ABORT is in the log as a commit: {e:?}");
        }
        if let Some(e) =
            log.iter().find(|e| e.is_commit() && e.txn_id != init && !outcomes.committed.contains_key(&e.txn_id))
        {
            panic!("node {i}: the log holds a transaction no client was told committed: {e:?}");
        }
        // A conflict's ABORT is recorded (writing nothing) before its client hears 409.
        if let Some(e) = log.iter().find(|e| !e.is_commit() && !outcomes.aborted.contains(&e.txn_id)) {
            panic!("node {i}: the log records an abort no client was told: {e:?}");
        }
    }
    let commits = converged.log.iter().filter(|e| e.is_commit()).count();
    assert_eq!(commits, 1 + outcomes.committed.len(), "commits in the log = the opening + acknowledged commits");
    outcomes
}

/// Prints the supervisor's account of its last failover and recoveries.
fn print_failover(status: &Value) {
    let f = &status["last_failover"];
    if f.is_null() {
        println!("no failover");
    } else {
        println!(
            "failover {} -> {} (term {}): detection {} ms, election {} ms, writes unavailable {} ms; \
             in doubt: {} committed, {} aborted",
            f["old_leader"],
            f["new_leader"],
            f["term"],
            f["detection_ms"],
            f["election_ms"],
            f["unavailable_ms"],
            f["in_doubt_committed"],
            f["in_doubt_aborted"]
        );
    }
    for r in status["recoveries"].as_array().into_iter().flatten() {
        println!(
            "recovery of {}: ok {}, {} entries in {} ms, commits paused {} ms: {}",
            r["node"], r["ok"], r["entries_applied"], r["duration_ms"], r["commit_pause_ms"], r["message"]
        );
    }
}

/// The supervisor recorded a successful recovery of `node` with a measured commit pause.
fn assert_recovered(c: &Cluster, status: &Value, node: usize) {
    let recoveries = status["recoveries"].as_array().cloned().unwrap_or_default();
    let found = recoveries.iter().any(|r| {
        r["node"].as_str() == Some(addr(c, node).as_str()) && r["ok"] == true && r["commit_pause_ms"].is_u64()
    });
    assert!(found, "no successful recovery of node {node} with a commit pause in {recoveries:#?}");
}

/// Before a fault: the load alone must not have made the supervisor fail over.
async fn assert_still_leads(c: &Cluster, node: usize, term: i64) {
    let s = c.supervisor_status().await;
    assert_eq!(
        (term_of(&s), &s["leader"], &s["members"]),
        (term, &json!(addr(c, node)), &addresses(c, &(0..c.len()).collect::<Vec<_>>())),
        "the supervisor changed the configuration of a healthy cluster under load: {s}"
    );
}

fn acked_between(outcomes: &Outcomes, from: Instant, to: Instant) -> usize {
    outcomes.commit_times.iter().filter(|t| **t > from && **t < to).count()
}

// ---------------------------------------------------------------------------------------------
// The drills

// Found by the failover benchmark with etcd: a new cluster whose first leader died before any
// commit could not elect another (the replicas carried no cluster id yet and counted as
// another cluster's); writes stayed unavailable until the old leader came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_fails_over_before_its_first_commit() {
    let c = Cluster::start_with(ClusterOptions::supervised(3)).await;
    for i in 0..3 {
        assert!(c.status(i).await.cluster_id.is_some(), "node {i} carries the new cluster's id from the start");
    }
    c.kill_agent(0);
    assert_eq!(c.wait_leader_change(0).await, 1, "round-robin: node 1 follows node 0");
    c.write(1, &[(1, 10)]).await;
    c.start_agent(0).await;
    c.wait_member(0).await;
    c.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_leader_fails_over_to_the_next_node_and_up_node_brings_it_back() {
    let c = Cluster::start_with(ClusterOptions::supervised(3)).await;
    let listener = LeaderChangedListener::start_for(&c).await;
    c.register_client(&listener.url()).await;
    let s = c.supervisor_status().await;
    assert!(s["clients"].as_array().is_some_and(|l| l.contains(&json!(listener.url()))), "{s}");
    assert_eq!(s["last_failover"], Value::Null, "{s}");
    let term1 = term_of(&s);
    let w1 = c.write(0, &[(1, 100), (2, 200), (3, 300)]).await;
    c.write(0, &[(2, 201)]).await;

    // The drills on the wrong node answer 409, say so, and change nothing.
    let before = c.snapshot().await;
    for (i, path, role) in
        [(2, "/down_leader/", Role::Replica), (1, "/up_node/", Role::Replica), (0, "/up_node/", Role::Leader)]
    {
        let (code, r) = if path == "/down_leader/" { c.down_leader(i).await } else { c.up_node(i).await };
        assert_eq!(code, StatusCode::CONFLICT, "GET {path} on node {i}: {r:?}");
        assert!(!r.changed, "GET {path} on node {i}: {r:?}");
        assert_eq!(r.role, role, "GET {path} on node {i}: {r:?}");
        assert!(!r.message.is_empty(), "GET {path} on node {i}: {r:?}");
    }
    // Long enough for the supervisor to react, had anything changed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(c.snapshot().await, before, "a refused drill changed data");
    let s = c.supervisor_status().await;
    assert_eq!((term_of(&s), &s["leader"], &s["members"]), (term1, &json!(addr(&c, 0)), &addresses(&c, &[0, 1, 2])));
    for i in 0..3 {
        assert_eq!(c.health(i).await, StatusCode::OK, "node {i} after a refused drill");
    }

    // The drill on the leader: it stops serving everything but /status.
    let (code, r) = c.down_leader(0).await;
    assert_eq!(code, StatusCode::OK, "{r:?}");
    assert!(r.changed && r.role == Role::Down, "{r:?}");
    let (code, again) = c.down_leader(0).await;
    assert_eq!(code, StatusCode::CONFLICT, "down_leader twice: {again:?}");
    assert!(!again.changed && again.role == Role::Down, "{again:?}");
    assert_eq!(c.health(0).await, StatusCode::SERVICE_UNAVAILABLE);
    let (code, answer) = c.read_json(0, json!({"transaction": {"read_set": [1]}})).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "read on a downed node: {answer}");
    assert_eq!(c.status(0).await.role, Role::Down);

    // The supervisor elects the next node in round-robin order, in a higher term.
    let leader = c.wait_leader_change(0).await;
    assert_eq!(leader, 1, "the next member after node 0");
    let s = c.supervisor_status().await;
    let term2 = term_of(&s);
    assert!(term2 > term1, "the failover did not raise the term: {s}");
    assert_eq!(s["members"], addresses(&c, &[1, 2]), "{s}");
    let told = listener.wait_for(Duration::from_secs(5), |b| b["leader"] == json!(addr(&c, 1))).await;
    assert_eq!(told["term"], json!(term2), "the registered client was told {told}");

    // A downed node still refuses; a replica redirects to the new leader.
    let (code, answer) = c.commit(0, json!({"transaction": {"write_set": {"4": 400}}})).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "commit on a downed node: {answer}");
    let (code, answer) = c.commit(2, json!({"transaction": {"write_set": {"4": 400}}})).await;
    assert_eq!(code, StatusCode::MISDIRECTED_REQUEST, "commit on a replica: {answer}");
    assert_eq!((answer["error"].as_str(), answer["leader"].as_str()), (Some("not_leader"), Some(addr(&c, 1).as_str())));

    // A client that starts at either node ends up committing through node 1.
    let mut acknowledged = Vec::new();
    for start in [0, 2] {
        let mut client = Follower::new(&c, start);
        let account = 5 + start as i64;
        let sent = client.commit(json!({"write_set": {account.to_string(): 500 + start}})).await;
        assert!(sent.committed(), "a client starting at node {start}: {sent:?}");
        assert_eq!(sent.node, 1, "a client starting at node {start} committed through node {}", sent.node);
        assert!(client.surprises.is_empty(), "{:?}", client.surprises);
        acknowledged.push(sent.txn_id);
    }
    assert_eq!(c.status(0).await.role, Role::Down, "a downed node stays down until /up_node/");

    // /up_node/: a standby, then recovered and a member again.
    let (code, r) = c.up_node(0).await;
    assert_eq!(code, StatusCode::OK, "{r:?}");
    assert!(r.changed && r.role == Role::Standby, "{r:?}");
    c.wait_member(0).await;
    assert_eq!(c.health(0).await, StatusCode::OK);
    let converged = c.assert_converged().await;
    let values: Vec<(Account, Balance)> = converged.table.iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(
        values,
        vec![(1, 100), (2, 201), (3, 300), (5, 500), (7, 502)],
        "the redirected write to 4 must not apply"
    );
    let logged: Vec<Uuid> = converged.log.iter().map(|e| e.txn_id).collect();
    assert_eq!(logged[0], w1.txn_id);
    assert_eq!(&logged[2..], &acknowledged[..]);
    assert_eq!(c.read(0, &[5]).await.values, [(5, 500)].into(), "node 0 serves what it recovered");

    let s = c.supervisor_status().await;
    print_failover(&s);
    assert_eq!(term_of(&s), term2, "recovery is not a failover: {s}");
    assert_eq!(s["leader"], json!(addr(&c, 1)), "{s}");
    let f = &s["last_failover"];
    assert_eq!(
        (&f["old_leader"], &f["new_leader"], &f["term"]),
        (&json!(addr(&c, 0)), &json!(addr(&c, 1)), &json!(term2))
    );
    assert!(f["unavailable_ms"].is_u64(), "{f}");
    let mut members: Vec<String> = serde_json::from_value(s["members"].clone()).unwrap();
    members.sort();
    let mut all: Vec<String> = (0..3).map(|i| addr(&c, i)).collect();
    all.sort();
    assert_eq!(members, all, "{s}");
    assert_recovered(&c, &s, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_drills_go_round_the_nodes_and_wrap_to_the_first() {
    let c = Cluster::start_with(ClusterOptions::supervised(3)).await;
    c.write(0, &[(1, 10)]).await;
    let mut term = term_of(&c.supervisor_status().await);
    for old in 0..3 {
        let (code, r) = c.down_leader(old).await;
        assert_eq!(code, StatusCode::OK, "down_leader on node {old}: {r:?}");
        let new = c.wait_leader_change(old).await;
        assert_eq!(new, (old + 1) % 3, "round-robin after node {old}");
        let s = c.supervisor_status().await;
        assert!(term_of(&s) > term, "failover {old} -> {new} did not raise the term: {s}");
        term = term_of(&s);

        let mut client = Follower::new(&c, old);
        let sent = client.commit(json!({"write_set": {"1": 11 + old as i64}})).await;
        assert!(sent.committed() && sent.node == new, "{sent:?}");

        let (code, r) = c.up_node(old).await;
        assert_eq!(code, StatusCode::OK, "up_node on node {old}: {r:?}");
        c.wait_member(old).await;
    }
    let converged = c.assert_converged().await;
    assert_eq!(converged.table.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(), vec![(1, 13)]);
    let s = c.supervisor_status().await;
    print_failovers(&s);
    let moves: Vec<(Value, Value)> = s["failovers"]
        .as_array()
        .unwrap_or_else(|| panic!("no failovers list: {s}"))
        .iter()
        .map(|f| (f["old_leader"].clone(), f["new_leader"].clone()))
        .collect();
    let expected: Vec<(Value, Value)> =
        [(0, 1), (1, 2), (2, 0)].iter().map(|&(a, b)| (json!(addr(&c, a)), json!(addr(&c, b)))).collect();
    assert_eq!(moves, expected, "{s}");
    for node in 0..3 {
        assert_recovered(&c, &s, node);
    }
}

fn print_failovers(status: &Value) {
    for f in status["failovers"].as_array().into_iter().flatten() {
        println!(
            "failover {} -> {} (term {}): writes unavailable {} ms",
            f["old_leader"], f["new_leader"], f["term"], f["unavailable_ms"]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Real faults under load

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_load_loses_no_acknowledged_commit() {
    let c = Cluster::start_with(ClusterOptions::supervised(3)).await;
    let init = open_accounts(&c).await;
    let watch = c.watch_leaders();
    let term = term_of(&c.supervisor_status().await);
    let (tallies, (killed_at, elected_at, restarted_at)) = under_load(&c, HEAVY, async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_still_leads(&c, 0, term).await;
        c.kill_agent(0);
        let killed_at = Instant::now();
        let leader = c.wait_leader_change(0).await;
        let elected_at = Instant::now();
        assert_eq!(leader, 1, "round-robin after node 0");
        println!("node 1 leads {:?} after node 0 was killed", elected_at - killed_at);
        tokio::time::sleep(Duration::from_secs(3)).await;
        c.start_agent(0).await;
        let restarted_at = Instant::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        (killed_at, elected_at, restarted_at)
    })
    .await;
    c.wait_member(0).await;
    let history = watch.stop().await;
    let outcomes = check_bank(&c, &tallies, init).await;
    assert!(
        acked_between(&outcomes, elected_at, restarted_at) > 0,
        "no commit was acknowledged between the failover and the restart of the old leader"
    );
    println!("{} commits acknowledged after the kill", acked_between(&outcomes, killed_at, Instant::now()));
    history.assert_one_leader_per_term();
    let s = c.supervisor_status().await;
    print_failover(&s);
    assert_eq!(s["last_failover"]["old_leader"], json!(addr(&c, 0)), "{s}");
    assert_recovered(&c, &s, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_replica_under_load_does_not_stop_commits() {
    let c = Cluster::start_with(ClusterOptions::supervised(3)).await;
    let init = open_accounts(&c).await;
    let term = term_of(&c.supervisor_status().await);
    let (tallies, (killed_at, restarted_at)) = under_load(&c, HEAVY, async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_still_leads(&c, 0, term).await;
        c.kill_agent(2);
        let killed_at = Instant::now();
        c.wait_supervisor("it removes the killed replica", Duration::from_secs(10), |s| {
            s["members"] == addresses(&c, &[0, 1])
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        c.start_agent(2).await;
        let restarted_at = Instant::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        (killed_at, restarted_at)
    })
    .await;
    c.wait_member(2).await;
    let outcomes = check_bank(&c, &tallies, init).await;
    let during = acked_between(&outcomes, killed_at, restarted_at);
    assert!(during > 0, "no commit was acknowledged while the replica was dead");
    println!("{during} commits acknowledged while node 2 was dead");
    let s = c.supervisor_status().await;
    print_failover(&s);
    assert_eq!((term_of(&s), &s["leader"]), (term, &json!(addr(&c, 0))), "a replica's death is no failover: {s}");
    assert_recovered(&c, &s, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_postgres_crash_heals() {
    let c = Cluster::start_with(ClusterOptions::supervised(3)).await;
    let init = open_accounts(&c).await;
    let term = term_of(&c.supervisor_status().await);
    let (tallies, ()) = under_load(&c, LIGHT, async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_still_leads(&c, 0, term).await;
        c.stop_postgres(2).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        c.start_postgres(2).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    })
    .await;
    c.wait_member(2).await;
    check_bank(&c, &tallies, init).await;
    let s = c.supervisor_status().await;
    print_failover(&s);
    assert_eq!((term_of(&s), &s["leader"]), (term, &json!(addr(&c, 0))), "a replica's crash is no failover: {s}");
    assert_recovered(&c, &s, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_leader_is_replaced_and_cannot_commit_when_it_wakes() {
    const STOPPED: Duration = Duration::from_secs(3);
    let c = Cluster::start_with(ClusterOptions::supervised(3)).await;
    let init = open_accounts(&c).await;
    let term1 = term_of(&c.supervisor_status().await);
    let watch = c.watch_leaders();
    let (tallies, (late_txn, late_code, late_answer)) = under_load(&c, LIGHT, async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_still_leads(&c, 0, term1).await;
        c.pause_agent(0);
        let stopped_at = Instant::now();
        let leader = c.wait_for_leader_within(STOPPED, |i| i != 0).await;
        println!("node {leader} leads {:?} after node 0 was stopped", stopped_at.elapsed());
        tokio::time::sleep(STOPPED.saturating_sub(stopped_at.elapsed())).await;
        c.resume_agent(0);
        // At once, before anyone may have told it: the old leader must not commit.
        let txn = Uuid::new_v4();
        let (code, answer) = c.commit(0, json!({"transaction": {"write_set": {"1": 1_000_000}, "txn_id": txn}})).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        (txn, code, answer)
    })
    .await;
    println!("the deposed leader, woken, answered a commit with {late_code}: {late_answer}");
    assert!(
        late_code == StatusCode::MISDIRECTED_REQUEST || late_code == StatusCode::SERVICE_UNAVAILABLE,
        "a commit sent to the deposed leader as it woke must get 421 or 503, got {late_code}: {late_answer}"
    );
    c.wait_member(0).await;
    let history = watch.stop().await;
    check_bank(&c, &tallies, init).await;
    history.assert_one_leader_per_term();
    let s = c.supervisor_status().await;
    print_failover(&s);
    let term2 = term_of(&s);
    assert!(term2 > term1, "{s}");
    for i in 0..3 {
        let log = c.log(i).await;
        assert!(log.iter().all(|e| e.txn_id != late_txn), "node {i}: the deposed leader's late commit is in the log");
        assert!(log.iter().all(|e| e.term <= term2), "node {i}: an entry from a term the supervisor never made");
    }
}

/// The highest integer under a key named `term` anywhere in `v` (the supervisor's state file
/// holds its configuration; this does not depend on where in the file the term sits).
fn highest_term_in(v: &Value) -> Option<i64> {
    match v {
        Value::Object(map) => {
            map.iter().filter_map(|(k, v)| if k == "term" { v.as_i64() } else { highest_term_in(v) }).max()
        }
        Value::Array(items) => items.iter().filter_map(highest_term_in).max(),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_killed_while_failing_over_finishes_after_restart() {
    let c = Cluster::start_with(ClusterOptions::supervised(3)).await;
    let init = open_accounts(&c).await;
    let term1 = term_of(&c.supervisor_status().await);
    let watch = c.watch_leaders();
    let (tallies, elected_at) = under_load(&c, LIGHT, async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_still_leads(&c, 0, term1).await;
        // To stop the supervisor in the middle of a failover every time, hold it there: while
        // this transaction holds the row of node 1's stored configuration, node 1 (the next
        // leader) cannot take the new term, so the failover waits on it after the supervisor
        // has made the new term durable.
        let mut hold = c.db(1).await.begin().await.expect("BEGIN on node 1's PostgreSQL");
        sqlx::query("SELECT 1 FROM agent_cluster_config WHERE id = 1 FOR UPDATE")
            .execute(&mut *hold)
            .await
            .expect("lock node 1's stored configuration");
        c.kill_agent(0);
        let killed_at = Instant::now();
        let deadline = killed_at + e2e::FAILOVER_TIMEOUT;
        loop {
            let stored = std::fs::read(c.supervisor_state_file()).ok();
            let term = stored.and_then(|b| serde_json::from_slice::<Value>(&b).ok()).and_then(|v| highest_term_in(&v));
            if term.is_some_and(|t| t > term1) {
                c.kill_supervisor();
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the supervisor recorded no new term within {:?}",
                e2e::FAILOVER_TIMEOUT
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let seen: Vec<_> = futures::future::join_all([1, 2].map(|i| c.try_status(i, Duration::from_secs(1))))
            .await
            .into_iter()
            .map(|s| s.map(|s| (s.role, s.term)))
            .collect();
        println!(
            "supervisor killed {:?} after the leader, with a new term stored; nodes 1, 2: {seen:?}",
            killed_at.elapsed()
        );
        assert!(
            !matches!(seen[0], Ok((Role::Leader, _))),
            "node 1 was promoted although it could not store the new term: {seen:?}"
        );
        hold.rollback().await.expect("release node 1's stored configuration");
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.restart_supervisor().await;
        let leader = c.wait_leader_change(0).await;
        let elected_at = Instant::now();
        println!("node {leader} leads {:?} after node 0 was killed", elected_at - killed_at);
        let s = c.supervisor_status().await;
        assert!(term_of(&s) > term1, "node {leader} leads in term {}, not above {term1}: {s}", term_of(&s));
        tokio::time::sleep(Duration::from_secs(2)).await;
        c.start_agent(0).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        elected_at
    })
    .await;
    for i in 0..3 {
        c.wait_member(i).await;
    }
    let history = watch.stop().await;
    println!("leaders seen by term: {:?} ({} samples)", history.leaders, history.samples);
    history.assert_one_leader_per_term();
    let outcomes = check_bank(&c, &tallies, init).await;
    assert!(acked_between(&outcomes, elected_at, Instant::now()) > 0, "no commit was acknowledged after the restart");
    print_failover(&c.supervisor_status().await);
}
