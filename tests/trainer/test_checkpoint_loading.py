"""Resuming runs no code from the output location: DeepSpeed's checkpoint reads, which pass
weights_only=False, are forced to weights only; its real optimizer states still load (a
ZeRO-2 run resumes), and a checkpoint file that names a callable stops the run unexecuted."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from whetstone_contract.config import TrainerConfig
from whetstone_contract.result import EXIT_FAILED, TrainerResult
from whetstone_trainer.checkpoints import data_only_loads

from trainer_helpers import ConfigFactory, run_trainer, subprocess_env, write_config

pytestmark = pytest.mark.trainer


class _Payload:
    """Unpickling this writes a file: what a tampered checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def _tampered(path: Path, marker: Path) -> Path:
    import torch

    torch.save({"optimizer_state_dict": {"loss_scaler": _Payload(marker)}}, path)
    return path


def test_deepspeed_checkpoint_reads_run_no_code(tmp_path: Path) -> None:
    import torch
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    engine = TorchCheckpointEngine()
    marker = tmp_path / "marker"
    evil = _tampered(tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt", marker)
    # The payload is real: DeepSpeed's own read runs it.
    engine.load(str(evil))
    assert marker.read_text() == "ran"
    marker.unlink()

    with data_only_loads(deepspeed=True), pytest.raises(pickle.UnpicklingError):
        engine.load(str(evil))
    assert not marker.exists()

    # What DeepSpeed's optimizer states hold still loads, with its classes allowed.
    state = {
        "optimizer_state_dict": {
            "loss_scaler": LossScaler(scale=1.0),
            "zero_stage": ZeroStageEnum.gradients,
            "param_slice_mappings": [{"w": fragment_address(numel=4, start=0)}],
            "base_optimizer_state": {"step": torch.tensor(3.0)},
        },
        "ds_version": "0.19.8",
    }
    path = tmp_path / "real_optim_states.pt"
    torch.save(state, path)
    with data_only_loads(deepspeed=True):
        loaded = engine.load(str(path))
    optimizer = loaded["optimizer_state_dict"]
    assert isinstance(optimizer["loss_scaler"], LossScaler)
    assert optimizer["loss_scaler"].cur_scale == 1.0
    assert optimizer["zero_stage"] is ZeroStageEnum.gradients
    assert optimizer["param_slice_mappings"][0]["w"].numel == 4
    # Only those classes: without them the same file is refused.
    with data_only_loads(deepspeed=False), pytest.raises(pickle.UnpicklingError):
        engine.load(str(path))


def test_the_setting_is_undone_afterwards(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with data_only_loads(deepspeed=False):
        assert os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] == "1"
        assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"


def _zero2(make_config: ConfigFactory, out: Path, steps: int) -> TrainerConfig:
    return make_config(
        method={"type": "full", "lora": None},
        hyperparameters={"maxSteps": steps, "learningRate": 1e-3, "evalSteps": 10},
        evaluation={"metrics": ["loss"]},
        deepspeed={"zeroStage": 2},
        output={"uri": f"file://{out}/", "checkpointEverySteps": 10},
    )


def test_zero2_resumes_and_a_tampered_checkpoint_stops_the_run(
    tmp_path: Path, make_config: ConfigFactory
) -> None:
    out = tmp_path / "out"
    log = tmp_path / "termination"
    env = subprocess_env(WHETSTONE_TERMINATION_LOG=str(log))

    def train(steps: int) -> Any:
        config = write_config(_zero2(make_config, out, steps), tmp_path / f"c{steps}.json")
        return run_trainer(["--config", str(config)], env=env, timeout=900)

    first = train(10)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-4000:]
    checkpoint = out / "checkpoints" / "checkpoint-10"
    shards = list(checkpoint.glob("global_step10/*_optim_states.pt"))
    assert shards, sorted(p.name for p in checkpoint.rglob("*"))

    # The longer run resumes from step 10: DeepSpeed's states load under weights_only.
    resumed = train(20)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-4000:]
    assert TrainerResult.model_validate_json(log.read_text()).steps == 20
    first_logged = json.loads(
        next(line for line in resumed.stdout.splitlines() if line.startswith('{"step": '))
    )["step"]
    assert first_logged > 10, "the run started over instead of resuming"

    # Someone with write access to the output swaps an optimizer shard of the newest one.
    newest = max(
        (p for p in (out / "checkpoints").glob("checkpoint-*")), key=lambda p: int(p.name[11:])
    )
    marker = tmp_path / "marker"
    for shard in newest.glob("global_step*/*_optim_states.pt"):
        _tampered(shard, marker)
    stopped = train(30)
    assert stopped.returncode == EXIT_FAILED, stopped.stdout[-2000:] + stopped.stderr[-4000:]
    assert not marker.exists(), "code from the checkpoint ran"
    failure = json.loads(log.read_text())
    assert failure["reason"] == "Failed"
    assert "UnpicklingError" in failure["message"], failure["message"]
