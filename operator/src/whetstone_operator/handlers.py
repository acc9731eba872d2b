"""Thin kopf handlers: parse -> observe -> decide -> act -> status patch."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kopf

from whetstone_operator.api import GROUP, VERSION
from whetstone_operator.reconcile.validation import decide_validity


def _now() -> datetime:
    return datetime.now(UTC)


@kopf.on.resume(GROUP, VERSION, "finetunejobs")
@kopf.on.create(GROUP, VERSION, "finetunejobs")
@kopf.on.update(GROUP, VERSION, "finetunejobs", field="spec")
def finetunejob_spec(
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    patch: kopf.Patch,
    logger: kopf.Logger,
    body: kopf.Body,
    **_: Any,
) -> None:
    outcome = decide_validity(
        "FineTuneJob", dict(spec), dict(status), meta.get("generation"), _now()
    )
    patch.status.update(outcome.status_patch)
    if outcome.event is not None:
        kopf.event(
            body,
            type=outcome.event.type,
            reason=outcome.event.reason,
            message=outcome.event.message,
        )
