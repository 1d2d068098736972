//! A small client of etcd's v3 JSON gateway (etcd 3.4 and later: `/v3/kv/range`,
//! `/v3/kv/txn`, `/v3/lease/*`), over the workspace's reqwest. Only what the supervisor needs:
//! read a key, write it only if its revision is the one last read (optionally only while a
//! lease holds another key), and leases.
//!
//! The gateway speaks proto3 JSON: bytes are base64, 64-bit integers are strings, and fields
//! at their default value (`false`, `0`, empty) are left out.
//!
//! Each call tries the endpoints in turn, starting with the last one that answered, each within
//! a short timeout: a member that lost quorum does not answer writes or linearizable reads, and
//! the next member may still have it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

/// The longest one endpoint gets for one call before the next is tried.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(1000);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered in time, or none had quorum.
    #[error("etcd is unavailable: {0}")]
    Unavailable(String),
    /// What the request names does not exist (an expired or unknown lease, say): the same on
    /// every member.
    #[error("etcd refused the request: {0}")]
    NotFound(String),
    /// etcd answered with another error that trying again will not change.
    #[error("etcd refused the request: {0}")]
    Refused(String),
}

/// The gRPC status code `NOT_FOUND`, which the gateway puts in an error body's `code`.
const GRPC_NOT_FOUND: i64 = 5;

/// What one endpoint's error answer means for the call.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// The same on every member: the call fails with this error.
    Final(EtcdError),
    /// This member could not serve it (no leader, a timeout inside etcd): try the next one.
    TryNext(String),
}

/// Reads an error answer: its HTTP status and its body (`{"error", "message", "code"}`, the
/// gRPC status; None when the body was not JSON).
fn failure(status: reqwest::StatusCode, body: Option<&Value>) -> Failure {
    let message = body.and_then(|b| b.get("message")).and_then(Value::as_str).unwrap_or("").to_string();
    let code = body.and_then(|b| b.get("code")).and_then(Value::as_i64);
    if code == Some(GRPC_NOT_FOUND) {
        Failure::Final(EtcdError::NotFound(message))
    } else if status.is_client_error() {
        Failure::Final(EtcdError::Refused(message))
    } else {
        Failure::TryNext(format!("{status} {message}"))
    }
}

/// A key's value and revisions, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub value: Vec<u8>,
    /// The revision of the key's last change: what a conditional write compares.
    pub mod_revision: i64,
    /// The lease the key is attached to (0: none).
    pub lease: i64,
}

/// What a conditional write found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Written: the key's new revision.
    Done(i64),
    /// A condition did not hold; nothing was written. The key as it is now (None: absent).
    Lost(Option<Kv>),
}

pub struct Etcd {
    endpoints: Vec<String>,
    http: reqwest::Client,
    /// The endpoint that answered last: tried first.
    preferred: AtomicUsize,
}

