#!/usr/bin/env bash
# Weft benchmark: builds the release binaries and runs weft-bench against target/release/weft.
#   bench/run.sh            full run (levels 16,64,256 × 30 s, then 2000 req/s × 30 s)
#   bench/run.sh --quick    smoke run (16,64 × 5 s, rate test 5 s)
#   bench/run.sh --help     all options (--levels, --duration, --rate, --keep, --weft-arg, ...)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p weft-cli -p weft-bench
exec target/release/weft-bench --weft target/release/weft "$@"
