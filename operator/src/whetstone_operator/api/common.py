"""Parts shared by the kinds: references, conditions, durations, size bounds and the status
base."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler
from pydantic_core import CoreSchema, core_schema

from whetstone_contract.base import CamelModel

GROUP = "whetstone.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DURATION = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
# A label key: an optional DNS-subdomain prefix and "/", then a name of up to 63 characters.
LABEL_KEY = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"

# Size bounds shared by the kinds (the CRD schemas carry them as maxLength, maxItems and
# maxProperties; the models enforce the same numbers).
DNS_LABEL_MAX = 63  # a namespace, a label value
DNS_SUBDOMAIN_MAX = 253  # an object name, a host name, an extended resource name
QUALIFIED_NAME_MAX = 317  # a label key: a 253-character prefix, "/", a 63-character name
URI_MAX = 2048
IMAGE_MAX = 1024
TIME_MAX = 64  # an RFC 3339 timestamp
DIGEST_MAX = 71  # sha256:<64 hex digits>
USER_MAX = 1024  # a Kubernetes user or group name (OIDC names can be long)
MESSAGE_MAX = 32768  # a condition message, as in metav1.Condition
CONDITIONS_MAX = 32
# A key of a metrics, hyperparameters or counts map (the schema cannot bound map keys: the
# models do).
MapKey = Annotated[str, Field(max_length=128)]

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


def as_written(model: BaseModel) -> dict[str, Any]:
    """The fields the input set, camelCase, nulls dropped (no defaults filled in)."""
    return model.model_dump(by_alias=True, exclude_unset=True, exclude_none=True, mode="json")


@dataclass(frozen=True)
class CheckedBy:
    """Validate a plain dict with `model` and keep it a dict, as written (nulls dropped):
    `Annotated[dict[str, Any], CheckedBy(Toleration)]`. The JSON schema, and so the CRD, is
    the model's, with every bound it has; code that copies the value into a pod spec keeps
    getting a dict."""

    model: type[BaseModel]

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_after_validator_function(
            as_written,
            handler.generate_schema(self.model),
            serialization=core_schema.plain_serializer_function_ser_schema(
                dict, return_schema=core_schema.dict_schema()
            ),
        )


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
    message: str = Field(default="", max_length=MESSAGE_MAX, description="Human-readable detail.")
    last_transition_time: str | None = Field(
        default=None, max_length=TIME_MAX, description="When the status last changed (RFC 3339)."
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
        max_length=CONDITIONS_MAX,
        description="Current conditions of the object.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    message: str | None = Field(
        default=None, max_length=MESSAGE_MAX, description="Human-readable summary of the state."
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
