//! The processes a benchmark run starts: PostgreSQL servers (initdb once, copied per server),
//! standbys made with `pg_basebackup -R`, and our agents and supervisor. Everything is stopped
//! by `Drop`, also when the run fails or is interrupted.
//!
//! `initdb` refuses to run as root: then every PostgreSQL program runs as the `postgres` OS user
//! (`runuser -u postgres --`) and the data folders belong to it. The run's folder
//! (`/tmp/rmw-bench-<pid>`) is open for that user to traverse.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Prefix of the run's folder under the temp dir: `rmw-bench-<pid>`.
const DIR_PREFIX: &str = "rmw-bench-";

/// Settings every server gets. `fsync` stays on everywhere: durability is what is compared.
const COMMON_CONF: &str = "
# rmw bench
listen_addresses = '127.0.0.1'
fsync = on
synchronous_commit = on
max_connections = 100
shared_buffers = 128MB
";

pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The folder holding `initdb`, `pg_ctl`, `pg_basebackup`, `psql` and `pgbench`.
pub fn find_bindir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("RMW_PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
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
        return Ok(bin);
    }
    match Command::new("pg_config").arg("--bindir").output() {
        Ok(out) if out.status.success() => Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())),
        _ => bail!(
            "PostgreSQL not found: install it (Debian: apt-get install postgresql) or set RMW_PG_BINDIR \
             to the folder holding initdb, pg_ctl and pgbench"
        ),
    }
}

/// Free TCP ports on 127.0.0.1, all different, below the kernel's ephemeral range (see
/// `e2e::free_port`).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    Ok((0..n).map(|_| e2e::free_port()).collect())
}

pub fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

/// The last `lines` lines of a file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Whether process `pid` exists, is no zombie, and its command line mentions `name`.
pub fn process_runs(pid: i32, name: &str) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let zombie = fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next().map(|s| s == "Z")))
        .unwrap_or(false);
    String::from_utf8_lossy(&cmdline).contains(name) && !zombie
}

/// The run's folder, and where PostgreSQL's programs are. Removed on drop unless `keep` is set
/// (then only the data folders go and the logs stay).
pub struct Workspace {
    pub root: PathBuf,
    pub logs: PathBuf,
    pub bindir: PathBuf,
    template: Option<PathBuf>,
    pub keep_logs: bool,
    /// Every server's password (scram-sha-256, as `./setup.sh` sets them up, so that the
    /// figures include what a real install pays), random per run.
    password: String,
    /// [`Workspace::password`] in a 0600 file, for the agents' `--database-password-file`.
    pub password_file: PathBuf,
}

