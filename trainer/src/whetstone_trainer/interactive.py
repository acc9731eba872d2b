"""The trainer run by a person at a terminal rather than in a pod: quiet libraries, a progress
bar instead of the progress server, a finished output started over, the artifact verified and
a summary to read."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any

from whetstone_contract.config import TrainerConfig
from whetstone_contract.result import TrainerResult
from whetstone_trainer.artifact import COMPLETE, verify
from whetstone_trainer.checkpoints import CHECKPOINTS
from whetstone_trainer.publish import FINAL
from whetstone_trainer.storage import LocalLocation, open_location
from whetstone_trainer.train import RunOptions, run


@dataclass(frozen=True)
class Outcome:
    """A finished run, timed, with its artifact verified."""

    result: TrainerResult
    elapsed_seconds: float
    verified: bool

    def summary(self) -> dict[str, Any]:
        result = self.result
        return {
            "elapsedSeconds": round(self.elapsed_seconds, 1),
            "steps": result.steps,
            "dataReport": result.data_report.wire(),
            "metrics": {k: v for k, v in result.metrics.items() if not isinstance(v, dict)},
            "baseline": result.metrics.get("baseline"),
            "artifact": {
                "uri": result.artifact_uri,
                "digest": result.manifest_digest,
                "verified": self.verified,
            },
        }


def quiet_libraries() -> None:
    """Keep the terminal to our progress bar and summary."""
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    hf_logging: Any = importlib.import_module("transformers.utils.logging")
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def start_over_if_finished(config: TrainerConfig) -> None:
    """A finished run in the output folder is replaced; an unfinished one is resumed."""
    output = open_location(config.output.uri)
    if isinstance(output, LocalLocation) and (output.path / FINAL / COMPLETE).is_file():
        print(f"{output.path} holds a finished run: starting over", file=sys.stderr)
        for part in (CHECKPOINTS, FINAL):
            output.child(part).delete()


def run_interactive(config: TrainerConfig, *, show_bar: bool = True) -> Outcome:
    """Train, evaluate and publish here; raises DataError on bad data."""
    quiet_libraries()
    start_over_if_finished(config)
    started = time.monotonic()
    result = run(config, RunOptions(serve_progress=False, show_bar=show_bar))
    assert result is not None
    elapsed = time.monotonic() - started
    check = verify(result.artifact_uri, result.manifest_digest)
    return Outcome(result, elapsed, check.ok)
