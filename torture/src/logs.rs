//! A node's recovery log as its agent serves it: `GET /replication_log/?after=N&limit=M`, page
//! after page. Parsed loosely (as JSON, then into the checker's [`Entry`]) so that fields an agent
//! adds, such as `aborted` on the entry of an ABORTED transaction, are kept and others ignored.

use std::time::Duration;

use e2e::Cluster;
use protocol::Lsn;
use serde_json::Value;

use crate::checker::Entry;

/// Entries per page.
const PAGE: i64 = 1_000;
/// Timeout of one page.
const PAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// The entries of `node`'s log after `after`, up to the LSN the node had applied when the first
/// page was read (the log may grow meanwhile; the rest is left for later). When the node's log
/// no longer reaches `after` (410), the entries from its first one on.
pub async fn fetch(c: &Cluster, node: usize, after: Lsn) -> Result<Vec<Entry>, String> {
    let mut out: Vec<Entry> = Vec::new();
    let mut cursor = after;
    let mut cap: Option<Lsn> = None;
    loop {
        let path = format!("/replication_log/?after={cursor}&limit={PAGE}");
        let resp = c
            .http()
            .get(format!("{}{path}", c.url(node)))
            .timeout(PAGE_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("GET {path} on node {node}: {e}"))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| format!("GET {path} on node {node}: {e}"))?;
        // 410: the node's log no longer reaches `cursor` (`--retain-log`, or a node rebuilt
        // from a snapshot): what it still holds starts at its horizon.
        if status == reqwest::StatusCode::GONE {
            let horizon = serde_json::from_str::<Value>(&text).ok().and_then(|b| b["horizon"].as_i64());
            match horizon {
                Some(h) if out.is_empty() && h > cursor => {
                    cursor = h;
                    continue;
                }
                _ => return Err(format!("GET {path} on node {node}: the log was trimmed while it was read: {text}")),
            }
        }
        if !status.is_success() {
            return Err(format!(
                "GET {path} on node {node}: HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            ));
        }
        let (entries, applied, more) = parse_page(&text).map_err(|e| format!("GET {path} on node {node}: {e}"))?;
        let cap = *cap.get_or_insert(applied.unwrap_or(Lsn::MAX));
        let got = entries.len();
        for e in entries {
            if e.lsn > cap {
                return Ok(out);
            }
            cursor = e.lsn;
            out.push(e);
        }
        if !more || got == 0 {
            return Ok(out);
        }
    }
}

/// One page: its entries, the node's applied LSN, whether more follow.
fn parse_page(text: &str) -> Result<(Vec<Entry>, Option<Lsn>, bool), String> {
    let page: Value = serde_json::from_str(text).map_err(|e| format!("not JSON ({e})"))?;
    let entries: Vec<Entry> =
        serde_json::from_value(page["entries"].clone()).map_err(|e| format!("entries are not log entries ({e})"))?;
    Ok((entries, page["applied_lsn"].as_i64(), page["more"].as_bool().unwrap_or(false)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_keeps_the_abort_record_and_ignores_unknown_fields() {
        let text = r#"{"entries": [
            {"lsn": 1, "term": 1, "txn_id": "00000000-0000-0000-0000-000000000001", "commit_ts": 5,
             "read_set": [1], "write_set": {"1": 10, "2": 20}},
            {"lsn": 2, "term": 2, "txn_id": "00000000-0000-0000-0000-000000000002", "commit_ts": 6,
             "read_set": [], "write_set": {}, "aborted": {"reason": "stale_read", "key": 1, "message": "m"},
             "something_new": true}
        ], "applied_lsn": 2, "more": false}"#;
        let (entries, applied, more) = parse_page(text).unwrap();
        assert_eq!((applied, more), (Some(2), false));
        assert!(entries[0].is_commit());
        assert_eq!(entries[0].write_set.get(&2), Some(&20));
        assert!(!entries[1].is_commit());
        assert_eq!(entries[1].aborted.as_ref().unwrap()["reason"], "stale_read");
    }
}
