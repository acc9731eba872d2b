"""Parts shared by the kinds: references, conditions, durations and the status base."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from whetstone_contract.base import CamelModel

GROUP = "whetstone.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DURATION = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration such as `90s`, `10m` or `1h30m`."""
    if not re.fullmatch(DURATION, text):
        raise ValueError(f"{text!r} is not a duration: use forms like 30s, 10m, 1h30m")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a Z, as Kubernetes writes timestamps."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """Inverse of format_time (accepts any RFC 3339 offset)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class SecretRef(CamelModel):
    """A reference to a Secret in the same namespace; credentials are never inline."""

    name: str = Field(
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="Name of a Secret in the object's namespace.",
    )


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(CamelModel):
    """The state of one aspect of the object, after Kubernetes' metav1.Condition."""

    model_config = ConfigDict(extra="ignore")

    type: str = Field(max_length=316, description="Aspect this condition is about, CamelCase.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        default="", max_length=1024, description="Machine-readable CamelCase reason."
    )
    message: str = Field(default="", max_length=32768, description="Human-readable detail.")
    last_transition_time: str | None = Field(
        default=None, description="When the status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation this condition was set from."
    )


class StatusBase(CamelModel):
    """Fields every status carries."""

    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation the status reflects."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Current conditions of the object.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    message: str | None = Field(
        default=None, max_length=32768, description="Human-readable summary of the state."
    )


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> list[Condition]:
    """A new condition list with `type_` set; the transition time moves only on a change."""
    out: list[Condition] = []
    found = False
    for cond in conditions:
        if cond.type != type_:
            out.append(cond)
            continue
        found = True
        moved = cond.status != status
        out.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=format_time(now) if moved else cond.last_transition_time,
                observed_generation=generation,
            )
        )
    if not found:
        out.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=format_time(now),
                observed_generation=generation,
            )
        )
    return out


def get_condition(conditions: list[Condition], type_: str) -> Condition | None:
    """The condition of `type_`, if present."""
    return next((c for c in conditions if c.type == type_), None)


class KindInfo(BaseModel):
    """How a kind is named and shown by kubectl (feeds CRD generation)."""

    kind: str
    plural: str
    singular: str
    short_names: list[str]
    columns: list[dict[str, str | int]]
    description: str
    namespaced: bool = True
