#!/usr/bin/env bash
# The container deployment, end to end (make test-docker; .ci/run runs it after make test):
#
#   1. make image: kvstore:dev from deploy/docker/Dockerfile.local (scripts/image.sh; starts a
#      Docker engine when none runs)
#   2. deploy/docker/compose.yaml under a project name of its own, on free host ports, with a
#      cluster secret made here: 3 nodes and a gateway; wait until 3 members are normal
#   3. put and get through the gateway (curl); the host's kvctl signs admin commands
#   4. stop one node container: put and get still work (W = 2 of 3); start it again: it comes
#      back with its data (its volume) and is normal again
#   5. under a writing client (scripts/acked_writes.py, every 2xx recorded): scale nodes
#      3 -> 4, then 4 -> 3 by decommissioning the container compose would remove
#      (`kvctl leave` inside it), waiting until it has exited, `rm` and `--scale node=3`
#   6. read every acknowledged key back: missing must be 0
#
# Each membership change waits until the last one settled (every member normal, nothing left to
# hand off: docs/operations.md). A trap tears everything down, even on failure: the writer,
# `compose down -v`, and any container, network or volume of the project left over. Commands
# go to the host only through 127.0.0.1 (published ports) or `docker exec`.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

started=$SECONDS
step_at=$SECONDS
step() { echo "== [$((SECONDS - started)) s, last step $((SECONDS - step_at)) s] $*"; step_at=$SECONDS; }
fail() { echo "test-docker: FAILED: $*" >&2; exit 1; }

step "make image"
make --no-print-directory image
read -r -a compose_cmd <<<"$(scripts/image.sh compose-cmd)"
echo "compose command: ${compose_cmd[*]} ($("${compose_cmd[@]}" version --short 2>/dev/null || "${compose_cmd[@]}" version | head -1))"

