"""FineTuneJob spec -> TrainerConfig: the one place the operator speaks the trainer's contract."""

from __future__ import annotations

from typing import Any

from whetstone_contract.config import DistributedSpec, OutputSpec, TrainerConfig
from whetstone_operator.api.errors import parse_spec
from whetstone_operator.api.finetunejob import FineTuneJobSpec


def build_trainer_config(
    name: str, namespace: str, spec: dict[str, Any] | FineTuneJobSpec, progress_port: int = 8080
) -> TrainerConfig:
    """The trainer's configuration for FineTuneJob `namespace/name`.

    Credentials (secretRef) stay out: they reach the trainer as environment from Secrets. So
    does dataset.classification, which only the operator's policy check reads.
    """
    parsed = spec if isinstance(spec, FineTuneJobSpec) else parse_spec(FineTuneJobSpec, spec)
    dataset = parsed.dataset.model_dump(exclude={"secret_ref", "classification"})
    output = OutputSpec.model_validate(parsed.output.model_dump(exclude={"secret_ref"}))
    return TrainerConfig(
        job_name=name,
        namespace=namespace,
        base_model=parsed.base_model.model_dump(exclude={"secret_ref"}),
        dataset=dataset,
        method=parsed.method,
        hyperparameters=parsed.hyperparameters,
        early_stopping=parsed.early_stopping,
        evaluation=parsed.evaluation,
        deepspeed=parsed.resources.deepspeed,
        output=output,
        distributed=DistributedSpec(
            nodes=parsed.resources.nodes,
            procs_per_node=max(parsed.resources.gpus_per_node, 1),
        ),
        progress_port=progress_port,
    )
