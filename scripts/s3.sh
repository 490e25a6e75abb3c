#!/usr/bin/env bash
# A throwaway S3-compatible server for tests: moto's server (from PyPI, installed into
# target/moto-venv) on a free 127.0.0.1 port. It speaks S3's REST protocol with SigV4, so
# `weft serve --payload-store s3://…` is tested against the wire format it uses in production.
#   scripts/s3.sh start   prints `export` lines: WEFT_TEST_S3_ENDPOINT, WEFT_TEST_S3_PID
#   scripts/s3.sh stop PID
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  start)
    venv="target/moto-venv"
    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import moto.server, flask_cors' 2>/dev/null; then
      echo "installing moto (an S3-compatible test server) into $venv…" >&2
      python3 -m venv "$venv" >&2
      "$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[s3]>=5,<6' flask flask-cors >&2
    fi
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    log="$(mktemp /tmp/weft-s3.XXXXXX.log)"
    nohup "$venv/bin/python" -m moto.server -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
    pid=$!
    up() { python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/', timeout=1)" 2>/dev/null; }
    for _ in $(seq 1 100); do
      up && break
      sleep 0.1
    done
    up || { echo "moto did not start:" >&2; cat "$log" >&2; exit 1; }
    echo "export WEFT_TEST_S3_ENDPOINT=http://127.0.0.1:$port"
    echo "export WEFT_TEST_S3_PID=$pid"
    ;;
  stop)
    [ -n "${2:-}" ] && kill "$2" 2>/dev/null || true
    ;;
  *)
    echo "usage: scripts/s3.sh start | stop PID" >&2
    exit 2
    ;;
esac
