//! The client's program: parses the options and runs `client run`, `status` or `serve` with
//! the [`client`] library (see `lib.rs` for the modules).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use uuid::Uuid;

use client::run::{ReadFrom, RunError, RunOptions, Runner, EXIT_UNAVAILABLE, EXIT_USAGE};
use client::{metrics, status, web};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Runs transactions against the replicated cluster",
    after_help = protocol::config_file::PRECEDENCE_HELP
)]
struct Cli {
    /// A TOML file of options for the subcommand being run (`supervisor = "host:9000"`, ...;
    /// docs/examples/client.toml); the environment and the flags override it.
    #[arg(long, global = true, env = "CLIENT_CONFIG", value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one transaction, e.g. `client run 'r(1)w(2=22)'`.
    ///
    /// Reads the read set at the leader, then commits the writes with the read's timestamp.
    /// Follows the leader through a failover, waiting at most --wait-secs. Exit code: 0
    /// committed (or read), 1 aborted, 2 bad input, 3 cluster unavailable.
    Run {
        /// The transaction: reads `r(account)` and writes `w(account=balance)`.
        transaction: String,
        /// The agent to start from (host:port); a non-leader redirects to the leader.
        #[arg(long, env = "CLIENT_AGENT", default_value = "127.0.0.1:8000")]
        agent: String,
        /// The supervisor to ask where the leader is when the leader does not answer
        /// (host:port, or several comma-separated with standby supervisors; empty for none).
        #[arg(long, env = "CLIENT_SUPERVISOR", default_value = "127.0.0.1:9000")]
        supervisor: String,
        /// A read-only transaction reads from this node (host:port) instead of the leader.
        #[arg(long, value_name = "ADDR")]
        read_from: Option<String>,
        /// The transaction id, to learn the outcome of a commit whose answer was lost
        /// (default: a fresh one). The same id never commits twice.
        #[arg(long)]
        txn_id: Option<Uuid>,
        /// How long to wait for a leader during a failover before giving up (exit code 3).
        #[arg(long, env = "CLIENT_WAIT_SECS", default_value_t = 10.0)]
        wait_secs: f64,
    },
    /// Show the cluster's nodes as the supervisor sees them, the last failover and recoveries.
    Status {
        /// The supervisor's address (host:port, or several comma-separated: the active one
        /// answers).
        #[arg(long, env = "CLIENT_SUPERVISOR", default_value = "127.0.0.1:9000")]
        supervisor: String,
    },
    /// Serve the web pages: the transaction form at /create/ and the cluster at /cluster/.
    Serve {
        /// Address to serve the pages on. Run several clients on different ports.
        #[arg(long, env = "CLIENT_LISTEN", default_value = "127.0.0.1:5000")]
        listen: String,
        /// The agent to send transactions to first (host:port), until the supervisor names the
        /// leader.
        #[arg(long, env = "CLIENT_AGENT", default_value = "127.0.0.1:8000")]
        agent: String,
        /// The supervisor (host:port, or several comma-separated with standby supervisors): this
        /// client registers with the active one, which then tells it every new leader at
        /// `/leader_changed/`; the cluster page shows its status.
        #[arg(long, env = "CLIENT_SUPERVISOR", default_value = "127.0.0.1:9000")]
        supervisor: String,
        /// This client's address as the supervisor reaches it (default: --listen).
        #[arg(long, env = "CLIENT_ADVERTISE")]
        advertise: Option<String>,
        /// A file holding the cluster token: the drills and the registration with the
        /// supervisor need it when the cluster has one (see setup.sh).
        #[arg(long, env = "CLIENT_CLUSTER_TOKEN_FILE")]
        cluster_token_file: Option<std::path::PathBuf>,
        /// How long a transaction waits for a leader during a failover before the page says
        /// the cluster is unavailable.
        #[arg(long, env = "CLIENT_WAIT_SECS", default_value_t = 10.0)]
        wait_secs: f64,
        /// Write the logs as JSON, one object per line, instead of text (`LOG_JSON=1` too).
        #[arg(long, env = "LOG_JSON", value_parser = clap::builder::BoolishValueParser::new())]
        log_json: bool,
    },
}

