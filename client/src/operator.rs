//! The supervisor's operator endpoints as the client calls them, for the command line
//! (`client switchover`, `pause`, `resume`, `member add|remove`, `rebuild`) and the cluster
//! page's buttons alike.
//!
//! - [`Operation`]: what an operator asks for, with the endpoint it calls and the words the
//!   page asks and answers with.
//! - [`send`]: one request to the active supervisor (a standby answers 503: the next in the list
//!   is tried), giving an [`Answer`] in words or an [`OperatorError`] by kind, whose
//!   [`exit_code`](OperatorError::exit_code) the commands return.
//! - [`resolve_node`]: a node named by its id (`node2`, as the agents call themselves) or its
//!   address, from the supervisor's list.
//! - [`progress`]: where a node being added or rebuilt stands, from the supervisor's status, for
//!   the commands that wait until it is a member.
//!
//! Architecture invariant: these calls go to the supervisor only, never to the node named: the
//! supervisor checks every node it is asked about, so an address typed on the page reaches no one
//! but it.

use std::time::Duration;

use protocol::operator::{MaintenanceResponse, NodeAccepted, NodeRequest, SwitchoverRequest, SwitchoverResponse};
use protocol::{ClusterConfig, ErrorBody};
use reqwest::StatusCode;

use crate::run::{base_url, root_cause, EXIT_ABORT, EXIT_UNAVAILABLE, EXIT_USAGE};
use crate::status::{supervisors, SupervisorStatus};

/// A switchover pauses the leader's commits, waits for the target to catch up, and runs an
/// election; a rebuild empties a node's database first. Both take seconds at most; this bounds a
/// supervisor that hangs.
pub const OPERATOR_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest piece of an unexpected answer quoted in an error.
const MAX_QUOTED: usize = 200;

/// A planned change an operator asks the supervisor for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// Move the leadership to a member in sync (`POST /switchover`).
    Switchover { to: String },
    /// Turn automatic failover and recovery off (`POST /pause`).
    Pause,
    /// Turn them on again (`POST /resume`).
    Resume,
    /// Watch a new node, recover it and add it to the members (`POST /members/add`).
    AddMember { node: String },
    /// Take a member out of the member set (`POST /members/remove`).
    RemoveMember { node: String },
    /// Empty a non-member's database and recover it from the leader's log (`POST /rebuild`).
    Rebuild { node: String },
}

impl Operation {
    /// The operation a form names: `action` with its `node` (ignored by pause and resume).
    pub fn from_form(action: &str, node: &str) -> Option<Operation> {
        let node = node.trim().to_string();
        Some(match action {
            "switchover" => Operation::Switchover { to: node },
            "pause" => Operation::Pause,
            "resume" => Operation::Resume,
            "member_add" => Operation::AddMember { node },
            "member_remove" => Operation::RemoveMember { node },
            "rebuild" => Operation::Rebuild { node },
            _ => return None,
        })
    }

