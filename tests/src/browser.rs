//! A real browser for end-to-end tests of the client's pages: headless Chromium driven over
//! WebDriver (`chromedriver`, from Debian's `chromium-driver`), and a real `client serve`
//! process to point it at.
//!
//! ```no_run
//! # async fn example() {
//! use e2e::browser::{Browser, ClientProcess};
//! use e2e::{Cluster, ClusterOptions};
//!
//! let c = Cluster::start_with(ClusterOptions::supervised(3)).await;
//! let client = ClientProcess::start(&c.node(0).address(), &c.supervisor_address()).await;
//! let browser = Browser::start().await;
//! browser.goto(&client.url("/create/")).await;
//! browser.screenshot("form").await; // target/test-output/browser/form.png
//! browser.close().await;
//! # }
//! ```
//!
//! Guarantees:
//! - Nothing outlives the test: chromedriver runs in a process group of its own, with the
//!   Chromium processes it starts, and the whole group gets SIGKILL when the [`Browser`] is
//!   dropped (after [`Browser::close`] ended the session politely, or on a panic); the client
//!   process gets SIGKILL on drop. Their temporary folders are removed.
//! - Every wait is bounded and panics with what it last saw.
//!
//! Environment: `RMW_CHROMEDRIVER` and `RMW_CHROMIUM` (default: `chromedriver` and `chromium`
//! from `PATH`), `RMW_BIN_DIR` for the `client` binary (as for the other binaries).

use std::fs;
use std::future::Future;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::error::CmdError;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::free_port;

