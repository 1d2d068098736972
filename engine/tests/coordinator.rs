//! Scenario tests of the coordinator state machine: goldenscripts in
//! `tests/scripts/coordinator/`. A leader `n1` with replicas (`n2`, `n3` by default) is fed
//! transactions, votes, reports, acknowledgements and its own results; every effect it asks
//! for is printed.
//!
//! `UPDATE_GOLDENFILES=1 cargo test -p engine --test coordinator` rewrites the expectations.
//!
//! Commands:
//! - `leader [term=T] [members=n2,n3] [min=C] [depth=D] [applied=L]`: a new leader.
//! - `commit xX [rA]... [wA=V]... [rts=T] [copies=C]`: transaction `xX` arrives, reading the
//!   accounts `rA` at `rts` and writing `wA=V`.
//! - `round [gone=N]`: starts a round if one can start.
//! - `vote R [here=yes|no] [NODE=yes|no|behind|ahead|stale|unreachable]...`: votes on round R.
//! - `report R NODE removed|kept`: the supervisor's answer to a report.
//! - `ack R NODE=ack|removed|gaveup|stale...`: how delivering round R's decision ended.
//! - `here R landed|lost`: this node's own decision on round R.
//! - `pause until=MS`, `resume`, `depose`, `status`.

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt::Write as _;

use engine::batch::RoundId;
use engine::coordinator::{AckResult, Admission, Coordinator, Effect, Txn, VoteResult};
use engine::validation::Validator;
use goldenscript::{Command, Runner};
use uuid::Uuid;

mod common;

#[test]
fn scenarios() {
    common::run_scripts("coordinator", Scenario::default);
}

#[derive(Default)]
struct Scenario {
    leader: Option<Coordinator<u128>>,
    term: i64,
    now: i64,
    replicas: Vec<String>,
    /// Where n1's own log ends: moved by its own COMMITs.
    applied: i64,
    /// Rounds whose COMMIT this node was asked to apply, with their last LSN.
    committing_here: BTreeMap<u64, i64>,
}

