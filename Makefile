# Two commands do everything on a fresh machine:
#   make run    build release binaries and start a local cluster in the foreground: 3 kvnodes
#               (client API 127.0.0.1:7001-7003, peer 7101-7103, admin 7201-7203) and a
#               kvgateway (client API 127.0.0.1:8080, admin 8081); data and logs in ./data
#   make test   install what the checks need, then run formatting, lints, every test and the
#               docs' curl examples, printing each stage's time (scripts/test.sh)
.PHONY: python-client run test test-long test-upgrade deps fmt lint structure-check unit docs-check contract deploy-check observability-check fuzz bench bench-scale bench-storage build bins release clean image test-docker test-scale-local

CARGO ?= cargo

run: release
	./scripts/run-local.sh

release:
	$(CARGO) build --release --bins

build:
	$(CARGO) build --workspace --all-targets

bins:
	$(CARGO) build --workspace --bins

deps:
	./scripts/install-deps.sh

fmt:
	$(CARGO) fmt --all -- --check

lint: structure-check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The structure the code keeps: the gateway links no storage and not the node; only the peer
# transport builds an HTTP client for peers; no HTTP status crosses the internal protocol; the
# client library pulls in no server crate.
structure-check:
	@if $(CARGO) tree -p kv-gateway --prefix none | grep -E '^(kv-storage|kv-node|fjall|sled) '; then \
	  echo "structure-check: kv-gateway must not depend on storage or kv-node"; exit 1; fi
	@if grep -rln 'reqwest::Client::builder' crates/*/src | grep -vE '^crates/(transport|client|cli)/'; then \
	  echo "structure-check: peer HTTP clients are built only in crates/transport (client-API ones in client and cli)"; exit 1; fi
	@if $(CARGO) tree -p kv-client --prefix none -e normal | grep -E '^kv-(transport|server|api|node|coordinator) '; then \
	  echo "structure-check: kv-client depends on no server crate"; exit 1; fi
	@if grep -rnE '\bu16\b|StatusCode|axum|reqwest' crates/proto/src crates/proto/Cargo.toml; then \
	  echo "structure-check: kv-proto carries typed refusals, never an HTTP status"; exit 1; fi
	@echo "structure-check: ok"

unit:
	./scripts/run-tests.sh

# The doc examples run against the debug binaries `make unit` built (no second, release build).
docs-check: bins
	KV_BIN=./target/debug python3 scripts/check_doc_examples.py README.md docs/api.md

# The Python client (clients/python): pip-installed into .venv, its tests against real processes
# (siblings, resolvers, a node down, Retry-After, tokens, TLS, asyncio).
python-client: bins
	./scripts/test-python-client.sh

# docs/openapi.yaml against a live 3-node cluster and gateway (schemathesis, in .venv).
contract: bins
	KV_BIN=./target/debug ./scripts/schemathesis.sh

# deploy/prometheus and deploy/grafana: promtool check config and rules, the alert rules' unit
# tests, every dashboard query parsed, every metric they name exported by the code
# (scripts/check-observability.sh).
observability-check:
	./scripts/check-observability.sh

# The Helm chart and deploy/k8s: lint, render (default values, 5 nodes over 3 zones, TLS),
# validate every object (kubernetes-validate), assert its properties, test the hook scripts,
# diff deploy/k8s against a fresh rendering and scan with checkov (scripts/check-deploy.sh).
deploy-check:
	./scripts/check-deploy.sh

# Every cargo-fuzz target for FUZZ_RUNS executions (default 1,000,000); the numbers are in
# docs/security.md. Long: not part of `make test` (its property tests are).
fuzz:
	./scripts/fuzz.sh

test:
	./scripts/test.sh

# A rolling upgrade from the previous release (RELEASES) under load: 3 nodes and 2 gateways
# replaced one at a time, one node downgraded and upgraded again; 0 failed requests and 0 lost
# writes (scripts/test-upgrade.sh). CI runs it after `make test`.
test-upgrade: deps
	./scripts/test-upgrade.sh

# Long runs kept out of `make test`: 200,000 model-checker histories, a 2-minute soak
# without false failure detections, anti-entropy over 100,000 keys, a join and a leave
# with 20,000 keys (5,000 in `make test`), and a backup round trip of 100,000 keys (2,000).
test-long: deps bins
	KV_SIM_HISTORIES=200000 $(CARGO) test -p kv-sim --test model figures_model_checker -- --nocapture
	KV_SOAK_SECS=120 $(CARGO) test -p kv-cluster-tests --test membership no_member_is_marked_down_falsely -- --nocapture
	KV_AE_KEYS=100000 $(CARGO) test -p kv-cluster-tests --test failures one_round_moves_only_the_differing_buckets -- --nocapture
	KV_MEMBERSHIP_KEYS=20000 $(CARGO) test -p kv-cluster-tests --test membership -- --test-threads 1 --nocapture a_fourth_node_joins decommissioning_one_of_four
	KV_BACKUP_KEYS=100000 $(CARGO) test -p kv-cluster-tests --test backup -- --nocapture

# The container image kvstore:dev (and kvstore:<version>) without a registry: a Debian base
# made with debootstrap, the release binaries, deploy/docker/Dockerfile.local (scripts/image.sh;
# installs and starts Docker when missing).
image:
	./scripts/image.sh

# deploy/docker/compose.yaml end to end: put/get through the gateway, a node stopped and
# started, 3 -> 4 -> 3 nodes under a writing client, every acknowledged key read back.
test-docker:
	./scripts/test-docker.sh

# The same 3 -> 4 -> 3 with scripts/cluster.sh (add, remove) on this machine.
test-scale-local:
	./scripts/test-scale-local.sh

bench:
	./scripts/bench.sh

# Growth: one node at 1,000,000 and 10,000,000 keys (memory, reads), and a fourth node joining
# three that hold 2,000,000 keys (time, bytes streamed against the disk's rate). 15-20 minutes;
# not in `make test` (scripts/bench-scale.sh).
bench-scale:
	./scripts/bench-scale.sh

bench-storage:
	$(CARGO) bench -p kv-storage --bench engines

clean:
	$(CARGO) clean
