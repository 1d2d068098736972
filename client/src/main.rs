//! The client's program: parses the options and runs `client run`, `status`, `serve` or an
//! operator command (`switchover`, `pause`, `resume`, `member add|remove`, `rebuild`) with the
//! [`client`] library (see `lib.rs` for the modules).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use uuid::Uuid;

use client::operator::{self, Operation, Progress};
use client::run::{ReadFrom, RunError, RunOptions, Runner, EXIT_ABORT, EXIT_UNAVAILABLE, EXIT_USAGE};
use client::{metrics, status, web};

/// What every operator command's `--help` says about its exit code.
const OPERATOR_EXIT_CODES: &str = "Exit code: 0 done, 1 refused (the supervisor says why), 2 bad input (an unknown \
node, an unreadable token file, a missing or wrong token), 3 no active supervisor answered.";
/// The same for `member add` and `rebuild`, which wait for the node.
const RECOVERY_EXIT_CODES: &str = "Exit code: 0 the node is a member, 1 refused (the supervisor says why) or the \
node diverged, 2 bad input (not an address, an unreadable token file, a missing or wrong token), 3 no active \
supervisor answered, or the node was not a member within --wait-secs (the supervisor goes on: watch `client \
status`).";
/// How often a waiting command reads the supervisor's status.
const PROGRESS_POLL: Duration = Duration::from_millis(500);

