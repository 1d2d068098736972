//! The operator's acts besides the switchover: maintenance on and off, adding and removing a
//! node, rebuilding a node's database. [`crate::planned`] decides whether each may go ahead;
//! this module stores the change, records it in the durable history and starts what follows
//! (a recovery). The safety argument is in docs/guarantees.md ("Adding and removing members
//! keeps the floor and the evidence rules", "Maintenance stops the supervisor's own decisions").
//!
//! Invariants kept here:
//! - Each act holds the configuration while it checks and stores, so it sees no half-done
//!   failover or recovery, and the history records it with the term it left.
//! - A node joins the member set only through recovery (the leader's two-step join), never by
//!   an operator's word; a node removed leaves the node list too, so it is never recovered or
//!   elected again.
//! - A rebuild empties only a node outside the member set, and the agent checks that again.

use std::sync::Arc;
use std::time::Duration;

use protocol::operator::{HistoryKind, MaintenanceResponse, NodeAccepted, OperatorRefusal};
use protocol::ClusterConfig;

use crate::config_keeper::lock;
use crate::history::push_event;
use crate::planned::{check_add, check_rebuild, remove_member, Refused, Rejected};
use crate::run::{event, Supervisor};
use crate::store::StoreError;

/// A node to be added must answer `/status` within this.
const ADD_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Emptying a node's database: a rollback and a few deletes, however large the tables.
const RESET_TIMEOUT: Duration = Duration::from_secs(60);

/// Why an operator's act did not happen.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error(transparent)]
    Rejected(#[from] Rejected),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Refused> for OperatorError {
    fn from(r: Refused) -> OperatorError {
        OperatorError::Rejected(r.into())
    }
}

impl Supervisor {
    /// Turns automatic failover and recovery off (`on`) or on again; stored, so it survives a
    /// restart and standbys share it.
    pub(crate) async fn set_maintenance(&self, on: bool) -> Result<MaintenanceResponse, StoreError> {
        let mut state = self.config.lock().await;
        let message = if on {
            "maintenance: automatic failover and recovery are off; a leader that fails is not replaced until \
             POST /resume (or a switchover), and the leader's reports still remove members that stop answering"
        } else {
            "automatic failover and recovery are on"
        };
        if state.maintenance != on {
            let mut next = state.clone();
            next.maintenance = on;
            let kind = if on { HistoryKind::MaintenanceOn } else { HistoryKind::MaintenanceOff };
            push_event(&mut next.events, event(kind, None, state.config.term, true, message.into()));
            self.config.save(&mut state, next).await?;
            tracing::warn!(maintenance = on, "{message}");
        }
        Ok(MaintenanceResponse { maintenance: on, message: message.into() })
    }

    /// Adds `node` to the nodes the supervisor watches, and starts its recovery: it becomes a
    /// member once it has caught up (an empty database takes the cluster's id).
    pub(crate) async fn add_member(self: &Arc<Self>, node: &str) -> Result<NodeAccepted, OperatorError> {
        let mut state = self.config.lock().await;
        let nodes = state.nodes_or(&self.settings.agents).to_vec();
        check_add(&nodes, node)?;
        let status = self.agents.status(node, ADD_PROBE_TIMEOUT).await.map_err(|e| Refused {
            code: OperatorRefusal::Unreachable,
            message: format!("{node} does not answer /status ({e}); start its agent, then add it"),
        })?;
        let mut next = state.clone();
        next.nodes = Some(nodes.into_iter().chain([node.to_string()]).collect());
        let message = format!("{node} added to the supervisor's nodes (it had applied LSN {})", status.applied_lsn);
        push_event(&mut next.events, event(HistoryKind::MemberAdded, Some(node), state.config.term, true, message));
        self.config.save(&mut state, next).await?;
        self.observations.follow(state.nodes_or(&self.settings.agents));
        drop(state);
        tracing::warn!(%node, "an operator added a node; recovering it");
        lock(&self.history).forget(node);
        self.start_recovery(node.to_string());
        Ok(NodeAccepted {
            node: node.to_string(),
            state: "recovering".into(),
            message: format!(
                "{node} is being recovered from the leader's log; it becomes a member once it has caught up \
                 (GET /status: recovering, then members)"
            ),
            wiped_entries: None,
        })
    }

    /// Removes `node` from the member set (the next version, same term) and from the nodes the
    /// supervisor watches. The new configuration.
    pub(crate) async fn remove_member(self: &Arc<Self>, node: &str) -> Result<ClusterConfig, OperatorError> {
        let mut state = self.config.lock().await;
        let nodes = state.nodes_or(&self.settings.agents).to_vec();
        let removal = remove_member(&state.config, &nodes, node, self.settings.min_copies)?;
        let was_member = removal.config != state.config;
        let mut next = state.clone();
        next.config = removal.config.clone();
        next.nodes = Some(removal.nodes.clone());
        let message = if was_member {
            format!("{node} left the member set (now {}) and the supervisor's nodes", removal.config.members.join(", "))
        } else {
            format!("{node}, not a member, left the supervisor's nodes")
        };
        push_event(&mut next.events, event(HistoryKind::MemberRemoved, Some(node), state.config.term, true, message));
        self.config.save(&mut state, next).await?;
        // `GET /status` stops listing it at once, not at the next poll.
        self.observations.follow(&removal.nodes);
        drop(state);
        tracing::warn!(%node, members = ?removal.config.members, "an operator removed a node");
        lock(&self.history).forget(node);
        if was_member {
            // The removed node hears it too: it stops counting itself a member.
            let to = removal.nodes.iter().cloned().chain([node.to_string()]).collect();
            self.push_config_to(to, &removal.config);
        }
        Ok(removal.config)
    }

    /// Empties the database of `node` (outside the member set), forgets its divergence and
    /// recovers it from scratch. How many log entries it held.
    pub(crate) async fn rebuild(self: &Arc<Self>, node: &str) -> Result<NodeAccepted, OperatorError> {
        let mut state = self.config.lock().await;
        let nodes = state.nodes_or(&self.settings.agents).to_vec();
        check_rebuild(&state.config, &nodes, node)?;
        if lock(&self.history).recovering.contains(node) {
            return Err(Refused {
                code: OperatorRefusal::Busy,
                message: format!("a recovery of {node} is under way; wait until it ends (GET /status), then rebuild"),
            }
            .into());
        }
        // Held while the agent empties its database: no recovery can make it a member meanwhile.
        let wiped = self.agents.reset(node, &state.config, RESET_TIMEOUT).await.map_err(|e| {
            let code = if e.answered() { OperatorRefusal::ResetRefused } else { OperatorRefusal::Unreachable };
            Refused { code, message: format!("{node} did not empty its database ({e}); nothing changed") }
        })?;
        let message = format!("{node}'s database was emptied ({wiped} log entries) to recover it from scratch");
        let term = state.config.term;
        self.record_locked(&mut state, [event(HistoryKind::Rebuild, Some(node), term, true, message)]).await;
        drop(state);
        tracing::warn!(%node, wiped, "an operator rebuilt a node; recovering it");
        lock(&self.history).forget(node);
        self.start_recovery(node.to_string());
        Ok(NodeAccepted {
            node: node.to_string(),
            state: "recovering".into(),
            message: format!(
                "{node}'s database was emptied ({wiped} log entries); it is being recovered from the leader's \
                 snapshot and log and becomes a member once it has caught up (GET /status)"
            ),
            wiped_entries: Some(wiped),
        })
    }
}