/// How long the browser waits for something to appear on a page. A failover plus the page's
/// 500 ms poll fits well within it.
pub const PAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Viewport of the screenshots: wide enough for the tables, tall enough for a whole page.
const WINDOW: (u32, u32) = (1280, 1800);
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A temporary folder removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("rmw-{what}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("RMW_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// The last `lines` lines of a log file.
fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn program(env: &str, name: &str) -> String {
    std::env::var(env).unwrap_or_else(|_| name.to_string())
}

/// Where the workspace's `client` binary is: `RMW_BIN_DIR`, else the profile folder this test
/// was built into (`target/debug/deps/<test>` -> `target/debug`). For the command-line tests
/// too.
pub fn client_binary() -> PathBuf {
    if let Some(dir) = std::env::var_os("RMW_BIN_DIR") {
        return PathBuf::from(dir).join("client");
    }
    let exe = std::env::current_exe().expect("the test's own path");
    let profile = exe.parent().and_then(Path::parent).expect("the test runs from target/<profile>/deps");
    let path = profile.join("client");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p client` before the browser tests, or set RMW_BIN_DIR",
        path.display()
    );
    path
}

/// Where screenshots go: `target/test-output/browser/`.
pub fn output_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let target = exe.ancestors().nth(3).expect("the test runs from target/<profile>/deps");
    let dir = target.join("test-output").join("browser");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Polls until `check` returns `Some`, for at most `timeout`; panics with `what` and the last
/// thing `check` said otherwise.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(e) => e,
        };
        if Instant::now() > deadline {
            panic!("{what}: not within {timeout:?}; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Headless Chromium under chromedriver, with one WebDriver session.
pub struct Browser {
    session: Option<Client>,
    driver: Child,
    driver_log: PathBuf,
    _dir: TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and opens a session in a fresh Chromium profile.
    pub async fn start() -> Browser {
        let dir = TempDir::new("browser");
        let port = free_port();
        let driver_log = dir.0.join("chromedriver.log");
        let log = fs::File::create(&driver_log).expect("create the chromedriver log");
        let err = log.try_clone().expect("clone the log file handle");
        let chromedriver = program("RMW_CHROMEDRIVER", "chromedriver");
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            // A group of its own: Drop kills chromedriver and every Chromium process with it.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "start {chromedriver}: {e} (install Debian's chromium and chromium-driver: ./setup.sh test does)"
                )
            });
        let mut browser = Browser { session: None, driver, driver_log, _dir: dir };

        let url = format!("http://127.0.0.1:{port}");
        let profile = browser._dir.0.join("profile");
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": which(&program("RMW_CHROMIUM", "chromium")),
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-sync", "--disable-component-update",
                    "--disable-quic", "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.display()),
                    format!("--window-size={},{}", WINDOW.0, WINDOW.1),
                ],
            }
        });
        let capabilities = match capabilities {
            Value::Object(map) => map,
            _ => unreachable!("a JSON object literal"),
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let session = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector).capabilities(capabilities.clone()).connect(&url).await {
                Ok(session) => break session,
                Err(e) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = browser.driver.try_wait() {
                        panic!("chromedriver exited ({status}):\n{}", tail(&browser.driver_log, 30));
                    }
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    panic!("no WebDriver session within {STARTUP_TIMEOUT:?}: {e}\n{}", tail(&browser.driver_log, 30))
                }
            }
        };
        browser.session = Some(session);
        browser
    }

    pub fn session(&self) -> &Client {
        self.session.as_ref().expect("the session is open until close()")
    }

    fn fail(&self, what: &str, e: impl std::fmt::Display) -> ! {
        panic!("browser: {what}: {e}\nchromedriver log:\n{}", tail(&self.driver_log, 20))
    }

    pub async fn goto(&self, url: &str) {
        if let Err(e) = self.session().goto(url).await {
            self.fail(&format!("open {url}"), e);
        }
    }

    /// Runs `script` (a function body; `return` gives the result) in the page.
    pub async fn js(&self, script: &str) -> Value {
        match self.session().execute(script, vec![]).await {
            Ok(value) => value,
            Err(e) => self.fail(&format!("run {script:?}"), e),
        }
    }

    /// The text of the first element matching `css`, or `None` if there is none.
    pub async fn text(&self, css: &str) -> Option<String> {
        let script = format!("const e = document.querySelector({}); return e ? e.textContent : null;", json!(css));
        self.js(&script).await.as_str().map(|s| s.trim().to_string())
    }

    /// Waits until an element matching `css` exists and its text satisfies `wanted`; returns
    /// the text.
    pub async fn wait_text(&self, css: &str, wanted: impl Fn(&str) -> bool) -> String {
        eventually(&format!("the text of {css}"), PAGE_TIMEOUT, || async {
            match self.text(css).await {
                Some(text) if wanted(&text) => Ok(text),
                Some(text) => Err(format!("{text:?}")),
                None => Err("no such element".into()),
            }
        })
        .await
    }

    /// Replaces the text of the input `css` with `text`.
    pub async fn type_into(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        if let Err(e) = field.clear().await {
            self.fail(&format!("clear {css}"), e);
        }
        if let Err(e) = field.send_keys(text).await {
            self.fail(&format!("type into {css}"), e);
        }
    }

    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        match self.session().find(Locator::Css(css)).await {
            Ok(element) => element,
            Err(e) => self.fail(&format!("find {css}"), e),
        }
    }

    /// Clicks the element matching `css`. The cluster page swaps its live part in place, so an
    /// element found a moment ago may be gone: find it again and retry.
    pub async fn click(&self, css: &str) {
        eventually(&format!("click {css}"), Duration::from_secs(5), || async {
            let element = self.session().find(Locator::Css(css)).await.map_err(|e| e.to_string())?;
            match element.click().await {
                Ok(()) => Ok(()),
                Err(CmdError::Standard(e)) if e.error == fantoccini::error::ErrorStatus::StaleElementReference => {
                    Err("stale element".into())
                }
                Err(e) => Err(e.to_string()),
            }
        })
        .await
    }

    /// Accepts the confirmation dialog that is open (or opens within a moment); returns its text.
    pub async fn accept_dialog(&self) -> String {
        let text = eventually("a dialog", Duration::from_secs(5), || async {
            self.session().get_alert_text().await.map_err(|e| e.to_string())
        })
        .await;
        if let Err(e) = self.session().accept_alert().await {
            self.fail("accept the dialog", e);
        }
        text
    }

    /// Saves a PNG of the viewport to `target/test-output/browser/<name>.png`; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = match self.session().screenshot().await {
            Ok(png) => png,
            Err(e) => self.fail("take a screenshot", e),
        };
        let path = output_dir().join(format!("{name}.png"));
        fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// Ends the session (chromedriver then quits Chromium); the processes are killed on drop
    /// in any case.
    pub async fn close(mut self) {
        if let Some(session) = self.session.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), session.close()).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: the group is the one chromedriver leads; its pid is our child, not yet reaped,
        // so the id cannot have been reused.
        unsafe {
            libc::kill(-(self.driver.id() as i32), libc::SIGKILL);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `name`'s full path if it is on `PATH`, else `name` as given (chromedriver then reports it).
fn which(name: &str) -> String {
    if name.contains('/') {
        return name.to_string();
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file()))
        .map_or_else(|| name.to_string(), |p| p.display().to_string())
}

/// A `client serve` process on a free port, registered with the cluster's supervisor.
pub struct ClientProcess {
    pub port: u16,
    binary: PathBuf,
    child: Child,
    log: PathBuf,
    _dir: TempDir,
}

impl ClientProcess {
    /// Starts `client serve` sending transactions to `agent` first, registered with
    /// `supervisor`, and waits until its `/health` answers and the supervisor lists it.
    pub async fn start(agent: &str, supervisor: &str) -> ClientProcess {
        let dir = TempDir::new("client");
        let port = free_port();
        let log = dir.0.join("client.log");
        let out = fs::File::create(&log).expect("create the client log");
        let err = out.try_clone().expect("clone the log file handle");
        let binary = client_binary();
        let child = Command::new(&binary)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--agent", agent, "--supervisor", supervisor])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let client = ClientProcess { port, binary, child, log, _dir: dir };
        let http = reqwest::Client::new();
        let health = client.url("/health");
        let registered = format!("http://127.0.0.1:{port}/leader_changed/");
        let status = format!("http://{supervisor}/status");
        eventually("the client to serve and register with the supervisor", STARTUP_TIMEOUT, || async {
            let ok = http.get(&health).send().await.map_err(|e| e.to_string())?.status();
            if !ok.is_success() {
                return Err(format!("/health answered {ok}"));
            }
            let s: Value =
                http.get(&status).send().await.map_err(|e| e.to_string())?.json().await.map_err(|e| e.to_string())?;
            let clients = s["clients"].as_array().cloned().unwrap_or_default();
            if clients.iter().any(|c| c.as_str() == Some(registered.as_str())) {
                Ok(())
            } else {
                Err(format!("the supervisor lists the clients {clients:?}"))
            }
        })
        .await;
        client
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The `client` binary this process runs, for `client run` and `client status`.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    pub fn log(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("client log:\n{}", self.log(30));
        }
    }
}
