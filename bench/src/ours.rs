//! Our cluster for the benchmark: three PostgreSQL servers, an agent beside each (release
//! build) and the supervisor, on free ports.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use protocol::supervisor_status::SupervisorStatus;
use protocol::wire::MAX_SET_LEN;

use crate::load::Endpoint;
use crate::procs::{free_ports, wait_for, Daemon, PgServer, Workspace};

/// What every server of ours gets on top of the common settings: the agents prepare their
/// batches (`PREPARE TRANSACTION`).
const PG_EXTRA: &str = "max_prepared_transactions = 64\n";

/// How [`Ours::start`] starts a cluster.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Every connection over mutual TLS (`--setups ours-tls`).
    pub tls: bool,
    /// Prefix of its servers', agents' and supervisor's names (and logs) in the work folder:
    /// each cluster of a run has its own.
    pub prefix: &'static str,
    /// Flags every agent gets on top of the usual ones (e.g. `--retain-log`).
    pub agent_args: Vec<String>,
}

pub struct Ours {
    pub pgs: Vec<PgServer>,
    pub agents: Vec<Daemon>,
    pub supervisor: Daemon,
    pub addresses: Vec<String>,
    pub supervisor_address: String,
    pub http: reqwest::Client,
    /// With `--setups ours-tls`: every program serves HTTPS with mutual TLS inside, and the
    /// benchmark calls them with the cluster's CA and a certificate of its own.
    pub tls: Option<service::Tls>,
}

impl Ours {
    /// Starts PostgreSQL, agents and the supervisor as `options` say, and waits until the
    /// cluster takes commits.
    pub async fn start(ws: &mut Workspace, bin_dir: &Path, options: &Options) -> Result<Ours> {
        let tls = options.tls;
        let ports = free_ports(7)?;
        let addresses: Vec<String> = ports[3..6].iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let supervisor_address = format!("127.0.0.1:{}", ports[6]);
        // Names of its own for each cluster of the run, which all share one work folder.
        let prefix = options.prefix;
        let mut pgs = Vec::new();
        for (i, &port) in ports[..3].iter().enumerate() {
            let mut pg = ws.new_server(&format!("{prefix}ours-pg{i}"), port, PG_EXTRA)?;
            pg.start(ws)?;
            pgs.push(pg);
        }
        let agent_bin = bin_dir.join("agent");
        let supervisor_bin = bin_dir.join("supervisor");
        for bin in [&agent_bin, &supervisor_bin] {
            if !bin.exists() {
                bail!("{} not found: build the release binaries first (cargo build --release)", bin.display());
            }
        }
        let members = addresses.join(",");
        // A CA and a certificate per program (and one for the benchmark), as the end-to-end
        // harness makes them for its clusters over TLS.
        let pki = tls.then(|| {
            let programs: Vec<(String, Ipv4Addr)> = ["agent0", "agent1", "agent2", "supervisor", "bench"]
                .into_iter()
                .map(|stem| (stem.to_string(), Ipv4Addr::LOCALHOST))
                .collect();
            e2e::tls::Pki::create(&ws.root.join("tls"), &programs)
        });
        let tls_args_of = |stem: &str| pki.as_ref().map(|pki| pki.args(stem, true)).unwrap_or_default();
        let client_tls = pki.as_ref().map(|pki| pki.load("bench"));
        let mut agents = Vec::new();
        for (i, pg) in pgs.iter().enumerate() {
            let args = vec![
                "--node-id".into(),
                format!("node{i}"),
                "--listen".into(),
                addresses[i].clone(),
                "--database-url".into(),
                pg.url(),
                "--database-password-file".into(),
                ws.password_file.display().to_string(),
                "--members".into(),
                members.clone(),
                "--leader".into(),
                addresses[0].clone(),
                "--supervisor".into(),
                supervisor_address.clone(),
            ];
            let args = [args, options.agent_args.clone(), tls_args_of(&format!("agent{i}"))].concat();
            let mut agent = Daemon::new(ws, &format!("{prefix}agent{i}"), agent_bin.clone(), args);
            agent.spawn()?;
            agents.push(agent);
        }
        let state_file = ws.root.join(format!("{prefix}supervisor-state.json"));
        let mut supervisor = Daemon::new(
            ws,
            &format!("{prefix}supervisor"),
            supervisor_bin,
            vec![
                "--listen".into(),
                supervisor_address.clone(),
                "--agents".into(),
                members,
                "--state-file".into(),
                state_file.display().to_string(),
                "--poll-interval-ms".into(),
                "200".into(),
                "--misses".into(),
                "3".into(),
            ]
            .into_iter()
            .chain(tls_args_of("supervisor"))
            .collect(),
        );
        supervisor.spawn()?;
        let mut ours = Ours {
            pgs,
            agents,
            supervisor,
            addresses,
            supervisor_address,
            http: service::client_builder_tls(None, client_tls.as_ref())?.timeout(Duration::from_secs(5)).build()?,
            tls: client_tls,
        };
        ours.wait_all_members(Duration::from_secs(60)).await?;
        Ok(ours)
    }

