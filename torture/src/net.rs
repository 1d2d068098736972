//! Network partitions and skewed clocks for processes the harness starts on 127.0.0.1.
//! (With `torture --hosts` every process has a host of its own and the partitions are cuts
//! between hosts, made by the harness: this module then only writes the clock-skew wrappers.)
//!
//! The harness runs every agent and the supervisor on loopback, so a partition cannot be a
//! cable pulled between hosts. Instead every agent runs in a cgroup of its own (v2) and the cut
//! is made by nftables rules in the kernel's output path that drop TCP packets by the cgroup of
//! the sending socket and the port they go to:
//!
//! - *cut node i off*: packets from node i's agent to the other agents' ports and the
//!   supervisor's port are dropped, and so are packets from the other agents and the supervisor
//!   to node i's port. Node i keeps its PostgreSQL, and the torture clients (outside every
//!   cgroup) still reach every node, as clients on both sides of a real partition would.
//! - *cut the leader from the supervisor* (asymmetric): only leader <-> supervisor is dropped;
//!   the leader still reaches its replicas.
//! - *cut two endpoints apart* ([`Net::cut`], for the asymmetric partitions): for each pair
//!   (a, b) of processes, a's packets to b's port and b's packets to a's port are dropped, and
//!   nothing else: the leader from both replicas (it still reaches the supervisor), the
//!   supervisor from both replicas (the leader reaches everyone), or one replica from the
//!   leader only (it still reaches the supervisor and the other replica).
//!
//! Healing deletes the rules. Connections in flight stall (dropped packets, TCP retransmits), as
//! across a real partition; nothing is reset.
//!
//! How a process lands in its cgroup: the harness starts the binaries of `RMW_BIN_DIR`, and this
//! module points that at small wrapper scripts that move themselves into the node's cgroup (and,
//! for a node chosen to run with a skewed clock, preload libfaketime) and then `exec` the real
//! binary, so the pid the harness holds is the agent's own.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where libfaketime may be (Debian's package `faketime`).
const FAKETIME_LIBS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
];

/// nft resolves a cgroupv2 path under this folder.
const CGROUP_FS: &str = "/sys/fs/cgroup";

/// The partition machinery of one run.
pub struct Net {
    /// The run's cgroup folder (absolute).
    base: PathBuf,
    /// The same, relative to [`CGROUP_FS`], as nft wants it.
    base_rel: String,
    /// Depth of a node's cgroup below the cgroup2 root.
    level: usize,
    table: String,
}

/// The cgroup2 mount point, from /proc/self/mounts.
fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

fn nft(script: &str) -> Result<(), String> {
    let out = Command::new("nft").args(["-f", "-"]).stdin(std::process::Stdio::piped()).output_with_stdin(script);
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!("nft: {}: {}", o.status, String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Err(format!("nft: {e}")),
    }
}

trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: &str) -> std::io::Result<std::process::Output>;
}

