#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for tests, from the machine's own binaries (Debian's
# `postgresql` package, installed if missing), on 127.0.0.1, as a non-root user, in a temp dir.
#   scripts/pg.sh start   prints `export` lines: WEFT_TEST_PG_DIR, WEFT_TEST_DATABASE_URL (the
#                         owner role, for migrations) and WEFT_TEST_APP_DATABASE_URL (the
#                         application role: not owner, not superuser, no BYPASSRLS)
#   scripts/pg.sh stop DIR
#   scripts/pg.sh down DIR / up DIR   stop (fast) and start again the server of DIR, same port
#                                     (fault tests restart PostgreSQL under load)
# WEFT_PG_DURABLE=1 makes a cluster with fsync on, production-like memory settings and the
# autovacuum and writeback settings docs/postgres.md recommends (for the benchmark); the default (for tests)
# turns fsync off.
set -euo pipefail

find_bin() {
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return 0; }
  return 1
}

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "${1:-}" in
  start)
    if ! bin="$(find_bin)"; then
      if [ "$(id -u)" = 0 ]; then
        echo "installing PostgreSQL from Debian's packages…" >&2
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
        bin="$(find_bin)"
      else
        echo "PostgreSQL is not installed; run: sudo apt-get install -y postgresql" >&2
        exit 1
      fi
    fi
    dir="$(mktemp -d /tmp/weft-pg.XXXXXX)"
    chmod 755 "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    if [ "${WEFT_PG_DURABLE:-0}" = 1 ]; then
      settings="-c shared_preload_libraries=pg_stat_statements -c autovacuum_naptime=10s -c autovacuum_vacuum_cost_limit=2000 -c fsync=on -c synchronous_commit=on -c shared_buffers=1GB -c wal_buffers=16MB -c max_wal_size=4GB -c checkpoint_timeout=15min -c backend_flush_after=256kB -c wal_compression=lz4"
    else
      settings="-c fsync=off"
    fi
    as_pg "$bin/initdb" -D "$dir/data" -U postgres -A trust --no-sync -E UTF8 >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; exit 1; }
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200 $settings" start >&2 \
      || { cat "$dir/server.log" >&2; exit 1; }
    psql() { as_pg "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres "$@"; }
    psql -d postgres -c "CREATE ROLE weft_owner LOGIN PASSWORD 'weft_owner' CREATEROLE CREATEDB" \
      -c "CREATE ROLE weft_app LOGIN PASSWORD 'weft_app' NOSUPERUSER NOBYPASSRLS NOCREATEDB" \
      -c "CREATE DATABASE weft OWNER weft_owner" >&2
    if [ "${WEFT_PG_DURABLE:-0}" = 1 ]; then
      # Claim-query statistics for the benchmark.
      psql -d weft -c "CREATE EXTENSION pg_stat_statements" -c "GRANT pg_read_all_stats TO weft_owner" >&2
    fi
    echo "$port" >"$dir/port"
    echo "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200 $settings" >"$dir/opts"
    echo "export WEFT_TEST_PG_DIR=$dir"
    echo "export WEFT_TEST_DATABASE_URL=postgres://weft_owner:weft_owner@127.0.0.1:$port/weft"
    echo "export WEFT_TEST_APP_DATABASE_URL=postgres://weft_app:weft_app@127.0.0.1:$port/weft"
    ;;
  stop)
    dir="${2:?usage: scripts/pg.sh stop DIR}"
    bin="$(find_bin)"
    as_pg "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    ;;
  down)
    dir="${2:?usage: scripts/pg.sh down DIR}"
    as_pg "$(find_bin)/pg_ctl" -D "$dir/data" -m fast -w stop >&2
    ;;
  up)
    dir="${2:?usage: scripts/pg.sh up DIR}"
    as_pg "$(find_bin)/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 -o "$(cat "$dir/opts")" start >&2
    ;;
  *)
    echo "usage: scripts/pg.sh start | stop DIR | down DIR | up DIR" >&2
    exit 2
    ;;
esac