fn main() -> ExitCode {
    // Flags, then the environment, then the --config file, then the defaults.
    let cli: Cli = match protocol::config_file::try_parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(protocol::config_file::Error::Clap(e)) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(EXIT_USAGE) } else { ExitCode::SUCCESS };
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Run { transaction, agent, supervisor, read_from, txn_id, wait_secs } => {
                let Some(wait) = wait(wait_secs) else {
                    eprintln!("error: --wait-secs must be a number of seconds from 0 to 3600");
                    return ExitCode::from(EXIT_USAGE);
                };
                let read_from = read_from.map_or(ReadFrom::Leader, |node| ReadFrom::Nodes(vec![node]));
                run(&agent, &supervisor, &transaction, RunOptions { txn_id, read_from }, wait).await
            }
            Command::Status { supervisor } => status(&supervisor).await,
            Command::Serve { listen, agent, supervisor, advertise, cluster_token_file, wait_secs, log_json } => {
                let Some(wait) = wait(wait_secs) else {
                    eprintln!("error: --wait-secs must be a number of seconds from 0 to 3600");
                    return ExitCode::from(EXIT_USAGE);
                };
                let token = match cluster_token_file.as_deref().map(protocol::auth::load_token).transpose() {
                    Ok(token) => token,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(EXIT_USAGE);
                    }
                };
                init_logs(log_json);
                match serve(&listen, &agent, &supervisor, advertise, token, wait).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        ExitCode::FAILURE
                    }
                }
            }
        }
    })
}

/// Logs to stdout, filtered by `RUST_LOG` (default `info`): text, or JSON lines.
fn init_logs(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if json {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        // Colours only on a terminal: setup.sh sends the logs to files.
        tracing_subscriber::fmt().with_env_filter(filter).with_ansi(std::io::stdout().is_terminal()).init();
    }
}

/// `--wait-secs` as a duration, if it is a sensible one.
fn wait(secs: f64) -> Option<Duration> {
    (0.0..=3600.0).contains(&secs).then(|| Duration::from_secs_f64(secs))
}

