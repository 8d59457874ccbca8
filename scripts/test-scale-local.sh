#!/usr/bin/env bash
# 3 -> 5 -> 3 nodes on this machine under a writing client, with scripts/cluster.sh (start,
# two adds at once, remove twice, stop), and every acknowledged write read back afterwards: the
# local twin of scripts/test-docker.sh.
#
#   scripts/test-scale-local.sh        (make test-scale-local)
#
# A cluster in a temporary directory on free ports (it does not touch ./data or a `make run`
# cluster), release binaries from KV_BIN (./target/release). Stops everything it started, even
# on failure. Prints each step's time and the counts: written, acknowledged, read back, missing
# (which must be 0).
set -euo pipefail
cd "$(dirname "$0")/.."

export KV_BIN=${KV_BIN:-./target/release}
for b in kvnode kvgateway kvctl; do
  [ -x "$KV_BIN/$b" ] || { echo "test-scale-local: $KV_BIN/$b missing; run cargo build --release --bins" >&2; exit 1; }
done

work=$(mktemp -d /tmp/kv-scale-local.XXXXXX)
export KV_DATA=$work/data
# Free ports: node i uses base+i-1, +100, +200 (i up to 9); the gateway two more.
read -r KV_BASE_PORT KV_GATEWAY_PORT < <(python3 - <<'EOF'
import random, socket
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); return True
    except OSError:
        return False
    finally:
        s.close()
for _ in range(1000):
    base, gw = random.randrange(20000, 29000, 10), random.randrange(30000, 39000, 10)
    if all(free(base + o + i) for o in (0, 100, 200) for i in range(10)) and free(gw) and free(gw + 1):
        print(base, gw); break
EOF
)
export KV_BASE_PORT KV_GATEWAY_PORT
url=http://127.0.0.1:$KV_GATEWAY_PORT
kvctl=("$KV_BIN/kvctl" --url "$url" --admin-url "http://127.0.0.1:$((KV_GATEWAY_PORT + 1))")
writer=

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$writer" ] && kill -0 "$writer" 2>/dev/null; then kill "$writer" 2>/dev/null || true; wait "$writer" 2>/dev/null || true; fi
  scripts/cluster.sh stop >/dev/null 2>&1 || true
  if [ "$rc" != 0 ]; then
    echo "test-scale-local: FAILED (exit $rc); last log lines:" >&2
    tail -n 15 "$KV_DATA"/logs/*.log >&2 2>/dev/null || true
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

started=$SECONDS
step_at=$SECONDS
step() { echo "== [$((SECONDS - started)) s, last step $((SECONDS - step_at)) s] $*"; step_at=$SECONDS; }
members() { KV_CLUSTER_SECRET_FILE=$KV_DATA/cluster.secret "${kvctl[@]}" members; }

step "start 3 nodes and a gateway (ports $KV_BASE_PORT.., gateway $KV_GATEWAY_PORT, data $KV_DATA)"
scripts/cluster.sh start --nodes 3
members

step "writer: fresh keys through the gateway, every acknowledged one recorded"
python3 scripts/acked_writes.py write --url "$url" --acked "$work/acked" --stop-file "$work/stop" \
  --prefix local >"$work/counts.json" &
writer=$!
sleep 3

step "scale up: add a fourth and a fifth node at the same time (two cluster.sh add at once)"
scripts/cluster.sh add &
first=$!
scripts/cluster.sh add
wait "$first"
members

step "scale down: decommission them, one after the other"
scripts/cluster.sh remove
scripts/cluster.sh remove
members
sleep 3

step "stop the writer"
touch "$work/stop"
wait "$writer"
writer=
cat "$work/counts.json"

step "read every acknowledged key back"
python3 scripts/acked_writes.py verify --url "$url" --acked "$work/acked" --counts "$work/counts.json"

step "done"
echo "test-scale-local: ok in $((SECONDS - started)) s"
