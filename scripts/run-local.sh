#!/usr/bin/env bash
# Starts a local kvnode on 127.0.0.1:7000 with its data under ./data, in the foreground.
# Ctrl-C stops it cleanly (it drains requests and syncs storage).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=./target/release/kvnode
[ -x "$bin" ] || cargo build --release --bins

mkdir -p data
cat <<MSG
kvnode: client API on http://127.0.0.1:7000 (data in ./data/node1)
  health:  curl -sS http://127.0.0.1:7000/health
  put:     curl -sS -X PUT --data-binary 'hello' http://127.0.0.1:7000/kv/greeting
  get:     curl -sS http://127.0.0.1:7000/kv/greeting
  metrics: curl -sS http://127.0.0.1:7000/metrics
Press Ctrl-C to stop.
MSG
exec "$bin" --node-id node1 --listen 127.0.0.1:7000 --data-dir ./data/node1 "$@"
