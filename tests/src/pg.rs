//! PostgreSQL servers for the tests: found, initialised once per process, copied per node,
//! started and stopped with `pg_ctl`.
//!
//! `initdb` refuses to run as root, and CI runs the tests as root: then every PostgreSQL command
//! runs as the `postgres` OS user (`runuser`) and the data folders belong to that user.

use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// Prefix of every folder the harness creates under the temp dir: `rmw-e2e-<pid>-<suffix>`.
pub(crate) const DIR_PREFIX: &str = "rmw-e2e-";

/// Settings shared by every node. `fsync` stays on: the tests exercise durability.
const COMMON_CONF: &str = "
# rmw e2e harness
listen_addresses = '127.0.0.1'
max_prepared_transactions = 64
fsync = on
max_connections = 50
shared_buffers = 32MB
";

/// The folder holding `initdb`, `pg_ctl` and `postgres`.
fn bindir() -> &'static Path {
    static BINDIR: OnceLock<PathBuf> = OnceLock::new();
    BINDIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("RMW_PG_BINDIR") {
            return PathBuf::from(dir);
        }
        // The newest installed major version, e.g. /usr/lib/postgresql/15/bin.
        let newest = fs::read_dir("/usr/lib/postgresql").ok().and_then(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let version: u32 = e.file_name().to_str()?.parse().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("initdb").exists().then_some((version, bin))
                })
                .max_by_key(|(version, _)| *version)
                .map(|(_, bin)| bin)
        });
        if let Some(bin) = newest {
            return bin;
        }
        match Command::new("pg_config").arg("--bindir").output() {
            Ok(out) if out.status.success() => PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
            _ => panic!(
                "PostgreSQL not found: install it (Debian: apt-get install postgresql) \
                 or set RMW_PG_BINDIR to the folder holding initdb and pg_ctl"
            ),
        }
    })
}

pub(crate) fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A command running PostgreSQL's binary `name`, as the `postgres` user when we are root.
fn pg_command(name: &str, cwd: &Path) -> Command {
    pg_command_in(name, cwd, None)
}

/// [`pg_command`] inside network namespace `netns`, when given (`ip netns exec <netns> runuser
/// -u postgres -- <name>`: a server started so listens on its host's address).
fn pg_command_in(name: &str, cwd: &Path, netns: Option<&str>) -> Command {
    let bin = bindir().join(name);
    let mut cmd = match (netns, running_as_root()) {
        (Some(ns), _) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns, "runuser", "-u", "postgres", "--"]).arg(bin);
            cmd
        }
        (None, true) => {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(bin);
            cmd
        }
        (None, false) => Command::new(bin),
    };
    // The `postgres` user may not be allowed into the caller's working folder.
    cmd.current_dir(cwd).stdin(Stdio::null());
    cmd
}

fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Makes `path` belong to the `postgres` user when we are root (PostgreSQL insists on owning its
/// data folder).
fn give_to_postgres(path: &Path) {
    if !running_as_root() {
        return;
    }
    let out = Command::new("chown").args(["-R", "postgres:postgres"]).arg(path).output().expect("run chown");
    assert!(out.status.success(), "chown -R postgres {}: {}", path.display(), describe(&out));
}

/// The data folder made by this process's single `initdb`, removed when the process exits.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    extern "C" fn remove_template() {
        if let Some(path) = TEMPLATE.get() {
            let _ = fs::remove_dir_all(path);
        }
    }
    TEMPLATE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}-template", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the template folder");
        // SAFETY: registering a plain function with no captured state; it only removes a folder.
        unsafe { libc::atexit(remove_template) };
        set_mode_0700(&dir);
        give_to_postgres(&dir);
        // Every connection needs the password (scram-sha-256), as on a real install: the agents
        // read it from `password_file()`. initdb reads it from a file the `postgres` user can
        // open (not our 0600 one, nor a pipe of ours), removed as soon as initdb is done.
        let pwfile = std::env::temp_dir().join(format!("{DIR_PREFIX}{}-initdb-password", std::process::id()));
        write_private(&pwfile, password());
        give_to_postgres(&pwfile);
        let out = pg_command("initdb", &std::env::temp_dir())
            .arg("-D")
            .arg(&dir)
            .args(["-U", "postgres", "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output();
        let _ = fs::remove_file(&pwfile);
        let out = out.expect("run initdb");
        assert!(out.status.success(), "initdb -D {} failed: {}", dir.display(), describe(&out));
        append(&dir.join("postgresql.conf"), COMMON_CONF);
        dir
    })
}

