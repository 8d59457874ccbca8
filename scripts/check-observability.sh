#!/usr/bin/env bash
# Checks the monitoring files against promtool and against the code:
#   - deploy/prometheus/prometheus.yml is a valid configuration (promtool check config), and
#     alerts.yml valid rules (promtool check rules);
#   - every alert fires on the series that should fire it and on no other
#     (promtool test rules deploy/prometheus/alerts_test.yml);
#   - every query of the Grafana dashboard deploy/grafana/kvstore.json parses: each becomes a
#     recording rule (Grafana variables replaced by stand-ins) in a temporary rule file that
#     promtool checks (scripts/dashboard_queries.py);
#   - every metric the dashboard and the alerts name is exported by the code (a string literal
#     in crates/*/src, less _bucket/_sum/_count; process_* when the process collector is
#     registered), and every route label is a route template of the code: a renamed metric or
#     route fails here, not silently on a dashboard.
#
#   scripts/check-observability.sh                     the checks above
#   scripts/check-observability.sh --live URL...       `promtool check metrics` on what each
#                                                      URL (a live /metrics) serves; fails on
#                                                      any problem it reports (KV_TLS_CA:
#                                                      the CA to trust for https URLs)
#
# Installs Debian's prometheus package (which holds promtool) when promtool is missing, and
# PyYAML in .venv when python3 lacks it.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "check-observability: $*" >&2; exit 1; }

need_promtool() {
  command -v promtool >/dev/null 2>&1 && return
  [ "$(id -u)" = 0 ] || die "promtool is missing; install Debian's prometheus package (apt-get install prometheus)"
  echo "check-observability: installing promtool (Debian package prometheus)"
  # --no-install-recommends: promtool and the server binary, not node-exporter and friends.
  # Containers refuse to start services from packages (policy-rc.d), so nothing starts.
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  command -v promtool >/dev/null 2>&1 || die "promtool still missing after installing prometheus"
}

if [ "${1:-}" = --live ]; then
  shift
  [ $# -gt 0 ] || die "usage: scripts/check-observability.sh --live URL..."
  need_promtool
  # https URLs of a cluster with TLS on: trust its CA (the variable every process reads).
  curl_tls=()
  if [ -n "${KV_TLS_CA:-}" ]; then curl_tls=(--cacert "$KV_TLS_CA"); fi
  status=0
  for url in "$@"; do
    body=$(curl -fsS -m 10 "${curl_tls[@]}" "$url") || { echo "check-observability: $url: cannot fetch" >&2; status=1; continue; }
    # promtool check metrics prints each problem (and exits non-zero on lint problems): fail on
    # either, so a problem it only prints still counts.
    if report=$(printf '%s\n' "$body" | promtool check metrics 2>&1) && [ -z "$report" ]; then
      echo "check-observability: $url: $(printf '%s\n' "$body" | grep -c '^# TYPE') metrics, no problems"
    else
      echo "check-observability: $url: promtool check metrics reports:" >&2
      printf '%s\n' "${report:-exit status non-zero, no output}" | sed 's/^/  /' >&2
      status=1
    fi
  done
  exit "$status"
fi
[ $# -eq 0 ] || die "unknown argument $1 (usage: scripts/check-observability.sh [--live URL...])"

need_promtool
python=python3
if ! "$python" -c 'import yaml' 2>/dev/null; then
  python=.venv/bin/python
  if ! [ -x "$python" ] || ! "$python" -c 'import yaml' 2>/dev/null; then
    [ -x "$python" ] || python3 -m venv .venv
    .venv/bin/pip install -q pyyaml
  fi
fi

tmp=$(mktemp -d /tmp/check-observability.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

echo "== promtool check config deploy/prometheus/prometheus.yml (and its rule files)"
promtool check config deploy/prometheus/prometheus.yml
echo "== promtool check rules deploy/prometheus/alerts.yml"
promtool check rules deploy/prometheus/alerts.yml
echo "== promtool test rules deploy/prometheus/alerts_test.yml"
(cd deploy/prometheus && promtool test rules alerts_test.yml)
echo "== every query of deploy/grafana/kvstore.json parses"
"$python" scripts/dashboard_queries.py rules deploy/grafana/kvstore.json >"$tmp/dashboard_rules.yml"
promtool check rules "$tmp/dashboard_rules.yml"
echo "== every metric and route named is one the code exports"
"$python" scripts/dashboard_queries.py names --source crates deploy/grafana/kvstore.json deploy/prometheus/alerts.yml
echo "check-observability: ok"