impl OutputWithStdin for Command {
    fn output_with_stdin(&mut self, input: &str) -> std::io::Result<std::process::Output> {
        use std::io::Write;
        let mut child = self.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn()?;
        child.stdin.take().expect("stdin is piped").write_all(input.as_bytes())?;
        child.wait_with_output()
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Names of cgroups and nft tables: `rmw-torture-<pid>`, `rmw_torture_<pid>`.
const PREFIX_CG: &str = "rmw-torture-";
const PREFIX_NFT: &str = "rmw_torture_";

/// Removes what earlier runs that were killed outright left: nft tables and cgroups named after
/// a pid that no longer runs.
fn reap_abandoned(mount: &Path) {
    if let Ok(out) = Command::new("nft").args(["list", "tables"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line.strip_prefix("table inet ") else { continue };
            if let Some(pid) = name.strip_prefix(PREFIX_NFT).and_then(|p| p.parse::<u32>().ok()) {
                if !pid_alive(pid) {
                    let _ = nft(&format!("delete table inet {name}\n"));
                }
            }
        }
    }
    if let Ok(entries) = fs::read_dir(mount) {
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(pid) = name.strip_prefix(PREFIX_CG).and_then(|p| p.parse::<u32>().ok()) {
                if !pid_alive(pid) {
                    remove_cgroup_tree(&e.path());
                }
            }
        }
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.filter_map(|e| e.ok()) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = fs::remove_dir(e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// A process of the cluster as the network sees it: its cgroup and the port it listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub group: String,
    pub port: u16,
}

impl Endpoint {
    /// Node `i`'s agent, listening on `port`.
    pub fn node(i: usize, port: u16) -> Endpoint {
        Endpoint { group: node_group(i), port }
    }
    /// The supervisor, listening on `port`.
    pub fn supervisor(port: u16) -> Endpoint {
        Endpoint { group: SUPERVISOR_GROUP.to_string(), port }
    }
}

/// The name of the cgroup of node `i`'s agent, and of the supervisor.
pub fn node_group(i: usize) -> String {
    format!("node{i}")
}
pub const SUPERVISOR_GROUP: &str = "supervisor";

impl Net {
    /// Creates the run's cgroups and nft table, or says why partitions cannot be made here.
    pub fn setup(nodes: usize) -> Result<Net, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root (cgroups and nftables need root)".into());
        }
        if Command::new("nft").arg("--version").output().is_err() {
            return Err("the nft command is missing (Debian: apt-get install nftables)".into());
        }
        let mount = cgroup2_mount().ok_or("no cgroup2 file system is mounted")?;
        let rel_mount = mount
            .strip_prefix(CGROUP_FS)
            .map_err(|_| format!("cgroup2 is mounted at {}, outside {CGROUP_FS} where nft looks", mount.display()))?
            .to_path_buf();
        reap_abandoned(&mount);
        let pid = std::process::id();
        let base = mount.join(format!("{PREFIX_CG}{pid}"));
        let groups: Vec<String> = (0..nodes).map(node_group).chain([SUPERVISOR_GROUP.to_string()]).collect();
        for g in &groups {
            fs::create_dir_all(base.join(g))
                .map_err(|e| format!("create the cgroup {}: {e}", base.join(g).display()))?;
        }
        let base_rel =
            rel_mount.join(format!("{PREFIX_CG}{pid}")).display().to_string().trim_start_matches('/').to_string();
        let net = Net { base, base_rel, level: 2, table: format!("{PREFIX_NFT}{pid}") };
        let made = nft(&format!(
            "add table inet {t}\nadd chain inet {t} out {{ type filter hook output priority 0; policy accept; }}\n",
            t = net.table
        ));
        if let Err(e) = made {
            net.teardown();
            return Err(format!("cannot create an nftables table: {e}"));
        }
        // Prove that a rule naming a cgroup is accepted before relying on it.
        if let Err(e) = nft(&format!("add rule inet {} out {} tcp dport 9 drop\n", net.table, net.from(&groups[0]))) {
            net.teardown();
            return Err(format!("nftables cannot match sockets by cgroup here: {e}"));
        }
        let _ = net.heal();
        Ok(net)
    }

    /// The absolute path of a cgroup of this run.
    pub fn group_dir(&self, group: &str) -> PathBuf {
        self.base.join(group)
    }

    fn from(&self, group: &str) -> String {
        format!("socket cgroupv2 level {} \"{}/{group}\"", self.level, self.base_rel)
    }

    fn set(ports: &[u16]) -> String {
        let list: Vec<String> = ports.iter().map(u16::to_string).collect();
        format!("{{ {} }}", list.join(", "))
    }

    /// Cuts node `i` off: `agent_ports[j]` is node j's agent port.
    pub fn isolate(&self, i: usize, agent_ports: &[u16], supervisor_port: u16) -> Result<(), String> {
        let mut others: Vec<u16> = agent_ports.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, p)| *p).collect();
        others.push(supervisor_port);
        let mut script = format!(
            "add rule inet {} out {} tcp dport {} drop\n",
            self.table,
            self.from(&node_group(i)),
            Self::set(&others)
        );
        let groups = (0..agent_ports.len()).filter(|j| *j != i).map(node_group).chain([SUPERVISOR_GROUP.to_string()]);
        for g in groups {
            script +=
                &format!("add rule inet {} out {} tcp dport {} drop\n", self.table, self.from(&g), agent_ports[i]);
        }
        nft(&script)
    }

    /// Cuts node `i` from the supervisor only (both directions).
    pub fn cut_from_supervisor(&self, i: usize, agent_port: u16, supervisor_port: u16) -> Result<(), String> {
        nft(&format!(
            "add rule inet {t} out {} tcp dport {supervisor_port} drop\nadd rule inet {t} out {} tcp dport {agent_port} drop\n",
            self.from(&node_group(i)),
            self.from(SUPERVISOR_GROUP),
            t = self.table
        ))
    }

    /// Cuts every pair of `pairs` apart, both ways; every other path stays open.
    pub fn cut(&self, pairs: &[(Endpoint, Endpoint)]) -> Result<(), String> {
        nft(&self.cut_script(pairs))
    }

    fn cut_script(&self, pairs: &[(Endpoint, Endpoint)]) -> String {
        let mut script = String::new();
        for (a, b) in pairs {
            for (from, to) in [(a, b), (b, a)] {
                script += &format!(
                    "add rule inet {} out {} tcp dport {} drop\n",
                    self.table,
                    self.from(&from.group),
                    to.port
                );
            }
        }
        script
    }

    /// Removes every rule: the network is whole again.
    pub fn heal(&self) -> Result<(), String> {
        nft(&format!("flush chain inet {} out\n", self.table))
    }

    /// Deletes the table and the cgroups (call once the processes in them are gone).
    pub fn teardown(&self) {
        let _ = nft(&format!("delete table inet {}\n", self.table));
        remove_cgroup_tree(&self.base);
    }
}

