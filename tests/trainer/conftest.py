"""Fixtures of the trainer tier: the seed data, one tiny model per session, configs, subprocesses.

Training runs on CPU with one thread per process: on a busy 2-core machine more threads
make tiny-model training slower, not faster.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault(
    "TORCH_EXTENSIONS_DIR",
    str(Path("~/.cache/whetstone/torch_extensions").expanduser()),
)

from typing import Any

import pytest

pytest.importorskip("torch", reason="the trainer tier needs the trainer extras (torch)")

from whetstone_contract.config import TrainerConfig

from trainer_helpers import SEED_DATA, ConfigFactory, free_port


@pytest.fixture(scope="session")
def seed_data() -> Path:
    assert SEED_DATA.is_file(), "run python hack/make_tiny_dataset.py"
    return SEED_DATA


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, seed_data: Path) -> Path:
    """One tiny Llama for the session, built from the redacted seed data."""
    from whetstone_contract.config import DatasetSpec
    from whetstone_trainer.data import prepare_text
    from whetstone_trainer.model import build_tiny_model

    spec = DatasetSpec.model_validate(
        {
            "train": {"uri": f"file://{seed_data}"},
            "validationSplit": 0.1,
            "redact": ["email", "phone", "secret"],
        }
    )
    splits = prepare_text(spec, lambda uri: Path(uri.removeprefix("file://")).read_bytes(), 42)
    return build_tiny_model(splits.texts(), tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture
def make_config(tmp_path: Path, tiny_model_dir: Path, seed_data: Path) -> ConfigFactory:
    """A TrainerConfig for a short LoRA run on the seed data; keyword overrides are merged
    into the wire form (camelCase), nested dicts included."""

    def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
        return out

    def factory(**overrides: Any) -> TrainerConfig:
        base: dict[str, Any] = {
            "jobName": "tiny-test",
            "namespace": "default",
            "baseModel": {"uri": f"file://{tiny_model_dir}"},
            "dataset": {
                "train": {"uri": f"file://{seed_data}"},
                "validationSplit": 0.1,
                "redact": ["email", "phone", "secret"],
            },
            "method": {"type": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.0}},
            "hyperparameters": {
                "maxSteps": 60,
                "batchSize": 8,
                "learningRate": 3e-3,
                "warmupSteps": 2,
                "lrScheduler": "constant_with_warmup",
                "maxSeqLength": 256,
                "seed": 42,
                "evalSteps": 20,
                "loggingSteps": 5,
            },
            "evaluation": {
                "metrics": ["loss", "perplexity", "exactMatch", "rougeL"],
                "maxNewTokens": 16,
                "maxExamples": 8,
            },
            "output": {"uri": f"file://{tmp_path}/out/", "checkpointEverySteps": 20},
            "progressPort": free_port(),
        }
        return TrainerConfig.model_validate(merge(base, overrides))

    return factory
