"""Prometheus metrics of the operator: reconciles, their duration and errors, objects by phase,
GPU time used by fine-tunes."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

RECONCILES = Counter("whetstone_reconcile", "Reconciles run, by kind.", ["kind"])
ERRORS = Counter("whetstone_reconcile_errors", "Reconciles that raised, by kind.", ["kind"])
DURATION = Histogram(
    "whetstone_reconcile_duration_seconds", "Time spent in one reconcile, by kind.", ["kind"]
)
GPU_SECONDS = Counter(
    "whetstone_gpu_seconds",
    "GPU-seconds used by trainer pods (FineTuneJob status.cost), by namespace and registered "
    "model (empty when the job registers none).",
    ["namespace", "model"],
)

# kind -> (namespace, name) -> phase; fed by the handlers, read at scrape time.
_PHASES: dict[str, dict[tuple[str, str], str]] = {}
_GAUGES = {
    "FineTuneJob": "whetstone_finetunejobs",
    "ModelVersion": "whetstone_modelversions",
    "Rollout": "whetstone_rollouts",
    "PlatformPolicy": "whetstone_platformpolicies",
}


def record_phase(kind: str, namespace: str, name: str, phase: str | None) -> None:
    """Remember the phase of an object (None forgets it, e.g. on deletion)."""
    if phase is None:
        _PHASES.get(kind, {}).pop((namespace, name), None)
    else:
        _PHASES.setdefault(kind, {})[(namespace, name)] = phase


class _PhaseCollector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        for kind, metric in _GAUGES.items():
            family = GaugeMetricFamily(
                metric, f"{kind} objects by namespace and phase.", labels=["namespace", "phase"]
            )
            counts: dict[tuple[str, str], int] = {}
            for (namespace, _), phase in _PHASES.get(kind, {}).items():
                counts[(namespace, phase)] = counts.get((namespace, phase), 0) + 1
            for (namespace, phase), count in sorted(counts.items()):
                family.add_metric([namespace, phase], count)
            yield family


REGISTRY.register(_PhaseCollector())
