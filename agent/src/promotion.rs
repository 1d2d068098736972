//! Leadership and membership, carried out: becoming leader (after deciding every in-doubt
//! batch), a new cluster's id, pausing for a joining node, and reporting a member that does
//! not answer.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use engine::cluster::birth_check;
use engine::member::{JoinRefusal, PromoteRefusal};
use engine::resolution::{held_by, resolve_in_order, Resolution};
use protocol::{
    AgentStatus, ClusterBirth, ClusterConfig, DecideRequest, Decision, FailureKind, FailureReport, JoinRequest, Lsn,
    PauseRequest, PauseResponse, PendingInfo, PromoteResponse, Term,
};
use uuid::Uuid;

use crate::error::ApiError;
use crate::node::Node;
use crate::peers::PeerError;
use crate::two_phase::Leader;

/// How long a new cluster's first leader keeps offering its id to a member that does not answer.
const BIRTH_RETRY_FOR: Duration = Duration::from_secs(10);

/// Clears the promotion flag however a promotion ends.
struct Promoting<'a>(&'a Node);

impl Drop for Promoting<'_> {
    fn drop(&mut self) {
        self.0.promoting.store(false, Ordering::SeqCst);
    }
}

impl Node {
    /// `POST /internal/promote`: become the leader of `config.term`. Resolves every in-doubt
    /// batch among the members before taking new transactions.
    pub async fn promote(&self, config: ClusterConfig) -> Result<PromoteResponse, ApiError> {
        let already = self.look(|m| m.may_promote(&config)).map_err(|refusal| match refusal {
            PromoteRefusal::NotNamed(named) => {
                ApiError::BadRequest(format!("this configuration names {named:?} leader, not this agent"))
            }
            PromoteRefusal::Stale(term) => ApiError::StaleTerm(term),
        })?;
        // A leader that stepped down by itself (it saw a newer term or a member ahead) is
        // promoted again, not taken for one that leads.
        if already && self.leader().is_some() {
            return Ok(PromoteResponse {
                term: config.term,
                applied_lsn: self.applied().0,
                in_doubt_committed: 0,
                in_doubt_aborted: 0,
            });
        }
        if self.promoting.swap(true, Ordering::SeqCst) {
            return Err(ApiError::Unavailable("a promotion is already in progress on this node; retry".into()));
        }
        let _promoting = Promoting(self);
        self.configure(&config).await?;
        // A leader elected by log position owns the cluster's log: a database without an id
        // (the first leader of a new cluster, or one made before ids existed) gets one now.
        if self.cluster_id().is_none() {
            let id = self.store.adopt_cluster_id(Uuid::new_v4()).await.map_err(ApiError::unavailable)?;
            self.with_member(|m| m.took_cluster_id(id));
            tracing::info!(cluster_id = %id, "this node's database now belongs to the cluster");
            if self.applied().0 == 0 {
                // A new cluster: the members take its id now, not at the first commit, so that
                // a failover before any commit finds them electable.
                self.announce_birth(&config, id).await;
            }
        }
        // What an earlier leader acknowledged ends here; a batch resolved below is durable
        // once enough members committed it too, or else after the first round copies it.
        let acknowledged_before = self.applied().0;
        let (committed, aborted, held) = self.resolve_in_doubt(&config).await?;
        let (lsn, ts) = self.applied();
        let durable_lsn = acknowledged_before.max(held.min(lsn));
        let last_write = self.store.write_timestamps().await.map_err(ApiError::unavailable)?;
        let validator = engine::validation::Validator::new(last_write, ts);
        let leader = Leader::new(
            self.me.clone(),
            config.term,
            self.cfg.min_copies,
            self.cfg.pipeline_depth,
            validator,
            durable_lsn,
        );
        if let Some(old) = self.install_leader(Some(leader.clone())) {
            old.depose();
        }
        if self.with_member(|m| m.promoted(config.term)).is_err() {
            // A newer term arrived while the in-doubt batches were decided.
            self.install_leader(None);
            leader.depose();
            return Err(ApiError::StaleTerm(self.look(|m| m.term())));
        }
        leader.start(lsn, ts);
        tracing::info!(term = config.term, applied_lsn = lsn, committed, aborted, "promoted to leader");
        Ok(PromoteResponse {
            term: config.term,
            applied_lsn: lsn,
            in_doubt_committed: committed,
            in_doubt_aborted: aborted,
        })
    }

