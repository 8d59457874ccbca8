#!/usr/bin/env bash
# make test-upgrade: a rolling upgrade from the previous release under load.
#
# Builds the last release in RELEASES (its tag, or the commit RELEASES names when the clone has
# no tags) in a git worktree under target/upgrade, then runs the cluster test
# a_rolling_upgrade_and_a_downgrade_fail_no_request_and_lose_no_write with KV_TEST_BIN_DIR
# naming the previous release's binaries: 3 nodes and 2 gateways start on them and are
# replaced one at a time by this tree's, under a writing and reading load through both
# gateways; then one node is downgraded and upgraded again. It prints the requests, the
# failures, the slowest answer and the acknowledged writes lost (all must be 0).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
say() { echo "test-upgrade: $*"; }

read -r tag commit < <(grep -v '^#' RELEASES | tail -n 1)
[ -n "${tag:-}" ] && [ -n "${commit:-}" ] || { say "RELEASES names no release"; exit 2; }
if sha=$(git rev-parse -q --verify "$tag^{commit}" 2>/dev/null); then
  [ "$sha" = "$commit" ] || { say "tag $tag is $sha but RELEASES says $commit"; exit 2; }
else
  git cat-file -e "$commit^{commit}" 2>/dev/null || { say "neither tag $tag nor commit $commit is in this clone"; exit 2; }
  say "no tag $tag in this clone: using commit $commit from RELEASES"
fi

tree="$root/target/upgrade/$tag"
if [ -d "$tree" ] && [ "$(git -C "$tree" rev-parse HEAD 2>/dev/null)" != "$commit" ]; then
  git worktree remove --force "$tree"
fi
if [ ! -d "$tree" ]; then
  mkdir -p "$root/target/upgrade"
  git worktree prune
  git worktree add --detach "$tree" "$commit" >/dev/null
fi
old="$tree/target/debug"
cleanup() {
  pkill -KILL -f "^$old/kv(node|gateway)" 2>/dev/null || true
  pkill -KILL -f "^$root/target/debug/kv(node|gateway)" 2>/dev/null || true
}
trap cleanup EXIT

started=$SECONDS
say "building $tag ($commit) in $tree"
(cd "$tree" && cargo build --bins -p kv-node -p kv-gateway -p kv-client)
say "building this tree's binaries"
cargo build --workspace --bins
say "builds took $((SECONDS - started)) s; $("$old/kvnode" --version) -> $("$root/target/debug/kvnode" --version)"
test=a_rolling_upgrade_and_a_downgrade_fail_no_request_and_lose_no_write
say "a rolling restart of this release under load"
cargo nextest run -p kv-cluster-tests --test upgrade --run-ignored only --no-capture "$test"
say "a rolling upgrade from $tag under load"
KV_TEST_BIN_DIR="$old" cargo nextest run -p kv-cluster-tests --test upgrade --run-ignored only --no-capture "$test"
say "ok"
