#!/usr/bin/env bash
# A private PostgreSQL cluster for the tests (docs/scaling.md), never the system's one.
#
#   scripts/postgres-ci.sh [start|stop|url|status]
#
#   start   install PostgreSQL with apt if missing (root), initdb a cluster in the state folder,
#           start it on 127.0.0.1 (a free port), create the role and database, print the URL
#           postgresql+psycopg://vragent:vragent@127.0.0.1:PORT/vragent_test. Already running:
#           prints the URL.
#   stop    stop the cluster and delete the state folder
#   url     print the URL of the running cluster (exit 1 when none runs)
#   status  exit 0 when the cluster accepts connections
#
# Environment:
#   VRAGENT_PG_STATE  the state folder (default /tmp/vragent-pg); data, socket, log, port file
#   VRAGENT_PG_PORT   the port (default: a free one, chosen at the first start)
#
# The server runs as the `postgres` OS user when started by root (initdb refuses root); the role
# `vragent` may create databases, so the tests make a fresh database per test.
set -euo pipefail

STATE="${VRAGENT_PG_STATE:-/tmp/vragent-pg}"
DATA="$STATE/data"
LOG="$STATE/server.log"
PORTFILE="$STATE/port"
HOST=127.0.0.1
ROLE=vragent
PASSWORD=vragent
DB=vragent_test

die() { echo "postgres-ci: error: $*" >&2; exit 1; }

bindir() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [[ -x "$d/initdb" ]] && { echo "$d"; return; }
    done
    return 1
}

install() {
    bindir >/dev/null && return
    ((EUID == 0)) || die "PostgreSQL is not installed and this is not root: apt-get install postgresql"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null
    bindir >/dev/null || die "apt-get installed no initdb"
}

# Run a command as the cluster's owner: `postgres` when we are root, else ourselves.
as_owner() {
    if ((EUID == 0)); then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

port() { [[ -f "$PORTFILE" ]] && cat "$PORTFILE"; }

url() { echo "postgresql+psycopg://$ROLE:$PASSWORD@$HOST:$(port)/$DB"; }

running() {
    local p bin
    p="$(port)" || return 1
    [[ -n "$p" ]] || return 1
    bin="$(bindir)" || return 1
    "$bin/pg_isready" -q -h "$HOST" -p "$p"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    if running; then url; return; fi
    install
    local bin p
    bin="$(bindir)"
    mkdir -p "$STATE"
    ((EUID == 0)) && chown postgres: "$STATE"
    if [[ ! -f "$DATA/PG_VERSION" ]]; then
        as_owner "$bin/initdb" -D "$DATA" -U postgres -A trust -E UTF8 --no-sync >/dev/null
    fi
    p="${VRAGENT_PG_PORT:-$(port || true)}"
    [[ -n "$p" ]] || p="$(free_port)"
    echo "$p" >"$PORTFILE"
    # Test data only: no fsync, which keeps the suite fast on a slow disk.
    as_owner "$bin/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 \
        -o "-h $HOST -p $p -k $STATE -c fsync=off -c full_page_writes=off -c max_connections=200" \
        start >/dev/null || { tail -n 20 "$LOG" >&2; die "the server did not start"; }
    local psql=("$bin/psql" -q -h "$HOST" -p "$p" -U postgres -d postgres -v ON_ERROR_STOP=1)
    if [[ -z "$("${psql[@]}" -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" ]]; then
        "${psql[@]}" -c "CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD'" >/dev/null
    fi
    if [[ -z "$("${psql[@]}" -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'")" ]]; then
        "${psql[@]}" -c "CREATE DATABASE $DB OWNER $ROLE" >/dev/null
    fi
    url
}

stop() {
    local bin
    if [[ -f "$DATA/PG_VERSION" ]] && bin="$(bindir)"; then
        as_owner "$bin/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$STATE"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    url) running || die "no cluster runs in $STATE"; url ;;
    status) running ;;
    *) echo "usage: $0 start|stop|url|status" >&2; exit 2 ;;
esac
