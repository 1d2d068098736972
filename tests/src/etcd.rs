//! The etcd members of a cluster started with [`ClusterOptions::with_etcd`](crate::ClusterOptions):
//! real etcd processes (Debian's `etcd-server`) on free loopback ports, tuned as the
//! supervisors expect on one machine (heartbeat 50 ms, election 500 ms), and the faults the
//! tests inject into them.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::cluster::Daemon;
use crate::{Cluster, READY_TIMEOUT};

/// One etcd member: its address, ports and its process.
pub(crate) struct EtcdMember {
    pub(crate) ip: Ipv4Addr,
    pub(crate) client_port: u16,
    pub(crate) daemon: Daemon,
}

impl EtcdMember {
    /// `<ip>:<client port>`.
    pub(crate) fn client_address(&self) -> String {
        format!("{}:{}", self.ip, self.client_port)
    }
}

/// Where etcd is: `RMW_ETCD`, else `etcd` on the PATH, else Debian's `/usr/bin/etcd`.
fn etcd_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("RMW_ETCD") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("etcd")).find(|p| p.is_file()))
        .unwrap_or_default();
    on_path.unwrap_or_else(|| {
        let debian = PathBuf::from("/usr/bin/etcd");
        assert!(
            debian.is_file(),
            "etcd is missing: install Debian's etcd-server (./setup.sh test installs it), or set RMW_ETCD"
        );
        debian
    })
}

/// The members of a new etcd cluster with their data under `dir` (not started), one per
/// `(address, network namespace, client port, peer port)`.
pub(crate) fn members(dir: &Path, places: &[(Ipv4Addr, Option<String>, u16, u16)]) -> Vec<EtcdMember> {
    if places.is_empty() {
        return Vec::new();
    }
    let program = etcd_binary();
    let initial: Vec<String> =
        places.iter().enumerate().map(|(i, (ip, _, _, peer))| format!("e{i}=http://{ip}:{peer}")).collect();
    let token = format!("rmw-test-{}", dir.file_name().and_then(|n| n.to_str()).unwrap_or("etcd"));
    places
        .iter()
        .enumerate()
        .map(|(i, (ip, netns, client, peer))| {
            let (ip, client, peer) = (*ip, *client, *peer);
            let args: Vec<String> = [
                "--name".into(),
                format!("e{i}"),
                "--data-dir".into(),
                dir.join(format!("etcd{i}")).display().to_string(),
                "--listen-client-urls".into(),
                format!("http://{ip}:{client}"),
                "--advertise-client-urls".into(),
                format!("http://{ip}:{client}"),
                "--listen-peer-urls".into(),
                format!("http://{ip}:{peer}"),
                "--initial-advertise-peer-urls".into(),
                format!("http://{ip}:{peer}"),
                "--initial-cluster".into(),
                initial.join(","),
                "--initial-cluster-token".into(),
                token.clone(),
                "--initial-cluster-state".into(),
                "new".into(),
                // One machine: a quick failure detector, as the supervisors' lease expects.
                "--heartbeat-interval".into(),
                "50".into(),
                "--election-timeout".into(),
                "500".into(),
                "--logger".into(),
                "zap".into(),
                "--log-level".into(),
                "warn".into(),
            ]
            .into();
            EtcdMember {
                ip,
                client_port: client,
                daemon: Daemon {
                    name: format!("etcd{i}"),
                    program: program.clone(),
                    args,
                    env: Vec::new(),
                    log_path: dir.join(format!("etcd{i}.log")),
                    pid_path: dir.join(format!("etcd{i}.pid")),
                    netns: netns.clone(),
                    child: Mutex::new(None),
                },
            }
        })
        .collect()
}

/// `127.0.0.1:<client port>` of every member, comma-separated: what `--store etcd://` takes.
pub(crate) fn endpoints(members: &[EtcdMember]) -> String {
    members.iter().map(EtcdMember::client_address).collect::<Vec<_>>().join(",")
}

impl Cluster {
    fn etcd_member(&self, i: usize) -> &EtcdMember {
        self.etcd.get(i).unwrap_or_else(|| panic!("this cluster has no etcd member {i}"))
    }

    /// The etcd endpoints the supervisors use, comma-separated.
    pub fn etcd_endpoints(&self) -> String {
        endpoints(&self.etcd)
    }

    /// How many etcd members the cluster runs.
    pub fn etcd_len(&self) -> usize {
        self.etcd.len()
    }

    /// Starts every etcd member and waits until the cluster has a leader (every member's
    /// `/health` says so).
    pub(crate) async fn start_etcd_cluster(&self) {
        for member in &self.etcd {
            member.daemon.spawn();
        }
        for i in 0..self.etcd.len() {
            self.wait_etcd_healthy(i).await;
        }
    }

    /// Waits until member `i` answers `/health` with `"health":"true"` (it sees a leader).
    pub async fn wait_etcd_healthy(&self, i: usize) {
        let member = self.etcd_member(i);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(exit) = member.daemon.exit() {
                panic!("{} exited ({exit}); its log:\n{}", member.daemon.name, member.daemon.tail(30));
            }
            let url = format!("http://{}/health", member.client_address());
            let last = match self.etcd_http.get(&url).timeout(Duration::from_secs(2)).send().await {
                Ok(r) if r.status() == StatusCode::OK => return,
                Ok(r) => format!("HTTP {}", r.status()),
                Err(e) => e.to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "{} is not healthy after {READY_TIMEOUT:?} ({last}); its log:\n{}",
                member.daemon.name,
                member.daemon.tail(30)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILLs etcd member `i`; its data stays.
    pub fn kill_etcd(&self, i: usize) {
        assert!(self.etcd_member(i).daemon.kill(), "etcd{i} was not running");
    }

    /// Starts etcd member `i` again with its data (it rejoins its cluster). Does not wait.
    pub fn start_etcd_member(&self, i: usize) {
        self.etcd_member(i).daemon.spawn();
    }

    /// SIGSTOPs etcd member `i`.
    pub fn pause_etcd(&self, i: usize) {
        self.etcd_member(i).daemon.signal(libc::SIGSTOP);
    }

    /// SIGCONTs etcd member `i`.
    pub fn resume_etcd(&self, i: usize) {
        self.etcd_member(i).daemon.signal(libc::SIGCONT);
    }

    /// Which member leads the etcd cluster, as the first member that answers says.
    pub async fn etcd_leader(&self) -> Option<usize> {
        // Each member that answers says who it is and who leads: one status call per member.
        let mut ids = Vec::with_capacity(self.etcd.len());
        let mut leader = None;
        for member in &self.etcd {
            let url = format!("http://{}/v3/maintenance/status", member.client_address());
            let status = match self.etcd_http.post(&url).body("{}").timeout(Duration::from_secs(1)).send().await {
                Ok(resp) => resp.json::<Value>().await.ok(),
                Err(_) => None,
            };
            let id = status.as_ref().and_then(|s| s["header"]["member_id"].as_str().map(str::to_string));
            leader = leader.or_else(|| status.as_ref().and_then(|s| s["leader"].as_str().map(str::to_string)));
            ids.push(id);
        }
        let leader = leader?;
        ids.iter().position(|id| id.as_deref() == Some(leader.as_str()))
    }
}