impl Workspace {
    pub fn create(bindir: PathBuf) -> Result<Workspace> {
        reap_abandoned(&bindir);
        let root = std::env::temp_dir().join(format!("{DIR_PREFIX}{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
        // The postgres user must traverse it (and the temp dir above it, which it can).
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755))?;
        let logs = root.join("logs");
        fs::create_dir_all(&logs)?;
        fs::set_permissions(&logs, fs::Permissions::from_mode(0o755))?;
        give_to_postgres(&logs)?;
        let mut random = [0u8; 16];
        std::io::Read::read_exact(&mut fs::File::open("/dev/urandom")?, &mut random)?;
        let password: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let password_file = root.join("pg.password");
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&password_file)?;
            f.write_all(password.as_bytes())?;
        }
        Ok(Workspace { root, logs, bindir, template: None, keep_logs: false, password, password_file })
    }

    /// A command running PostgreSQL's program `name`, as the `postgres` user when we are root.
    pub fn pg_command(&self, name: &str) -> Command {
        let bin = self.bindir.join(name);
        let mut cmd = if running_as_root() {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(bin);
            cmd
        } else {
            Command::new(bin)
        };
        // The postgres user may not be allowed into the caller's working folder.
        cmd.current_dir(&self.root).stdin(Stdio::null()).env("PGPASSWORD", &self.password);
        cmd
    }

    /// The same as [`Workspace::pg_command`], for tokio (long runs such as pgbench).
    pub fn pg_command_async(&self, name: &str) -> tokio::process::Command {
        tokio::process::Command::from(self.pg_command(name))
    }

    pub fn run_pg(&self, name: &str, args: &[&str]) -> Result<String> {
        let out = self.pg_command(name).args(args).output().with_context(|| format!("run {name}"))?;
        if !out.status.success() {
            bail!("{name} {} failed: {}", args.join(" "), describe(&out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A folder for files the postgres user writes (pgbench scripts and logs).
    pub fn pg_writable_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.root.join(name);
        fs::create_dir_all(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        give_to_postgres(&dir)?;
        Ok(dir)
    }

    /// One `initdb` per run; every server starts as a copy of it.
    fn template(&mut self) -> Result<PathBuf> {
        if let Some(t) = &self.template {
            return Ok(t.clone());
        }
        let dir = self.root.join("template");
        fs::create_dir_all(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        give_to_postgres(&dir)?;
        let d = dir.to_str().context("non-UTF-8 temp path")?;
        // initdb reads the password from a copy the postgres user can open (not our 0600 file,
        // nor a pipe of ours), removed as soon as initdb is done.
        let pwfile = self.root.join("initdb-password");
        fs::copy(&self.password_file, &pwfile).context("copy the password for initdb")?;
        give_to_postgres(&pwfile)?;
        let pwfile_arg = format!("--pwfile={}", pwfile.display());
        let made = self.run_pg(
            "initdb",
            &["-D", d, "-U", "postgres", "--auth=scram-sha-256", &pwfile_arg, "-E", "UTF8", "--locale=C", "--no-sync"],
        );
        let _ = fs::remove_file(&pwfile);
        made.context("initdb")?;
        append(&dir.join("postgresql.conf"), COMMON_CONF)?;
        self.template = Some(dir.clone());
        Ok(dir)
    }

    /// A new, stopped server `name` on `port` with `extra` settings appended to its configuration.
    pub fn new_server(&mut self, name: &str, port: u16, extra: &str) -> Result<PgServer> {
        let template = self.template()?;
        let dir = self.root.join(name);
        let out = Command::new("cp").arg("-a").arg(&template).arg(&dir).output().context("run cp")?;
        if !out.status.success() {
            bail!("cp -a {} {}: {}", template.display(), dir.display(), describe(&out));
        }
        append(
            &dir.join("postgresql.conf"),
            &format!("port = {port}\nunix_socket_directories = '{}'\n{extra}\n", dir.display()),
        )?;
        Ok(PgServer::new(name, dir, port, self.logs.join(format!("{name}.log"))))
    }

    /// A standby of `primary` made with `pg_basebackup -R`, connecting with `application_name`
    /// = `name`, on `port`; stopped.
    pub fn new_standby(&mut self, primary: &PgServer, name: &str, port: u16) -> Result<PgServer> {
        let dir = self.root.join(name);
        fs::create_dir_all(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        give_to_postgres(&dir)?;
        let d = dir.to_str().context("non-UTF-8 temp path")?;
        let conninfo = format!(
            "host=127.0.0.1 port={} user=postgres password={} application_name={name}",
            primary.port, self.password
        );
        self.run_pg("pg_basebackup", &["-D", d, "-d", &conninfo, "-R", "-X", "stream", "-c", "fast", "--no-sync"])
            .with_context(|| format!("pg_basebackup for {name}"))?;
        // -R wrote primary_conninfo from the connection; say the application name once more, as the
        // synchronous standby names depend on it.
        append(
            &dir.join("postgresql.conf"),
            &format!("port = {port}\nunix_socket_directories = '{}'\nprimary_conninfo = '{conninfo}'\n", dir.display()),
        )?;
        Ok(PgServer::new(name, dir, port, self.logs.join(format!("{name}.log"))))
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if self.keep_logs {
            if let Ok(entries) = fs::read_dir(&self.root) {
                for e in entries.filter_map(|e| e.ok()) {
                    let path = e.path();
                    if path == self.logs {
                        continue;
                    }
                    if path.is_dir() {
                        let _ = fs::remove_dir_all(&path);
                    } else {
                        let _ = fs::remove_file(&path);
                    }
                }
            }
        } else {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

fn give_to_postgres(path: &Path) -> Result<()> {
    if !running_as_root() {
        return Ok(());
    }
    let out = Command::new("chown").args(["-R", "postgres:postgres"]).arg(path).output().context("run chown")?;
    if !out.status.success() {
        bail!("chown -R postgres {}: {}", path.display(), describe(&out));
    }
    Ok(())
}

fn append(file: &Path, text: &str) -> Result<()> {
    let mut f = fs::OpenOptions::new().append(true).open(file).with_context(|| format!("open {}", file.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// One PostgreSQL server. Stopped (immediately) on drop.
pub struct PgServer {
    pub name: String,
    pub dir: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    bindir: PathBuf,
    started: bool,
}

impl PgServer {
    fn new(name: &str, dir: PathBuf, port: u16, log: PathBuf) -> PgServer {
        PgServer { name: name.into(), dir, port, log, bindir: PathBuf::new(), started: false }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn start(&mut self, ws: &Workspace) -> Result<()> {
        self.bindir = ws.bindir.clone();
        let (d, l) = (self.dir.to_str().context("path")?, self.log.to_str().context("path")?);
        let result = ws.run_pg("pg_ctl", &["-D", d, "-l", l, "-w", "-t", "60", "start"]);
        self.started = true;
        result.with_context(|| {
            format!("starting PostgreSQL {}; its log ends with:\n{}", self.name, tail(&self.log, 20))
        })?;
        Ok(())
    }

    /// Runs SQL with psql and returns what it printed (unaligned, tuples only).
    pub fn psql(&self, ws: &Workspace, sql: &str) -> Result<String> {
        let port = self.port.to_string();
        ws.run_pg(
            "psql",
            &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-Atc", sql],
        )
        .with_context(|| format!("psql on {}", self.name))
    }

    /// The postmaster's pid, while it runs.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.dir.join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        process_runs(pid, "postgres").then_some(pid)
    }

    /// Stops the server at once. Never fails: it also runs from `Drop`.
    pub fn stop(&mut self) {
        if !self.started {
            return;
        }
        self.started = false;
        stop_immediate(&self.bindir, &self.dir);
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn stop_immediate(bindir: &Path, dir: &Path) {
    let postmaster = fs::read_to_string(dir.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
        .filter(|&pid| process_runs(pid, "postgres"));
    let Some(pid) = postmaster else {
        return;
    };
    let bin = bindir.join("pg_ctl");
    let mut cmd = if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    let _ = cmd
        .current_dir("/")
        .arg("-D")
        .arg(dir)
        .args(["-m", "immediate", "-w", "-t", "30", "stop"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if process_runs(pid, "postgres") {
        // SAFETY: a signal to a pid we checked is a PostgreSQL server of this run.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Stops what an earlier run that died without cleaning up left behind, and removes its folder.
fn reap_abandoned(bindir: &Path) {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = entry.path();
        for file in fs::read_dir(&dir).into_iter().flatten().filter_map(|e| e.ok()) {
            let path = file.path();
            if path.join("postmaster.pid").exists() {
                stop_immediate(bindir, &path);
            }
        }
        for file in fs::read_dir(dir.join("logs")).into_iter().flatten().filter_map(|e| e.ok()) {
            let path = file.path();
            if path.extension().is_some_and(|e| e == "pid") {
                if let Some(pid) = fs::read_to_string(&path).ok().and_then(|t| t.trim().parse::<i32>().ok()) {
                    if process_runs(pid, "agent") || process_runs(pid, "supervisor") {
                        // SAFETY: the pid file was written by an earlier run for its own agent or
                        // supervisor, and the command line was checked above.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
}

/// An agent or the supervisor: its program, flags and log. Killed on drop.
pub struct Daemon {
    pub name: String,
    bin: PathBuf,
    args: Vec<String>,
    pub log: PathBuf,
    pid_file: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    pub fn new(ws: &Workspace, name: &str, bin: PathBuf, args: Vec<String>) -> Daemon {
        Daemon {
            name: name.into(),
            bin,
            args,
            log: ws.logs.join(format!("{name}.log")),
            pid_file: ws.logs.join(format!("{name}.pid")),
            child: None,
        }
    }

    pub fn spawn(&mut self) -> Result<()> {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let err = log.try_clone()?;
        let level = std::env::var("BENCH_LOG").unwrap_or_else(|_| "info".into());
        let child = Command::new(&self.bin)
            .args(&self.args)
            .env("RUST_LOG", level)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            // Its own process group: a Ctrl-C at the terminal reaches only the benchmark, which
            // then stops everything in order.
            .process_group(0)
            .spawn()
            .with_context(|| format!("start {}", self.bin.display()))?;
        fs::write(&self.pid_file, child.id().to_string())?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Whether it has exited, with how.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.as_mut()?.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = fs::remove_file(&self.pid_file);
        }
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log, 20)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `check` returns `Ok(Some(_))`, polling every `every`, at most `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, every: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() > timeout {
            match last_err {
                Some(e) => bail!("timed out after {timeout:?} waiting for {what}; last error: {e:#}"),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(every).await;
    }
}
