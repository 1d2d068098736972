//! The supervisor's program: parses the options, installs the metrics recorder and serves the
//! [`supervisor`] library's router (see `lib.rs` for the modules).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use supervisor::api::router;
use supervisor::run::{Settings, Supervisor};
use supervisor::store::StoreSpec;
use supervisor::METRICS;

/// Installs the process-wide metrics recorder (durations in seconds).
fn install_metrics() -> anyhow::Result<()> {
    let seconds = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0];
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()), &seconds)?
        .install_recorder()?;
    let _ = METRICS.set(handle);
    supervisor::metrics::describe();
    Ok(())
}

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Watches the agents of the cluster, elects leaders and recovers returning nodes",
    after_help = protocol::config_file::PRECEDENCE_HELP
)]
struct Args {
    /// A TOML file of options (`poll-interval-ms = 200`, ...; docs/examples/supervisor.toml);
    /// the environment and the flags override it.
    #[arg(long, env = "SUPERVISOR_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to serve the supervisor's HTTP interface on.
    #[arg(long, env = "SUPERVISOR_LISTEN", default_value = "127.0.0.1:9000")]
    listen: String,
    /// Every agent's address (host:port), comma-separated, in configured order: the order
    /// round-robin elections follow. Once an operator adds or removes a node
    /// (`POST /members/add`, `/members/remove`), the list kept in the store replaces it.
    #[arg(
        long,
        env = "SUPERVISOR_AGENTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:8000,127.0.0.1:8001,127.0.0.1:8002"
    )]
    agents: Vec<String>,
    /// Where the configuration (term, leader, members, registered clients) is kept: `file`
    /// (the default: --state-file, one supervisor) or
    /// `etcd://host:port,host:port,...[/prefix]`, shared by an active supervisor and standbys
    /// (default prefix /rmw/default; one prefix per cluster).
    #[arg(long, env = "SUPERVISOR_STORE", default_value = "file", value_name = "file|etcd://...")]
    store: StoreSpec,
    /// With `--store file`: the state file (written atomically, fsynced). A restarted
    /// supervisor continues from it.
    #[arg(long, env = "SUPERVISOR_STATE_FILE", default_value = "supervisor-state.json")]
    state_file: PathBuf,
    /// This supervisor's address as agents, clients and the other supervisors reach it
    /// (default: --listen). With etcd, the active one is named by it.
    #[arg(long, env = "SUPERVISOR_ADVERTISE")]
    advertise: Option<String>,
    /// With etcd: the TTL of the active supervisor's lease, in seconds. A standby takes over
    /// within about this long after the active one dies.
    #[arg(long, env = "SUPERVISOR_LEASE_TTL_S", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=60))]
    lease_ttl_s: u64,
    /// Tests only: act as if holding the lease, so that two supervisors act at once (the
    /// configuration's revision alone then keeps them from both winning a term).
    #[arg(long, hide = true)]
    act_without_lease: bool,
    /// How often every agent is polled, in milliseconds.
    #[arg(long, env = "SUPERVISOR_POLL_INTERVAL_MS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(10..))]
    poll_interval_ms: u64,
    /// Consecutive missed polls after which an agent counts as down.
    #[arg(long, env = "SUPERVISOR_MISSES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    misses: u32,
    /// The durability floor: the member set never shrinks below this many nodes, so that
    /// every acknowledged commit is on at least this many disks (give the agents the same
    /// `--min-copies`). 1 lets the set shrink to the leader alone.
    #[arg(long, env = "SUPERVISOR_MIN_COPIES", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    min_copies: u32,
    /// A file holding the cluster token. When set (or CLUSTER_TOKEN is), every call to an
    /// agent carries it, and /report_failure and /register_client/ require it.
    #[arg(long, env = "SUPERVISOR_CLUSTER_TOKEN_FILE")]
    cluster_token_file: Option<PathBuf>,
    /// The cluster token itself (prefer --cluster-token-file: environments leak).
    #[arg(long, env = "CLUSTER_TOKEN", hide_env_values = true)]
    cluster_token: Option<String>,
    /// The supervisor's TLS certificate (PEM). With --tls-key and --tls-ca it serves HTTPS
    /// only and calls the agents and clients over HTTPS.
    #[arg(long, env = "SUPERVISOR_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM; keep it 0600).
    #[arg(long, env = "SUPERVISOR_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// The cluster's CA certificate (PEM): the only one trusted for the other programs.
    #[arg(long, env = "SUPERVISOR_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Mutual TLS: /report_failure and /register_client/ also need a client certificate from
    /// --tls-ca (the operator's endpoints take the token alone).
    #[arg(long, env = "SUPERVISOR_TLS_CLIENT_AUTH", value_parser = clap::builder::BoolishValueParser::new())]
    tls_client_auth: bool,
    /// Write the logs as JSON, one object per line, instead of text (`LOG_JSON=1` too).
    #[arg(long, env = "LOG_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    log_json: bool,
}

