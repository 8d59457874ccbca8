#!/bin/sh
# Init container of the kvstore chart: writes the zone of the Kubernetes node this pod runs on
# to $ZONE_FILE, for start.sh. The zone is the node's label $ZONE_LABEL (the downward API
# cannot read node labels, so the pod reads its node from the API: a ClusterRole allows `get
# nodes`). A node without the label gets $ZONE_DEFAULT. An API that does not answer fails the
# container (Kubernetes retries it): a member must never start in a wrong zone, since its
# zone decides where replicas go.
set -u
zone_file=${ZONE_FILE:-/var/run/kvstore/zone}
api=${KUBERNETES_API:-https://kubernetes.default.svc}
sa=${SERVICE_ACCOUNT_DIR:-/var/run/secrets/kubernetes.io/serviceaccount}

if ! node=$(curl -sS --fail --max-time 10 --retry 5 --retry-all-errors --retry-delay 2 \
  --cacert "$sa/ca.crt" -H "Authorization: Bearer $(cat "$sa/token")" "$api/api/v1/nodes/$NODE_NAME"); then
  echo "zone: cannot read node $NODE_NAME from the Kubernetes API" >&2
  exit 1
fi
# The label as a JSON member, "key":"value"; dots in the key are literal.
key=$(printf '%s' "$ZONE_LABEL" | sed 's/\./\\./g')
zone=$(printf '%s' "$node" | tr -d '\r\n' | grep -o "\"$key\" *: *\"[^\"]*\"" | head -n 1 \
  | sed 's/.*: *"\([^"]*\)"$/\1/')
case $zone in
  '' | *[!A-Za-z0-9._-]*)
    echo "zone: node $NODE_NAME has no usable label $ZONE_LABEL ('$zone'): zone $ZONE_DEFAULT" >&2
    zone=$ZONE_DEFAULT
    ;;
esac
printf '%s\n' "$zone" >"$zone_file"
echo "zone: $zone (node $NODE_NAME)"
