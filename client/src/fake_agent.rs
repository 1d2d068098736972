//! Fakes for tests: an agent and a supervisor, each a real HTTP server on a free loopback port,
//! answering like the real ones do and recording what they receive.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use protocol::{
    AbortReason, AccountRow, CommitRequest, CommitResponse, DrillResponse, ErrorBody, Outcome, ReadRequest,
    ReadResponse, Role,
};
use serde_json::{json, Value};

pub const READ_TS: i64 = 1_000;
pub const COMMIT_TS: i64 = 2_000;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A counter for [`Fake::unavailable_commits`].
pub fn counter(n: usize) -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(n))
}

#[derive(Clone, Default)]
pub struct Fake {
    /// `Some(leader)`: act as a replica that redirects commits there (see [`Fake::replica_of`]).
    pub leader: Arc<Mutex<Option<String>>>,
    /// Abort any commit that reads this account, as a stale read.
    pub stale_account: Option<i64>,
    /// Answer every commit with this status and an error body.
    pub fail_commit_with: Option<StatusCode>,
    /// Answer this many commits with 503 "no leader" before taking them.
    pub unavailable_commits: Arc<AtomicUsize>,
    /// Answer those 503s `outcome_unknown`, as a leader deposed mid-commit does.
    pub name_txn_in_503: bool,
    /// Abort every commit with 503 `replication_failed`.
    pub replication_fails: bool,
    /// Balances of the accounts that exist.
    pub balances: BTreeMap<i64, i64>,
    /// The role the drills move between (`Leader` by default, `Replica` for a replica).
    pub drill_role: Arc<Mutex<Option<Role>>>,
    /// Commits taken, and every commit received.
    pub commits_taken: Arc<Mutex<Vec<CommitRequest>>>,
    pub tries_received: Arc<Mutex<Vec<CommitRequest>>>,
    /// Drill paths called, in order.
    pub drills: Arc<Mutex<Vec<String>>>,
}

impl Fake {
    pub fn replica_of(leader: &str) -> Fake {
        let fake = Fake::default();
        fake.set_leader(Some(leader.to_string()));
        fake
    }

    pub fn set_leader(&self, leader: Option<String>) {
        *lock(&self.leader) = leader;
    }

    fn leader(&self) -> Option<String> {
        lock(&self.leader).clone()
    }

    fn role(&self) -> Role {
        lock(&self.drill_role).unwrap_or(if self.leader().is_some() { Role::Replica } else { Role::Leader })
    }

    pub fn commits(&self) -> Vec<CommitRequest> {
        lock(&self.commits_taken).clone()
    }

    pub fn tries(&self) -> Vec<CommitRequest> {
        lock(&self.tries_received).clone()
    }

    pub fn drills(&self) -> Vec<String> {
        lock(&self.drills).clone()
    }
}

/// Serves `fake` on 127.0.0.1 and returns its address.
pub async fn start(fake: Fake) -> String {
    let router = Router::new()
        .route("/read/", post(read))
        .route("/commit/", post(commit))
        .route("/status", get(status))
        .route("/down_leader/", get(down_leader))
        .route("/up_node/", get(up_node))
        .route("/metrics", get(agent_metrics))
        .with_state(fake);
    serve(router).await
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, router).await });
    address
}

/// An address nothing listens on.
pub async fn closed_port() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().to_string()
}

fn node_id(fake: &Fake) -> &'static str {
    if fake.leader().is_some() {
        "node1"
    } else {
        "node0"
    }
}

async fn read(State(fake): State<Fake>, Json(req): Json<ReadRequest>) -> Response {
    if fake.role() == Role::Down {
        return unavailable("this node is down (the /down_leader/ drill)".into());
    }
    let rows: Vec<AccountRow> = req
        .transaction
        .read_set
        .iter()
        .filter_map(|a| {
            fake.balances.get(a).map(|b| AccountRow {
                account_number: *a,
                balance: *b,
                created_at: Some(1),
                updated_at: Some(1),
            })
        })
        .collect();
    Json(ReadResponse {
        read_status: "success".into(),
        values: rows.iter().map(|r| (r.account_number, r.balance)).collect(),
        data: rows,
        timestamp: READ_TS,
        lsn: 3,
        node: node_id(&fake).into(),
        role: fake.role(),
    })
    .into_response()
}

/// `GET /metrics`: the commits taken, each counted as a 1 ms commit.
async fn agent_metrics(State(fake): State<Fake>) -> String {
    let n = fake.commits().len();
    format!(
        "# TYPE rmw_commits_total counter\nrmw_commits_total {n}\n# TYPE rmw_commit_seconds histogram\n\
         rmw_commit_seconds_bucket{{outcome=\"commit\",le=\"0.001\"}} {n}\n\
         rmw_commit_seconds_bucket{{outcome=\"commit\",le=\"+Inf\"}} {n}\n"
    )
}

