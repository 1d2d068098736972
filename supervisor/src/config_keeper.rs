//! The configuration as this supervisor holds it, kept in step with the store ([`crate::store`]):
//! every write compares the revision last read, a lost write re-reads, and with etcd the lease
//! on the `active` key decides whether this supervisor acts at all.
//!
//! Invariants kept here:
//! - A new configuration is written to the store (the state file atomically and fsynced, or
//!   etcd on the revision last read) before the caller may tell any agent of it, so a
//!   restarted supervisor never reuses a term, and two supervisors never both win one.
//! - One mutation at a time: a writer holds [`ConfigKeeper::lock`] from its read to its
//!   write, so each starts from the configuration the previous one left.
//! - A supervisor acts only on a configuration read since it last became active: a takeover
//!   starts from what the previous active supervisor wrote.
//!
//! What this module does not do: decide anything. Callers pass the next configuration in.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Mutex as SyncMutex, MutexGuard as SyncGuard};
use std::time::Duration;

use protocol::Term;
use tokio::sync::{Mutex, MutexGuard};

use crate::store::{Persisted, Store, StoreError, StoreSpec};

pub struct ConfigKeeper {
    /// Where the configuration is kept, and (with etcd) whether this supervisor is the active one.
    store: Store,
    /// The configuration and clients; the lock serialises every mutation.
    state: Mutex<Persisted>,
    /// The store's revision of `state`: what the next write compares. Changed only under `state`.
    revision: AtomicI64,
    /// Whether `state` was read from the store since this supervisor last became active: it
    /// acts only on a configuration at least as new as the one the previous active one left.
    fresh: AtomicBool,
    /// A copy of the last saved state, for `GET /status` and the polls, which must not wait
    /// while a failover or a recovery holds `state`.
    published: SyncMutex<Persisted>,
}

/// A std mutex's guard even if a holder panicked: the data is plain values, always whole.
pub fn lock<T>(m: &SyncMutex<T>) -> SyncGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ConfigKeeper {
    /// Opens the store. A state file is read at once (a damaged one stops the start); etcd is
    /// read when this supervisor first becomes active, and meanwhile as a standby.
    pub async fn open(
        spec: &StoreSpec,
        state_file: &std::path::Path,
        act_without_lease: bool,
    ) -> anyhow::Result<ConfigKeeper> {
        let store = Store::open(spec, state_file, act_without_lease)?;
        let (persisted, revision, fresh) = match spec {
            StoreSpec::File => {
                let loaded = store.load().await?;
                (loaded.persisted.unwrap_or_else(Persisted::empty), loaded.revision, true)
            }
            StoreSpec::Etcd { .. } => (Persisted::empty(), 0, false),
        };
        Ok(ConfigKeeper {
            store,
            published: SyncMutex::new(persisted.clone()),
            state: Mutex::new(persisted),
            revision: AtomicI64::new(revision),
            fresh: AtomicBool::new(fresh),
        })
    }

    /// Whether this supervisor acts now: it holds the lease (always, with a state file) and has
    /// read the configuration since it took it.
    pub fn acting(&self) -> bool {
        self.store.is_active() && self.fresh.load(Ordering::SeqCst)
    }

    /// The configuration, held for a mutation (or a consistent read) until the guard drops.
    pub async fn lock(&self) -> MutexGuard<'_, Persisted> {
        self.state.lock().await
    }

    /// The last saved state, without waiting for a mutation under way.
    pub fn published(&self) -> Persisted {
        lock(&self.published).clone()
    }

    /// The stored node list of the last saved state (None: `--agents`), without cloning the rest.
    pub fn published_nodes(&self) -> Option<Vec<String>> {
        lock(&self.published).nodes.clone()
    }

    pub fn published_term(&self) -> Term {
        lock(&self.published).config.term
    }

    /// For `GET /status`: `file <path>` or `etcd <endpoints> <prefix>`.
    pub fn describe(&self) -> String {
        self.store.describe()
    }

    /// With etcd: who holds the `active` key, as last seen, and the last error talking to etcd.
    pub fn active_holder(&self) -> (Option<String>, Option<String>) {
        self.store.active_holder()
    }

    /// Writes `next` in place of `state` if nobody else wrote since `state` was read. When
    /// another supervisor did, or this one is no longer active, `state` becomes what the store
    /// holds now and the error says why: the caller starts again from it, or stops.
    pub async fn save(&self, state: &mut Persisted, next: Persisted) -> Result<(), StoreError> {
        if !self.acting() {
            return Err(StoreError::NotActive);
        }
        let expected = self.revision.load(Ordering::SeqCst);
        match self.store.save(&next, expected).await {
            Ok(revision) => {
                self.revision.store(revision, Ordering::SeqCst);
                *state = next;
                *lock(&self.published) = state.clone();
                Ok(())
            }
            Err(e) => {
                if matches!(e, StoreError::Conflict(_) | StoreError::NotActive) {
                    tracing::warn!(error = %e, "the configuration was not written; reading the store again");
                    self.fresh.store(false, Ordering::SeqCst);
                    if let Err(r) = self.reload(state).await {
                        tracing::warn!(error = %r, "could not read the configuration store");
                    }
                }
                Err(e)
            }
        }
    }

    /// Replaces `state` with what the store holds (kept as is when the store holds nothing yet).
    async fn reload(&self, state: &mut Persisted) -> Result<(), StoreError> {
        let loaded = self.store.load().await?;
        if let Some(persisted) = loaded.persisted {
            *state = persisted;
        }
        self.revision.store(loaded.revision, Ordering::SeqCst);
        *lock(&self.published) = state.clone();
        Ok(())
    }

    /// With etcd: holds (or tries to take) the lease on the `active` key, every `interval`,
    /// apart from the polls so that an unreachable etcd never slows them. A standby reads the
    /// configuration each time, so that its `/status` is current and a takeover starts from it.
    /// Returns at once with a state file.
    pub async fn campaign(&self, spec: &StoreSpec, advertise: &str, lease_ttl: Duration, interval: Duration) {
        if matches!(spec, StoreSpec::File) {
            return;
        }
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_active = false;
        loop {
            tick.tick().await;
            if self.store.campaign(advertise, lease_ttl).await {
                tracing::warn!(address = %advertise, "this supervisor is now the active one");
            }
            let active = self.store.is_active();
            if was_active && !active {
                tracing::warn!("this supervisor is no longer the active one: it stops acting");
                self.fresh.store(false, Ordering::SeqCst);
            }
            was_active = active;
            if !active || !self.fresh.load(Ordering::SeqCst) {
                let mut state = self.state.lock().await;
                match self.reload(&mut state).await {
                    Ok(()) => self.fresh.store(active, Ordering::SeqCst),
                    Err(e) => tracing::debug!(error = %e, "could not read the configuration store"),
                }
            }
        }
    }

    /// Gives up the lease (with etcd) so that a standby takes over at once.
    pub async fn resign(&self) {
        self.store.resign().await;
    }
}
