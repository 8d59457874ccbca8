#!/usr/bin/env bash
# Installs what `make test` needs, idempotently: the Rust components, cargo-nextest,
# schemathesis in .venv, (as root) iptables for the partition tests and promtool (Debian's
# prometheus package) for the metrics, alert and dashboard checks.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo is missing; install Rust with rustup first" >&2
  exit 1
fi
if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "install-deps: cargo-nextest not found; installing it from crates.io"
  cargo install cargo-nextest --locked
fi
command -v python3 >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq python3; }
command -v curl >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq curl; }
# Python tools in a local virtualenv: schemathesis checks docs/openapi.yaml against a live
# cluster (make contract).
if [ ! -x .venv/bin/schemathesis ] || ! .venv/bin/schemathesis --version 2>/dev/null | grep -q '4.32.5'; then
  python3 -m venv .venv 2>/dev/null || { apt-get update -qq && apt-get install -y -qq python3-venv && python3 -m venv .venv; }
  .venv/bin/pip install -q 'schemathesis==4.32.5'
fi
# The fault-injection suite partitions nodes with iptables (it says so and skips when not root).
if [ "$(id -u)" = 0 ] && ! command -v iptables >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq iptables
fi
# libfaketime runs one node of the clock-skew test with its wall clock ahead
# (crates/cluster-tests/tests/lifecycle.rs, s4).
if [ "$(id -u)" = 0 ] && [ ! -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime
fi
# promtool checks the live metrics of both binaries (crates/cluster-tests/tests/observability.rs),
# the alert rules and the dashboard's queries (scripts/check-observability.sh).
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
  else
    echo "install-deps: promtool missing; install Debian's prometheus package (as root)" >&2
  fi
fi
