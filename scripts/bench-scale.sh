#!/usr/bin/env bash
# `make bench-scale`: how the store behaves as it grows, on this machine (not in `make test`:
# it writes about 13 million keys and takes 15-20 minutes).
#
#   1. One node (N=1, --sync batch, default --cache-mb) filled with 1,000,000 keys of 100 bytes,
#      then read for BENCH_SECS, twice (from the moment the load ends, then once more): resident
#      memory (VmRSS, peak VmHWM) and reads per second of each.
#   2. The same with 10,000,000 keys (a fresh node).
#   3. Three nodes and a gateway holding 2,000,000 keys; a fourth node joins
#      (`scripts/cluster.sh add`, which returns once every member is normal): the time it took,
#      the keys and value bytes it streamed in (kv_stream_keys_total, kv_stream_bytes_total), and
#      what this disk writes sequentially with fsync (dd), to compare the rate with.
#
# Prints the rows and writes them to docs/benchmarks.md between the BENCH-SCALE markers.
# Environment: BENCH_SECS (default 10), SCALE_SMALL (1000000), SCALE_LARGE (10000000),
# SCALE_JOIN (2000000): smaller numbers for a quick look.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${BENCH_SECS:-10}
small=${SCALE_SMALL:-1000000}
large=${SCALE_LARGE:-10000000}
join_keys=${SCALE_JOIN:-2000000}
work=$(mktemp -d /tmp/kv-bench-scale.XXXXXX)
pids=()
cleanup() {
  local rc=$?
  disown -a 2>/dev/null || true
  if [ "$rc" -ne 0 ]; then
    for log in "$work"/*.log "$work"/cluster/logs/*.log; do
      [ -f "$log" ] && { echo "== $log" >&2; tail -n 20 "$log" >&2; }
    done
  fi
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  KV_DATA="$work/cluster" ./scripts/cluster.sh stop >/dev/null 2>&1 || true
  sleep 1
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --bins
bin=./target/release
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 300); do curl -fsS -m 1 "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "bench-scale: $1 not ready" >&2; return 1; }
num() { python3 -c "import sys; print(f'{int(sys.argv[1]):,}')" "$1"; } # 1234567 -> 1,234,567
metric() { # admin-url name [label-filter]
  curl -fsS "$1/metrics" |
    awk -v n="$2" -v f="${3:-}" '($1 == n || index($1, n "{") == 1) && index($1, f) { s += $2 } END { printf "%d", s }'
}
secret="$work/cluster.secret"
(umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$secret")
rows="$work/rows.md"
: >"$rows"

# 1 and 2: one node at `keys` keys.
one_node() { # keys
  local keys=$1 p a pid reads again rss hwm
  p=$(free_port); a=$(free_port)
  "$bin/kvnode" --node-id "s$keys" --listen "127.0.0.1:$p" --peer-listen "127.0.0.1:$(free_port)" \
    --admin-listen "127.0.0.1:$a" --data-dir "$work/s$keys" --replicas 1 --sync batch \
    --cluster-secret-file "$secret" >"$work/s$keys.log" 2>&1 &
  pid=$!; pids+=("$pid")
  wait_http "http://127.0.0.1:$a/health/live"
  echo "bench-scale: one node, $keys keys (load, then $secs s of reads)" >&2
  local started=$SECONDS
  reads=$("$bin/kvbench" --url "http://127.0.0.1:$p" --workload c --keys "$keys" --value-size 100 \
    --concurrency 64 --duration "$secs" --label "c$keys" --json 2>/dev/null |
    python3 -c 'import json,sys; print(round(json.loads(sys.stdin.read())["ops_per_sec"]))')
  local took=$((SECONDS - started))
  # The same reads again: the first row starts the moment the load ends, while the load's last
  # flushes and compactions still run and the cache holds what the writes read; this one is
  # what a node holding that many keys serves once they are done.
  again=$("$bin/kvbench" --url "http://127.0.0.1:$p" --workload c --no-load --keys "$keys" --value-size 100 \
    --concurrency 64 --duration "$secs" --label "c$keys-again" --json 2>/dev/null |
    python3 -c 'import json,sys; print(round(json.loads(sys.stdin.read())["ops_per_sec"]))')
  rss=$(awk '/^VmRSS/{print int($2/1024)}' "/proc/$pid/status")
  hwm=$(awk '/^VmHWM/{print int($2/1024)}' "/proc/$pid/status")
  local stored
  stored=$(metric "http://127.0.0.1:$a" kv_storage_keys)
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  printf '| one node, %s keys of 100 B (%s stored; load and reads took %s s) | %s MB (peak %s MB) | %s, then %s |\n' \
    "$(num "$keys")" "$(num "$stored")" "$took" "$rss" "$hwm" "$(num "$reads")" "$(num "$again")" >>"$rows"
  echo "$reads $again"
}
r_small=$(one_node "$small")
r_large=$(one_node "$large")

# 3: a fourth node joins three holding `join_keys` keys.
base=24001; gw=28200
export KV_DATA="$work/cluster" KV_BASE_PORT=$base KV_GATEWAY_PORT=$gw KV_BIN=$bin
./scripts/cluster.sh start --nodes 3 >/dev/null
echo "bench-scale: 3 nodes, loading $join_keys keys" >&2
"$bin/kvbench" --url "http://127.0.0.1:$gw" --workload c --keys "$join_keys" --value-size 100 --concurrency 64 \
  --duration 1 --label load --json >/dev/null 2>&1
echo "bench-scale: a fourth node joins" >&2
started=$(date +%s.%N)
./scripts/cluster.sh add >/dev/null
took=$(python3 -c "import time; print(f'{time.time() - $started:.1f}')")
n4_admin="http://127.0.0.1:$((base + 200 + 3))"
in_keys=$(metric "$n4_admin" kv_stream_keys_total 'direction="in"')
in_bytes=$(metric "$n4_admin" kv_stream_bytes_total 'direction="in"')
./scripts/cluster.sh stop >/dev/null
dd_rate=$(dd if=/dev/zero of="$work/dd.bin" bs=1M count=256 oflag=direct conv=fsync 2>&1 |
  awk '/copied/{print $(NF-1), $NF}')
rm -f "$work/dd.bin"
rate=$(python3 -c "print(f'{$in_bytes / max($took, 0.1) / 1e6:.1f}')")
printf '| a 4th node joins 3 holding %s keys | %s s | %s keys, %s MB of values streamed in (%s MB/s); this disk writes %s with fsync |\n' \
  "$(num "$join_keys")" "$took" "$(num "$in_keys")" "$((in_bytes / 1000000))" "$rate" "$dd_rate" >>"$rows"
read -r first_small again_small <<<"$r_small"
read -r first_large again_large <<<"$r_large"
ratio=$(python3 -c "print(f'{$first_large / max($first_small, 1):.2f}')")
ratio_again=$(python3 -c "print(f'{$again_large / max($again_small, 1):.2f}')")
printf '| reads at %s keys against %s keys | %sx in the first %s s after the load, %sx in the next %s s | |\n' \
  "$(num "$large")" "$(num "$small")" "$ratio" "$secs" "$ratio_again" "$secs" >>"$rows"

table=$(printf '| row | result | reads/s |\n|---|---|---|\n'; cat "$rows")
echo "$table"
python3 - "$table" <<'EOF'
import re, sys, datetime
table = sys.argv[1]
path = "docs/benchmarks.md"
text = open(path).read()
block = f"<!-- BENCH-SCALE -->\nMeasured {datetime.date.today()} by `make bench-scale` on this machine (release build).\n\n{table}\n<!-- /BENCH-SCALE -->"
if "<!-- BENCH-SCALE -->" in text:
    text = re.sub(r"<!-- BENCH-SCALE -->.*?<!-- /BENCH-SCALE -->", lambda _: block, text, flags=re.S)
else:
    text = text.rstrip() + "\n\n## Scale (`make bench-scale`)\n\n" + block + "\n"
open(path, "w").write(text)
EOF
