//! Where the supervisor keeps the cluster's configuration: a state file on its own disk (the
//! default, one supervisor), or etcd (`--store etcd://h1:2379,h2:2379,h3:2379/prefix`), shared
//! by an active supervisor and its standbys.
//!
//! In etcd, under the prefix: `config` holds [`Persisted`] (term, leader, members, version,
//! cluster id, clients) and `active` names the supervisor that acts, on a lease. Every write
//! of `config` compares the revision the writer last read (and, normally, that `active` is on
//! the writer's lease), so two writers can never both win a term: the loser re-reads and
//! starts again from what the winner wrote (docs/guarantees.md).

use std::path::{Path, PathBuf};
use std::sync::Mutex as SyncMutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use protocol::operator::HistoryEvent;
use protocol::ClusterConfig;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::etcd::{Etcd, EtcdError, Written};

/// What the supervisor keeps: in the state file, or under `<prefix>/config` in etcd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Persisted {
    pub config: ClusterConfig,
    pub clients: Vec<String>,
    /// The cluster's id, learnt from its leader (absent in state files of older versions).
    #[serde(default)]
    pub cluster_id: Option<Uuid>,
    /// What the supervisor did, oldest first, the last `MAX_HISTORY_EVENTS` (absent in state
    /// files of older versions).
    #[serde(default)]
    pub events: Vec<HistoryEvent>,
    /// Automatic failover and recovery are off (`POST /pause`), until `POST /resume`.
    #[serde(default)]
    pub maintenance: bool,
    /// The nodes the supervisor watches, in round-robin order, once an operator added or
    /// removed one; None: the `--agents` list.
    #[serde(default)]
    pub nodes: Option<Vec<String>>,
}

impl Persisted {
    /// The nodes the supervisor watches, in round-robin order: the stored list once an operator
    /// changed it, else `agents` (`--agents`).
    pub fn nodes_or<'a>(&'a self, agents: &'a [String]) -> &'a [String] {
        self.nodes.as_deref().unwrap_or(agents)
    }

    /// Before any configuration: term 0, which the first poll replaces with what the agents
    /// report.
    pub fn empty() -> Persisted {
        Persisted {
            config: ClusterConfig { term: 0, version: 0, leader: None, members: vec![] },
            clients: vec![],
            cluster_id: None,
            events: vec![],
            maintenance: false,
            nodes: None,
        }
    }
}

/// Which store `--store` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// The state file (`--state-file`).
    File,
    /// etcd: its client endpoints (`host:port`) and the key prefix of this cluster.
    Etcd { endpoints: Vec<String>, prefix: String },
}

/// The prefix when `--store etcd://...` names none.
pub const DEFAULT_PREFIX: &str = "/rmw/default";

impl std::str::FromStr for StoreSpec {
    type Err = String;

    /// `file`, or `etcd://host:port[,host:port...][/prefix]`.
    fn from_str(s: &str) -> Result<StoreSpec, String> {
        let s = s.trim();
        if s.is_empty() || s == "file" {
            return Ok(StoreSpec::File);
        }
        let Some(rest) = s.strip_prefix("etcd://") else {
            return Err(format!("{s:?} is not a store: give 'file' or 'etcd://host:port,host:port,...[/prefix]'"));
        };
        let (hosts, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let endpoints: Vec<String> =
            hosts.split(',').map(str::trim).filter(|h| !h.is_empty()).map(str::to_string).collect();
        if endpoints.is_empty() {
            return Err(format!("{s:?} names no etcd endpoint: give etcd://host:port,..."));
        }
        for endpoint in &endpoints {
            let port = endpoint.rsplit_once(':').and_then(|(host, port)| (!host.is_empty()).then_some(port));
            if port.and_then(|p| p.parse::<u16>().ok()).is_none() {
                return Err(format!("etcd endpoint {endpoint:?} is not host:port"));
            }
        }
        let prefix = if prefix.is_empty() { DEFAULT_PREFIX.to_string() } else { prefix.to_string() };
        Ok(StoreSpec::Etcd { endpoints, prefix })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another supervisor wrote first: nothing was written; the caller re-reads.
    #[error("another supervisor changed the configuration first (now at revision {0})")]
    Conflict(i64),
    /// This supervisor does not hold the lease: it must not act.
    #[error("this supervisor is a standby (it does not hold the lease): it does not change the configuration")]
    NotActive,
    #[error("the configuration store is unavailable: {0}")]
    Unavailable(String),
    #[error("the configuration store holds something unreadable: {0}")]
    Corrupt(String),
}

impl From<EtcdError> for StoreError {
    fn from(e: EtcdError) -> StoreError {
        StoreError::Unavailable(e.to_string())
    }
}

/// The configuration as read, with the revision a write must compare.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub persisted: Option<Persisted>,
    /// 0: nothing stored yet.
    pub revision: i64,
}

/// The record under `<prefix>/active`: who acts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveRecord {
    /// The active supervisor's HTTP address.
    pub address: String,
    pub lease: i64,
}

