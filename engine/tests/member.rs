//! Scenario tests of the member state machine: goldenscripts in `tests/scripts/member/`, in the manner
//! of toydb's. Each script drives members `n1`, `n2`, `n3` (and their modelled PostgreSQL)
//! through PREPAREs, decisions, crashes, fences and recoveries; every step a member asks for
//! and every answer is printed and compared with the expectation stored in the script.
//!
//! `UPDATE_GOLDENFILES=1 cargo test -p engine --test member` rewrites the expectations;
//! read the diff before committing it.
//!
//! Commands (`N` is a member name; numbers are LSNs, terms and rounds):
//! - `member N [term=T] [leader=N] [members=N,N] [applied=L]`: a fresh member.
//! - `prepare N... term=T round=R prev=P last=L [txn=X] [leader=N] [hold] [fail|lost]`
//! - `decide N... term=T last=L [txn=X] commit|abort [hold] [fail|lost]`
//! - `complete N [fail|lost]`: finishes the operation a `hold` left in flight.
//! - `state N... last=L [txn=X] term=T`: where each member stands on a batch.
//! - `fence N... term=T [leader=N] [version=V] [members=N,N]`
//! - `crash N`: the process restarts from its PostgreSQL (prepared batches survive).
//! - `resolve N term=T`: N, newly elected, resolves every in-doubt batch among the members.
//! - `recover N from=M term=T`: N catches up from M's log (M's PostgreSQL is the leader's).
//! - `promote N`: N starts leading the term its configuration names it leader of.
//! - `status N...`
//!
//! `fail` makes the PostgreSQL call fail without effect; `lost` lets it take effect and loses the
//! answer (the member then re-reads PostgreSQL before acting again).

use std::collections::{BTreeMap, VecDeque};
use std::error::Error;
use std::fmt::Write as _;

use engine::batch::{Batch, LogEnd, PreparedHere, RoundId};
use engine::member::{chain, DecideAnswer, Member, Op, PrepareArgs, Step};
use engine::resolution::{resolve_in_order, Resolution};
use goldenscript::{Command, Runner};
use protocol::{BatchState, ClusterConfig, Decision, Lsn, PendingInfo, Term};
use uuid::Uuid;

mod common;

#[test]
fn scenarios() {
    common::run_scripts("member", Scenario::default);
}

/// What a member's PostgreSQL holds.
#[derive(Default, Clone)]
struct Pg {
    applied: LogEnd,
    /// The log: LSN -> (term, txn).
    log: BTreeMap<Lsn, (Term, Uuid)>,
    prepared: Vec<Batch>,
    config: Option<ClusterConfig>,
    cluster_id: Option<Uuid>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// The call fails and changes nothing.
    Fail,
    /// The call takes effect and its answer is lost.
    Lost,
}

/// A request a `hold` left with an operation in flight.
enum Request {
    Prepare(PrepareArgs),
    Decide(Term, Lsn, Uuid, Decision),
}

struct Held {
    request: Request,
    op: Op,
}

#[derive(Default)]
struct Scenario {
    members: BTreeMap<String, Member>,
    pg: BTreeMap<String, Pg>,
    held: BTreeMap<String, VecDeque<Held>>,
}

