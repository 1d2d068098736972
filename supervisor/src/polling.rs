//! Polling the agents: every poll interval, each agent's `/health` (carrying the current
//! term) and its `/status`, all at once, each within the poll's timeout. What the polls saw is
//! kept per agent in [`Observations`], which the decisions ([`crate::failover`]) and
//! `GET /status` read.
//!
//! Invariants kept here:
//! - A frozen agent costs one timeout per poll, not two: `/status` is asked only of an agent
//!   that answered `/health` (healthy or not), so detection time stays bounded.
//! - An agent counts as alive once it answered a poll and while it has missed fewer than
//!   `--misses` in a row.

use std::sync::Mutex as SyncMutex;
use std::time::{Duration, Instant};

use protocol::{AgentStatus, ClusterConfig, Term};

use crate::agent_client::{AgentClient, CallError};
use crate::config_keeper::lock;
use crate::failover::{newest_reported, Observed};

/// The shortest timeout of a poll's calls, whatever the poll interval.
const MIN_POLL_TIMEOUT: Duration = Duration::from_millis(250);

/// What the polls saw of one agent.
#[derive(Debug, Clone, Default)]
pub struct NodeObs {
    pub address: String,
    /// Consecutive polls without a healthy answer.
    pub misses: u32,
    /// The last healthy answer.
    pub last_ok: Option<Instant>,
    /// Its last `/status`; None when the last poll got none.
    pub status: Option<AgentStatus>,
    /// Why the last `/health` failed, if it did.
    pub error: Option<String>,
}

impl NodeObs {
    /// Whether it counts as up: it answered once, and missed fewer than `misses` polls since.
    pub fn alive(&self, misses: u32) -> bool {
        self.misses < misses && self.last_ok.is_some()
    }

    /// Takes in one poll's answers.
    fn record(&mut self, health: Result<(), CallError>, status: Option<AgentStatus>, now: Instant) {
        match health {
            Ok(()) => {
                self.misses = 0;
                self.last_ok = Some(now);
                self.error = None;
            }
            Err(e) => {
                self.misses = self.misses.saturating_add(1);
                self.error = Some(e.to_string());
            }
        }
        self.status = status;
    }
}

/// What the polls saw of every agent, in configured order.
pub struct Observations {
    nodes: SyncMutex<Vec<NodeObs>>,
    /// `--misses`: consecutive missed polls after which an agent counts as down.
    misses: u32,
    /// (when the last completed poll started, when the leadership last changed).
    times: SyncMutex<(Option<Instant>, Option<Instant>)>,
}

impl Observations {
    pub fn new(agents: &[String], misses: u32) -> Observations {
        let nodes = agents.iter().map(|a| NodeObs { address: a.clone(), ..Default::default() }).collect();
        Observations { nodes: SyncMutex::new(nodes), misses, times: SyncMutex::new((None, None)) }
    }

    /// The supervisor has just made a new leader (an election or a switchover): polls started
    /// before now show the old one, and no decision may be taken on them.
    pub fn leadership_changed(&self) {
        lock(&self.times).1 = Some(Instant::now());
    }

    /// Whether the last poll started after the leadership last changed. A decision on older
    /// polls would see the new leader as a replica, perhaps behind the old one, and elect
    /// another (it happened right after a switchover, under load).
    pub fn fresh(&self) -> bool {
        let (polled, changed) = *lock(&self.times);
        fresh(polled, changed)
    }

    /// One poll of every agent, all at once; the answers replace the last ones. `agents` is the
    /// node list as stored now: a node added starts unknown, a node removed is forgotten.
    pub async fn poll(&self, client: &AgentClient, agents: &[String], term: Term, interval: Duration) {
        self.follow(agents);
        let timeout = interval.max(MIN_POLL_TIMEOUT);
        let started = Instant::now();
        let answers = futures::future::join_all(agents.iter().map(|addr| async move {
            let health = client.health(addr, term, timeout).await;
            let status = match &health {
                Ok(()) => client.status(addr, timeout).await.ok(),
                // Up but unhealthy (its database is down, say): its status still tells.
                Err(e) if e.answered() => client.status(addr, timeout).await.ok(),
                Err(_) => None,
            };
            (health, status)
        }))
        .await;
        let now = Instant::now();
        let mut nodes = lock(&self.nodes);
        for (addr, (health, status)) in agents.iter().zip(answers) {
            if let Some(node) = nodes.iter_mut().find(|n| n.address == *addr) {
                node.record(health, status, now);
            }
        }
        lock(&self.times).0 = Some(started);
    }

