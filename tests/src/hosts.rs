//! Hosts for a cluster started with [`ClusterOptions::on_hosts`](crate::ClusterOptions): every
//! node (PostgreSQL and its agent), every supervisor and every etcd member runs in a network
//! namespace of its own, with its own address on one Linux bridge in the root namespace, and
//! the network faults between them.
//!
//! Layout of one cluster (`<pid>` is the test process, `<k>` its cluster counter, `<n>` a /24
//! chosen free on this machine):
//!
//! ```text
//!   root namespace: bridge rmwt<pid>-<k>, 10.78.<n>.1/24   (the harness and the clients)
//!     ├─ veth rmwt<n>v11 ── eth0 10.78.<n>.11 in namespace rmwt<pid>-<k>-node0   :5432 :8000
//!     ├─ veth rmwt<n>v12 ── eth0 10.78.<n>.12 in namespace rmwt<pid>-<k>-node1   ...
//!     ├─ veth rmwt<n>v21 ── eth0 10.78.<n>.21 in namespace rmwt<pid>-<k>-sup0    :9000
//!     └─ veth rmwt<n>v31 ── eth0 10.78.<n>.31 in namespace rmwt<pid>-<k>-etcd0   :2379 :2380
//! ```
//!
//! Invariants:
//! - No namespace has a default route, and before anything starts every cluster address is
//!   checked to be reached over the bridge (from the root namespace) and over `eth0` (from every
//!   host): no packet for a cluster address can leave the machine.
//! - The `/24` is chosen under a lock file shared by every test process, among those no address
//!   or route of this machine uses, so several clusters (and the namespaces of `setup.sh`, which
//!   use 10.77.x and the prefix `rmw-`) coexist.
//! - A network fault is a drop rule in the *receiving* host's own nftables (input hook), so the
//!   sender sees nothing but silence, as across a pulled cable: a link cut drops both
//!   directions, a one-way loss one. Healing flushes those rules on every host.
//! - Everything is removed on drop (processes still in a namespace are SIGKILLed first), and a
//!   later test process removes the namespaces and bridges of test processes that died.
//!
//! What it does not do: reach out of the machine, touch any link or namespace whose name does not
//! start with `rmwt` followed by a digit, or filter the harness's own traffic (the root
//! namespace stays connected to every host, as clients on both sides of a partition would be).

use std::fmt;
use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::Cluster;

/// Prefix of every namespace, bridge and link of this module.
const PREFIX: &str = "rmwt";
/// The hosts' subnets are `10.78.<n>.0/24` (setup.sh's cluster uses 10.77.x).
const SUBNET_A: u8 = 10;
const SUBNET_B: u8 = 78;
/// Serialises the choice of a subnet and the reaping of abandoned hosts across test processes.
const LOCK_FILE: &str = "/tmp/rmwt-hosts.lock";
/// The nftables table every host holds for its faults.
const NFT_TABLE: &str = "rmwt_faults";

/// The ports every host uses for its service: the defaults of the programs, the same on every
/// host since each host has its own address.
pub const AGENT_PORT: u16 = 8000;
pub const POSTGRES_PORT: u16 = 5432;
pub const SUPERVISOR_PORT: u16 = 9000;
pub const ETCD_CLIENT_PORT: u16 = 2379;
pub const ETCD_PEER_PORT: u16 = 2380;

/// One host of a cluster on hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostId {
    /// Node `i`: its PostgreSQL and its agent.
    Node(usize),
    /// Supervisor `k`.
    Supervisor(usize),
    /// etcd member `i`.
    Etcd(usize),
}

impl HostId {
    /// `node0`, `sup1`, `etcd2`: the end of the namespace's name, and what messages say.
    pub fn name(self) -> String {
        match self {
            HostId::Node(i) => format!("node{i}"),
            HostId::Supervisor(k) => format!("sup{k}"),
            HostId::Etcd(i) => format!("etcd{i}"),
        }
    }

