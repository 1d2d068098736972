//! Bad input is refused with a 4xx and a JSON body that says what is wrong, changes no table on
//! any node, and does not hurt the process (DESIGN.md section 7).

use e2e::Cluster;
use protocol::{MAX_BODY_BYTES, MAX_SET_LEN};
use reqwest::StatusCode;
use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// 400 with `{"error": "bad_request", "message": ...}`.
    BadRequest,
    /// Any 4xx with `{"error": ..., "message": ...}` (the design leaves the exact code open).
    ClientError,
}

struct Case {
    name: String,
    path: &'static str,
    body: String,
    content_type: Option<&'static str>,
    expect: Expect,
}

const JSON: Option<&str> = Some("application/json");

fn case(name: &str, path: &'static str, body: impl Into<String>) -> Case {
    Case { name: name.into(), path, body: body.into(), content_type: JSON, expect: Expect::BadRequest }
}

/// Bodies that are wrong for `/read/` and `/commit/` alike.
fn for_both(path: &'static str) -> Vec<Case> {
    let ws_or_rs = if path == "/read/" { r#""read_set": [1]"# } else { r#""write_set": {"1": 1}"# };
    let too_big = format!(r#"{{"transaction": {{{ws_or_rs}{}}}}}"#, " ".repeat(MAX_BODY_BYTES + 1024));
    let many: Vec<i64> = (1..=MAX_SET_LEN as i64 + 1).collect();
    vec![
        case("malformed JSON", path, r#"{"transaction": {"read_set": [1,"#),
        case("not JSON", path, "hello"),
        case("empty body", path, ""),
        case("a JSON array", path, "[1, 2]"),
        case("transaction null", path, r#"{"transaction": null}"#),
        case("no transaction: {}", path, "{}"),
        case("empty transaction", path, r#"{"transaction": {}}"#),
        case("empty sets", path, r#"{"transaction": {"read_set": [], "write_set": {}}}"#),
        case("unknown top-level field", path, format!(r#"{{"transaction": {{{ws_or_rs}}}, "extra": 1}}"#)),
        case("unknown field in transaction", path, format!(r#"{{"transaction": {{{ws_or_rs}, "bogus": 1}}}}"#)),
        case("read_set with a float", path, r#"{"transaction": {"read_set": [1.5], "time_stamp": 1}}"#),
        case("read_set with a string", path, r#"{"transaction": {"read_set": ["1"], "time_stamp": 1}}"#),
        case("read_set with null", path, r#"{"transaction": {"read_set": [null], "time_stamp": 1}}"#),
        case("read_set not an array", path, r#"{"transaction": {"read_set": 1, "time_stamp": 1}}"#),
        case(
            "read_set account above i64",
            path,
            r#"{"transaction": {"read_set": [9223372036854775808], "time_stamp": 1}}"#,
        ),
        case("read_set negative account", path, r#"{"transaction": {"read_set": [-1], "time_stamp": 1}}"#),
        case(
            "read_set of 1001 accounts",
            path,
            json!({"transaction": {"read_set": many, "time_stamp": 1}}).to_string(),
        ),
        Case {
            name: format!("body over {MAX_BODY_BYTES} bytes"),
            expect: Expect::ClientError,
            ..case("", path, too_big)
        },
    ]
}

fn read_only() -> Vec<Case> {
    vec![
        case("read with a write_set", "/read/", r#"{"transaction": {"read_set": [1], "write_set": {"2": 1}}}"#),
        case("read with negative min_lsn", "/read/", r#"{"transaction": {"read_set": [1]}, "min_lsn": -1}"#),
        case("read with string min_lsn", "/read/", r#"{"transaction": {"read_set": [1]}, "min_lsn": "1"}"#),
        case("read of an account twice", "/read/", r#"{"transaction": {"read_set": [1, 1]}}"#),
    ]
}

fn commit_only() -> Vec<Case> {
    let c = "/commit/";
    let many: serde_json::Map<String, serde_json::Value> =
        (1..=MAX_SET_LEN as i64 + 1).map(|a| (a.to_string(), json!(1))).collect();
    vec![
        case("non-integer key", c, r#"{"transaction": {"write_set": {"x": 1}}}"#),
        case("float key", c, r#"{"transaction": {"write_set": {"1.5": 1}}}"#),
        case("empty key", c, r#"{"transaction": {"write_set": {"": 1}}}"#),
        case("float value", c, r#"{"transaction": {"write_set": {"1": 1.5}}}"#),
        case("string value", c, r#"{"transaction": {"write_set": {"1": "100"}}}"#),
        case("null value", c, r#"{"transaction": {"write_set": {"1": null}}}"#),
        case("boolean value", c, r#"{"transaction": {"write_set": {"1": true}}}"#),
        case("key above i64", c, r#"{"transaction": {"write_set": {"9223372036854775808": 1}}}"#),
        case("value above i64", c, r#"{"transaction": {"write_set": {"1": 9223372036854775808}}}"#),
        case("value below i64", c, r#"{"transaction": {"write_set": {"1": -9223372036854775809}}}"#),
        case("negative account", c, r#"{"transaction": {"write_set": {"-1": 5}}}"#),
        case("write_set an array", c, r#"{"transaction": {"write_set": [[1, 2]]}}"#),
        case("read_set without time_stamp", c, r#"{"transaction": {"read_set": [1], "write_set": {"2": 1}}}"#),
        case(
            "negative time_stamp",
            c,
            r#"{"transaction": {"read_set": [1], "write_set": {"2": 1}, "time_stamp": -1}}"#,
        ),
        case("string time_stamp", c, r#"{"transaction": {"read_set": [1], "write_set": {"2": 1}, "time_stamp": "1"}}"#),
        case("float time_stamp", c, r#"{"transaction": {"read_set": [1], "write_set": {"2": 1}, "time_stamp": 1.5}}"#),
        case("txn_id not a UUID", c, r#"{"transaction": {"write_set": {"2": 1}, "txn_id": "abc"}}"#),
        case("txn_id a number", c, r#"{"transaction": {"write_set": {"2": 1}, "txn_id": 7}}"#),
        case("write_set of 1001 accounts", c, json!({"transaction": {"write_set": many}}).to_string()),
        case("an account twice in write_set", c, r#"{"transaction": {"write_set": {"1": 1, "1": 2}}}"#),
        case("an account twice in read_set", c, r#"{"transaction": {"read_set": [4, 4], "time_stamp": 1}}"#),
        case("min_copies 0", c, r#"{"transaction": {"write_set": {"2": 1}}, "min_copies": 0}"#),
        case("min_copies above 16", c, r#"{"transaction": {"write_set": {"2": 1}}, "min_copies": 17}"#),
        case("min_copies negative", c, r#"{"transaction": {"write_set": {"2": 1}}, "min_copies": -1}"#),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_changes_nothing() {
    let c = Cluster::start(3).await;
    c.write(0, &[(1, 100), (2, 200)]).await;
    let before = c.snapshot().await;

    // Reads are refused the same way by the leader and by a replica; commits go to the leader.
    let mut cases: Vec<(usize, Case)> = Vec::new();
    for node in [0, 1] {
        cases.extend(for_both("/read/").into_iter().map(|k| (node, k)));
        cases.extend(read_only().into_iter().map(|k| (node, k)));
    }
    cases.extend(for_both("/commit/").into_iter().map(|k| (0, k)));
    cases.extend(commit_only().into_iter().map(|k| (0, k)));

    let mut failures = Vec::new();
    let mut lenient_codes = Vec::new();
    for (node, k) in &cases {
        let r = c.post_raw(*node, k.path, k.body.clone(), k.content_type).await;
        let what = format!("{} {} on node {node}", k.path, k.name);
        if k.expect == Expect::ClientError {
            lenient_codes.push(format!("{what}: HTTP {}", r.status));
        }
        let status_ok = match k.expect {
            Expect::BadRequest => r.status == StatusCode::BAD_REQUEST,
            Expect::ClientError => r.status.is_client_error(),
        };
        let body_shown: String = r.body.chars().take(300).collect();
        if !status_ok {
            failures.push(format!("{what}: expected {:?}, got HTTP {}: {body_shown}", k.expect, r.status));
            continue;
        }
        let Some(body) = r.json() else {
            failures.push(format!(
                "{what}: HTTP {} with a body that is not JSON (content-type {:?}): {body_shown:?}",
                r.status, r.content_type
            ));
            continue;
        };
        if !r.content_type.as_deref().is_some_and(|t| t.starts_with("application/json")) {
            failures.push(format!("{what}: JSON body sent as content-type {:?}", r.content_type));
        }
        let error = body["error"].as_str().unwrap_or_default();
        let message = body["message"].as_str().unwrap_or_default();
        if error.is_empty() || message.is_empty() {
            failures.push(format!("{what}: body lacks error/message: {body}"));
        } else if r.status == StatusCode::BAD_REQUEST && error != "bad_request" {
            failures.push(format!("{what}: 400 with error {error:?}, expected \"bad_request\""));
        }
    }

    // Bad query strings on the log endpoint.
    for path in ["/replication_log/?after=abc", "/replication_log/?limit=abc", "/replication_log/?after=1.5"] {
        let r = c.get_raw(0, path).await;
        let json_error = r.json().is_some_and(|b| b["error"] == "bad_request" && b["message"].is_string());
        if r.status != StatusCode::BAD_REQUEST || !json_error {
            failures.push(format!("GET {path}: expected 400 bad_request JSON, got HTTP {}: {:?}", r.status, r.body));
        }
    }

    println!("codes where the design allows any 4xx:\n  {}", lenient_codes.join("\n  "));
    assert!(
        failures.is_empty(),
        "{} of {} bad inputs were not answered as specified:\n{}",
        failures.len(),
        cases.len() + 3,
        failures.join("\n")
    );

    assert_eq!(c.snapshot().await, before, "a refused request changed a table");

    // Every process still serves, and still commits.
    for i in 0..3 {
        assert_eq!(c.health(i).await, StatusCode::OK, "node {i} after the bad inputs");
        let log = std::fs::read_to_string(&c.node(i).log_path).unwrap_or_default();
        assert!(!log.contains("panicked"), "node {i}'s agent panicked:\n{}", c.agent_log(i, 40));
    }
    let w = c.write(0, &[(3, 300)]).await;
    for i in 0..3 {
        assert_eq!(c.read_at(i, &[1, 2, 3], w.lsn.unwrap()).await.values, [(1, 100), (2, 200), (3, 300)].into());
    }
    c.assert_converged().await;
}

/// The original's users post JSON with curl's default form Content-Type or none at all; the agent
/// reads the body as JSON whatever the header says, and answers in JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_is_read_whatever_the_content_type() {
    let c = Cluster::start(3).await;
    let types = [None, Some("text/plain"), Some("application/x-www-form-urlencoded")];
    for (i, content_type) in types.into_iter().enumerate() {
        let account = i as i64 + 1;
        let commit = format!(r#"{{"transaction": {{"write_set": {{"{account}": {account}0}}}}}}"#);
        let r = c.post_raw(0, "/commit/", commit, content_type).await;
        assert_eq!(r.status, StatusCode::OK, "commit with content-type {content_type:?}: {}", r.body);
        assert_eq!(r.json().unwrap()["commit"], "COMMIT", "{}", r.body);
        for node in 0..3 {
            let read = format!(r#"{{"transaction": {{"read_set": [{account}]}}}}"#);
            let r = c.post_raw(node, "/read/", read, content_type).await;
            assert_eq!(r.status, StatusCode::OK, "read with content-type {content_type:?}: {}", r.body);
            let body = r.json().unwrap_or_else(|| panic!("not JSON: {}", r.body));
            assert_eq!(body["values"], json!({account.to_string(): account * 10}), "node {node}");
        }
    }
    c.assert_converged().await;
}
