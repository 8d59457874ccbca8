#!/usr/bin/env bash
# A local cluster in the background: K kvnodes and a kvgateway on 127.0.0.1.
#   node i:   client API :700i, peer :710i, admin :720i (base ports 7001, 7101, 7201)
#   gateway:  client API :8080, admin :8081
#
#   scripts/cluster.sh start  [--nodes K]   start what is not running yet, wait until ready
#   scripts/cluster.sh stop                 SIGTERM everything (SIGKILL after 15 s)
#   scripts/cluster.sh status               what runs, and its health
#
# Idempotent: starting a running cluster or stopping a stopped one changes nothing.
# Environment: KV_DATA (default ./data), KV_BIN (./target/release), KV_BASE_PORT (7001; peer
# and admin ports are 100 and 200 above), KV_GATEWAY_PORT (8080; admin one above). Data lives in
# $KV_DATA/nK, logs in $KV_DATA/logs, pids in $KV_DATA/run, the cluster secret (made on the first
# start) in $KV_DATA/cluster.secret.
set -euo pipefail
cd "$(dirname "$0")/.."

data=${KV_DATA:-./data}
bin=${KV_BIN:-./target/release}
base=${KV_BASE_PORT:-7001}
gw_port=${KV_GATEWAY_PORT:-8080}
cmd=${1:-}
shift || true
nodes=3
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) nodes=${2:?--nodes needs a number}; shift 2 ;;
    *) echo "cluster.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$nodes" in ''|*[!0-9]*|0) echo "cluster.sh: --nodes must be a positive number" >&2; exit 2 ;; esac

mkdir -p "$data/logs" "$data/run"
# The cluster secret every process proves membership with (docs/security.md): made once, kept
# with the data, readable by its owner only. kvctl signs admin commands with it:
#   export KV_CLUSTER_SECRET_FILE=$data/cluster.secret
secret="$data/cluster.secret"
if [ ! -s "$secret" ]; then
  (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$secret"; echo >>"$secret")
fi
seeds=$(for i in $(seq 1 "$nodes"); do printf '127.0.0.1:%s,' $((base + 100 + i - 1)); done)
seeds=${seeds%,}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# With KV_TLS_CERT, KV_TLS_KEY and KV_TLS_CA set (every process reads them), the cluster
# speaks only https: this script checks it with the CA.
scheme=http; curl_tls=()
if [ -n "${KV_TLS_CA:-}" ]; then scheme=https; curl_tls=(--cacert "$KV_TLS_CA"); fi

health() { curl -fsS -m 1 "${curl_tls[@]}" "$scheme://$1/health/live" >/dev/null 2>&1; }

wait_healthy() {
  for _ in $(seq 1 300); do health "$1" && return 0; sleep 0.1; done
  echo "cluster.sh: $1 did not become healthy; see $data/logs" >&2
  return 1
}

start_one() { # name pidfile command...
  local name=$1 pidfile=$2; shift 2
  if running "$pidfile"; then echo "$name already running (pid $(cat "$pidfile"))"; return; fi
  nohup "$@" >>"$data/logs/$name.log" 2>&1 &
  echo $! >"$pidfile"
  echo "$name started (pid $!)"
}

case "$cmd" in
  start)
    for b in kvnode kvgateway; do
      [ -x "$bin/$b" ] || { echo "cluster.sh: $bin/$b missing; run cargo build --release --bins" >&2; exit 1; }
    done
    for i in $(seq 1 "$nodes"); do
      port=$((base + i - 1))
      start_one "n$i" "$data/run/n$i.pid" "$bin/kvnode" --node-id "n$i" --listen "127.0.0.1:$port" \
        --peer-listen "127.0.0.1:$((port + 100))" --admin-listen "127.0.0.1:$((port + 200))" \
        --data-dir "$data/n$i" --seeds "$seeds" --expect-nodes "$nodes" --cluster-secret-file "$secret"
    done
    for i in $(seq 1 "$nodes"); do wait_healthy "127.0.0.1:$((base + 200 + i - 1))"; done
    start_one gateway "$data/run/gateway.pid" "$bin/kvgateway" --listen "127.0.0.1:$gw_port" \
      --admin-listen "127.0.0.1:$((gw_port + 1))" --seeds "$seeds" --expect-nodes "$nodes" \
      --cluster-secret-file "$secret"
    wait_healthy "127.0.0.1:$((gw_port + 1))"
    # Ready when the gateway sees every node as a normal member (new nodes join first).
    for _ in $(seq 1 300); do
      count=$( (curl -fsS -m 1 "${curl_tls[@]}" "$scheme://127.0.0.1:$((gw_port + 1))/cluster/members" 2>/dev/null || true) | grep -o '"status":"normal"' | wc -l || true)
      [ "${count:-0}" -ge "$nodes" ] && break
      sleep 0.1
    done
    echo "cluster ready: $nodes nodes (peers $seeds), gateway 127.0.0.1:$gw_port (admin :$((gw_port + 1)))"
    ;;
  stop)
    for pidfile in "$data"/run/*.pid; do
      [ -e "$pidfile" ] || continue
      if running "$pidfile"; then kill -TERM "$(cat "$pidfile")" 2>/dev/null || true; fi
    done
    for pidfile in "$data"/run/*.pid; do
      [ -e "$pidfile" ] || continue
      for _ in $(seq 1 150); do running "$pidfile" || break; sleep 0.1; done
      if running "$pidfile"; then kill -KILL "$(cat "$pidfile")" 2>/dev/null || true; fi
      echo "$(basename "$pidfile" .pid) stopped"
      rm -f "$pidfile"
    done
    ;;
  status)
    any=0
    for pidfile in "$data"/run/*.pid; do
      [ -e "$pidfile" ] || continue
      any=1
      name=$(basename "$pidfile" .pid)
      if running "$pidfile"; then echo "$name: running (pid $(cat "$pidfile"))"; else echo "$name: not running"; fi
    done
    [ "$any" = 1 ] || echo "no cluster processes recorded in $data/run"
    ;;
  *)
    echo "usage: scripts/cluster.sh start|stop|status [--nodes K]" >&2
    exit 2
    ;;
esac
