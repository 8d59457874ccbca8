#!/usr/bin/env bash
# `make deploy-check`: lints, renders, validates and scans the Helm chart (deploy/helm/kvstore)
# and checks that deploy/k8s/kvstore.yaml is its current rendering (scripts/check_deploy.py
# lists every step). `--write` regenerates deploy/k8s/kvstore.yaml instead of comparing it.
#
# Installs its tools once, pinned, from PyPI (nothing else is downloaded, then or at run time):
# helm-python-sdk (Helm's template engine, embedded: no helm binary) and kubernetes-validate in
# .venv; checkov in its own .venv-checkov, because it pins packaging<24 and .venv's pytest
# (schemathesis) needs packaging>=24.
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_SDK=0.2.2
KUBE_VALIDATE=1.37.0
CHECKOV=3.3.30

installed() { # venv package version
  "$1/bin/python" -c 'import sys; from importlib.metadata import version; sys.exit(version(sys.argv[1]) != sys.argv[2])' \
    "$2" "$3" 2>/dev/null
}
venv() { # dir
  [ -x "$1/bin/python" ] && return
  python3 -m venv "$1" 2>/dev/null || { apt-get update -qq && apt-get install -y -qq python3-venv && python3 -m venv "$1"; }
}

echo "check-deploy: tools (helm-python-sdk $HELM_SDK, kubernetes-validate $KUBE_VALIDATE, checkov $CHECKOV)"
venv .venv
if ! installed .venv helm-python-sdk "$HELM_SDK" || ! installed .venv kubernetes-validate "$KUBE_VALIDATE"; then
  .venv/bin/pip install -q "helm-python-sdk==$HELM_SDK" "kubernetes-validate==$KUBE_VALIDATE"
fi
venv .venv-checkov
installed .venv-checkov checkov "$CHECKOV" || .venv-checkov/bin/pip install -q "checkov==$CHECKOV"

exec .venv/bin/python scripts/check_deploy.py --checkov .venv-checkov/bin/checkov "$@"