fn txn(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

/// A batch as scripts show it: `last_lsn@term`.
fn show(batch: &Batch) -> String {
    format!("{}@{}", batch.last_lsn, batch.id.term)
}

impl Pg {
    /// Carries out `op`; returns the answer the member would get.
    fn run(&mut self, op: &Op, entries: &[(Lsn, Uuid)], fault: Fault) -> Result<(), String> {
        if fault == Fault::Fail {
            return Err("connection reset".into());
        }
        match op {
            Op::Prepare { batch, adopt } => {
                let _ = entries;
                self.prepared.push(Batch { detail: None, ..batch.clone() });
                if let Some(id) = adopt {
                    self.cluster_id.get_or_insert(*id);
                }
            }
            Op::Commit(batch) => {
                self.prepared.retain(|b| !b.same(batch.last_lsn, batch.last_txn));
                for lsn in self.applied.lsn + 1..=batch.last_lsn {
                    let id = if lsn == batch.last_lsn { batch.last_txn } else { txn(lsn as u128 * 1000) };
                    self.log.insert(lsn, (batch.id.term, id));
                }
                self.applied = LogEnd { lsn: batch.last_lsn, commit_ts: batch.last_lsn * 10, term: batch.id.term };
            }
            Op::RollBack(batches) => {
                self.prepared.retain(|p| !batches.iter().any(|b| p.same(b.last_lsn, b.last_txn)));
            }
            Op::CheckLog(_) => {}
        }
        if fault == Fault::Lost {
            return Err("the answer was lost".into());
        }
        Ok(())
    }

    fn holds(&self, batch: &Batch) -> bool {
        self.log.get(&batch.last_lsn) == Some(&(batch.id.term, batch.last_txn))
    }
}

impl Scenario {
    fn member(&mut self, name: &str) -> Result<&mut Member, Box<dyn Error>> {
        self.members.get_mut(name).ok_or_else(|| format!("no member {name}").into())
    }

    /// Steps one request until it is answered, waits, or is held with an operation in flight.
    fn drive(
        &mut self,
        name: &str,
        request: Request,
        hold: bool,
        fault: Fault,
        out: &mut String,
    ) -> Result<(), Box<dyn Error>> {
        let mut hold = hold;
        for _ in 0..20 {
            let step = match &request {
                Request::Prepare(args) => self.member(name)?.prepare(args).map(|a| format!("{a:?}")),
                Request::Decide(term, lsn, id, d) => {
                    self.member(name)?.decide(*term, *lsn, *id, *d).map(|a| format!("{a:?}"))
                }
            };
            match step {
                Step::Answer(answer) => {
                    writeln!(out, "{name}: {answer}")?;
                    return Ok(());
                }
                Step::Wait(why) => {
                    writeln!(out, "{name}: wait ({why})")?;
                    return Ok(());
                }
                Step::Persist(config) => {
                    writeln!(
                        out,
                        "{name}: persist term={} leader={}",
                        config.term,
                        config.leader.as_deref().unwrap_or("-")
                    )?;
                    self.persist(name, &config)?;
                }
                Step::Reconcile => self.reconcile(name, out)?,
                Step::Run(op) => {
                    writeln!(out, "{name}: run {}", show_op(&op))?;
                    if hold {
                        self.held.entry(name.to_string()).or_default().push_back(Held { request, op });
                        writeln!(out, "{name}: (in flight)")?;
                        return Ok(());
                    }
                    if let Some(answer) = self.finish(name, &op, fault, out)? {
                        writeln!(out, "{name}: {answer}")?;
                        return Ok(());
                    }
                    hold = false;
                }
            }
        }
        Err("a request stepped 20 times without an answer".into())
    }

    /// Feeds an operation's result; `Some(answer)` when that ends the request.
    fn finish(
        &mut self,
        name: &str,
        op: &Op,
        fault: Fault,
        out: &mut String,
    ) -> Result<Option<String>, Box<dyn Error>> {
        let pg = self.pg.get_mut(name).ok_or("no pg")?;
        let result = pg.run(op, &[], fault);
        let end = pg.applied;
        let member = self.members.get_mut(name).ok_or("no member")?;
        Ok(match op {
            Op::Prepare { batch, adopt } => Some(format!("{:?}", member.prepared(batch, result.map(|()| *adopt)))),
            Op::Commit(batch) => {
                // The runtime asks the log before it believes a failed COMMIT PREPARED.
                let landed = self.pg[name].holds(batch);
                let result = match result {
                    Err(_) if landed => Ok(end),
                    Err(e) => Err(e),
                    Ok(()) => Ok(end),
                };
                let answer = self.member(name)?.committed(batch, result);
                if answer != DecideAnswer::Done {
                    writeln!(out, "{name}: {answer:?}")?;
                    return Ok(Some(format!("{answer:?}")));
                }
                Some(format!("{answer:?} applied={}", self.member(name)?.applied().lsn))
            }
            Op::RollBack(batches) => {
                member.rolled_back(batches, result.is_ok());
                None
            }
            Op::CheckLog(_) => None,
        })
    }

    fn persist(&mut self, name: &str, config: &ClusterConfig) -> Result<(), Box<dyn Error>> {
        let pg = self.pg.get_mut(name).ok_or("no pg")?;
        if pg.config.as_ref().is_none_or(|c| !c.is_newer_than(config)) {
            pg.config = Some(config.clone());
        }
        self.member(name)?.adopted(config);
        Ok(())
    }

    fn reconcile(&mut self, name: &str, out: &mut String) -> Result<(), Box<dyn Error>> {
        let pg = self.pg.get_mut(name).ok_or("no pg")?;
        let (keep, stale) = chain(pg.applied.lsn, pg.prepared.clone());
        pg.prepared.retain(|p| !stale.contains(p));
        let applied = pg.applied;
        writeln!(
            out,
            "{name}: reconcile applied={} prepared=[{}] rolled back=[{}]",
            applied.lsn,
            keep.iter().map(show).collect::<Vec<_>>().join(" "),
            stale.iter().map(show).collect::<Vec<_>>().join(" ")
        )?;
        self.member(name)?.reconciled(applied, keep);
        Ok(())
    }

    fn batch_state(
        &mut self,
        name: &str,
        info: &PendingInfo,
        out: &mut String,
    ) -> Result<Option<BatchState>, Box<dyn Error>> {
        for _ in 0..5 {
            match self.member(name)?.batch_state(info) {
                Step::Answer(state) => return Ok(Some(state)),
                Step::Run(Op::CheckLog(batch)) => {
                    let held = self.pg[name].holds(&batch);
                    return Ok(Some(if held { BatchState::Committed } else { BatchState::Absent }));
                }
                Step::Reconcile => self.reconcile(name, out)?,
                Step::Wait(why) => {
                    writeln!(out, "{name}: wait ({why})")?;
                    return Ok(None);
                }
                other => return Err(format!("unexpected {other:?}").into()),
            }
        }
        Err("batch_state did not settle".into())
    }

    fn status(&self, name: &str) -> Result<String, Box<dyn Error>> {
        let m = self.members.get(name).ok_or("no member")?;
        let slots: Vec<String> = m.slots().map(|s| format!("{}({})", slot_kind(s), show(s.batch()))).collect();
        Ok(format!(
            "{name}: term={} leader={} applied={} slots=[{}] mode={:?} role={:?}",
            m.term(),
            m.term_leader().unwrap_or("-"),
            m.applied().lsn,
            slots.join(" "),
            m.mode(),
            m.role()
        ))
    }
}

fn slot_kind(slot: &engine::member::Slot) -> &'static str {
    match slot {
        engine::member::Slot::Preparing(_) => "preparing",
        engine::member::Slot::Prepared(_) => "prepared",
        engine::member::Slot::Deciding(_, Decision::Commit) => "committing",
        engine::member::Slot::Deciding(_, Decision::Abort) => "rolling-back",
    }
}

