//! The load generator for our cluster: simulated clients, each with its own keep-alive HTTP
//! connection to the leader, sending transactions back to back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

/// Accounts are 1..=ACCOUNTS.
pub const ACCOUNTS: i64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// `/commit/` writing two random accounts, reading nothing.
    Blind,
    /// `/read/` of two random accounts on the leader, then `/commit/` writing both with the
    /// read's timestamp.
    ReadCommit,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Blind => "blind transfer",
            Workload::ReadCommit => "read-then-commit",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Workload::Blind => "blind",
            Workload::ReadCommit => "read_commit",
        }
    }

    /// The workload a step's `key` names.
    pub fn of_key(key: &str) -> Workload {
        if key == Workload::Blind.key() {
            Workload::Blind
        } else {
            Workload::ReadCommit
        }
    }

    /// Its name in the one-line lists of the report.
    pub fn short(self) -> &'static str {
        match self {
            Workload::Blind => "blind",
            Workload::ReadCommit => "r+c",
        }
    }
}

/// When the clients stop: the first of the limits that are set.
#[derive(Clone, Default)]
pub struct Limit {
    pub duration: Option<Duration>,
    pub commits: Option<u64>,
    pub stop: Option<Arc<AtomicBool>>,
}

/// Live counters, shared with whoever draws the progress bar.
#[derive(Default)]
pub struct Live {
    pub committed: AtomicU64,
    pub aborted: AtomicU64,
    pub errors: AtomicU64,
}

/// What a run of the load generator measured.
pub struct Outcome {
    pub committed: u64,
    pub aborted: u64,
    pub errors: u64,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
    pub elapsed: Duration,
    /// Latency of committed transactions, in microseconds.
    pub latency_us: Histogram<u64>,
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

#[derive(Deserialize)]
struct ReadAnswer {
    timestamp: i64,
}

/// Two different random accounts.
pub fn two_accounts(rng: &mut SmallRng) -> (i64, i64) {
    let a = rng.random_range(1..=ACCOUNTS);
    let b = 1 + (a - 1 + rng.random_range(1..ACCOUNTS)) % ACCOUNTS;
    (a, b)
}

enum Attempt {
    Committed,
    Aborted,
    Failed(String),
}

/// Where the load goes: a base URL (`http://host:port`, or `https://` for a cluster with TLS)
/// and the TLS settings that reach it.
#[derive(Clone)]
pub struct Endpoint {
    pub url: String,
    pub tls: Option<service::Tls>,
}

/// One HTTP client per simulated client: its own pool, so its own keep-alive connection.
pub fn http_client() -> reqwest::Client {
    http_client_for(None)
}

/// [`http_client`] trusting the cluster's CA (and presenting its certificate) when `tls` is given.
pub fn http_client_for(tls: Option<&service::Tls>) -> reqwest::Client {
    service::client_builder_tls(None, tls)
        .expect("the HTTP client's TLS settings")
        .no_proxy()
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(15))
        .build()
        .expect("build the HTTP client")
}

/// A blind write of two accounts to `leader` (a base URL); returns whether the server answered 200.
pub async fn blind_commit(http: &reqwest::Client, leader: &str, rng: &mut SmallRng) -> Result<reqwest::StatusCode> {
    let (a, b) = two_accounts(rng);
    let body = format!(
        r#"{{"transaction":{{"write_set":{{"{a}":{},"{b}":{}}}}}}}"#,
        rng.random_range(0..1_000_000),
        rng.random_range(0..1_000_000)
    );
    let (status, _) = post(http, leader, "/commit/", body).await?;
    Ok(status)
}

/// POSTs a JSON `body` to `path` on `node` (a base URL); the status and the whole answer.
async fn post(
    http: &reqwest::Client,
    node: &str,
    path: &str,
    body: String,
) -> Result<(reqwest::StatusCode, bytes::Bytes)> {
    let resp = http.post(format!("{node}{path}")).header("content-type", "application/json").body(body).send().await?;
    let status = resp.status();
    Ok((status, resp.bytes().await?))
}

