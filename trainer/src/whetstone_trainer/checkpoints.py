"""Checkpoints at the output: which are complete, which one a restarted run resumes from,
publishing a newly saved one (uploaded when the output is remote, its COMPLETE marker last), and
loading one without running code from it."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from whetstone_contract.result import CheckpointInfo
from whetstone_trainer.artifact import COMPLETE
from whetstone_trainer.distributed import Dist, world_barrier
from whetstone_trainer.storage import LocalLocation, Location

CHECKPOINTS = "checkpoints"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")

# torch reads this at every torch.load: weights_only=True whatever the caller passed.
_FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
_FORCE_PICKLE = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


def _deepspeed_state_types() -> list[Any]:
    """The classes DeepSpeed pickles into its optimizer states (*_optim_states.pt), beyond
    tensors and containers. Allowed, they are built from data: none of their code is named
    by the file, and no other callable may be."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


@contextmanager
def data_only_loads(*, deepspeed: bool) -> Iterator[None]:
    """While active, every torch.load in this process reads data only, never code.

    A resumed run reads its checkpoint from the output location, which others may be able to
    write. What reads it there:
    - the weights (model.safetensors, adapter_model.safetensors): safetensors, no pickle;
    - the HF Trainer (transformers 5.23, trainer.py `_load_optimizer_and_scheduler`,
      `_load_rng_state`, `_load_scaler`): optimizer.pt, scheduler.pt, scaler.pt and
      rng_state*.pth with torch.load(weights_only=True) already;
    - DeepSpeed (0.19.8): mp_rank_*_model_states.pt and *_optim_states.pt through
      `TorchCheckpointEngine.load` (runtime/checkpoint_engine/torch_checkpoint_engine.py),
      which passes weights_only=False, as do ZeRO-3's universal-checkpoint loads
      (runtime/zero/stage3.py, `load_hp_checkpoint_state*`; not used here). Those would
      unpickle anything; here they are forced to weights_only=True, with the few DeepSpeed
      classes their states hold allowed.
    A pickle that names any other callable fails to load (UnpicklingError): the run stops
    rather than resume from it. training_args.bin is pickled too but never loaded. (File
    digests kept beside the checkpoint would add nothing here: whoever can replace a file
    there can replace its digest too.)
    """
    import torch

    saved = {name: os.environ.get(name) for name in (_FORCE_WEIGHTS_ONLY, _FORCE_PICKLE)}
    os.environ[_FORCE_WEIGHTS_ONLY] = "1"
    os.environ.pop(_FORCE_PICKLE, None)
    try:
        with torch.serialization.safe_globals(_deepspeed_state_types() if deepspeed else []):
            yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _marker_step(marker: Location) -> int | None:
    """The step a checkpoint's COMPLETE marker names; None when it is absent or torn."""
    if not marker.exists():
        return None
    try:
        return int(json.loads(marker.read_text())["step"])
    except (ValueError, KeyError, TypeError):
        return None


def complete_checkpoints(location: Location) -> list[int]:
    """Steps of the checkpoints under `location` whose COMPLETE marker names their own step,
    ascending (an empty or torn marker, left by a crash while it was written, does not count)."""
    steps = []
    for name in location.list_children():
        match = _CHECKPOINT_NAME.match(name)
        if match and _marker_step(location.child(name, COMPLETE)) == int(match.group(1)):
            steps.append(int(match.group(1)))
    return sorted(steps)


class CheckpointStore:
    """The run's checkpoints under `output`/checkpoints, and those published so far (rank 0)."""

    def __init__(self, output: Location, dist: Dist, keep: int) -> None:
        self.output = output
        self.remote = output.child(CHECKPOINTS)
        self.dist = dist
        self.keep = keep
        self.published: list[CheckpointInfo] = []

    def local_dir(self, work: Path) -> Path:
        """Where the HF Trainer saves checkpoints: the output itself when it is local."""
        if isinstance(self.output, LocalLocation):
            return self.output.path / CHECKPOINTS
        return work / CHECKPOINTS

    def load_published(self) -> list[CheckpointInfo]:
        """The complete checkpoints already at the output (a restarted run's)."""
        self.published = [
            CheckpointInfo(step=s, uri=self.remote.child(f"checkpoint-{s}").uri)
            for s in complete_checkpoints(self.remote)
        ]
        return self.published

    def find_resume(self, local_dir: Path, work: Path) -> Path | None:
        """The newest complete checkpoint as a local folder (downloaded when remote)."""
        steps = complete_checkpoints(self.remote)
        if isinstance(self.output, LocalLocation):
            # Leftovers of an interrupted save must not be mistaken for checkpoints.
            leftovers = local_dir.glob("checkpoint-*") if local_dir.is_dir() else []
            for path in leftovers if self.dist.is_main else []:
                match = _CHECKPOINT_NAME.match(path.name)
                if match and int(match.group(1)) not in steps:
                    shutil.rmtree(path, ignore_errors=True)
            return local_dir / f"checkpoint-{steps[-1]}" if steps else None
        if not steps:
            return None
        target = work / "resume" / f"checkpoint-{steps[-1]}"
        if target.exists():
            shutil.rmtree(target)
        self.remote.child(f"checkpoint-{steps[-1]}").download_dir(target)
        (target / COMPLETE).unlink(missing_ok=True)
        return target

    def publish(self, local: Path, step: int, eval_loss: float | None) -> None:
        """Mark a saved checkpoint complete (uploading it first when the output is remote)."""
        marker = json.dumps({"step": step, "evalLoss": eval_loss}) + "\n"
        if isinstance(self.output, LocalLocation):
            world_barrier()
            if self.dist.is_main:
                # Written whole or not at all (temp file + rename).
                self.remote.child(local.name, COMPLETE).write_text(marker)
        else:
            remote = self.remote.child(local.name)
            if self.dist.local_rank == 0 and local.is_dir():
                remote.upload_dir(local)
            world_barrier()
            if self.dist.is_main:
                remote.child(COMPLETE).write_text(marker)
                for old in complete_checkpoints(self.remote)[: -self.keep]:
                    self.remote.child(f"checkpoint-{old}").delete()
        if self.dist.is_main:
            uri = self.remote.child(local.name).uri
            kept = [c for c in self.published if c.step != step]
            kept.append(CheckpointInfo(step=step, uri=uri, eval_loss=eval_loss))
            self.published = kept[-self.keep :]