fn show_op(op: &Op) -> String {
    match op {
        Op::Prepare { batch, adopt } => {
            format!("prepare {}{}", show(batch), if adopt.is_some() { " (takes the cluster id)" } else { "" })
        }
        Op::Commit(batch) => format!("commit {}", show(batch)),
        Op::RollBack(batches) => format!("rollback {}", batches.iter().map(show).collect::<Vec<_>>().join(" ")),
        Op::CheckLog(batch) => format!("check log {}", show(batch)),
    }
}

/// A parsed command: its positional names and flags, its key=value arguments.
struct Args {
    names: Vec<String>,
    flags: Vec<String>,
    keys: BTreeMap<String, String>,
}

impl Args {
    fn of(command: &Command, flags: &[&str]) -> Args {
        let mut args = Args { names: Vec::new(), flags: Vec::new(), keys: BTreeMap::new() };
        for arg in &command.args {
            match &arg.key {
                Some(key) => {
                    args.keys.insert(key.clone(), arg.value.clone());
                }
                None if flags.contains(&arg.value.as_str()) => args.flags.push(arg.value.clone()),
                None => args.names.push(arg.value.clone()),
            }
        }
        args
    }

    fn num(&self, key: &str) -> Result<i64, Box<dyn Error>> {
        Ok(self.keys.get(key).ok_or_else(|| format!("missing {key}="))?.parse()?)
    }

    fn num_or(&self, key: &str, default: i64) -> Result<i64, Box<dyn Error>> {
        self.keys.get(key).map_or(Ok(default), |v| Ok(v.parse()?))
    }

    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    fn fault(&self) -> Fault {
        if self.has("fail") {
            Fault::Fail
        } else if self.has("lost") {
            Fault::Lost
        } else {
            Fault::None
        }
    }

    fn members(&self) -> Vec<String> {
        self.keys
            .get("members")
            .map_or_else(|| vec!["n1".into(), "n2".into(), "n3".into()], |m| m.split(',').map(str::to_string).collect())
    }
}