/// The PostgreSQL password of every server this process starts (they are copies of one
/// template, so they share it): random per test process.
pub fn password() -> &'static str {
    static PASSWORD: OnceLock<String> = OnceLock::new();
    PASSWORD.get_or_init(|| format!("e2e-{}", uuid::Uuid::new_v4().simple()))
}

/// A 0600 file holding [`password`], for the agents' `--database-password-file`; removed when
/// the process exits.
pub fn password_file() -> &'static Path {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    extern "C" fn remove_password_dir() {
        if let Some(file) = FILE.get().and_then(|f| f.parent()) {
            let _ = fs::remove_dir_all(file);
        }
    }
    FILE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}-secrets", std::process::id()));
        fs::create_dir_all(&dir).expect("create the secrets folder");
        set_mode_0700(&dir);
        // SAFETY: registering a plain function with no captured state; it only removes a folder.
        unsafe { libc::atexit(remove_password_dir) };
        let file = dir.join("pg.password");
        write_private(&file, password());
        file
    })
}

/// Writes `text` to a new file only its owner may read.
fn write_private(file: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = fs::remove_file(file);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .unwrap_or_else(|e| panic!("create {}: {e}", file.display()));
    f.write_all(text.as_bytes()).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
}

fn set_mode_0700(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).expect("chmod 0700");
}

fn append(file: &Path, text: &str) {
    let mut f =
        fs::OpenOptions::new().append(true).open(file).unwrap_or_else(|e| panic!("open {}: {e}", file.display()));
    f.write_all(text.as_bytes()).expect("append to postgresql.conf");
}

/// One node's PostgreSQL server: its data folder, where it listens, and the network namespace
/// of its host (none: 127.0.0.1 in the harness's own namespace).
#[derive(Debug, Clone)]
pub(crate) struct Server {
    pub(crate) dir: PathBuf,
    pub(crate) ip: Ipv4Addr,
    pub(crate) port: u16,
    pub(crate) netns: Option<String>,
}

impl Server {
    /// Creates the data folder (which must not exist) from the template, set up to listen on
    /// `ip:port` with its socket in the folder itself. Used for every node at the start, and
    /// again by `Cluster::recreate_data_dir` for a node whose folder was removed. On a host of
    /// its own it also lets in, with the password, connections from its own address (its
    /// agent's) and from `trusted` (the bridge, whence the harness connects).
    pub(crate) fn create_data_dir(&self, trusted: Option<Ipv4Addr>) {
        let (dir, template) = (&self.dir, template());
        let out = Command::new("cp").arg("-a").arg(template).arg(dir).output().expect("run cp");
        assert!(out.status.success(), "cp -a {} {}: {}", template.display(), dir.display(), describe(&out));
        let mut conf = format!("port = {}\nunix_socket_directories = '{}'\n", self.port, dir.display());
        if self.ip != Ipv4Addr::LOCALHOST {
            conf += &format!("listen_addresses = '{}'\n", self.ip);
            let mut hba =
                format!("# rmw e2e harness: the agent on this host\nhost all all {}/32 scram-sha-256\n", self.ip);
            if let Some(from) = trusted {
                hba +=
                    &format!("# rmw e2e harness: the harness, over the bridge\nhost all all {from}/32 scram-sha-256\n");
            }
            append(&dir.join("pg_hba.conf"), &hba);
        }
        append(&dir.join("postgresql.conf"), &conf);
    }

    /// Starts the server and waits until it accepts connections.
    pub(crate) fn start(&self) {
        start_in(&self.dir, self.netns.as_deref());
    }

    /// What the server holds in `pg_prepared_xacts`, and its sessions that are not idle (in a
    /// transaction, or waiting), or why that could not be read. For post-mortems: a prepared
    /// transaction nobody decides, or a session left idle in a transaction, holds its row locks
    /// forever.
    pub(crate) fn lock_holders(&self) -> String {
        lock_holders(&self.dir, self.ip, self.port, self.netns.as_deref())
    }
}

