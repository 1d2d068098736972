//! TLS on a real cluster (`ClusterOptions::with_tls`: every agent and the supervisor serve
//! HTTPS with certificates from the cluster's CA, call each other over HTTPS, and require a
//! client certificate from that CA on their internal endpoints).
//!
//! The cluster commits, fails over and takes a node back over TLS alone, `client` reaches it
//! with `--tls-ca`; and whoever tries to get in without the right credentials (plain HTTP, a
//! client that trusts another CA, a client certificate from another CA or an expired one, no
//! client certificate on an internal endpoint) is refused and changes nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::browser::client_binary;
use e2e::{Cluster, ClusterOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};
use service::{LocalCa, Tls, TlsOptions, Validity};

/// A client of the cluster's programs with these TLS settings (as a program would load them).
fn client_with(tls: &Tls) -> reqwest::Client {
    service::client_builder_tls(None, Some(tls))
        .expect("client settings")
        .no_proxy()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("build a client")
}

fn load(cert: Option<&Path>, key: Option<&Path>, ca: &Path) -> Tls {
    let options = TlsOptions {
        cert: cert.map(Path::to_path_buf),
        key: key.map(Path::to_path_buf),
        ca: Some(ca.to_path_buf()),
        client_auth: false,
    };
    options.load().expect("valid TLS files").expect("TLS options were given")
}

