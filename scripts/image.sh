#!/usr/bin/env bash
# Builds the container image kvstore:dev (and kvstore:<crate version>) without a registry:
#
#   scripts/image.sh           (make image) the engine if needed, the base, the binaries, the image
#   scripts/image.sh engine    only make sure a Docker engine and a compose command are there
#   scripts/image.sh stop-engine  stop the dockerd `engine` started, and remove Docker's iptables rules
#
# Idempotent, step by step:
#   1. Docker: installs Debian's docker.io (and docker-compose when neither `docker compose` nor
#      `docker-compose` works) if missing, and starts dockerd in the background when none
#      answers (log in /var/log/kvstore-dockerd.log, pid in /run/kvstore-dockerd.pid).
#   2. The base image kvstore-base:bookworm: debootstrap --variant=minbase bookworm with
#      ca-certificates and curl, imported with `docker import`. Skipped when it exists.
#   3. The release binaries: `cargo build --release --bins`, only if one is missing.
#   4. kvstore:dev from deploy/docker/Dockerfile.local, whose runtime stage must be identical
#      to deploy/docker/Dockerfile's (checked first), in a context holding only the binaries
#      (debug info stripped: the image carries symbols, not line tables).
#
# Environment: KV_IMAGE (kvstore:dev), KV_BASE_IMAGE (kvstore-base:bookworm), KV_BIN
# (./target/release), DEBIAN_MIRROR (http://deb.debian.org/debian), CARGO (cargo).
set -euo pipefail
cd "$(dirname "$0")/.."

image=${KV_IMAGE:-kvstore:dev}
base_image=${KV_BASE_IMAGE:-kvstore-base:bookworm}
bin=${KV_BIN:-./target/release}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
binaries=(kvnode kvgateway kvctl kvbench)

