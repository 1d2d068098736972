//! The supervisor's view of the cluster (`GET /status` of the supervisor), as `client status`
//! prints it and the cluster page shows it.
//!
//! The types are the supervisor's own ([`protocol::supervisor_status`]), which read leniently
//! (missing fields take their defaults, unknown ones are ignored), so that a client and a
//! supervisor of different versions still understand each other. What the client adds is here:
//! finding the active supervisor among several, the table of `client status`, and the few words
//! the pages and the table share ([`node_id`], [`role_label`], [`describe_failover`],
//! [`describe_recovery`]).

use std::fmt::Write as _;
use std::time::Duration;

pub use protocol::operator::HistoryEvent;
pub use protocol::supervisor_status::{FailoverReport, NodeReport, RecoveryReport, SupervisorStatus};

use crate::run::{base_url, role_name, root_cause, wire_name};

/// The supervisor answers from memory; a slow answer means it is in trouble.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// Recoveries `client status` lists, newest first.
const RECOVERIES_SHOWN: usize = 3;
/// Events of the supervisor's history `client status` lists, newest first.
const EVENTS_SHOWN: usize = 5;

/// The agent's node id, or `-` when it did not answer.
pub fn node_id(node: &NodeReport) -> &str {
    node.status.as_ref().map_or("-", |s| s.node_id.as_str())
}

/// The node's role as the wire names it (`leader`, `replica`, ...), or `unknown` when it did not
/// answer.
pub fn role_label(node: &NodeReport) -> String {
    node.role.map_or_else(|| "unknown".to_string(), role_name)
}

/// One line: who took over from whom and how long writes were unavailable.
pub fn describe_failover(failover: &FailoverReport) -> String {
    format!(
        "{} -> {} in term {}: detected in {} ms, elected in {} ms, writes unavailable for {} ms; \
         in-doubt transactions: {} committed, {} aborted",
        failover.old_leader.as_deref().unwrap_or("(none)"),
        failover.new_leader,
        failover.term,
        failover.detection_ms,
        failover.election_ms,
        failover.unavailable_ms,
        failover.in_doubt_committed,
        failover.in_doubt_aborted
    )
}

/// One line: the node, whether it is back, what it replayed and how long it took.
pub fn describe_recovery(recovery: &RecoveryReport) -> String {
    let pause = recovery.commit_pause_ms.map_or_else(String::new, |p| format!(", commits paused {p} ms"));
    format!(
        "{} {}: {} entries applied in {} ms{pause}: {}",
        recovery.node,
        if recovery.ok { "recovered" } else { "failed to recover" },
        recovery.entries_applied,
        recovery.duration_ms,
        recovery.message
    )
}

/// One line: when, what, on which node, in which term, and what the supervisor says of it.
pub fn describe_event(event: &HistoryEvent) -> String {
    format!(
        "{} {}{} in term {}{}: {}",
        clock_time(event.at_ms),
        wire_name(&event.kind),
        event.node.as_deref().map_or_else(String::new, |n| format!(" {n}")),
        event.term,
        if event.ok { "" } else { " FAILED" },
        event.message
    )
}

/// The status as `client status --json` prints it: every field the supervisor sent that this
/// client knows, in the order of [`SupervisorStatus`], pretty-printed.
pub fn to_json(cluster: &SupervisorStatus) -> String {
    // Serializing plain data (strings, numbers, lists) cannot fail.
    serde_json::to_string_pretty(cluster).unwrap_or_default() + "\n"
}

/// One refresh of `client status --watch`: on a terminal, the screen cleared and the block
/// under a heading; otherwise the block under a line with the time, so that a log of the
/// output reads in order. `block` is the table (or JSON), or why there is none this time.
pub fn watch_frame(at_ms: u64, every: Duration, block: &Result<String, String>, terminal: bool) -> String {
    let mut out = String::new();
    if terminal {
        // Clear the screen and go home (ANSI): each refresh replaces the last.
        out.push_str("\x1b[2J\x1b[H");
        let _ = writeln!(out, "every {:.1} s, at {} (Ctrl-C to stop)\n", every.as_secs_f64(), clock_time(at_ms));
    } else {
        let _ = writeln!(out, "=== {}", clock_time(at_ms));
    }
    match block {
        Ok(text) => out.push_str(text),
        Err(e) => {
            let _ = writeln!(out, "error: {e} (retrying)");
        }
    }
    out
}