    /// The last byte of the host's address: nodes from .11, supervisors from .21, etcd from .31.
    fn octet(self) -> u8 {
        let (base, i) = match self {
            HostId::Node(i) => (11, i),
            HostId::Supervisor(k) => (21, k),
            HostId::Etcd(i) => (31, i),
        };
        assert!(i < 9, "at most 9 hosts of each kind");
        base + i as u8
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// A host: a network namespace with one address.
#[derive(Debug, Clone)]
pub struct Host {
    pub id: HostId,
    /// The namespace's name (`ip netns exec <netns> ...`).
    pub netns: String,
    pub address: Ipv4Addr,
    /// The root end of its veth link, on the bridge.
    veth: String,
}

/// The hosts of one cluster and the bridge joining them. Dropping it removes them all.
pub(crate) struct Hosts {
    bridge: String,
    /// The bridge's own address: where the harness's packets come from.
    pub(crate) gateway: Ipv4Addr,
    hosts: Vec<Host>,
}

fn describe(out: &std::process::Output) -> String {
    format!(
        "{}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    )
}

/// Runs `ip <args>`; its stdout, or what went wrong.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e} (Debian: apt-get install iproute2)", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("ip {}: {}", args.join(" "), describe(&out)))
    }
}

/// Runs an nft script inside namespace `netns`.
fn nft_in(netns: &str, script: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("ip netns exec {netns} nft: {e}"))?;
    child.stdin.take().expect("stdin is piped").write_all(script.as_bytes()).map_err(|e| format!("nft: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("nft in {netns}: {} (script: {})", describe(&out), script.trim()))
    }
}

/// Holds [`LOCK_FILE`] locked (flock) until dropped.
struct MachineLock(fs::File);

impl MachineLock {
    fn take() -> Result<MachineLock, String> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_FILE)
            .map_err(|e| format!("open {LOCK_FILE}: {e}"))?;
        // SAFETY: flock on a file descriptor we own; blocks until the lock is ours.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(format!("flock {LOCK_FILE}: {}", std::io::Error::last_os_error()));
        }
        Ok(MachineLock(file))
    }
}

