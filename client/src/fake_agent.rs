//! A fake agent for tests: a real HTTP server on a free loopback port that answers `/read/` and
//! `/commit/` like the agent does, and records the commits it receives.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use protocol::{
    AbortReason, AccountRow, CommitRequest, CommitResponse, ErrorBody, Outcome, ReadRequest, ReadResponse, Role,
};

pub const READ_TS: i64 = 1_000;
pub const COMMIT_TS: i64 = 2_000;

#[derive(Clone, Default)]
pub struct Fake {
    /// `Some(leader)`: act as a replica that redirects commits there.
    pub leader: Option<String>,
    /// Abort any commit that reads this account, as a stale read.
    pub stale_account: Option<i64>,
    /// Answer every commit with this status and an error body.
    pub fail_commit_with: Option<StatusCode>,
    /// Balances of the accounts that exist.
    pub balances: BTreeMap<i64, i64>,
    pub commits: Arc<Mutex<Vec<CommitRequest>>>,
}

/// Serves `fake` on 127.0.0.1 and returns its address.
pub async fn start(fake: Fake) -> String {
    let router = Router::new().route("/read/", post(read)).route("/commit/", post(commit)).with_state(fake);
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

async fn read(State(fake): State<Fake>, Json(req): Json<ReadRequest>) -> Json<ReadResponse> {
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
        node: if fake.leader.is_some() { "node1" } else { "node0" }.into(),
        role: if fake.leader.is_some() { Role::Replica } else { Role::Leader },
    })
}

async fn commit(State(fake): State<Fake>, Json(req): Json<CommitRequest>) -> Response {
    if let Some(leader) = &fake.leader {
        let body = ErrorBody {
            error: "not_leader".into(),
            message: format!("this node is a replica; send commits to the leader at {leader}"),
            leader: Some(leader.clone()),
            term: None,
        };
        return (StatusCode::MISDIRECTED_REQUEST, Json(body)).into_response();
    }
    if let Some(code) = fake.fail_commit_with {
        let body =
            ErrorBody { error: "failed".into(), message: format!("the fake says {code}"), leader: None, term: None };
        return (code, Json(body)).into_response();
    }
    fake.commits.lock().unwrap().push(req.clone());
    let txn_id = req.transaction.txn_id.unwrap_or_default();
    let stale = fake.stale_account.filter(|a| req.transaction.read_set.contains(a));
    let (code, outcome) = match stale {
        Some(key) => (
            StatusCode::CONFLICT,
            CommitResponse {
                commit: Outcome::Abort,
                txn_id,
                commit_ts: None,
                lsn: None,
                reason: Some(AbortReason::StaleRead),
                key: Some(key),
                message: Some(format!("account {key} was written after the read timestamp")),
            },
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
