#!/usr/bin/env bash
# `make run`: a local cluster of 3 kvnodes (client API 127.0.0.1:7001-7003, peer 7101-7103,
# admin 7201-7203; data under ./data) and a kvgateway (client API 127.0.0.1:8080, admin 8081),
# in the foreground. Ctrl-C or SIGTERM stops everything cleanly, the log follower included.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x ./target/release/kvnode ] && [ -x ./target/release/kvgateway ] || cargo build --release --bins

follower=
stop() {
  trap - INT TERM EXIT
  echo
  [ -n "$follower" ] && kill "$follower" 2>/dev/null
  ./scripts/cluster.sh stop
}
trap stop INT TERM EXIT

./scripts/cluster.sh start --nodes 3
cat <<MSG

Local cluster:
  nodes:    client API http://127.0.0.1:7001 .. 7003   admin http://127.0.0.1:7201 .. 7203
  gateway:  client API http://127.0.0.1:8080           admin http://127.0.0.1:8081
  data:     ./data/n1 ./data/n2 ./data/n3   logs: ./data/logs
  secret:   ./data/cluster.secret (kvctl: export KV_CLUSTER_SECRET_FILE=data/cluster.secret)
Try:
  curl -sS -X PUT -H 'Content-Type: text/plain' --data-binary 'hello' http://127.0.0.1:8080/kv/greeting
  curl -sS http://127.0.0.1:8080/kv/greeting
  curl -sS http://127.0.0.1:8081/cluster/members
Press Ctrl-C to stop.
MSG
# Follow the logs until interrupted.
tail -n 0 -F ./data/logs/*.log &
follower=$!
wait "$follower"
