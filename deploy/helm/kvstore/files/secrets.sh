#!/bin/sh
# Hook Job of the kvstore chart (helm pre-install and pre-upgrade; Argo CD runs Helm hooks as
# PreSync): creates the cluster secret's and the client tokens' Secrets when they do not exist,
# and never changes one that does. They are made here, in the cluster, and not in the rendered
# manifests: `helm template` (Argo CD, Flux post-renderers, any GitOps renderer) cannot look
# up what exists, so a secret generated at render time would be a new one at every sync, and
# every restarted pod would refuse the others (unknown_key). The manifests are the same at
# every rendering; the secrets are made once.
#
# Arguments: NAME KEY KIND, one triple per Secret; KIND is `cluster` (64 random characters) or
# `tokens` (a client tokens file with one read-write token named `default`).
set -u
api=${KUBERNETES_API:-https://kubernetes.default.svc}
sa=${SERVICE_ACCOUNT_DIR:-/var/run/secrets/kubernetes.io/serviceaccount}
secrets="$api/api/v1/namespaces/$POD_NAMESPACE/secrets"
labels=${SECRET_LABELS:-"{}"}

# The HTTP status of a call to the API, retried while the API does not answer (000) or fails
# (5xx), five times at most.
call() {
  attempt=1
  while :; do
    code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 \
      --cacert "$sa/ca.crt" -H "Authorization: Bearer $(cat "$sa/token")" "$@")
    case $code in
      000 | 5??) ;;
      *) break ;;
    esac
    [ "$attempt" -ge 5 ] && break
    attempt=$((attempt + 1))
    sleep "${RETRY_DELAY:-2}"
  done
  printf '%s' "${code:-000}"
}

random() {
  # Letters and digits only: safe in a file, a header and JSON.
  head -c 512 /dev/urandom | tr -dc 'A-Za-z0-9' | head -c "$1"
}

ensure() {
  name=$1 key=$2 kind=$3
  code=$(call "$secrets/$name")
  case $code in
    200)
      echo "secrets: $name exists: kept as it is"
      return 0
      ;;
    404) ;;
    *)
      echo "secrets: cannot read Secret $name (HTTP $code): nothing created" >&2
      return 1
      ;;
  esac
  case $kind in
    cluster) content=$(random 64) ;;
    tokens) content="write $(random 48) default
" ;;
    *)
      echo "secrets: unknown kind $kind" >&2
      return 1
      ;;
  esac
  if [ "${#content}" -lt 40 ]; then
    echo "secrets: /dev/urandom gave too little: nothing created" >&2
    return 1
  fi
  data=$(printf '%s' "$content" | base64 | tr -d '\n')
  body=$(printf '{"apiVersion":"v1","kind":"Secret","type":"Opaque","metadata":{"name":"%s","labels":%s,"annotations":{"helm.sh/resource-policy":"keep"}},"data":{"%s":"%s"}}' \
    "$name" "$labels" "$key" "$data")
  code=$(call -X POST -H 'Content-Type: application/json' --data "$body" "$secrets")
  case $code in
    201) echo "secrets: $name created" ;;
    # Another run made it meanwhile: theirs is kept.
    409) echo "secrets: $name exists: kept as it is" ;;
    *)
      echo "secrets: cannot create Secret $name (HTTP $code)" >&2
      return 1
      ;;
  esac
}

failed=0
while [ "$#" -ge 3 ]; do
  ensure "$1" "$2" "$3" || failed=1
  shift 3
done
exit "$failed"
