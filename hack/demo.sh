#!/usr/bin/env bash
# The main job on the embedded default: a local CPU fine-tune of the tiny example.
set -euo pipefail
cd "$(dirname "$0")/.."
./hack/install.sh trainer
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/whetstone-local "${1:-manifests/samples/finetunejob-tiny.yaml}" "${@:2}"