/// Why no supervisor's status could be had. The variant says what happened; the text is for
/// people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    /// This client was started without a supervisor (`--supervisor ''`).
    #[error("this client has no supervisor to ask (--supervisor)")]
    NotConfigured,
    /// The list of supervisors holds no address.
    #[error("no supervisor address given")]
    NoAddress,
    /// Nothing answered at the address: the supervisor is down, or the address is wrong.
    #[error("cannot reach the supervisor at {supervisor}: {cause}")]
    Unreachable { supervisor: String, cause: String },
    /// The supervisor answered with an error status.
    #[error("the supervisor at {supervisor} answered HTTP {code}")]
    Refused { supervisor: String, code: reqwest::StatusCode },
    /// The answer broke off while it was being read.
    #[error("the supervisor at {supervisor}: {cause}")]
    Interrupted { supervisor: String, cause: String },
    /// The answer is not a status this client reads (another program at that address).
    #[error("the supervisor at {supervisor} sent a status that is not understood: {cause}")]
    NotUnderstood { supervisor: String, cause: String },
    /// Several supervisors were asked and none answered, each for its reason.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    NoneAnswered(Vec<StatusError>),
}

/// Fetches the cluster status from the supervisor at `supervisor` (`host:port`, or several
/// comma-separated: the active one's answer is taken).
pub async fn fetch(http: &reqwest::Client, supervisor: &str) -> Result<SupervisorStatus, StatusError> {
    supervisor_status(http, supervisor, STATUS_TIMEOUT).await
}

/// Every supervisor in a `--supervisor` value: one `host:port`, or several comma-separated when
/// standby supervisors run.
pub fn supervisors(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// `GET /status` of each supervisor in `list` in turn: the first active one's answer, else
/// the first answer (a standby's view is still a view), else why none came.
pub async fn supervisor_status<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    list: &str,
    timeout: std::time::Duration,
) -> Result<T, StatusError> {
    let mut first: Option<serde_json::Value> = None;
    let mut errors = Vec::new();
    for supervisor in supervisors(list) {
        match status_of(http, supervisor, timeout).await {
            // Supervisors before standbys existed have no `active` field: they act.
            Ok(v) if v.get("active").and_then(serde_json::Value::as_bool).unwrap_or(true) => {
                return decode(supervisor, v);
            }
            Ok(v) => {
                first.get_or_insert(v);
            }
            Err(e) => errors.push(e),
        }
    }
    match first {
        Some(v) => decode(list, v),
        None if errors.is_empty() => Err(StatusError::NoAddress),
        None if errors.len() == 1 => Err(errors.remove(0)),
        None => Err(StatusError::NoneAnswered(errors)),
    }
}

fn decode<T: serde::de::DeserializeOwned>(supervisor: &str, v: serde_json::Value) -> Result<T, StatusError> {
    serde_json::from_value(v)
        .map_err(|e| StatusError::NotUnderstood { supervisor: supervisor.to_string(), cause: e.to_string() })
}

async fn status_of(
    http: &reqwest::Client,
    supervisor: &str,
    timeout: std::time::Duration,
) -> Result<serde_json::Value, StatusError> {
    let url = format!("{}/status", base_url(supervisor));
    let response = http
        .get(&url)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| StatusError::Unreachable { supervisor: supervisor.to_string(), cause: root_cause(&e) })?;
    let code = response.status();
    if !code.is_success() {
        return Err(StatusError::Refused { supervisor: supervisor.to_string(), code });
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|e| StatusError::Interrupted { supervisor: supervisor.to_string(), cause: root_cause(&e) })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| StatusError::NotUnderstood { supervisor: supervisor.to_string(), cause: e.to_string() })
}

/// Unix milliseconds as `HH:MM:SS UTC` (the day is always today or close to it here).
pub fn clock_time(at_ms: u64) -> String {
    let secs = at_ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02} UTC", secs / 3600, secs / 60 % 60, secs % 60)
}

