#!/usr/bin/env bash
# Regenerates the images' lock files from pyproject.toml: every package pinned to one version
# with the sha256 of each of its files, installed by the Dockerfiles with
# `pip install --require-hashes --no-deps`.
#   build.txt          setuptools: builds the project's wheel and the two source-only packages
#                      (deepspeed, rouge-score) without pip's unhashed build isolation
#   operator.txt       the base install + the `operator` extra (Dockerfile.operator)
#   trainer-cuda.txt   the base install + `trainer` + `qlora`, torch from PyPI (its Linux wheel is
#                      the CUDA build; the CUDA libraries come as nvidia-* wheels) + nvidia-ml-py,
#                      which deepspeed asks for when it is built for CUDA (Dockerfile.trainer)
#   trainer-cpu.txt    the same with torch's `+cpu` build from the PyTorch CPU wheels
#                      (Dockerfile.trainer --build-arg TRAINER_LOCK=requirements/trainer-cpu.txt)
#   deepspeed.txt      deepspeed alone: built after torch is installed, so that its CPU ops are
#                      compiled in the build stage (the trainer locks leave it out)
# Needs uv (`pip install uv` in any virtual environment; UV=/path/to/uv) and PyPI. The CPU lock
# takes torch from TORCH_FIND_LINKS (default: the PyTorch wheel page); a folder holding the
# same wheel works offline. Resolution targets CPython 3.11 on x86_64 Linux (the images' base);
# the hashes of every file of a pinned version are kept, so other platforms verify too.
set -euo pipefail
cd "$(dirname "$0")/.."
uv="${UV:-uv}"
torch_links="${TORCH_FIND_LINKS:-https://download.pytorch.org/whl/torch/}"

compile() {
  local out="$1"
  shift
  "$uv" pip compile --quiet --generate-hashes --python-version 3.11 \
    --python-platform x86_64-manylinux_2_28 \
    --custom-compile-command "requirements/update.sh" -o "requirements/$out" "$@"
}
# Wheels only, but for the two packages that PyPI has as source only.
binary=(--only-binary :all: --no-binary deepspeed --no-binary rouge-score)

echo "setuptools>=77" | compile build.txt -
compile operator.txt pyproject.toml --extra operator --only-binary :all:
echo "nvidia-ml-py" | compile trainer-cuda.txt pyproject.toml - --extra trainer --extra qlora \
  "${binary[@]}" --no-emit-package deepspeed
pin() { grep -o "\"$1==[^\"]*\"" pyproject.toml | head -1 | tr -d '"'; }
echo "$(pin torch)+cpu" | compile trainer-cpu.txt pyproject.toml - --extra trainer --extra qlora \
  "${binary[@]}" --no-emit-package deepspeed --find-links "$torch_links"
pin deepspeed | compile deepspeed.txt - --no-deps --no-binary deepspeed
