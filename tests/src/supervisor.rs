//! The supervisor of a cluster started with [`ClusterOptions::supervisor`](crate::ClusterOptions):
//! its process, its `GET /status`, the drills, and waiting for failover and recovery to finish.
//!
//! Every wait polls and is bounded; when it gives up it panics with what it last saw and the
//! supervisor's log, so a failing test says where the cluster got stuck.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::{AgentStatus, DrillResponse, Role, Term};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::cluster::{raw, tail, SupervisorProcess};
use crate::{Cluster, READY_TIMEOUT};

/// How long a failover may take before [`Cluster::wait_for_leader`] gives up: detection (a few
/// polls) plus fencing and promotion, with a wide margin for a loaded test machine.
pub const FAILOVER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long [`Cluster::wait_member`] waits for a returning node to be recovered and re-added.
pub const REJOIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Timeout of one status call while polling: a SIGSTOPped process must not stall the poll.
const POLL_CALL_TIMEOUT: Duration = Duration::from_millis(1_000);
const POLL_PAUSE: Duration = Duration::from_millis(50);

impl Cluster {
    fn sup(&self) -> &SupervisorProcess {
        self.sup_at(0)
    }

    fn sup_at(&self, k: usize) -> &SupervisorProcess {
        assert!(
            !self.supervisors.is_empty(),
            "this cluster runs no supervisor: start it with ClusterOptions::supervised"
        );
        self.supervisors.get(k).unwrap_or_else(|| panic!("this cluster has no supervisor {k}"))
    }

    /// How many supervisors the cluster runs.
    pub fn supervisor_count(&self) -> usize {
        self.supervisors.len()
    }

    /// `<ip>:<port>` of the (first) supervisor, as agents are given it.
    pub fn supervisor_address(&self) -> String {
        self.supervisor_address_at(0)
    }

    /// `<ip>:<port>` of supervisor `k` (its `--listen` and `--advertise`).
    pub fn supervisor_address_at(&self, k: usize) -> String {
        format!("{}:{}", self.sup_at(k).ip, self.sup_at(k).port)
    }

    /// `http://<ip>:<port>` of the (first) supervisor.
    pub fn supervisor_url(&self) -> String {
        self.supervisor_url_at(0)
    }

    /// `http://<ip>:<port>` (`https://` with TLS) of supervisor `k`.
    pub fn supervisor_url_at(&self, k: usize) -> String {
        format!("{}://{}", self.sup_at(k).scheme, self.supervisor_address_at(k))
    }

    /// The supervisor's `--state-file`.
    pub fn supervisor_state_file(&self) -> &Path {
        &self.sup().state_file
    }