pub enum Store {
    File { path: PathBuf },
    Etcd { etcd: Etcd, prefix: String, lease: Lease, act_without_lease: bool },
}

impl Store {
    /// `act_without_lease` (tests only): write the configuration on the revision alone, as two
    /// supervisors that both believe they are active would.
    pub fn open(spec: &StoreSpec, state_file: &Path, act_without_lease: bool) -> anyhow::Result<Store> {
        Ok(match spec {
            StoreSpec::File => Store::File { path: state_file.to_path_buf() },
            StoreSpec::Etcd { endpoints, prefix } => Store::Etcd {
                etcd: Etcd::new(endpoints.clone())?,
                prefix: prefix.clone(),
                lease: Lease::default(),
                act_without_lease,
            },
        })
    }

    /// For `GET /status`: `file <path>` or `etcd <endpoints> <prefix>`.
    pub fn describe(&self) -> String {
        match self {
            Store::File { path } => format!("file {}", path.display()),
            Store::Etcd { etcd, prefix, .. } => format!("etcd {} {prefix}", etcd.endpoints().join(",")),
        }
    }

    fn config_key(prefix: &str) -> String {
        format!("{prefix}/config")
    }

    fn active_key(prefix: &str) -> String {
        format!("{prefix}/active")
    }

    pub async fn load(&self) -> Result<Loaded, StoreError> {
        match self {
            Store::File { path } => match std::fs::read(path) {
                Ok(bytes) => {
                    let persisted = serde_json::from_slice(&bytes)
                        .map_err(|e| StoreError::Corrupt(format!("the state file {}: {e}", path.display())))?;
                    Ok(Loaded { persisted: Some(persisted), revision: 1 })
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Loaded { persisted: None, revision: 0 }),
                Err(e) => Err(StoreError::Unavailable(format!("reading {}: {e}", path.display()))),
            },
            Store::Etcd { etcd, prefix, .. } => match etcd.get(&Store::config_key(prefix)).await? {
                None => Ok(Loaded { persisted: None, revision: 0 }),
                Some(kv) => {
                    let persisted = serde_json::from_slice(&kv.value)
                        .map_err(|e| StoreError::Corrupt(format!("{}: {e}", Store::config_key(prefix))))?;
                    Ok(Loaded { persisted: Some(persisted), revision: kv.mod_revision })
                }
            },
        }
    }