fn lock_holders(dir: &Path, ip: Ipv4Addr, port: u16, netns: Option<&str>) -> String {
    if postmaster_pid(dir).is_none() {
        return "(PostgreSQL is not running)".into();
    }
    let query = "SELECT 'prepared ' || gid || ' at ' || prepared FROM pg_prepared_xacts \
                 UNION ALL \
                 SELECT 'session ' || pid || ' ' || state || coalesce(' waiting on ' || wait_event_type, '') \
                        || ' since ' || coalesce(xact_start::text, '-') || ': ' || left(query, 100) \
                 FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND state <> 'idle'";
    let out = pg_command_in("psql", dir, netns)
        .args(["-h", &ip.to_string(), "-p", &port.to_string(), "-U", "postgres", "-d", "postgres", "-At", "-c", query])
        .env("PGCONNECT_TIMEOUT", "3")
        .env("PGPASSWORD", password())
        .env("PGOPTIONS", "-c statement_timeout=3000")
        .output();
    match out {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if text.is_empty() {
                "(none)".into()
            } else {
                text
            }
        }
        Ok(out) => format!("(psql failed: {})", describe(&out)),
        Err(e) => format!("(psql: {e})"),
    }
}

/// The server log of the data folder `dir`.
pub(crate) fn server_log(dir: &Path) -> PathBuf {
    dir.join("server.log")
}

/// Starts the server of `dir` (inside network namespace `netns`, when given) and waits until it
/// accepts connections.
fn start_in(dir: &Path, netns: Option<&str>) {
    let out = pg_command_in("pg_ctl", dir, netns)
        .arg("-D")
        .arg(dir)
        .arg("-l")
        .arg(server_log(dir))
        .args(["-w", "-t", "30", "start"])
        .output()
        .expect("run pg_ctl start");
    if !out.status.success() {
        panic!(
            "pg_ctl start -D {} failed: {}\nserver log:\n{}",
            dir.display(),
            describe(&out),
            crate::cluster::tail(&server_log(dir), 30)
        );
    }
}

/// Stops the server of `dir` at once (a crash, as far as PostgreSQL can tell). Does nothing when
/// it does not run. Never panics: it runs from `Drop`.
pub(crate) fn stop_immediate(dir: &Path) {
    let postmaster = postmaster_pid(dir);
    if postmaster.is_none() {
        return;
    }
    let _ = pg_command("pg_ctl", dir)
        .arg("-D")
        .arg(dir)
        .args(["-m", "immediate", "-w", "-t", "30", "stop"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    // If pg_ctl could not do it, kill the postmaster ourselves (its children follow it).
    if let Some(pid) = postmaster {
        if process_runs(pid, "postgres") {
            // SAFETY: sending a signal to a pid we checked is our PostgreSQL server.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// The pid of the running postmaster of `dir`, if any.
fn postmaster_pid(dir: &Path) -> Option<i32> {
    let text = fs::read_to_string(dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    process_runs(pid, "postgres").then_some(pid)
}

/// Whether process `pid` exists and its command line mentions `name` (guards against a reused pid).
pub(crate) fn process_runs(pid: i32, name: &str) -> bool {
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => String::from_utf8_lossy(&cmdline).contains(name) && !is_zombie(pid),
        Err(_) => false,
    }
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after_name = stat.rsplit_once(')')?.1;
            after_name.split_whitespace().next().map(|state| state == "Z")
        })
        .unwrap_or(false)
}

/// Removes what test processes that died without cleaning up left behind: their folders, and
/// the PostgreSQL servers and agents still running from them. Runs once per process.
pub(crate) fn reap_abandoned() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            let dir = entry.path();
            if let Ok(inner) = fs::read_dir(&dir) {
                for file in inner.filter_map(|e| e.ok()) {
                    let path = file.path();
                    if path.join("postmaster.pid").exists() {
                        stop_immediate(&path);
                    }
                    // `agent<i>.pid`, `supervisor<k>.pid` and `etcd<i>.pid`.
                    let is_pid_file = path.extension().is_some_and(|ext| ext == "pid");
                    if is_pid_file {
                        if let Some(pid) = fs::read_to_string(&path).ok().and_then(|t| t.trim().parse::<i32>().ok()) {
                            if ["agent", "supervisor", "etcd"].iter().any(|program| process_runs(pid, program)) {
                                // SAFETY: the pid is a program this harness started (checked above).
                                unsafe { libc::kill(pid, libc::SIGKILL) };
                            }
                        }
                    }
                }
            }
            let _ = fs::remove_dir_all(&dir);
        }
        // And the network namespaces and bridges of their hosts.
        crate::hosts::reap_abandoned_once();
    });
}
