//! Secrets never leave the files they are kept in: after a run over mutual TLS with the cluster
//! token, client API keys and PostgreSQL passwords, with commits, refusals of every kind, a
//! failover, `client run` and `client serve` (the form, the cluster page, its `/leader_changed/`
//! refusing wrong, empty and overlong tokens), no log of any program (agents and the web client
//! at debug level, supervisor, PostgreSQL), no `/status`, page, error body, OpenAPI document or
//! client output holds the token, a key, a password or a private key.

use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::browser::client_binary;
use e2e::{free_port, Cluster, ClusterOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};

const TOKEN: &str = "e2e-secret-token-71c9d3b5a0f2";
const WRITE_KEY: &str = "e2e-secret-write-key-4b8e1f6a2c9d";
const READ_KEY: &str = "e2e-secret-read-key-0d7a3c5e9b1f";
const UNKNOWN_KEY: &str = "e2e-secret-unknown-key-6f2a8d4c0e3b";

/// A folder of this test's files, removed on drop.
struct Folder(PathBuf);

impl Folder {
    fn new() -> Folder {
        let dir = std::env::temp_dir().join(format!("rmw-e2e-{}-secrets", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the test's folder");
        Folder(dir)
    }

    /// Writes `text` to `name` (mode 0600); its path.
    fn file(&self, name: &str, text: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write the file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
        path.to_str().expect("a UTF-8 temp path").to_string()
    }
}

/// A child process killed on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every `*.log` file under `dir`, with its text.
fn logs_under(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(logs_under(&path));
        } else if path.extension().is_some_and(|e| e == "log") {
            let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default()).into_owned();
            found.push((path, text));
        }
    }
    found
}