    /// Writes `persisted` if the stored revision is still `expected`; the new revision.
    pub async fn save(&self, persisted: &Persisted, expected: i64) -> Result<i64, StoreError> {
        match self {
            Store::File { path } => {
                write_file(path, persisted).map_err(|e| StoreError::Unavailable(format!("{e:#}")))?;
                Ok(expected + 1)
            }
            Store::Etcd { etcd, prefix, lease, act_without_lease } => {
                let key = Store::config_key(prefix);
                let active_key = Store::active_key(prefix);
                let holding = if *act_without_lease {
                    None
                } else {
                    match lease.acting() {
                        Some(id) => Some((active_key.as_str(), id)),
                        None => return Err(StoreError::NotActive),
                    }
                };
                let bytes = serde_json::to_vec(persisted).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                match etcd.put_if(&key, &bytes, expected, holding, None).await? {
                    Written::Done(revision) => Ok(revision),
                    // A write whose answer was lost and that a retry then found already done.
                    Written::Lost(Some(kv)) if kv.value == bytes => Ok(kv.mod_revision),
                    Written::Lost(current) => {
                        let revision = current.map_or(0, |kv| kv.mod_revision);
                        if revision == expected && holding.is_some() {
                            // The revision held, so the lease did not: someone else acts.
                            lease.lost();
                            return Err(StoreError::NotActive);
                        }
                        Err(StoreError::Conflict(revision))
                    }
                }
            }
        }
    }

    /// Whether this supervisor may act now: always with a state file; with etcd, while it holds
    /// the `active` key on a lease that cannot have expired yet.
    pub fn is_active(&self) -> bool {
        match self {
            Store::File { .. } => true,
            Store::Etcd { act_without_lease: true, .. } => true,
            Store::Etcd { lease, .. } => lease.acting().is_some(),
        }
    }

    /// With etcd: who holds the `active` key, as last seen, and the last error talking to etcd.
    pub fn active_holder(&self) -> (Option<String>, Option<String>) {
        match self {
            Store::File { .. } => (None, None),
            Store::Etcd { lease, .. } => {
                let state = lease.state();
                (state.holder.map(|h| h.address), state.error)
            }
        }
    }

    /// One step of holding (or trying to take) the `active` key: renews this supervisor's
    /// lease, or takes a new one, and takes the key when it is free. True when this step made
    /// this supervisor active (the caller then re-reads the configuration). Nothing to do with
    /// a state file.
    pub async fn campaign(&self, me: &str, ttl: Duration) -> bool {
        let Store::Etcd { etcd, prefix, lease, .. } = self else { return false };
        match campaign_step(etcd, &Store::active_key(prefix), lease, me, ttl).await {
            Ok(became) => {
                lease.set_error(None);
                became
            }
            Err(e) => {
                lease.set_error(Some(e.to_string()));
                false
            }
        }
    }

    /// Steps down on shutdown: the standbys take over at once instead of after the lease's TTL.
    pub async fn resign(&self) {
        let Store::Etcd { etcd, prefix, lease, .. } = self else { return };
        let Some(id) = lease.state().id else { return };
        lease.lost();
        if let Err(e) = etcd.delete_if_leased(&Store::active_key(prefix), id).await {
            tracing::warn!(error = %e, "could not give up the active key; the standbys wait for the lease to expire");
        }
        if let Err(e) = etcd.revoke(id).await {
            tracing::debug!(error = %e, "could not revoke the lease");
        }
    }
}

