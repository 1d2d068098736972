//! The agent's OpenAPI document against the agent itself: schemathesis (installed by
//! `./setup.sh test` into `target/schemathesis-venv`) generates requests from a real agent's
//! `GET /openapi.json`, valid and invalid, and checks every answer against the document (`--checks
//! all`, with the exceptions in `tests/schemathesis.toml`, each with its reason): no 5xx but the
//! documented 503s of a read whose `min_lsn` is never reached and of a role check the node does
//! not pass (`/replica` on the leader), every status code, content type,
//! header and body as documented, invalid input refused with a 4xx.
//!
//! Then no rejected request may have changed any data. The approach: the agents run with a
//! cluster token and schemathesis gets none in the first run, so every internal endpoint and
//! drill must answer 401 (as the document says, since a token is configured) and cannot change
//! anything; `/read/` changes nothing by design; `/commit/` changes data exactly when it answers
//! 200 COMMIT. Every request and answer is recorded (schemathesis' HAR report), and afterwards,
//! on every node: the log before is a prefix of the log after, every new log entry is the
//! `txn_id` of a 200 COMMIT answer (and every 200 COMMIT is in the log), the table is exactly
//! the replay of the log, and every node still has the same term, role and members. So
//! nothing but an acknowledged commit changed a table or a log.
//!
//! A second, smaller run gives schemathesis the token for the two internal endpoints that only
//! read (`GET /replication_log/`, `GET /internal/batch_state`), so that their answers are
//! checked against the document too. The internal endpoints that change state (prepare,
//! decide, fence, promote, config, pause, recover, the drills) are checked only for their
//! refusal: fuzzing them with the token would legitimately rewrite the cluster's state.
//!
//! Knobs: `RMW_SCHEMATHESIS` (the schemathesis program; default
//! `target/schemathesis-venv/bin/schemathesis`), `RMW_SCHEMATHESIS_EXAMPLES` (per operation,
//! default 50), `RMW_SCHEMATHESIS_SEED` (default fixed, so that a run is repeatable). Reports
//! go to `target/test-output/schemathesis/`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use e2e::{Cluster, ClusterOptions};
use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

const TOKEN: &str = "schemathesis-test-token-3b9e";
/// The client API key of the run over TLS.
const WRITE_KEY: &str = "schemathesis-write-key-7c1f0a9e";
/// A hard bound on one schemathesis run; the examples bound keeps it far below this.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
const DEFAULT_EXAMPLES: u32 = 50;
const DEFAULT_SEED: u64 = 20261123;

/// The workspace's `target/` folder (the test runs from `target/<profile>/deps`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    exe.ancestors().nth(3).expect("the test runs from target/<profile>/deps").to_path_buf()
}

/// The schemathesis program; panics, saying how to install it, when it is missing (the test
/// must not pass without having run it).
fn schemathesis() -> PathBuf {
    let path = match std::env::var_os("RMW_SCHEMATHESIS") {
        Some(path) => PathBuf::from(path),
        None => {
            // Where `./setup.sh test` puts it: the workspace's target/, which is also the one
            // this test was built into unless CARGO_TARGET_DIR says otherwise.
            let venv = Path::new("schemathesis-venv/bin/schemathesis");
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target").join(venv);
            let ours = target_dir().join(venv);
            if ours.is_file() {
                ours
            } else {
                workspace
            }
        }
    };
    assert!(
        path.is_file(),
        "schemathesis is not installed: {} is missing. Run `./setup.sh test` (it creates the virtualenv \
         target/schemathesis-venv with schemathesis from PyPI), or set RMW_SCHEMATHESIS to a schemathesis program.",
        path.display()
    );
    path
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
        Err(_) => default,
    }
}