/// Logs to stdout, filtered by `RUST_LOG` (default `info`): text, or JSON lines.
fn init_logs(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if json {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
        tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Flags, then the environment, then the --config file, then the defaults.
    let args: Args = protocol::config_file::parse();
    init_logs(args.log_json);
    install_metrics().context("installing the metrics recorder")?;
    let agents: Vec<String> = args.agents.iter().map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).collect();
    anyhow::ensure!(!agents.is_empty(), "--agents is empty: give at least one agent address");
    anyhow::ensure!(
        args.min_copies as usize <= agents.len(),
        "--min-copies {} asks for more copies than there are agents ({})",
        args.min_copies,
        agents.len()
    );

    let token = protocol::auth::resolve_token(args.cluster_token_file.as_deref(), args.cluster_token.as_deref())?;
    let tls = service::TlsOptions {
        cert: args.tls_cert.clone(),
        key: args.tls_key.clone(),
        ca: args.tls_ca.clone(),
        client_auth: args.tls_client_auth,
    }
    .load_for_server("the supervisor")?;
    let settings = Settings {
        token,
        agents,
        poll_interval: Duration::from_millis(args.poll_interval_ms),
        misses: args.misses,
        min_copies: args.min_copies as usize,
        store: args.store,
        state_file: args.state_file,
        advertise: args.advertise.unwrap_or_else(|| args.listen.clone()),
        lease_ttl: Duration::from_secs(args.lease_ttl_s),
        act_without_lease: args.act_without_lease,
        tls: tls.clone(),
    };
    let supervisor = Supervisor::new(settings).await?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (is the port taken?)", args.listen))?;
    tracing::info!(listen = %args.listen, tls = tls.is_some(), "supervisor serving");
    tokio::spawn(supervisor.clone().run());
    service::serve(listener, router(supervisor.clone()), tls.as_ref(), service::shutdown_signal())
        .await
        .context("the HTTP server failed")?;
    supervisor.resign().await;
    tracing::info!("supervisor stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, protocol::config_file::Error> {
        protocol::config_file::try_parse_from(std::iter::once("supervisor").chain(args.iter().copied()))
    }

    #[test]
    fn the_example_file_is_valid_and_flags_override_it() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/examples/supervisor.toml");
        let args = parse(&["--config", example]).unwrap();
        assert_eq!(args.listen, "127.0.0.1:9000");
        assert_eq!(args.agents, ["127.0.0.1:8000", "127.0.0.1:8001", "127.0.0.1:8002"]);
        assert_eq!((args.poll_interval_ms, args.misses), (200, 3));
        let args = parse(&["--config", example, "--misses", "5"]).unwrap();
        assert_eq!((args.poll_interval_ms, args.misses), (200, 5));
    }

    #[test]
    fn the_options_the_example_file_only_mentions_are_real() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/examples/supervisor.toml");
        let args: Args =
            protocol::config_file::try_parse_example_with_commented_options(["supervisor"], example.as_ref()).unwrap();
        assert_eq!(args.tls_ca.as_deref(), Some(std::path::Path::new("data/tls/ca.pem")));
        assert!(args.tls_client_auth);
    }

    #[test]
    fn invalid_values_are_refused_naming_the_option() {
        for (flag, value) in [("--poll-interval-ms", "5"), ("--misses", "0"), ("--misses", "three")] {
            let err = parse(&[flag, value]).unwrap_err().to_string();
            assert!(err.contains(flag), "{flag} {value}: {err}");
        }
    }
}
