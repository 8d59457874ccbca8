#!/usr/bin/env bash
# `make run`: a local cluster of 3 kvnodes (127.0.0.1:7001-7003, data under ./data) and a
# kvgateway on 127.0.0.1:8080, in the foreground. Ctrl-C stops everything cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x ./target/release/kvnode ] && [ -x ./target/release/kvgateway ] || cargo build --release --bins

stop() {
  trap - INT TERM EXIT
  echo
  ./scripts/cluster.sh stop
}
trap stop INT TERM EXIT

./scripts/cluster.sh start --nodes 3
cat <<MSG

Local cluster:
  nodes:    http://127.0.0.1:7001  http://127.0.0.1:7002  http://127.0.0.1:7003
  gateway:  http://127.0.0.1:8080
  data:     ./data/n1 ./data/n2 ./data/n3   logs: ./data/logs
Try:
  curl -sS -X PUT --data-binary 'hello' http://127.0.0.1:8080/kv/greeting
  curl -sS http://127.0.0.1:8080/kv/greeting
  curl -sS http://127.0.0.1:8080/cluster/members
Press Ctrl-C to stop.
MSG
# Follow the logs until interrupted.
tail -n 0 -F ./data/logs/*.log &
wait $!
