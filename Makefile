# Two commands do everything on a fresh machine:
#   make run    build release binaries and start a local node on 127.0.0.1:7000 (data in ./data)
#   make test   install what the checks need, then run formatting, lints and every test
.PHONY: run test deps fmt lint unit docs-check bench bench-storage build release clean

CARGO ?= cargo

run: release
	./scripts/run-local.sh

release:
	$(CARGO) build --release --bins

build:
	$(CARGO) build --workspace --all-targets

deps:
	./scripts/install-deps.sh

fmt:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	./scripts/run-tests.sh

docs-check: release
	python3 scripts/check_doc_examples.py README.md docs/api.md

test: deps fmt lint unit docs-check

bench:
	./scripts/bench.sh

bench-storage:
	$(CARGO) bench -p kv-storage --bench engines

clean:
	$(CARGO) clean
