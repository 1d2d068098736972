//! The README's curl session, step by step, against a fresh three-node cluster: what a user types
//! and what they must see.

use e2e::{Cluster, ClusterOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn int(v: &Value, what: &str) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("{what} is not an integer: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_session() {
    let c = Cluster::start(3).await;
    let leader_address = c.node(0).address();

    // --- health: every node serves ---
    for i in 0..3 {
        assert_eq!(c.health(i).await, StatusCode::OK, "GET /health on node {i}");
    }

    // --- read of [1, 2] on a fresh cluster: nothing written yet ---
    let (status, fresh) = c.read_json(0, json!({"transaction": {"read_set": [1, 2], "write_set": {}}})).await;
    assert_eq!(status, StatusCode::OK, "{fresh}");
    assert_eq!(fresh["read_status"], "success", "{fresh}");
    assert_eq!(fresh["values"], json!({}), "accounts never written are absent: {fresh}");
    assert_eq!(fresh["data"], json!([]), "{fresh}");
    assert_eq!(fresh["lsn"], 0, "{fresh}");
    assert_eq!(fresh["node"], "node0", "{fresh}");
    assert_eq!(fresh["role"], "leader", "{fresh}");
    let fresh_ts = int(&fresh["timestamp"], "timestamp");
    assert!(fresh_ts >= 0, "{fresh}");

    // --- blind write of accounts 1 and 2 ---
    let (status, w1) = c.commit(0, json!({"transaction": {"write_set": {"1": 100, "2": 200}}})).await;
    assert_eq!(status, StatusCode::OK, "{w1}");
    assert_eq!(w1["commit"], "COMMIT", "{w1}");
    assert_eq!(w1["lsn"], 1, "the first commit is lsn 1: {w1}");
    let ts1 = int(&w1["commit_ts"], "commit_ts");
    assert!(ts1 > fresh_ts, "commit_ts {ts1} must exceed the earlier read timestamp {fresh_ts}");
    let txn1: uuid::Uuid =
        serde_json::from_value(w1["txn_id"].clone()).unwrap_or_else(|e| panic!("txn_id is not a UUID ({e}): {w1}"));

    // --- read back ---
    let (status, r1) = c.read_json(0, json!({"transaction": {"read_set": [1, 2], "write_set": {}}})).await;
    assert_eq!(status, StatusCode::OK, "{r1}");
    assert_eq!(r1["values"], json!({"1": 100, "2": 200}), "{r1}");
    assert_eq!(
        r1["data"],
        json!([
            {"account_number": 1, "balance": 100, "created_at": ts1, "updated_at": ts1},
            {"account_number": 2, "balance": 200, "created_at": ts1, "updated_at": ts1},
        ]),
        "{r1}"
    );
    assert_eq!(r1["lsn"], 1, "{r1}");
    let rts = int(&r1["timestamp"], "timestamp");
    assert!(rts >= ts1, "a read after a commit gets a timestamp >= its commit_ts: {rts} < {ts1}");

    // --- commit r(1) w(2=22) with the read's timestamp ---
    let (status, w2) =
        c.commit(0, json!({"transaction": {"read_set": [1], "write_set": {"2": 22}, "time_stamp": rts}})).await;
    assert_eq!(status, StatusCode::OK, "{w2}");
    assert_eq!(w2["commit"], "COMMIT", "{w2}");
    assert_eq!(w2["lsn"], 2, "{w2}");
    let ts2 = int(&w2["commit_ts"], "commit_ts");
    assert!(ts2 > rts, "commit_ts {ts2} must exceed every read timestamp handed out ({rts})");
    let txn2: uuid::Uuid = serde_json::from_value(w2["txn_id"].clone()).unwrap();
    assert_ne!(txn1, txn2);

    // The new value, read on every node right away (the leader answered only after every
    // member committed).
    for i in 0..3 {
        let r = c.read(i, &[1, 2]).await;
        assert_eq!(r.values, [(1, 100), (2, 22)].into(), "node {i}: {r:?}");
        assert_eq!(r.lsn, 2, "node {i}: {r:?}");
        assert_eq!(r.node, format!("node{i}"));
        let expected_role = if i == 0 { protocol::Role::Leader } else { protocol::Role::Replica };
        assert_eq!(r.role, expected_role, "node {i}");
        let row2 = r.data.iter().find(|row| row.account_number == 2).unwrap();
        assert_eq!((row2.created_at, row2.updated_at), (Some(ts1), Some(ts2)), "node {i}: {r:?}");
    }

    // --- a read at a past LSN, on a replica: the accounts right after LSN 1 ---
    let (status, past) =
        c.read_json(1, json!({"transaction": {"read_set": [1, 2], "write_set": {}}, "as_of_lsn": 1})).await;
    assert_eq!(status, StatusCode::OK, "{past}");
    assert_eq!((&past["values"], &past["lsn"]), (&json!({"1": 100, "2": 200}), &json!(1)), "{past}");
    assert_eq!(int(&past["timestamp"], "timestamp"), ts1, "{past}");

    // --- a commit sent to a replica: 421 and where the leader is ---
    for i in 1..3 {
        let (status, body) = c.commit(i, json!({"transaction": {"read_set": [], "write_set": {"3": 33}}})).await;
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "node {i}: {body}");
        assert_eq!(body["error"], "not_leader", "{body}");
        assert_eq!(body["leader"], leader_address.as_str(), "{body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    }
    for i in 0..3 {
        assert!(c.table(i).await.iter().all(|row| row.0 != 3), "node {i}: the refused commit wrote account 3");
        assert_eq!(c.log(i).await.len(), 2, "node {i}: the refused commit reached the log");
    }

    // --- status ---
    let members: Vec<String> = (0..3).map(|i| c.node(i).address()).collect();
    let mut terms = Vec::new();
    for i in 0..3 {
        let s = c.status(i).await;
        assert_eq!(s.node_id, format!("node{i}"));
        assert_eq!(s.address, c.node(i).address());
        let expected_role = if i == 0 { protocol::Role::Leader } else { protocol::Role::Replica };
        assert_eq!(s.role, expected_role, "node {i}: {s:?}");
        assert_eq!(s.leader.as_deref(), Some(leader_address.as_str()), "node {i}: {s:?}");
        assert_eq!(s.applied_lsn, 2, "node {i}: {s:?}");
        assert_eq!(s.last_commit_ts, ts2, "node {i}: {s:?}");
        assert_eq!(s.members, members, "node {i}: {s:?}");
        assert_eq!(s.prepared_batch, None, "node {i}: nothing is in flight: {s:?}");
        terms.push(s.term);
    }
    assert!(terms.iter().all(|&t| t == terms[0]), "every node is in one term: {terms:?}");

    // --- the replication log, paged ---
    for i in 0..3 {
        let all = c.replication_log(i, 0, None).await;
        assert_eq!(all.applied_lsn, 2, "node {i}: {all:?}");
        assert!(!all.more, "node {i}: {all:?}");
        assert_eq!(all.entries.len(), 2, "node {i}: {all:?}");
        let (e1, e2) = (&all.entries[0], &all.entries[1]);
        assert_eq!((e1.lsn, e1.txn_id, e1.commit_ts), (1, txn1, ts1));
        assert_eq!(e1.read_set, Vec::<i64>::new());
        assert_eq!(e1.write_set, [(1, 100), (2, 200)].into());
        assert_eq!((e2.lsn, e2.txn_id, e2.commit_ts), (2, txn2, ts2));
        assert_eq!(e2.read_set, vec![1]);
        assert_eq!(e2.write_set, [(2, 22)].into());

        let first = c.replication_log(i, 0, Some(1)).await;
        assert_eq!(first.entries, vec![e1.clone()], "node {i}: after=0&limit=1");
        assert!(first.more, "node {i}: after=0&limit=1 leaves lsn 2: {first:?}");
        let second = c.replication_log(i, 1, Some(1)).await;
        assert_eq!(second.entries, vec![e2.clone()], "node {i}: after=1&limit=1");
        assert!(!second.more, "node {i}: after=1&limit=1 is the end: {second:?}");
        let past_end = c.replication_log(i, 2, None).await;
        assert!(past_end.entries.is_empty() && !past_end.more, "node {i}: {past_end:?}");
        assert_eq!(past_end.applied_lsn, 2);
    }

    // The same log in every node's PostgreSQL.
    let converged = c.assert_converged().await;
    assert_eq!(converged.log.len(), 2);
    assert_eq!(converged.table, vec![(1, 100, Some(ts1), Some(ts1)), (2, 22, Some(ts1), Some(ts2))]);
}

/// The `sh` blocks of the README's "Try it with curl" section, each with the output block
/// that follows it (what the README says the user sees).
fn readme_curl_blocks() -> Vec<(Vec<String>, String)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let start = readme.find("\n## Try it with curl\n").expect("the README has a section \"Try it with curl\"");
    let section = &readme[start + 1..];
    let section = &section[..section[1..].find("\n## ").map_or(section.len(), |end| end + 1)];
    let mut blocks: Vec<(Vec<String>, String)> = Vec::new();
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        let Some(kind) = line.strip_prefix("```") else { continue };
        let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
        if kind == "sh" {
            blocks.push((body.iter().map(|l| l.to_string()).collect(), String::new()));
        } else if let Some(last) = blocks.last_mut() {
            last.1.push_str(&body.join("\n"));
        }
    }
    blocks
}