/// Where an operator command sends its request, and with which token. Global, so that
/// `client member --supervisor X add Y` and `client member add Y --supervisor X` both work.
#[derive(Debug, clap::Args)]
struct OperatorArgs {
    /// The supervisor (host:port, or several comma-separated with standby supervisors: the
    /// active one acts, a standby answers 503 and the next is asked).
    #[arg(long, env = "CLIENT_SUPERVISOR", default_value = "127.0.0.1:9000", global = true)]
    supervisor: String,
    /// A file holding the cluster token: the supervisor's operator endpoints need it when the
    /// cluster has one (see setup.sh).
    #[arg(long, env = "CLIENT_CLUSTER_TOKEN_FILE", global = true)]
    cluster_token_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
enum MemberCommand {
    /// Add a node to the cluster: the supervisor starts watching it, replays the leader's log
    /// onto it and makes it a member; waits (up to --wait-secs) until it is one, printing its
    /// progress.
    #[command(after_help = RECOVERY_EXIT_CODES)]
    Add {
        /// The node's agent (host:port), as the supervisor will reach it.
        addr: String,
        /// How long to wait for it to be a member (0: do not wait).
        #[arg(long, env = "CLIENT_WAIT_SECS", default_value_t = 60.0)]
        wait_secs: f64,
    },
    /// Take a member out of the member set and the supervisor's node list (never the leader,
    /// never below the durability floor): it is never recovered or elected again unless added
    /// back.
    #[command(after_help = OPERATOR_EXIT_CODES)]
    Remove {
        /// The member: its node id (`node2`, as `client status` shows) or its address.
        node: String,
    },
}

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
    /// The cluster's CA certificate (PEM): call the cluster over HTTPS, trusting this CA only.
    #[arg(long, global = true, env = "CLIENT_TLS_CA", value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// This client's certificate (PEM): `serve` serves HTTPS with it, and every call presents it
    /// (agents and supervisors run with --tls-client-auth want one on their internal endpoints).
    #[arg(long, global = true, env = "CLIENT_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM; keep it 0600).
    #[arg(long, global = true, env = "CLIENT_TLS_KEY", value_name = "FILE")]
    tls_key: Option<std::path::PathBuf>,
    /// Mutual TLS for `serve`: /leader_changed/ also needs a client certificate from --tls-ca.
    #[arg(long, global = true, env = "CLIENT_TLS_CLIENT_AUTH", value_parser = clap::builder::BoolishValueParser::new())]
    tls_client_auth: bool,
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
        /// A file holding a client API key (its first line), sent with the read and the
        /// commit: agents run with --api-keys need one (a write key to commit).
        #[arg(long, env = "CLIENT_API_KEY_FILE", value_name = "FILE")]
        api_key_file: Option<std::path::PathBuf>,
    },
    /// Show the cluster's nodes as the supervisor sees them, the last failover and recoveries,
    /// whether automatic failover is paused, and the supervisor's latest events.
    ///
    /// Exit code: 0 shown, 3 the supervisor could not be reached (with --watch: 0 on Ctrl-C; an
    /// unreachable supervisor is printed and asked again).
    Status {
        /// The supervisor's address (host:port, or several comma-separated: the active one
        /// answers).
        #[arg(long, env = "CLIENT_SUPERVISOR", default_value = "127.0.0.1:9000")]
        supervisor: String,
        /// Print the supervisor's status as JSON (pretty-printed, fields in a fixed order)
        /// instead of the table.
        #[arg(long)]
        json: bool,
        /// Show it again every --interval-ms until Ctrl-C: on a terminal the screen is redrawn,
        /// otherwise each refresh is a block under a line with its time.
        #[arg(long)]
        watch: bool,
        /// How often --watch refreshes, in milliseconds (100 to 3600000).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
        interval_ms: u64,
    },
    /// Move the leadership to another member in sync (a planned switchover): the leader's
    /// commits pause while the target catches up, then the target leads in a new term.
    #[command(after_help = OPERATOR_EXIT_CODES)]
    Switchover {
        /// The member to lead: its node id (`node1`, as `client status` shows) or its address.
        #[arg(long, value_name = "NODE")]
        to: String,
        #[command(flatten)]
        operator: OperatorArgs,
    },
    /// Turn automatic failover and recovery off (maintenance): the supervisor elects no new
    /// leader and recovers no node by itself until `client resume`.
    #[command(after_help = OPERATOR_EXIT_CODES)]
    Pause {
        #[command(flatten)]
        operator: OperatorArgs,
    },
    /// Turn automatic failover and recovery back on.
    #[command(after_help = OPERATOR_EXIT_CODES)]
    Resume {
        #[command(flatten)]
        operator: OperatorArgs,
    },
    /// Add a node to the cluster, or remove a member (`client member add ADDR`, `client member
    /// remove NODE`).
    Member {
        #[command(subcommand)]
        command: MemberCommand,
        #[command(flatten)]
        operator: OperatorArgs,
    },
    /// Rebuild a node that is not a member: the supervisor has its database EMPTIED, then
    /// replays the leader's whole log onto it and makes it a member (for a diverged node).
    /// Waits (up to --wait-secs) until it is a member, printing its progress.
    #[command(after_help = RECOVERY_EXIT_CODES)]
    Rebuild {
        /// The node: its node id (`node2`) or its address (a node that does not answer has no id
        /// the supervisor knows: give its address).
        node: String,
        /// How long to wait for it to be a member (0: do not wait).
        #[arg(long, env = "CLIENT_WAIT_SECS", default_value_t = 60.0)]
        wait_secs: f64,
        #[command(flatten)]
        operator: OperatorArgs,
    },
    /// Make a local CA and a TLS certificate per program, for a cluster on hosts you control
    /// (what `RMW_TLS=1 ./setup.sh` runs). Writes DIR/ca.pem, DIR/ca-key.pem and, per
    /// program, DIR/NAME.pem and DIR/NAME-key.pem (keys mode 0600); existing files are replaced.
    ///
    /// Each PROGRAM is NAME=ADDRESS[,ADDRESS...]: the addresses (IP addresses or DNS names)
    /// the program is reached at, e.g. `agent0=127.0.0.1 supervisor=127.0.0.1,localhost`. Each
    /// certificate serves as its program's server and client certificate. Exit code: 0 written,
    /// 2 bad input or not written.
    Certs {
        /// Where to write the files (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: std::path::PathBuf,
        /// How long the certificates are valid, in days (1 to 3650).
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u64).range(1..=3650))]
        days: u64,
        /// The programs, as NAME=ADDRESS[,ADDRESS...].
        #[arg(required = true, value_name = "PROGRAM")]
        programs: Vec<String>,
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
        /// A file holding a client API key, sent with the form's transactions when the visitor
        /// gives none in the form: agents run with --api-keys need one.
        #[arg(long, env = "CLIENT_API_KEY_FILE", value_name = "FILE")]
        api_key_file: Option<std::path::PathBuf>,
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
    let tls = match (service::TlsOptions {
        cert: cli.tls_cert.clone(),
        key: cli.tls_key.clone(),
        ca: cli.tls_ca.clone(),
        client_auth: cli.tls_client_auth,
    })
    .load()
    {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if client::net::init(tls.clone()).is_err() {
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Run { transaction, agent, supervisor, read_from, txn_id, wait_secs, api_key_file } => {
                let Some(wait) = wait(wait_secs) else {
                    eprintln!("error: --wait-secs must be a number of seconds from 0 to 3600");
                    return ExitCode::from(EXIT_USAGE);
                };
                let api_key = match api_key_file.as_deref().map(load_api_key).transpose() {
                    Ok(key) => key,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(EXIT_USAGE);
                    }
                };
                let read_from = read_from.map_or(ReadFrom::Leader, |node| ReadFrom::Nodes(vec![node]));
                let options = RunOptions { txn_id, read_from };
                run(&agent, &supervisor, &transaction, options, wait, api_key.as_deref()).await
            }
            Command::Status { supervisor, json, watch, interval_ms } => {
                let every = Duration::from_millis(interval_ms);
                if watch {
                    watch_status(&supervisor, json, every).await
                } else {
                    status(&supervisor, json).await
                }
            }
            Command::Switchover { to, operator } => operate(operator, Operation::Switchover { to }, None).await,
            Command::Pause { operator } => operate(operator, Operation::Pause, None).await,
            Command::Resume { operator } => operate(operator, Operation::Resume, None).await,
            Command::Member { command: MemberCommand::Add { addr, wait_secs }, operator } => {
                let Some(wait) = wait(wait_secs) else {
                    eprintln!("error: --wait-secs must be a number of seconds from 0 to 3600");
                    return ExitCode::from(EXIT_USAGE);
                };
                operate(operator, Operation::AddMember { node: addr }, Some(wait)).await
            }
            Command::Member { command: MemberCommand::Remove { node }, operator } => {
                operate(operator, Operation::RemoveMember { node }, None).await
            }
            Command::Rebuild { node, wait_secs, operator } => {
                let Some(wait) = wait(wait_secs) else {
                    eprintln!("error: --wait-secs must be a number of seconds from 0 to 3600");
                    return ExitCode::from(EXIT_USAGE);
                };
                operate(operator, Operation::Rebuild { node }, Some(wait)).await
            }
            Command::Certs { dir, days, programs } => certs(&dir, days, &programs),
            Command::Serve {
                listen,
                agent,
                supervisor,
                advertise,
                cluster_token_file,
                api_key_file,
                wait_secs,
                log_json,
            } => {
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
                let api_key = match api_key_file.as_deref().map(load_api_key).transpose() {
                    Ok(key) => key,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(EXIT_USAGE);
                    }
                };
                init_logs(log_json);
                if tls.as_ref().is_some_and(|t| t.server_config().is_none()) {
                    eprintln!("error: client serve with TLS needs --tls-cert and --tls-key as well as --tls-ca");
                    return ExitCode::from(EXIT_USAGE);
                }
                match serve(&listen, &agent, &supervisor, advertise, token, api_key, wait).await {
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

/// `client certs`: a local CA and a certificate per `NAME=ADDRESS[,ADDRESS...]`.
fn certs(dir: &std::path::Path, days: u64, programs: &[String]) -> ExitCode {
    let mut parsed: Vec<(&str, Vec<&str>)> = Vec::new();
    for program in programs {
        let Some((name, addresses)) = program.split_once('=') else {
            eprintln!("error: {program:?} is not NAME=ADDRESS[,ADDRESS...]");
            return ExitCode::from(EXIT_USAGE);
        };
        let addresses: Vec<&str> = addresses.split(',').map(str::trim).filter(|a| !a.is_empty()).collect();
        parsed.push((name.trim(), addresses));
    }
    let programs: Vec<(&str, &[&str])> = parsed.iter().map(|(name, addresses)| (*name, addresses.as_slice())).collect();
    match service::generate_local_pki(dir, &programs, Duration::from_secs(days * 24 * 3600)) {
        Ok(pki) => {
            println!("CA certificate: {} (its key: {}, mode 0600)", pki.ca.display(), pki.ca_key.display());
            for files in &pki.programs {
                println!("{}: {} and {}", files.stem, files.cert.display(), files.key.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// A client API key from `--api-key-file`: its first line, which must be able to travel in a
/// header (the agents' keys are ASCII letters, digits, '-', '_' and '.').
fn load_api_key(path: &std::path::Path) -> anyhow::Result<String> {
    let file = protocol::secrets::load_secret_file(path, "API key")?;
    if !protocol::api_keys::is_key_text(&file.secret) {
        anyhow::bail!(
            "the API key in {} has characters other than ASCII letters, digits, '-', '_' and '.'",
            path.display()
        );
    }
    Ok(file.secret)
}

async fn run(
    agent: &str,
    supervisor: &str,
    transaction: &str,
    options: RunOptions,
    wait: Duration,
    api_key: Option<&str>,
) -> ExitCode {
    let runner = match Runner::new() {
        Ok(runner) => runner.with_supervisor(Some(supervisor)).with_follow_budget(wait).with_api_key(api_key),
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
            if matches!(&e, RunError::Rejected(client::run::Rejection::NotAllowed { .. })) {
                eprintln!("give a client API key with --api-key-file (a write key to commit)");
            }
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

async fn status(supervisor: &str, json: bool) -> ExitCode {
    let http = match client::net::builder(None).and_then(|b| Ok(b.build()?)) {
        Ok(http) => http,
        Err(e) => {
            eprintln!("error: cannot set up the HTTP client: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    match status::fetch(&http, supervisor).await {
        Ok(cluster) => {
            print!("{}", if json { status::to_json(&cluster) } else { status::render(&cluster) });
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

/// `client status --watch`: the status again every `every` until Ctrl-C (or SIGTERM); a
/// supervisor that does not answer is said so, and asked again.
async fn watch_status(supervisor: &str, json: bool, every: Duration) -> ExitCode {
    let http = match client::net::builder(None).and_then(|b| Ok(b.build()?)) {
        Ok(http) => http,
        Err(e) => {
            eprintln!("error: cannot set up the HTTP client: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let terminal = std::io::stdout().is_terminal();
    let stop = service::shutdown_signal();
    tokio::pin!(stop);
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return ExitCode::SUCCESS,
            _ = ticks.tick() => {}
        }
        let block = tokio::select! {
            _ = &mut stop => return ExitCode::SUCCESS,
            fetched = status::fetch(&http, supervisor) => fetched
                .map(|c| if json { status::to_json(&c) } else { status::render(&c) })
                .map_err(|e| e.to_string()),
        };
        print!("{}", status::watch_frame(now_ms(), every, &block, terminal));
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    }
}

/// The wall clock in Unix milliseconds.
fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// An operator command: names the node by its address (a node id is looked up in the
/// supervisor's status), sends the request, prints the supervisor's answer, and for `member
/// add` and `rebuild` waits up to `wait` for the node to be a member.
async fn operate(args: OperatorArgs, operation: Operation, wait: Option<Duration>) -> ExitCode {
    let token = match args.cluster_token_file.as_deref().map(protocol::auth::load_token).transpose() {
        Ok(token) => token,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let http = match client::net::builder(token.as_deref()).and_then(|b| Ok(b.build()?)) {
        Ok(http) => http,
        Err(e) => {
            eprintln!("error: cannot set up the HTTP client: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let operation = match operation.node().map(str::to_string) {
        None => operation,
        // A new node is named by its address: the supervisor does not know it yet.
        Some(node) if matches!(operation, Operation::AddMember { .. }) => {
            if !operator::is_address(&node) {
                eprintln!("error: {}", operator::NodeNameError::NotAnAddress { given: node });
                return ExitCode::from(EXIT_USAGE);
            }
            operation
        }
        Some(node) if operator::is_address(&node) => operation,
        Some(node) => {
            let cluster = match status::fetch(&http, &args.supervisor).await {
                Ok(cluster) => cluster,
                Err(e) => {
                    eprintln!("error: cannot look up {node}: {e}");
                    return ExitCode::from(EXIT_UNAVAILABLE);
                }
            };
            match operator::resolve_node(&cluster, &node) {
                Ok(address) => {
                    println!("{node} is {address}");
                    operation.on(address)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            }
        }
    };
    let what = match operation.node() {
        Some(node) => format!("{} {node}", operation.name().replace('_', " ")),
        None => operation.name().to_string(),
    };
    // Recoveries the supervisor reports from here on count as this one's (with a margin for
    // clocks that differ a little).
    let since_ms = now_ms().saturating_sub(5_000);
    let answer = match operator::send(&http, &args.supervisor, &operation).await {
        Ok(answer) => answer,
        Err(e) => {
            eprintln!("error: {what}: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    println!("{what}: {}", answer.message);
    match (operation.node(), wait) {
        (Some(node), Some(wait)) if operation.ends_with_a_recovery() && !wait.is_zero() => {
            wait_for_member(&http, &answer.supervisor, node, since_ms, wait).await
        }
        _ => ExitCode::SUCCESS,
    }
}

/// Prints where `node` stands each time it changes, until it is a member (0), it diverged (1),
/// or `wait` is over (3).
async fn wait_for_member(
    http: &reqwest::Client,
    supervisor: &str,
    node: &str,
    since_ms: u64,
    wait: Duration,
) -> ExitCode {
    let deadline = tokio::time::Instant::now() + wait;
    let mut last = String::new();
    loop {
        let line = match status::fetch(http, supervisor).await {
            Ok(cluster) => {
                let progress = operator::progress(&cluster, node, since_ms);
                let line = progress.describe(node);
                match progress {
                    Progress::Member { .. } => {
                        println!("{line}");
                        return ExitCode::SUCCESS;
                    }
                    Progress::Diverged => {
                        eprintln!("error: {line}");
                        return ExitCode::from(EXIT_ABORT);
                    }
                    _ => line,
                }
            }
            Err(e) => format!("cannot read the supervisor's status: {e} (retrying)"),
        };
        if line != last {
            println!("{line}");
            last = line;
        }
        if tokio::time::Instant::now() + PROGRESS_POLL > deadline {
            eprintln!(
                "error: {node} is not a member after {:.0} s; the supervisor goes on: watch `client status`",
                wait.as_secs_f64()
            );
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
        tokio::time::sleep(PROGRESS_POLL).await;
    }
}

async fn serve(
    listen: &str,
    agent: &str,
    supervisor: &str,
    advertise: Option<String>,
    token: Option<String>,
    api_key: Option<String>,
    wait: Duration,
) -> anyhow::Result<()> {
    // Only here: the one-shot commands have nobody to scrape them.
    let metrics = metrics::install().context("installing the metrics recorder")?;
    let runner =
        Runner::new()?.with_supervisor(Some(supervisor)).with_follow_budget(wait).with_api_key(api_key.as_deref());
    let state = web::AppState::new(agent, runner)?.with_token(token.as_deref())?.with_metrics(metrics)?;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let url = format!("{}/leader_changed/", client::net::base_url(advertise.as_deref().unwrap_or(listen)));
    if !supervisor.trim().is_empty() {
        tokio::spawn(register(supervisor.to_string(), url, state.clone(), token.clone()));
    }
    // The cluster page's plots: the leader's metrics, once a second, for as long as we serve.
    tokio::spawn(web::sampler::run(state.clone()));
    let pages = client::net::base_url(listen);
    tracing::info!(%listen, %agent, %supervisor, "client web pages at {pages}/create/ and {pages}/cluster/");
    service::serve(listener, web::app(state), client::net::tls(), service::shutdown_signal())
        .await
        .context("the HTTP server failed")?;
    tracing::info!("client stopped");
    Ok(())
}

/// Registers with the supervisor, retrying until it answers (it may start after us), and
/// adopts the leader it reports.
async fn register(supervisor: String, url: String, state: web::AppState, token: Option<String>) {
    let http = match client::net::builder(token.as_deref()).and_then(|builder| Ok(builder.build()?)) {
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
                .post(format!("{}/register_client/", client::net::base_url(supervisor)))
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
        assert!(matches!(cli.command, Command::Status { supervisor, .. } if supervisor == "127.0.0.1:9000"));
        let cli = parse(&["run", "r(1)", "--config", EXAMPLE, "--wait-secs", "2"]).unwrap();
        assert!(matches!(cli.command, Command::Run { wait_secs, .. } if wait_secs == 2.0));
    }

    #[test]
    fn the_options_the_example_file_only_mentions_are_real() {
        let cli: Cli =
            protocol::config_file::try_parse_example_with_commented_options(["client", "serve"], EXAMPLE.as_ref())
                .unwrap();
        assert_eq!(cli.tls_ca.as_deref(), Some(std::path::Path::new("data/tls/ca.pem")));
        let Command::Serve { api_key_file, advertise, .. } = cli.command else { panic!("not serve") };
        assert!(api_key_file.is_some() && advertise.is_some());
    }

    #[test]
    fn the_operator_commands_take_the_supervisor_and_the_token_file_from_flags_and_the_file() {
        let cli = parse(&["pause", "--config", EXAMPLE]).unwrap();
        let Command::Pause { operator } = cli.command else { panic!() };
        assert_eq!(operator.supervisor, "127.0.0.1:9000");
        assert_eq!(operator.cluster_token_file.as_deref(), Some(std::path::Path::new("data/cluster-token")));
        let cli = parse(&["switchover", "--to", "node1", "--supervisor", "s:1"]).unwrap();
        assert!(
            matches!(cli.command, Command::Switchover { to, operator } if to == "node1" && operator.supervisor == "s:1")
        );
        // The member commands take the options before or after `add`/`remove`, and the file's.
        for args in [
            &["member", "add", "h:8003", "--supervisor", "s:1", "--wait-secs", "5"][..],
            &["member", "--supervisor", "s:1", "add", "h:8003", "--wait-secs", "5"][..],
        ] {
            let cli = parse(args).unwrap();
            let Command::Member { command: MemberCommand::Add { addr, wait_secs }, operator } = cli.command else {
                panic!()
            };
            assert_eq!((addr.as_str(), wait_secs, operator.supervisor.as_str()), ("h:8003", 5.0, "s:1"));
        }
        let cli = parse(&["member", "remove", "node2", "--config", EXAMPLE]).unwrap();
        let Command::Member { command: MemberCommand::Remove { node }, operator } = cli.command else { panic!() };
        assert_eq!((node.as_str(), operator.cluster_token_file.is_some()), ("node2", true));
        let cli = parse(&["rebuild", "node2"]).unwrap();
        assert!(matches!(cli.command, Command::Rebuild { wait_secs, .. } if wait_secs == 60.0));
        assert!(parse(&["status", "--watch", "--interval-ms", "5"]).is_err(), "below 100 ms");
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
