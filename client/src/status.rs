//! `client status`: the supervisor's view of the cluster as a table.

use std::fmt::Write as _;
use std::time::Duration;

use protocol::{Lsn, Term, Timestamp};
use serde::Deserialize;

use crate::run::base_url;

/// The supervisor polls every agent with a 1 s timeout, in parallel.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// The supervisor's `GET /status` body.
#[derive(Debug, Clone, Deserialize)]
pub struct ClusterStatus {
    pub nodes: Vec<NodeReport>,
    pub leader: Option<String>,
    pub writes_available: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NodeReport {
    pub address: String,
    pub alive: bool,
    pub status: Option<AgentSummary>,
    pub error: Option<String>,
}

/// The part of an agent's status (`protocol::AgentStatus`) the table shows. Read leniently, so
/// that a client and a supervisor of different versions still understand each other.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AgentSummary {
    pub node_id: String,
    pub role: String,
    pub term: Term,
    pub applied_lsn: Lsn,
    pub last_commit_ts: Timestamp,
    pub members: Vec<String>,
}

/// Fetches the cluster status from the supervisor at `supervisor` (`host:port`).
pub async fn fetch(supervisor: &str) -> anyhow::Result<ClusterStatus> {
    let http = reqwest::Client::builder().timeout(STATUS_TIMEOUT).build()?;
    let url = format!("{}/status", base_url(supervisor));
    let response = http.get(&url).send().await.map_err(|e| {
        let mut cause: &dyn std::error::Error = &e;
        while let Some(source) = cause.source() {
            cause = source;
        }
        anyhow::anyhow!("cannot reach the supervisor at {supervisor}: {cause}")
    })?;
    let code = response.status();
    if !code.is_success() {
        anyhow::bail!("the supervisor at {supervisor} answered HTTP {code}");
    }
    response
        .json::<ClusterStatus>()
        .await
        .map_err(|e| anyhow::anyhow!("the supervisor at {supervisor} sent an invalid status: {e}"))
}

/// The status as a table, one agent a line, then the leader and whether writes are available.
pub fn render(cluster: &ClusterStatus) -> String {
    let header = ["ADDRESS", "ALIVE", "NODE", "ROLE", "TERM", "APPLIED_LSN", "LAST_COMMIT_TS", "MEMBERS"];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    let mut errors = Vec::new();
    for node in &cluster.nodes {
        let alive = if node.alive { "yes" } else { "no" }.to_string();
        let row = match &node.status {
            Some(s) => vec![
                node.address.clone(),
                alive,
                s.node_id.clone(),
                s.role.clone(),
                s.term.to_string(),
                s.applied_lsn.to_string(),
                s.last_commit_ts.to_string(),
                s.members.join(","),
            ],
            None => {
                let mut row = vec![node.address.clone(), alive];
                row.extend(std::iter::repeat_n("-".to_string(), header.len() - 2));
                row
            }
        };
        rows.push(row);
        if let Some(error) = &node.error {
            errors.push(format!("{}: {error}", node.address));
        }
    }

    let widths: Vec<usize> =
        (0..header.len()).map(|col| rows.iter().map(|r| r[col].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    for error in errors {
        let _ = writeln!(out, "unreachable {error}");
    }
    let _ = writeln!(out, "leader: {}", cluster.leader.as_deref().unwrap_or("none"));
    let _ = writeln!(out, "writes: {}", if cluster.writes_available { "available" } else { "unavailable" });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_live_and_dead_nodes() {
        let cluster: ClusterStatus = serde_json::from_str(
            r#"{"nodes": [
                {"address": "127.0.0.1:8000", "alive": true, "error": null, "status": {
                    "node_id": "node0", "address": "127.0.0.1:8000", "role": "leader", "term": 3,
                    "leader": "127.0.0.1:8000", "applied_lsn": 12, "last_commit_ts": 77,
                    "members": ["127.0.0.1:8000"], "prepared_batch": null}},
                {"address": "127.0.0.1:8001", "alive": false, "status": null,
                 "error": "cannot connect: Connection refused (os error 111)"}
            ], "leader": "127.0.0.1:8000", "writes_available": true}"#,
        )
        .unwrap();
        let text = render(&cluster);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ADDRESS         ALIVE  NODE   ROLE"), "{text}");
        assert!(lines[1].starts_with("127.0.0.1:8000  yes    node0  leader  3"), "{text}");
        assert!(lines[2].starts_with("127.0.0.1:8001  no     -      -"), "{text}");
        assert!(text.contains("unreachable 127.0.0.1:8001: cannot connect"), "{text}");
        assert!(text.contains("leader: 127.0.0.1:8000\nwrites: available\n"), "{text}");
    }
}
