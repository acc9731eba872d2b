"""The trainer on a real GPU: LoRA with DeepSpeed ZeRO-2 in bf16, and a full fine-tune, on
CUDA. Skipped where no CUDA device exists (the trainer tier covers the same paths on CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from whetstone_contract.result import TrainerResult
from whetstone_trainer.artifact import verify

from trainer_helpers import ConfigFactory, run_trainer, subprocess_env, write_config

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]


def _run(
    tmp_path: Path, config_kwargs: dict[str, object], make_config: ConfigFactory
) -> TrainerResult:
    config = make_config(**config_kwargs)
    termination = tmp_path / "termination-log"
    proc = run_trainer(
        ["--config", str(write_config(config, tmp_path / "config.json"))],
        env=subprocess_env(
            WHETSTONE_TERMINATION_LOG=str(termination), DS_ACCELERATOR="cuda", OMP_NUM_THREADS="4"
        ),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return TrainerResult.model_validate_json(termination.read_text())


def test_lora_zero2_bf16_on_gpu(tmp_path: Path, make_config: ConfigFactory) -> None:
    result = _run(
        tmp_path,
        {
            "hyperparameters": {"maxSteps": 60, "evalSteps": 30, "batchSize": 8},
            "deepspeed": {"zeroStage": 2, "bf16": True},
            "output": {"checkpointEverySteps": 30},
        },
        make_config,
    )
    initial, final = result.metrics["initialTrainLoss"], result.metrics["trainLoss"]
    assert isinstance(initial, float) and isinstance(final, float) and final < 0.8 * initial
    assert str(result.hyperparameters["device"]).startswith("cuda:")
    assert verify(result.artifact_uri, result.manifest_digest).ok
    print(
        json.dumps(
            {
                "gpu": torch.cuda.get_device_name(0),
                "loss": [initial, final],
                "steps": result.steps,
                "metrics": result.metrics,
            }
        )
    )


def test_full_finetune_on_gpu(tmp_path: Path, make_config: ConfigFactory) -> None:
    result = _run(
        tmp_path,
        {
            "method": {"type": "full", "lora": None},
            "hyperparameters": {"maxSteps": 40, "learningRate": 1e-3, "evalSteps": 20},
        },
        make_config,
    )
    initial, final = result.metrics["initialTrainLoss"], result.metrics["trainLoss"]
    assert isinstance(initial, float) and isinstance(final, float) and final < 0.8 * initial
    assert verify(result.artifact_uri, result.manifest_digest).ok
