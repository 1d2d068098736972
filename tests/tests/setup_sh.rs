//! Pieces of `setup.sh` that decide what to install, run alone (`./setup.sh check-rust`,
//! `./setup.sh browser-plan`) in a controlled environment: a fake `cargo` on `PATH` printing a
//! chosen version, a fake `/etc/os-release`. Nothing is installed and no cluster is started.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn setup_sh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../setup.sh")
}

/// A folder of its own under the temp dir, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        // The tests run in parallel: a folder per call.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("rmw-setup-sh-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The system's own folders, without any that holds a real cargo (rustup's is under $HOME).
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/sbin:/sbin:/bin";

/// `./setup.sh check-rust` with `cargo --version` printing `version_line` (or no cargo at all).
fn check_rust(version_line: Option<&str>) -> Output {
    let scratch = Scratch::new("cargo");
    let bin = scratch.0.join("bin");
    std::fs::create_dir_all(&bin).expect("make bin/");
    if let Some(line) = version_line {
        let cargo = bin.join("cargo");
        std::fs::write(&cargo, format!("#!/bin/sh\necho '{line}'\n")).expect("write the fake cargo");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cargo, std::fs::Permissions::from_mode(0o755)).expect("chmod the fake cargo");
    }
    // /usr/bin holds bash, sed and awk; a cargo there would be the system's (Debian's rust),
    // which this test cannot hide: say so instead of testing the wrong thing.
    assert!(!Path::new("/usr/bin/cargo").exists() || version_line.is_some(), "/usr/bin/cargo exists");
    Command::new("bash")
        .arg(setup_sh())
        .arg("check-rust")
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:{SYSTEM_PATH}", bin.display()))
        // No ~/.cargo/bin to fall back on.
        .env("HOME", &scratch.0)
        .output()
        .expect("run setup.sh check-rust")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// The workspace's `rust-version`, as Cargo.toml says.
fn required() -> String {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml")).expect("read Cargo.toml");
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("Cargo.toml has a rust-version")
        .to_string()
}

#[test]
fn a_recent_cargo_passes() {
    for line in ["cargo 1.95.0 (f2d3ce0bd 2026-03-21)", "cargo 1.100.2 (abc 2030-01-01)", "cargo 2.0.0 (x)"] {
        let out = check_rust(Some(line));
        assert!(out.status.success(), "{line}: {}", text(&out));
        assert!(text(&out).contains(&format!("needs {} or newer", required())), "{}", text(&out));
    }
}

#[test]
fn the_required_version_itself_passes() {
    let line = format!("cargo {}.0 (abc 2025-06-26)", required());
    let out = check_rust(Some(&line));
    assert!(out.status.success(), "{line}: {}", text(&out));
}

#[test]
fn an_older_cargo_fails_and_says_why() {
    let required = required();
    let (major, minor) = required.split_once('.').expect("rust-version is major.minor");
    let older = format!("{major}.{}.9", minor.parse::<u32>().expect("a number") - 1);
    for line in [format!("cargo {older} (abc 2024-01-01)"), "cargo 1.63.0 (Debian 1.63.0)".to_string()] {
        let out = check_rust(Some(&line));
        assert_eq!(out.status.code(), Some(1), "{line}: {}", text(&out));
        assert!(text(&out).contains(&format!("older than the workspace's rust-version {required}")), "{}", text(&out));
    }
}

#[test]
fn a_nightly_is_read_by_its_version() {
    let out = check_rust(Some("cargo 1.96.0-nightly (5d4c2e5a8 2026-03-30)"));
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn no_cargo_or_an_unreadable_version_fails() {
    let out = check_rust(None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("cargo not found"), "{}", text(&out));
    let out = check_rust(Some("something else entirely"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("cannot read the version"), "{}", text(&out));
}

/// `./setup.sh browser-plan` for a machine whose /etc/os-release says `os_release`.
fn browser_plan(os_release: &str) -> String {
    let scratch = Scratch::new("os-release");
    let file = scratch.0.join("os-release");
    std::fs::write(&file, os_release).expect("write the fake os-release");
    let out = Command::new("bash")
        .arg(setup_sh())
        .arg("browser-plan")
        .env("RMW_OS_RELEASE", &file)
        .output()
        .expect("run setup.sh browser-plan");
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn the_browser_packages_follow_the_distribution() {
    let debian = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n";
    let ubuntu = "NAME=\"Ubuntu\"\nVERSION_ID=\"24.04\"\nID=ubuntu\nID_LIKE=debian\n";
    let mint = "NAME=\"Linux Mint\"\nID=linuxmint\nID_LIKE=\"ubuntu debian\"\nVERSION_ID=\"22\"\n";
    let raspbian = "ID=raspbian\nID_LIKE=debian\nVERSION_ID=\"12\"\n";
    let fedora = "NAME=\"Fedora Linux\"\nID=fedora\nVERSION_ID=40\n";
    assert_eq!(browser_plan(debian), "debian");
    // Ubuntu's own chromium packages are snap stubs: Debian's packages from the xtradeb PPA.
    assert_eq!(browser_plan(ubuntu), "ubuntu-ppa");
    assert_eq!(browser_plan(mint), "ubuntu-ppa");
    assert_eq!(browser_plan(raspbian), "debian");
    assert_eq!(browser_plan(fedora), "none");
    assert_eq!(browser_plan(""), "none");
}