fn dash(value: Option<i64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// The status as a table, one agent a line, then the cluster's state, the last failover and the
/// latest recoveries.
pub fn render(cluster: &SupervisorStatus) -> String {
    let header = ["ADDRESS", "NODE", "ALIVE", "MEMBER", "ROLE", "TERM", "APPLIED_LSN", "LAG"];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    let mut errors = Vec::new();
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
    for node in &cluster.nodes {
        rows.push(vec![
            node.address.clone(),
            node_id(node).to_string(),
            yes_no(node.alive),
            yes_no(node.member),
            node.role.map_or_else(|| "-".to_string(), role_name),
            dash(node.term),
            dash(node.applied_lsn),
            dash(node.lag),
        ]);
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
    let _ = writeln!(
        out,
        "leader: {} (term {}, config version {})",
        cluster.leader.as_deref().unwrap_or("none"),
        cluster.term,
        cluster.config_version
    );
    let _ = writeln!(
        out,
        "members: {}",
        if cluster.members.is_empty() { "none".into() } else { cluster.members.join(", ") }
    );
    let _ = writeln!(
        out,
        "writes: {}: {}",
        if cluster.writes_available { "available" } else { "UNAVAILABLE" },
        cluster.message
    );
    if cluster.maintenance {
        let _ = writeln!(
            out,
            "maintenance: ON: automatic failover and recovery are off (`client resume` turns them back on)"
        );
    }
    if let Some(failover) = &cluster.last_failover {
        let _ = writeln!(out, "last failover at {}: {}", clock_time(failover.at_ms), describe_failover(failover));
    }
    if !cluster.recovering.is_empty() {
        let _ = writeln!(out, "recovering: {}", cluster.recovering.join(", "));
    }
    for recovery in cluster.recoveries.iter().rev().take(RECOVERIES_SHOWN) {
        let _ = writeln!(out, "recovery at {}: {}", clock_time(recovery.at_ms), describe_recovery(recovery));
    }
    if !cluster.diverged.is_empty() {
        let _ = writeln!(out, "DIVERGED (refused, need rebuilding): {}", cluster.diverged.join(", "));
    }
    if !cluster.events.is_empty() {
        let _ = writeln!(out, "latest events, newest first:");
        for event in cluster.events.iter().rev().take(EVENTS_SHOWN) {
            let _ = writeln!(out, "  {}", describe_event(event));
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A status as the supervisor sends it after one failover and one recovery.
    pub(crate) const AFTER_FAILOVER: &str = r#"{"term": 2, "config_version": 3, "leader": "127.0.0.1:8001",
        "members": ["127.0.0.1:8000", "127.0.0.1:8001"], "writes_available": false,
        "message": "a member is not answering: commits wait until it is removed",
        "nodes": [
            {"address": "127.0.0.1:8000", "alive": true, "member": true, "role": "replica", "term": 2,
             "applied_lsn": 12, "lag": 0, "error": null, "status": {
                "node_id": "node0", "address": "127.0.0.1:8000", "role": "replica", "term": 2,
                "leader": "127.0.0.1:8001", "applied_lsn": 12, "last_commit_ts": 77,
                "members": ["127.0.0.1:8000", "127.0.0.1:8001"], "prepared_batch": null,
                "config_version": 3, "supervisor": "127.0.0.1:9000"}},
            {"address": "127.0.0.1:8001", "alive": true, "member": true, "role": "leader", "term": 2,
             "applied_lsn": 12, "lag": 0, "error": null, "status": {
                "node_id": "node1", "address": "127.0.0.1:8001", "role": "leader", "term": 2,
                "leader": "127.0.0.1:8001", "applied_lsn": 12, "last_commit_ts": 77,
                "members": ["127.0.0.1:8000", "127.0.0.1:8001"], "prepared_batch": null,
                "config_version": 3, "supervisor": "127.0.0.1:9000"}},
            {"address": "127.0.0.1:8002", "alive": false, "member": false, "role": null, "term": null,
             "applied_lsn": null, "lag": null, "status": null,
             "error": "cannot connect: Connection refused (os error 111)"}
        ],
        "last_failover": {"at_ms": 1795410608988, "old_leader": "127.0.0.1:8000", "new_leader": "127.0.0.1:8001",
            "term": 2, "detection_ms": 200, "election_ms": 17, "unavailable_ms": 218,
            "in_doubt_committed": 1, "in_doubt_aborted": 0},
        "failovers": [], "recovering": ["127.0.0.1:8002"],
        "recoveries": [{"node": "127.0.0.1:8000", "at_ms": 1795410610768, "ok": true,
            "message": "in sync and back in the member set", "entries_applied": 5, "duration_ms": 38,
            "commit_pause_ms": 15}],
        "diverged": [], "clients": ["http://127.0.0.1:5000/leader_changed/"], "a_future_field": 1}"#;

    #[test]
    fn renders_the_supervisor_status() {
        let cluster: SupervisorStatus = serde_json::from_str(AFTER_FAILOVER).unwrap();
        let text = render(&cluster);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ADDRESS         NODE   ALIVE  MEMBER  ROLE     TERM  APPLIED_LSN  LAG", "{text}");
        assert_eq!(lines[1], "127.0.0.1:8000  node0  yes    yes     replica  2     12           0", "{text}");
        assert_eq!(lines[2], "127.0.0.1:8001  node1  yes    yes     leader   2     12           0", "{text}");
        assert_eq!(lines[3], "127.0.0.1:8002  -      no     no      -        -     -            -", "{text}");
        assert!(text.contains("unreachable 127.0.0.1:8002: cannot connect"), "{text}");
        assert!(text.contains("leader: 127.0.0.1:8001 (term 2, config version 3)\n"), "{text}");
        assert!(text.contains("writes: UNAVAILABLE: a member is not answering"), "{text}");
        assert!(text.contains("127.0.0.1:8000 -> 127.0.0.1:8001 in term 2"), "{text}");
        assert!(text.contains("writes unavailable for 218 ms"), "{text}");
        assert!(text.contains("recovering: 127.0.0.1:8002"), "{text}");
        assert!(text.contains("127.0.0.1:8000 recovered: 5 entries applied in 38 ms, commits paused 15 ms"), "{text}");
    }

    #[test]
    fn the_table_shows_maintenance_and_the_latest_events_newest_first() {
        let mut cluster: SupervisorStatus = serde_json::from_str(AFTER_FAILOVER).unwrap();
        assert!(!render(&cluster).contains("maintenance"));
        assert!(!render(&cluster).contains("latest events"));
        cluster.maintenance = true;
        cluster.events = serde_json::from_str(
            r#"[{"at_ms": 3600000, "kind": "switchover", "node": "127.0.0.1:8001", "term": 3, "ok": true,
                 "message": "switched over in 40 ms"},
                {"at_ms": 3661000, "kind": "maintenance_on", "term": 3, "ok": true, "message": "paused"},
                {"at_ms": 3662000, "kind": "recovery", "node": "127.0.0.1:8002", "term": 3, "ok": false,
                 "message": "cannot reach it"}]"#,
        )
        .unwrap();
        let text = render(&cluster);
        assert!(text.contains("maintenance: ON: automatic failover and recovery are off"), "{text}");
        let events: Vec<&str> = text.lines().skip_while(|l| !l.starts_with("latest events")).skip(1).collect();
        assert_eq!(
            events,
            [
                "  01:01:02 UTC recovery 127.0.0.1:8002 in term 3 FAILED: cannot reach it",
                "  01:01:01 UTC maintenance_on in term 3: paused",
                "  01:00:00 UTC switchover 127.0.0.1:8001 in term 3: switched over in 40 ms",
            ],
            "{text}"
        );
    }

    #[test]
    fn json_is_the_status_pretty_printed_in_a_stable_order() {
        let cluster: SupervisorStatus = serde_json::from_str(AFTER_FAILOVER).unwrap();
        let json = to_json(&cluster);
        assert!(json.starts_with("{\n  \"store\": \"\",\n  \"active\": false,"), "{json}");
        assert!(!json.contains("a_future_field"), "only what this client knows");
        let back: SupervisorStatus = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cluster);
        assert_eq!(to_json(&back), json, "the same status prints the same");
    }

    #[test]
    fn a_watch_frame_clears_a_terminal_or_stamps_each_block() {
        let every = Duration::from_millis(1500);
        let frame = watch_frame(3_723_000, every, &Ok("TABLE\n".into()), true);
        assert_eq!(frame, "\x1b[2J\x1b[Hevery 1.5 s, at 01:02:03 UTC (Ctrl-C to stop)\n\nTABLE\n");
        let frame = watch_frame(3_723_000, every, &Err("cannot reach the supervisor".into()), false);
        assert_eq!(frame, "=== 01:02:03 UTC\nerror: cannot reach the supervisor (retrying)\n");
    }

    #[test]
    fn a_minimal_status_is_understood() {
        let cluster: SupervisorStatus = serde_json::from_str(r#"{"leader": null}"#).unwrap();
        let text = render(&cluster);
        assert!(text.contains("leader: none"), "{text}");
        assert!(text.contains("members: none"), "{text}");
    }

    #[test]
    fn times_read_well() {
        assert_eq!(clock_time(3_723_000), "01:02:03 UTC");
        assert_eq!(clock_time(86_400_000 + 5_000), "00:00:05 UTC");
    }
}
