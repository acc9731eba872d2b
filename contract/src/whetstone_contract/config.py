"""TrainerConfig: the one contract between the operator and the trainer.

The operator renders a TrainerConfig into the trainer's ConfigMap; the trainer loads it
back with the same model. The FineTuneJob spec reuses these parts instead of copying
them. This module must never import torch: the operator image imports it.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from whetstone_contract.base import CamelModel

TRAINER_CONFIG_VERSION: Literal["whetstone.dev/trainer-v1"] = "whetstone.dev/trainer-v1"

MODEL_URI_SCHEMES = ("hf", "s3", "pvc", "file", "tiny")
DATA_URI_SCHEMES = ("s3", "pvc", "file")
OUTPUT_URI_SCHEMES = ("s3", "pvc", "file")

_MODEL_URI = r"^(hf|s3|pvc|file|tiny)://.+$"
_DATA_URI = r"^(s3|pvc|file)://.+$"
_OUTPUT_URI = r"^(s3|pvc|file)://.+$"
_K8S_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class ModelSource(CamelModel):
    """Where the pre-trained base model comes from."""

    uri: str = Field(
        pattern=_MODEL_URI,
        max_length=2048,
        description=(
            "Location of the base model: hf://org/name (Hugging Face Hub), s3://bucket/key/, "
            "pvc://claim/path, file:///path, or tiny://llama (a tiny model built from the "
            "training data, for demos and tests)."
        ),
        examples=["hf://meta-llama/Llama-3.2-1B-Instruct"],
    )
    revision: str | None = Field(
        default=None,
        max_length=256,
        description="Revision (branch, tag or commit) for hf:// models; ignored elsewhere.",
    )


class DataFile(CamelModel):
    """One JSONL data file."""

    uri: str = Field(
        pattern=_DATA_URI,
        max_length=2048,
        description="Location of a JSONL file: s3://bucket/key, pvc://claim/path or file:///path.",
    )


class DataSelection(CamelModel):
    """Which examples to keep, by their `metadata`."""

    min_quality_score: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Keep only examples whose metadata.quality_score is at least this value.",
    )
    tags: list[Annotated[str, Field(max_length=128)]] = Field(
        default_factory=list,
        max_length=64,
        description="Keep only examples whose metadata.tags contain at least one of these tags.",
    )
    roles: list[Annotated[str, Field(max_length=128)]] = Field(
        default_factory=list,
        max_length=64,
        description="Keep only examples whose metadata.role is one of these roles.",
    )


RedactionKind = Literal["email", "phone", "secret", "creditCard", "iban", "ipAddress"]


class DatasetSpec(CamelModel):
    """Training data and how it is prepared before training."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.validation) != has(self.validationSplit)",
                    "message": "set exactly one of validation.uri or validationSplit",
                }
            ]
        }
    )

    train: DataFile = Field(description="Training examples (JSONL, one example per line).")
    validation: DataFile | None = Field(
        default=None,
        description="Validation examples. Give either this or validationSplit, not both.",
    )
    validation_split: float | None = Field(
        default=None,
        gt=0.0,
        lt=0.5,
        description=(
            "Fraction of the training examples held out for validation (seeded split). "
            "Give either this or validation, not both."
        ),
    )
    test: DataFile | None = Field(
        default=None, description="Optional held-out test examples, evaluated after training."
    )
    format: Literal["chat", "completion"] = Field(
        default="chat",
        description=(
            'Example format: chat ({"messages":[{"role","content"}...], "metadata":{...}}) '
            'or completion ({"prompt","completion","metadata"}).'
        ),
    )
    redact: list[RedactionKind] = Field(
        default_factory=list,
        max_length=32,
        description=(
            "Sensitive data replaced by a placeholder before tokenisation: email (addresses), "
            "phone (numbers), secret (private keys; AWS access key ids; GitHub, GitLab, "
            "OpenAI, Anthropic, Stripe, Slack, Google, Hugging Face and npm keys and tokens; "
            "JWTs; Bearer tokens; password, token, secret or API key assignments), creditCard "
            "(card numbers that pass the Luhn check), iban (IBANs that pass the mod-97 "
            "check), ipAddress (IPv4 and IPv6 addresses). Counts are reported in the data "
            "report; what the data report quotes of the data is redacted the same way."
        ),
    )
    dedupe: bool = Field(default=True, description="Drop exact duplicate examples.")
    select: DataSelection | None = Field(
        default=None, description="Keep only examples whose metadata matches."
    )
    on_invalid: Literal["drop", "fail"] = Field(
        default="drop",
        description=(
            "What an invalid line does: drop (skip it, count it and report its line number) "
            "or fail (stop with the line numbers)."
        ),
    )

    @model_validator(mode="after")
    def _one_validation_source(self) -> DatasetSpec:
        if self.validation is not None and self.validation_split is not None:
            raise ValueError(
                "dataset.validation and dataset.validationSplit are both set: keep exactly one"
            )
        if self.validation is None and self.validation_split is None:
            raise ValueError(
                "dataset needs validation data: set dataset.validation.uri or "
                "dataset.validationSplit (e.g. 0.1)"
            )
        return self


