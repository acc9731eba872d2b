"""FineTuneJob: spec and status. The training sections are the trainer's own config parts."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from whetstone_contract.base import CamelModel
from whetstone_contract.config import (
    DatasetSpec,
    DeepSpeedSettings,
    EarlyStopping,
    EvaluationSpec,
    Hyperparameters,
    MethodSpec,
    ModelSource,
    OutputSpec,
    check_combination,
)
from whetstone_contract.result import CheckpointInfo, DataReport, Progress
from whetstone_operator.api.common import (
    DIGEST_MAX,
    DNS_LABEL,
    DNS_SUBDOMAIN_MAX,
    IMAGE_MAX,
    TIME_MAX,
    URI_MAX,
    KindInfo,
    MapKey,
    SecretRef,
    StatusBase,
)
from whetstone_operator.api.modelversion import GATES_MAX, Gate, MetricValues
from whetstone_operator.api.platformpolicy import DataClass
from whetstone_operator.api.scheduling import (
    TOLERATIONS_MAX,
    AffinityDict,
    NodeSelector,
    TolerationDict,
)

# A run per resume after a suspend: far more than any job sees.
ATTEMPTS_MAX = 1000
# The trainer keeps at most 100 checkpoints (output.keepCheckpoints); status lists the last ones.
CHECKPOINTS_MAX = 100
# What the trainer reports fits its 4 KB termination message; these are far above that.
HYPERPARAMETERS_MAX = 128
HYPERPARAMETER_VALUE_MAX = 1024


class BaseModelSpec(ModelSource):
    """The pre-trained model to start from, and the Secret to read it with."""

    secret_ref: SecretRef | None = Field(
        default=None,
        description="Secret with credentials for the base model's location (e.g. HF_TOKEN or "
        "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY), exposed to the trainer as environment.",
    )


class DatasetSource(DatasetSpec):
    """Training data, its preparation, the Secret to read it with and how sensitive it is."""

    secret_ref: SecretRef | None = Field(
        default=None,
        description="Secret with credentials for the data's location, exposed as environment.",
    )
    classification: DataClass = Field(
        default="internal",
        description="How sensitive the data is: public, internal or restricted. The "
        "PlatformPolicy of the namespace lists the classes allowed (training.dataClasses); "
        "restricted data also needs dataset.redact and output.encryption.",
    )


class OutputLocation(OutputSpec):
    """Where artifacts and checkpoints go, and the Secret to write them with."""

    secret_ref: SecretRef | None = Field(
        default=None,
        description="Secret with credentials for the output location, exposed as environment.",
    )


class ResourcesSpec(CamelModel):
    """Compute for the trainer: nodes, GPUs, placement and DeepSpeed."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.nodes <= 1 || has(self.deepspeed)",
                    "message": "resources.nodes > 1 needs resources.deepspeed",
                }
            ]
        }
    )

    nodes: int = Field(
        default=1, ge=1, le=1024, description="Trainer pods; more than one needs deepspeed."
    )
    gpus_per_node: int = Field(
        default=1, ge=0, le=64, description="GPUs requested by each trainer pod (0 = CPU only)."
    )
    gpu_resource_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^([a-z0-9.-]+/)?[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$",
        description="Extended resource name of the GPU (e.g. nvidia.com/gpu, amd.com/gpu); "
        "omitted = the operator's configured default (nvidia.com/gpu unless changed).",
    )
    cpu: str | None = Field(
        default=None,
        max_length=32,
        pattern=r"^[0-9]+(\.[0-9]+)?m?$",
        description="CPU request per trainer pod (e.g. 8 or 500m).",
    )
    memory: str | None = Field(
        default=None,
        max_length=32,
        pattern=r"^[0-9]+(\.[0-9]+)?([KMGTPE]i?)?$",
        description="Memory request and limit per trainer pod (e.g. 64Gi).",
    )
    shm_size: str | None = Field(
        default=None,
        max_length=32,
        pattern=r"^[0-9]+(\.[0-9]+)?([KMGTPE]i?)?$",
        description="Size of the memory-backed /dev/shm; omitted = the operator's default, "
        "else 8Gi per GPU.",
    )
    node_selector: NodeSelector = Field(
        default_factory=dict, description="Node labels the trainer pods must match."
    )
    tolerations: list[TolerationDict] = Field(
        default_factory=list,
        max_length=TOLERATIONS_MAX,
        description="Kubernetes tolerations for the trainer pods (core/v1 Toleration).",
    )
    affinity: AffinityDict | None = Field(
        default=None,
        description="Kubernetes affinity for the trainer pods (core/v1 Affinity; at most "
        "16 KiB as JSON).",
    )
    priority_class_name: str | None = Field(
        default=None, max_length=DNS_SUBDOMAIN_MAX, description="PriorityClass of the trainer pods."
    )
    deepspeed: DeepSpeedSettings | None = Field(
        default=None, description="DeepSpeed ZeRO settings; required when nodes > 1."
    )


