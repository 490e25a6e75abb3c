#!/usr/bin/env bash
# Weft benchmark: builds the release binaries and runs weft-bench against target/release/weft.
#   bench/run.sh                       full run (levels 16,64,256 × 30 s, then 2000 req/s × 30 s)
#   bench/run.sh --quick               smoke run (16,64 × 5 s, rate test 5 s)
#   bench/run.sh --backend postgres …  the same against a fresh local PostgreSQL cluster with
#                                      fsync on (started here from Debian's binaries, stopped after)
#   bench/run.sh --loop-items 100000   one run looping over 100,000 items, killed (SIGKILL) half-way
#                                      and resumed: items/s, resume time, RSS, repeats at the sink
#   bench/run.sh --help                all options (--levels, --duration, --rate, --soak, --keep, ...)
set -euo pipefail
cd "$(dirname "$0")/.."
backend=sqlite
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --backend) backend="${2:?--backend sqlite|postgres}"; shift 2 ;;
    --backend=*) backend="${1#--backend=}"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
cargo build --release -p weft-cli -p weft-bench
case "$backend" in
  sqlite)
    exec target/release/weft-bench --weft target/release/weft "${args[@]}"
    ;;
  postgres)
    eval "$(WEFT_PG_DURABLE=1 scripts/pg.sh start)"
    trap 'scripts/pg.sh stop "$WEFT_TEST_PG_DIR"' EXIT
    # Migrate as the owner; serve as the application role (RLS applies, as in production).
    target/release/weft admin migrate --database-url "$WEFT_TEST_DATABASE_URL" --database-app-role weft_app
    target/release/weft-bench --weft target/release/weft --pg-url "$WEFT_TEST_DATABASE_URL" \
      "--weft-arg=--database-url=$WEFT_TEST_APP_DATABASE_URL" "${args[@]}"
    ;;
  *) echo "--backend must be sqlite or postgres" >&2; exit 2 ;;
esac
