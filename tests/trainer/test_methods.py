"""QLoRA, full fine-tuning with DeepSpeed ZeRO-2, and a 2-process torchrun run each train;
the DeepSpeed config is generated and checked; a missing bitsandbytes is a clear error."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from whetstone_contract.config import DeepSpeedSettings, MethodSpec
from whetstone_contract.result import TrainerResult
from whetstone_trainer.artifact import verify
from whetstone_trainer.deepspeed_config import (
    DeepSpeedConfigError,
    build_deepspeed_config,
    check_deepspeed_config,
)
from whetstone_trainer.model import ModelError, has_bitsandbytes, prepare_trainable
from whetstone_trainer.train import RunOptions, run

from trainer_helpers import (
    ConfigFactory,
    free_port,
    last_json_line,
    run_trainer,
    subprocess_env,
    write_config,
)

pytestmark = pytest.mark.trainer


def _falls(result: TrainerResult, factor: float = 0.8) -> tuple[float, float]:
    initial, final = result.metrics["initialTrainLoss"], result.metrics["trainLoss"]
    assert isinstance(initial, float) and isinstance(final, float)
    assert final < factor * initial, (initial, final)
    return initial, final


def _bitsandbytes_cpu_ok() -> str | None:
    """None when 4-bit layers run on this CPU, else why not."""
    if not has_bitsandbytes():
        return "bitsandbytes is not installed"
    try:
        import bitsandbytes as bnb
        import torch

        layer = bnb.nn.Linear4bit(16, 16, quant_type="nf4", compute_dtype=torch.float32)
        layer = layer.to("cpu")
        layer(torch.randn(2, 16))
    except Exception as exc:  # the reason is the point of the skip message
        return f"bitsandbytes 4-bit layers fail on this CPU: {type(exc).__name__}: {exc}"
    return None


def test_qlora_trains(tmp_path: Path, make_config: ConfigFactory) -> None:
    reason = _bitsandbytes_cpu_ok()
    if reason is not None:
        pytest.skip(reason)
    config = make_config(
        method={"type": "qlora"},
        hyperparameters={"maxSteps": 60, "evalSteps": 30},
        output={"checkpointEverySteps": 30, "artifactFormat": "adapter"},
    )
    result = run(
        config, RunOptions(serve_progress=False, install_sigterm=False, work_dir=tmp_path / "work")
    )
    assert result is not None
    initial, final = _falls(result)
    assert verify(result.artifact_uri, result.manifest_digest).ok
    print(f"QLoRA: loss {initial:.2f} -> {final:.2f} in {result.steps} steps")


def test_qlora_without_bitsandbytes_is_a_clear_error(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import whetstone_trainer.model as model_module

    monkeypatch.setattr(model_module, "has_bitsandbytes", lambda: False)
    with pytest.raises(ModelError, match="qlora needs the bitsandbytes package"):
        prepare_trainable(tiny_model_dir, MethodSpec(type="qlora"))


def test_full_fine_tune_with_deepspeed_zero2(tmp_path: Path, make_config: ConfigFactory) -> None:
    config = make_config(
        method={"type": "full", "lora": None},
        hyperparameters={"maxSteps": 40, "learningRate": 1e-3, "evalSteps": 20},
        deepspeed={"zeroStage": 2},
        output={"checkpointEverySteps": 20},
    )
    termination = tmp_path / "termination-log"
    # A fresh process: DeepSpeed sets up a process group (single-process, loopback).
    proc = run_trainer(
        ["--config", str(write_config(config, tmp_path / "config.json"))],
        env=subprocess_env(WHETSTONE_TERMINATION_LOG=str(termination)),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = TrainerResult.model_validate_json(termination.read_text())
    initial, final = _falls(result)
    assert result.artifact_format == "merged"
    assert verify(result.artifact_uri, result.manifest_digest).ok
    checkpoint = sorted((tmp_path / "out" / "checkpoints").glob("checkpoint-*"))[-1]
    assert any(p.name.startswith("global_step") for p in checkpoint.iterdir()), (
        "a DeepSpeed checkpoint holds its ZeRO shards"
    )
    print(f"full + ZeRO-2: loss {initial:.2f} -> {final:.2f} in {result.steps} steps")


def test_lora_with_deepspeed_zero3_bf16(tmp_path: Path, make_config: ConfigFactory) -> None:
    config = make_config(
        hyperparameters={"maxSteps": 30, "evalSteps": 15},
        deepspeed={"zeroStage": 3, "bf16": True},
        output={"checkpointEverySteps": 15},
    )
    termination = tmp_path / "termination-log"
    proc = run_trainer(
        ["--config", str(write_config(config, tmp_path / "config.json"))],
        env=subprocess_env(WHETSTONE_TERMINATION_LOG=str(termination)),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = TrainerResult.model_validate_json(termination.read_text())
    initial, final = _falls(result)
    # Sharded parameters were gathered for the save: the merged artifact is whole.
    assert verify(result.artifact_uri, result.manifest_digest).ok
    print(f"LoRA + ZeRO-3 bf16: loss {initial:.2f} -> {final:.2f} in {result.steps} steps")


def test_two_process_torchrun(tmp_path: Path, make_config: ConfigFactory) -> None:
    config = make_config(
        hyperparameters={"maxSteps": 30, "evalSteps": 15, "batchSize": 4},
        output={"checkpointEverySteps": 15},
    )
    config_file = write_config(config, tmp_path / "config.json")
    termination = tmp_path / "termination-log"
    proc = run_trainer(
        [
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            "-m",
            "whetstone_trainer",
            "--config",
            str(config_file),
        ],
        module="torch.distributed.run",
        env=subprocess_env(WHETSTONE_TERMINATION_LOG=str(termination)),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = TrainerResult.model_validate_json(termination.read_text())
    assert result.hyperparameters["worldSize"] == 2
    assert result.steps == 30
    _falls(result)
    assert verify(result.artifact_uri, result.manifest_digest).ok
    assert last_json_line(proc.stdout)["manifestDigest"] == result.manifest_digest


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_generated_deepspeed_configs_parse(stage: int) -> None:
    settings = DeepSpeedSettings(
        zero_stage=stage, bf16=stage == 3, offload_optimizer="cpu" if stage else "none"
    )
    config = build_deepspeed_config(settings)
    check_deepspeed_config(config, micro_batch=4, grad_accum=2, world_size=8, hidden_size=64)
    assert config["zero_optimization"]["stage"] == stage
    assert config["bf16"] == {"enabled": stage == 3}
    if stage:
        assert config["optimizer"]["type"] == "AdamW"  # offload needs DeepSpeed's CPU Adam


def test_deepspeed_config_check_rejects_what_deepspeed_would_ignore() -> None:
    config = build_deepspeed_config(DeepSpeedSettings(zero_stage=2))
    config["zero_optimisation"] = {"stage": 3}  # misspelt: DeepSpeed alone ignores it
    with pytest.raises(DeepSpeedConfigError, match="zero_optimisation"):
        check_deepspeed_config(config, micro_batch=1, grad_accum=1, world_size=1)
    broken = build_deepspeed_config(DeepSpeedSettings(zero_stage=2))
    broken["zero_optimization"]["stage"] = 7
    with pytest.raises(DeepSpeedConfigError, match="DeepSpeed rejected"):
        check_deepspeed_config(broken, micro_batch=1, grad_accum=1, world_size=1)
    json.dumps(build_deepspeed_config(DeepSpeedSettings()))  # serialisable as is
    assert sys.modules.get("whetstone_contract.config") is not None
