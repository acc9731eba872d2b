"""The canary of a Rollout as pure code: the state machine, KServe's view, analysis judging."""

from whetstone_operator.api.names import ABORT, PAUSE, PROMOTE, RESUME, RETRY
from whetstone_operator.reconcile.canary.judge import (
    Check,
    Measurement,
    Probe,
    Prompt,
    Query,
    analysis_due,
    build_queries,
    judge,
    render_query,
    round_outcome,
)
from whetstone_operator.reconcile.canary.kserve import (
    Desired,
    ServiceView,
    Traffic,
    build_predictor_patch,
    candidate_storage,
    check_ready,
    same_storage,
    service_view,
)
from whetstone_operator.reconcile.canary.machine import (
    Observed,
    StepResult,
    advance,
    step,
    weight_at,
)

__all__ = [
    "ABORT",
    "PAUSE",
    "PROMOTE",
    "RESUME",
    "RETRY",
    "Check",
    "Desired",
    "Measurement",
    "Observed",
    "Probe",
    "Prompt",
    "Query",
    "ServiceView",
    "StepResult",
    "Traffic",
    "advance",
    "analysis_due",
    "build_predictor_patch",
    "build_queries",
    "candidate_storage",
    "check_ready",
    "judge",
    "render_query",
    "round_outcome",
    "same_storage",
    "service_view",
    "step",
    "weight_at",
]
