#!/bin/sh
# preStop hook of the kvstore chart's kvnode containers. A pod stops for many reasons: a
# rolling restart, a drain, an eviction, a deletion; each is a restart (the node is down, then
# back with its data). Only a scale-down removes a member: then the StatefulSet's replicas
# (read from the API; a Role allows `get statefulsets/scale`) are at most this pod's ordinal,
# and the node is decommissioned (`kvctl leave`: it hands its ranges to their new owners and
# exits) before Kubernetes deletes its volume. Any doubt (the API does not answer, the node
# cannot leave) stops it as a restart: a member that did not leave is down, never lost, and
# `kvctl remove` finishes the job.
set -u
log_file=${PRESTOP_LOG:-/proc/1/fd/2}
log() { echo "preStop: $*" >>"$log_file" 2>/dev/null || echo "preStop: $*" >&2; }
api=${KUBERNETES_API:-https://kubernetes.default.svc}
sa=${SERVICE_ACCOUNT_DIR:-/var/run/secrets/kubernetes.io/serviceaccount}
ordinal=${POD_NAME##*-}

if ! scale=$(curl -sS --fail --max-time 10 --retry 3 --retry-all-errors --retry-delay 1 \
  --cacert "$sa/ca.crt" -H "Authorization: Bearer $(cat "$sa/token")" \
  "$api/apis/apps/v1/namespaces/$POD_NAMESPACE/statefulsets/$STATEFULSET/scale"); then
  log "cannot read the replicas of $STATEFULSET: stopping as a restart"
  exit 0
fi
# A Scale object: {"spec":{"replicas":N},...}; replicas is omitted when 0.
compact=$(printf '%s' "$scale" | tr -d ' \t\r\n')
case $compact in
  *'"spec":{}'*) replicas=0 ;;
  *) replicas=$(printf '%s' "$compact" | sed -n 's/.*"spec":{"replicas":\([0-9][0-9]*\)}.*/\1/p') ;;
esac
if [ -z "$replicas" ]; then
  log "no replicas in the Scale of $STATEFULSET: stopping as a restart"
  exit 0
fi
if [ "$ordinal" -lt "$replicas" ]; then
  log "ordinal $ordinal < replicas $replicas: a restart, not a removal"
  exit 0
fi
if [ "$replicas" -eq 0 ]; then
  log "scaled to zero: no member left to hand ranges to; stopping without leaving"
  exit 0
fi

log "ordinal $ordinal >= replicas $replicas: decommissioning (kvctl leave)"
attempt=1
while :; do
  out=$(kvctl leave 2>&1)
  status=$?
  [ "$status" -eq 0 ] && break
  # 5: unavailable, a retry may help; anything else (4: refused, e.g. still joining) will not.
  if [ "$status" -ne 5 ] || [ "$attempt" -ge 10 ]; then
    log "kvctl leave failed (exit $status): $out; stopping as a restart: remove the member with kvctl remove"
    exit 0
  fi
  attempt=$((attempt + 1))
  sleep 3
done
log "leaving: $out; waiting for kvnode to hand off its ranges and exit"
# shellcheck disable=SC2086 # KV_TLS_CA, when set, adds two words.
while curl -fs -o /dev/null --max-time 5 ${KV_TLS_CA:+--cacert "$KV_TLS_CA"} "$KV_ADMIN_URL/health/live"; do
  sleep 2
done
log "kvnode has exited"
