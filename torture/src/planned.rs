//! An operator's planned changes as faults: a switchover, and a member removed and added back,
//! sent to the supervisor's operator endpoints while clients commit and, in a `two_faults`,
//! while something else fails. What the supervisor answered is recorded, refusals included.
//!
//! This module is pure: it reads an answer (status code and JSON body) into an [`Outcome`],
//! decides whether that outcome is a fault of the system or a legitimate answer, whether the
//! add of the heal should be sent again, and sums the calls up for the report. The nemesis
//! sends the requests.
//!
//! The rules, and why:
//! - A 409 refusal is the supervisor doing its job (not in sync, no leader, below the floor):
//!   recorded, never an error. A 503 (a standby, the store unreachable, a switchover stored but
//!   not finished) likewise, since the supervisor says it will finish or another one acts.
//! - No answer, or an answer outside the API's (a 400, a 404, a 500), is an error when the
//!   planned change was made alone on a whole cluster; within a `two_faults` the other fault may
//!   have killed or cut off the supervisor, so it is only recorded.
//! - The heal's add is sent again until it is done (202) or the supervisor already knows the
//!   node (`already_known`: the removal was refused, or a supervisor without its state file
//!   came back with the node in its `--agents`), within [`ADD_BACK_WITHIN`]. A node left out
//!   would keep the cluster from ever being whole again.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One call's budget: a switchover may pause the leader (2 s), wait for the target (1 s),
/// fence (1 s) and promote (10 s) before it answers.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the heal keeps sending `POST /members/add` for a removed node: long enough for a
/// restarted agent to answer `/status` and for a standby to take the lease over.
pub const ADD_BACK_WITHIN: Duration = Duration::from_secs(60);
/// Between two sends of the heal's add.
pub const ADD_BACK_PAUSE: Duration = Duration::from_secs(1);

/// The operator's acts the nemesis makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Act {
    /// `POST /switchover {"to": node}`.
    Switchover,
    /// `POST /members/remove {"node": node}`.
    Remove,
    /// `POST /members/add {"node": node}`.
    Add,
}

impl Act {
    pub fn path(self) -> &'static str {
        match self {
            Act::Switchover => "/switchover",
            Act::Remove => "/members/remove",
            Act::Add => "/members/add",
        }
    }

    /// The request's body for the node at `address`.
    pub fn body(self, address: &str) -> Value {
        match self {
            Act::Switchover => serde_json::json!({ "to": address }),
            Act::Remove | Act::Add => serde_json::json!({ "node": address }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Act::Switchover => "switchover",
            Act::Remove => "members/remove",
            Act::Add => "members/add",
        }
    }
}

/// What came of one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// 200 or 202. A switchover says how long writes waited and the new term.
    Done {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        writes_paused_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        term: Option<i64>,
    },
    /// 409 with the refusal's code: nothing changed.
    Refused { code: String, message: String },
    /// 503: a standby, the store unavailable, or a change the supervisor finishes itself.
    Unavailable { code: String, message: String },
    /// No answer, or one outside the API's (status and the start of the body).
    Failed { error: String },
}

impl Outcome {
    /// An answer read: `status` and the body's text.
    pub fn of_answer(act: Act, status: u16, body: &str) -> Outcome {
        let json: Option<Value> = serde_json::from_str(body).ok();
        let field = |name: &str| json.as_ref().and_then(|j| j[name].as_str()).unwrap_or("").to_string();
        match status {
            200 | 202 => Outcome::Done {
                writes_paused_ms: (act == Act::Switchover)
                    .then(|| json.as_ref().and_then(|j| j["writes_paused_ms"].as_u64()))
                    .flatten(),
                term: (act == Act::Switchover).then(|| json.as_ref().and_then(|j| j["term"].as_i64())).flatten(),
            },
            409 if json.is_some() => Outcome::Refused { code: field("error"), message: field("message") },
            503 if json.is_some() => Outcome::Unavailable { code: field("error"), message: field("message") },
            _ => {
                let start: String = body.chars().take(200).collect();
                Outcome::Failed { error: format!("HTTP {status}: {start}") }
            }
        }
    }

    /// A request that got no answer.
    pub fn no_answer(error: impl std::fmt::Display) -> Outcome {
        Outcome::Failed { error: format!("no answer: {error}") }
    }