    /// The name in forms and in the page's list of what this client did.
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Switchover { .. } => "switchover",
            Operation::Pause => "pause",
            Operation::Resume => "resume",
            Operation::AddMember { .. } => "member_add",
            Operation::RemoveMember { .. } => "member_remove",
            Operation::Rebuild { .. } => "rebuild",
        }
    }

    /// The supervisor's endpoint (`POST`).
    pub fn path(&self) -> &'static str {
        match self {
            Operation::Switchover { .. } => "/switchover",
            Operation::Pause => "/pause",
            Operation::Resume => "/resume",
            Operation::AddMember { .. } => "/members/add",
            Operation::RemoveMember { .. } => "/members/remove",
            Operation::Rebuild { .. } => "/rebuild",
        }
    }

    /// The node concerned, if the operation has one.
    pub fn node(&self) -> Option<&str> {
        match self {
            Operation::Switchover { to: node }
            | Operation::AddMember { node }
            | Operation::RemoveMember { node }
            | Operation::Rebuild { node } => Some(node),
            Operation::Pause | Operation::Resume => None,
        }
    }

    /// The same operation on another node (a node id resolved to its address).
    pub fn on(self, address: String) -> Operation {
        match self {
            Operation::Switchover { .. } => Operation::Switchover { to: address },
            Operation::AddMember { .. } => Operation::AddMember { node: address },
            Operation::RemoveMember { .. } => Operation::RemoveMember { node: address },
            Operation::Rebuild { .. } => Operation::Rebuild { node: address },
            Operation::Pause | Operation::Resume => self,
        }
    }

    /// The JSON body of the request.
    fn body(&self) -> serde_json::Value {
        let node = |node: &str| serde_json::to_value(NodeRequest { node: node.to_string() });
        let body = match self {
            Operation::Switchover { to } => serde_json::to_value(SwitchoverRequest { to: to.clone() }),
            Operation::Pause | Operation::Resume => Ok(serde_json::json!({})),
            Operation::AddMember { node: n } | Operation::RemoveMember { node: n } | Operation::Rebuild { node: n } => {
                node(n)
            }
        };
        body.unwrap_or_default()
    }

    /// What the person is asked before it is sent.
    pub fn question(&self) -> String {
        match self {
            Operation::Switchover { to } => format!(
                "Switch over to {to} (POST /switchover)? The leader's commits pause for a moment while {to} \
                 catches up, then {to} leads in a new term."
            ),
            Operation::Pause => "Pause automatic failover (POST /pause)? Until you resume it, the supervisor elects \
                                 no new leader and recovers no node by itself."
                .into(),
            Operation::Resume => {
                "Resume automatic failover (POST /resume)? The supervisor again elects a new leader when the \
                 leader fails, and recovers returning nodes."
                    .into()
            }
            Operation::AddMember { node } => format!(
                "Add {node} to the cluster (POST /members/add)? The supervisor starts watching it, replays the \
                 leader's log onto it and makes it a member."
            ),
            Operation::RemoveMember { node } => format!(
                "Remove {node} from the members (POST /members/remove)? Commits stop waiting for it, and the \
                 supervisor forgets it: it is never recovered or elected again unless added back."
            ),
            Operation::Rebuild { node } => format!(
                "Rebuild {node} (POST /rebuild)? Its database is EMPTIED, then the leader's whole log is replayed \
                 onto it and it rejoins the members."
            ),
        }
    }

    /// The button that asks for it on the cluster page.
    pub fn button(&self) -> &'static str {
        match self {
            Operation::Switchover { .. } => "Make leader",
            Operation::Pause => "Pause automatic failover",
            Operation::Resume => "Resume automatic failover",
            Operation::AddMember { .. } => "Add member",
            Operation::RemoveMember { .. } => "Remove",
            Operation::Rebuild { .. } => "Rebuild",
        }
    }

    /// The button of the confirmation page.
    pub fn confirm_button(&self) -> &'static str {
        match self {
            Operation::Switchover { .. } => "Switch over",
            Operation::Pause => "Pause",
            Operation::Resume => "Resume",
            Operation::AddMember { .. } => "Add it",
            Operation::RemoveMember { .. } => "Remove it",
            Operation::Rebuild { .. } => "Empty and rebuild it",
        }
    }

    /// Whether the command waits, after the supervisor accepted it, until the node is a member.
    pub fn ends_with_a_recovery(&self) -> bool {
        matches!(self, Operation::AddMember { .. } | Operation::Rebuild { .. })
    }
}

/// What the supervisor answered to an operation it carried out (or started: add and rebuild).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The supervisor that answered.
    pub supervisor: String,
    /// 200, or 202 when it started a recovery.
    pub code: u16,
    /// What it did, in words.
    pub message: String,
}