    /// `host:port`'s base URL: `https://` when the cluster runs with TLS.
    pub fn url(&self, address: &str) -> String {
        service::base_url(address, self.tls.is_some())
    }

    /// Where the load goes when it goes to `address`.
    pub fn endpoint(&self, address: &str) -> Endpoint {
        Endpoint { url: self.url(address), tls: self.tls.clone() }
    }

    pub async fn status(&self) -> Result<SupervisorStatus> {
        let resp = self
            .http
            .get(format!("{}/status", self.url(&self.supervisor_address)))
            .timeout(Duration::from_secs(2))
            .send()
            .await?;
        Ok(resp.error_for_status()?.json().await?)
    }

    /// Waits until the supervisor has a serving leader and every agent is a live member.
    pub async fn wait_all_members(&mut self, timeout: Duration) -> Result<SupervisorStatus> {
        let want = self.addresses.len();
        let this = &*self;
        let result =
            wait_for("every agent to be a live member", timeout, Duration::from_millis(50), move || async move {
                let st = this.status().await?;
                let all_alive = st.nodes.iter().filter(|n| n.alive).count() == want;
                Ok((st.writes_available && st.leader.is_some() && st.members.len() == want && all_alive).then_some(st))
            })
            .await;
        result.map_err(|e| e.context(self.diagnose()))
    }

    pub async fn leader(&self) -> Result<String> {
        self.status().await?.leader.context("the supervisor knows no leader")
    }

    pub fn index_of(&self, address: &str) -> Result<usize> {
        self.addresses.iter().position(|a| a == address).with_context(|| format!("{address} is none of our agents"))
    }

    /// The logs of whatever died, for an error message.
    pub fn diagnose(&mut self) -> String {
        let mut out = String::new();
        for d in self.agents.iter_mut().chain(std::iter::once(&mut self.supervisor)) {
            if let Some(status) = d.exited() {
                out.push_str(&format!(
                    "\n{} exited ({status}); its log {} ends with:\n{}",
                    d.name,
                    d.log.display(),
                    d.log_tail()
                ));
            }
        }
        if out.is_empty() {
            out = format!(
                "(every process still runs; logs in {})",
                self.supervisor.log.parent().unwrap_or(Path::new("")).display()
            );
        }
        out
    }

    pub fn agent_pids(&self) -> Vec<i32> {
        self.agents.iter().filter_map(|a| a.pid()).collect()
    }

    pub fn postmaster_pids(&self) -> Vec<i32> {
        self.pgs.iter().filter_map(|p| p.postmaster_pid()).collect()
    }

