"""SIGTERM mid-training saves a checkpoint and exits 143; the restarted trainer resumes from
the latest complete checkpoint and ends with the same weights as an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from whetstone_contract.config import TrainerConfig
from whetstone_contract.result import EXIT_PREEMPTED, TrainerResult
from whetstone_trainer.artifact import COMPLETE

from trainer_helpers import REPO_ROOT, ConfigFactory, run_trainer, subprocess_env, write_config

pytestmark = pytest.mark.trainer

# Same seed, same data order (the Trainer restores RNG, optimizer, scheduler and skips the
# batches already seen); on CPU in float32 the only difference left is none at all, but
# allow for summation-order noise.
WEIGHT_TOLERANCE = 1e-5
MAX_STEPS = 80


def _weights(result: TrainerResult) -> dict[str, Any]:
    from safetensors.torch import load_file

    final = Path(result.artifact_uri.removeprefix("file://"))
    return dict(load_file(final / "model.safetensors"))


def _config(make_config: ConfigFactory, out: Path) -> TrainerConfig:
    return make_config(
        method={"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.1}},
        hyperparameters={
            "maxSteps": MAX_STEPS,
            "evalSteps": 40,
            "batchSize": 4,
            "lrScheduler": "cosine",
        },
        evaluation={"metrics": ["loss"]},
        output={"uri": f"file://{out}/", "checkpointEverySteps": 10, "keepCheckpoints": 3},
    )


def test_sigterm_then_resume_matches_uninterrupted(
    tmp_path: Path, make_config: ConfigFactory
) -> None:
    import torch

    # Uninterrupted reference run.
    ref_config = _config(make_config, tmp_path / "reference")
    ref_log = tmp_path / "ref-termination"
    proc = run_trainer(
        ["--config", str(write_config(ref_config, tmp_path / "ref.json"))],
        env=subprocess_env(WHETSTONE_TERMINATION_LOG=str(ref_log)),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = TrainerResult.model_validate_json(ref_log.read_text())

    # Interrupted run: SIGTERM once a few steps are done.
    out = tmp_path / "interrupted"
    config = _config(make_config, out)
    config_file = write_config(config, tmp_path / "run.json")
    log = tmp_path / "termination"
    env = subprocess_env(WHETSTONE_TERMINATION_LOG=str(log))
    process = subprocess.Popen(
        [sys.executable, "-m", "whetstone_trainer", "--config", str(config_file)],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 300
    sent_at = None
    for line in process.stdout:
        if line.startswith('{"step": ') and sent_at is None:
            step = json.loads(line)["step"]
            if step >= 12:
                process.send_signal(signal.SIGTERM)
                sent_at = step
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the trainer did not reach step 12 in time")
    code = process.wait(timeout=120)
    assert sent_at is not None
    assert code == EXIT_PREEMPTED
    failure = json.loads(log.read_text())
    assert failure["reason"] == "Preempted"
    stopped = failure["step"]
    assert sent_at <= stopped < MAX_STEPS, (sent_at, stopped)
    assert (out / "checkpoints" / f"checkpoint-{stopped}" / COMPLETE).is_file()
    assert failure["checkpointUri"].endswith(f"checkpoints/checkpoint-{stopped}")
    assert not (out / "final").exists()

    # A half-written later checkpoint (no COMPLETE) must be ignored.
    partial = out / "checkpoints" / f"checkpoint-{stopped + 5}"
    partial.mkdir()
    (partial / "adapter_model.safetensors").write_bytes(b"partial")

    proc = run_trainer(["--config", str(config_file)], env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = TrainerResult.model_validate_json(log.read_text())
    assert resumed.steps == MAX_STEPS
    first_logged = json.loads(
        next(line for line in proc.stdout.splitlines() if line.startswith('{"step": '))
    )["step"]
    assert first_logged > stopped, "the restart began from scratch instead of resuming"

    a, b = _weights(reference), _weights(resumed)
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(
        f"resume: SIGTERM at step {sent_at}, checkpoint at {stopped}, "
        f"max |w_resumed - w_uninterrupted| = {worst:.3g}"
    )
    assert worst <= WEIGHT_TOLERANCE
    assert torch.is_tensor(next(iter(a.values())))