/// A skewed clock for one node's agent.
#[derive(Debug, Clone)]
pub struct Skew {
    pub node: usize,
    /// Offset of the agent's wall clock, in milliseconds (negative: behind).
    pub offset_ms: i64,
}

/// libfaketime, if installed.
pub fn faketime_lib() -> Option<PathBuf> {
    FAKETIME_LIBS.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Writes the wrapper scripts `agent` and `supervisor` into `dir` (which becomes the harness's
/// `RMW_BIN_DIR`), each running the real binary from `real_bin_dir`.
pub fn write_wrappers(dir: &Path, real_bin_dir: &Path, net: Option<&Net>, skew: Option<&Skew>) -> anyhow::Result<()> {
    fs::create_dir_all(dir)?;
    for (name, default_group) in [("agent", None), ("supervisor", Some(SUPERVISOR_GROUP))] {
        let real = real_bin_dir.join(name);
        anyhow::ensure!(
            real.is_file(),
            "the {name} binary is missing at {} (build it: cargo build -p agent -p supervisor, or give --bin-dir)",
            real.display()
        );
        let mut script = String::from(
            "#!/bin/sh\n# Written by the torture run: puts this process into its cgroup, then runs the real binary.\n",
        );
        script += "node=\nprev=\nfor a in \"$@\"; do\n  if [ \"$prev\" = \"--node-id\" ]; then node=\"$a\"; fi\n  prev=\"$a\"\ndone\n";
        if let Some(net) = net {
            let group = match default_group {
                Some(g) => g.to_string(),
                None => "$node".to_string(),
            };
            script += &format!(
                "cg=\"{}/{group}\"\nif [ -n \"{group}\" ] && [ -d \"$cg\" ]; then echo $$ > \"$cg/cgroup.procs\"; fi\n",
                net.base.display()
            );
        }
        if let (Some(skew), None) = (skew, default_group) {
            if let Some(lib) = faketime_lib() {
                let sign = if skew.offset_ms < 0 { "-" } else { "+" };
                let secs = skew.offset_ms.unsigned_abs() as f64 / 1000.0;
                script += &format!(
                    "if [ \"$node\" = \"node{}\" ]; then\n  export LD_PRELOAD=\"{}\" FAKETIME=\"{sign}{secs}s\" FAKETIME_DONT_FAKE_MONOTONIC=1 FAKETIME_NO_CACHE=1\nfi\n",
                    skew.node,
                    lib.display()
                );
            }
        }
        script += &format!("exec \"{}\" \"$@\"\n", real.display());
        let path = dir.join(name);
        fs::write(&path, script)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_drops_both_directions_of_each_pair_only() {
        let net = Net { base: PathBuf::from("/sys/fs/cgroup/x"), base_rel: "x".into(), level: 2, table: "t".into() };
        let script = net.cut_script(&[
            (Endpoint::node(0, 8000), Endpoint::node(1, 8001)),
            (Endpoint::supervisor(9000), Endpoint::node(2, 8002)),
        ]);
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(
            lines,
            [
                "add rule inet t out socket cgroupv2 level 2 \"x/node0\" tcp dport 8001 drop",
                "add rule inet t out socket cgroupv2 level 2 \"x/node1\" tcp dport 8000 drop",
                "add rule inet t out socket cgroupv2 level 2 \"x/supervisor\" tcp dport 8002 drop",
                "add rule inet t out socket cgroupv2 level 2 \"x/node2\" tcp dport 9000 drop",
            ]
        );
    }
}
