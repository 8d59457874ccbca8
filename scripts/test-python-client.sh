#!/usr/bin/env bash
# The Python client (clients/python) against real kvnode and kvgateway processes: installs it
# into .venv with pip (as a user would: `pip install ./clients/python`, dependencies from PyPI)
# with pytest, then runs its tests with the debug binaries (KV_BIN, default ./target/debug).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || ./scripts/install-deps.sh
.venv/bin/pip install -q --disable-pip-version-check ./clients/python 'pytest>=7'
# From outside the source tree, so that the installed package is the one imported.
export KV_BIN=${KV_BIN:-$PWD/target/debug}
cd clients/python/tests
../../../.venv/bin/python -m pytest -q -s -p no:cacheprovider .
