#!/usr/bin/env bash
# `make contract`: checks docs/openapi.yaml against a live cluster with schemathesis: 3 nodes and
# a gateway (scripts/cluster.sh, the debug binaries `make test` built), the client API of the
# gateway and of a node, the admin API of a node and of the gateway. Fails on any 5xx and on
# any response outside the document (status, content type, headers, body schema).
#
# Environment: SCHEMATHESIS_EXAMPLES (test cases per operation and phase, default 150),
# SCHEMATHESIS_SEED (default 1), KV_BIN (default ./target/debug).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
[ -x "$venv/bin/schemathesis" ] || ./scripts/install-deps.sh
bin=${KV_BIN:-./target/debug}
examples=${SCHEMATHESIS_EXAMPLES:-150}
seed=${SCHEMATHESIS_SEED:-1}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Ports below the ephemeral range, as the tests use, so that no outgoing connection takes one.
base=$((20000 + RANDOM % 4000 * 3)); gw=$((base + 300))
data=$(mktemp -d /tmp/kv-contract.XXXXXX)
env=(KV_BIN="$bin" KV_DATA="$data" KV_BASE_PORT="$base" KV_GATEWAY_PORT="$gw")
cleanup() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    for log in "$data"/logs/*.log; do [ -f "$log" ] && { echo "== $log" >&2; tail -n 15 "$log" >&2; }; done
  fi
  env "${env[@]}" ./scripts/cluster.sh stop >/dev/null 2>&1 || true
  rm -rf "$data"
}
trap cleanup EXIT

env "${env[@]}" ./scripts/cluster.sh start --nodes 3 >/dev/null
checks=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance
run() { # url tag
  echo "== schemathesis: $2 API at $1"
  "$venv/bin/schemathesis" run docs/openapi.yaml --url "$1" --include-tag "$2" --checks "$checks" \
    --mode all --max-examples "$examples" --seed "$seed" --workers 1 --no-color \
    --generation-database none --request-timeout 20 --suppress-health-check all
}
run "http://127.0.0.1:$gw" client
run "http://127.0.0.1:$base" client
run "http://127.0.0.1:$((base + 200))" admin
run "http://127.0.0.1:$((gw + 1))" admin
echo "contract: every response of the client and admin APIs matched docs/openapi.yaml"