    /// Makes the observed nodes the `agents` list, in its order, keeping what is known of each.
    pub fn follow(&self, agents: &[String]) {
        let mut nodes = lock(&self.nodes);
        if nodes.iter().map(|n| &n.address).eq(agents.iter()) {
            return;
        }
        let old = std::mem::take(&mut *nodes);
        *nodes = agents
            .iter()
            .map(|a| {
                old.iter()
                    .find(|o| o.address == *a)
                    .cloned()
                    .unwrap_or_else(|| NodeObs { address: a.clone(), ..Default::default() })
            })
            .collect();
    }

    /// Each agent as the decisions see it.
    pub fn observed(&self) -> Vec<Observed> {
        lock(&self.nodes)
            .iter()
            .map(|o| Observed { address: o.address.clone(), alive: o.alive(self.misses), status: o.status.clone() })
            .collect()
    }

    /// Whether some agent is not known yet: it has neither answered nor missed enough polls to
    /// count as down. Deciding before would let a whole-cluster restart elect whichever agent
    /// happened to start first.
    pub fn still_learning(&self) -> bool {
        lock(&self.nodes).iter().any(|o| o.last_ok.is_none() && o.misses < self.misses)
    }

    /// The last healthy answer of `addr`.
    pub fn last_ok(&self, addr: &str) -> Option<Instant> {
        lock(&self.nodes).iter().find(|o| o.address == addr).and_then(|o| o.last_ok)
    }

    /// The newest configuration any agent reported in the last polls.
    pub fn newest_config(&self) -> Option<ClusterConfig> {
        newest_reported(lock(&self.nodes).iter().filter_map(|o| o.status.as_ref()))
    }

    pub fn snapshot(&self) -> Vec<NodeObs> {
        lock(&self.nodes).clone()
    }
}

/// Whether a poll that started at `polled` saw the leadership that changed at `changed`.
fn fresh(polled: Option<Instant>, changed: Option<Instant>) -> bool {
    match (polled, changed) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(polled), Some(changed)) => polled > changed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_wait_for_a_poll_that_started_after_the_leadership_changed() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(5);
        assert!(fresh(Some(t0), None), "nothing changed yet");
        assert!(!fresh(None, Some(t0)));
        assert!(!fresh(Some(t0), Some(later)), "that poll started before the new leader was made");
        assert!(fresh(Some(later), Some(t0)));
    }

    #[test]
    fn an_agent_is_alive_from_its_first_answer_until_it_misses_enough_polls() {
        let now = Instant::now();
        let mut node = NodeObs { address: "a:1".into(), ..Default::default() };
        assert!(!node.alive(3), "never answered");
        node.record(Ok(()), None, now);
        assert!(node.alive(3));
        let refused = || {
            Err(CallError::Refused {
                addr: "a:1".into(),
                status: reqwest::StatusCode::SERVICE_UNAVAILABLE,
                code: "unavailable".into(),
                message: "no database".into(),
            })
        };
        node.record(refused(), None, now);
        node.record(refused(), None, now);
        assert!(node.alive(3), "two misses of three");
        assert_eq!(node.error.as_deref(), Some("a:1 answered 503 Service Unavailable: no database"));
        node.record(refused(), None, now);
        assert!(!node.alive(3));
        node.record(Ok(()), None, now);
        assert!(node.alive(3) && node.error.is_none());
    }

    #[test]
    fn decisions_wait_until_every_agent_answered_or_counts_as_down() {
        let agents = ["a:1".to_string(), "b:2".to_string()];
        let observations = Observations::new(&agents, 2);
        assert!(observations.still_learning());
        let now = Instant::now();
        {
            let mut nodes = lock(&observations.nodes);
            nodes[0].record(Ok(()), None, now);
            for _ in 0..2 {
                nodes[1].misses += 1;
            }
        }
        assert!(!observations.still_learning());
        assert_eq!(observations.observed().iter().map(|o| o.alive).collect::<Vec<_>>(), [true, false]);
        assert_eq!(observations.last_ok("a:1"), Some(now));
    }

    #[test]
    fn the_observed_nodes_follow_the_stored_list_keeping_what_is_known() {
        let observations = Observations::new(&["a:1".to_string(), "b:2".to_string()], 2);
        lock(&observations.nodes)[0].record(Ok(()), None, Instant::now());
        observations.follow(&["a:1".to_string(), "c:3".to_string()]);
        let seen = observations.observed();
        assert_eq!(seen.iter().map(|o| o.address.as_str()).collect::<Vec<_>>(), ["a:1", "c:3"]);
        assert!(seen[0].alive, "a:1's polls are kept");
        assert!(observations.still_learning(), "c:3 is new");
    }
}