class LoraSettings(CamelModel):
    """LoRA adapter settings (used by lora and qlora)."""

    r: int = Field(default=16, ge=1, le=1024, description="Rank of the LoRA update matrices.")
    alpha: int = Field(default=32, ge=1, le=4096, description="LoRA scaling factor (lora_alpha).")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA layers.")
    target_modules: list[Annotated[str, Field(max_length=128)]] = Field(
        default_factory=lambda: ["all-linear"],
        min_length=1,
        max_length=64,
        description='Module names to adapt, or ["all-linear"] for every linear layer.',
    )


class MethodSpec(CamelModel):
    """Fine-tuning method."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.type != 'full' || !has(self.lora)",
                    "message": "method.lora must be absent when method.type is full",
                }
            ]
        }
    )

    type: Literal["lora", "qlora", "full"] = Field(
        default="lora",
        description=(
            "lora (low-rank adapters), qlora (adapters on a 4-bit base, needs bitsandbytes) "
            "or full (every weight is trained)."
        ),
    )
    lora: LoraSettings | None = Field(
        default=None,
        description="Adapter settings for lora and qlora (defaults apply when omitted); "
        "must be absent for full.",
    )

    @model_validator(mode="after")
    def _lora_matches_type(self) -> MethodSpec:
        if self.type == "full" and self.lora is not None:
            raise ValueError(
                "method.lora is set but method.type is full: remove method.lora "
                "or set method.type to lora or qlora"
            )
        if self.type in ("lora", "qlora") and self.lora is None:
            self.lora = LoraSettings()
        return self


LrScheduler = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
]


class Hyperparameters(CamelModel):
    """Training hyperparameters. Each one is optional: omitted values are chosen by the
    trainer and the choice is recorded in the FineTuneJob status."""

    epochs: float | None = Field(default=None, gt=0, le=1000, description="Passes over the data.")
    max_steps: int | None = Field(
        default=None,
        ge=1,
        description="Stop after this many optimizer steps (overrides epochs when set).",
    )
    batch_size: int | None = Field(
        default=None, ge=1, le=4096, description="Examples (or packed rows) per device per step."
    )
    gradient_accumulation_steps: int | None = Field(
        default=None, ge=1, le=4096, description="Micro-batches accumulated per optimizer step."
    )
    learning_rate: float | None = Field(
        default=None, gt=0, le=1.0, description="Peak learning rate."
    )
    weight_decay: float | None = Field(
        default=None, ge=0, le=1.0, description="AdamW weight decay."
    )
    warmup_steps: int | None = Field(
        default=None, ge=0, description="Linear warm-up steps before the scheduler takes over."
    )
    lr_scheduler: LrScheduler | None = Field(
        default=None, description="Learning-rate schedule after warm-up."
    )
    max_seq_length: int | None = Field(
        default=None,
        ge=16,
        le=1_048_576,
        description="Longest tokenised example; longer examples are dropped and reported.",
    )
    packing: bool | None = Field(
        default=None,
        description="Pack several examples into one row (examples never attend to each other).",
    )
    seed: int | None = Field(
        default=None, ge=0, le=2**32 - 1, description="Seed for splits, shuffling and init."
    )
    eval_steps: int | None = Field(
        default=None, ge=1, description="Evaluate every this many steps (default: once per epoch)."
    )
    logging_steps: int | None = Field(
        default=None, ge=1, description="Report loss every this many steps."
    )


class EarlyStopping(CamelModel):
    """Stop training when the monitored metric stops improving."""

    patience: int = Field(
        default=3, ge=1, le=1000, description="Evaluations without improvement before stopping."
    )
    min_delta: float = Field(
        default=0.0, ge=0.0, description="Smallest change that counts as an improvement."
    )
    monitor: Literal["eval_loss"] = Field(
        default="eval_loss", description="Metric watched for improvement (lower is better)."
    )


MetricName = Literal["loss", "perplexity", "exactMatch", "rougeL", "accuracy"]


class EvaluationSpec(CamelModel):
    """Metrics computed after training on the validation (and test) data."""

    metrics: list[MetricName] = Field(
        default_factory=lambda: list[MetricName](["loss", "perplexity"]),
        min_length=1,
        max_length=16,
        description="Metrics to compute: loss, perplexity, exactMatch, rougeL, accuracy.",
    )
    compare_to_baseline: bool = Field(
        default=False,
        description="Also evaluate the base model on the same data and record the deltas.",
    )
    max_new_tokens: int = Field(
        default=64, ge=1, le=8192, description="Generation length for exactMatch and rougeL."
    )
    max_examples: int | None = Field(
        default=None, ge=1, description="Evaluate at most this many examples per dataset."
    )


class DeepSpeedSettings(CamelModel):
    """DeepSpeed ZeRO settings; the trainer generates and checks the DeepSpeed config."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!(self.bf16 && self.fp16) && "
                    "(self.offloadParam == 'none' || self.zeroStage == 3)",
                    "message": "bf16 and fp16 exclude each other; offloadParam needs zeroStage 3",
                }
            ]
        }
    )

    zero_stage: Literal[0, 1, 2, 3] = Field(default=2, description="ZeRO optimisation stage.")
    offload_optimizer: Literal["none", "cpu", "nvme"] = Field(
        default="none", description="Where optimizer state lives: none (GPU), cpu or nvme."
    )
    offload_param: Literal["none", "cpu", "nvme"] = Field(
        default="none", description="Where parameters live between uses (zeroStage 3 only)."
    )
    bf16: bool = Field(default=False, description="Train in bfloat16 mixed precision.")
    fp16: bool = Field(default=False, description="Train in float16 mixed precision.")

    @model_validator(mode="after")
    def _consistent(self) -> DeepSpeedSettings:
        if self.bf16 and self.fp16:
            raise ValueError("deepspeed.bf16 and deepspeed.fp16 are both true: choose one")
        if self.offload_param != "none" and self.zero_stage != 3:
            raise ValueError(
                "deepspeed.offloadParam needs deepspeed.zeroStage 3: set zeroStage to 3 "
                "or offloadParam to none"
            )
        if self.offload_optimizer != "none" and self.zero_stage == 0:
            raise ValueError(
                "deepspeed.offloadOptimizer needs zeroStage 1, 2 or 3: raise zeroStage "
                "or set offloadOptimizer to none"
            )
        return self


