#!/usr/bin/env bash
# A PostgreSQL server from Debian's packages on loopback, for the test suite.
# `start` writes .ci/postgres.env with STACKBOX_TEST_PG_URL; `stop` stops it.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BASE=${STACKBOX_PG_BASE:-/tmp/stackbox-ci-pg}
PORT=${STACKBOX_PG_PORT:-55432}
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)

start() {
  if [ -z "$BIN" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql
    BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  fi
  mkdir -p "$BASE"
  chown postgres:postgres "$BASE"
  if [ ! -f "$BASE/data/PG_VERSION" ]; then
    runuser -u postgres -- "$BIN/initdb" -D "$BASE/data" -A trust -U postgres >/dev/null
  fi
  if ! runuser -u postgres -- "$BIN/pg_ctl" -D "$BASE/data" status >/dev/null 2>&1; then
    runuser -u postgres -- "$BIN/pg_ctl" -D "$BASE/data" -l "$BASE/log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $PORT -k $BASE -c fsync=off" start >/dev/null
  fi
  echo "STACKBOX_TEST_PG_URL=postgresql+psycopg://postgres@127.0.0.1:$PORT/postgres" \
    > "$HERE/postgres.env"
  echo "PostgreSQL on 127.0.0.1:$PORT ($BASE)"
}

stop() {
  if [ -n "$BIN" ] && [ -f "$BASE/data/PG_VERSION" ]; then
    runuser -u postgres -- "$BIN/pg_ctl" -D "$BASE/data" -m fast stop >/dev/null 2>&1 || true
  fi
}

"${1:-start}"
