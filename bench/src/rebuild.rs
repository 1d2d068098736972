//! The rebuild figure: a replica whose PostgreSQL is wiped while it is down, and which the
//! leader's bounded log (`--retain-log`) no longer reaches when it comes back, is rebuilt from
//! the leader's snapshot (`GET /internal/snapshot`) plus the log after it, under a background
//! load. Timed from the agent's restart to its being a member again, in sync.
//!
//! A fresh cluster of its own (named `rebuild-…` in the work folder), so that the table holds
//! only its accounts and the agents run with `--retain-log`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::load::{Limit, Live, Workload};
use crate::ours::{self, Ours};
use crate::procs::{wait_for, Workspace};
use crate::report::thousands;
use crate::{now_ms, Progress, Rebuild, LOAD_PARALLEL, SETUP_OURS};

/// The agents' `--retain-log` in this figure (with `--retain-log-secs 0`: entries are trimmed
/// as soon as they are beyond the newest 5,000).
pub const RETAIN_LOG: u64 = 5_000;
/// Clients committing while the node is down.
const DOWN_CLIENTS: usize = 32;
/// Clients committing while the node comes back.
const BACKGROUND_CLIENTS: usize = 8;
/// The background load's commits per second are first measured over this, before the restart.
const BASELINE: Duration = Duration::from_secs(2);
/// The longest the node may take to be a member again before the figure fails.
const REJOIN_TIMEOUT: Duration = Duration::from_secs(240);

/// How big the figure is: accounts in the table, and entries the node falls behind the
/// leader's log horizon.
#[derive(Debug, Clone, Copy)]
pub struct RebuildSize {
    pub accounts: u64,
    pub behind: u64,
}

/// Starts a fresh cluster with a bounded log, measures the rebuild on it, and stops it.
pub async fn run(ws: &mut Workspace, bin_dir: &Path, size: RebuildSize, progress: &Progress) -> Result<Rebuild> {
    progress.set_message(&format!("rebuild: starting a fresh cluster of ours with --retain-log {RETAIN_LOG}"));
    let options = ours::Options {
        tls: false,
        prefix: "rebuild-",
        agent_args: vec!["--retain-log".into(), RETAIN_LOG.to_string(), "--retain-log-secs".into(), "0".into()],
    };
    let mut ours = Ours::start(ws, bin_dir, &options).await?;
    let result = measure(ws, &mut ours, size, progress).await;
    ours.stop();
    if result.is_err() {
        // The agents' and the supervisor's logs tell why; the run goes on.
        ws.keep_logs = true;
    }
    result.map_err(|e| e.context(format!("the logs stay in {}", ws.logs.display())))
}

