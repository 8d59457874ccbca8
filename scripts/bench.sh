#!/usr/bin/env bash
# `make bench`: the store side by side with the HTTP ceiling, etcd and Redis, in one run on this
# machine, with the same value size (100 bytes) and concurrency (64) everywhere. Installs
# etcd-server and redis-server from Debian if missing. Prints one table and writes it, with the
# machine description, to docs/benchmarks.md (between the BENCH markers).
#
# Last, one node is filled with 1,000,000 keys and its resident memory is measured.
#
# Environment: BENCH_SECS (default 10 per run), BENCH_KEYS (default 100000),
# BENCH_MEMORY_KEYS (default 1000000).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${BENCH_SECS:-10}
keys=${BENCH_KEYS:-100000}
conc=64
vsize=100
work=$(mktemp -d /tmp/kv-bench.XXXXXX)
results="$work/results.jsonl"
pids=()

cleanup() {
  local rc=$?
  disown -a 2>/dev/null || true # no "Killed" job reports for what we stop on purpose
  if [ "$rc" -ne 0 ]; then # show why before the work directory goes
    for log in "$work"/*.log "$work"/*/logs/*.log; do
      [ -f "$log" ] && { echo "== $log" >&2; tail -n 20 "$log" >&2; }
    done
  fi
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  KV_DATA="$work/cluster" ./scripts/cluster.sh stop >/dev/null 2>&1 || true
  KV_DATA="$work/cluster2" ./scripts/cluster.sh stop >/dev/null 2>&1 || true
  KV_DATA="$work/cluster3" ./scripts/cluster.sh stop >/dev/null 2>&1 || true
  sleep 1
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

need() { # command package
  command -v "$1" >/dev/null 2>&1 && return
  echo "bench: installing $2"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}
need etcd etcd-server
need redis-server redis-server
need curl curl

cargo build --release --bins
bin=./target/release
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 200); do curl -fsS -m 1 "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "bench: $1 not ready" >&2; return 1; }

bench() { # label url protocol workload [extra...]
  local label=$1 url=$2 protocol=$3 workload=$4; shift 4
  echo "bench: $label" >&2
  "$bin/kvbench" --url "$url" --protocol "$protocol" --workload "$workload" --keys "$keys" \
    --value-size "$vsize" --concurrency "$conc" --duration "$secs" --label "$label" --json "$@" 2>/dev/null >>"$results"
}

# 1. The HTTP ceiling and one node, N=1, --sync batch.
p=$(free_port); a=$(free_port)
# Authentication on, as in production: every process holds the cluster secret.
secret="$work/cluster.secret"
(umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$secret")
"$bin/kvnode" --node-id solo --listen "127.0.0.1:$p" --peer-listen "127.0.0.1:$(free_port)" \
  --admin-listen "127.0.0.1:$a" --data-dir "$work/solo" --replicas 1 --sync batch \
  --cluster-secret-file "$secret" >"$work/solo.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$a/health/live"
bench "ceiling GET (noop)" "http://127.0.0.1:$p/noop" noop c
bench "ceiling PUT (noop)" "http://127.0.0.1:$p/noop" noop w
# Every store is filled with the keyspace (a read row's load phase) before its write row runs:
# writes are measured on a warm store, as a user would meet it (a fresh one is slower at first).
bench "1 node N=1 C" "http://127.0.0.1:$p" kv c
bench "1 node N=1 W" "http://127.0.0.1:$p" kv w

# 2. 3 nodes and a gateway, N=3, R=2, W=2. Five processes share two cores here, so each runs
#    one worker thread (--worker-threads 1, as an operator co-locating them would set); then
#    W and C again with the default (one thread per core) for comparison.
# Fixed ports below the ephemeral range (32768 and up), so that no outgoing connection holds
# one of the 3 × 3 node ports or the gateway's two.
base=21001; gw=28080
KV_WORKER_THREADS=1 KV_DATA="$work/cluster" KV_BASE_PORT=$base KV_GATEWAY_PORT=$gw \
  ./scripts/cluster.sh start --nodes 3 >/dev/null
for wl in a b c w; do
  bench "3 nodes+gw N=3 ${wl^^}" "http://127.0.0.1:$gw" kv "$wl" $([ "$wl" = a ] || [ "$wl" = w ] || echo --no-load)
done
# The same cluster with the client talking to one node, as etcd's rows talk to one member: that
# node coordinates (Dynamo's client-driven coordination), stores its own copy in-process and
# sends the version to the two others; no gateway hop.
bench "3 nodes N=3 C, to a node" "http://127.0.0.1:$base" kv c --no-load
bench "3 nodes N=3 W, to a node" "http://127.0.0.1:$base" kv w
KV_DATA="$work/cluster" ./scripts/cluster.sh stop >/dev/null
base=22001; gw=28090
KV_DATA="$work/cluster2" KV_BASE_PORT=$base KV_GATEWAY_PORT=$gw ./scripts/cluster.sh start --nodes 3 >/dev/null
bench "3 nodes+gw N=3 C, threads per core" "http://127.0.0.1:$gw" kv c
bench "3 nodes+gw N=3 W, threads per core" "http://127.0.0.1:$gw" kv w
KV_DATA="$work/cluster2" ./scripts/cluster.sh stop >/dev/null

# 2b. The 3-node rows again with TLS on every listener (mutual TLS between the processes),
#     one worker thread each as in 2: what TLS costs. Certificates from a throw-away CA.
tls="$work/tls"; mkdir -p "$tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$tls/ca.key" \
  -out "$tls/ca.pem" -days 2 -subj /CN=bench-ca 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$tls/node.key" \
  -out "$tls/node.csr" -subj /CN=bench 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' >"$tls/ext"
openssl x509 -req -in "$tls/node.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial \
  -out "$tls/node.pem" -days 2 -extfile "$tls/ext" 2>/dev/null
base=23001; gw=28100
KV_TLS_CERT="$tls/node.pem" KV_TLS_KEY="$tls/node.key" KV_TLS_CA="$tls/ca.pem" KV_WORKER_THREADS=1 \
  KV_DATA="$work/cluster3" KV_BASE_PORT=$base KV_GATEWAY_PORT=$gw ./scripts/cluster.sh start --nodes 3 >/dev/null
bench "3 nodes+gw N=3 C, TLS" "https://127.0.0.1:$gw" kv c --tls-ca "$tls/ca.pem"
bench "3 nodes+gw N=3 W, TLS" "https://127.0.0.1:$gw" kv w --tls-ca "$tls/ca.pem"
KV_TLS_CA="$tls/ca.pem" KV_DATA="$work/cluster3" ./scripts/cluster.sh stop >/dev/null

# 3. etcd: 3 members on loopback, durable by default, through its v3 HTTP/JSON gateway.
cluster=""
declare -a cports
for i in 1 2 3; do cports[$i]=$(free_port); peer=$(free_port); eval "peer$i=$peer"; cluster+="e$i=http://127.0.0.1:$peer,"; done
cluster=${cluster%,}
for i in 1 2 3; do
  eval "peer=\$peer$i"
  etcd --name "e$i" --data-dir "$work/etcd$i" --listen-client-urls "http://127.0.0.1:${cports[$i]}" \
    --advertise-client-urls "http://127.0.0.1:${cports[$i]}" --listen-peer-urls "http://127.0.0.1:$peer" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer" --initial-cluster "$cluster" \
    --initial-cluster-state new --log-level error >"$work/etcd$i.log" 2>&1 &
  pids+=($!)
done
wait_http "http://127.0.0.1:${cports[1]}/health"
bench "etcd 3 members GET" "http://127.0.0.1:${cports[1]}" etcd c
bench "etcd 3 members PUT" "http://127.0.0.1:${cports[1]}" etcd w

# 4. Redis, single node: appendfsync always, then no persistence.
rp=$(free_port)
redis-server --port "$rp" --bind 127.0.0.1 --dir "$work" --appendonly yes --appendfsync always --save '' \
  --daemonize no >"$work/redis1.log" 2>&1 &
pids+=($!); sleep 0.5
bench "redis fsync always GET" "redis://127.0.0.1:$rp" redis c
bench "redis fsync always SET" "redis://127.0.0.1:$rp" redis w
rp2=$(free_port)
redis-server --port "$rp2" --bind 127.0.0.1 --appendonly no --save '' --daemonize no >"$work/redis2.log" 2>&1 &
pids+=($!); sleep 0.5
bench "redis no persistence GET" "redis://127.0.0.1:$rp2" redis c
bench "redis no persistence SET" "redis://127.0.0.1:$rp2" redis w

# 5. Memory: one node, N=1, filled with 1,000,000 keys of 100 bytes, then read for a while.
mkeys=${BENCH_MEMORY_KEYS:-1000000}
p=$(free_port); a=$(free_port)
"$bin/kvnode" --node-id mem --listen "127.0.0.1:$p" --peer-listen "127.0.0.1:$(free_port)" \
  --admin-listen "127.0.0.1:$a" --data-dir "$work/mem" --replicas 1 --sync batch \
  --cluster-secret-file "$secret" >"$work/mem.log" 2>&1 &
mem_pid=$!; pids+=($mem_pid)
wait_http "http://127.0.0.1:$a/health/live"
echo "bench: memory at $mkeys keys" >&2
"$bin/kvbench" --url "http://127.0.0.1:$p" --protocol kv --workload c --keys "$mkeys" --value-size "$vsize" \
  --concurrency "$conc" --duration 5 --label memory --json >/dev/null 2>&1
stored=$(curl -fsS "http://127.0.0.1:$a/metrics" | awk '/^kv_storage_keys /{print $2}')
rss=$(awk '/^VmRSS/{print $2}' "/proc/$mem_pid/status")
hwm=$(awk '/^VmHWM/{print $2}' "/proc/$mem_pid/status")
echo "{\"label\":\"memory\",\"keys\":$mkeys,\"stored\":${stored:-0},\"rss_kb\":$rss,\"hwm_kb\":$hwm}" >"$work/memory.json"

python3 scripts/bench_report.py "$results" "$secs" "$keys" "$conc" "$vsize" "$work/memory.json"