async fn run(agent: &str, supervisor: &str, transaction: &str, options: RunOptions, wait: Duration) -> ExitCode {
    let runner = match Runner::new() {
        Ok(runner) => runner.with_supervisor(Some(supervisor)).with_follow_budget(wait),
        Err(e) => {
            eprintln!("error: cannot set up the HTTP client: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    match runner.run(agent, transaction, &options).await {
        Ok(report) => {
            print!("{}", report.to_text());
            ExitCode::from(report.exit_code())
        }
        Err(e) => {
            eprintln!("error: {e}");
            if let RunError::Unavailable { unknown_txn: Some(id), .. } = &e {
                eprintln!("to learn the outcome: client run --txn-id {id} {}", shell_quote(transaction));
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// `text` in single quotes for a POSIX shell.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

async fn status(supervisor: &str) -> ExitCode {
    let http = match reqwest::Client::builder().build() {
        Ok(http) => http,
        Err(e) => {
            eprintln!("error: cannot set up the HTTP client: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    match status::fetch(&http, supervisor).await {
        Ok(cluster) => {
            print!("{}", status::render(&cluster));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

async fn serve(
    listen: &str,
    agent: &str,
    supervisor: &str,
    advertise: Option<String>,
    token: Option<String>,
    wait: Duration,
) -> anyhow::Result<()> {
    // Only here: the one-shot commands have nobody to scrape them.
    let metrics = metrics::install().context("installing the metrics recorder")?;
    let runner = Runner::new()?.with_supervisor(Some(supervisor)).with_follow_budget(wait);
    let state = web::AppState::new(agent, runner)?.with_token(token.as_deref())?.with_metrics(metrics)?;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let url = format!("http://{}/leader_changed/", advertise.as_deref().unwrap_or(listen));
    if !supervisor.trim().is_empty() {
        tokio::spawn(register(supervisor.to_string(), url, state.clone(), token.clone()));
    }
    tracing::info!(%listen, %agent, %supervisor, "client web pages at http://{listen}/create/ and http://{listen}/cluster/");
    axum::serve(listener, web::app(state))
        .with_graceful_shutdown(service::shutdown_signal())
        .await
        .context("the HTTP server failed")?;
    tracing::info!("client stopped");
    Ok(())
}

/// Registers with the supervisor, retrying until it answers (it may start after us), and
/// adopts the leader it reports.
async fn register(supervisor: String, url: String, state: web::AppState, token: Option<String>) {
    let http = match service::client_builder(token.as_deref()).and_then(|builder| Ok(builder.build()?)) {
        Ok(http) => http,
        Err(e) => {
            tracing::error!(error = %e, "cannot set up the HTTP client to register with the supervisor");
            return;
        }
    };
    let mut pause = std::time::Duration::from_millis(200);
    loop {
        // With standby supervisors, the active one takes the registration (it is stored where
        // every supervisor reads it); a standby answers 503.
        for supervisor in client::status::supervisors(&supervisor) {
            let sent = http
                .post(format!("http://{supervisor}/register_client/"))
                .json(&protocol::RegisterClient { url: url.clone() })
                .timeout(std::time::Duration::from_secs(2))
                .send()
                .await;
            match sent {
                Ok(resp) if resp.status().is_success() => {
                    let answer: serde_json::Value = resp.json().await.unwrap_or_default();
                    if let Some(leader) = answer.get("leader").and_then(|l| l.as_str()) {
                        state.set_leader(leader);
                    }
                    tracing::info!(%supervisor, %url, "registered with the supervisor");
                    return;
                }
                Ok(resp) => {
                    tracing::warn!(%supervisor, status = %resp.status(), "the supervisor refused the registration")
                }
                Err(e) => tracing::debug!(%supervisor, error = %e, "supervisor not reachable yet"),
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(5));
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, protocol::config_file::Error> {
        protocol::config_file::try_parse_from(std::iter::once("client").chain(args.iter().copied()))
    }

    const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/examples/client.toml");

    #[test]
    fn the_example_file_serves_every_subcommand_and_flags_override_it() {
        let cli = parse(&["serve", "--config", EXAMPLE]).unwrap();
        let Command::Serve { listen, agent, supervisor, wait_secs, log_json, .. } = cli.command else { panic!() };
        assert_eq!(
            (listen.as_str(), agent.as_str(), supervisor.as_str()),
            ("127.0.0.1:5000", "127.0.0.1:8000", "127.0.0.1:9000")
        );
        assert_eq!((wait_secs, log_json), (10.0, false));
        let cli = parse(&["--config", EXAMPLE, "serve", "--listen", "127.0.0.1:5001"]).unwrap();
        let Command::Serve { listen, supervisor, .. } = cli.command else { panic!() };
        assert_eq!((listen.as_str(), supervisor.as_str()), ("127.0.0.1:5001", "127.0.0.1:9000"));
        // `client status` takes only the keys it knows (`listen` is for `serve`).
        let cli = parse(&["status", "--config", EXAMPLE]).unwrap();
        assert!(matches!(cli.command, Command::Status { supervisor } if supervisor == "127.0.0.1:9000"));
        let cli = parse(&["run", "r(1)", "--config", EXAMPLE, "--wait-secs", "2"]).unwrap();
        assert!(matches!(cli.command, Command::Run { wait_secs, .. } if wait_secs == 2.0));
    }

    #[test]
    fn an_unknown_key_is_refused_naming_it() {
        let path = std::env::temp_dir().join(format!("rmw-client-config-{}.toml", std::process::id()));
        std::fs::write(&path, "supervisr = \"x:1\"\n").unwrap();
        let err = parse(&["status", "--config", path.to_str().unwrap()]).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(err.contains("unknown option `supervisr`"), "{err}");
    }
}