class Encryption(CamelModel):
    """Server-side encryption of artifacts and checkpoints."""

    kms_key_id: str | None = Field(
        default=None,
        max_length=2048,
        description="KMS key for S3 server-side encryption (aws:kms); omitted = AES256.",
    )


class OutputSpec(CamelModel):
    """Where artifacts and checkpoints go."""

    uri: str = Field(
        pattern=_OUTPUT_URI,
        max_length=2048,
        description="Output prefix: s3://bucket/prefix/, pvc://claim/path/ or file:///path/.",
    )
    encryption: Encryption | None = Field(
        default=None, description="S3 server-side encryption for artifacts and checkpoints."
    )
    artifact_format: Literal["merged", "adapter"] = Field(
        default="merged",
        description="merged (adapter folded into full weights) or adapter (LoRA weights only).",
    )
    checkpoint_every_steps: int | None = Field(
        default=None,
        ge=1,
        description="Save a checkpoint every this many steps (default: once per epoch).",
    )
    keep_checkpoints: int = Field(
        default=2, ge=1, le=100, description="Most recent checkpoints kept."
    )


class DistributedSpec(CamelModel):
    """Process layout; the launcher sets ranks from this."""

    nodes: int = Field(default=1, ge=1, le=1024, description="Number of nodes (pods).")
    procs_per_node: int = Field(
        default=1, ge=1, le=64, description="Processes per node (one per GPU)."
    )


