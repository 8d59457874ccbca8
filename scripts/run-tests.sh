#!/usr/bin/env bash
# Runs every test with nextest and leaves no kvnode behind, even when a test fails or hangs.
set -uo pipefail
cd "$(dirname "$0")/.."
target="$(pwd)/target/debug"

cleanup() {
  # Tests kill their children on drop; this catches any a killed test process left behind.
  pkill -KILL -f "^$target/kvnode" 2>/dev/null || true
  pkill -KILL -f "^$target/kvgateway" 2>/dev/null || true
  # Partition rules of the fault-injection tests (comment kv-test-<pid>) a killed test left.
  if command -v iptables >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    iptables -S INPUT 2>/dev/null | grep -- '--comment "\?kv-test-' | sed 's/^-A /-D /' | while read -r rule; do
      eval "iptables $rule" || true
    done
  fi
}
trap cleanup EXIT

# Multi-process tests start the workspace's binaries (kvnode, kvgateway, kvctl) from the target
# directory; a test run alone builds only those of packages with integration tests.
cargo build --workspace --bins
cargo nextest run --workspace --no-fail-fast
