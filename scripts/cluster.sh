#!/usr/bin/env bash
# A local cluster in the background: K kvnodes and a kvgateway on 127.0.0.1.
#   node i:   client API :700i, peer :710i, admin :720i (base ports 7001, 7101, 7201)
#   gateway:  client API :8080, admin :8081
#
#   scripts/cluster.sh start  [--nodes K]   start what is not running yet, wait until ready
#   scripts/cluster.sh stop                 SIGTERM everything (SIGKILL after 15 s)
#   scripts/cluster.sh status               what runs, and its health
#   scripts/cluster.sh add                  start one more node (the next free nK), seeded with
#                                           the running ones; wait until every member is normal
#   scripts/cluster.sh remove [nK]          decommission a node (default: the highest-numbered
#                                           running one): `kvctl leave`, wait until it has handed
#                                           off its ranges and exited, delete its data directory,
#                                           wait until the others are settled
#
# Idempotent: starting a running cluster or stopping a stopped one changes nothing. add and
# remove return once the change has settled; changes may also overlap (two adds at once, a remove
# during an add: docs/operations.md), each then waits for every member to be normal.
# After an add, `start --nodes K` starts the K nodes again after a stop.
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
target=
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) nodes=${2:?--nodes needs a number}; shift 2 ;;
    n[0-9]*) [ "$cmd" = remove ] || { echo "cluster.sh: a node name is for remove only" >&2; exit 2; }
      target=$1; shift ;;
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

# Node indexes with a running process, ascending.
running_nodes() {
  local pidfile i
  for pidfile in "$data"/run/n*.pid; do
    [ -e "$pidfile" ] || continue
    running "$pidfile" || continue
    i=$(basename "$pidfile" .pid); echo "${i#n}"
  done | sort -n
}

# What the gateway's admin listener shows of the members: "<normal> <changing>", where
# changing counts joining and leaving members.
member_counts() {
  (curl -fsS -m 2 "${curl_tls[@]}" "$scheme://127.0.0.1:$((gw_port + 1))/cluster/members" 2>/dev/null || true) |
    python3 -c 'import json, sys
try:
    ms = json.load(sys.stdin)["members"]
except Exception:
    ms = []
print(sum(m["status"] == "normal" for m in ms), sum(m["status"] in ("joining", "leaving") for m in ms))'
}

# Until the gateway lists at least $1 normal members and none joining or leaving, and no node
# holds ranges it still has to hand off (kv_ranges_dropping 0 everywhere): a membership change
# has settled.
wait_settled() {
  local want=$1 counts i dropping
  for _ in $(seq 1 1200); do
    counts=$(member_counts)
    # At least `want` normal members (another change made at the same time may add more) and
    # none joining or leaving.
    if [ "${counts#* }" = 0 ] && [ "${counts%% *}" -ge "$want" ] 2>/dev/null; then
      dropping=0
      for i in $(running_nodes); do
        d=$( (curl -fsS -m 2 "${curl_tls[@]}" "$scheme://127.0.0.1:$((base + 200 + i - 1))/metrics" 2>/dev/null || echo 'kv_ranges_dropping 1') |
          awk '/^kv_ranges_dropping /{print $2}')
        [ "${d:-0}" = 0 ] || dropping=1
      done
      [ "$dropping" = 0 ] && return 0
    fi
    sleep 0.25
  done
  echo "cluster.sh: the cluster did not settle at $want normal members (gateway shows normal, changing: $counts)" >&2
  return 1
}

node_seeds() {
  local s i
  s=$(for i in $(running_nodes); do printf '127.0.0.1:%s,' $((base + 100 + i - 1)); done)
  echo "${s%,}"
}

case "$cmd" in
  add)
    [ -x "$bin/kvnode" ] || { echo "cluster.sh: $bin/kvnode missing; run cargo build --release --bins" >&2; exit 1; }
    live=$(running_nodes | wc -l)
    [ "$live" -gt 0 ] || { echo "cluster.sh: no node runs; start the cluster first" >&2; exit 1; }
    # The next index past every node that runs or has a data directory, claimed by creating
    # its data directory (mkdir is atomic): two `add`s run at once take two indexes.
    next=$( { running_nodes; for d in "$data"/n*/; do [ -d "$d" ] && basename "$d" | tr -d n; done; } | sort -n | tail -1)
    next=$((next + 1))
    until mkdir "$data/n$next" 2>/dev/null; do next=$((next + 1)); done
    port=$((base + next - 1))
    join_seeds=$(node_seeds)
    start_one "n$next" "$data/run/n$next.pid" "$bin/kvnode" --node-id "n$next" --listen "127.0.0.1:$port" \
      --peer-listen "127.0.0.1:$((port + 100))" --admin-listen "127.0.0.1:$((port + 200))" \
      --data-dir "$data/n$next" --seeds "$join_seeds" --expect-nodes 1 --cluster-secret-file "$secret"
    wait_healthy "127.0.0.1:$((port + 200))"
    # At least one more normal member and nothing changing: other joins (another `add` at the
    # same time) settle with it.
    wait_settled $((live + 1))
    echo "n$next joined: $(member_counts | cut -d' ' -f1) nodes normal (client 127.0.0.1:$port, peer :$((port + 100)), admin :$((port + 200)))"
    ;;
  remove)
    [ -x "$bin/kvctl" ] || { echo "cluster.sh: $bin/kvctl missing; run cargo build --release --bins" >&2; exit 1; }
    live=$(running_nodes | wc -l)
    [ -n "$target" ] || target=n$(running_nodes | tail -1)
    i=${target#n}
    pidfile="$data/run/$target.pid"
    running "$pidfile" || { echo "cluster.sh: $target is not running" >&2; exit 1; }
    [ "$live" -gt 1 ] || { echo "cluster.sh: $target is the last node; stop the cluster instead" >&2; exit 1; }
    "$bin/kvctl" --admin-url "$scheme://127.0.0.1:$((base + 200 + i - 1))" --cluster-secret-file "$secret" leave
    # It hands off every range it loses, announces `left` and exits 0 (docs/operations.md).
    for _ in $(seq 1 3000); do running "$pidfile" || break; sleep 0.1; done
    if running "$pidfile"; then echo "cluster.sh: $target still runs 300 s after leave; see $data/logs/$target.log" >&2; exit 1; fi
    rm -f "$pidfile"
    # A node that left refuses its old data directory; its data now lives on the others.
    rm -rf "${data:?}/$target"
    wait_settled $((live - 1))
    echo "$target left: $((live - 1)) nodes normal"
    ;;
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
    echo "usage: scripts/cluster.sh start|stop|status [--nodes K] | add | remove [nK]" >&2
    exit 2
    ;;
esac