/// What the README promises in an output block, as substrings the real output must hold:
/// the status line, the outcome and reason, roles, nodes, values, LSNs and metric lines. The
/// ids and timestamps differ from run to run, so they are left out.
fn promises(expected: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in expected.lines() {
        if let Some(rest) = line.strip_prefix("HTTP/1.1 ") {
            found.push(format!("HTTP/1.1 {}", &rest[..3]));
        }
        if line.starts_with("rmw_") {
            found.push(line.to_string());
        }
    }
    for key in ["commit", "reason", "error", "role", "read_status", "status", "node", "node_id", "leader"] {
        let pattern = format!("\"{key}\":\"");
        for (at, _) in expected.match_indices(&pattern) {
            let value = &expected[at + pattern.len()..];
            found.push(format!("{pattern}{}\"", &value[..value.find('"').unwrap_or(value.len())]));
        }
    }
    for key in ["lsn", "applied_lsn", "term", "key", "more"] {
        let pattern = format!("\"{key}\":");
        for (at, _) in expected.match_indices(&pattern) {
            let value: String =
                expected[at + pattern.len()..].chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
            found.push(format!("{pattern}{value}"));
        }
    }
    for (at, _) in expected.match_indices("\"values\":{") {
        let object = &expected[at..];
        found.push(object[..=object.find('}').unwrap_or(object.len() - 1)].to_string());
    }
    found.sort();
    found.dedup();
    found
}