async fn campaign_step(etcd: &Etcd, key: &str, lease: &Lease, me: &str, ttl: Duration) -> Result<bool, EtcdError> {
    // 1. A live lease: renew it (a third of its TTL before it runs out), or take a new one.
    let now = Instant::now();
    let state = lease.state();
    let id = match state.id {
        Some(id) if state.renew_at.is_some_and(|at| now < at) => id,
        Some(id) => match etcd.keep_alive(id).await {
            Ok(Some(granted)) => {
                lease.renewed(now, granted);
                id
            }
            Ok(None) => {
                tracing::warn!(lease = id, "the lease expired: this supervisor no longer acts");
                lease.lost();
                return Ok(false);
            }
            Err(e) => {
                // Unreachable: the lease may still hold; `acting` stops at its deadline.
                if lease.state().holding && lease.acting().is_none() {
                    tracing::warn!(error = %e, "could not renew the lease before it could expire: not acting");
                }
                return Err(e);
            }
        },
        None => {
            let id = etcd.grant(ttl).await?;
            lease.granted(id, now, ttl);
            id
        }
    };
    if lease.state().holding {
        return Ok(false);
    }
    // 2. Take the `active` key if nobody holds it (read first: a standby's every attempt
    //    would otherwise be a write in etcd's log).
    if let Some(kv) = etcd.get(key).await? {
        if kv.lease != id {
            lease.sees(serde_json::from_slice::<ActiveRecord>(&kv.value).ok());
            return Ok(false);
        }
    }
    let record = serde_json::to_vec(&ActiveRecord { address: me.to_string(), lease: id }).unwrap_or_default();
    match etcd.put_if(key, &record, 0, None, Some(id)).await? {
        Written::Done(_) => {
            lease.holds(ActiveRecord { address: me.to_string(), lease: id });
            Ok(true)
        }
        Written::Lost(Some(kv)) if kv.lease == id => {
            // Ours already: a lost answer to our own earlier write.
            lease.holds(ActiveRecord { address: me.to_string(), lease: id });
            Ok(true)
        }
        Written::Lost(current) => {
            let holder = current.and_then(|kv| serde_json::from_slice::<ActiveRecord>(&kv.value).ok());
            lease.sees(holder);
            Ok(false)
        }
    }
}

/// The safety margin taken off a lease's TTL: the supervisor stops acting this much before the
/// lease could expire in etcd, whatever the clocks' rates.
pub const LEASE_MARGIN: Duration = Duration::from_millis(300);

/// Until when a lease renewed (or granted) by a request sent at `sent` is certainly alive in
/// etcd: etcd starts the TTL when the request arrives, which is after it was sent, so
/// `sent + ttl` is a lower bound; the margin covers clock rates and the time an action takes
/// to start.
pub fn acting_deadline(sent: Instant, ttl: Duration) -> Instant {
    sent + ttl.saturating_sub(LEASE_MARGIN)
}

#[derive(Debug, Clone, Default)]
pub struct LeaseState {
    pub id: Option<i64>,
    /// Whether this supervisor holds the `active` key on `id`.
    pub holding: bool,
    /// Until when the lease is certainly alive (see [`acting_deadline`]).
    pub valid_until: Option<Instant>,
    /// When to renew it next.
    pub renew_at: Option<Instant>,
    /// Who holds the `active` key, as last seen.
    pub holder: Option<ActiveRecord>,
    pub error: Option<String>,
}

/// This supervisor's lease and whether it holds the `active` key on it.
#[derive(Debug, Default)]
pub struct Lease(SyncMutex<LeaseState>);

impl Lease {
    pub fn state(&self) -> LeaseState {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut LeaseState)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The lease id while this supervisor may act: it holds the `active` key on a lease that
    /// cannot have expired yet.
    pub fn acting(&self) -> Option<i64> {
        let s = self.state();
        (s.holding && s.valid_until.is_some_and(|until| Instant::now() < until)).then_some(s.id).flatten()
    }

    fn granted(&self, id: i64, sent: Instant, ttl: Duration) {
        self.update(|s| {
            *s = LeaseState { id: Some(id), holder: s.holder.take(), ..LeaseState::default() };
            s.valid_until = Some(acting_deadline(sent, ttl));
            s.renew_at = Some(sent + ttl / 3);
        });
    }

    fn renewed(&self, sent: Instant, ttl: Duration) {
        self.update(|s| {
            s.valid_until = Some(acting_deadline(sent, ttl));
            s.renew_at = Some(sent + ttl / 3);
        });
    }

    fn holds(&self, record: ActiveRecord) {
        self.update(|s| {
            s.holding = true;
            s.holder = Some(record);
        });
    }

    fn sees(&self, holder: Option<ActiveRecord>) {
        self.update(|s| s.holder = holder);
    }

