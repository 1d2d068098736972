use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use agent::node::{Node, NodeConfig};
use agent::retention::{Retention, MIN_RETAIN_LOG};
use agent::store::{Store, DEFAULT_POOL_SIZE};
use protocol::ClusterConfig;

/// An agent of the replication middleware: serves reads and commits for one PostgreSQL server
/// and replicates every commit to the other agents with two-phase commit.
#[derive(Parser, Debug)]
#[command(version, after_help = protocol::config_file::PRECEDENCE_HELP)]
struct Args {
    /// A TOML file of options (`peer-timeout-ms = 500`, ...; docs/examples/agent.toml); the
    /// environment and the flags override it.
    #[arg(long, env = "AGENT_CONFIG", value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// This node's name, shown in answers and logs.
    #[arg(long, env = "AGENT_NODE_ID", default_value = "node0")]
    node_id: String,
    /// Address to listen on.
    #[arg(long, env = "AGENT_LISTEN", default_value = "127.0.0.1:8000")]
    listen: String,
    /// This agent's address as the other agents reach it (default: --listen).
    #[arg(long, env = "AGENT_ADVERTISE")]
    advertise: Option<String>,
    /// The local PostgreSQL server.
    #[arg(long, env = "AGENT_DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    database_url: String,
    /// A file holding the PostgreSQL password (its first line; keep it mode 0600). Better than
    /// a password in --database-url, which shows in `ps` and the environment.
    #[arg(long, env = "AGENT_DATABASE_PASSWORD_FILE", value_name = "FILE")]
    database_password_file: Option<std::path::PathBuf>,
    /// Every agent's address in configured order, this one included (comma-separated).
    #[arg(
        long,
        env = "AGENT_MEMBERS",
        value_delimiter = ',',
        default_value = "127.0.0.1:8000,127.0.0.1:8001,127.0.0.1:8002"
    )]
    members: Vec<String>,
    /// The first leader's address. Without --supervisor it stays the leader; with one, it
    /// leads until the supervisor elects another. A configuration stored by an earlier run
    /// (term, leader, members) takes precedence.
    #[arg(long, env = "AGENT_LEADER", default_value = "127.0.0.1:8000")]
    leader: String,
    /// The supervisor's address (`host:port`), or several, comma-separated, when standby
    /// supervisors run (the active one answers). The leader asks it to remove members it cannot
    /// reach; without it the leader is fixed and an unreachable member blocks commits.
    #[arg(long, env = "AGENT_SUPERVISOR")]
    supervisor: Option<String>,
    /// Timeout of every call to another agent, in milliseconds. A member that does not answer
    /// a PREPARE within it is reported to the supervisor: commits stall at most this long when
    /// a member freezes, and a member slower than this is removed (it then recovers).
    #[arg(long, env = "AGENT_PEER_TIMEOUT_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    peer_timeout_ms: u64,
    /// The durability floor: as leader, this agent acknowledges a commit only once at least
    /// this many nodes (itself included) hold it durably; with fewer reachable members commits
    /// answer 503 `not_enough_replicas` and apply nothing. 1 keeps commits available down to
    /// the leader alone, at the price of acknowledged commits living on one disk meanwhile.
    #[arg(long, env = "AGENT_MIN_COPIES", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    min_copies: u32,
    /// How many rounds the leader keeps in flight at once: round r+1 is prepared while round r
    /// is decided, so PostgreSQL can share a WAL flush between them. 1 runs one round at a time.
    #[arg(long, env = "AGENT_PIPELINE_DEPTH", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=8))]
    pipeline_depth: u32,
    /// A file holding the cluster token. When set (or CLUSTER_TOKEN is), internal endpoints,
    /// the drills and log paging need 'Authorization: Bearer <token>', and every internal call
    /// this agent makes carries it.
    #[arg(long, env = "AGENT_CLUSTER_TOKEN_FILE")]
    cluster_token_file: Option<std::path::PathBuf>,
    /// The cluster token itself (prefer --cluster-token-file: environments leak).
    #[arg(long, env = "CLUSTER_TOKEN", hide_env_values = true)]
    cluster_token: Option<String>,
    /// A file of client API keys, one per line: `<key> <scope> <name>`, scope `read` or
    /// `write` (docs/operations.md). With it `/read/` needs a read or write key and `/commit/`
    /// a write key, sent as 'Authorization: Bearer <key>'; without it both are open.
    #[arg(long, env = "AGENT_API_KEYS", value_name = "FILE")]
    api_keys: Option<std::path::PathBuf>,
    /// This agent's TLS certificate (PEM). With --tls-key and --tls-ca it serves HTTPS only
    /// and calls the other agents and the supervisor over HTTPS.
    #[arg(long, env = "AGENT_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM; keep it 0600).
    #[arg(long, env = "AGENT_TLS_KEY", value_name = "FILE")]
    tls_key: Option<std::path::PathBuf>,
    /// The cluster's CA certificate (PEM): the only one trusted for the other programs.
    #[arg(long, env = "AGENT_TLS_CA", value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// Mutual TLS: the internal endpoints, the drills and log paging also need a client
    /// certificate from --tls-ca (reads, commits, /status, /health and /metrics do not).
    #[arg(long, env = "AGENT_TLS_CLIENT_AUTH", value_parser = clap::builder::BoolishValueParser::new())]
    tls_client_auth: bool,
    /// Keep only the newest N entries of the recovery log (at least 4096); older ones are
    /// trimmed in the background once also older than --retain-log-secs. A node the log no
    /// longer reaches is rebuilt from a snapshot. Default: keep every entry.
    #[arg(long, env = "AGENT_RETAIN_LOG", value_name = "ENTRIES", value_parser = clap::value_parser!(i64).range(MIN_RETAIN_LOG..))]
    retain_log: Option<i64>,
    /// With --retain-log: never trim an entry younger than this many seconds. A retry of a
    /// commit's txn_id is recognised as long as its entry is kept, so keep this at least as
    /// long as clients retry (a write-only retry whose entry was trimmed would run again; one
    /// with a time_stamp is refused with 410).
    #[arg(long, env = "AGENT_RETAIN_LOG_SECS", value_name = "SECONDS", default_value_t = 3600)]
    retain_log_secs: u64,
    /// Connections to PostgreSQL.
    #[arg(long, env = "AGENT_DB_POOL", default_value_t = DEFAULT_POOL_SIZE, value_parser = clap::value_parser!(u32).range(1..))]
    db_pool: u32,
    /// Write the logs as JSON, one object per line, instead of text (`LOG_JSON=1` too).
    #[arg(long, env = "LOG_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    log_json: bool,
}

