#!/usr/bin/env bash
# Security scanners, run by the test command: bandit on the Python sources, checkov on the Helm
# chart as rendered for its install modes. The bar is zero findings; an accepted exception is
# skipped where it lives, with its reason: `# nosec Bxxx # why` on the line in the code,
# `checkov.io/skipN: "CKV_K8S_xx=why"` annotations on the object in the chart's templates.
#   hack/scan.sh            both
#   hack/scan.sh bandit     the code only
#   hack/scan.sh checkov    the chart only
# Scanners: ${WHETSTONE_CACHE:-~/.cache/whetstone}/scanners (hack/install.sh scanners).
# helm: $WHETSTONE_HELM, else ${WHETSTONE_CACHE:-~/.cache/whetstone}/bin/helm, else PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-all}" in
  all) tools="bandit checkov" ;;
  bandit | checkov) tools="$1" ;;
  *) echo "usage: hack/scan.sh [bandit|checkov]" >&2; exit 2 ;;
esac
cache="${WHETSTONE_CACHE:-$HOME/.cache/whetstone}"
scanners="$cache/scanners/bin"
for tool in $tools; do
  if [ ! -x "$scanners/$tool" ]; then
    echo "$tool not found in $scanners: run hack/install.sh scanners" >&2
    exit 2
  fi
done
if [[ " $tools " == *" bandit "* ]]; then
  echo "bandit: operator, contract, trainer and local sources"
  # B101 (assert) is the one check skipped everywhere: the sources' asserts narrow types for
  # mypy on values set by construction, and input is checked with exceptions. The images never
  # run Python with -O (which would drop asserts).
  "$scanners/bandit" --quiet --recursive --skip B101 \
    operator/src contract/src trainer/src local/src
fi
[[ " $tools " == *" checkov "* ]] || exit 0

helm="${WHETSTONE_HELM:-}"
if [ -z "$helm" ]; then
  helm="$cache/bin/helm"
  [ -x "$helm" ] || helm="$(command -v helm || true)"
fi
if [ -z "$helm" ] || [ ! -x "$helm" ]; then
  echo "helm not found: run python hack/provision.py (or set WHETSTONE_HELM)" >&2
  exit 2
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export HELM_CACHE_HOME="$work/helm/cache" HELM_CONFIG_HOME="$work/helm/config"
export HELM_DATA_HOME="$work/helm/data"

echo "checkov: the chart rendered for each install mode"
mkdir -p "$work/chart"
render() {
  local name="$1"
  shift
  "$helm" template whetstone charts/whetstone --namespace whetstone-system "$@" \
    >"$work/chart/$name.yaml"
}
digest="sha256:$(printf '0%.0s' {1..64})"
render defaults
render namespaced-operator-webhooks --set 'watchNamespaces={ml,research}' \
  --set webhook.configurations=operator --set image.digest="$digest"
render cert-manager-monitoring-standalone --set webhook.certManager.enabled=true \
  --set metrics.serviceMonitor.enabled=true --set metrics.prometheusRule.enabled=true \
  --set metrics.dashboard.enabled=true --set replicas=1 --set peering.enabled=false
render no-webhook-metrics-peer --set webhook.enabled=false \
  --set 'networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.team=monitoring'
"$scanners/checkov" --directory "$work/chart" --framework kubernetes --compact --quiet \
  --skip-download