    /// Decides every batch that this node or another live member holds prepared, by asking
    /// every live member where it stands. Returns (committed, aborted, the highest LSN that
    /// `--min-copies` nodes are known to hold afterwards).
    async fn resolve_in_doubt(&self, config: &ClusterConfig) -> Result<(u32, u32, Lsn), ApiError> {
        let others: Vec<&String> = config.members.iter().filter(|m| **m != self.cfg.address).collect();
        let mut batches: Vec<PendingInfo> = self.look(|m| m.slots().map(|s| s.batch().info()).collect::<Vec<_>>());
        // Where each member's log ends, as last heard (a decision's answer moves it on).
        let mut ends: HashMap<&str, Lsn> = HashMap::new();
        for peer in &others {
            match self.peers.status(peer).await {
                Ok(status) => {
                    ends.insert(peer.as_str(), status.applied_lsn);
                    batches.extend(status.prepared_batch)
                }
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "member unreachable while looking for in-doubt batches")
                }
            }
        }
        batches.sort_by_key(|b| (b.last_lsn, b.last_txn));
        batches.dedup();
        let mut answers = Vec::new();
        for batch in batches {
            let mut states = vec![self.batch_state_here(&batch).await?];
            for peer in &others {
                match self.peers.batch_state(peer, &batch).await {
                    Ok(answer) => states.push(answer.state),
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "member unreachable while resolving an in-doubt batch")
                    }
                }
            }
            answers.push((batch, states));
        }
        let (mut committed, mut aborted) = (0, 0);
        for (batch, resolution) in resolve_in_order(answers) {
            let decision = match resolution {
                Resolution::Commit => Decision::Commit,
                Resolution::Abort => Decision::Abort,
            };
            tracing::warn!(last_lsn = batch.last_lsn, last_txn = %batch.last_txn, ?decision, "resolved an in-doubt batch");
            let req = DecideRequest { term: config.term, last_lsn: batch.last_lsn, last_txn: batch.last_txn, decision };
            self.decide(&req).await?;
            for peer in &others {
                match self.peers.decide(peer, &req).await {
                    Ok(answer) => {
                        ends.insert(peer.as_str(), answer.applied_lsn);
                    }
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "could not tell a member an in-doubt decision; it will be caught by its next PREPARE or its recovery")
                    }
                }
            }
            match decision {
                Decision::Commit => committed += 1,
                Decision::Abort => aborted += 1,
            }
            let label = if decision == Decision::Commit { "commit" } else { "abort" };
            metrics::counter!("rmw_in_doubt_resolved_total", "decision" => label).increment(1);
        }
        let mine = self.applied().0;
        let held = held_by(&std::iter::once(mine).chain(ends.into_values()).collect::<Vec<_>>(), self.cfg.min_copies);
        Ok((committed, aborted, held))
    }

    /// Gives a new cluster's id to every other member. A member that does not answer (it may
    /// still be starting: the agents of a new cluster start together) is asked again in the
    /// background for [`BIRTH_RETRY_FOR`]; one that still has not taken it takes it with its
    /// first round or recovery.
    async fn announce_birth(&self, config: &ClusterConfig, cluster_id: Uuid) {
        let birth = ClusterBirth { term: config.term, leader: self.cfg.address.clone(), cluster_id };
        let others = config.members.iter().filter(|m| **m != self.cfg.address);
        let missed: Vec<String> = futures::future::join_all(others.map(|peer| {
            let birth = &birth;
            async move { self.peers.announce_birth(peer, birth).await.err().map(|e| (peer.clone(), e)) }
        }))
        .await
        .into_iter()
        .flatten()
        .filter_map(|(peer, e)| match e {
            PeerError::Unreachable { .. } => Some(peer),
            e => {
                tracing::warn!(%peer, error = %e, "a member refused the new cluster's id");
                None
            }
        })
        .collect();
        let Some(node) = self.me.upgrade() else {
            return;
        };
        for peer in missed {
            let (node, birth) = (node.clone(), birth.clone());
            tokio::spawn(async move {
                let give_up = tokio::time::Instant::now() + BIRTH_RETRY_FOR;
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    match node.peers.announce_birth(&peer, &birth).await {
                        Err(PeerError::Unreachable { .. }) if tokio::time::Instant::now() < give_up => {}
                        Ok(_) => return,
                        Err(e) => {
                            tracing::warn!(%peer, error = %e, "a member did not take the new cluster's id; it takes it at its first round");
                            return;
                        }
                    }
                }
            });
        }
    }

    /// At start-up, an empty database that belongs to no cluster asks the named leader for a new
    /// cluster's id: the leader may have announced it before this agent listened. It takes it
    /// only while the leader's log is empty too (a birth); a node joining a cluster with a
    /// history takes the id by recovering.
    pub(crate) async fn ask_for_birth(&self) {
        let (leader, ours, applied, pending) =
            self.look(|m| (m.config().leader.clone(), m.cluster_id(), m.applied().lsn, m.pending().is_some()));
        let Some(leader) = leader.filter(|l| *l != self.cfg.address) else {
            return;
        };
        if ours.is_some() || applied > 0 || pending {
            return;
        }
        match self.peers.status(&leader).await {
            // Only a member of the new cluster takes its id at birth; a node its leader does not
            // count (a spare started beside it) gets it when it is recovered into the cluster.
            Ok(status) if status.applied_lsn == 0 && status.members.contains(&self.cfg.address) => {
                if let Some(id) = status.cluster_id {
                    let birth = ClusterBirth { term: status.term, leader, cluster_id: id };
                    if let Err(e) = self.take_birth(&birth).await {
                        tracing::warn!(error = %e, "could not take the new cluster's id from its leader");
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(%leader, error = %e, "the leader is not reachable at start-up"),
        }
    }

    /// `POST /internal/cluster_id`: takes a new cluster's id if this database is empty and
    /// belongs to no cluster yet.
    pub async fn take_birth(&self, birth: &ClusterBirth) -> Result<AgentStatus, ApiError> {
        let (term, ours, applied, pending) =
            self.look(|m| (m.term(), m.cluster_id(), m.applied().lsn, m.pending().is_some()));
        if birth.term < term {
            return Err(ApiError::StaleTerm(term));
        }
        let take =
            birth_check(ours, applied, pending, birth.cluster_id).map_err(|e| ApiError::Conflict(e.to_string()))?;
        if take {
            let kept = self.store.adopt_cluster_id(birth.cluster_id).await.map_err(ApiError::unavailable)?;
            self.with_member(|m| m.took_cluster_id(kept));
            tracing::info!(cluster_id = %kept, "this node's database now belongs to the cluster");
        }
        Ok(self.status())
    }

    /// `POST /internal/pause` on the leader.
    pub async fn pause(&self, req: &PauseRequest) -> Result<PauseResponse, ApiError> {
        let Some(leader) = self.leader() else {
            return Err(self.not_leader());
        };
        if leader.term() != req.term {
            return Err(ApiError::StaleTerm(leader.term()));
        }
        leader.pause(Duration::from_millis(req.max_ms)).await;
        Ok(PauseResponse { applied_lsn: self.applied().0 })
    }

    /// `POST /internal/join` on the leader: adopt a member set that adds a node which caught up
    /// to `req.applied_lsn`, only if this leader's log still ends there. No round runs while
    /// it checks and stores, so no commit can slip in between.
    pub async fn join(&self, req: &JoinRequest) -> Result<AgentStatus, ApiError> {
        let Some(leader) = self.leader() else {
            return Err(self.not_leader());
        };
        if leader.term() != req.config.term {
            return Err(ApiError::StaleTerm(leader.term()));
        }
        if req.config.leader.as_deref() != Some(self.cfg.address.as_str()) {
            return Err(ApiError::BadRequest("the configuration names another leader".into()));
        }
        {
            let _no_round = leader.hold_rounds().await;
            match self.look(|m| m.admit_joiner(req.applied_lsn)) {
                Ok(()) => {}
                Err(JoinRefusal::NotCaughtUp { leader, joiner }) => {
                    return Err(ApiError::Conflict(format!(
                        "this leader has applied LSN {leader} and the joining node LSN {joiner}: it must catch up \
                         again before it can be a member"
                    )))
                }
                Err(JoinRefusal::Undecided { last_lsn }) => {
                    return Err(ApiError::Conflict(format!(
                        "this leader still holds the batch ending at LSN {last_lsn} prepared, without the joining \
                         node: it must catch up again once that batch is decided"
                    )))
                }
            }
            self.configure(&req.config).await?;
        }
        if let Ok(mut holds) = self.log_holds.lock() {
            holds.joined(req.applied_lsn);
        }
        tracing::info!(version = req.config.version, members = ?req.config.members, lsn = req.applied_lsn,
            "a caught-up node joined the members");
        Ok(self.status())
    }

    /// The leader could not reach `member`: ask the supervisor to remove it. Returns the new
    /// configuration when it did; the leader never drops a member on its own.
    pub async fn report_failure(
        &self,
        term: Term,
        member: &str,
        reason: &str,
        kind: FailureKind,
    ) -> Option<ClusterConfig> {
        let supervisors = self.cfg.supervisor.as_deref()?;
        let report = FailureReport { term, member: member.to_string(), reason: reason.to_string(), kind };
        // With standby supervisors, the first that is active takes the report; a standby
        // answers 503 and a dead one does not answer: the next is tried.
        for supervisor in supervisors.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match self.peers.report_failure(supervisor, &report).await {
                Ok(config) => {
                    if let Err(e) = self.configure(&config).await {
                        tracing::error!(error = %e, "could not store the configuration the supervisor sent");
                        return None;
                    }
                    return Some(config);
                }
                Err(e @ PeerError::Unreachable { .. })
                | Err(e @ PeerError::Refused { status: reqwest::StatusCode::SERVICE_UNAVAILABLE, .. }) => {
                    tracing::debug!(%supervisor, error = %e, "this supervisor did not take the report; trying the next");
                }
                Err(e) => {
                    tracing::warn!(%member, error = %e, "the supervisor did not remove the member");
                    return None;
                }
            }
        }
        tracing::warn!(%member, "no supervisor took the report: the member stays");
        None
    }
}
