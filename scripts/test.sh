#!/usr/bin/env bash
# The whole test suite: format and lint checks, then every test of every crate with nextest.
# Needs only the Rust toolchain (SQLite is compiled in; test servers run on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "installing cargo-nextest…"
  cargo install cargo-nextest --locked
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo nextest run --workspace --no-fail-fast "$@"