/// Runs `client` with `args` off the runtime's threads: exit code, stdout, stderr.
async fn client(args: Vec<String>) -> (Option<i32>, String, String) {
    let output = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(client_binary());
        for var in ["CLIENT_SUPERVISOR", "CLIENT_TLS_CA", "CLIENT_TLS_CERT", "CLIENT_TLS_KEY", "CLIENT_API_KEY_FILE"] {
            cmd.env_remove(var);
        }
        cmd.args(&args).output().expect("run the client binary")
    })
    .await
    .expect("the client's thread");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (output.status.code(), text(&output.stdout), text(&output.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_commits_fails_over_and_takes_the_old_leader_back() {
    let c = Cluster::start_with(ClusterOptions::with_tls(3)).await;
    assert!(c.url(0).starts_with("https://"), "{}", c.url(0));
    let first = c.write(0, &[(1, 100), (2, 200)]).await;
    assert_eq!(first.lsn, Some(1));

    c.kill_agent(0);
    let leader = c.wait_leader_change(0).await;
    let second = c.write(leader, &[(3, 300)]).await;
    assert_eq!(second.lsn, Some(2), "the new leader commits over TLS");
    c.start_agent(0).await;
    c.wait_member(0).await;
    let tables: Vec<_> = futures::future::join_all((0..3).map(|i| c.table(i))).await;
    assert!(tables.iter().all(|t| *t == tables[0] && t.len() == 3), "{tables:?}");

    // The client reaches the cluster with the CA alone (reads, commits and the supervisor's
    // status are not internal endpoints).
    let pki = c.pki().expect("a TLS cluster has certificates");
    let tls_ca = pki.ca_file().display().to_string();
    let supervisor = c.supervisor_address_at(0);
    let args = |rest: &[&str]| -> Vec<String> {
        ["--tls-ca", tls_ca.as_str()]
            .iter()
            .chain(rest)
            .chain(&["--supervisor", supervisor.as_str()])
            .map(|s| s.to_string())
            .collect()
    };
    let agent = c.node(leader).address();
    let (code, out, err) = client(args(&["run", "r(1)w(4=44)", "--agent", &agent])).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("COMMIT"), "{out}");
    let (code, out, err) = client(args(&["status", "--json"])).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let status: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(status["leader"], json!(agent), "{status}");
    // Without the CA the client cannot trust the cluster, and says so.
    let (code, out, err) = client(vec![
        "run".into(),
        "r(1)".into(),
        "--agent".into(),
        agent.clone(),
        "--supervisor".into(),
        String::new(),
        "--wait-secs".into(),
        "1".into(),
    ])
    .await;
    assert_eq!(code, Some(3), "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused_and_change_nothing() {
    let c = Cluster::start_with(ClusterOptions::with_tls(3)).await;
    c.write(0, &[(1, 100)]).await;
    c.wait_applied(1, 1).await;
    c.wait_applied(2, 1).await;
    let pki = c.pki().expect("a TLS cluster has certificates");
    let before = c.snapshot().await;
    let agent = c.node(0).address();
    let internal_prepare = json!({"term": 99, "round": 1, "prev_lsn": 1, "entries": [
        {"lsn": 2, "term": 99, "txn_id": "6f1c4a1e-0000-4000-8000-000000000001", "commit_ts": 1,
         "read_set": [], "write_set": {"1": 666}}]});
    let commit = json!({"transaction": {"write_set": {"1": 666}}});

    // Plain HTTP to the TLS port: no HTTP answer at all.
    let plain = reqwest::Client::builder().no_proxy().timeout(std::time::Duration::from_secs(5)).build().unwrap();
    for path in ["/health", "/commit/"] {
        let sent = plain.post(format!("http://{agent}{path}")).json(&commit).send().await;
        assert!(sent.is_err(), "plain HTTP to {path} got an answer: {:?}", sent.map(|r| r.status()));
    }

    // A client that trusts another CA does not trust the agent (and sends nothing).
    let elsewhere = c.dir().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let validity = Validity::from_now(std::time::Duration::from_secs(3600)).unwrap();
    let foreign = LocalCa::new("someone else's CA", validity).unwrap();
    let foreign_ca = write(&elsewhere.join("ca.pem"), &foreign.cert_pem());
    let trusting_another = client_with(&load(None, None, &foreign_ca));
    let sent = trusting_another.post(format!("https://{agent}/commit/")).json(&commit).send().await;
    assert!(sent.is_err(), "a client trusting another CA got an answer: {:?}", sent.map(|r| r.status()));

    // Client certificates the agent must not accept: from another CA, and expired.
    let foreign_cert = foreign.issue("intruder", &["127.0.0.1"], validity).unwrap();
    let (foreign_cert_file, foreign_key_file) = (
        write(&elsewhere.join("intruder.pem"), &foreign_cert.cert_pem),
        write(&elsewhere.join("intruder-key.pem"), &foreign_cert.key_pem),
    );
    let expired = pki.issue_expired("expired", "127.0.0.1");
    let (expired_cert, expired_key) = pki.write_cert("expired", &expired);
    for (what, cert, key) in [
        ("a client certificate from another CA", &foreign_cert_file, &foreign_key_file),
        ("an expired client certificate", &expired_cert, &expired_key),
    ] {
        let http = client_with(&load(Some(cert), Some(key), pki.ca_file()));
        for path in ["/internal/prepare", "/commit/"] {
            let sent = http.post(format!("https://{agent}{path}")).json(&internal_prepare).send().await;
            assert!(sent.is_err(), "{what} on {path} got an answer: {:?}", sent.map(|r| r.status()));
        }
    }

    // The right CA but no client certificate: the internal endpoints refuse with 403, on the
    // agents and on the supervisor; the public ones answer.
    let no_cert = client_with(&load(None, None, pki.ca_file()));
    for node in 0..3 {
        let url = c.url(node);
        let resp = no_cert.post(format!("{url}/internal/prepare")).json(&internal_prepare).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "client_certificate_required", "{body}");
        for path in ["/down_leader/", "/replication_log/?after=0"] {
            let resp = no_cert.get(format!("{url}{path}")).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{path} on node {node}");
        }
        assert_eq!(no_cert.get(format!("{url}/health")).send().await.unwrap().status(), StatusCode::OK);
    }
    let supervisor = c.supervisor_url();
    let report = json!({"term": 1, "member": c.node(1).address(), "reason": "an intruder says so"});
    let resp = no_cert.post(format!("{supervisor}/report_failure")).json(&report).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN, "the supervisor's /report_failure without a client certificate");
    let resp = no_cert
        .post(format!("{supervisor}/register_client/"))
        .json(&json!({"url": "https://127.0.0.1:1/leader_changed/"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(no_cert.get(format!("{supervisor}/status")).send().await.unwrap().status(), StatusCode::OK);

    assert_eq!(c.snapshot().await, before, "a refused call changed a table or a log");
    let s = c.supervisor_status().await;
    assert_eq!(s["members"].as_array().map(Vec::len), Some(3), "a refused report removed a member: {s}");

    // Reads and commits need no client certificate; the agents still serve after all that.
    let resp = no_cert
        .post(format!("{}/commit/", c.url(0)))
        .json(&json!({"transaction": {"write_set": {"2": 2}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path.to_path_buf()
}