fn output_dir() -> PathBuf {
    let dir = target_dir().join("test-output").join("schemathesis");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// One request and its answer, from the HAR report.
#[derive(Debug)]
struct Exchange {
    method: String,
    path: String,
    status: u16,
    body: String,
}

/// Runs schemathesis once; panics with its output when it finds a failure. Returns every
/// request it sent, with the answer.
async fn run(name: &str, spec_url: &str, extra: &[&str]) -> Vec<Exchange> {
    let program = schemathesis();
    let dir = output_dir();
    let har = dir.join(format!("{name}.har"));
    let junit = dir.join(format!("{name}.xml"));
    let _ = std::fs::remove_file(&har);
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemathesis.toml");
    let examples = env_number("RMW_SCHEMATHESIS_EXAMPLES", DEFAULT_EXAMPLES);
    let seed = env_number("RMW_SCHEMATHESIS_SEED", DEFAULT_SEED);
    let mut cmd = tokio::process::Command::new(&program);
    cmd.arg("--config-file")
        .arg(&config)
        .arg("--no-color")
        .arg("run")
        .arg(spec_url)
        .args(["--checks", "all"])
        .args(["--max-examples", &examples.to_string()])
        .args(["--seed", &seed.to_string()])
        .args(["--workers", "1"])
        .args(["--request-timeout", "15"])
        .args(["--generation-database", "none"])
        .args(["--report", "har,junit"])
        .arg("--report-har-path")
        .arg(&har)
        .arg("--report-junit-path")
        .arg(&junit)
        .args(extra)
        // Hypothesis and schemathesis write caches to the working folder.
        .current_dir(&dir)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let started = std::time::Instant::now();
    let output = match tokio::time::timeout(RUN_TIMEOUT, cmd.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => panic!("cannot run {}: {e}", program.display()),
        Err(_) => panic!("schemathesis ({name}) did not finish within {RUN_TIMEOUT:?}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    std::fs::write(dir.join(format!("{name}.log")), format!("{stdout}\n{stderr}")).ok();
    eprintln!("schemathesis ({name}) ran for {:.0?}; its report: {}", started.elapsed(), dir.display());
    assert!(
        output.status.success(),
        "schemathesis ({name}) found problems (exit {}); reports in {}:\n{stdout}\n{stderr}",
        output.status,
        dir.display()
    );
    exchanges(&har)
}

/// The requests and answers of a HAR file.
fn exchanges(har: &Path) -> Vec<Exchange> {
    let text = std::fs::read_to_string(har).unwrap_or_else(|e| panic!("read {}: {e}", har.display()));
    let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", har.display()));
    let entries = doc["log"]["entries"].as_array().unwrap_or_else(|| panic!("{}: no log.entries", har.display()));
    entries
        .iter()
        .map(|e| {
            let url = e["request"]["url"].as_str().unwrap_or_default();
            let url = reqwest::Url::parse(url).unwrap_or_else(|err| panic!("HAR entry with URL {url:?}: {err}"));
            Exchange {
                method: e["request"]["method"].as_str().unwrap_or_default().to_string(),
                path: url.path().to_string(),
                status: e["response"]["status"].as_u64().unwrap_or(0) as u16,
                body: e["response"]["content"]["text"].as_str().unwrap_or_default().to_string(),
            }
        })
        .collect()
}

/// Paths open to everyone; the rest need the token when one is configured.
const OPEN: &[&str] =
    &["/read/", "/commit/", "/status", "/health", "/primary", "/replica", "/read-only", "/metrics", "/openapi.json"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_answers_as_its_openapi_document_says_and_rejected_requests_change_nothing() {
    // Before the cluster: a missing schemathesis fails at once, with what to do.
    schemathesis();
    let mut options = ClusterOptions::new(3);
    options.agent_env.push(("CLUSTER_TOKEN".into(), TOKEN.into()));
    let c = Cluster::start_with(options).await;
    c.write(0, &[(1, 100), (2, 200), (3, 300)]).await;
    fuzz_and_check(&c, "agent", &[], None).await;
}

/// The same over mutual TLS with client API keys: schemathesis trusts the cluster's CA only,
/// presents the tests' client certificate (so that the internal endpoints get as far as the
/// token check) and sends a write key on every request; its `ignored_auth` check also tries
/// `/read/` and `/commit/` without the key and expects the documented 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_over_tls_with_keys_answers_as_its_document_says_and_rejected_requests_change_nothing() {
    schemathesis();
    let keys = std::env::temp_dir().join(format!("rmw-e2e-{}-schemathesis-keys", std::process::id()));
    std::fs::write(&keys, format!("{WRITE_KEY} write schemathesis\n")).expect("write the keys file");
    let mut options = ClusterOptions::with_tls(3);
    options.supervisor = false;
    options.agent_env.push(("CLUSTER_TOKEN".into(), TOKEN.into()));
    options.agent_args.extend(["--api-keys".into(), keys.display().to_string()]);
    let c = Cluster::start_with(options).await;
    let _ = std::fs::remove_file(&keys);
    let answer = c
        .http()
        .post(format!("{}/commit/", c.url(0)))
        .bearer_auth(WRITE_KEY)
        .json(&serde_json::json!({"transaction": {"write_set": {"1": 100, "2": 200, "3": 300}}}))
        .send()
        .await
        .expect("a first commit");
    assert_eq!(answer.status(), StatusCode::OK, "a first commit with the write key");
    let pki = c.pki().expect("a cluster with TLS");
    let (cert, key) = pki.files("harness");
    let (ca, cert, key) = (pki.ca_file().display().to_string(), cert.display().to_string(), key.display().to_string());
    let tls = ["--tls-verify", &ca, "--request-cert", &cert, "--request-cert-key", &key];
    fuzz_and_check(&c, "agent-tls", &tls, Some(WRITE_KEY)).await;
}

/// Runs schemathesis against node 0 of `c` (reports named after `name`, `transport` the TLS
/// options of every run): first every operation with the client API key `key` if any, then the
/// internal endpoints that only read, with the token; then checks that nothing but the
/// acknowledged commits changed any node.
async fn fuzz_and_check(c: &Cluster, name: &str, transport: &[&str], key: Option<&str>) {
    // Every documented operation exists (a path the router does not know would be a 404).
    let (status, spec) = c.get(0, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            let request = c.http().request(method.to_uppercase().parse().unwrap(), format!("{}{path}", c.url(0)));
            let answer = request.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            assert!(
                ![StatusCode::NOT_FOUND, StatusCode::METHOD_NOT_ALLOWED].contains(&answer.status()),
                "{method} {path} is documented but answers {}",
                answer.status()
            );
        }
    }

    let before = c.snapshot().await;
    let mut statuses_before = Vec::new();
    for i in 0..c.len() {
        statuses_before.push(c.status(i).await);
    }

    let spec_url = format!("{}/openapi.json", c.url(0));
    let with_key = key.map(|k| format!("Authorization: Bearer {k}"));
    let key_args: Vec<&str> = with_key.iter().flat_map(|h| ["-H", h.as_str()]).collect();
    let mut sent = run(name, &spec_url, &[transport, &key_args[..]].concat()).await;
    let auth = format!("Authorization: Bearer {TOKEN}");
    let internal = ["--include-path-regex", "^/(replication_log/|internal/batch_state)$", "-H", &auth];
    sent.extend(run(&format!("{name}-internal-reads"), &spec_url, &[transport, &internal[..]].concat()).await);
    assert!(sent.len() > 100, "schemathesis sent only {} requests", sent.len());

    // Without the token, every guarded endpoint refused (the first run sent no token).
    let mut committed: BTreeSet<Uuid> = BTreeSet::new();
    let mut refused: BTreeSet<Uuid> = BTreeSet::new();
    let mut conflicts: BTreeSet<Uuid> = BTreeSet::new();
    for exchange in &sent {
        let body: Value = serde_json::from_str(&exchange.body).unwrap_or(Value::Null);
        if exchange.path == "/commit/" && exchange.method == "POST" {
            let txn = body["txn_id"].as_str().and_then(|t| t.parse::<Uuid>().ok());
            match (exchange.status, body["commit"].as_str(), txn) {
                (200, Some("COMMIT"), Some(txn)) => {
                    committed.insert(txn);
                }
                (200, ..) => panic!("a 200 answer to /commit/ that is not a COMMIT: {exchange:?}"),
                (409, Some("ABORT"), Some(txn)) => {
                    conflicts.insert(txn);
                    refused.insert(txn);
                }
                (_, _, Some(txn)) => {
                    refused.insert(txn);
                }
                _ => {}
            }
        }
        // The 5xx the configuration lets through: a read that waited for `min_lsn` (or
        // `as_of_lsn`) in vain, a
        // commit that asked for more copies (`min_copies`) than the three nodes, and a role check
        // this node does not pass.
        if exchange.status >= 500 {
            let role_check = matches!(exchange.path.as_str(), "/primary" | "/replica" | "/read-only")
                && exchange.status == 503
                && matches!(body["error"].as_str(), Some("not_primary" | "not_replica" | "lagging"));
            let waited = exchange.path == "/read/"
                && exchange.status == 503
                && body["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("did not reach min_lsn") || m.contains("did not reach as_of_lsn"));
            let too_many_copies = exchange.path == "/commit/"
                && exchange.status == 503
                && body["reason"].as_str() == Some("not_enough_replicas");
            assert!(waited || too_many_copies || role_check, "a server error: {exchange:?}");
        }
    }
    eprintln!(
        "schemathesis sent {} requests: {} commits acknowledged, {} refused with a txn_id",
        sent.len(),
        committed.len(),
        refused.len()
    );
    let guarded_ok: Vec<&Exchange> = sent
        .iter()
        .filter(|e| {
            !OPEN.contains(&e.path.as_str())
                && e.status == 200
                && !matches!(e.path.as_str(), "/replication_log/" | "/internal/batch_state")
        })
        .collect();
    assert!(guarded_ok.is_empty(), "a guarded endpoint that changes state accepted a call: {guarded_ok:?}");

    // Nothing but the acknowledged commits changed a table or a log, on any node.
    let converged = c.assert_converged().await;
    let after = c.snapshot().await;
    for (i, ((_, log_before), (table_after, log_after))) in before.iter().zip(&after).enumerate() {
        assert!(
            log_after.len() >= log_before.len() && log_after[..log_before.len()] == log_before[..],
            "node {i}: the log before the run is not a prefix of the log after it"
        );
        let added = &log_after[log_before.len()..];
        let new: BTreeSet<Uuid> = added.iter().filter(|e| e.is_commit()).map(|e| e.txn_id).collect();
        let unexplained: Vec<&Uuid> = new.difference(&committed).collect();
        assert!(unexplained.is_empty(), "node {i}: log entries without a 200 COMMIT answer: {unexplained:?}");
        // A conflict's ABORT is recorded in the log (writing nothing) before the 409.
        let recorded: BTreeSet<Uuid> = added.iter().filter(|e| !e.is_commit()).map(|e| e.txn_id).collect();
        let unexplained: Vec<&Uuid> = recorded.difference(&conflicts).collect();
        assert!(unexplained.is_empty(), "node {i}: abort records without a 409 answer: {unexplained:?}");
        let lost: Vec<&Uuid> = committed.difference(&new).collect();
        assert!(lost.is_empty(), "node {i}: acknowledged commits missing from the log: {lost:?}");
        assert_eq!(table_after, &e2e::replay(log_after), "node {i}: the table is not the replay of its log");
        assert_eq!(log_after, &converged.log, "node {i}");
    }
    for (i, status_before) in statuses_before.iter().enumerate() {
        let now = c.status(i).await;
        assert_eq!(
            (now.term, now.role, &now.leader, &now.members, now.config_version),
            (
                status_before.term,
                status_before.role,
                &status_before.leader,
                &status_before.members,
                status_before.config_version
            ),
            "node {i}: its state changed"
        );
    }
}