async fn measure(ws: &mut Workspace, ours: &mut Ours, size: RebuildSize, progress: &Progress) -> Result<Rebuild> {
    // 1. The accounts, MAX_SET_LEN per commit, several commits in flight.
    let what = format!("rebuild: loading {} accounts through the leader", thousands(size.accounts));
    progress.set_message(&what);
    let bar = progress.step_bar(size.accounts, &what);
    let loaded = Arc::new(AtomicU64::new(0));
    let ticker = {
        let (bar, loaded) = (bar.clone(), loaded.clone());
        tokio::spawn(async move {
            loop {
                bar.set_position(loaded.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let started = Instant::now();
    let populated = ours.populate(size.accounts as i64, LOAD_PARALLEL, loaded).await;
    ticker.abort();
    bar.finish_and_clear();
    populated.context("loading the accounts")?;
    let load_s = started.elapsed().as_secs_f64();
    progress.println(&format!(
        "{:<32} rebuild: {} accounts loaded in {load_s:.1} s",
        crate::report::setup_label(SETUP_OURS),
        thousands(size.accounts)
    ));

    // 2. A replica's agent killed, its PostgreSQL wiped.
    let st = ours.wait_all_members(Duration::from_secs(60)).await?;
    let leader = st.leader.context("no leader")?;
    let li = ours.index_of(&leader)?;
    let vi = (li + 1) % ours.addresses.len();
    let victim = ours.addresses[vi].clone();
    ours.agents[vi].kill();
    let node_lsn_before = last_lsn(ws, ours, vi, "max").context("the killed node's applied LSN")?;
    ours.wipe_postgres(ws, vi).with_context(|| format!("wiping {victim}'s PostgreSQL"))?;

    // 3. `behind` + RETAIN_LOG blind transfers without it.
    let down = size.behind + RETAIN_LOG;
    let what = format!(
        "rebuild: {victim} killed and its PostgreSQL wiped; {} blind transfers commit without it",
        thousands(down)
    );
    progress.set_message(&what);
    let bar = progress.step_bar(down, &what);
    let (load, down_elapsed) = crate::commit_while_down(ours, &leader, DOWN_CLIENTS, down, &bar, &victim).await?;
    bar.finish_and_clear();

    // 4. The leader's log trimmed to its newest RETAIN_LOG entries (its retention runs every
    //    second): `behind` entries past the node's position.
    progress.set_message("rebuild: waiting for the leader's log to be trimmed past the node's position");
    let horizon_lsn = {
        let (ws, ours) = (&*ws, &*ours);
        let want = node_lsn_before + size.behind as i64;
        wait_for(
            &format!("the leader's log to be trimmed to LSN {want} ({} past the killed node's)", size.behind),
            Duration::from_secs(60),
            Duration::from_millis(200),
            move || async move {
                let horizon = last_lsn(ws, ours, li, "min")? - 1;
                Ok((horizon >= want).then_some(horizon))
            },
        )
        .await?
    };
    for (i, pg) in ours.pgs.iter().enumerate() {
        if i != vi {
            pg.psql(ws, "CHECKPOINT")?;
        }
    }

    // 5. The agent restarted under a background load, timed until it is a member in sync.
    let what = format!("rebuild: restarting {victim} under a background load of {BACKGROUND_CLIENTS} clients");
    progress.set_message(&what);
    let bar = progress.step_bar(1, &what);
    let live = Arc::new(Live::default());
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let (leader, live, stop) = (ours.endpoint(&leader), live.clone(), stop.clone());
        tokio::spawn(async move {
            crate::load::run(
                &leader,
                Workload::Blind,
                BACKGROUND_CLIENTS,
                Limit { stop: Some(stop), duration: Some(Duration::from_secs(900)), commits: None },
                live,
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c0 = live.committed.load(Ordering::Relaxed);
    tokio::time::sleep(BASELINE).await;
    let c1 = live.committed.load(Ordering::Relaxed);
    let background_tps_before = (c1 - c0) as f64 / BASELINE.as_secs_f64();
    let log_offset = std::fs::metadata(&ours.agents[vi].log).map_or(0, |m| m.len());
    let restart_ms = now_ms();
    let at_restart = live.committed.load(Ordering::Relaxed);
    let spawned = ours.agents[vi].spawn();
    let restarted = Instant::now();
    let waited = match spawned {
        Ok(()) => wait_rejoin(ours, &victim, restarted, restart_ms, &bar).await,
        Err(e) => Err(e),
    };
    let at_rejoin = live.committed.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let bg = background.await.context("the background load")?;
    bar.finish_and_clear();
    let (member, rejoined) = waited?;

    // 6. The supervisor's report of the recovery, and the agent's own account of the snapshot.
    let st = ours.status().await?;
    let records: Vec<_> = st.recoveries.iter().filter(|r| r.node == victim && r.at_ms + 1000 >= restart_ms).collect();
    let ok = records.iter().rev().find(|r| r.ok).copied();
    let failed: Vec<_> = records.iter().filter(|r| !r.ok).collect();
    let Some(ok) = ok else {
        bail!("{victim} is a member again, but the supervisor reports no successful recovery of it since its restart");
    };
    let Some(snapshot_lsn) = ok.snapshot_lsn else {
        bail!(
            "{victim} is a member again, but the supervisor's report of its recovery has no snapshot_lsn: it was not \
             rebuilt from the leader's snapshot ({} entries applied, {} ms: {})",
            ok.entries_applied,
            ok.duration_ms,
            ok.message
        );
    };
    let agent_log = read_from(&ours.agents[vi].log, log_offset);
    let loads = snapshot_loads(&agent_log);
    let rebuild = Rebuild {
        accounts: size.accounts,
        behind: size.behind,
        retain_log: RETAIN_LOG,
        load_s,
        down_tps: load.committed as f64 / down_elapsed.as_secs_f64(),
        node_lsn_before,
        horizon_lsn,
        member_ms: member.as_secs_f64() * 1000.0,
        rejoin_ms: rejoined.as_secs_f64() * 1000.0,
        supervisor_duration_ms: Some(ok.duration_ms),
        commit_pause_ms: ok.commit_pause_ms,
        snapshot_lsn,
        entries_applied: Some(ok.entries_applied),
        failed_attempts: failed.len(),
        last_failure: failed.last().map(|r| r.message.clone()),
        snapshot_load_ms: loads.last().copied().flatten(),
        snapshots_loaded: loads.len(),
        background_clients: BACKGROUND_CLIENTS,
        background_tps_before,
        background_tps: (at_rejoin - at_restart) as f64 / rejoined.as_secs_f64().max(0.001),
        background_errors: bg.errors,
        background_max_ms: bg.latency_us.max() as f64 / 1000.0,
        background_p99_ms: bg.latency_us.value_at_quantile(0.99) as f64 / 1000.0,
    };
    if let Some(last) = &rebuild.last_failure {
        progress.println(&format!("rebuild: {} failed attempt(s) before it rejoined; last: {last}", failed.len()));
    }
    progress.println(&format!(
        "{:<32} rebuild of a wiped node ({} accounts, {} entries behind): member again {:.0} ms after restart, in \
         sync {:.0} ms (supervisor: {} ms, commit pause {} ms, snapshot at LSN {snapshot_lsn}, loaded in {} ms)",
        crate::report::setup_label(SETUP_OURS),
        thousands(rebuild.accounts),
        thousands(rebuild.behind),
        rebuild.member_ms,
        rebuild.rejoin_ms,
        crate::report::opt_u64(rebuild.supervisor_duration_ms),
        crate::report::opt_u64(rebuild.commit_pause_ms),
        crate::report::opt_u64(rebuild.snapshot_load_ms),
    ));
    Ok(rebuild)
}

/// `min` or `max` of the LSNs in server `i`'s recovery log (0 when it is empty).
fn last_lsn(ws: &Workspace, ours: &Ours, i: usize, which: &str) -> Result<i64> {
    let out = ours.pgs[i].psql(ws, &format!("SELECT coalesce({which}(lsn), 0) FROM recovery_log"))?;
    out.trim().parse().with_context(|| format!("{which}(lsn) of the recovery log: {out:?}"))
}

/// Waits until `victim` is in the supervisor's members and its applied LSN reached the
/// leader's (as of the first status naming it a member); returns both times since `restarted`.
async fn wait_rejoin(
    ours: &mut Ours,
    victim: &str,
    restarted: Instant,
    restart_ms: u64,
    bar: &indicatif::ProgressBar,
) -> Result<(Duration, Duration)> {
    let mut member_after = None;
    let mut target = None;
    loop {
        if let Ok(st) = ours.status().await {
            let lsn_of = |a: &str| st.nodes.iter().find(|n| n.address == a).and_then(|n| n.applied_lsn);
            if st.members.iter().any(|m| m == victim) {
                member_after.get_or_insert(restarted.elapsed());
                let leader_lsn = st.leader.as_deref().and_then(lsn_of).unwrap_or(0);
                let want = *target.get_or_insert(leader_lsn);
                if lsn_of(victim).is_some_and(|lsn| lsn >= want) {
                    return Ok((member_after.unwrap_or_default(), restarted.elapsed()));
                }
            }
            bar.set_message(format!(
                "rebuild: {victim} restarted {:.1} s ago; applied LSN {}; {}",
                restarted.elapsed().as_secs_f64(),
                lsn_of(victim).map_or_else(|| "?".into(), |l| l.to_string()),
                if st.recovering.iter().any(|r| r == victim) { "recovering" } else { "waiting" }
            ));
            if restarted.elapsed() > REJOIN_TIMEOUT {
                let attempts: Vec<_> =
                    st.recoveries.iter().filter(|r| r.node == victim && r.at_ms + 1000 >= restart_ms).collect();
                bail!(
                    "{victim} was not a member in sync {} s after its restart; {} recoveries of it since, the last: \
                     {}; {}",
                    REJOIN_TIMEOUT.as_secs(),
                    attempts.len(),
                    attempts.last().map_or("none".into(), |r| format!("{} ({} ms)", r.message, r.duration_ms)),
                    ours.diagnose()
                );
            }
        } else if restarted.elapsed() > REJOIN_TIMEOUT {
            let why = ours.diagnose();
            bail!("the supervisor did not answer {} s after {victim}'s restart; {why}", REJOIN_TIMEOUT.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The text of `path` from byte `offset` on (empty when unreadable).
fn read_from(path: &Path, offset: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = (offset as usize).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// Every "loaded the leader's snapshot" line of an agent's log, with its `ms` field when it
/// has one (text logs say `ms=123`, JSON logs `"ms":123`).
fn snapshot_loads(log: &str) -> Vec<Option<u64>> {
    log.lines()
        .filter(|l| l.contains("loaded the leader's snapshot"))
        .map(|l| {
            let after = l.split_once(" ms=").or_else(|| l.split_once("\"ms\":")).map(|(_, rest)| rest)?;
            after.chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_load_times_from_the_agent_log() {
        let log = "2026-12-07T14:00:00.1Z  INFO agent::recovery: loaded the leader's snapshot; replaying the log \
                   after it base_lsn=106001 accounts=1000000 ms=5234\n\
                   2026-12-07T14:00:01.1Z  INFO agent::recovery: recovery resolved\n\
                   {\"fields\":{\"message\":\"loaded the leader's snapshot; replaying the log after it\",\"ms\":77}}\n\
                   loaded the leader's snapshot, no time\n";
        assert_eq!(snapshot_loads(log), vec![Some(5234), Some(77), None]);
        assert!(snapshot_loads("nothing here\n").is_empty());
    }
}
