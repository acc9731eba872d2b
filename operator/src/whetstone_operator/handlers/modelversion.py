"""ModelVersion: observe its verify Job and the namespace's PlatformPolicy; decide
(reconcile/modelversion.py, which checks the signed records); the loop does the rest."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from whetstone_operator import settings
from whetstone_operator.handlers import runtime
from whetstone_operator.handlers.indexes import all_of, one_of
from whetstone_operator.handlers.platformpolicy import namespace_policy
from whetstone_operator.observe import job_view
from whetstone_operator.reconcile.core import Obj
from whetstone_operator.reconcile.modelversion import Observed, decide_modelversion
from whetstone_operator.render.verify import verify_job_name


def observe(mv: Obj, indexes: Mapping[str, Any], now: datetime) -> Observed:
    """The verify Job from kopf's ws_jobs and ws_pods, and the namespace's policy."""
    jname = verify_job_name(mv.name)
    return Observed(
        key=settings.signing_key(),
        verify_job=job_view(
            one_of(indexes["ws_jobs"], (mv.namespace, jname)),
            all_of(indexes["ws_pods"], (mv.namespace, jname)),
        ),
        policy=namespace_policy(mv.namespace, indexes),
        defaults=settings.OPTIONS.trainer,
    )


LOOP = runtime.register(
    runtime.Kind(
        kind="ModelVersion",
        plural="modelversions",
        observe=observe,
        decide=decide_modelversion,
        period=lambda options: float(options.resync_seconds),
    )
)
