"""ModelVersion: a registered artifact with lineage, metrics, quality gates and approval."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from whetstone_contract.base import CamelModel
from whetstone_contract.config import ModelSource
from whetstone_operator.api.common import (
    DIGEST_MAX,
    DNS_LABEL,
    DNS_SUBDOMAIN,
    DNS_SUBDOMAIN_MAX,
    IMAGE_MAX,
    TIME_MAX,
    USER_MAX,
    KindInfo,
    MapKey,
    SecretRef,
    StatusBase,
)

DIGEST = r"^sha256:[0-9a-f]{64}$"
KNOWN_METRICS = ("loss", "evalLoss", "perplexity", "exactMatch", "rougeL", "accuracy")
CUSTOM_METRICS_MAX = 128
GATES_MAX = 64
# One approval per person; groups as the API server reported them for the approver.
APPROVALS_MAX = 256
GROUPS_MAX = 512
# One entry per Rollout serving the version.
DEPLOYMENTS_MAX = 256


class BaselineMetrics(CamelModel):
    """Metrics of the base model on the same data."""

    loss: float | None = Field(default=None, description="Training-style loss.")
    eval_loss: float | None = Field(default=None, description="Validation loss.")
    perplexity: float | None = Field(default=None, ge=0, description="exp(validation loss).")
    exact_match: float | None = Field(
        default=None, ge=0, le=1, description="Share of generations equal to the reference."
    )
    rouge_l: float | None = Field(
        default=None, ge=0, le=1, description="ROUGE-L F1 of generations against references."
    )
    accuracy: float | None = Field(
        default=None, ge=0, le=1, description="Share of correct answers."
    )
    custom: dict[MapKey, float] = Field(
        default_factory=dict,
        max_length=CUSTOM_METRICS_MAX,
        description="Further metrics by name (camelCase).",
    )

    def get(self, name: str) -> float | None:
        """The value of metric `name` (a known field's camelCase name or a custom key)."""
        for field_name, info in type(self).model_fields.items():
            if info.alias == name and field_name != "custom":
                value = getattr(self, field_name)
                return value if isinstance(value, float | int) else None
        return self.custom.get(name)


class MetricValues(BaselineMetrics):
    """Evaluation metrics of the model, and of the base model for comparison."""

    baseline: BaselineMetrics | None = Field(
        default=None, description="The same metrics for the base model (regression comparison)."
    )


class Gate(CamelModel):
    """A quality gate on one metric: every bound that is set must hold."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.min) || has(self.max) || has(self.minDeltaVsBaseline) || "
                    "has(self.maxDeltaVsBaseline)",
                    "message": "a gate needs min, max, minDeltaVsBaseline or maxDeltaVsBaseline",
                }
            ]
        }
    )

    metric: str = Field(
        max_length=128,
        pattern=r"^[a-zA-Z][a-zA-Z0-9_]*$",
        description="Metric name: loss, evalLoss, perplexity, exactMatch, rougeL, accuracy, "
        "or a key of metrics.custom.",
    )
    min: float | None = Field(default=None, description="The metric must be at least this.")
    max: float | None = Field(default=None, description="The metric must be at most this.")
    min_delta_vs_baseline: float | None = Field(
        default=None, description="metric - baseline must be at least this."
    )
    max_delta_vs_baseline: float | None = Field(
        default=None, description="metric - baseline must be at most this."
    )

    @model_validator(mode="after")
    def _has_bound(self) -> Gate:
        if all(
            v is None
            for v in (self.min, self.max, self.min_delta_vs_baseline, self.max_delta_vs_baseline)
        ):
            raise ValueError(
                f"gate on {self.metric} has no bound: set min, max, minDeltaVsBaseline "
                "or maxDeltaVsBaseline"
            )
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"gate on {self.metric}: min {self.min} is above max {self.max}")
        return self


class ArtifactRef(CamelModel):
    """The model files and the digest that pins them."""

    uri: str = Field(
        pattern=r"^(s3|pvc|file|hf)://.+$",
        max_length=2048,
        description="Location of the artifact folder (s3://, pvc://, file:// or hf://).",
    )
    format: Literal["merged", "adapter"] = Field(
        default="merged",
        description="merged (full weights) or adapter (LoRA adapter applied on baseModel).",
    )
    digest: str = Field(
        pattern=DIGEST,
        max_length=DIGEST_MAX,
        description="sha256 of the artifact's manifest.json; immutable.",
    )
    secret_ref: SecretRef | None = Field(
        default=None,
        description="Secret with credentials to read the artifact (used by the verify pod).",
    )


class SourceRef(CamelModel):
    """Lineage: where the artifact came from."""

    fine_tune_job: str | None = Field(
        default=None, max_length=253, pattern=DNS_SUBDOMAIN, description="FineTuneJob that made it."
    )
    dataset_digest: str | None = Field(
        default=None,
        pattern=DIGEST,
        max_length=DIGEST_MAX,
        description="Digest of the prepared training data.",
    )
    trainer_image: str | None = Field(
        default=None, max_length=IMAGE_MAX, description="Trainer image that made it."
    )


class ApprovalPolicy(CamelModel):
    """Whether a person must approve this version before it serves."""

    required: bool = Field(
        default=True,
        description="true: the version reaches Approved only after an authorised approval "
        "(annotation whetstone.dev/approve, checked against the approve verb). false lifts "
        "the requirement only where the namespace's PlatformPolicy does not require approval.",
    )


class ModelVersionSpec(CamelModel):
    """A versioned model artifact with lineage, metrics and the gates it must pass."""

    model: str = Field(max_length=40, pattern=DNS_LABEL, description="Registered model name.")
    version: int = Field(ge=1, le=1_000_000, description="Version number within the model.")
    artifact: ArtifactRef = Field(
        description="The artifact and its digest; immutable once set.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self == oldSelf", "message": "spec.artifact is immutable"}
            ]
        },
    )
    base_model: ModelSource | None = Field(
        default=None, description="Base model the artifact was trained from (needed by adapters)."
    )
    source: SourceRef | None = Field(
        default=None,
        description="Lineage of the artifact; immutable once set.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self == oldSelf", "message": "spec.source is immutable"}
            ]
        },
    )
    metrics: MetricValues = Field(
        default_factory=MetricValues, description="Evaluation metrics the gates are checked on."
    )
    gates: list[Gate] = Field(
        default_factory=list, max_length=GATES_MAX, description="Quality gates."
    )
    approval: ApprovalPolicy = Field(
        default_factory=ApprovalPolicy, description="Human approval policy."
    )

    @model_validator(mode="after")
    def _adapter_needs_base(self) -> ModelVersionSpec:
        if self.artifact.format == "adapter" and self.base_model is None:
            raise ValueError(
                "spec.artifact.format is adapter: set spec.baseModel.uri to the model the "
                "adapter applies to"
            )
        return self


ModelVersionPhase = Literal["Pending", "Verified", "Rejected", "Approved", "Serving", "Retired"]


class GateResult(CamelModel):
    """The outcome of one gate."""

    metric: str = Field(max_length=128, description="Metric the gate is on.")
    value: float | None = Field(default=None, description="The metric's value (absent if missing).")
    passed: bool = Field(description="Whether every bound held.")
    message: str = Field(default="", max_length=1024, description="Why it passed or failed.")


class Deployment(CamelModel):
    """Where this version serves traffic."""

    rollout: str = Field(
        max_length=DNS_SUBDOMAIN_MAX, description="Rollout driving the deployment."
    )
    inference_service: str = Field(
        max_length=DNS_SUBDOMAIN_MAX, description="KServe InferenceService name."
    )
    traffic_percent: int = Field(ge=0, le=100, description="Share of traffic it receives.")
    role: Literal["stable", "canary"] = Field(description="stable or canary.")


class ApprovalEntry(CamelModel):
    """One approval whose signature holds."""

    user: str = Field(max_length=USER_MAX, description="Who approved (the Kubernetes user name).")
    groups: list[Annotated[str, Field(max_length=USER_MAX)]] = Field(
        default_factory=list, max_length=GROUPS_MAX, description="The approver's groups then."
    )
    time: str = Field(max_length=TIME_MAX, description="When (RFC 3339).")
    counted: bool = Field(
        default=True,
        description="Whether the namespace's PlatformPolicy counts this approver (e.g. "
        "ServiceAccounts and people outside approverGroups do not).",
    )


class Verification(CamelModel):
    """The operator's signed record that the artifact matched its digest."""

    digest: str = Field(max_length=DIGEST_MAX, description="The digest the verify pod confirmed.")
    at: str = Field(max_length=TIME_MAX, description="When (RFC 3339).")
    sig: str = Field(
        max_length=256, description="The operator's signature over the object and its artifact."
    )


class ModelVersionStatus(StatusBase):
    """Observed state of a ModelVersion."""

    model_config = ConfigDict(extra="ignore")

    phase: ModelVersionPhase | None = Field(default=None, description="Lifecycle phase.")
    verified_digest: str | None = Field(
        default=None,
        max_length=DIGEST_MAX,
        description="Digest confirmed by recomputing the artifact's files.",
    )
    gate_results: list[GateResult] = Field(
        default_factory=list, max_length=GATES_MAX, description="Gate outcomes."
    )
    verification: Verification | None = Field(
        default=None,
        description="Signed record of the artifact check; Rollouts trust this, not "
        "verifiedDigest, and check it before every traffic change.",
    )
    approvals: list[ApprovalEntry] = Field(
        default_factory=list,
        max_length=APPROVALS_MAX,
        description="Every approval whose signature holds, oldest first.",
    )
    approved_by: str | None = Field(
        default=None,
        max_length=USER_MAX,
        description="Who approved the version (the last approver).",
    )
    approved_at: str | None = Field(
        default=None,
        max_length=TIME_MAX,
        description="When it was approved (RFC 3339, the last approval).",
    )
    deployments: list[Deployment] = Field(
        default_factory=list,
        max_length=DEPLOYMENTS_MAX,
        description="Rollouts serving this version (written by the Rollout controller).",
    )
    superseded_by: str | None = Field(
        default=None,
        max_length=DNS_SUBDOMAIN_MAX,
        description="The ModelVersion that replaced this one as stable (set on promotion).",
    )


class ModelVersion(CamelModel):
    """A registered model artifact."""

    model_config = ConfigDict(extra="ignore")

    spec: ModelVersionSpec
    status: ModelVersionStatus = Field(default_factory=ModelVersionStatus)


MODELVERSION = KindInfo(
    kind="ModelVersion",
    plural="modelversions",
    singular="modelversion",
    short_names=["mv"],
    description="ModelVersion is a registered model artifact (URI + digest) with lineage, "
    "metrics, quality gates and a recorded human approval.",
    columns=[
        {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
        {"name": "Version", "type": "integer", "jsonPath": ".spec.version"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "ExactMatch", "type": "number", "jsonPath": ".spec.metrics.exactMatch"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
)