impl Etcd {
    /// `endpoints`: `host:port` of etcd's client URLs.
    pub fn new(endpoints: Vec<String>) -> anyhow::Result<Etcd> {
        anyhow::ensure!(!endpoints.is_empty(), "no etcd endpoint given");
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(300))
            .timeout(CALL_TIMEOUT)
            .tcp_nodelay(true)
            .build()?;
        Ok(Etcd { endpoints, http, preferred: AtomicUsize::new(0) })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let first = self.preferred.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for i in 0..self.endpoints.len() {
            let index = (first + i) % self.endpoints.len();
            let endpoint = &self.endpoints[index];
            let resp = match self.http.post(format!("http://{endpoint}{path}")).json(body).send().await {
                Ok(resp) => resp,
                Err(e) => {
                    failures.push(format!("{endpoint}: {e}"));
                    continue;
                }
            };
            let status = resp.status();
            let answer = match resp.json::<Value>().await {
                Ok(v) if status.is_success() => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(v);
                }
                Ok(v) => failure(status, Some(&v)),
                Err(e) => match failure(status, None) {
                    Failure::TryNext(_) => Failure::TryNext(format!("{status} unreadable answer: {e}")),
                    Failure::Final(_) => Failure::Final(EtcdError::Refused(format!("unreadable answer: {e}"))),
                },
            };
            match answer {
                // A lease that does not exist, say: the same everywhere.
                Failure::Final(e) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Err(e);
                }
                // No leader, a timeout inside etcd: another member may do better.
                Failure::TryNext(why) => failures.push(format!("{endpoint}: {why}")),
            }
        }
        Err(EtcdError::Unavailable(failures.join("; ")))
    }

    /// The key's value and revisions, or None when it does not exist (a linearizable read).
    pub async fn get(&self, key: &str) -> Result<Option<Kv>, EtcdError> {
        let answer = self.post("/v3/kv/range", &json!({ "key": B64.encode(key) })).await?;
        Ok(answer.get("kvs").and_then(|kvs| kvs.get(0)).map(kv))
    }

    /// Writes `value` under `key` only if the key's revision is still `expected` (0: the key
    /// must not exist) and, when `holding` names a key and a lease, only while that key is
    /// attached to that lease. `lease` attaches the written key to a lease.
    pub async fn put_if(
        &self,
        key: &str,
        value: &[u8],
        expected: i64,
        holding: Option<(&str, i64)>,
        lease: Option<i64>,
    ) -> Result<Written, EtcdError> {
        let mut compare = vec![json!({
            "key": B64.encode(key), "target": "MOD", "result": "EQUAL", "mod_revision": expected.to_string(),
        })];
        if let Some((held, lease)) = holding {
            compare.push(json!({
                "key": B64.encode(held), "target": "LEASE", "result": "EQUAL", "lease": lease.to_string(),
            }));
        }
        let mut put = json!({ "key": B64.encode(key), "value": B64.encode(value) });
        if let Some(lease) = lease {
            put["lease"] = json!(lease.to_string());
        }
        let body = json!({
            "compare": compare,
            "success": [{ "request_put": put }],
            "failure": [{ "request_range": { "key": B64.encode(key) } }],
        });
        let answer = self.post("/v3/kv/txn", &body).await?;
        if answer.get("succeeded").and_then(Value::as_bool).unwrap_or(false) {
            // The put's revision is the transaction's.
            return Ok(Written::Done(int(answer.pointer("/header/revision"))));
        }
        let current = answer.pointer("/responses/0/response_range/kvs/0").map(kv);
        Ok(Written::Lost(current))
    }

    /// Deletes `key` if it is attached to `lease` (a supervisor stepping down).
    pub async fn delete_if_leased(&self, key: &str, lease: i64) -> Result<bool, EtcdError> {
        let body = json!({
            "compare": [{ "key": B64.encode(key), "target": "LEASE", "result": "EQUAL", "lease": lease.to_string() }],
            "success": [{ "request_delete_range": { "key": B64.encode(key) } }],
        });
        let answer = self.post("/v3/kv/txn", &body).await?;
        Ok(answer.get("succeeded").and_then(Value::as_bool).unwrap_or(false))
    }

    /// A new lease of `ttl` (whole seconds, at least 1): its id.
    pub async fn grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let ttl = ttl.as_secs().max(1);
        let answer = self.post("/v3/lease/grant", &json!({ "TTL": ttl.to_string() })).await?;
        match int(answer.get("ID")) {
            0 => Err(EtcdError::Refused(format!("no lease id in {answer}"))),
            id => Ok(id),
        }
    }

    /// Renews a lease: its TTL from now, or None when it has expired (or never existed).
    pub async fn keep_alive(&self, lease: i64) -> Result<Option<Duration>, EtcdError> {
        let answer = self.post("/v3/lease/keepalive", &json!({ "ID": lease.to_string() })).await?;
        match int(answer.pointer("/result/TTL")) {
            ttl if ttl > 0 => Ok(Some(Duration::from_secs(ttl as u64))),
            _ => Ok(None),
        }
    }

    /// Ends a lease at once; its keys go with it.
    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        match self.post("/v3/lease/revoke", &json!({ "ID": lease.to_string() })).await {
            Ok(_) => Ok(()),
            Err(EtcdError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A proto3 JSON int64: a string, a number, or absent (0).
fn int(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn kv(v: &Value) -> Kv {
    let value = v.get("value").and_then(Value::as_str).and_then(|s| B64.decode(s).ok()).unwrap_or_default();
    Kv { value, mod_revision: int(v.get("mod_revision")), lease: int(v.get("lease")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto3_json_integers_and_absent_fields_are_read() {
        let v = json!({"key": "YQ==", "mod_revision": "42", "value": "aGVsbG8=", "lease": "7"});
        assert_eq!(kv(&v), Kv { value: b"hello".to_vec(), mod_revision: 42, lease: 7 });
        // A key with an empty value and no lease: both fields are left out.
        let v = json!({"key": "YQ==", "mod_revision": "3"});
        assert_eq!(kv(&v), Kv { value: vec![], mod_revision: 3, lease: 0 });
        assert_eq!(int(Some(&json!(5))), 5);
        assert_eq!(int(Some(&json!("x"))), 0);
        assert_eq!(int(None), 0);
    }

    #[test]
    fn an_error_answer_is_read_by_its_grpc_code_and_status_not_its_text() {
        use reqwest::StatusCode;
        // What etcd 3.4 answers to revoking an unknown lease.
        let gone = json!({"error": "etcdserver: requested lease not found",
            "message": "etcdserver: requested lease not found", "code": 5});
        assert_eq!(
            failure(StatusCode::NOT_FOUND, Some(&gone)),
            Failure::Final(EtcdError::NotFound("etcdserver: requested lease not found".into()))
        );
        let bad = json!({"error": "bad", "message": "bad", "code": 3});
        assert_eq!(failure(StatusCode::BAD_REQUEST, Some(&bad)), Failure::Final(EtcdError::Refused("bad".into())));
        let no_leader = json!({"error": "etcdserver: no leader", "message": "etcdserver: no leader", "code": 14});
        assert_eq!(
            failure(StatusCode::SERVICE_UNAVAILABLE, Some(&no_leader)),
            Failure::TryNext("503 Service Unavailable etcdserver: no leader".into())
        );
        assert!(matches!(failure(StatusCode::BAD_GATEWAY, None), Failure::TryNext(_)));
    }
}
