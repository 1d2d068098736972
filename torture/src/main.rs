//! `torture`: see the crate's documentation and `torture --help`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use torture::nemesis::FaultKind;
use torture::run::{Options, SkewChoice};

#[derive(Parser)]
#[command(
    name = "torture",
    about = "A bank workload against a fresh supervised 3-node cluster under injected faults, then a checker that \
             proves nothing was lost. Exit status: 0 clean, 1 the checker found a violation, 2 the run could not be made.",
    after_help = "Fault kinds for --faults: kill_leader, kill_replica, stop_postgres, pause_leader, kill_supervisor, \
                  kill_leader_and_supervisor, down_leader_drill, partition_node, partition_leader_from_supervisor, \
                  partition_leader_from_replicas, partition_supervisor_from_replicas, partition_replica_from_leader, \
                  pause_replicas, wipe_node, wipe_supervisor_state (not with --hosts), switchover (POST /switchover \
                  to a replica; a refusal is recorded), remove_and_add_member (POST /members/remove of a replica, \
                  /members/add at the heal), two_faults (two compatible kinds at once; one of them among the other \
                  kinds given to --faults, if any).\n\
                  With --hosts also: cut_link (two hosts cut apart, both directions), one_way_loss (every packet \
                  from one host to another lost), kill_active_supervisor, partition_active_supervisor (its host cut \
                  off from every other host), kill_etcd_member, partition_etcd_leader (from the other etcd members), \
                  etcd_quorum_lost (two of three members killed or cut off; nothing fails over until it heals)."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// How long the workload runs, in minutes.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// How long the workload runs, in seconds (instead of --minutes).
    #[arg(long)]
    seconds: Option<u64>,
    /// The seed of the fault schedule and of the clients (random when absent; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Concurrent clients; a quarter of them (at least one) run read-only transactions on any node.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Accounts (few accounts: many conflicts).
    #[arg(long, default_value_t = 20)]
    accounts: i64,
    /// Where the history, the verdict and the plot go (default: torture-output/<UTC time>-seed<seed>).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Where the agent and supervisor binaries are (default: beside this program).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Skew one node's agent clock with libfaketime: `auto` (the seed decides, about every other
    /// run), `off`, or `NODE:MILLISECONDS` (e.g. `2:-3000`).
    #[arg(long, default_value = "auto")]
    skew: String,
    /// Only these fault kinds (comma-separated); default: all that this machine can make.
    #[arg(long, value_delimiter = ',')]
    faults: Option<Vec<String>>,
    /// No partitions even when this machine can make them.
    #[arg(long)]
    no_partitions: bool,
    /// Plain progress lines instead of a progress bar.
    #[arg(long)]
    no_progress: bool,
    /// How many nodes must hold every acknowledged commit (default: what the agents report in
    /// /status as min_copies, else 2).
    #[arg(long)]
    min_copies: Option<usize>,
    /// Run every node (PostgreSQL and agent), two supervisors (their configuration in etcd)
    /// and three etcd members on hosts of their own: a network namespace each, with its own
    /// address (10.78.x.0/24) on one bridge and no route off the machine. Adds the faults across
    /// hosts (cut links, one-way loss, the active supervisor killed or cut off, etcd members
    /// killed, the etcd leader cut off, etcd's quorum lost). Needs root, ip, nft and etcd.
    #[arg(long)]
    hosts: bool,
    /// Run the cluster over TLS with mutual TLS inside, as `RMW_TLS=1 ./setup.sh` does: a CA
    /// and a certificate per program made for the run; the clients and the faults' calls
    /// trust that CA only.
    #[arg(long)]
    tls: bool,
    /// Run the agents with `--retain-log N` (and `--retain-log-secs 0`): each node trims its log
    /// to its newest N entries, and a node the log no longer reaches is rebuilt from a snapshot.
    /// Every other replica kill then lasts until the leader's log no longer reaches the dead
    /// node (a long outage, at most 2 minutes). 0 keeps every entry.
    #[arg(long, default_value_t = 5_000)]
    retain_log: i64,
}

#[derive(Subcommand)]
enum Command {
    /// Run the checker again on a saved run's folder (history.jsonl, final-state.json, samples.json, run.json).
    Check { dir: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Check { dir }) = cli.command {
        return match torture::run::check_saved(&dir) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("torture check: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let skew = match cli.skew.as_str() {
        "auto" => SkewChoice::Auto,
        "off" => SkewChoice::Off,
        other => match other.split_once(':').and_then(|(n, ms)| Some((n.parse().ok()?, ms.parse().ok()?))) {
            Some((node, ms)) => SkewChoice::Fixed(node, ms),
            None => {
                eprintln!("torture: --skew must be auto, off or NODE:MILLISECONDS, not {other:?}");
                return ExitCode::from(2);
            }
        },
    };
    let faults = match cli.faults {
        None => None,
        Some(names) => {
            let mut kinds = Vec::new();
            for n in names {
                match FaultKind::parse(n.trim()) {
                    Some(k) => kinds.push(k),
                    None => {
                        eprintln!("torture: unknown fault kind {n:?} (see --help)");
                        return ExitCode::from(2);
                    }
                }
            }
            Some(kinds)
        }
    };
    if cli.clients == 0 || cli.accounts < 2 {
        eprintln!("torture: need at least one client and two accounts");
        return ExitCode::from(2);
    }
    let duration_s = cli.seconds.map_or(cli.minutes * 60.0, |s| s as f64);
    let options = Options {
        duration: std::time::Duration::from_secs_f64(duration_s.max(1.0)),
        seed: cli.seed.unwrap_or_else(rand::random),
        clients: cli.clients,
        accounts: cli.accounts,
        output: cli.output,
        bin_dir: cli.bin_dir,
        skew,
        faults,
        partitions: !cli.no_partitions,
        progress_bar: !cli.no_progress,
        min_copies: cli.min_copies,
        hosts: cli.hosts,
        tls: cli.tls,
        retain_log: (cli.retain_log > 0).then_some(cli.retain_log),
    };
    match torture::run::run(options) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("torture: {e:#}");
            ExitCode::from(2)
        }
    }
}