fn txn(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn show(
    effects: Vec<Effect<u128>>,
    out: &mut String,
    committing_here: &mut BTreeMap<u64, i64>,
) -> Result<(), Box<dyn Error>> {
    for effect in effects {
        if let Effect::DecideHere { round, request } = &effect {
            if request.decision == protocol::Decision::Commit {
                committing_here.insert(round.round, request.last_lsn);
            }
        }
        match effect {
            Effect::Prepare { round, request, replicas } => writeln!(
                out,
                "prepare r{} lsn {}..={} on n1 {} [{}]",
                round.round,
                request.prev_lsn + 1,
                request.prev_lsn + request.entries.len() as i64,
                replicas.join(" "),
                request
                    .entries
                    .iter()
                    .map(|e| format!(
                        "x{}{}",
                        e.txn_id.as_u128(),
                        if e.aborted.is_some() { "(abort record)" } else { "" }
                    ))
                    .collect::<Vec<_>>()
                    .join(" ")
            )?,
            Effect::Report { round, peer, kind, answer, .. } => writeln!(
                out,
                "report r{} {peer} {kind:?}{}",
                round.round,
                if answer { " (awaits the answer)" } else { "" }
            )?,
            Effect::Decide { round, peer, request, give_up } => writeln!(
                out,
                "decide r{} {:?} to {peer}{}",
                round.round,
                request.decision,
                if give_up { " (gives up after a while)" } else { "" }
            )?,
            Effect::DecideHere { round, request } => {
                writeln!(out, "decide r{} {:?} here", round.round, request.decision)?
            }
            Effect::Answer { txn_id, outcome, waiters } => {
                writeln!(out, "answer x{} ({} waiting): {outcome:?}", txn_id.as_u128(), waiters.len())?
            }
            Effect::SteppedDown { reason } => writeln!(out, "stepped down: {reason}")?,
        }
    }
    Ok(())
}

impl Scenario {
    fn leader(&mut self) -> Result<&mut Coordinator<u128>, Box<dyn Error>> {
        self.leader.as_mut().ok_or_else(|| "no leader".into())
    }

    fn round(&self, arg: &str) -> Result<RoundId, Box<dyn Error>> {
        Ok(RoundId { term: self.term, round: arg.trim_start_matches('r').parse()? })
    }
}

impl Runner for Scenario {
    fn run(&mut self, command: &Command) -> Result<String, Box<dyn Error>> {
        let mut out = String::new();
        let mut pos: Vec<String> = Vec::new();
        let mut keys: BTreeMap<String, String> = BTreeMap::new();
        for arg in &command.args {
            match &arg.key {
                Some(k) => {
                    keys.insert(k.clone(), arg.value.clone());
                }
                None => pos.push(arg.value.clone()),
            }
        }
        let num = |k: &str, d: i64| -> Result<i64, Box<dyn Error>> { keys.get(k).map_or(Ok(d), |v| Ok(v.parse()?)) };
        match command.name.as_str() {
            "leader" => {
                self.term = num("term", 2)?;
                let replicas = keys.get("members").map_or("n2,n3", String::as_str);
                let validator = Validator::new(Default::default(), 0);
                let depth = num("depth", 1)? as usize;
                let applied = num("applied", 10)?;
                self.applied = applied;
                self.leader = Some(Coordinator::new(
                    self.term,
                    "n1".into(),
                    num("min", 2)? as usize,
                    depth,
                    validator,
                    applied,
                    0,
                ));
                self.replicas = replicas.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect();
                writeln!(out, "n1 leads term {} with {replicas}, depth {depth}", self.term)?;
            }
            "commit" => {
                let id: u128 = pos.first().ok_or("commit which?")?.trim_start_matches('x').parse()?;
                let mut read_set = std::collections::BTreeSet::new();
                for r in pos.iter().skip(1) {
                    read_set.insert(r.trim_start_matches('r').parse()?);
                }
                let mut write_set = BTreeMap::new();
                for (k, v) in keys.iter().filter(|(k, _)| k.starts_with('w')) {
                    write_set.insert(k.trim_start_matches('w').parse()?, v.parse()?);
                }
                let t = Txn {
                    txn_id: txn(id),
                    read_set,
                    write_set,
                    read_ts: keys.get("rts").map(|v| v.parse()).transpose()?,
                    min_copies: num("copies", 0)? as usize,
                };
                self.now += 100;
                let now = self.now;
                let admission = self.leader()?.admit(t, now, id);
                if admission != Admission::Waiting {
                    writeln!(out, "x{id}: {admission:?}")?;
                }
            }
            "round" => {
                let replicas: Vec<String> = match keys.get("members") {
                    Some(m) => m.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect(),
                    None => self.replicas.clone(),
                };
                let applied = num("applied", self.applied)?;
                let gone = num("gone", 0)? as usize;
                // `read_at=`: the hold epoch when the members were read (default: now).
                let read_at = match keys.get("read_at") {
                    Some(v) => v.parse()?,
                    None => self.leader()?.hold_epoch(),
                };
                let effects = self.leader()?.start_round(0, applied, replicas, read_at, gone, None);
                if effects.is_empty() {
                    writeln!(out, "no round")?;
                }
                show(effects, &mut out, &mut self.committing_here)?;
            }
            "vote" => {
                let round = self.round(pos.first().ok_or("vote on which round?")?)?;
                for (node, vote) in &keys {
                    let effects = if node == "here" {
                        let result = if vote == "yes" { Ok(()) } else { Err("the leader voted NO".into()) };
                        self.leader()?.voted_here(round, result)
                    } else {
                        let result = match vote.as_str() {
                            "yes" => VoteResult::Yes,
                            "no" | "behind" => VoteResult::No { applied_lsn: 0, reason: "out of order".into() },
                            "ahead" => VoteResult::No { applied_lsn: 1_000, reason: "out of order".into() },
                            "stale" => VoteResult::Stale(self.term + 1),
                            "unreachable" => VoteResult::Unreachable("timed out".into()),
                            other => return Err(format!("vote {other}?").into()),
                        };
                        self.leader()?.voted(round, node, result)
                    };
                    show(effects, &mut out, &mut self.committing_here)?;
                }
            }
            "report" => {
                let round = self.round(&pos[0])?;
                let removed = pos.get(2).map(String::as_str) == Some("removed");
                let effects = self.leader()?.reported(round, &pos[1], format!("{} does not answer", pos[1]), removed);
                show(effects, &mut out, &mut self.committing_here)?;
            }
            "ack" => {
                let round = self.round(pos.first().ok_or("ack which round?")?)?;
                for (node, ack) in &keys {
                    let result = match ack.as_str() {
                        "ack" => AckResult::Acknowledged,
                        "removed" => AckResult::Removed,
                        "gaveup" => AckResult::GaveUp,
                        "stale" => AckResult::Stale,
                        other => return Err(format!("ack {other}?").into()),
                    };
                    let effects = self.leader()?.acked(round, node, result);
                    show(effects, &mut out, &mut self.committing_here)?;
                }
            }
            "here" => {
                let round = self.round(&pos[0])?;
                let landed = pos.get(1).map(String::as_str) == Some("landed");
                if let Some(lsn) = self.committing_here.remove(&round.round).filter(|_| landed) {
                    self.applied = self.applied.max(lsn);
                }
                let effects = self.leader()?.decided_here(round, landed);
                show(effects, &mut out, &mut self.committing_here)?;
            }
            "pause" => {
                let until = num("until", 0)? as u64;
                self.leader()?.pause(until);
            }
            "resume" => {
                self.leader()?.resume();
            }
            "hold" => {
                self.leader()?.hold();
                writeln!(out, "hold epoch {}", self.leader()?.hold_epoch())?;
            }
            "release" => {
                self.leader()?.release();
            }
            "depose" => {
                let effects = self.leader()?.depose();
                show(effects, &mut out, &mut self.committing_here)?;
            }
            "status" => {}
            other => return Err(format!("unknown command {other}").into()),
        }
        if matches!(command.name.as_str(), "status" | "pause" | "resume") {
            let l = self.leader()?;
            writeln!(
                out,
                "life={:?} queued={} rounds={} durable_lsn={}",
                l.life(),
                l.queued(),
                l.rounds_in_flight(),
                l.durable_lsn()
            )?;
        }
        Ok(out)
    }
}