async fn attempt(http: &reqwest::Client, leader: &str, workload: Workload, rng: &mut SmallRng) -> Attempt {
    let result: Result<Attempt> = async {
        match workload {
            Workload::Blind => {
                let status = blind_commit(http, leader, rng).await?;
                Ok(classify(status, ""))
            }
            Workload::ReadCommit => {
                let (a, b) = two_accounts(rng);
                let read_body = format!(r#"{{"transaction":{{"read_set":[{a},{b}],"write_set":{{}}}}}}"#);
                let (status, bytes) = post(http, leader, "/read/", read_body).await?;
                if !status.is_success() {
                    return Ok(Attempt::Failed(format!("read: {status}: {}", String::from_utf8_lossy(&bytes))));
                }
                let read: ReadAnswer = serde_json::from_slice(&bytes)?;
                let body = format!(
                    r#"{{"transaction":{{"read_set":[{a},{b}],"write_set":{{"{a}":{},"{b}":{}}},"time_stamp":{}}}}}"#,
                    rng.random_range(0..1_000_000),
                    rng.random_range(0..1_000_000),
                    read.timestamp
                );
                let (status, bytes) = post(http, leader, "/commit/", body).await?;
                Ok(classify(status, &String::from_utf8_lossy(&bytes)))
            }
        }
    }
    .await;
    result.unwrap_or_else(|e| Attempt::Failed(format!("{e:#}")))
}

fn classify(status: reqwest::StatusCode, body: &str) -> Attempt {
    match status.as_u16() {
        200 => Attempt::Committed,
        409 => Attempt::Aborted,
        _ => Attempt::Failed(format!("commit: {status}: {body}")),
    }
}

/// Runs `clients` simulated clients against `leader` until `limit`; `live` is updated as they go.
pub async fn run(leader: &Endpoint, workload: Workload, clients: usize, limit: Limit, live: Arc<Live>) -> Outcome {
    let start = Instant::now();
    let deadline = limit.duration.map(|d| start + d);
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let mut tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        let (leader, tls) = (leader.url.clone(), leader.tls.clone());
        let live = live.clone();
        let limit = limit.clone();
        let first_error = first_error.clone();
        tasks.push(tokio::spawn(async move {
            let http = http_client_for(tls.as_ref());
            let mut rng = SmallRng::seed_from_u64(0x5eed_0000 + i as u64 * 7919 + std::process::id() as u64);
            let mut hist = new_histogram();
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d)
                    || limit.commits.is_some_and(|n| live.committed.load(Ordering::Relaxed) >= n)
                    || limit.stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed))
                {
                    break;
                }
                let t = Instant::now();
                let result = attempt(&http, &leader, workload, &mut rng).await;
                let done = Instant::now();
                // A transaction that ends after the deadline is not counted (as with pgbench -T).
                if deadline.is_some_and(|d| done > d) {
                    break;
                }
                match result {
                    Attempt::Committed => {
                        live.committed.fetch_add(1, Ordering::Relaxed);
                        let _ = hist.record((done - t).as_micros().max(1) as u64);
                    }
                    Attempt::Aborted => {
                        live.aborted.fetch_add(1, Ordering::Relaxed);
                    }
                    Attempt::Failed(e) => {
                        live.errors.fetch_add(1, Ordering::Relaxed);
                        first_error.lock().unwrap().get_or_insert(e);
                        // Do not spin on a cluster that is down.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            hist
        }));
    }
    let mut latency_us = new_histogram();
    for t in tasks {
        if let Ok(h) = t.await {
            let _ = latency_us.add(&h);
        }
    }
    // A timed run lasts its duration (what finished later was not counted); a run stopped by a
    // count or a flag lasts until then.
    let elapsed = match limit.duration {
        Some(d) => d.min(start.elapsed()),
        None => start.elapsed(),
    };
    let first_error = first_error.lock().unwrap().take();
    Outcome {
        committed: live.committed.load(Ordering::Relaxed),
        aborted: live.aborted.load(Ordering::Relaxed),
        errors: live.errors.load(Ordering::Relaxed),
        first_error,
        elapsed,
        latency_us,
    }
}