fn unavailable(message: String) -> Response {
    let body = ErrorBody { error: "unavailable".into(), message, leader: None, term: None, horizon: None };
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

async fn status(State(fake): State<Fake>) -> Json<Value> {
    Json(json!({"node_id": node_id(&fake), "role": fake.role(), "leader": fake.leader(), "term": 1, "applied_lsn": 3}))
}

async fn commit(State(fake): State<Fake>, Json(req): Json<CommitRequest>) -> Response {
    lock(&fake.tries_received).push(req.clone());
    let txn_id = req.transaction.txn_id.unwrap_or_default();
    if let Some(leader) = fake.leader() {
        let body = ErrorBody {
            error: "not_leader".into(),
            message: format!("this node is a replica; send commits to the leader at {leader}"),
            leader: Some(leader),
            term: None,
            horizon: None,
        };
        return (StatusCode::MISDIRECTED_REQUEST, Json(body)).into_response();
    }
    if fake.unavailable_commits.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
        if fake.name_txn_in_503 {
            let message = format!("transaction {txn_id}: the leader was deposed before the outcome was known");
            let body = ErrorBody { error: "outcome_unknown".into(), message, leader: None, term: None, horizon: None };
            return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        }
        return unavailable("no leader at the moment (an election is in progress); retry shortly".into());
    }
    if let Some(code) = fake.fail_commit_with {
        let body = ErrorBody {
            error: "failed".into(),
            message: format!("the fake says {code}"),
            leader: None,
            term: None,
            horizon: None,
        };
        return (code, Json(body)).into_response();
    }
    lock(&fake.commits_taken).push(req.clone());
    let stale = fake.stale_account.filter(|a| req.transaction.read_set.contains(a));
    let abort = |reason, key: Option<i64>, message: String| CommitResponse {
        commit: Outcome::Abort,
        txn_id,
        commit_ts: None,
        lsn: None,
        reason: Some(reason),
        key,
        message: Some(message),
    };
    let (code, outcome) = match stale {
        _ if fake.replication_fails => (
            StatusCode::SERVICE_UNAVAILABLE,
            abort(AbortReason::ReplicationFailed, None, "a member did not answer the PREPARE".into()),
        ),
        Some(key) => (
            StatusCode::CONFLICT,
            abort(AbortReason::StaleRead, Some(key), format!("account {key} was written after the read timestamp")),
        ),
        None => (
            StatusCode::OK,
            CommitResponse {
                commit: Outcome::Commit,
                txn_id,
                commit_ts: Some(COMMIT_TS),
                lsn: Some(4),
                reason: None,
                key: None,
                message: None,
            },
        ),
    };
    (code, Json(outcome)).into_response()
}

fn drill(fake: &Fake, path: &str, from: Role, to: Role) -> Response {
    lock(&fake.drills).push(path.to_string());
    let role = fake.role();
    let changed = role == from;
    if changed {
        *lock(&fake.drill_role) = Some(to);
    }
    let body = DrillResponse {
        node_id: node_id(fake).into(),
        role: fake.role(),
        changed,
        message: if changed { format!("{path}: done") } else { format!("{path}: nothing to do") },
    };
    let code = if changed { StatusCode::OK } else { StatusCode::CONFLICT };
    (code, Json(body)).into_response()
}

async fn down_leader(State(fake): State<Fake>) -> Response {
    drill(&fake, "/down_leader/", Role::Leader, Role::Down)
}

async fn up_node(State(fake): State<Fake>) -> Response {
    drill(&fake, "/up_node/", Role::Down, Role::Standby)
}

/// An agent's `GET /status` as the supervisor relays it in its own status: node `i` at `address`.
pub fn agent_status(i: usize, address: &str, role: &str) -> Value {
    json!({"node_id": format!("node{i}"), "address": address, "role": role, "term": 2, "leader": null,
           "applied_lsn": 12, "last_commit_ts": 77, "members": [], "prepared_batch": null,
           "config_version": 3, "supervisor": null})
}

/// A supervisor that answers `GET /status` with a settable body, records registrations, and
/// carries out the operator endpoints on that body (switchover, pause, resume, members add and
/// remove, rebuild), refusing as the real one does a switchover to the leader or a removal of
/// the leader.
#[derive(Clone)]
pub struct FakeSupervisor {
    pub address: String,
    status: Arc<Mutex<Value>>,
    pub registered: Arc<Mutex<Vec<String>>>,
    /// The operator requests received: (path, body).
    operations: Arc<Mutex<Vec<(String, String)>>>,
    /// Act as a standby: every operator request gets 503 `standby`.
    pub standby: Arc<std::sync::atomic::AtomicBool>,
}

