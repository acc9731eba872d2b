"""ModelVersion: observe its verify Job and the signed approval record; decide
(reconcile/modelversion.py); the loop does the rest."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from whetstone_operator import settings
from whetstone_operator.approval import verify
from whetstone_operator.handlers import runtime
from whetstone_operator.handlers.indexes import all_of, one_of
from whetstone_operator.observe import job_view
from whetstone_operator.reconcile.core import Obj
from whetstone_operator.reconcile.modelversion import Observed, decide_modelversion
from whetstone_operator.render.verify import verify_job_name


def observe(mv: Obj, indexes: Mapping[str, Any], now: datetime) -> Observed:
    """The verify Job from kopf's ws_jobs and ws_pods; the approval whose signature holds."""
    jname = verify_job_name(mv.name)
    body = {
        "metadata": {
            "namespace": mv.namespace,
            "name": mv.name,
            "uid": mv.uid,
            "annotations": dict(mv.annotations),
        },
        "spec": mv.spec,
    }
    return Observed(
        verify_job=job_view(
            one_of(indexes["ws_jobs"], (mv.namespace, jname)),
            all_of(indexes["ws_pods"], (mv.namespace, jname)),
        ),
        approval=verify(settings.OPTIONS.approval_key, body),
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