/// Why an operation was not carried out. The variant says whose move it is; the text is for
/// people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OperatorError {
    /// The supervisor refused it (409) and said why: `code` is its reason (`not_in_sync`,
    /// `is_leader`, `below_floor`, ...).
    #[error("refused ({code}): {message}")]
    Refused { code: String, message: String },
    /// The supervisor does not know the node (404 `not_found`).
    #[error("{message}")]
    UnknownNode { message: String },
    /// The supervisor has no such endpoint: it is older than this client.
    #[error("the supervisor at {supervisor} does not offer {path} (HTTP {status}): it is older than this client")]
    NotOffered { supervisor: String, path: &'static str, status: u16 },
    /// The request as given is not one the supervisor takes (400: a malformed address, ...).
    #[error("the supervisor refused the request as malformed: {message}")]
    BadRequest { message: String },
    /// No token, or not the cluster's (401).
    #[error(
        "the supervisor at {supervisor} wants the cluster token: give this client the cluster's token file \
         (--cluster-token-file): {message}"
    )]
    Unauthorized { supervisor: String, message: String },
    /// Every supervisor asked is a standby (503): none acts now.
    #[error("no active supervisor: {}", .0.join("; "))]
    NoActive(Vec<String>),
    /// Nothing answered, or only with errors that say nothing (a 500, an unreadable answer).
    #[error("{}", .0.join("; "))]
    Unreachable(Vec<String>),
    /// `--supervisor` names no supervisor.
    #[error("no supervisor address given (--supervisor)")]
    NoAddress,
}

impl OperatorError {
    /// The exit code of the commands: 1 refused (the supervisor's reason, or a supervisor too
    /// old), 2 bad input (a malformed request, a missing or wrong token), 3 no supervisor acting
    /// could be reached.
    pub fn exit_code(&self) -> u8 {
        match self {
            OperatorError::Refused { .. } | OperatorError::NotOffered { .. } => EXIT_ABORT,
            OperatorError::BadRequest { .. }
            | OperatorError::UnknownNode { .. }
            | OperatorError::Unauthorized { .. }
            | OperatorError::NoAddress => EXIT_USAGE,
            OperatorError::NoActive(_) | OperatorError::Unreachable(_) => EXIT_UNAVAILABLE,
        }
    }
}

/// Sends `operation` to the active supervisor in `list` (`host:port`, or several
/// comma-separated: a standby answers 503 and the next is tried).
pub async fn send(http: &reqwest::Client, list: &str, operation: &Operation) -> Result<Answer, OperatorError> {
    let mut standbys = Vec::new();
    let mut unreachable = Vec::new();
    for supervisor in supervisors(list) {
        let url = format!("{}{}", base_url(supervisor), operation.path());
        let response = match http.post(&url).json(&operation.body()).timeout(OPERATOR_TIMEOUT).send().await {
            Ok(response) => response,
            Err(e) => {
                unreachable.push(format!("cannot reach the supervisor at {supervisor}: {}", root_cause(&e)));
                continue;
            }
        };
        let status = response.status();
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(e) => {
                unreachable.push(format!("the supervisor at {supervisor}: {}", root_cause(&e)));
                continue;
            }
        };
        match read_answer(supervisor, operation, status, &bytes) {
            Reply::Done(answer) => return Ok(answer),
            Reply::Failed(error) => return Err(error),
            Reply::Standby(message) => standbys.push(format!("{supervisor}: {message}")),
            Reply::Unusable(message) => unreachable.push(message),
        }
    }
    if !standbys.is_empty() && unreachable.is_empty() {
        Err(OperatorError::NoActive(standbys))
    } else if standbys.is_empty() && unreachable.is_empty() {
        Err(OperatorError::NoAddress)
    } else {
        unreachable.extend(standbys.into_iter().map(|s| format!("standby {s}")));
        Err(OperatorError::Unreachable(unreachable))
    }
}

/// What one supervisor's answer came to.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Done(Answer),
    /// A definite answer: asking another supervisor would not change it.
    Failed(OperatorError),
    /// A standby: ask the next one.
    Standby(String),
    /// No answer to use: ask the next one.
    Unusable(String),
}

