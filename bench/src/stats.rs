//! Where the CPU went during a step, and how much memory the agents hold: getrusage for the load
//! generator (this process) and for pgbench (a waited-for child), `/proc` for the rest.

use std::collections::HashMap;
use std::fs;

fn timeval_s(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6
}

/// User + system CPU seconds of this process (`RUSAGE_SELF`) or of its waited-for descendants
/// (`RUSAGE_CHILDREN`).
pub fn rusage_cpu_s(who: libc::c_int) -> f64 {
    // SAFETY: getrusage only writes the struct we hand it.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        if libc::getrusage(who, &mut ru) != 0 {
            return 0.0;
        }
        timeval_s(ru.ru_utime) + timeval_s(ru.ru_stime)
    }
}

pub fn self_cpu_s() -> f64 {
    rusage_cpu_s(libc::RUSAGE_SELF)
}

pub fn children_cpu_s() -> f64 {
    rusage_cpu_s(libc::RUSAGE_CHILDREN)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// (parent pid, utime + stime in seconds) of a process, from `/proc/<pid>/stat`.
fn proc_stat(pid: i32) -> Option<(i32, f64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state ppid ... utime(14) stime(15).
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ppid = rest.get(1)?.parse().ok()?;
    let utime: f64 = rest.get(11)?.parse().ok()?;
    let stime: f64 = rest.get(12)?.parse().ok()?;
    Some((ppid, (utime + stime) / clock_ticks()))
}

/// CPU seconds used so far by each of `pids` (missing ones count 0).
pub fn pids_cpu(pids: &[i32]) -> HashMap<i32, f64> {
    pids.iter().filter_map(|&p| proc_stat(p).map(|(_, cpu)| (p, cpu))).collect()
}

/// CPU seconds used so far by each of the postmasters `roots` and their children (backends,
/// WAL writer, WAL senders...), by pid.
pub fn postgres_cpu(roots: &[i32]) -> HashMap<i32, f64> {
    let mut out = HashMap::new();
    if roots.is_empty() {
        return out;
    }
    for entry in fs::read_dir("/proc").into_iter().flatten().filter_map(|e| e.ok()) {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Some((ppid, cpu)) = proc_stat(pid) {
            if roots.contains(&pid) || roots.contains(&ppid) {
                out.insert(pid, cpu);
            }
        }
    }
    out
}

/// CPU seconds used between two snapshots: processes that appeared count from zero, ones that
/// exited in between are lost (backends here live for the whole step).
pub fn delta(before: &HashMap<i32, f64>, after: &HashMap<i32, f64>) -> f64 {
    after.iter().map(|(pid, &cpu)| (cpu - before.get(pid).copied().unwrap_or(0.0)).max(0.0)).sum()
}

/// The whole machine's CPU counters from `/proc/stat`: (busy, total) in ticks.
pub fn host_cpu() -> (u64, u64) {
    let Ok(text) = fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal guest guest_nice; guest is inside user.
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// The fraction of all cores that was busy between two [`host_cpu`] snapshots.
pub fn host_busy(before: (u64, u64), after: (u64, u64)) -> f64 {
    let total = after.1.saturating_sub(before.1);
    if total == 0 {
        return 0.0;
    }
    after.0.saturating_sub(before.0) as f64 / total as f64
}

/// Resident memory of a process in MiB (`VmRSS`).
pub fn rss_mib(pid: i32) -> Option<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
