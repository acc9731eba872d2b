"""The demo: `python -m whetstone_local FINETUNEJOB.yaml` runs a FineTuneJob on CPU and prints
the ModelVersion it would register."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import yaml

from whetstone_local.spec import resolve_spec_paths, trainer_config_from_spec
from whetstone_trainer.artifact import verify

from trainer_helpers import TINY_SAMPLE, run_trainer

pytestmark = pytest.mark.trainer

DEMO_BUDGET_SECONDS = 300  # "a few minutes on CPU"


def _model_version(stdout: str) -> dict[str, object]:
    documents = [d for d in yaml.safe_load_all(stdout) if isinstance(d, dict)]
    assert documents, stdout[-2000:]
    return documents[-1]


def test_the_sample_runs_locally(tmp_path: Path) -> None:
    assert TINY_SAMPLE.is_file()
    started = time.monotonic()
    proc = run_trainer(
        [str(TINY_SAMPLE), "--output", str(tmp_path / "out")],
        timeout=DEMO_BUDGET_SECONDS + 60,
        module="whetstone_local",
    )
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert seconds < DEMO_BUDGET_SECONDS
    assert "training: 100%" in proc.stderr or "training:" in proc.stderr  # the progress bar
    mv = _model_version(proc.stdout)
    assert mv["kind"] == "ModelVersion"
    spec = mv["spec"]
    assert isinstance(spec, dict)
    artifact = spec["artifact"]
    assert artifact["uri"] == f"file://{tmp_path}/out/final/"
    assert verify(artifact["uri"], artifact["digest"]).ok
    assert spec["source"]["datasetDigest"].startswith("sha256:")
    assert spec["metrics"]["evalLoss"] < spec["metrics"]["baseline"]["evalLoss"]
    print(
        f"demo: {seconds:.1f} s, evalLoss {spec['metrics']['evalLoss']:.3f} "
        f"(base {spec['metrics']['baseline']['evalLoss']:.3f})"
    )


def test_relative_paths_resolve_against_the_yaml(tmp_path: Path, seed_data: Path) -> None:
    folder = tmp_path / "project"
    (folder / "data").mkdir(parents=True)
    shutil.copy(seed_data, folder / "data" / "chat.jsonl")
    job = {
        "apiVersion": "whetstone.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "rel", "namespace": "team"},
        "spec": {
            "baseModel": {"uri": "tiny://llama"},
            "dataset": {
                "train": {"uri": "file://data/chat.jsonl"},
                "validationSplit": 0.1,
                "secretRef": {"name": "ignored"},
            },
            "method": {"type": "lora"},
            "hyperparameters": {"maxSteps": 5, "batchSize": 8, "maxSeqLength": 256},
            "evaluation": {"metrics": ["loss"]},
            "output": {"uri": "s3://would-need-credentials/"},
        },
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    spec = resolve_spec_paths(dict(job["spec"]), folder, None, "rel")
    config = trainer_config_from_spec("rel", "team", spec)
    assert config.dataset.train.uri == f"file://{folder}/data/chat.jsonl"
    assert config.output.uri == f"file://{Path.cwd()}/whetstone-output/rel/"
    out = tmp_path / "out"
    proc = run_trainer([str(path), "--output", str(out), "--no-progress"], module="whetstone_local")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "final" / "COMPLETE").is_file()
    # No registration in the spec: nothing to register, nothing printed as a ModelVersion.
    assert "kind: ModelVersion" not in proc.stdout