    fn lost(&self) {
        self.update(|s| {
            let holder = s.holder.take().filter(|h| Some(h.lease) != s.id);
            *s = LeaseState { holder, ..LeaseState::default() };
        });
    }

    fn set_error(&self, error: Option<String>) {
        self.update(|s| s.error = error);
    }
}

/// Writes the state file atomically (a temporary file, fsynced, renamed, the directory fsynced).
fn write_file(path: &Path, persisted: &Persisted) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(persisted)?;
    {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_are_parsed_and_bad_ones_named() {
        assert_eq!("file".parse(), Ok(StoreSpec::File));
        assert_eq!(
            "etcd://h1:2379,h2:2379,h3:2379".parse(),
            Ok(StoreSpec::Etcd {
                endpoints: vec!["h1:2379".into(), "h2:2379".into(), "h3:2379".into()],
                prefix: DEFAULT_PREFIX.into()
            })
        );
        assert_eq!(
            "etcd://10.77.0.30:2379/rmw/bank/".parse(),
            Ok(StoreSpec::Etcd { endpoints: vec!["10.77.0.30:2379".into()], prefix: "/rmw/bank".into() })
        );
        for bad in ["etcd://", "etcd://h1", "etcd://h1:x", "consul://h:1", "etcd://:2379"] {
            let err = bad.parse::<StoreSpec>().unwrap_err();
            assert!(err.contains(bad.trim_start_matches("etcd://").split(':').next().unwrap_or(bad)), "{bad}: {err}");
        }
    }

    #[tokio::test]
    async fn a_state_file_of_an_older_version_loads_and_the_history_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("rmw-store-test-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        // Written before the history, maintenance and the node list existed.
        let old = r#"{"config": {"term": 3, "version": 4, "leader": "a:1", "members": ["a:1", "b:2"]},
                      "clients": [], "cluster_id": null}"#;
        std::fs::write(&path, old).unwrap();
        let store = Store::open(&StoreSpec::File, &path, false).unwrap();
        let loaded = store.load().await.unwrap().persisted.unwrap();
        assert_eq!(loaded.config.term, 3);
        assert!(loaded.events.is_empty() && !loaded.maintenance && loaded.nodes.is_none());
        assert_eq!(loaded.nodes_or(&["x:1".to_string()]), ["x:1"], "--agents until an operator changes the list");

        let mut next = loaded.clone();
        next.maintenance = true;
        next.nodes = Some(vec!["a:1".into(), "b:2".into(), "d:4".into()]);
        next.events.push(protocol::operator::HistoryEvent {
            at_ms: 1,
            kind: protocol::operator::HistoryKind::MemberAdded,
            node: Some("d:4".into()),
            term: 3,
            ok: true,
            message: "added".into(),
        });
        store.save(&next, 1).await.unwrap();
        let reopened = Store::open(&StoreSpec::File, &path, false).unwrap();
        assert_eq!(reopened.load().await.unwrap().persisted, Some(next));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_supervisor_stops_acting_before_its_lease_can_expire() {
        let sent = Instant::now();
        let ttl = Duration::from_secs(2);
        // etcd's expiry is at least sent + ttl (it starts counting on arrival).
        assert!(acting_deadline(sent, ttl) < sent + ttl);
        assert_eq!(acting_deadline(sent, ttl), sent + ttl - LEASE_MARGIN);

        let lease = Lease::default();
        assert_eq!(lease.acting(), None, "no lease");
        lease.granted(7, sent, ttl);
        assert_eq!(lease.acting(), None, "a lease without the active key");
        lease.holds(ActiveRecord { address: "a:9000".into(), lease: 7 });
        assert_eq!(lease.acting(), Some(7));
        // Not renewed in time: it stops acting by itself, though it still "holds" the key.
        lease.renewed(sent - ttl, ttl);
        assert_eq!(lease.acting(), None);
        assert!(lease.state().holding);
        lease.lost();
        assert_eq!((lease.state().id, lease.state().holding), (None, false));
    }
}
