#!/usr/bin/env bash
# The test command: installs what the suite needs on a fresh machine, then runs lint,
# type checks, the import layers, the security scanners (bandit, checkov), the CRD drift check
# and every test tier (unit, integration, trainer; e2e and gpu skip with a reason where
# Docker/kind or a GPU are missing).
set -euo pipefail
cd "$(dirname "$0")/.."
export WHETSTONE_CACHE="${WHETSTONE_CACHE:-$HOME/.cache/whetstone}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$WHETSTONE_CACHE/torch_extensions}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1

step() { printf '\n== %s (%s)\n' "$1" "$(date +%H:%M:%S)"; }

step "python environment"
./hack/install.sh all
PY=.venv/bin/python

step "lint, format, types"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy

step "import layers"
.venv/bin/lint-imports --no-cache

step "security scan of the code (bandit)"
./hack/scan.sh bandit

step "CRDs match the API models"
$PY -m whetstone_operator.crdgen --check

step "control plane binaries, kubectl, helm"
$PY hack/provision.py
$PY hack/prometheus.py

step "security scan of the rendered chart (checkov)"
./hack/scan.sh checkov

step "tests"
set +e
$PY -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$rc"