/// The supervisor's answer (`status`, `body`) to `operation`, in words.
fn read_answer(supervisor: &str, operation: &Operation, status: StatusCode, body: &[u8]) -> Reply {
    let error_body = serde_json::from_slice::<ErrorBody>(body).ok();
    if status.is_success() {
        return match describe_success(operation, body) {
            Some(message) => Reply::Done(Answer { supervisor: supervisor.to_string(), code: status.as_u16(), message }),
            None => Reply::Unusable(format!(
                "the supervisor at {supervisor} answered HTTP {status} with something not understood: {}",
                quote(body)
            )),
        };
    }
    let explained = error_body.is_some();
    let (code, message) = error_body.map_or_else(|| (String::new(), quote(body)), |e| (e.error, e.message));
    Reply::Failed(match status {
        StatusCode::CONFLICT => OperatorError::Refused { code, message },
        // A standby acts on nothing: the next supervisor in the list may be the active one.
        StatusCode::SERVICE_UNAVAILABLE if code == "standby" => return Reply::Standby(message),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            OperatorError::Unauthorized { supervisor: supervisor.to_string(), message }
        }
        // The endpoint exists, and says the node is not one of its nodes.
        StatusCode::NOT_FOUND if explained => OperatorError::UnknownNode { message },
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => OperatorError::NotOffered {
            supervisor: supervisor.to_string(),
            path: operation.path(),
            status: status.as_u16(),
        },
        s if s.is_client_error() => OperatorError::BadRequest { message },
        s => return Reply::Unusable(format!("the supervisor at {supervisor} answered HTTP {s}: {message}")),
    })
}

/// A successful answer in words, from the typed body of each endpoint; `None` if it is not one.
/// The supervisor's own sentence says it all for a switchover (the new leader, its term, the
/// pause).
fn describe_success(operation: &Operation, body: &[u8]) -> Option<String> {
    match operation {
        Operation::Switchover { .. } => {
            let done: SwitchoverResponse = serde_json::from_slice(body).ok()?;
            Some(done.message)
        }
        Operation::Pause | Operation::Resume => {
            let done: MaintenanceResponse = serde_json::from_slice(body).ok()?;
            let state = if done.maintenance { "automatic failover is OFF" } else { "automatic failover is on" };
            Some(format!("{state}: {}", done.message))
        }
        Operation::AddMember { .. } | Operation::Rebuild { .. } => {
            let started: NodeAccepted = serde_json::from_slice(body).ok()?;
            let wiped = started.wiped_entries.map_or_else(String::new, |n| format!(" ({n} log entries wiped)"));
            Some(format!("{} is {}{wiped}: {}", started.node, started.state, started.message))
        }
        Operation::RemoveMember { node } => {
            let config: ClusterConfig = serde_json::from_slice(body).ok()?;
            Some(format!(
                "{node} removed; members now {} (term {}, config version {})",
                if config.members.is_empty() { "none".to_string() } else { config.members.join(", ") },
                config.term,
                config.version
            ))
        }
    }
}

fn quote(body: &[u8]) -> String {
    String::from_utf8_lossy(body).trim().chars().take(MAX_QUOTED).collect()
}

/// Why a node's name could not be turned into an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeNameError {
    /// Neither an id an agent reports nor an address: the names known are listed.
    #[error("no node is called {given:?}; the supervisor lists {}", list(.known))]
    Unknown { given: String, known: Vec<(String, String)> },
    /// Not `host:port` (for `member add`, which takes an address only).
    #[error("{given:?} is not an address: give host:port")]
    NotAnAddress { given: String },
}