/// Sends `method path` to `base` with an optional bearer credential; the status and the body.
async fn call(c: &Cluster, method: &str, url: String, bearer: Option<&str>, body: &Value) -> (StatusCode, String) {
    let mut req = match method {
        "GET" => c.http().get(&url),
        _ => c.http().post(&url).json(body),
    };
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status();
    (status, resp.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_key_password_or_private_key_reaches_a_log_a_status_or_an_answer() {
    let folder = Folder::new();
    let keys = folder.file("api-keys", &format!("{WRITE_KEY} write teller\n{READ_KEY} read reporting\n"));
    let token_file = folder.file("cluster-token", TOKEN);
    let write_key_file = folder.file("write.key", WRITE_KEY);

    let mut options = ClusterOptions::with_tls(3);
    options.agent_args.extend(["--api-keys".into(), keys, "--cluster-token-file".into(), token_file.clone()]);
    // Debug level: what a user turns on to look closer must not show secrets either.
    options.agent_env.push(("RUST_LOG".into(), "debug".into()));
    options.supervisor_args.extend(["--cluster-token-file".into(), token_file]);
    let c = Cluster::start_with(options).await;
    let pki = c.pki().expect("a cluster with TLS");
    let mut answers: Vec<(String, String)> = Vec::new();

    // Traffic of every kind: a commit and a read with their keys, and refusals.
    let commit = json!({"transaction": {"write_set": {"1": 100, "2": 200}}});
    let read = json!({"transaction": {"read_set": [1, 2]}});
    let leader = c.url(0);
    for (path, key, body, expected) in [
        ("/commit/", Some(WRITE_KEY), &commit, StatusCode::OK),
        ("/read/", Some(READ_KEY), &read, StatusCode::OK),
        ("/commit/", Some(READ_KEY), &commit, StatusCode::FORBIDDEN),
        ("/commit/", Some(UNKNOWN_KEY), &commit, StatusCode::UNAUTHORIZED),
        ("/read/", None, &read, StatusCode::UNAUTHORIZED),
        ("/commit/", Some(TOKEN), &commit, StatusCode::UNAUTHORIZED),
    ] {
        let (status, body) = call(&c, "POST", format!("{leader}{path}"), key, body).await;
        assert_eq!(status, expected, "POST {path} with {key:?}: {body}");
        answers.push((format!("POST {path}"), body));
    }
    // Internal endpoints and drills with a key in place of the token, and with a wrong token.
    for bearer in [WRITE_KEY, "wrong-token"] {
        for (method, path) in
            [("GET", "/down_leader/"), ("GET", "/replication_log/?after=0"), ("POST", "/internal/fence")]
        {
            let (status, body) = call(&c, method, format!("{}{path}", c.url(1)), Some(bearer), &json!({})).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
            answers.push((format!("{method} {path}"), body));
        }
        let url = format!("{}/register_client/", c.supervisor_url_at(0));
        let (status, body) = call(&c, "POST", url, Some(bearer), &json!({"url": "https://127.0.0.1:1/"})).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "/register_client/: {body}");
        answers.push(("POST /register_client/".into(), body));
    }
    // PostgreSQL without its password.
    let url = c.node(0).database_url();
    let (user_part, host) = url.split_once('@').expect("a URL with a user part");
    let password =
        user_part.rsplit_once(':').map(|(_, p)| p.to_string()).expect("the harness's URL holds the password");
    let refused = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(&format!("postgres://postgres:wrong-password@{host}"))
        .await
        .expect_err("PostgreSQL refuses a wrong password");
    answers.push(("PostgreSQL login".into(), refused.to_string()));

    // The command-line client with a key and the CA, and a failover under way.
    let supervisor = c.supervisor_address();
    let args = vec![
        "--tls-ca".to_string(),
        pki.ca_file().to_str().expect("UTF-8").to_string(),
        "run".into(),
        "--agent".into(),
        c.node(0).address(),
        "--supervisor".into(),
        supervisor,
        "--api-key-file".into(),
        write_key_file,
        "r(1)w(3=30)".into(),
    ];
    let output = tokio::task::spawn_blocking(move || {
        Command::new(client_binary()).args(&args).env_remove("CLIENT_API_KEY_FILE").output().expect("run the client")
    })
    .await
    .expect("the client's thread");
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "client run: {printed}");
    answers.push(("client run".into(), printed));
    // The web client, with the token, the key and its own certificate.
    let (cert, cert_key) = pki.files("harness");
    let port = free_port();
    let web = format!("https://127.0.0.1:{port}");
    let client_log = folder.0.join("client.log");
    let out = std::fs::File::create(&client_log).expect("create the client's log");
    let err = out.try_clone().expect("clone the log's handle");
    let _serve = Killed(
        Command::new(client_binary())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--agent", &c.node(0).address()])
            .args(["--supervisor", &c.supervisor_address(), "--cluster-token-file", &folder.file("token2", TOKEN)])
            .args([
                "--api-key-file",
                &folder.file("write2.key", WRITE_KEY),
                "--tls-ca",
                pki.ca_file().to_str().expect("UTF-8"),
            ])
            .args(["--tls-cert", cert.to_str().expect("UTF-8"), "--tls-key", cert_key.to_str().expect("UTF-8")])
            .arg("--tls-client-auth")
            .env("RUST_LOG", "debug")
            .env_remove("CLIENT_API_KEY_FILE")
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start client serve"),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while c.http().get(format!("{web}/health")).send().await.map_or(true, |r| !r.status().is_success()) {
        assert!(std::time::Instant::now() < deadline, "client serve did not answer /health over HTTPS");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let form =
        c.http().post(format!("{web}/create/")).form(&[("transaction", "r(1)w(4=40)")]).send().await.expect("the form");
    let page = form.text().await.unwrap_or_default();
    assert!(page.contains("COMMIT"), "the form's commit with the client's key: {page}");
    answers.push(("the form's answer".into(), page));
    let overlong = "t".repeat(4000);
    for bearer in ["wrong-token", "", overlong.as_str(), WRITE_KEY] {
        let body = json!({"leader": c.node(2).address()});
        let (status, body) = call(&c, "POST", format!("{web}/leader_changed/"), Some(bearer), &body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "/leader_changed/ with a {}-byte token: {body}", bearer.len());
        answers.push(("client /leader_changed/".into(), body));
    }

    c.kill_agent(0);
    let new_leader = c.wait_leader_change(0).await;
    let (status, body) = call(&c, "POST", format!("{}/commit/", c.url(new_leader)), Some(WRITE_KEY), &commit).await;
    assert_eq!(status, StatusCode::OK, "a commit after the failover: {body}");

    // What every program shows: status, OpenAPI.
    for i in 1..3 {
        for path in ["/status", "/openapi.json", "/metrics"] {
            let (_, body) = call(&c, "GET", format!("{}{path}", c.url(i)), None, &json!({})).await;
            answers.push((format!("node {i} {path}"), body));
        }
    }
    for path in ["/create/", "/cluster/", "/cluster/status.json", "/metrics", "/openapi.json"] {
        let (_, body) = call(&c, "GET", format!("{web}{path}"), None, &json!({})).await;
        answers.push((format!("client serve {path}"), body));
    }
    for path in ["/status", "/history", "/openapi.json"] {
        let (_, body) = call(&c, "GET", format!("{}{path}", c.supervisor_url_at(0)), None, &json!({})).await;
        answers.push((format!("supervisor {path}"), body));
    }

    let mut logs = logs_under(c.dir());
    logs.extend(logs_under(&folder.0));
    let names: Vec<String> = logs.iter().map(|(p, _)| p.display().to_string()).collect();
    assert!(names.iter().filter(|n| n.contains("agent")).count() >= 3, "the agents' logs: {names:?}");
    assert!(names.iter().any(|n| n.contains("supervisor")), "the supervisor's log: {names:?}");
    assert!(names.iter().any(|n| n.ends_with("client.log")), "the web client's log: {names:?}");
    assert!(names.iter().filter(|n| n.ends_with("server.log")).count() >= 3, "PostgreSQL's logs: {names:?}");
    assert!(
        logs.iter().any(|(_, text)| text.contains("key=teller")),
        "the transactions are logged with the key's name: {names:?}"
    );

    let secrets = [
        ("the cluster token", TOKEN),
        ("the write key", WRITE_KEY),
        ("the read key", READ_KEY),
        ("the unknown key", UNKNOWN_KEY),
        ("the PostgreSQL password", password.as_str()),
        ("a private key", "PRIVATE KEY"),
    ];
    for (what, secret) in secrets {
        for (path, text) in &logs {
            assert!(!text.contains(secret), "{} holds {what}", path.display());
        }
        for (source, text) in &answers {
            assert!(!text.contains(secret), "{source} shows {what}: {text}");
        }
    }
}
