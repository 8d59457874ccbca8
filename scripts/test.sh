#!/usr/bin/env bash
# `make test`: every check, in stages, each timed; a summary of the stage times at the end.
# Stages: deps (install what the checks need), fmt, lint (clippy -D warnings), unit (build the
# binaries and run every test with nextest), docs-check (the README's and docs/api.md's curl
# examples against a real local cluster), contract (docs/openapi.yaml against a live cluster,
# schemathesis), observability (alert rules and their tests, the dashboard's queries), deploy
# (the Helm chart and deploy/k8s rendered, validated and scanned). Stops at the first failing
# stage.
set -uo pipefail
cd "$(dirname "$0")/.."

times=()
total_start=$(date +%s)
run_stage() { # name make-target
  local name=$1 target=$2 start status
  start=$(date +%s)
  echo "== stage $name"
  make --no-print-directory "$target"
  status=$?
  times+=("$(printf '%-13s %4ss' "$name" $(( $(date +%s) - start )))")
  if [ "$status" -ne 0 ]; then
    echo "== stage $name FAILED after $(( $(date +%s) - start ))s"
    summary
    exit "$status"
  fi
}
summary() {
  echo "== stage times"
  printf '   %s\n' "${times[@]}"
  echo "   total       $(( $(date +%s) - total_start ))s"
}

run_stage deps deps
run_stage fmt fmt
run_stage lint lint
run_stage unit unit
run_stage docs-check docs-check
run_stage contract contract
run_stage python-client python-client
run_stage observability observability-check
run_stage deploy deploy-check
summary