class TrainerConfig(CamelModel):
    """Everything the trainer needs to run one fine-tune. Credentials are never here:
    they reach the trainer as environment variables from Secrets."""

    api_version: Literal["whetstone.dev/trainer-v1"] = Field(
        default=TRAINER_CONFIG_VERSION, description="Version of this configuration format."
    )
    job_name: str = Field(
        max_length=253, pattern=_K8S_NAME, description="Name of the FineTuneJob (lineage)."
    )
    namespace: str = Field(
        default="default", max_length=63, pattern=_K8S_NAME, description="Namespace of the job."
    )
    base_model: ModelSource = Field(description="The pre-trained model to start from.")
    dataset: DatasetSpec = Field(description="Training data and its preparation.")
    method: MethodSpec = Field(default_factory=MethodSpec, description="Fine-tuning method.")
    hyperparameters: Hyperparameters = Field(
        default_factory=Hyperparameters, description="Training hyperparameters."
    )
    early_stopping: EarlyStopping | None = Field(
        default=None, description="Stop early when the validation loss stops improving."
    )
    evaluation: EvaluationSpec = Field(
        default_factory=EvaluationSpec, description="Evaluation after training."
    )
    deepspeed: DeepSpeedSettings | None = Field(
        default=None, description="DeepSpeed ZeRO settings; absent = plain data parallel."
    )
    output: OutputSpec = Field(description="Where artifacts and checkpoints go.")
    distributed: DistributedSpec = Field(
        default_factory=DistributedSpec, description="Nodes and processes per node."
    )
    progress_port: int = Field(
        default=8080, ge=1024, le=65535, description="Port of the trainer's progress endpoint."
    )

    @model_validator(mode="after")
    def _cross_field(self) -> TrainerConfig:
        check_combination(self.method, self.output, self.deepspeed, self.distributed.nodes)
        return self


def check_combination(
    method: MethodSpec, output: OutputSpec, deepspeed: DeepSpeedSettings | None, nodes: int
) -> None:
    """Rules across sections, shared by TrainerConfig and the FineTuneJob spec."""
    if nodes > 1 and deepspeed is None:
        raise ValueError(
            "resources.nodes > 1 needs a DeepSpeed configuration: set resources.deepspeed "
            "(e.g. {zeroStage: 2})"
        )
    if method.type == "full" and output.artifact_format == "adapter":
        raise ValueError(
            "output.artifactFormat adapter needs method.type lora or qlora: "
            "a full fine-tune produces merged weights"
        )
    if method.type == "qlora" and deepspeed is not None and deepspeed.zero_stage == 3:
        raise ValueError(
            "method.type qlora cannot shard 4-bit weights with resources.deepspeed.zeroStage 3: "
            "use zeroStage 2 or lower"
        )


def is_valid_dns_label(name: str) -> bool:
    """True when `name` is a lowercase RFC 1123 label (usable as a Kubernetes name part)."""
    return len(name) <= 63 and re.fullmatch(_K8S_NAME, name) is not None