impl Runner for Scenario {
    fn run(&mut self, command: &Command) -> Result<String, Box<dyn Error>> {
        let mut out = String::new();
        let flags = ["hold", "fail", "lost", "commit", "abort"];
        let args = Args::of(command, &flags);
        match command.name.as_str() {
            "member" => {
                for name in &args.names {
                    let term = args.num_or("term", 1)?;
                    let config = ClusterConfig {
                        term,
                        version: 1,
                        leader: Some(args.keys.get("leader").cloned().unwrap_or_else(|| "n1".into())),
                        members: args.members(),
                    };
                    let applied = args.num_or("applied", 0)?;
                    let mut pg = Pg { config: Some(config.clone()), ..Pg::default() };
                    for lsn in 1..=applied {
                        pg.log.insert(lsn, (term, txn(lsn as u128 * 1000)));
                    }
                    pg.applied =
                        LogEnd { lsn: applied, commit_ts: applied * 10, term: if applied > 0 { term } else { 0 } };
                    let member = Member::restore(name.clone(), config, pg.applied, Vec::new(), None);
                    self.pg.insert(name.clone(), pg);
                    self.members.insert(name.clone(), member);
                    writeln!(out, "{}", self.status(name)?)?;
                }
            }
            "prepare" => {
                let last = args.num("last")?;
                let id = RoundId { term: args.num("term")?, round: args.num("round")? as u64 };
                let last_txn = txn(args.num_or("txn", last)? as u128);
                let prev = args.num("prev")?;
                let req = PrepareArgs {
                    id,
                    prev_lsn: prev,
                    last_lsn: last,
                    last_txn,
                    leader: Some(args.keys.get("leader").cloned().unwrap_or_else(|| "n1".into())),
                    cluster_id: None,
                    detail: Some(PreparedHere {
                        last_commit_ts: last * 10,
                        txns: (prev + 1..=last).map(|l| (l, txn(l as u128))).collect(),
                    }),
                };
                for name in &args.names {
                    self.drive(name, Request::Prepare(req.clone()), args.has("hold"), args.fault(), &mut out)?;
                }
            }
            "decide" => {
                let last = args.num("last")?;
                let decision = if args.has("commit") { Decision::Commit } else { Decision::Abort };
                let last_txn = txn(args.num_or("txn", last)? as u128);
                for name in &args.names {
                    let request = Request::Decide(args.num("term")?, last, last_txn, decision);
                    self.drive(name, request, args.has("hold"), args.fault(), &mut out)?;
                }
            }
            "complete" => {
                for name in &args.names {
                    let held = self.held.get_mut(name).and_then(VecDeque::pop_front).ok_or("nothing in flight")?;
                    match self.finish(name, &held.op, args.fault(), &mut out)? {
                        Some(answer) => writeln!(out, "{name}: {answer}")?,
                        None => self.drive(name, held.request, false, Fault::None, &mut out)?,
                    }
                }
            }
            "state" => {
                let last = args.num("last")?;
                let info = PendingInfo {
                    last_lsn: last,
                    last_txn: txn(args.num_or("txn", last)? as u128),
                    term: args.num("term")?,
                };
                for name in &args.names {
                    if let Some(state) = self.batch_state(name, &info, &mut out)? {
                        writeln!(out, "{name}: {state:?}")?;
                    }
                }
            }
            "fence" => {
                for name in &args.names {
                    let current = self.member(name)?.config().clone();
                    let config = ClusterConfig {
                        term: args.num("term")?,
                        version: args.num_or("version", current.version as i64 + 1)? as u64,
                        leader: args.keys.get("leader").cloned(),
                        members: args.keys.get("members").map_or(current.members, |_| args.members()),
                    };
                    match self.member(name)?.configure(&config) {
                        Step::Persist(config) => {
                            let contradicts = self.member(name)?.contradicts_vote(&config);
                            self.persist(name, &config)?;
                            let note =
                                if contradicts { " (names a second leader for the term: the vote stays)" } else { "" };
                            writeln!(
                                out,
                                "{name}: adopted term={} leader={}{note}",
                                config.term,
                                config.leader.as_deref().unwrap_or("-")
                            )?;
                        }
                        other => writeln!(out, "{name}: {other:?}")?,
                    }
                }
            }
            "crash" => {
                for name in &args.names {
                    self.held.remove(name);
                    let pg = self.pg.get_mut(name).ok_or("no pg")?;
                    let (keep, stale) = chain(pg.applied.lsn, pg.prepared.clone());
                    pg.prepared.retain(|p| !stale.contains(p));
                    let config = pg.config.clone().ok_or("no config")?;
                    let member = Member::restore(name.clone(), config, pg.applied, keep, pg.cluster_id);
                    self.members.insert(name.clone(), member);
                    writeln!(out, "{}", self.status(name)?)?;
                }
            }
            "resolve" => {
                let name = args.names.first().ok_or("resolve who?")?.clone();
                let term = args.num("term")?;
                let others: Vec<String> = self.members.keys().filter(|m| **m != name).cloned().collect();
                let mut batches: Vec<PendingInfo> = Vec::new();
                for m in self.members.values() {
                    batches.extend(m.slots().map(|s| s.batch().info()));
                }
                batches.sort_by_key(|b| (b.last_lsn, b.last_txn));
                batches.dedup();
                let mut answers = Vec::new();
                for batch in batches {
                    let mut states = Vec::new();
                    for m in std::iter::once(&name).chain(&others) {
                        if let Some(state) = self.batch_state(m, &batch, &mut out)? {
                            states.push(state);
                        }
                    }
                    writeln!(out, "{name}: batch {}@{} is {:?}", batch.last_lsn, batch.term, states)?;
                    answers.push((batch, states));
                }
                for (batch, resolution) in resolve_in_order(answers) {
                    let decision = if resolution == Resolution::Commit { Decision::Commit } else { Decision::Abort };
                    writeln!(out, "{name}: decides {}@{} {decision:?}", batch.last_lsn, batch.term)?;
                    for m in std::iter::once(&name).chain(&others).cloned().collect::<Vec<_>>() {
                        self.drive(
                            &m,
                            Request::Decide(term, batch.last_lsn, batch.last_txn, decision),
                            false,
                            Fault::None,
                            &mut out,
                        )?;
                    }
                }
            }
            "recover" => {
                let name = args.names.first().ok_or("recover who?")?.clone();
                let from = args.keys.get("from").ok_or("from=")?.clone();
                let term = args.num("term")?;
                let slots = loop {
                    match self.member(&name)?.begin_recovery(term) {
                        Step::Answer(Ok(slots)) => break slots,
                        Step::Reconcile => self.reconcile(&name, &mut out)?,
                        Step::Persist(config) => {
                            writeln!(out, "{name}: persist term={}", config.term)?;
                            self.persist(&name, &config)?;
                        }
                        other => {
                            writeln!(out, "{name}: {other:?}")?;
                            return Ok(out);
                        }
                    }
                };
                for batch in slots {
                    let decision = if self.pg[&from].holds(&batch) { Decision::Commit } else { Decision::Abort };
                    writeln!(out, "{name}: the leader's log says {} {decision:?}", show(&batch))?;
                    if let Some(op) = self.member(&name)?.resolve(&batch, decision) {
                        writeln!(out, "{name}: run {}", show_op(&op))?;
                        self.finish(&name, &op, Fault::None, &mut out)?;
                    }
                }
                let leader_pg = self.pg[&from].clone();
                let after = self.member(&name)?.applied().lsn;
                let pg = self.pg.get_mut(&name).ok_or("no pg")?;
                let missing: Vec<Lsn> = leader_pg.log.range(after + 1..).map(|(l, _)| *l).collect();
                for (lsn, entry) in leader_pg.log.range(after + 1..) {
                    pg.log.insert(*lsn, *entry);
                }
                pg.applied = leader_pg.applied;
                writeln!(out, "{name}: applied {} entries from {from}", missing.len())?;
                let end = pg.applied;
                let member = self.member(&name)?;
                member.recovered(end);
                member.end_recovery(false);
                writeln!(out, "{}", self.status(&name)?)?;
            }
            "reset" => {
                // A rebuild: the member gives up its log, the runtime rolls back what it holds
                // prepared and empties the database, the member forgets.
                for name in &args.names {
                    match self.member(name)?.begin_reset() {
                        Step::Answer(Ok(slots)) => {
                            let pg = self.pg.get_mut(name).ok_or("no pg")?;
                            let config = pg.config.clone();
                            *pg = Pg { config, ..Pg::default() };
                            writeln!(out, "{name}: rolled back {} batches, emptied the database", slots.len())?;
                            self.member(name)?.wiped();
                            writeln!(out, "{}", self.status(name)?)?;
                        }
                        other => writeln!(out, "{name}: {other:?}")?,
                    }
                }
            }
            "promote" => {
                for name in &args.names {
                    let member = self.member(name)?;
                    let config = member.config().clone();
                    let answer = member.may_promote(&config).map(|_| member.promoted(config.term));
                    writeln!(out, "{name}: {answer:?} role={:?}", self.member(name)?.role())?;
                }
            }
            "status" => {
                for name in &args.names {
                    writeln!(out, "{}", self.status(name)?)?;
                }
            }
            "join" => {
                // A caught-up node asks the leader to join the members.
                let name = args.names.first().ok_or("join at which leader?")?.clone();
                let answer = self.member(&name)?.admit_joiner(args.num("applied")?);
                writeln!(out, "{name}: {answer:?}")?;
            }
            other => return Err(format!("unknown command {other}").into()),
        }
        Ok(out)
    }
}
