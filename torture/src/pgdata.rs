//! A node's PostgreSQL data folder wiped and made again, as an operator replaces a lost disk.
//!
//! The harness makes each node's folder once, at the start, by copying a template that one
//! `initdb` made (`tests/src/pg.rs`: `template()` and `create_data_dir()`, both private to the
//! harness), then appending the node's `port` and `unix_socket_directories` to its
//! `postgresql.conf`. Here the same is done from outside: before the folder is removed its
//! `postgresql.conf` is kept (the template's settings plus the node's own lines), and the new
//! folder is a copy of the harness's template (it lives beside the cluster's folders while this
//! process runs) or, when that cannot be found, of one `initdb` of our own made with the
//! harness's flags; the kept `postgresql.conf` then replaces the copy's. The server log, which
//! the harness keeps inside the data folder, is moved beside it first so that it survives.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// What survives a wipe: the node's configuration.
#[derive(Debug, Clone)]
pub struct Kept {
    pub postgresql_conf: Vec<u8>,
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Removes `data_dir` (PostgreSQL must be stopped), keeping its configuration; its server log
/// goes to `keep_log` first.
pub fn wipe(data_dir: &Path, keep_log: &Path) -> Result<Kept, String> {
    let conf = data_dir.join("postgresql.conf");
    let postgresql_conf = fs::read(&conf).map_err(|e| format!("read {}: {e}", conf.display()))?;
    let log = data_dir.join("server.log");
    if log.exists() {
        fs::rename(&log, keep_log).map_err(|e| format!("move {} aside: {e}", log.display()))?;
    }
    fs::remove_dir_all(data_dir).map_err(|e| format!("remove {}: {e}", data_dir.display()))?;
    Ok(Kept { postgresql_conf })
}

/// Makes `data_dir` again (it must not exist), fresh, with the kept configuration.
pub fn recreate(data_dir: &Path, kept: &Kept) -> Result<(), String> {
    let template = template()?;
    let out = Command::new("cp").arg("-a").arg(&template).arg(data_dir).output().map_err(|e| format!("run cp: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cp -a {} {}: {}",
            template.display(),
            data_dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    // Overwriting keeps the copy's owner (postgres, when we run as root).
    let conf = data_dir.join("postgresql.conf");
    fs::write(&conf, &kept.postgresql_conf).map_err(|e| format!("write {}: {e}", conf.display()))?;
    if running_as_root() {
        let out = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(data_dir)
            .output()
            .map_err(|e| format!("run chown: {e}"))?;
        if !out.status.success() {
            return Err(format!("chown -R postgres {}: {}", data_dir.display(), String::from_utf8_lossy(&out.stderr)));
        }
    }
    Ok(())
}

/// The harness's template folder: `<temp>/rmw-e2e-<our pid>-template` (see `tests/src/pg.rs`).
fn harness_template() -> Option<PathBuf> {
    let dir = std::env::temp_dir().join(format!("rmw-e2e-{}-template", std::process::id()));
    dir.join("PG_VERSION").is_file().then_some(dir)
}

/// A template to copy: the harness's, else one `initdb` of our own (made once, removed by
/// [`cleanup`]).
fn template() -> Result<PathBuf, String> {
    if let Some(t) = harness_template() {
        return Ok(t);
    }
    static OWN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    OWN.get_or_init(own_template).clone()
}

/// The folder holding `initdb`: `RMW_PG_BINDIR`, else the newest under /usr/lib/postgresql,
/// else `pg_config --bindir` (the harness's order).
fn bindir() -> Result<PathBuf, String> {
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
            .max_by_key(|(v, _)| *v)
            .map(|(_, b)| b)
    });
    if let Some(b) = newest {
        return Ok(b);
    }
    match Command::new("pg_config").arg("--bindir").output() {
        Ok(out) if out.status.success() => Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())),
        _ => Err("PostgreSQL's initdb not found (set RMW_PG_BINDIR)".into()),
    }
}

fn own_template() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("rmw-torture-{}-template", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(|e| format!("chmod: {e}"))?;
    }
    let initdb = bindir()?.join("initdb");
    let mut cmd = if running_as_root() {
        let out = Command::new("chown").args(["postgres:postgres"]).arg(&dir).output();
        if !out.is_ok_and(|o| o.status.success()) {
            return Err(format!("chown postgres {}", dir.display()));
        }
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&initdb);
        c
    } else {
        Command::new(&initdb)
    };
    let out = cmd
        .arg("-D")
        .arg(&dir)
        .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"])
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!("initdb -D {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(dir)
}

/// Removes the template of our own, if one was made (call at the end of the run).
pub fn cleanup() {
    let dir = std::env::temp_dir().join(format!("rmw-torture-{}-template", std::process::id()));
    let _ = fs::remove_dir_all(dir);
}