project=kvtest$(date +%s)$$
work=$(mktemp -d /tmp/kv-docker-test.XXXXXX)
read -r gw_port gw_admin < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
export KV_IMAGE=${KV_IMAGE:-kvstore:dev}
export KV_PUBLISH_ADDR=127.0.0.1 KV_GATEWAY_PORT=$gw_port KV_GATEWAY_ADMIN_PORT=$gw_admin
export KV_CLUSTER_SECRET_FILE=$work/cluster.secret
# The secret, readable inside the containers by their user (10001) and on the host by us.
(umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$KV_CLUSTER_SECRET_FILE"; echo >>"$KV_CLUSTER_SECRET_FILE")
# Not root: readable by all, in a directory only this user can enter.
chown 10001:10001 "$KV_CLUSTER_SECRET_FILE" 2>/dev/null || chmod 644 "$KV_CLUSTER_SECRET_FILE"

compose() { "${compose_cmd[@]}" -p "$project" -f "$root/deploy/docker/compose.yaml" "$@"; }
url=http://127.0.0.1:$gw_port
admin=http://127.0.0.1:$gw_admin
kvctl() { "$root/target/release/kvctl" --url "$url" --admin-url "$admin" "$@"; }
writer=

cleanup() {
  local rc=$? left
  trap - EXIT INT TERM
  if [ -n "$writer" ] && kill -0 "$writer" 2>/dev/null; then kill "$writer" 2>/dev/null || true; wait "$writer" 2>/dev/null || true; fi
  if [ "$rc" != 0 ]; then
    echo "test-docker: FAILED (exit $rc); the containers' last log lines:" >&2
    compose logs --no-color --tail 20 >&2 2>/dev/null || true
  fi
  echo "== teardown: compose down -v"
  compose down -v --remove-orphans -t 30 >/dev/null 2>&1 || true
  # Whatever down missed (a container compose no longer lists), by the project's label.
  docker ps -aq --filter "label=com.docker.compose.project=$project" | xargs -r docker rm -fv >/dev/null 2>&1 || true
  docker network ls -q --filter "label=com.docker.compose.project=$project" | xargs -r docker network rm >/dev/null 2>&1 || true
  docker volume ls -q --filter "label=com.docker.compose.project=$project" | xargs -r docker volume rm >/dev/null 2>&1 || true
  left=$(docker ps -aq --filter "label=com.docker.compose.project=$project" | wc -l)
  if [ "$left" != 0 ]; then echo "test-docker: $left containers of $project are left" >&2; rc=1; fi
  rm -rf "$work"
  echo "test-docker: $([ "$rc" = 0 ] && echo ok || echo FAILED) in $((SECONDS - started)) s"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Node containers of the project that run, by compose's container number ("number id" lines).
nodes_running() {
  local id
  for id in $(docker ps -q --filter "label=com.docker.compose.project=$project" --filter "label=com.docker.compose.service=node"); do
    echo "$(docker inspect -f '{{index .Config.Labels "com.docker.compose.container-number"}}' "$id") $id"
  done | sort -n
}

# Until the gateway lists exactly $1 members normal and none joining or leaving, and every
# running node has nothing left to hand off (kv_ranges_dropping 0).
wait_settled() {
  local want=$1 deadline=$((SECONDS + ${2:-180})) counts id dropping d
  while [ "$SECONDS" -lt "$deadline" ]; do
    counts=$( (curl -fsS -m 2 "$admin/cluster/members" 2>/dev/null || true) | python3 -c 'import json, sys
try:
    ms = json.load(sys.stdin)["members"]
except Exception:
    ms = []
print(sum(m["status"] == "normal" for m in ms), sum(m["status"] in ("joining", "leaving") for m in ms))')
    if [ "$counts" = "$want 0" ] && [ "$(nodes_running | wc -l)" = "$want" ]; then
      dropping=0
      for id in $(nodes_running | cut -d' ' -f2); do
        d=$(docker exec "$id" curl -fsS -m 2 http://127.0.0.1:7200/metrics 2>/dev/null | awk '/^kv_ranges_dropping /{print $2}' || true)
        [ "${d:-1}" = 0 ] || dropping=1
      done
      [ "$dropping" = 0 ] && return 0
    fi
    sleep 0.5
  done
  kvctl members || true
  fail "the cluster did not settle at $want normal members (gateway: normal, changing = $counts)"
}

# Until the gateway shows member $1 with status $2.
wait_status() {
  local deadline=$((SECONDS + ${3:-60}))
  while [ "$SECONDS" -lt "$deadline" ]; do
    (curl -fsS -m 2 "$admin/cluster/members" 2>/dev/null || true) | python3 -c 'import json, sys
try:
    ms = json.load(sys.stdin)["members"]
except Exception:
    ms = []
sys.exit(0 if any(m["id"] == sys.argv[1] and m["status"] == sys.argv[2] for m in ms) else 1)' "$1" "$2" && return 0
    sleep 0.5
  done
  kvctl members || true
  fail "the gateway does not show $1 $2"
}

put() { # key value [query]: prints the status and X-Replicas
  curl -sS -m 15 -o /dev/null -w '%{http_code} %header{x-replicas}' -X PUT -H 'Content-Type: text/plain' \
    --data-binary "$2" "$url/kv/$1${3:-}"
}
expect_value() { # key value
  local got
  got=$(curl -sS -m 15 "$url/kv/$1") || fail "GET $1 did not answer"
  [ "$got" = "$2" ] || fail "GET $1: expected '$2', got '$got'"
  echo "GET $1 -> $got"
}
expect_put() { # key value [query]
  local got
  got=$(put "$@") || fail "PUT $1 did not answer"
  case "$got" in 2*) echo "PUT $1 -> $got" ;; *) fail "PUT $1 answered $got" ;; esac
}

step "compose up: project $project, 3 nodes and a gateway (client $url, admin $admin)"
compose up -d --scale node=3
for _ in $(seq 1 120); do curl -fsS -m 2 "$admin/health/ready" >/dev/null 2>&1 && break; sleep 1; done
curl -fsS -m 2 "$admin/health/ready" >/dev/null || fail "the gateway is not ready after 120 s"
wait_settled 3
kvctl members

step "put and get through the gateway"
expect_put greeting 'hello, docker'
expect_value greeting 'hello, docker'
expect_put persisted 'on every replica' '?w=all'
echo "signed admin command from the host: $(kvctl admin get /admin/workers | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["workers"]), "workers on the gateway")')"

read -r _ first <<<"$(nodes_running | head -1)"
first_id=$(docker exec "$first" hostname)
step "stop node container $first (node id $first_id)"
docker stop -t 30 "$first" >/dev/null
expect_put while-stopping 'two of three'
expect_value while-stopping 'two of three'
step "wait until the gateway shows $first_id down"
wait_status "$first_id" down
kvctl members
expect_put while-down 'two of three, once more'
expect_value while-down 'two of three, once more'
expect_value persisted 'on every replica'

step "start it again"
docker start "$first" >/dev/null
wait_settled 3
kvctl members
versions=$(docker exec "$first" kvctl --admin-url http://127.0.0.1:7200 admin get /admin/local/persisted |
  python3 -c 'import json, sys; print(len(json.load(sys.stdin)["versions"]))')
[ "$versions" = 1 ] || fail "the restarted node holds $versions versions of 'persisted', expected 1 (its volume kept nothing?)"
echo "the restarted node still holds 'persisted' on its volume"
expect_value while-stopping 'two of three'
expect_value while-down 'two of three, once more'

step "writer: fresh keys through the gateway, every acknowledged one recorded"
python3 scripts/acked_writes.py write --url "$url" --acked "$work/acked" --stop-file "$work/stop" \
  --prefix docker >"$work/counts.json" &
writer=$!
sleep 3

step "scale up: node=4"
compose up -d --no-recreate --scale node=4
wait_settled 4 300
kvctl members

read -r number victim <<<"$(nodes_running | tail -1)"
victim_id=$(docker exec "$victim" hostname)
step "scale down: decommission node container $victim (number $number, node id $victim_id), the one compose removes"
docker exec "$victim" kvctl --admin-url http://127.0.0.1:7200 leave
code=$(timeout 300 docker wait "$victim") || fail "$victim has not exited 300 s after leave"
[ "$code" = 0 ] || fail "$victim exited $code after leave, expected 0"
echo "$victim handed off its ranges and exited 0"
compose rm -f -v node >/dev/null
compose up -d --no-recreate --scale node=3
docker inspect "$victim" >/dev/null 2>&1 && fail "$victim still exists after rm"
wait_settled 3 300
kvctl members
sleep 3

step "stop the writer"
touch "$work/stop"
wait "$writer"
writer=
cat "$work/counts.json"

step "read every acknowledged key back through the gateway"
python3 scripts/acked_writes.py verify --url "$url" --acked "$work/acked" --counts "$work/counts.json"