    /// The refusal's or the 503's code, if it is one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Outcome::Refused { code, .. } | Outcome::Unavailable { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether this outcome is a fault of the system rather than an answer it may give: only a
    /// failed call, and then only when nothing else was broken meanwhile (`alone`).
    pub fn is_error(&self, alone: bool) -> bool {
        matches!(self, Outcome::Failed { .. }) && alone
    }

    /// Whether the heal's add has brought the node back (or the supervisor knows it already and
    /// recovers it by itself).
    pub fn added_back(&self) -> bool {
        match self {
            Outcome::Done { .. } => true,
            Outcome::Refused { code, .. } => code == "already_known",
            _ => false,
        }
    }

    /// In words, for the fault's note.
    pub fn describe(&self) -> String {
        match self {
            Outcome::Done { writes_paused_ms: Some(ms), term: Some(t) } => {
                format!("done: term {t}, writes paused {ms} ms")
            }
            Outcome::Done { writes_paused_ms: Some(ms), term: None } => format!("done: writes paused {ms} ms"),
            Outcome::Done { .. } => "done".into(),
            Outcome::Refused { code, message } => format!("refused ({code}): {message}"),
            Outcome::Unavailable { code, message } => format!("503 ({code}): {message}"),
            Outcome::Failed { error } => format!("failed: {error}"),
        }
    }
}

/// One request the nemesis sent to the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call {
    pub act: Act,
    /// The node it named.
    pub node: usize,
    /// Nanoseconds since the run started, when it was sent and when it was answered.
    pub sent: u64,
    pub answered: u64,
    /// How many times it was sent (the heal's add may take several).
    #[serde(default = "one")]
    pub attempts: u32,
    #[serde(flatten)]
    pub outcome: Outcome,
}

fn one() -> u32 {
    1
}

impl Call {
    /// `switchover node1: done: term 4, writes paused 31 ms`.
    pub fn describe(&self) -> String {
        let tries = if self.attempts > 1 { format!(" (after {} sends)", self.attempts) } else { String::new() };
        format!("{} node{}: {}{tries}", self.act.name(), self.node, self.outcome.describe())
    }
}