/// Logs to stdout, filtered by `RUST_LOG` (default `info`): text, or JSON lines.
fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if json {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt()
            // Colours only on a terminal: setup.sh and the tests send the logs to files.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .with_env_filter(filter)
            .init();
    }
}

/// Longest API keys file read: [`protocol::api_keys::MAX_KEYS`] lines of a key, a scope and a
/// name, with room for comments.
const MAX_API_KEYS_FILE_BYTES: u64 = 1024 * 1024;

/// Reads and checks `--api-keys`; says at start-up how many keys of each scope it holds.
fn load_api_keys(path: &std::path::Path) -> anyhow::Result<protocol::api_keys::ApiKeys> {
    let shown = path.display();
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read the API keys file {shown}"))?;
    if meta.len() > MAX_API_KEYS_FILE_BYTES {
        anyhow::bail!("the API keys file {shown} is larger than {MAX_API_KEYS_FILE_BYTES} bytes");
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the API keys file {shown}"))?;
    let keys = protocol::api_keys::ApiKeys::parse(&text).with_context(|| format!("in the API keys file {shown}"))?;
    if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077 != 0 {
        tracing::warn!(file = %shown, "other users may read the API keys file: chmod 600 it");
    }
    let (read, write) = keys.counts();
    tracing::info!(file = %shown, read, write, "client API keys required on /read/ and /commit/");
    Ok(keys)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Flags, then the environment, then the --config file, then the defaults.
    let args: Args = protocol::config_file::parse();
    init_logs(args.log_json);
    agent::metrics::install().context("installing the metrics recorder")?;
    let address = args.advertise.clone().unwrap_or_else(|| args.listen.clone());
    if !args.members.contains(&address) {
        anyhow::bail!("--members ({}) must include this agent's own address {address}", args.members.join(","));
    }
    if args.min_copies as usize > args.members.len() {
        anyhow::bail!(
            "--min-copies {} asks for more copies than there are members ({}): no commit could ever be acknowledged",
            args.min_copies,
            args.members.len()
        );
    }
    if !args.members.contains(&args.leader) {
        anyhow::bail!("--leader {} is not one of --members ({})", args.leader, args.members.join(","));
    }
    let password = match &args.database_password_file {
        Some(path) => {
            let file = protocol::secrets::load_secret_file(path, "PostgreSQL password")?;
            if file.readable_by_others {
                tracing::warn!(file = %path.display(), "other users may read the PostgreSQL password file: chmod 600 it");
            }
            Some(file.secret)
        }
        None => None,
    };
    let store = Store::connect(&args.database_url, password.as_deref(), args.db_pool).await.with_context(|| {
        format!("connecting to PostgreSQL at {}", protocol::secrets::redact_url(&args.database_url))
    })?;
    store.init_schema().await.context("creating the tables")?;
    let api_keys = args.api_keys.as_deref().map(load_api_keys).transpose()?.map(std::sync::Arc::new);
    let tls = service::TlsOptions {
        cert: args.tls_cert.clone(),
        key: args.tls_key.clone(),
        ca: args.tls_ca.clone(),
        client_auth: args.tls_client_auth,
    }
    .load_for_server("an agent")?;
    let token = protocol::auth::resolve_token(args.cluster_token_file.as_deref(), args.cluster_token.as_deref())?;
    let cfg = NodeConfig {
        node_id: args.node_id,
        address,
        initial: ClusterConfig { term: 1, version: 1, leader: Some(args.leader), members: args.members },
        supervisor: args.supervisor,
        token,
        peer_timeout: Duration::from_millis(args.peer_timeout_ms),
        min_copies: args.min_copies as usize,
        pipeline_depth: args.pipeline_depth as usize,
        api_keys,
        tls: tls.clone(),
        retention: args
            .retain_log
            .map(|entries| Retention { entries, min_age: Duration::from_secs(args.retain_log_secs) }),
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {} (is the port taken?)", args.listen))?;
    let node = Node::start(cfg, store).await.context("starting the node")?;
    tracing::info!(
        listen = %args.listen,
        tls = tls.is_some(),
        client_auth = tls.as_ref().is_some_and(service::Tls::client_auth),
        "agent serving"
    );
    // service::serve sets TCP_NODELAY on every connection: small request/response pairs would
    // otherwise wait on Nagle's algorithm and delayed ACKs.
    service::serve(listener, agent::api::router(node), tls.as_ref(), service::shutdown_signal()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, protocol::config_file::Error> {
        protocol::config_file::try_parse_from(std::iter::once("agent").chain(args.iter().copied()))
    }

    fn example() -> String {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/examples/agent.toml").to_string()
    }

    #[test]
    fn the_example_file_is_valid_and_flags_override_it() {
        let args = parse(&["--config", &example()]).unwrap();
        assert_eq!(args.node_id, "node1");
        assert_eq!(args.listen, "127.0.0.1:8001");
        assert_eq!(args.members, ["127.0.0.1:8000", "127.0.0.1:8001", "127.0.0.1:8002"]);
        assert_eq!(args.peer_timeout_ms, 1000);
        let args = parse(&["--config", &example(), "--listen", "127.0.0.1:18001", "--peer-timeout-ms", "250"]).unwrap();
        assert_eq!((args.listen.as_str(), args.peer_timeout_ms), ("127.0.0.1:18001", 250));
        assert_eq!(args.node_id, "node1", "what no flag names still comes from the file");
    }

    #[test]
    fn the_options_the_example_file_only_mentions_are_real() {
        let example = example();
        let args: Args =
            protocol::config_file::try_parse_example_with_commented_options(["agent"], example.as_ref()).unwrap();
        assert_eq!(args.tls_ca.as_deref(), Some(std::path::Path::new("data/tls/ca.pem")));
        assert!(args.tls_client_auth);
        assert!(args.api_keys.is_some() && args.database_password_file.is_some());
        assert_eq!((args.retain_log, args.retain_log_secs), (Some(100_000), 600));
    }

    #[test]
    fn a_log_bound_below_the_floor_is_refused() {
        let e = parse(&["--retain-log", "100"]).unwrap_err().to_string();
        assert!(e.contains("--retain-log") && e.contains("4096"), "{e}");
        let args = parse(&["--retain-log", "4096"]).unwrap();
        assert_eq!((args.retain_log, args.retain_log_secs), (Some(4096), 3600));
        assert_eq!(parse(&[]).unwrap().retain_log, None, "keeps every entry by default");
    }

    #[test]
    fn invalid_values_are_refused_naming_the_option() {
        let err = parse(&["--peer-timeout-ms", "0"]).unwrap_err().to_string();
        assert!(err.contains("--peer-timeout-ms"), "{err}");
        let err = parse(&["--db-pool", "many"]).unwrap_err().to_string();
        assert!(err.contains("--db-pool"), "{err}");
        let path = std::env::temp_dir().join(format!("rmw-agent-config-{}.toml", std::process::id()));
        std::fs::write(&path, "peer-timeout-ms = 0\n").unwrap();
        let err = parse(&["--config", path.to_str().unwrap()]).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(err.contains("peer-timeout-ms") && err.contains(&path.display().to_string()), "{err}");
    }
}