fn list(known: &[(String, String)]) -> String {
    if known.is_empty() {
        return "no nodes".into();
    }
    known
        .iter()
        .map(|(id, address)| if id.is_empty() { address.clone() } else { format!("{id} at {address}") })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `text` reads as `host:port` (a port number after the last colon, a host before it).
pub fn is_address(text: &str) -> bool {
    let text = text.trim_start_matches("http://");
    matches!(text.rsplit_once(':'), Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok())
}

/// The address of the node called `given` in `cluster`: a listed address as it is, else the
/// address of the node whose agent reports that id (`node2`), else `given` itself if it is an
/// address (the supervisor then says what it makes of it). A node that does not answer has no
/// id known: name it by its address.
pub fn resolve_node(cluster: &SupervisorStatus, given: &str) -> Result<String, NodeNameError> {
    let given = given.trim();
    if let Some(node) = cluster.nodes.iter().find(|n| n.address == given) {
        return Ok(node.address.clone());
    }
    if let Some(node) = cluster.nodes.iter().find(|n| n.status.as_ref().is_some_and(|s| s.node_id == given)) {
        return Ok(node.address.clone());
    }
    if is_address(given) {
        return Ok(given.to_string());
    }
    let known = cluster
        .nodes
        .iter()
        .map(|n| (n.status.as_ref().map(|s| s.node_id.clone()).unwrap_or_default(), n.address.clone()))
        .collect();
    Err(NodeNameError::Unknown { given: given.to_string(), known })
}

/// Where a node being added or rebuilt stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// In the member set: done.
    Member { applied_lsn: Option<i64> },
    /// The supervisor is replaying the leader's log onto it.
    Recovering,
    /// Its log differs from the leader's: it will not join without a rebuild.
    Diverged,
    /// Its last recovery since the request failed; the supervisor retries.
    Failed { message: String },
    /// The supervisor does not list it (yet).
    NotListed,
    /// Listed, but it does not answer the supervisor's polls.
    NotAnswering,
    /// Listed and answering; its recovery has not started yet.
    Waiting,
}

impl Progress {
    /// The line the waiting command prints when the progress changes.
    pub fn describe(&self, node: &str) -> String {
        match self {
            Progress::Member { applied_lsn } => format!(
                "{node} is a member{}",
                applied_lsn.map_or_else(String::new, |lsn| format!(" (applied LSN {lsn})"))
            ),
            Progress::Recovering => format!("{node}: recovering (replaying the leader's log)"),
            Progress::Diverged => format!("{node}: diverged from the leader's log; it needs a rebuild"),
            Progress::Failed { message } => format!("{node}: a recovery failed, the supervisor retries: {message}"),
            Progress::NotListed => format!("{node}: not listed by the supervisor yet"),
            Progress::NotAnswering => format!("{node}: not answering the supervisor's polls"),
            Progress::Waiting => format!("{node}: waiting for its recovery to start"),
        }
    }
}

