#!/bin/sh
# The agent image's entrypoint: PostgreSQL 15 in $PGDATA (made at first start, as setup.sh
# makes its clusters), then the agent beside it, configured by its environment (AGENT_*) and
# by the arguments given to the container. On SIGTERM (docker stop) the agent stops, then
# PostgreSQL (fast shutdown).
set -eu

PG_BIN=/usr/lib/postgresql/15/bin
PGDATA="${PGDATA:-/var/lib/postgresql/data}"
PG_PORT="${PG_PORT:-5432}"

as_postgres() {
    runuser -u postgres -- "$@"
}

mkdir -p "$PGDATA"
chown postgres:postgres "$PGDATA"
chmod 700 "$PGDATA"
# The agent's PostgreSQL password (scram-sha-256; nothing is trusted without it): made at first
# start, kept beside the data in a file only root reads, unless the environment names one.
PG_PASSWORD_FILE="${AGENT_DATABASE_PASSWORD_FILE:-$(dirname "$PGDATA")/agent.password}"
if [ ! -s "$PG_PASSWORD_FILE" ]; then
    (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$PG_PASSWORD_FILE")
fi
export AGENT_DATABASE_PASSWORD_FILE="$PG_PASSWORD_FILE"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    echo "agent-entrypoint: creating the PostgreSQL cluster in $PGDATA"
    # From a copy the postgres user can open (not root's 0600 file), removed at once.
    pwfile="$(dirname "$PGDATA")/.initdb-password"
    (umask 077 && cp "$PG_PASSWORD_FILE" "$pwfile")
    chown postgres:postgres "$pwfile"
    as_postgres "$PG_BIN/initdb" -D "$PGDATA" -U postgres --auth=scram-sha-256 --pwfile="$pwfile" -E UTF8 >/dev/null
    rm -f "$pwfile"
fi
# Our settings, rewritten on every start (as setup.sh does): only the agent connects, locally.
cat >"$PGDATA/rmw.conf" <<CONF
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '/tmp'
# The agents use PostgreSQL's two-phase commit (PREPARE TRANSACTION).
max_prepared_transactions = 64
fsync = on
CONF
chown postgres:postgres "$PGDATA/rmw.conf"
grep -q "^include_if_exists = 'rmw.conf'" "$PGDATA/postgresql.conf" ||
    echo "include_if_exists = 'rmw.conf'" >>"$PGDATA/postgresql.conf"
# A container killed outright leaves its pid file behind.
rm -f "$PGDATA/postmaster.pid"

as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/postgresql.log" -w -t 60 start >/dev/null
echo "agent-entrypoint: PostgreSQL 15 started on 127.0.0.1:$PG_PORT"

stop_postgres() {
    as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop >/dev/null || true
}

/usr/local/bin/agent "$@" &
agent_pid=$!
trap 'kill -TERM "$agent_pid" 2>/dev/null || true' TERM INT
# The first wait returns when a signal arrives; the second one for the agent itself.
status=0
wait "$agent_pid" || status=$?
wait "$agent_pid" 2>/dev/null || true
stop_postgres
exit "$status"
