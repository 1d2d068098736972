//! The client: runs transactions typed in the transaction language (`r(1)w(2=22)`) against the
//! cluster, from the command line or from a small web page, and shows the cluster's status.

mod run;
mod status;
mod web;

#[cfg(test)]
mod fake_agent;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use uuid::Uuid;

use crate::run::{Runner, EXIT_UNAVAILABLE, EXIT_USAGE};

#[derive(Debug, Parser)]
#[command(version, about = "Runs transactions against the replicated cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one transaction, e.g. `client run 'r(1)w(2=22)'`.
    ///
    /// Reads the read set, then commits the writes with the read's timestamp. Exit code: 0
    /// committed (or read), 1 aborted, 2 bad input, 3 cluster unavailable.
    Run {
        /// The transaction: reads `r(account)` and writes `w(account=balance)`.
        transaction: String,
        /// The agent to send it to (host:port); a non-leader redirects to the leader.
        #[arg(long, env = "CLIENT_AGENT", default_value = "127.0.0.1:8000")]
        agent: String,
        /// The transaction id, to retry a commit whose outcome is unknown (default: a fresh one).
        #[arg(long)]
        txn_id: Option<Uuid>,
    },
    /// Show the cluster's nodes as the supervisor sees them.
    Status {
        /// The supervisor's address (host:port).
        #[arg(long, env = "CLIENT_SUPERVISOR", default_value = "127.0.0.1:9000")]
        supervisor: String,
    },
    /// Serve the web page (`/create/`) to type transactions into.
    Serve {
        /// Address to serve the page on.
        #[arg(long, env = "CLIENT_LISTEN", default_value = "127.0.0.1:5000")]
        listen: String,
        /// The agent to send transactions to (host:port).
        #[arg(long, env = "CLIENT_AGENT", default_value = "127.0.0.1:8000")]
        agent: String,
        /// The supervisor to register with (host:port), which then tells this client every new
        /// leader at `/leader_changed/`.
        #[arg(long, env = "CLIENT_SUPERVISOR", default_value = "127.0.0.1:9000")]
        supervisor: String,
        /// This client's address as the supervisor reaches it (default: --listen).
        #[arg(long, env = "CLIENT_ADVERTISE")]
        advertise: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(EXIT_USAGE) } else { ExitCode::SUCCESS };
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
            Command::Run { transaction, agent, txn_id } => run(&agent, &transaction, txn_id).await,
            Command::Status { supervisor } => status(&supervisor).await,
            Command::Serve { listen, agent, supervisor, advertise } => {
                match serve(&listen, &agent, &supervisor, advertise).await {
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

async fn run(agent: &str, transaction: &str, txn_id: Option<Uuid>) -> ExitCode {
    let runner = match Runner::new() {
        Ok(runner) => runner,
        Err(e) => {
            eprintln!("error: cannot set up the HTTP client: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    match runner.run(agent, transaction, txn_id).await {
        Ok(report) => {
            print!("{}", report.to_text());
            ExitCode::from(report.exit_code())
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn status(supervisor: &str) -> ExitCode {
    match status::fetch(supervisor).await {
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

async fn serve(listen: &str, agent: &str, supervisor: &str, advertise: Option<String>) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        // Colours only on a terminal: setup.sh sends the logs to files.
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let state = web::AppState::new(agent, Runner::new()?);
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let url = format!("http://{}/leader_changed/", advertise.as_deref().unwrap_or(listen));
    tokio::spawn(register(supervisor.to_string(), url, state.clone()));
    tracing::info!(%listen, %agent, "client web page serving at http://{listen}/create/");
    axum::serve(listener, web::app(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("the HTTP server failed")?;
    tracing::info!("client stopped");
    Ok(())
}

/// Registers with the supervisor, retrying until it answers (it may start after us), and
/// adopts the leader it reports.
async fn register(supervisor: String, url: String, state: web::AppState) {
    let http = reqwest::Client::new();
    let mut pause = std::time::Duration::from_millis(200);
    loop {
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
                    *state.agent.write().unwrap_or_else(|p| p.into_inner()) = leader.to_string();
                }
                tracing::info!(%supervisor, %url, "registered with the supervisor");
                return;
            }
            Ok(resp) => tracing::warn!(%supervisor, status = %resp.status(), "the supervisor refused the registration"),
            Err(e) => tracing::debug!(%supervisor, error = %e, "supervisor not reachable yet"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(5));
    }
}

/// Resolves on Ctrl-C or SIGTERM (what `./setup.sh stop` sends).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
