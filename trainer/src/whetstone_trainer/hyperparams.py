"""Hyperparameters with every default filled in, and the step counts the HF Trainer will use."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from whetstone_contract.config import TrainerConfig

DEFAULT_SEED = 42


@dataclass
class Resolved:
    """Hyperparameters with every default filled in (recorded in the result)."""

    epochs: float
    max_steps: int | None
    batch_size: int
    gradient_accumulation_steps: int
    learning_rate: float
    weight_decay: float
    warmup_steps: int
    lr_scheduler: str
    max_seq_length: int
    packing: bool
    seed: int
    steps_per_epoch: int = 0
    total_steps: int = 0
    eval_steps: int = 0
    logging_steps: int = 0
    save_steps: int = 0
    world_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, float | int | str | bool]:
        out: dict[str, float | int | str | bool] = {
            "epochs": self.epochs,
            "batchSize": self.batch_size,
            "gradientAccumulationSteps": self.gradient_accumulation_steps,
            "learningRate": self.learning_rate,
            "weightDecay": self.weight_decay,
            "warmupSteps": self.warmup_steps,
            "lrScheduler": self.lr_scheduler,
            "maxSeqLength": self.max_seq_length,
            "packing": self.packing,
            "seed": self.seed,
            "totalSteps": self.total_steps,
            "evalSteps": self.eval_steps,
            "loggingSteps": self.logging_steps,
            "checkpointEverySteps": self.save_steps,
            "worldSize": self.world_size,
            "device": _device_name(),
        }
        if self.max_steps is not None:
            out["maxSteps"] = self.max_steps
        out.update(self.extra)
        return out


def _device_name() -> str:
    """What the run trains on, recorded with the hyperparameters (e.g. `cuda:NVIDIA H100`)."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return "cpu"


def resolve_max_seq_length(config: TrainerConfig, tokenizer: Any, model_dir: Path | None) -> int:
    """maxSeqLength, or the smaller of the tokenizer's and the model's limits (at most 2048)."""
    if config.hyperparameters.max_seq_length is not None:
        return config.hyperparameters.max_seq_length
    limit = 2048
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < limit:
        limit = tok_max
    if model_dir is not None and (model_dir / "config.json").is_file():
        positions = json.loads((model_dir / "config.json").read_text()).get(
            "max_position_embeddings"
        )
        if isinstance(positions, int) and 0 < positions < limit:
            limit = positions
    return limit


def resolve_hyperparameters(config: TrainerConfig, max_seq_length: int) -> Resolved:
    hp = config.hyperparameters
    full = config.method.type == "full"
    return Resolved(
        epochs=hp.epochs if hp.epochs is not None else 3.0,
        max_steps=hp.max_steps,
        batch_size=hp.batch_size or 4,
        gradient_accumulation_steps=hp.gradient_accumulation_steps or 1,
        learning_rate=hp.learning_rate or (2e-5 if full else 2e-4),
        weight_decay=hp.weight_decay if hp.weight_decay is not None else 0.0,
        warmup_steps=hp.warmup_steps if hp.warmup_steps is not None else 0,
        lr_scheduler=hp.lr_scheduler or "linear",
        max_seq_length=max_seq_length,
        packing=bool(hp.packing),
        seed=hp.seed if hp.seed is not None else DEFAULT_SEED,
    )


def plan_steps(resolved: Resolved, config: TrainerConfig, n_rows: int, world_size: int) -> None:
    """Fill in step counts the way the HF Trainer will count them."""
    per_rank = math.ceil(n_rows / world_size)
    batches = math.ceil(per_rank / resolved.batch_size)
    resolved.steps_per_epoch = max(1, math.ceil(batches / resolved.gradient_accumulation_steps))
    resolved.total_steps = resolved.max_steps or max(
        1, math.ceil(resolved.epochs * resolved.steps_per_epoch)
    )
    hp = config.hyperparameters
    resolved.eval_steps = hp.eval_steps or min(resolved.steps_per_epoch, resolved.total_steps)
    resolved.logging_steps = hp.logging_steps or max(1, min(10, resolved.total_steps // 50))
    resolved.save_steps = config.output.checkpoint_every_steps or min(
        resolved.steps_per_epoch, resolved.total_steps
    )
    resolved.world_size = world_size