class Registration(CamelModel):
    """Register the result as a ModelVersion when the job succeeds."""

    model: str = Field(
        max_length=40,
        pattern=DNS_LABEL,
        description="Registered model name; the ModelVersion is named "
        "<model>-<base>-v<version>-<yyyymmdd>.",
    )
    gates: list[Gate] = Field(
        default_factory=list,
        max_length=GATES_MAX,
        description="Quality gates copied into the ModelVersion.",
    )
    approval_required: bool = Field(
        default=True,
        description="Whether the ModelVersion needs a human approval before it can be rolled out.",
    )


class FineTuneJobSpec(CamelModel):
    """What to fine-tune, on which data, how, on what hardware, and where the result goes."""

    base_model: BaseModelSpec = Field(description="The pre-trained model to start from.")
    dataset: DatasetSource = Field(description="Training data and its preparation.")
    method: MethodSpec = Field(
        default_factory=MethodSpec, description="Fine-tuning method: lora, qlora or full."
    )
    hyperparameters: Hyperparameters = Field(
        default_factory=Hyperparameters,
        description="Training hyperparameters; omitted ones are chosen and recorded in status.",
    )
    early_stopping: EarlyStopping | None = Field(
        default=None, description="Stop when the validation loss stops improving."
    )
    evaluation: EvaluationSpec = Field(
        default_factory=EvaluationSpec, description="Metrics computed after training."
    )
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="Nodes, GPUs, placement and DeepSpeed."
    )
    output: OutputLocation = Field(description="Where artifacts and checkpoints go.")
    registration: Registration | None = Field(
        default=None, description="On success, register the result as a ModelVersion."
    )
    suspend: bool = Field(
        default=False,
        description="true stops the trainer pods and keeps checkpoints; false again resumes "
        "from the latest checkpoint.",
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Fail the job when training runs longer than this."
    )
    backoff_limit: int = Field(
        default=2,
        ge=0,
        le=100,
        description="Restarts after a failure; each resumes from the latest checkpoint.",
    )
    image: str | None = Field(
        default=None,
        max_length=IMAGE_MAX,
        description="Trainer image override (default: the operator's configured trainer image).",
    )

    @model_validator(mode="after")
    def _cross_field(self) -> FineTuneJobSpec:
        check_combination(self.method, self.output, self.resources.deepspeed, self.resources.nodes)
        if self.early_stopping is not None and "loss" not in self.evaluation.metrics:
            raise ValueError(
                "earlyStopping monitors eval_loss: add loss to evaluation.metrics "
                "or remove earlyStopping"
            )
        return self


class AttemptCost(CamelModel):
    """GPU time of one trainer run."""

    attempt: int = Field(ge=1, description="Trainer run number (status.attempt of that run).")
    gpus: int = Field(
        ge=0, description="GPUs the run requested: resources.nodes x resources.gpusPerNode."
    )
    start_time: str | None = Field(
        default=None,
        max_length=TIME_MAX,
        description="When the run's first trainer pod started (RFC 3339).",
    )
    end_time: str | None = Field(
        default=None,
        max_length=TIME_MAX,
        description="When the run's last trainer pod finished or was stopped (RFC 3339); "
        "absent while it runs.",
    )
    gpu_seconds: float = Field(
        default=0,
        ge=0,
        description="GPU-seconds of the run: for each of its trainer pods, from the pod's start "
        "to its container's end (or now, counted in whole minutes while it runs), times "
        "resources.gpusPerNode. Never decreases.",
    )