/// Where `node` stands in `cluster`, counting only recoveries at or after `since_ms` (Unix ms).
pub fn progress(cluster: &SupervisorStatus, node: &str, since_ms: u64) -> Progress {
    let listed = cluster.nodes.iter().find(|n| n.address == node);
    if cluster.members.iter().any(|m| m == node) {
        return Progress::Member { applied_lsn: listed.and_then(|n| n.applied_lsn) };
    }
    if cluster.diverged.iter().any(|d| d == node) {
        return Progress::Diverged;
    }
    if cluster.recovering.iter().any(|r| r == node) {
        return Progress::Recovering;
    }
    if let Some(failed) = cluster.recoveries.iter().rev().find(|r| r.node == node && r.at_ms >= since_ms && !r.ok) {
        return Progress::Failed { message: failed.message.clone() };
    }
    match listed {
        None => Progress::NotListed,
        Some(n) if !n.alive => Progress::NotAnswering,
        Some(_) => Progress::Waiting,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after_failover() -> SupervisorStatus {
        serde_json::from_str(crate::status::tests::AFTER_FAILOVER).unwrap()
    }

    #[test]
    fn each_operation_has_its_endpoint_body_and_form_name() {
        let ops = [
            (Operation::Switchover { to: "h:1".into() }, "/switchover", r#"{"to":"h:1"}"#),
            (Operation::Pause, "/pause", "{}"),
            (Operation::Resume, "/resume", "{}"),
            (Operation::AddMember { node: "h:1".into() }, "/members/add", r#"{"node":"h:1"}"#),
            (Operation::RemoveMember { node: "h:1".into() }, "/members/remove", r#"{"node":"h:1"}"#),
            (Operation::Rebuild { node: "h:1".into() }, "/rebuild", r#"{"node":"h:1"}"#),
        ];
        for (op, path, body) in ops {
            assert_eq!((op.path(), op.body().to_string().as_str()), (path, body));
            assert_eq!(Operation::from_form(op.name(), " h:1 "), Some(op.clone()));
            assert!(op.question().contains(&format!("(POST {path})")), "{}", op.question());
        }
        assert_eq!(Operation::from_form("drop_table", "h:1"), None);
        assert_eq!(Operation::Rebuild { node: "node2".into() }.on("h:2".into()).node(), Some("h:2"));
        assert!(Operation::Rebuild { node: String::new() }.question().contains("EMPTIED"));
    }

    #[test]
    fn answers_read_in_words_and_refusals_by_kind() {
        let switchover = Operation::Switchover { to: "127.0.0.1:8001".into() };
        let read = |op: &Operation, status: u16, body: &str| {
            read_answer("s:9000", op, StatusCode::from_u16(status).unwrap(), body.as_bytes())
        };
        let done = read(
            &switchover,
            200,
            r#"{"leader": "127.0.0.1:8001", "term": 4, "writes_paused_ms": 12, "message": "127.0.0.1:8001 leads term 4 after 127.0.0.1:8000 (a replica and member now); writes paused for 12 ms"}"#,
        );
        assert_eq!(
            done,
            Reply::Done(Answer {
                supervisor: "s:9000".into(),
                code: 200,
                message: "127.0.0.1:8001 leads term 4 after 127.0.0.1:8000 (a replica and member now); writes paused for 12 ms"
                    .into()
            })
        );
        let refused = read(&switchover, 409, r#"{"error": "not_in_sync", "message": "it lags by 40 entries"}"#);
        let Reply::Failed(error) = refused else { panic!("{refused:?}") };
        assert_eq!(error.to_string(), "refused (not_in_sync): it lags by 40 entries");
        assert_eq!(error.exit_code(), 1);
        assert!(
            matches!(read(&Operation::Pause, 503, r#"{"error": "standby", "message": "a standby"}"#), Reply::Standby(m) if m == "a standby")
        );
        let Reply::Failed(e) = read(&Operation::Pause, 401, r#"{"error": "unauthorized", "message": "no token"}"#)
        else {
            panic!()
        };
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--cluster-token-file"), "{e}");
        let unknown = read(
            &Operation::Rebuild { node: "h:9".into() },
            404,
            r#"{"error": "not_found", "message": "h:9 is not one of the supervisor's nodes"}"#,
        );
        let Reply::Failed(e) = unknown else { panic!("{unknown:?}") };
        assert_eq!((e.exit_code(), e.to_string().as_str()), (2, "h:9 is not one of the supervisor's nodes"));
        // Busy storing, or finishing an election: not a standby, so no other supervisor to ask.
        let busy = read(&Operation::Pause, 503, r#"{"error": "store_unavailable", "message": "etcd is down"}"#);
        assert!(
            matches!(&busy, Reply::Unusable(m) if m.contains("HTTP 503") && m.contains("etcd is down")),
            "{busy:?}"
        );
        let Reply::Failed(e) = read(&Operation::Pause, 404, "") else { panic!() };
        assert_eq!((e.exit_code(), e.to_string().contains("older than this client")), (1, true));
        let Reply::Failed(e) = read(
            &Operation::AddMember { node: "x".into() },
            400,
            r#"{"error": "bad_request", "message": "not host:port"}"#,
        ) else {
            panic!()
        };
        assert_eq!(e.exit_code(), 2);
        assert!(
            matches!(read(&Operation::Pause, 500, "boom"), Reply::Unusable(m) if m.contains("HTTP 500") && m.contains("boom"))
        );
        assert!(matches!(read(&Operation::Pause, 200, "<html>"), Reply::Unusable(_)));

        let paused = read(&Operation::Pause, 200, r#"{"maintenance": true, "message": "failover is off"}"#);
        assert!(matches!(paused, Reply::Done(a) if a.message == "automatic failover is OFF: failover is off"));
        let added = read(
            &Operation::Rebuild { node: "h:2".into() },
            202,
            r#"{"node": "h:2", "state": "recovering", "message": "recovering from the leader", "wiped_entries": 7}"#,
        );
        assert!(
            matches!(added, Reply::Done(a) if a.code == 202 && a.message == "h:2 is recovering (7 log entries wiped): recovering from the leader")
        );
        let removed = read(
            &Operation::RemoveMember { node: "h:2".into() },
            200,
            r#"{"term": 3, "version": 5, "leader": "h:0", "members": ["h:0", "h:1"]}"#,
        );
        assert!(
            matches!(removed, Reply::Done(a) if a.message == "h:2 removed; members now h:0, h:1 (term 3, config version 5)")
        );
    }

    #[test]
    fn exit_codes_say_whose_move_it_is() {
        assert_eq!(OperatorError::NoActive(vec![]).exit_code(), 3);
        assert_eq!(OperatorError::Unreachable(vec!["x".into()]).exit_code(), 3);
        assert_eq!(OperatorError::NoAddress.exit_code(), 2);
    }

    #[test]
    fn a_node_is_named_by_its_id_or_its_address() {
        let cluster = after_failover();
        assert_eq!(resolve_node(&cluster, "node1"), Ok("127.0.0.1:8001".into()));
        assert_eq!(resolve_node(&cluster, "127.0.0.1:8002"), Ok("127.0.0.1:8002".into()));
        assert_eq!(resolve_node(&cluster, "10.0.0.9:8000"), Ok("10.0.0.9:8000".into()), "the supervisor decides");
        // node2 does not answer, so nobody knows it by that name.
        let unknown = resolve_node(&cluster, "node2").unwrap_err();
        assert_eq!(
            unknown.to_string(),
            "no node is called \"node2\"; the supervisor lists node0 at 127.0.0.1:8000, node1 at 127.0.0.1:8001, \
             127.0.0.1:8002"
        );
        assert!(is_address("localhost:8000") && is_address("http://h:1"));
        assert!(!is_address("node2") && !is_address(":80") && !is_address("h:port"));
    }

    #[test]
    fn progress_follows_a_node_into_the_members() {
        let mut cluster = after_failover();
        let node = "127.0.0.1:8002";
        assert_eq!(progress(&cluster, node, 0), Progress::Recovering);
        cluster.recovering.clear();
        assert_eq!(progress(&cluster, node, 0), Progress::NotAnswering);
        cluster.nodes[2].alive = true;
        assert_eq!(progress(&cluster, node, 0), Progress::Waiting);
        cluster.recoveries[0].node = node.into();
        cluster.recoveries[0].ok = false;
        let failed = progress(&cluster, node, 0);
        assert!(matches!(&failed, Progress::Failed { message } if message == "in sync and back in the member set"));
        assert_eq!(progress(&cluster, node, u64::MAX), Progress::Waiting, "an older failure does not count");
        cluster.diverged.push(node.into());
        assert_eq!(progress(&cluster, node, 0), Progress::Diverged);
        cluster.members.push(node.into());
        cluster.nodes[2].applied_lsn = Some(12);
        let member = progress(&cluster, node, 0);
        assert_eq!(member.describe(node), "127.0.0.1:8002 is a member (applied LSN 12)");
        assert_eq!(progress(&cluster, "10.0.0.9:1", 0), Progress::NotListed);
    }
}