/// The report's line for each act: how many were done and refused (by code), and for the
/// switchovers done, how long writes waited (median and longest).
pub fn summarize<'a>(calls: impl IntoIterator<Item = &'a Call>) -> BTreeMap<String, String> {
    let mut by_act: BTreeMap<Act, Vec<&Call>> = BTreeMap::new();
    for c in calls {
        by_act.entry(c.act).or_default().push(c);
    }
    by_act
        .into_iter()
        .map(|(act, calls)| {
            let done = calls.iter().filter(|c| matches!(c.outcome, Outcome::Done { .. })).count();
            let mut parts = vec![format!("{done} done")];
            let mut paused: Vec<u64> = calls
                .iter()
                .filter_map(|c| match c.outcome {
                    Outcome::Done { writes_paused_ms, .. } => writes_paused_ms,
                    _ => None,
                })
                .collect();
            if !paused.is_empty() {
                paused.sort_unstable();
                parts[0] += &format!(
                    " (writes paused: median {} ms, longest {} ms)",
                    paused[paused.len() / 2],
                    paused[paused.len() - 1]
                );
            }
            let mut codes: BTreeMap<String, usize> = BTreeMap::new();
            for c in &calls {
                match &c.outcome {
                    Outcome::Refused { code, .. } => *codes.entry(format!("refused {code}")).or_default() += 1,
                    Outcome::Unavailable { code, .. } => *codes.entry(format!("503 {code}")).or_default() += 1,
                    Outcome::Failed { .. } => *codes.entry("no answer or not the API's".into()).or_default() += 1,
                    Outcome::Done { .. } => {}
                }
            }
            parts.extend(codes.into_iter().map(|(code, n)| format!("{n} {code}")));
            (act.name().to_string(), parts.join(", "))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switchover_done_keeps_its_pause_and_term() {
        let body = r#"{"leader":"127.0.0.1:8001","term":5,"writes_paused_ms":31,"message":"..."}"#;
        assert_eq!(
            Outcome::of_answer(Act::Switchover, 200, body),
            Outcome::Done { writes_paused_ms: Some(31), term: Some(5) }
        );
        // A removal's answer is a configuration: its term is not a switchover's.
        let config = r#"{"term":5,"version":9,"leader":"a:1","members":["a:1","b:2"]}"#;
        assert_eq!(Outcome::of_answer(Act::Remove, 200, config), Outcome::Done { writes_paused_ms: None, term: None });
        assert_eq!(
            Outcome::of_answer(Act::Add, 202, r#"{"node":"c:3","state":"recovering","message":"m"}"#),
            Outcome::Done { writes_paused_ms: None, term: None }
        );
    }

    #[test]
    fn refusals_and_503s_are_answers_the_rest_is_a_failure() {
        let refused = Outcome::of_answer(Act::Switchover, 409, r#"{"error":"not_in_sync","message":"behind"}"#);
        assert_eq!(refused, Outcome::Refused { code: "not_in_sync".into(), message: "behind".into() });
        assert_eq!(refused.code(), Some("not_in_sync"));
        let standby = Outcome::of_answer(Act::Remove, 503, r#"{"error":"standby","message":"sup1 acts"}"#);
        assert_eq!(standby, Outcome::Unavailable { code: "standby".into(), message: "sup1 acts".into() });
        for (status, body) in [(404, r#"{"error":"not_found","message":"x"}"#), (500, "oops"), (409, "not json")] {
            let o = Outcome::of_answer(Act::Remove, status, body);
            assert!(matches!(o, Outcome::Failed { .. }), "{status} {body}: {o:?}");
        }
    }

    #[test]
    fn only_a_failed_call_on_an_otherwise_whole_cluster_is_an_error() {
        let failed = Outcome::no_answer("connection refused");
        assert!(failed.is_error(true));
        assert!(!failed.is_error(false), "a supervisor the other fault killed answers nothing");
        let refused = Outcome::Refused { code: "below_floor".into(), message: String::new() };
        assert!(!refused.is_error(true));
        let unavailable = Outcome::Unavailable { code: "store_unavailable".into(), message: String::new() };
        assert!(!unavailable.is_error(true));
    }

    #[test]
    fn the_add_is_sent_again_until_the_supervisor_knows_the_node() {
        assert!(Outcome::Done { writes_paused_ms: None, term: None }.added_back());
        assert!(Outcome::Refused { code: "already_known".into(), message: String::new() }.added_back());
        assert!(!Outcome::Refused { code: "unreachable".into(), message: String::new() }.added_back());
        assert!(!Outcome::Unavailable { code: "standby".into(), message: String::new() }.added_back());
        assert!(!Outcome::no_answer("timed out").added_back());
    }

    #[test]
    fn the_summary_counts_each_act_by_outcome() {
        let call = |act, outcome| Call { act, node: 1, sent: 0, answered: 0, attempts: 1, outcome };
        let done = |ms| Outcome::Done { writes_paused_ms: Some(ms), term: Some(3) };
        let refused = |code: &str| Outcome::Refused { code: code.into(), message: String::new() };
        let calls = vec![
            call(Act::Switchover, done(40)),
            call(Act::Switchover, done(10)),
            call(Act::Switchover, done(25)),
            call(Act::Switchover, refused("not_in_sync")),
            call(Act::Remove, refused("below_floor")),
            call(Act::Add, Outcome::Done { writes_paused_ms: None, term: None }),
        ];
        let s = summarize(&calls);
        assert_eq!(s["switchover"], "3 done (writes paused: median 25 ms, longest 40 ms), 1 refused not_in_sync");
        assert_eq!(s["members/remove"], "0 done, 1 refused below_floor");
        assert_eq!(s["members/add"], "1 done");
    }

    #[test]
    fn a_call_serializes_flat_and_reads_back() {
        let c = Call {
            act: Act::Switchover,
            node: 2,
            sent: 5,
            answered: 9,
            attempts: 1,
            outcome: Outcome::Done { writes_paused_ms: Some(12), term: Some(4) },
        };
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["outcome"], "done");
        assert_eq!(json["writes_paused_ms"], 12);
        assert_eq!(serde_json::from_value::<Call>(json).unwrap(), c);
        assert_eq!(c.describe(), "switchover node2: done: term 4, writes paused 12 ms");
    }
}