class Cost(CamelModel):
    """GPU time a FineTuneJob has used, in total and per trainer run."""

    gpu_seconds: float = Field(
        default=0,
        ge=0,
        description="GPU-seconds of every trainer run together (the sum of attempts); never "
        "decreases. The namespace's PlatformPolicy budget counts these.",
    )
    attempts: list[AttemptCost] = Field(
        default_factory=list,
        max_length=ATTEMPTS_MAX,
        description="One entry per trainer run, oldest first; kept when its pods are gone.",
    )


FineTuneJobPhase = Literal["Pending", "Validating", "Running", "Suspended", "Succeeded", "Failed"]
# A finished FineTuneJob is never reconciled again (unless its spec changes).
FINETUNEJOB_FINISHED: tuple[FineTuneJobPhase, ...] = ("Succeeded", "Failed")


class FineTuneJobStatus(StatusBase):
    """Observed state of a FineTuneJob."""

    model_config = ConfigDict(extra="ignore")

    phase: FineTuneJobPhase | None = Field(default=None, description="Lifecycle phase.")
    progress: Progress | None = Field(default=None, description="Training progress.")
    data_report: DataReport | None = Field(
        default=None, description="What data preparation kept, dropped and redacted."
    )
    hyperparameters: dict[MapKey, Annotated[str, Field(max_length=HYPERPARAMETER_VALUE_MAX)]] = (
        Field(
            default_factory=dict,
            max_length=HYPERPARAMETERS_MAX,
            description="Hyperparameters actually used, including the ones chosen automatically.",
        )
    )
    checkpoints: list[CheckpointInfo] = Field(
        default_factory=list,
        max_length=CHECKPOINTS_MAX,
        description="Complete checkpoints, newest last.",
    )
    metrics: MetricValues | None = Field(default=None, description="Final evaluation metrics.")
    artifact_uri: str | None = Field(
        default=None, max_length=URI_MAX, description="Location of the final artifact."
    )
    artifact_digest: str | None = Field(
        default=None, max_length=DIGEST_MAX, description="sha256 digest of the artifact manifest."
    )
    model_version: str | None = Field(
        default=None,
        max_length=DNS_SUBDOMAIN_MAX,
        description="The ModelVersion registered from this job.",
    )
    restarts: int = Field(default=0, ge=0, description="Trainer restarts so far.")
    attempt: int = Field(
        default=0,
        ge=0,
        description="Trainer run number; each resume after a suspend starts a new run that "
        "continues from the latest checkpoint.",
    )
    start_time: str | None = Field(
        default=None, max_length=TIME_MAX, description="When training started (RFC 3339)."
    )
    completion_time: str | None = Field(
        default=None, max_length=TIME_MAX, description="When the job finished (RFC 3339)."
    )
    cost: Cost | None = Field(
        default=None, description="GPU time used so far, in total and per trainer run."
    )
    spec_fingerprint: str | None = Field(
        default=None,
        max_length=64,
        description="Fingerprint of the spec the run started from, all of it but suspend, "
        "activeDeadlineSeconds, backoffLimit and registration (which apply to a started run). "
        "A later "
        "change to the rest is not applied: condition SpecApplied says so, and no new trainer "
        "pod starts until the change is reverted.",
    )


class FineTuneJob(CamelModel):
    """A fine-tune of a base model on a dataset, run as trainer pods."""

    model_config = ConfigDict(extra="ignore")

    spec: FineTuneJobSpec
    status: FineTuneJobStatus = Field(default_factory=FineTuneJobStatus)


FINETUNEJOB = KindInfo(
    kind="FineTuneJob",
    plural="finetunejobs",
    singular="finetunejob",
    short_names=["ftj"],
    description="FineTuneJob fine-tunes a base model on a dataset with LoRA, QLoRA or a full "
    "fine-tune, on GPU nodes with DeepSpeed, and registers the result as a ModelVersion.",
    columns=[
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Progress", "type": "integer", "jsonPath": ".status.progress.percent"},
        {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
        {"name": "ETA", "type": "string", "jsonPath": ".status.progress.eta"},
        {"name": "ModelVersion", "type": "string", "jsonPath": ".status.modelVersion"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
)
