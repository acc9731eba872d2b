"""Spec validation as a reconcile decision: the Valid condition and an Event naming the field."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from whetstone_operator.api import KINDS
from whetstone_operator.api.common import Condition, get_condition, set_condition
from whetstone_operator.api.errors import SpecError, parse_spec
from whetstone_operator.reconcile.core import Draft, Event

# A spec can hold thousands of bad entries; conditions and status messages are bounded
# (32768 characters in the schema), so the message names the first ones and counts the rest.
MAX_ERRORS = 20
MAX_MESSAGE = 8192


@dataclass(frozen=True)
class ValidityOutcome:
    """Result of validating a spec."""

    valid: bool
    spec: BaseModel | None
    status_patch: dict[str, Any] = field(default_factory=dict)
    event: Event | None = None


def spec_model(kind: str) -> type[BaseModel]:
    """The spec model of `kind`."""
    _, model = KINDS[kind]
    annotation = model.model_fields["spec"].annotation
    assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
    return annotation


def summarize_errors(messages: list[str]) -> str:
    """The first MAX_ERRORS messages joined, then how many more there are."""
    text = "; ".join(messages[:MAX_ERRORS])
    if len(messages) > MAX_ERRORS:
        text += f"; and {len(messages) - MAX_ERRORS} more error(s)"
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def decide_validity(
    kind: str,
    spec: dict[str, Any],
    status: dict[str, Any],
    generation: int | None,
    now: datetime,
) -> ValidityOutcome:
    """Validate `spec`; set the Valid condition; emit an Event only when validity changes."""
    conditions = [Condition.model_validate(c) for c in status.get("conditions", [])]
    previous = get_condition(conditions, "Valid")
    try:
        parsed = parse_spec(spec_model(kind), spec)
    except SpecError as exc:
        message = summarize_errors(exc.messages)
        new = set_condition(conditions, "Valid", "False", "InvalidSpec", message, now, generation)
        changed = previous is None or previous.status != "False" or previous.message != message
        return ValidityOutcome(
            valid=False,
            spec=None,
            status_patch={
                "conditions": [c.wire() for c in new],
                "observedGeneration": generation,
                "message": f"invalid spec: {message}",
            },
            event=Event("Warning", "InvalidSpec", message) if changed else None,
        )
    new = set_condition(conditions, "Valid", "True", "SpecValid", "spec is valid", now, generation)
    changed = previous is None or previous.status != "True"
    return ValidityOutcome(
        valid=True,
        spec=parsed,
        status_patch={"conditions": [c.wire() for c in new], "observedGeneration": generation},
        event=Event("Normal", "SpecValid", "spec is valid") if changed and previous else None,
    )


def check_spec(draft: Draft[Any], kind: str) -> BaseModel | None:
    """Validate the drafted object's spec into its Valid condition (and an Event when validity
    changes); the parsed spec, or None when invalid (phase kept, at least Pending)."""
    obj = draft.obj
    validity = decide_validity(kind, obj.spec, obj.status, obj.generation, draft.now)
    conditions = validity.status_patch["conditions"]
    draft.status.conditions = [Condition.model_validate(c) for c in conditions]
    if validity.event is not None:
        draft.decision.events.append(validity.event)
    if not validity.valid:
        draft.status.phase = draft.status.phase or "Pending"
        draft.status.message = validity.status_patch["message"]
        return None
    return validity.spec