impl FakeSupervisor {
    /// A supervisor whose status names `leader` (writes available) or none (an election).
    pub async fn start(leader: Option<String>) -> FakeSupervisor {
        let message = match &leader {
            Some(l) => format!("writes go to {l}"),
            None => "no leader is serving: a failover is in progress or pending".to_string(),
        };
        let status = json!({
            "term": 2, "config_version": 3, "leader": leader, "members": [],
            "writes_available": leader.is_some(), "message": message, "nodes": [],
            "last_failover": null, "failovers": [], "recovering": [], "recoveries": [],
            "diverged": [], "clients": []
        });
        let fake = FakeSupervisor {
            address: String::new(),
            status: Arc::new(Mutex::new(status)),
            registered: Arc::default(),
            operations: Arc::default(),
            standby: Arc::default(),
        };
        let router = Router::new()
            .route("/status", get(supervisor_status))
            .route("/register_client/", post(register_client))
            .route("/switchover", post(|s, b| operator(s, "/switchover", b)))
            .route("/pause", post(|s, b| operator(s, "/pause", b)))
            .route("/resume", post(|s, b| operator(s, "/resume", b)))
            .route("/members/add", post(|s, b| operator(s, "/members/add", b)))
            .route("/members/remove", post(|s, b| operator(s, "/members/remove", b)))
            .route("/rebuild", post(|s, b| operator(s, "/rebuild", b)))
            .with_state(fake.clone());
        FakeSupervisor { address: serve(router).await, ..fake }
    }

    pub fn set_status(&self, status: Value) {
        *lock(&self.status) = status;
    }

    /// The operator requests received, in order: (path, JSON body).
    pub fn operations(&self) -> Vec<(String, String)> {
        lock(&self.operations).clone()
    }
}

fn refuse(code: &str, message: &str) -> Response {
    let body = ErrorBody { error: code.into(), message: message.into(), leader: None, term: None, horizon: None };
    (StatusCode::CONFLICT, Json(body)).into_response()
}

/// The operator endpoints, carried out on the status the fake serves.
async fn operator(State(fake): State<FakeSupervisor>, path: &'static str, body: String) -> Response {
    lock(&fake.operations).push((path.to_string(), body.clone()));
    if fake.standby.load(Ordering::SeqCst) {
        let body = ErrorBody {
            error: "standby".into(),
            message: "this supervisor is a standby; the active one acts".into(),
            leader: None,
            term: None,
            horizon: None,
        };
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    let request: Value = serde_json::from_str(&body).unwrap_or_default();
    let node = request["node"].as_str().or(request["to"].as_str()).unwrap_or_default().to_string();
    let mut status = lock(&fake.status);
    let leader = status["leader"].as_str().unwrap_or_default().to_string();
    let term = status["term"].as_i64().unwrap_or(0);
    let mut members: Vec<String> = serde_json::from_value(status["members"].clone()).unwrap_or_default();
    let event = |kind: &str| json!({"at_ms": 1, "kind": kind, "node": node, "term": term, "ok": true, "message": path});
    let answer = match path {
        "/switchover" if node == leader => return refuse("already_leader", &format!("{node} already leads")),
        "/switchover" => {
            status["leader"] = json!(node);
            status["term"] = json!(term + 1);
            json!({"leader": node, "term": term + 1, "writes_paused_ms": 3, "message": format!("{node} leads term {} (a test)", term + 1)})
        }
        "/pause" | "/resume" => {
            let on = path == "/pause";
            status["maintenance"] = json!(on);
            json!({"maintenance": on, "message": if on { "paused" } else { "resumed" }})
        }
        "/members/remove" if node == leader => {
            return refuse("is_leader", &format!("{node} leads: switch over to another member first"))
        }
        "/members/remove" => {
            members.retain(|m| *m != node);
            status["members"] = json!(members);
            json!({"term": term, "version": 9, "leader": leader, "members": members})
        }
        _ => {
            // Add and rebuild: the node recovers at once.
            members.push(node.clone());
            status["members"] = json!(members);
            let answer = json!({"node": node, "state": "recovering", "message": "recovering"});
            let kind = if path == "/rebuild" { "rebuild" } else { "member_added" };
            push_event(&mut status, event(kind));
            return (StatusCode::ACCEPTED, Json(answer)).into_response();
        }
    };
    let kind = match path {
        "/switchover" => "switchover",
        "/pause" => "maintenance_on",
        "/resume" => "maintenance_off",
        _ => "member_removed",
    };
    push_event(&mut status, event(kind));
    Json(answer).into_response()
}

fn push_event(status: &mut Value, event: Value) {
    match status["events"].as_array_mut() {
        Some(events) => events.push(event),
        None => status["events"] = json!([event]),
    }
}

async fn supervisor_status(State(fake): State<FakeSupervisor>) -> Json<Value> {
    Json(lock(&fake.status).clone())
}

async fn register_client(State(fake): State<FakeSupervisor>, Json(body): Json<Value>) -> Json<Value> {
    let url = body["url"].as_str().unwrap_or_default().to_string();
    lock(&fake.registered).push(url.clone());
    let leader = lock(&fake.status)["leader"].clone();
    Json(json!({"registered": url, "leader": leader, "term": 2}))
}
