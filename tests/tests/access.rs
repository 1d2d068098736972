//! Who may get in, on a real cluster: client API keys on `/read/` and `/commit/` (`--api-keys`),
//! through curl-like calls and through `client run`, and PostgreSQL's own door (scram-sha-256:
//! nothing connects without the password). Each refusal changes nothing in any table or log,
//! and no key reaches an agent's log.

use std::path::PathBuf;
use std::process::Command;

use e2e::browser::client_binary;
use e2e::{Cluster, ClusterOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};

const WRITE_KEY: &str = "e2e-write-key-5d0b9a7c3e1f";
const READ_KEY: &str = "e2e-read-key-8a2c4e6f0b1d";

/// A file in this test process's own folder under the temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> TempFile {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("rmw-e2e-{}-access", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the test's folder");
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write the file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temp path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn post(c: &Cluster, node: usize, path: &str, key: Option<&str>, body: &Value) -> (StatusCode, Value) {
    let mut req = c.http().post(format!("{}{path}", c.url(node))).json(body);
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = resp.status();
    (status, resp.json().await.unwrap_or_else(|e| panic!("POST {path}: not JSON: {e}")))
}

/// Runs `client` with `args` off the runtime's threads: exit code, stdout, stderr.
async fn client(args: Vec<String>) -> (Option<i32>, String, String) {
    let output = tokio::task::spawn_blocking(move || {
        Command::new(client_binary())
            .args(&args)
            .env_remove("CLIENT_API_KEY_FILE")
            .env_remove("CLIENT_SUPERVISOR")
            .output()
            .expect("run the client binary")
    })
    .await
    .expect("the client's thread");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (output.status.code(), text(&output.stdout), text(&output.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_let_reads_and_commits_in_by_scope_and_refusals_change_nothing() {
    let keys = TempFile::new(
        "api-keys",
        &format!("# key scope name\n{WRITE_KEY} write teller\n{READ_KEY}  read  reporting  # nightly\n"),
    );
    let mut options = ClusterOptions::new(3);
    options.agent_args.extend(["--api-keys".into(), keys.path().into()]);
    let c = Cluster::start_with(options).await;
    let write = json!({"transaction": {"write_set": {"1": 100, "2": 200}}});
    let read = json!({"transaction": {"read_set": [1, 2]}});

    // With the write key, a commit goes through and replicates as usual.
    let (status, answer) = post(&c, 0, "/commit/", Some(WRITE_KEY), &write).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    c.wait_applied(1, 1).await;
    c.wait_applied(2, 1).await;
    let before = c.snapshot().await;

    // Refused: no key, an empty or unknown or overlong one, the cluster's internal scheme
    // without "Bearer", and a read key on /commit/.
    let overlong = "k".repeat(10_000);
    let unknown = ["", "e2e-write-key-5d0b9a7c3e1", "e2e-write-key-5d0b9a7c3e1ff", overlong.as_str()];
    for node in 0..3 {
        for path in ["/read/", "/commit/"] {
            let body = if path == "/read/" { &read } else { &write };
            let (status, answer) = post(&c, node, path, None, body).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} on node {node} without a key: {answer}");
            assert_eq!(answer["error"], "unauthorized");
            assert!(answer["message"].as_str().is_some_and(|m| m.contains("API key")), "{answer}");
            for key in unknown {
                let (status, answer) = post(&c, node, path, Some(key), body).await;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} on node {node} with {key:.30}: {answer}");
            }
        }
        let (status, answer) = post(&c, node, "/commit/", Some(READ_KEY), &write).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "a read key on /commit/ of node {node}: {answer}");
        assert_eq!(answer["error"], "forbidden");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.contains("reporting") && message.contains("write key"), "{answer}");
        assert!(!message.contains(READ_KEY), "the refusal repeats the key: {answer}");
    }
    assert_eq!(c.snapshot().await, before, "a refused call changed a table or a log");

    // A read key reads (on any node), a write key reads too.
    for key in [READ_KEY, WRITE_KEY] {
        let (status, answer) = post(&c, 0, "/read/", Some(key), &read).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["values"], json!({"1": 100, "2": 200}), "{answer}");
    }
    // The endpoints for load balancers and monitoring stay open.
    assert_eq!(c.get_raw(0, "/health").await.status, StatusCode::OK);
    assert_eq!(c.get_raw(0, "/primary").await.status, StatusCode::OK);
    assert_eq!(c.get_raw(1, "/metrics").await.status, StatusCode::OK);
    let (_, doc) = c.get(0, "/openapi.json").await;
    assert!(doc["components"]["securitySchemes"]["api_key"].is_object(), "the document names the key scheme");

    // `client run` sends the key it is given, and says what to do without one.
    let agent = c.node(0).address();
    let run = |transaction: &str, key: Option<&str>| {
        let mut args = vec!["run".to_string(), transaction.to_string(), "--agent".into(), agent.clone()];
        args.extend(["--supervisor".into(), String::new(), "--wait-secs".into(), "2".into()]);
        if let Some(key) = key {
            args.extend(["--api-key-file".into(), key.to_string()]);
        }
        client(args)
    };
    let write_key = TempFile::new("write-key", &format!("{WRITE_KEY}\n"));
    let read_key = TempFile::new("read-key", READ_KEY);
    let (code, out, err) = run("r(1)w(3=33)", Some(write_key.path())).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("COMMIT"), "{out}");
    let (code, out, err) = run("r(3)", Some(read_key.path())).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("33"), "{out}");
    let (code, out, err) = run("w(4=44)", Some(read_key.path())).await;
    assert_eq!(code, Some(2), "a read key cannot commit: {out}{err}");
    assert!(err.contains("write key") && !err.contains(READ_KEY), "{err}");
    let (code, out, err) = run("w(4=44)", None).await;
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("--api-key-file"), "{err}");
    let (code, _, err) = run("w(4=44)", Some("/nonexistent/key")).await;
    assert_eq!(code, Some(2));
    assert!(err.contains("/nonexistent/key"), "{err}");
    let (status, answer) = post(&c, 0, "/read/", Some(READ_KEY), &json!({"transaction": {"read_set": [4]}})).await;
    assert_eq!((status, &answer["values"]["4"]), (StatusCode::OK, &Value::Null), "w(4=44) was refused: {answer}");

    // Every transaction is logged with its key's name, and no key is in any log.
    let leader_log = c.agent_log(0, 400);
    assert!(leader_log.contains("teller") && leader_log.contains("reporting"), "{leader_log}");
    for i in 0..3 {
        let log = c.agent_log(i, 2000);
        for key in [WRITE_KEY, READ_KEY] {
            assert!(!log.contains(key), "node {i}'s log holds a key");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_lets_nobody_in_without_the_password() {
    let c = Cluster::start(2).await;
    c.write(0, &[(1, 10)]).await;
    let url = c.node(0).database_url();
    let (with_password, host) = url.split_once('@').expect("a URL with a user part");
    let password = with_password.rsplit_once(':').map(|(_, p)| p).expect("the harness's URL holds the password");
    for (user_part, what) in [("postgres", "no password"), ("postgres:wrong-password", "a wrong password")] {
        let attempt = format!("postgres://{user_part}@{host}");
        let refused = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(&attempt)
            .await
            .err()
            .unwrap_or_else(|| panic!("PostgreSQL let a connection in with {what}"));
        let text = refused.to_string();
        assert!(text.contains("password"), "{what}: {text}");
        assert!(!text.contains(password), "the error shows the password: {text}");
    }
    assert_eq!(c.table(0).await.len(), 1, "the agent, with the password, still works");
}
