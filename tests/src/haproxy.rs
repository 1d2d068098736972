//! A real HAProxy in front of a cluster's agents, configured exactly as `./setup.sh` configures
//! it with `RMW_PROXY=haproxy`: the configuration is setup.sh's own, printed by
//! `./setup.sh haproxy-config <agent>...` (a frontend for writes whose backend checks
//! `GET /primary` on every agent, one for reads checking `GET /read-only`, checks every 200 ms),
//! here on two free ports.
//!
//! ```no_run
//! # async fn example() {
//! use e2e::haproxy::Haproxy;
//! use e2e::{Cluster, ClusterOptions};
//!
//! let c = Cluster::start_with(ClusterOptions::supervised(3)).await;
//! let proxy = Haproxy::start(&c);
//! proxy.wait_writable().await; // the write port reaches the leader
//! // POST proxy.write_url() + "/commit/", proxy.read_url() + "/read/"
//! # }
//! ```
//!
//! HAProxy is stopped (SIGKILL) and its folder removed when the value is dropped, also when the
//! test panics (set `RMW_KEEP=1` to keep the folder); on a panic its log's tail is printed.
//! Environment: `RMW_HAPROXY`, the binary (default: `haproxy` on `PATH`, else
//! `/usr/sbin/haproxy`; `./setup.sh test` installs Debian's package).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::tail;
use crate::{free_port, Cluster, READY_TIMEOUT};

pub struct Haproxy {
    child: Option<Child>,
    dir: PathBuf,
    log_path: PathBuf,
    write_port: u16,
    read_port: u16,
    http: reqwest::Client,
}

fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("RMW_HAPROXY") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("haproxy"))
        .find(|candidate| candidate.is_file());
    let path = on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/haproxy"));
    assert!(
        path.is_file(),
        "haproxy not found (on PATH or /usr/sbin): install Debian's haproxy package (./setup.sh test does), or set RMW_HAPROXY"
    );
    path
}

/// setup.sh's HAProxy configuration for these agents, on these ports.
pub fn config(agents: &[String], write_port: u16, read_port: u16) -> String {
    let setup = Path::new(env!("CARGO_MANIFEST_DIR")).join("../setup.sh");
    let output = Command::new("bash")
        .arg(&setup)
        .arg("haproxy-config")
        .args(agents)
        .env("PROXY_WRITE_PORT", write_port.to_string())
        .env("PROXY_READ_PORT", read_port.to_string())
        .output()
        .unwrap_or_else(|e| panic!("run {} haproxy-config: {e}", setup.display()));
    assert!(
        output.status.success(),
        "{} haproxy-config failed ({}): {}",
        setup.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("the configuration is text")
}

impl Haproxy {
    /// Writes setup.sh's configuration for the cluster's agents, checks it with `haproxy -c`
    /// and starts HAProxy in the foreground (`-db`) on two free ports.
    pub fn start(cluster: &Cluster) -> Haproxy {
        let program = binary();
        let agents: Vec<String> = cluster.nodes().map(|n| n.address()).collect();
        let (write_port, read_port) = (free_port(), free_port());
        let dir = cluster.dir().join("haproxy");
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let config_path = dir.join("haproxy.cfg");
        fs::write(&config_path, config(&agents, write_port, read_port)).expect("write haproxy.cfg");
        let check = Command::new(&program).arg("-c").arg("-f").arg(&config_path).output().expect("run haproxy -c");
        assert!(
            check.status.success(),
            "haproxy refuses setup.sh's configuration:\n{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let log_path = dir.join("haproxy.log");
        let log = fs::File::create(&log_path).expect("create haproxy.log");
        let child = Command::new(&program)
            .arg("-db")
            .arg("-f")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("an HTTP client");
        Haproxy { child: Some(child), dir, log_path, write_port, read_port, http }
    }

    /// `http://127.0.0.1:<port>` of the write frontend (the leader).
    pub fn write_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.write_port)
    }

    /// `http://127.0.0.1:<port>` of the read frontend (the leader or a member replica).
    pub fn read_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.read_port)
    }

    /// The last lines of HAProxy's log (its health-check transitions, errors).
    pub fn log(&self, lines: usize) -> String {
        tail(&self.log_path, lines)
    }

    /// Waits until `GET /primary` through the write port answers 200: HAProxy has found the
    /// leader. Fails with HAProxy's log after [`READY_TIMEOUT`].
    pub async fn wait_writable(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(r) = self.http.get(format!("{}/primary", self.write_url())).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "HAProxy's write port reaches no leader:\n{}", self.log(30));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- haproxy log (last 40 lines):\n{}", self.log(40));
        }
        if std::env::var_os("RMW_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