    /// Loads `accounts` accounts (1..=accounts) through the leader, [`MAX_SET_LEN`] per commit
    /// (the most a write set may hold), `parallel` commits at a time; `loaded` counts the
    /// accounts committed so far.
    pub async fn populate(&self, accounts: i64, parallel: usize, loaded: Arc<AtomicU64>) -> Result<()> {
        let leader = self.url(&self.leader().await?);
        let chunk = MAX_SET_LEN as i64;
        let next = Arc::new(AtomicI64::new(1));
        let workers: Vec<_> = (0..parallel.max(1))
            .map(|_| {
                let (http, leader, next, loaded) = (self.http.clone(), leader.clone(), next.clone(), loaded.clone());
                tokio::spawn(async move {
                    loop {
                        let from = next.fetch_add(chunk, Ordering::Relaxed);
                        if from > accounts {
                            return Ok::<(), anyhow::Error>(());
                        }
                        let to = (from + chunk - 1).min(accounts);
                        let writes: Vec<String> = (from..=to).map(|k| format!("\"{k}\":1000")).collect();
                        let body = format!(r#"{{"transaction":{{"write_set":{{{}}}}}}}"#, writes.join(","));
                        let resp = http
                            .post(format!("{leader}/commit/"))
                            .header("content-type", "application/json")
                            .body(body)
                            .timeout(Duration::from_secs(30))
                            .send()
                            .await?;
                        let status = resp.status();
                        if !status.is_success() {
                            bail!(
                                "loading accounts {from}..={to}: {status}: {}",
                                resp.text().await.unwrap_or_default()
                            );
                        }
                        loaded.fetch_add((to - from + 1) as u64, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let mut first_error = None;
        for w in workers {
            let result = w.await.map_err(anyhow::Error::from).and_then(|r| r);
            if let Err(e) = result {
                // The others stop at the next chunk.
                next.store(accounts + 1, Ordering::Relaxed);
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Empties PostgreSQL of agent `i` (whose agent must be stopped): stops it, removes its
    /// data folder and makes it again as the run made it (a copy of the run's `initdb`, the
    /// same port and settings), and starts it.
    pub fn wipe_postgres(&mut self, ws: &mut Workspace, i: usize) -> Result<()> {
        let (name, port, dir) = (self.pgs[i].name.clone(), self.pgs[i].port, self.pgs[i].dir.clone());
        self.pgs[i].stop();
        std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
        let mut pg = ws.new_server(&name, port, PG_EXTRA)?;
        pg.start(ws)?;
        self.pgs[i] = pg;
        Ok(())
    }

    /// A blind commit of one random-ish account to `address`: whether it was acknowledged.
    pub async fn try_commit(&self, http: &reqwest::Client, address: &str, account: i64) -> bool {
        commit_one(http, &self.url(address), account).await.is_ok()
    }

    /// Restarts agent `i` (after a kill) and waits until it is a member again; returns how
    /// long that took from the restart.
    pub async fn restart_and_wait_member(&mut self, i: usize, timeout: Duration) -> Result<Duration> {
        self.agents[i].spawn()?;
        let started = Instant::now();
        let this = &*self;
        let address = &self.addresses[i];
        let result = wait_for(
            &format!("{address} to be a member again"),
            timeout,
            Duration::from_millis(10),
            move || async move {
                let st = this.status().await?;
                Ok(st.members.contains(address).then_some(()))
            },
        )
        .await;
        if let Err(e) = result {
            return Err(e.context(self.diagnose()));
        }
        Ok(started.elapsed())
    }

    /// Stops everything (supervisor first, so that it does not react to the rest going away).
    pub fn stop(&mut self) {
        self.supervisor.kill();
        for a in &mut self.agents {
            a.kill();
        }
        for pg in &mut self.pgs {
            pg.stop();
        }
    }
}

impl Drop for Ours {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One blind commit of `account` at `address` (a base URL): Ok when acknowledged, else the
/// answer or the error.
pub async fn commit_one(http: &reqwest::Client, address: &str, account: i64) -> Result<(), String> {
    let body = format!(r#"{{"transaction":{{"write_set":{{"{account}":1}}}}}}"#);
    let resp = http
        .post(format!("{address}/commit/"))
        .header("content-type", "application/json")
        .body(body)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .map_err(|e| format!("{address}: {e}"))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    Err(format!("{address}: {status}: {}", resp.text().await.unwrap_or_default()))
}
