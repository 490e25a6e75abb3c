#!/usr/bin/env bash
# A/B throughput of Weft binaries on this machine: each configuration runs the closed-loop
# benchmark in turn (concurrency 64 unless LEVEL says), the order rotating every round (so a
# slow minute of the machine does not land on one side), and prints completed runs/s and
# weft's CPU per run.
#   bench/ab.sh old=/tmp/weft-old new=target/release/weft
#   bench/ab.sh base=/tmp/weft-base "otlp=target/release/weft::--otlp --weft-arg=--trace-sample-ratio=0.1"
# A configuration is NAME=BINARY[::extra weft-bench flags]. ROUNDS (default 4), DURATION
# (seconds per run, default 15) and LEVEL (concurrency, default 64) set the length; weft-bench
# is built first. BACKEND=postgres runs each on a fresh PostgreSQL cluster (scripts/pg.sh,
# durable settings, as bench/run.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n 2,11p "$0"; exit 2; }
cargo build --release -p weft-bench >&2
bench=target/release/weft-bench
names=() bins=() extra=()
for a in "$@"; do
  names+=("${a%%=*}")
  rest="${a#*=}"
  bins+=("${rest%%::*}")
  if [[ "$rest" == *::* ]]; then extra+=("${rest#*::}"); else extra+=(""); fi
done
n=${#names[@]}
logs="$(mktemp -d)"
declare -A sum
for ((r = 1; r <= ${ROUNDS:-4}; r++)); do
  for ((k = 0; k < n; k++)); do
    i=$(((k + r) % n))
    log="$logs/${names[$i]}-$r.log"
    pg=()
    if [ "${BACKEND:-sqlite}" = postgres ]; then
      eval "$(WEFT_PG_DURABLE=1 scripts/pg.sh start 2>/dev/null)"
      "${bins[$i]}" admin migrate --database-url "$WEFT_TEST_DATABASE_URL" --database-app-role weft_app >/dev/null
      pg=(--pg-url "$WEFT_TEST_DATABASE_URL" "--weft-arg=--database-url=$WEFT_TEST_APP_DATABASE_URL")
    fi
    # shellcheck disable=SC2086 # extra flags are split on purpose
    "$bench" --weft "${bins[$i]}" "${pg[@]}" ${extra[$i]} --levels "${LEVEL:-64}" --duration "${DURATION:-15}" --rate 0 >"$log" 2>&1 || true
    if [ "${BACKEND:-sqlite}" = postgres ]; then scripts/pg.sh stop "$WEFT_TEST_PG_DIR"; fi
    rate=$(awk '/^  completed  /{print $2; exit}' "$log")
    cores=$(sed -n 's/.*CPU (load) *weft \([0-9.]*\) cores.*/\1/p' "$log" | head -1)
    per_run=$(awk -v c="${cores:-0}" -v r="${rate:-0}" 'BEGIN{ if (r > 0) printf "%.3f", 1000 * c / r; else print "?" }')
    echo "round $r  ${names[$i]}  ${rate:-?} runs/s  weft ${cores:-?} cores  ${per_run} core-ms per run"
    sum[${names[$i]}]=$(( ${sum[${names[$i]}]:-0} + ${rate:-0} ))
  done
done
for name in "${names[@]}"; do
  echo "mean  $name  $(( ${sum[$name]} / ${ROUNDS:-4} )) runs/s"
done
echo "logs in $logs"
