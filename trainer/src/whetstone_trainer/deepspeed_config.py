"""The DeepSpeed config: generated from DeepSpeedSettings and checked by DeepSpeed's own parser
before any process group exists."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from whetstone_contract.config import DeepSpeedSettings
from whetstone_trainer.distributed import single_process_rendezvous
from whetstone_trainer.hyperparams import Resolved

# Top-level keys DeepSpeed understands; its parser silently ignores anything else.
DEEPSPEED_TOP_LEVEL_KEYS = frozenset(
    {
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
        "optimizer",
        "scheduler",
        "zero_optimization",
        "bf16",
        "fp16",
        "steps_per_print",
        "wall_clock_breakdown",
        "zero_allow_untested_optimizer",
        "zero_force_ds_cpu_optimizer",
        "communication_data_type",
        "prescale_gradients",
        "gradient_predivide_factor",
        "activation_checkpointing",
        "flops_profiler",
        "tensorboard",
        "wandb",
        "csv_monitor",
        "comms_logger",
        "checkpoint",
        "data_types",
        "memory_breakdown",
        "dump_state",
        "torch_autocast",
        "aio",
        "elasticity",
    }
)


class DeepSpeedConfigError(ValueError):
    """The generated DeepSpeed configuration does not parse."""


def build_deepspeed_config(settings: DeepSpeedSettings) -> dict[str, Any]:
    """The DeepSpeed config for HF's integration ("auto" values are filled from the
    TrainingArguments, so batch sizes and learning rates have one source)."""
    zero: dict[str, Any] = {"stage": settings.zero_stage}
    if settings.zero_stage >= 1:
        zero["offload_optimizer"] = {"device": settings.offload_optimizer}
    if settings.zero_stage >= 2:
        zero.update(
            {"overlap_comm": False, "contiguous_gradients": True, "reduce_bucket_size": "auto"}
        )
    if settings.zero_stage == 3:
        zero.update(
            {
                "offload_param": {"device": settings.offload_param},
                "stage3_gather_16bit_weights_on_model_save": True,
                "stage3_prefetch_bucket_size": "auto",
                "stage3_param_persistence_threshold": "auto",
            }
        )
    config: dict[str, Any] = {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": zero,
        "bf16": {"enabled": settings.bf16},
        "fp16": {"enabled": settings.fp16},
        "steps_per_print": 1_000_000,
        "wall_clock_breakdown": False,
    }
    if settings.offload_optimizer != "none" or settings.offload_param != "none":
        # Offloaded optimizer state needs DeepSpeed's own (CPU) Adam.
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": "auto", "weight_decay": "auto", "betas": "auto", "eps": "auto"},
        }
    return config


def _fill_auto(node: Any, concrete: dict[str, Any], key: str | None = None) -> Any:
    """`node` with every "auto" replaced by the concrete value of its key."""
    if isinstance(node, dict):
        return {k: _fill_auto(v, concrete, k) for k, v in node.items()}
    if node == "auto":
        return concrete[key or ""]
    return node


def check_deepspeed_config(
    config: dict[str, Any],
    *,
    micro_batch: int,
    grad_accum: int,
    world_size: int,
    hidden_size: int = 1024,
) -> None:
    """Reject unknown top-level keys, then run DeepSpeed's own parser on the config with the
    "auto" values filled in as HF would."""
    unknown = sorted(set(config) - DEEPSPEED_TOP_LEVEL_KEYS)
    if unknown:
        raise DeepSpeedConfigError(
            f"unknown DeepSpeed top-level key(s) {unknown}: DeepSpeed would ignore them silently"
        )
    concrete = {
        "train_batch_size": micro_batch * grad_accum * world_size,
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": 1.0,
        "reduce_bucket_size": hidden_size * hidden_size,
        "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "stage3_param_persistence_threshold": 10 * hidden_size,
        "lr": 1e-4,
        "weight_decay": 0.0,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
    }

    try:
        from deepspeed.runtime.config import DeepSpeedConfig
    except ImportError as exc:
        raise DeepSpeedConfigError(
            "resources.deepspeed is set but deepspeed is not installed in this trainer image"
        ) from exc
    filled = _fill_auto(config, concrete)
    # DeepSpeed derives the global batch from its own view of the world size (1 before the
    # process group exists): let it, rather than fail on a number it cannot see yet.
    filled.pop("train_batch_size", None)
    try:
        DeepSpeedConfig(filled)
    except Exception as exc:
        raise DeepSpeedConfigError(f"DeepSpeed rejected the generated config: {exc}") from exc


def deepspeed_arguments(
    settings: DeepSpeedSettings, resolved: Resolved, model_dir: Path | None, world_size: int
) -> dict[str, Any]:
    """The TrainingArguments fields that turn DeepSpeed on; the config is checked first."""
    os.environ.setdefault(
        "TORCH_EXTENSIONS_DIR",
        str(Path.home() / ".cache" / "whetstone" / "torch_extensions"),
    )
    if "WORLD_SIZE" not in os.environ:
        single_process_rendezvous()
    config = build_deepspeed_config(settings)
    hidden = 1024
    config_path = model_dir / "config.json" if model_dir else None
    if config_path and config_path.is_file():
        hidden = int(json.loads(config_path.read_text()).get("hidden_size", hidden))
    check_deepspeed_config(
        config,
        micro_batch=resolved.batch_size,
        grad_accum=resolved.gradient_accumulation_steps,
        world_size=world_size,
        hidden_size=hidden,
    )
    return {"deepspeed": config, "bf16": settings.bf16, "fp16": settings.fp16}
