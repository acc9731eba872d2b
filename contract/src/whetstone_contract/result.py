"""What the trainer hands back: progress while it runs, the data report and the final result.

The operator reads Progress from the trainer's progress endpoint and TrainerResult from the
container's termination message (kept under 4 KB). No torch import here: the operator uses
these models too.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from whetstone_contract.base import CamelModel

TERMINATION_MESSAGE_LIMIT = 4096

# Bounds of what the trainer reports (the FineTuneJob status carries the same ones).
Key = Annotated[str, Field(max_length=128)]  # a reason, a redaction kind, a metric name
COUNTS_MAX = 32  # entries of dataReport.dropped, .redacted and .tokens
INVALID_LINE_MAX = 8192
METRICS_MAX = 128
HYPERPARAMETERS_MAX = 128
HYPERPARAMETER_TEXT_MAX = 1024

# Exit codes the operator tells apart.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID_DATA = 3
EXIT_VERIFY_FAILED = 4  # the artifact is absent, incomplete or does not match its digest
EXIT_PREEMPTED = 143  # SIGTERM: a checkpoint was saved, the run can resume


class DataReport(CamelModel):
    """What data preparation kept, dropped and redacted."""

    model_config = CamelModel.model_config | {"extra": "ignore"}

    examples: int = Field(default=0, ge=0, description="Examples kept for training.")
    validation_examples: int = Field(default=0, ge=0, description="Examples kept for validation.")
    test_examples: int = Field(default=0, ge=0, description="Examples kept for testing.")
    dropped: dict[Key, int] = Field(
        default_factory=dict,
        max_length=COUNTS_MAX,
        description="Examples dropped, by reason (duplicate, invalid, tooLong, notSelected).",
    )
    redacted: dict[Key, int] = Field(
        default_factory=dict,
        max_length=COUNTS_MAX,
        description="Redactions made, by kind (see dataset.redact).",
    )
    invalid_lines: list[Annotated[str, Field(max_length=INVALID_LINE_MAX)]] = Field(
        default_factory=list,
        max_length=50,
        description="First invalid lines as 'file:line: reason'.",
    )
    tokens: dict[Key, float] = Field(
        default_factory=dict,
        max_length=COUNTS_MAX,
        description="Token statistics of the kept training examples (total, mean, p50, p95, max).",
    )
    padding_waste_percent: float | None = Field(
        default=None, ge=0, le=100, description="Share of padded positions in training rows."
    )
    dataset_digest: str | None = Field(
        default=None,
        pattern=r"^sha256:[0-9a-f]{64}$",
        max_length=71,
        description="sha256 over the prepared data (lineage).",
    )


class Progress(CamelModel):
    """Training progress, served by the trainer while it runs."""

    model_config = CamelModel.model_config | {"extra": "ignore"}

    step: int = Field(default=0, ge=0, description="Optimizer steps done.")
    total_steps: int = Field(default=0, ge=0, description="Optimizer steps planned.")
    epoch: float = Field(default=0.0, ge=0, description="Epochs done (fractional).")
    percent: int = Field(default=0, ge=0, le=100, description="step / totalSteps, in percent.")
    loss: float | None = Field(default=None, description="Latest training loss.")
    eval_loss: float | None = Field(default=None, description="Latest validation loss.")
    tokens_per_second: float | None = Field(
        default=None, ge=0, description="Training throughput in tokens per second."
    )
    eta: str | None = Field(
        default=None, max_length=64, description="Estimated completion time (RFC 3339, UTC)."
    )


class CheckpointInfo(CamelModel):
    """A complete checkpoint."""

    model_config = CamelModel.model_config | {"extra": "ignore"}

    step: int = Field(ge=0, description="Step at which the checkpoint was taken.")
    uri: str = Field(max_length=2048, description="Location of the checkpoint.")
    eval_loss: float | None = Field(default=None, description="Validation loss at that step.")


class TrainerResult(CamelModel):
    """The final result of a successful run (the container's termination message)."""

    model_config = CamelModel.model_config | {"extra": "ignore"}

    artifact_uri: str = Field(max_length=2048, description="Where the final artifact is.")
    artifact_format: str = Field(default="merged", description="merged or adapter.")
    manifest_digest: str = Field(
        pattern=r"^sha256:[0-9a-f]{64}$", description="sha256 of the artifact manifest."
    )
    metrics: dict[Key, float | Annotated[dict[Key, float], Field(max_length=METRICS_MAX)]] = Field(
        default_factory=dict,
        max_length=METRICS_MAX,
        description="Final metrics (evalLoss, perplexity, exactMatch, rougeL) and baseline.",
    )
    data_report: DataReport = Field(default_factory=DataReport, description="The data report.")
    hyperparameters: dict[
        Key, float | int | Annotated[str, Field(max_length=HYPERPARAMETER_TEXT_MAX)] | bool
    ] = Field(
        default_factory=dict,
        max_length=HYPERPARAMETERS_MAX,
        description="The hyperparameters actually used (resolved).",
    )
    steps: int = Field(default=0, ge=0, description="Optimizer steps done.")

    def termination_message(self) -> str:
        """JSON for the termination message, trimmed to fit the kubelet's 4 KB limit."""
        text = self.model_dump_json(by_alias=True, exclude_none=True)
        if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
            return text
        trimmed = self.model_copy(
            update={"data_report": self.data_report.model_copy(update={"invalid_lines": []})}
        )
        return trimmed.model_dump_json(by_alias=True, exclude_none=True)


class TrainerFailure(CamelModel):
    """Why a run did not succeed (the container's termination message on a non-zero exit)."""

    model_config = CamelModel.model_config | {"extra": "ignore"}

    reason: str = Field(description="InvalidData, Preempted or Failed (matches the exit code).")
    message: str = Field(max_length=2048, description="What went wrong, for people.")
    data_report: DataReport | None = Field(
        default=None, description="The data report, when the data was read."
    )
    step: int | None = Field(default=None, ge=0, description="Step reached (Preempted).")
    checkpoint_uri: str | None = Field(
        default=None, max_length=2048, description="Checkpoint saved on preemption."
    )

    def termination_message(self) -> str:
        """JSON for the termination message, trimmed to fit the kubelet's 4 KB limit."""
        text = self.model_dump_json(by_alias=True, exclude_none=True)
        if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
            return text
        report = self.data_report
        trimmed = self.model_copy(
            update={
                "data_report": report.model_copy(update={"invalid_lines": report.invalid_lines[:5]})
                if report is not None
                else None,
                "message": self.message[:1024],
            }
        )
        text = trimmed.model_dump_json(by_alias=True, exclude_none=True)
        if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
            return text
        return trimmed.model_copy(update={"data_report": None}).model_dump_json(
            by_alias=True, exclude_none=True
        )