    /// The last `lines` lines of every supervisor's log.
    pub fn supervisor_log(&self, lines: usize) -> String {
        if self.supervisors.len() == 1 {
            return tail(&self.sup().daemon.log_path, lines);
        }
        self.supervisors
            .iter()
            .map(|sup| format!("--- {} ---\n{}", sup.daemon.name, tail(&sup.daemon.log_path, lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Starts the (first) supervisor (same flags and state file as before) and waits until
    /// `/health` answers 200.
    pub async fn start_supervisor(&self) {
        self.start_supervisor_at(0).await;
    }

    /// Starts supervisor `k` and waits until its `/health` answers 200.
    pub async fn start_supervisor_at(&self, k: usize) {
        let sup = self.sup_at(k);
        sup.daemon.spawn();
        let deadline = Instant::now() + READY_TIMEOUT;
        let url = format!("{}/health", self.supervisor_url_at(k));
        loop {
            if let Some(exit) = sup.daemon.exit() {
                panic!(
                    "{} exited ({exit}) before it became healthy; its log:\n{}",
                    sup.daemon.name,
                    sup.daemon.tail(40)
                );
            }
            let last = match self.http().get(&url).timeout(Duration::from_secs(2)).send().await {
                Ok(r) if r.status() == StatusCode::OK => return,
                Ok(r) => format!("HTTP {}", r.status()),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                panic!(
                    "{} is not healthy after {READY_TIMEOUT:?} (last answer: {last}); its log:\n{}",
                    sup.daemon.name,
                    sup.daemon.tail(40)
                );
            }
            tokio::time::sleep(POLL_PAUSE).await;
        }
    }

    /// SIGKILLs the (first) supervisor; its state file stays.
    pub fn kill_supervisor(&self) {
        self.kill_supervisor_at(0);
    }

    /// SIGKILLs supervisor `k`.
    pub fn kill_supervisor_at(&self, k: usize) {
        assert!(self.sup_at(k).daemon.kill(), "{} was not running", self.sup_at(k).daemon.name);
    }

    /// SIGSTOPs the (first) supervisor: it keeps its sockets but answers nothing and decides
    /// nothing.
    pub fn pause_supervisor(&self) {
        self.pause_supervisor_at(0);
    }

    /// SIGSTOPs supervisor `k`.
    pub fn pause_supervisor_at(&self, k: usize) {
        self.sup_at(k).daemon.signal(libc::SIGSTOP);
    }

    /// SIGCONTs the (first) supervisor.
    pub fn resume_supervisor(&self) {
        self.resume_supervisor_at(0);
    }

    /// SIGCONTs supervisor `k`.
    pub fn resume_supervisor_at(&self, k: usize) {
        self.sup_at(k).daemon.signal(libc::SIGCONT);
    }

    /// SIGKILLs the (first) supervisor if it runs, starts it again with the same state file,
    /// and waits until it is healthy.
    pub async fn restart_supervisor(&self) {
        self.sup().daemon.kill();
        self.start_supervisor().await;
    }

    /// SIGKILLs supervisor `k` if it runs, starts it again with the same flags, and waits until
    /// it is healthy.
    pub async fn restart_supervisor_at(&self, k: usize) {
        self.sup_at(k).daemon.kill();
        self.start_supervisor_at(k).await;
    }

    /// Supervisor `k`'s `GET /status`, or why there was none.
    pub async fn try_supervisor_status_at(&self, k: usize) -> Result<Value, String> {
        let name = &self.sup_at(k).daemon.name;
        let resp = self
            .http()
            .get(format!("{}/status", self.supervisor_url_at(k)))
            .timeout(POLL_CALL_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("GET /status on {name}: {e}"))?;
        let r = raw(resp).await;
        if r.status != StatusCode::OK {
            return Err(format!("GET /status on {name}: HTTP {}: {}", r.status, r.body));
        }
        r.json().ok_or_else(|| format!("GET /status on {name}: not JSON: {}", r.body))
    }

    /// Which supervisor says it is active, if one does (of those running).
    pub async fn active_supervisor(&self) -> Option<usize> {
        for k in 0..self.supervisors.len() {
            if self.sup_at(k).daemon.exit().is_some() {
                continue;
            }
            if let Ok(status) = self.try_supervisor_status_at(k).await {
                if status["active"].as_bool() == Some(true) {
                    return Some(k);
                }
            }
        }
        None
    }

    /// Waits until a supervisor other than `except` says it is active; returns its index.
    /// Panics, with every supervisor's log, after [`FAILOVER_TIMEOUT`] (far beyond the lease's
    /// TTL: a bound on hanging, not a speed test).
    pub async fn wait_active_supervisor(&self, except: Option<usize>) -> usize {
        let deadline = Instant::now() + FAILOVER_TIMEOUT;
        loop {
            if let Some(k) = self.active_supervisor().await.filter(|k| Some(*k) != except) {
                return k;
            }
            assert!(Instant::now() < deadline, "no supervisor became active; logs:\n{}", self.supervisor_log(30));
            tokio::time::sleep(POLL_PAUSE).await;
        }
    }

    /// The supervisor's `GET /status`, or why there was none. With several supervisors, the
    /// active one's; else the first answer.
    pub async fn try_supervisor_status(&self) -> Result<Value, String> {
        if self.supervisors.len() <= 1 {
            return self.try_supervisor_status_at(0).await;
        }
        let mut first = None;
        let mut errors = Vec::new();
        for k in 0..self.supervisors.len() {
            if self.sup_at(k).daemon.exit().is_some() {
                continue;
            }
            match self.try_supervisor_status_at(k).await {
                Ok(status) if status["active"].as_bool() == Some(true) => return Ok(status),
                Ok(status) => {
                    first.get_or_insert(status);
                }
                Err(e) => errors.push(e),
            }
        }
        first.ok_or_else(|| if errors.is_empty() { "no supervisor runs".into() } else { errors.join("; ") })
    }

    /// The supervisor's `GET /status`; it must answer.
    pub async fn supervisor_status(&self) -> Value {
        self.try_supervisor_status().await.unwrap_or_else(|e| panic!("{e}; its log:\n{}", self.supervisor_log(40)))
    }

    /// Polls the supervisor's status until `done` holds; panics after `timeout` with the last
    /// status (or error) and the supervisor's log. Returns the status that satisfied `done`.
    pub async fn wait_supervisor(&self, what: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.try_supervisor_status().await {
                Ok(status) if done(&status) => return status,
                Ok(status) => status.to_string(),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                panic!(
                    "waited {timeout:?} for the supervisor: {what}; last status: {last}\nits log:\n{}",
                    self.supervisor_log(40)
                );
            }
            tokio::time::sleep(POLL_PAUSE).await;
        }
    }

    /// `POST /register_client/` on the supervisor; it must answer 200.
    pub async fn register_client(&self, url: &str) -> Value {
        let resp = self
            .http()
            .post(format!("{}/register_client/", self.supervisor_url()))
            .json(&json!({"url": url}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST /register_client/ on the supervisor: {e}"));
        let r = raw(resp).await;
        assert_eq!(r.status, StatusCode::OK, "POST /register_client/ {url}: {}", r.body);
        r.json().unwrap_or_else(|| panic!("POST /register_client/: not JSON: {}", r.body))
    }

    /// The node whose agent has `address`.
    pub fn index_of(&self, address: &str) -> Option<usize> {
        self.nodes().position(|n| n.address() == address)
    }

    /// The index of the node an address in a status names; panics on an address of no node.
    pub fn node_at(&self, address: &str) -> usize {
        self.index_of(address).unwrap_or_else(|| panic!("{address} is not the address of any node of this cluster"))
    }

    /// Waits until the supervisor names a leader for which `wanted(index)` holds, and that node
    /// itself reports role leader in the supervisor's term. Returns the leader's index.
    pub async fn wait_for_leader(&self, wanted: impl Fn(usize) -> bool) -> usize {
        self.wait_for_leader_within(FAILOVER_TIMEOUT, wanted).await
    }

    /// [`Cluster::wait_for_leader`] with an explicit bound.
    pub async fn wait_for_leader_within(&self, timeout: Duration, wanted: impl Fn(usize) -> bool) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.serving_leader().await {
                Ok(i) if wanted(i) => return i,
                Ok(i) => format!("the leader is node {i}, not the one waited for"),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                panic!(
                    "no wanted leader after {timeout:?}: {last}\nsupervisor status: {}\nsupervisor log:\n{}",
                    self.try_supervisor_status().await.map_or_else(|e| e, |s| s.to_string()),
                    self.supervisor_log(40)
                );
            }
            tokio::time::sleep(POLL_PAUSE).await;
        }
    }

    /// Waits until a node other than `from` leads (see [`Cluster::wait_for_leader`]).
    pub async fn wait_leader_change(&self, from: usize) -> usize {
        self.wait_for_leader(|i| i != from).await
    }

    /// The node the supervisor names leader, if it also reports itself leader in that term.
    async fn serving_leader(&self) -> Result<usize, String> {
        let s = self.try_supervisor_status().await?;
        let addr = s["leader"].as_str().ok_or_else(|| format!("the supervisor names no leader: {s}"))?;
        let i = self.node_at(addr);
        let status = self.try_status(i, POLL_CALL_TIMEOUT).await?;
        if status.role == Role::Leader && Some(status.term) == s["term"].as_i64() {
            Ok(i)
        } else {
            Err(format!(
                "the supervisor names node {i} leader in term {}, but it reports {:?} in term {}",
                s["term"], status.role, status.term
            ))
        }
    }

    /// Waits until node `i` is in the supervisor's member set, knows it (role replica, or
    /// leader), is in the supervisor's term, and has applied as much as the leader.
    pub async fn wait_member(&self, i: usize) {
        let address = self.node(i).address();
        let deadline = Instant::now() + REJOIN_TIMEOUT;
        loop {
            let last = match self.member_state(i, &address).await {
                Ok(()) => return,
                Err(e) => e,
            };
            if Instant::now() > deadline {
                panic!(
                    "node {i} did not rejoin within {REJOIN_TIMEOUT:?}: {last}\nsupervisor log:\n{}\nagent {i} log:\n{}",
                    self.supervisor_log(40),
                    self.agent_log(i, 30)
                );
            }
            tokio::time::sleep(POLL_PAUSE).await;
        }
    }

    async fn member_state(&self, i: usize, address: &str) -> Result<(), String> {
        let s = self.try_supervisor_status().await?;
        let members: Vec<&str> = s["members"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if !members.contains(&address) {
            return Err(format!("not in the supervisor's members {members:?}"));
        }
        let leader = self.node_at(s["leader"].as_str().ok_or_else(|| format!("the supervisor names no leader: {s}"))?);
        let mine = self.try_status(i, POLL_CALL_TIMEOUT).await?;
        let expected_role = if leader == i { Role::Leader } else { Role::Replica };
        if mine.role != expected_role || Some(mine.term) != s["term"].as_i64() {
            return Err(format!(
                "node {i} reports {:?} in term {}; the supervisor is in term {}",
                mine.role, mine.term, s["term"]
            ));
        }
        let theirs = self.try_status(leader, POLL_CALL_TIMEOUT).await?;
        if theirs.applied_lsn != mine.applied_lsn {
            return Err(format!(
                "node {i} applied lsn {}, the leader (node {leader}) {}",
                mine.applied_lsn, theirs.applied_lsn
            ));
        }
        Ok(())
    }

    async fn drill(&self, node: usize, path: &str) -> (StatusCode, DrillResponse) {
        let r = self.get_raw(node, path).await;
        let answer: DrillResponse = serde_json::from_str(&r.body).unwrap_or_else(|e| {
            panic!("GET {path} on node {node}: HTTP {}, not a drill answer ({e}): {}", r.status, r.body)
        });
        (r.status, answer)
    }

    /// `GET /down_leader/` on node `i`.
    pub async fn down_leader(&self, i: usize) -> (StatusCode, DrillResponse) {
        self.drill(i, "/down_leader/").await
    }

    /// `GET /up_node/` on node `i`.
    pub async fn up_node(&self, i: usize) -> (StatusCode, DrillResponse) {
        self.drill(i, "/up_node/").await
    }

    /// Starts sampling every agent's `/status` every 50 ms, recording which agents report role
    /// leader in which term, until [`LeaderWatch::stop`].
    pub fn watch_leaders(&self) -> LeaderWatch {
        let urls: Vec<String> = self.nodes().map(|n| format!("{}/status", n.url())).collect();
        let http = self.http().clone();
        let seen: Arc<Mutex<BTreeMap<Term, BTreeSet<String>>>> = Arc::default();
        let samples = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (seen, samples, stop) = (seen.clone(), samples.clone(), stop.clone());
            async move {
                while !stop.load(Ordering::SeqCst) {
                    let polls = futures::future::join_all(urls.iter().map(|url| {
                        let req = http.get(url).timeout(Duration::from_millis(300)).send();
                        async move { req.await.ok()?.json::<AgentStatus>().await.ok() }
                    }))
                    .await;
                    for status in polls.into_iter().flatten() {
                        if status.role == Role::Leader {
                            seen.lock().unwrap().entry(status.term).or_default().insert(status.address);
                        }
                    }
                    samples.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(POLL_PAUSE).await;
                }
            }
        });
        LeaderWatch { seen, samples, stop, task }
    }
}

/// Which agents reported role leader in which term, sampled in the background.
pub struct LeaderWatch {
    seen: Arc<Mutex<BTreeMap<Term, BTreeSet<String>>>>,
    samples: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// What a [`LeaderWatch`] saw.
#[derive(Debug, Clone)]
pub struct LeaderHistory {
    /// Term to the addresses that reported role leader in it.
    pub leaders: BTreeMap<Term, BTreeSet<String>>,
    /// Rounds of polling every agent.
    pub samples: usize,
}

impl LeaderWatch {
    /// Stops sampling and returns what was seen.
    pub async fn stop(self) -> LeaderHistory {
        self.stop.store(true, Ordering::SeqCst);
        let task = self.task;
        if let Err(e) = task.await {
            std::panic::resume_unwind(e.into_panic());
        }
        let leaders = self.seen.lock().unwrap().clone();
        LeaderHistory { leaders, samples: self.samples.load(Ordering::SeqCst) }
    }
}

impl LeaderHistory {
    /// Panics if two agents ever reported role leader in the same term.
    pub fn assert_one_leader_per_term(&self) {
        for (term, leaders) in &self.leaders {
            assert!(leaders.len() <= 1, "two leaders in term {term}: {leaders:?} (all seen: {:?})", self.leaders);
        }
    }
}
