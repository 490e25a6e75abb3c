#!/usr/bin/env bash
# The whole test suite: format and lint checks, then every test of every crate with nextest.
# Needs the Rust toolchain and python3 (SQLite is compiled in; test servers run on 127.0.0.1;
# schemathesis and moto (an S3-compatible server) come from PyPI into target/; PostgreSQL comes from Debian's packages and runs
# as a throwaway cluster in a temp dir, see scripts/pg.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "installing cargo-nextest…"
  cargo install cargo-nextest --locked
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The served OpenAPI description against the real server (needs python3; fetches schemathesis).
./scripts/schemathesis.sh
# A throwaway PostgreSQL for the PostgreSQL tests and an S3-compatible server for the payload
# store tests, unless the caller provides them.
stops=()
cleanup() { for c in "${stops[@]}"; do eval "$c"; done; }
trap cleanup EXIT
if [ -z "${WEFT_TEST_DATABASE_URL:-}" ]; then
  eval "$(./scripts/pg.sh start)"
  stops+=('./scripts/pg.sh stop "$WEFT_TEST_PG_DIR"')
fi
if [ -z "${WEFT_TEST_S3_ENDPOINT:-}" ]; then
  eval "$(./scripts/s3.sh start)"
  stops+=('./scripts/s3.sh stop "$WEFT_TEST_S3_PID"')
fi
cargo nextest run --workspace --no-fail-fast "$@"