say() { echo "image.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

apt_install() {
  [ "$(id -u)" = 0 ] || die "need $* but not root: install them (apt-get install $*) and run again"
  say "installing $* from Debian"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# A Docker engine that answers, started here when none runs.
ensure_engine() {
  if docker info >/dev/null 2>&1; then return 0; fi
  if ! command -v docker >/dev/null 2>&1 || ! command -v dockerd >/dev/null 2>&1; then
    apt_install docker.io
  fi
  [ "$(id -u)" = 0 ] || die "no Docker engine answers and only root can start one here"
  # Docker sets the FORWARD policy to DROP; the one before it is put back by stop-engine.
  if command -v iptables >/dev/null 2>&1; then
    iptables -S FORWARD 2>/dev/null | awk '$1 == "-P" {print $3}' >/run/kvstore-forward-policy || true
  fi
  say "starting dockerd (log /var/log/kvstore-dockerd.log)"
  # Detached from this shell's session and output, so that a caller waiting for our output to
  # close (CI) is not held open by the daemon.
  setsid dockerd </dev/null >>/var/log/kvstore-dockerd.log 2>&1 &
  echo $! >/run/kvstore-dockerd.pid
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && { say "dockerd is up (pid $(cat /run/kvstore-dockerd.pid))"; return 0; }
    kill -0 "$(cat /run/kvstore-dockerd.pid)" 2>/dev/null || break
    sleep 1
  done
  tail -n 20 /var/log/kvstore-dockerd.log >&2 || true
  die "dockerd did not come up; its log is above"
}

# Prints the compose command: the `docker compose` plugin if present, else docker-compose
# (Debian bookworm ships 1.29), installed when neither is there.
compose_cmd() {
  if docker compose version >/dev/null 2>&1; then echo "docker compose"; return; fi
  if ! command -v docker-compose >/dev/null 2>&1; then apt_install docker-compose >&2; fi
  command -v docker-compose >/dev/null 2>&1 || die "no docker compose plugin and no docker-compose"
  echo "docker-compose"
}

# The runtime stages of the two Dockerfiles, from `FROM ${BASE_IMAGE} AS runtime` down, must be
# the same text: the image built here is the image users build from source.
check_dockerfiles() {
  # shellcheck disable=SC2016 # a sed program, not a shell expansion
  local stage='/^FROM \${BASE_IMAGE} AS runtime$/,$p'
  local a b
  a=$(sed -n "$stage" deploy/docker/Dockerfile)
  b=$(sed -n "$stage" deploy/docker/Dockerfile.local)
  [ -n "$a" ] || die "deploy/docker/Dockerfile has no 'FROM \${BASE_IMAGE} AS runtime' line"
  if [ "$a" != "$b" ]; then
    diff <(echo "$a") <(echo "$b") >&2 || true
    die "the runtime stages of deploy/docker/Dockerfile and Dockerfile.local differ (above); keep them identical"
  fi
  say "Dockerfile and Dockerfile.local have the same runtime stage"
}

# Removes a debootstrap target, never what is mounted inside it (a failed debootstrap can leave
# proc or sys mounted there).
remove_root() {
  awk -v r="$1/" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do umount -l "$m" || true; done
  rm -rf --one-file-system "$1"
}

ensure_base() {
  if docker image inspect "$base_image" >/dev/null 2>&1; then
    say "base $base_image exists (docker rmi it to rebuild)"
    return 0
  fi
  command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
  local started=$SECONDS root
  root=$(mktemp -d /var/tmp/kvstore-base.XXXXXX)
  # shellcheck disable=SC2064 # expand now: the trap must remove this very directory
  trap "remove_root '$root'" EXIT
  say "debootstrap minbase bookworm into $root from $mirror (a minute or two)"
  if ! debootstrap --variant=minbase --include=ca-certificates,curl bookworm "$root" "$mirror" >"$root.log" 2>&1; then
    tail -n 30 "$root.log" >&2
    rm -f "$root.log"
    remove_root "$root"
    trap - EXIT
    die "debootstrap failed (log above); set DEBIAN_MIRROR to a reachable Debian mirror"
  fi
  rm -f "$root.log"
  # Nothing a running image needs: package lists and downloaded .debs.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin
  tar -C "$root" --numeric-owner -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$base_image" >/dev/null
  remove_root "$root"
  trap - EXIT
  say "base $base_image made in $((SECONDS - started)) s"
}

ensure_binaries() {
  local b missing=0
  for b in "${binaries[@]}"; do [ -x "$bin/$b" ] || missing=1; done
  if [ "$missing" = 1 ]; then
    [ "$bin" = ./target/release ] || die "a binary is missing in KV_BIN=$bin"
    say "release binaries missing: cargo build --release --bins"
    "${CARGO:-cargo}" build --release --bins
  else
    say "using the binaries in $bin as they are ($("$bin/kvnode" --version), built $(date -r "$bin/kvnode" '+%Y-%m-%d %H:%M')); make release rebuilds them"
  fi
}

build_image() {
  local started=$SECONDS ctx version b tags
  version=$(sed -n '/^\[workspace\.package\]/,/^\[/ s/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml)
  [ -n "$version" ] || die "no version under [workspace.package] in Cargo.toml"
  ctx=$(mktemp -d /var/tmp/kvstore-image.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$ctx'" EXIT
  for b in "${binaries[@]}"; do
    if command -v strip >/dev/null 2>&1; then strip --strip-debug -o "$ctx/$b" "$bin/$b"; else cp "$bin/$b" "$ctx/$b"; fi
  done
  cp deploy/docker/Dockerfile.local "$ctx/Dockerfile"
  tags=(-t "$image")
  [ "${image%:*}:$version" = "$image" ] || tags+=(-t "${image%:*}:$version")
  # The classic builder when BuildKit's buildx is not installed (Debian's docker.io has none):
  # Dockerfile.local needs nothing more.
  docker buildx version >/dev/null 2>&1 || export DOCKER_BUILDKIT=0
  say "building $image (and ${image%:*}:$version) from deploy/docker/Dockerfile.local over $base_image"
  docker build "${tags[@]}" --build-arg "BASE_IMAGE=$base_image" \
    --label kvstore.image=runtime --label "org.opencontainers.image.version=$version" \
    --label "org.opencontainers.image.revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    "$ctx" >&2
  # Untagged leftovers: the binaries stage (the classic builder keeps it) and the images this
  # build replaced under the same tags (unless a container still uses them).
  docker image prune -f --filter label=kvstore.stage=binaries >/dev/null
  docker image prune -f --filter label=kvstore.image=runtime >/dev/null
  rm -rf "$ctx"
  trap - EXIT
  say "built $image in $((SECONDS - started)) s: $(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1 / 1e6}')"
  docker run --rm --entrypoint kvnode "$image" --version >&2
}

# Stops the dockerd `ensure_engine` started (its pid in /run/kvstore-dockerd.pid) and removes
# the iptables rules and chains Docker made, which dockerd leaves behind when it exits (it makes
# them again when it starts): a run that had to start an engine leaves the firewall as it found it.
stop_engine() {
  local pidfile=/run/kvstore-dockerd.pid pid table rule chain
  [ -s "$pidfile" ] || { say "no dockerd started by this script"; return 0; }
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  rm -f "$pidfile"
  command -v iptables >/dev/null 2>&1 || return 0
  for table in filter nat; do
    # Rules of the built-in chains that jump to Docker's chains or name its bridge.
    iptables -t "$table" -S 2>/dev/null | grep -E '^-A (INPUT|FORWARD|OUTPUT|PREROUTING|POSTROUTING) ' |
      grep -E 'DOCKER|docker0|172\.17\.' | while read -r rule; do
        # shellcheck disable=SC2086 # the rule's words are iptables arguments
        iptables -t "$table" ${rule/-A/-D} 2>/dev/null || true
      done
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^DOCKER/ {print $2}'); do
      iptables -t "$table" -F "$chain" 2>/dev/null || true
    done
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^DOCKER/ {print $2}'); do
      iptables -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
  if [ -s /run/kvstore-forward-policy ]; then
    iptables -P FORWARD "$(cat /run/kvstore-forward-policy)" 2>/dev/null || true
    rm -f /run/kvstore-forward-policy
  fi
  say "dockerd (pid $pid) stopped, its iptables rules removed"
}

case "${1:-build}" in
  stop-engine)
    stop_engine
    ;;
  engine)
    ensure_engine
    say "compose command: $(compose_cmd)"
    ;;
  compose-cmd)
    compose_cmd
    ;;
  build)
    total=$SECONDS
    check_dockerfiles
    ensure_engine
    ensure_base
    ensure_binaries
    build_image
    say "done in $((SECONDS - total)) s"
    ;;
  *)
    echo "usage: scripts/image.sh [build|engine|stop-engine|compose-cmd]" >&2
    exit 2
    ;;
esac
