#!/usr/bin/env bash
# The Grafana dashboard (deploy/grafana/kvstore.json) drawn from live data into docs/dashboard.png:
#
#   1. starts a local cluster of 3 kvnodes and a kvgateway (scripts/cluster.sh, in a temporary
#      directory, its own cluster secret, one worker thread each) from the release binaries
#      already built in ./target/release (this script builds nothing: cargo build --release --bins);
#   2. starts Debian's prometheus (installed when missing) scraping them every 2 s, with the
#      alert rules of deploy/prometheus/alerts.yml, storage in the temporary directory;
#   3. runs load with kvbench through the gateway: YCSB A (50% reads, 50% updates) for
#      DEMO_SECS (default 90) seconds; blind writes to a few keys meanwhile, which make siblings;
#      and one node stopped for 25 s a third of the way in (members down, hints, under-replicated
#      ranges; then hint delivery and repair);
#   4. renders every panel with scripts/render-dashboard.py (matplotlib and requests in .venv,
#      installed when missing) to DEMO_OUT (default docs/dashboard.png);
#   5. stops everything it started (also on Ctrl-C or failure) and removes the directory.
#
# Environment: DEMO_SECS, DEMO_OUT, KV_BIN (default ./target/release), DEMO_BASE_PORT (23001:
# node client ports; peer and admin ports 100 and 200 above), DEMO_GATEWAY_PORT (28180; admin one
# above), DEMO_KEEP=1 keeps the temporary directory (logs, Prometheus data).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${DEMO_SECS:-90}
out=${DEMO_OUT:-docs/dashboard.png}
bin=${KV_BIN:-./target/release}
base=${DEMO_BASE_PORT:-23001}
gw=${DEMO_GATEWAY_PORT:-28180}
scrape=2

for b in kvnode kvgateway kvbench; do
  [ -x "$bin/$b" ] || { echo "dashboard-demo: $bin/$b missing; run cargo build --release --bins" >&2; exit 1; }
done
if ! command -v prometheus >/dev/null 2>&1; then
  echo "dashboard-demo: installing Debian's prometheus package"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
if ! .venv/bin/python -c 'import matplotlib, requests' 2>/dev/null; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q matplotlib requests
fi

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in $base $((base + 1)) $((base + 2)) $((base + 100)) $((base + 101)) $((base + 102)) \
  $((base + 200)) $((base + 201)) $((base + 202)) "$gw" $((gw + 1)); do
  port_free "$p" || { echo "dashboard-demo: port $p is in use; set DEMO_BASE_PORT / DEMO_GATEWAY_PORT" >&2; exit 1; }
done
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

work=$(mktemp -d /tmp/kv-dashboard-demo.XXXXXX)
pids=()
cluster() { KV_DATA="$work/cluster" KV_BIN="$bin" KV_BASE_PORT=$base KV_GATEWAY_PORT=$gw ./scripts/cluster.sh "$@"; }
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  disown -a 2>/dev/null || true
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  cluster stop >/dev/null 2>&1 || true
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [ "$rc" -ne 0 ]; then
    for log in "$work"/*.log "$work"/cluster/logs/*.log; do
      [ -f "$log" ] && { echo "== $log" >&2; tail -n 15 "$log" >&2; }
    done
  fi
  if [ "${DEMO_KEEP:-}" = 1 ]; then echo "dashboard-demo: kept $work"; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Five processes, Prometheus and the load generator share the machine: one worker thread each.
# Anti-entropy every 15 s and quick failure detection, so that a 90-second run shows them.
export KV_WORKER_THREADS=1 KV_ANTI_ENTROPY_INTERVAL=15s KV_GOSSIP_INTERVAL=500ms KV_SUSPECT_AFTER=3s
echo "dashboard-demo: starting 3 nodes and a gateway in $work"
cluster start --nodes 3 >"$work/cluster-start.log"

prom_port=$(free_port)
prom="http://127.0.0.1:$prom_port"
cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: ${scrape}s
  evaluation_interval: ${scrape}s
rule_files:
  - $PWD/deploy/prometheus/alerts.yml
scrape_configs:
  - job_name: kvnode
    static_configs:
      - targets: ["127.0.0.1:$((base + 200))", "127.0.0.1:$((base + 201))", "127.0.0.1:$((base + 202))"]
  - job_name: kvgateway
    static_configs:
      - targets: ["127.0.0.1:$((gw + 1))"]
EOF
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/prometheus" \
  --web.listen-address="127.0.0.1:$prom_port" --log.level=warn >"$work/prometheus.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -fsS -m 1 "$prom/-/ready" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fsS -m 1 "$prom/-/ready" >/dev/null || { echo "dashboard-demo: prometheus did not start" >&2; exit 1; }
echo "dashboard-demo: prometheus on $prom scraping every ${scrape}s"

sleep 6 # a few scrapes of the idle cluster
start=$(date +%s)
echo "dashboard-demo: load for ${secs}s (kvbench, workload A, through the gateway)"
"$bin/kvbench" --url "http://127.0.0.1:$gw" --workload a --keys 10000 --concurrency 16 \
  --duration "$secs" --label demo >"$work/kvbench.log" 2>&1 &
bench=$!
pids+=("$bench")

sleep 10
# Blind writes (no context) to 100 keys: concurrent versions, so reads of them return siblings.
"$bin/kvbench" --url "http://127.0.0.1:$gw" --workload a --keys 100 --key-prefix sibling \
  --blind --concurrency 4 --ops 1500 --label siblings >"$work/kvbench-siblings.log" 2>&1 &
pids+=($!)

sleep $((secs / 3 > 10 ? secs / 3 - 10 : 1))
echo "dashboard-demo: stopping n3 for 25 s"
kill -TERM "$(cat "$work/cluster/run/n3.pid")"
sleep 25
cluster start --nodes 3 >>"$work/cluster-start.log"
echo "dashboard-demo: n3 is back"

wait "$bench" || { echo "dashboard-demo: kvbench failed" >&2; cat "$work/kvbench.log" >&2; exit 1; }
tr '\r' '\n' <"$work/kvbench.log" | grep -v '^run [0-9]' | grep -v '^$' | tail -n 2 || true
sleep $((3 * scrape + 2)) # the last scrapes after the load
end=$(date +%s)

# Informational here (the tests run it on both binaries): what promtool's linter says of each
# process's /metrics.
./scripts/check-observability.sh --live "http://127.0.0.1:$((base + 200))/metrics" \
  "http://127.0.0.1:$((gw + 1))/metrics" || echo "dashboard-demo: (promtool check metrics found problems, above)"

echo "dashboard-demo: rendering $out"
.venv/bin/python scripts/render-dashboard.py --prometheus "$prom" --start $((start - 10)) --end "$end" \
  --step "$scrape" --scrape-interval "${scrape}s" --out "$out"
firing=$(curl -fsS -m 5 "$prom/api/v1/alerts" | python3 -c 'import json,sys; print(" ".join(sorted({a["labels"]["alertname"]+"("+a["state"]+")" for a in json.load(sys.stdin)["data"]["alerts"]})))')
echo "dashboard-demo: alerts at the end: ${firing:-none}"