impl Drop for MachineLock {
    fn drop(&mut self) {
        // SAFETY: unlocking our own descriptor.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// The test process a name of ours belongs to: `rmwt<pid>-...` -> pid.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    if digits.is_empty() || !rest[digits.len()..].starts_with('-') {
        return None;
    }
    digits.parse().ok()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// SIGKILLs every process in namespace `netns` (what outlived the cluster: a PostgreSQL backend,
/// a program whose pid file was lost).
fn kill_everything_in(netns: &str) {
    let Ok(pids) = ip(&["netns", "pids", netns]) else { return };
    for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
        // SAFETY: signalling a process that runs in a namespace this module made for a cluster.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Deletes namespace `netns` after killing what runs in it; never panics.
fn delete_namespace(netns: &str) {
    kill_everything_in(netns);
    // Killed processes take a moment to leave; the namespace goes once they have.
    for _ in 0..50 {
        match ip(&["netns", "pids", netns]) {
            Ok(pids) if pids.trim().is_empty() => break,
            Err(_) => break,
            Ok(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
    let _ = ip(&["netns", "delete", netns]);
}

/// Removes the namespaces and bridges of test processes that no longer run, and our links left
/// without a bridge. Call with the machine lock held.
fn reap_abandoned(_lock: &MachineLock) {
    if let Ok(list) = ip(&["netns", "list"]) {
        for line in list.lines() {
            let Some(name) = line.split_whitespace().next() else { continue };
            if owner_pid(name).is_some_and(|pid| !pid_alive(pid)) {
                delete_namespace(name);
            }
        }
    }
    if let Ok(links) = ip(&["-o", "link", "show"]) {
        for line in links.lines() {
            // `7: rmwt123-0: <BROADCAST,...> ... master rmwt123-0 ...`, a veth as `rmwt5v11@if2`.
            let Some(name) = line.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n)) else { continue };
            if !name.starts_with(PREFIX) {
                continue;
            }
            let abandoned_bridge = owner_pid(name).is_some_and(|pid| !pid_alive(pid));
            // A veth of ours: `rmwt<n>v<octet>`; without a master its cluster is gone.
            let orphan_veth = owner_pid(name).is_none()
                && name[PREFIX.len()..].chars().next().is_some_and(|c| c.is_ascii_digit())
                && !line.contains(" master ");
            if abandoned_bridge || orphan_veth {
                let _ = ip(&["link", "delete", name]);
            }
        }
    }
}

/// Whether this machine already uses `10.78.<n>.0/24` anywhere (an address or a route).
fn subnet_in_use(n: u8) -> Result<bool, String> {
    let needle = format!("{SUBNET_A}.{SUBNET_B}.{n}.");
    let addrs = ip(&["-o", "-4", "addr", "show"])?;
    let routes = ip(&["-4", "route", "show", "table", "all"])?;
    Ok(addrs.contains(&needle) || routes.contains(&needle))
}

impl Hosts {
    /// Makes the bridge and one namespace per id, checks the routes, and returns them; on an
    /// error, removes what it made and says what went wrong.
    pub(crate) fn create(cluster: usize, ids: &[HostId]) -> Result<Hosts, String> {
        if !crate::pg::running_as_root() {
            return Err("hosts in network namespaces need root (ip netns, bridges, nftables)".into());
        }
        ip(&["-V"])?;
        let pid = std::process::id();
        let bridge = format!("{PREFIX}{pid}-{cluster}");
        assert!(bridge.len() <= 15, "interface name {bridge} is longer than 15 characters");
        let lock = MachineLock::take()?;
        reap_abandoned(&lock);
        // A subnet derived from the pid and the cluster counter, else the next free one.
        let start = (pid as usize).wrapping_mul(7).wrapping_add(cluster.wrapping_mul(13)) % 250;
        let mut chosen = None;
        for step in 0..250 {
            let n = 1 + ((start + step) % 250) as u8;
            if !subnet_in_use(n)? {
                chosen = Some(n);
                break;
            }
        }
        let n = chosen.ok_or("every subnet 10.78.1-250.0/24 is in use on this machine")?;
        let gateway = Ipv4Addr::new(SUBNET_A, SUBNET_B, n, 1);
        let hosts: Vec<Host> = ids
            .iter()
            .map(|&id| Host {
                id,
                netns: format!("{bridge}-{}", id.name()),
                address: Ipv4Addr::new(SUBNET_A, SUBNET_B, n, id.octet()),
                veth: format!("{PREFIX}{n}v{}", id.octet()),
            })
            .collect();
        // From here on, a failure drops `made`, which removes what exists.
        let mut made = Hosts { bridge: bridge.clone(), gateway, hosts: Vec::new() };
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{gateway}/24"), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for host in hosts {
            let ns = host.netns.clone();
            ip(&["netns", "add", &ns])?;
            made.hosts.push(host.clone());
            ip(&["link", "add", &host.veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["link", "set", &host.veth, "master", &bridge, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", host.address), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            nft_in(
                &ns,
                &format!(
                    "add table inet {NFT_TABLE}\nadd chain inet {NFT_TABLE} in {{ type filter hook input priority 0; policy accept; }}\n"
                ),
            )?;
        }
        drop(lock);
        made.check_routes()?;
        Ok(made)
    }

    /// Every cluster address goes over the bridge from the root namespace and over `eth0` from
    /// every host, and no host has a default route.
    fn check_routes(&self) -> Result<(), String> {
        let dev = |route: &str, name: &str| route.contains(&format!(" dev {name} "));
        for host in &self.hosts {
            let addr = host.address.to_string();
            let route = ip(&["route", "get", &addr])?;
            if !dev(&route, &self.bridge) {
                return Err(format!(
                    "packets for {addr} ({}) would not go over the bridge {} but: {}",
                    host.id,
                    self.bridge,
                    route.trim()
                ));
            }
            let default = ip(&["-n", &host.netns, "route", "show", "default"])?;
            if !default.trim().is_empty() {
                return Err(format!("the namespace {} has a default route: {}", host.netns, default.trim()));
            }
            let targets = self.hosts.iter().map(|h| h.address).chain([self.gateway]);
            for target in targets {
                let route = ip(&["-n", &host.netns, "route", "get", &target.to_string()])?;
                let own = target == host.address;
                if !(dev(&route, "eth0") || own && dev(&route, "lo")) {
                    return Err(format!(
                        "from {} ({}), packets for {target} would go: {}",
                        host.netns,
                        host.id,
                        route.trim()
                    ));
                }
            }
        }
        Ok(())
    }

    pub(crate) fn get(&self, id: HostId) -> &Host {
        self.hosts.iter().find(|h| h.id == id).unwrap_or_else(|| panic!("this cluster has no host {id}"))
    }

    /// Drops every packet from `from` that arrives at `to` (the rule lives in `to`'s namespace).
    fn drop_arriving(&self, from: HostId, to: HostId) -> Result<(), String> {
        let (from, to) = (self.get(from), self.get(to));
        nft_in(&to.netns, &format!("add rule inet {NFT_TABLE} in ip saddr {} drop\n", from.address))
    }

    /// Removes every fault rule on every host; tries them all, reports the failures.
    fn heal(&self) -> Result<(), String> {
        let errors: Vec<String> = self
            .hosts
            .iter()
            .filter_map(|h| nft_in(&h.netns, &format!("flush chain inet {NFT_TABLE} in\n")).err())
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

impl Drop for Hosts {
    /// Removes the namespaces (killing what still runs in them), the links and the bridge; never
    /// panics.
    fn drop(&mut self) {
        for host in &self.hosts {
            delete_namespace(&host.netns);
            // The kernel removes a veth with its namespace, in the background: do not wait.
            let _ = ip(&["link", "delete", &host.veth]);
        }
        let _ = ip(&["link", "delete", &self.bridge]);
    }
}

/// The network faults and facts of a cluster on hosts.
impl Cluster {
    fn hosts_or_panic(&self) -> &Hosts {
        self.hosts.as_ref().expect("this cluster does not run on hosts: start it with ClusterOptions::on_hosts")
    }

    /// Whether the cluster runs on hosts (network namespaces).
    pub fn on_hosts(&self) -> bool {
        self.hosts.is_some()
    }

    /// Every host of the cluster: nodes, supervisors, etcd members.
    pub fn host_ids(&self) -> Vec<HostId> {
        self.hosts.as_ref().map_or_else(Vec::new, |h| h.hosts.iter().map(|h| h.id).collect())
    }

    /// Host `id` (namespace and address). Panics when the cluster does not run on hosts.
    pub fn host(&self, id: HostId) -> &Host {
        self.hosts_or_panic().get(id)
    }

    /// The address packets from the harness (and the torture clients) come from.
    pub fn bridge_address(&self) -> Ipv4Addr {
        self.hosts_or_panic().gateway
    }

    /// Cuts the link between hosts `a` and `b`: neither receives anything from the other.
    /// Every other path, and the harness's, stays open. Healed by [`Cluster::heal_network`].
    pub fn cut_link(&self, a: HostId, b: HostId) -> Result<(), String> {
        let hosts = self.hosts_or_panic();
        hosts.drop_arriving(a, b)?;
        hosts.drop_arriving(b, a)
    }

    /// Loses every packet from `from` to `to`, one way: `to` still reaches `from` (and its
    /// packets arrive, while `from`'s answers do not). Healed by [`Cluster::heal_network`].
    pub fn lose_one_way(&self, from: HostId, to: HostId) -> Result<(), String> {
        self.hosts_or_panic().drop_arriving(from, to)
    }

    /// Cuts host `a` off from every other host of the cluster (the harness still reaches it).
    pub fn isolate_host(&self, a: HostId) -> Result<(), String> {
        for b in self.host_ids().into_iter().filter(|&b| b != a) {
            self.cut_link(a, b)?;
        }
        Ok(())
    }

    /// Removes every cut and loss: the network is whole again.
    pub fn heal_network(&self) -> Result<(), String> {
        self.hosts_or_panic().heal()
    }
}

/// Removes what test processes that died left of their hosts. Runs once per process.
pub(crate) fn reap_abandoned_once() {
    static ONCE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        if !crate::pg::running_as_root() {
            return;
        }
        if let Ok(lock) = MachineLock::take() {
            reap_abandoned(&lock);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_ours_carry_their_owner_pid() {
        assert_eq!(owner_pid("rmwt123-0"), Some(123));
        assert_eq!(owner_pid("rmwt123-0-node1"), Some(123));
        // A veth carries no pid; setup.sh's names are not ours.
        assert_eq!(owner_pid("rmwt5v11"), None);
        assert_eq!(owner_pid("rmw-node0"), None);
        assert_eq!(owner_pid("rmw-br0"), None);
        assert_eq!(owner_pid("rmwtx-1"), None);
    }

    #[test]
    fn hosts_of_each_kind_get_their_own_addresses() {
        let ids = [HostId::Node(0), HostId::Node(2), HostId::Supervisor(1), HostId::Etcd(0)];
        let octets: Vec<u8> = ids.iter().map(|h| h.octet()).collect();
        assert_eq!(octets, [11, 13, 22, 31]);
        assert_eq!(HostId::Supervisor(1).name(), "sup1");
    }
}