#[test]
fn promises_are_read_from_the_readme_outputs() {
    let expected = "HTTP/1.1 409 Conflict\n\n{\"commit\":\"ABORT\",\"txn_id\":\"x\",\"reason\":\"stale_read\",\"key\":1,\n\"values\":{\"1\":10},\"lsn\":2}\nrmw_applied_lsn 5";
    assert_eq!(
        promises(expected),
        [
            "\"commit\":\"ABORT\"",
            "\"key\":1",
            "\"lsn\":2",
            "\"reason\":\"stale_read\"",
            "\"values\":{\"1\":10}",
            "HTTP/1.1 409",
            "rmw_applied_lsn 5"
        ]
    );
}

/// The README's curl lines, pasted one by one into one shell as its reader would (the `TS` and
/// `ID` variables carry over), against a fresh supervised cluster with a cluster token: only the
/// addresses are changed (the cluster runs on free ports) and `data/cluster-token` is the
/// cluster's token. Every line must succeed and print what the README shows after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_curl_lines_as_pasted() {
    let blocks = readme_curl_blocks();
    assert!(blocks.len() >= 8, "the README's curl section has {} sh blocks", blocks.len());
    let work = std::env::temp_dir().join(format!("rmw-readme-curl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("data")).expect("make the shell's folder");
    let token = work.join("data/cluster-token");
    std::fs::write(&token, "readme-curl-token-5b1e").expect("write the token");
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(work.clone());

    let mut options = ClusterOptions::supervised(3);
    let token_arg = token.display().to_string();
    options.agent_args.extend(["--cluster-token-file".to_string(), token_arg.clone()]);
    options.supervisor_args.extend(["--cluster-token-file".to_string(), token_arg]);
    let c = Cluster::start_with(options).await;
    let addresses: Vec<(String, String)> = (0..3)
        .map(|i| (format!("127.0.0.1:{}", 8000 + i), c.node(i).address()))
        .chain([("127.0.0.1:9000".to_string(), c.supervisor_address())])
        .collect();
    let here = |text: &str| addresses.iter().fold(text.to_string(), |t, (from, to)| t.replace(from, to));

    let mut script = String::from("exec 2>&1\n");
    for (b, (lines, _)) in blocks.iter().enumerate() {
        for (l, line) in lines.iter().enumerate() {
            script.push_str(&format!(
                "printf '\\n@@start {b} {l}\\n'\n{}\nprintf '\\n@@rc {b} {l} %s\\n' \"$?\"\n",
                here(line)
            ));
        }
    }
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        tokio::process::Command::new("bash").arg("-c").arg(&script).current_dir(&work).output(),
    )
    .await
    .expect("the README's lines finish within 120 s")
    .expect("run bash");
    let text = String::from_utf8_lossy(&output.stdout).to_string();

    for (b, (lines, expected)) in blocks.iter().enumerate() {
        let mut printed = String::new();
        for (l, line) in lines.iter().enumerate() {
            let start = format!("@@start {b} {l}\n");
            let from = text.find(&start).unwrap_or_else(|| panic!("`{line}` did not run:\n{text}")) + start.len();
            let rest = &text[from..];
            let end = rest.find(&format!("\n@@rc {b} {l} ")).unwrap_or_else(|| panic!("`{line}` did not end:\n{text}"));
            let rc: String =
                rest[end..].lines().nth(1).unwrap_or_default().rsplit(' ').next().unwrap_or_default().into();
            assert_eq!(rc, "0", "`{line}` failed (exit status {rc}):\n{}", &rest[..end]);
            printed.push_str(&rest[..end]);
            printed.push('\n');
        }
        for promise in promises(&here(expected)) {
            assert!(
                printed.contains(&promise),
                "the README promises `{promise}` after\n{}\nbut the lines printed:\n{printed}",
                lines.join("\n")
            );
        }
    }
}
