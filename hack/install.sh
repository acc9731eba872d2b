#!/usr/bin/env bash
# Creates .venv and installs the project with the extras asked for:
#   trainer   -> what the demo needs;  all -> operator + trainer + dev tools + scanners.
#   scanners  -> only the security scanners of hack/scan.sh (bandit, checkov), in a virtual
#                environment of their own under the cache: checkov's many pinned dependencies
#                stay out of .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"

install_scanners() {
  local venv="${WHETSTONE_CACHE:-$HOME/.cache/whetstone}/scanners"
  local wanted="bandit==1.9.4 checkov==3.3.30"
  if [ "$(cat "$venv/.installed" 2>/dev/null)" = "$wanted" ]; then
    return
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  # shellcheck disable=SC2086  # one argument per requirement
  "$venv/bin/python" -m pip install -q $wanted
  echo "$wanted" >"$venv/.installed"
}
if [ "$what" = scanners ]; then
  install_scanners
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
case "$what" in
  trainer) extras="trainer,operator" ;;
  all) extras="operator,trainer,qlora,dev" ;;
  *) echo "usage: hack/install.sh [trainer|all|scanners]" >&2; exit 2 ;;
esac
# torch is pinned on the same line so pip takes the CPU wheel and never a CUDA build;
# DS_BUILD_OPS=0: DeepSpeed compiles its ops on first use instead of at install.
DS_BUILD_OPS=0 .venv/bin/python -m pip install -q "torch==2.13.0" -e ".[${extras}]"
if [ "$what" = all ]; then
  # The KServe SDK's generated models are the reference for InferenceService field names
  # (tests/unit/test_kserve_fields.py); its model-server dependencies (hundreds of MB) are
  # not needed for that, hence --no-deps.
  .venv/bin/python -m pip install -q --no-deps "kserve==0.21.0"
  install_scanners
fi
