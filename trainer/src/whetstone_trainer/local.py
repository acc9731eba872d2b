"""Run a FineTuneJob on this machine, without a cluster: the demo and the laptop workflow.

    python -m whetstone_trainer local manifests/samples/finetunejob-tiny.yaml [--output DIR]

The FineTuneJob's spec becomes a TrainerConfig exactly as the operator renders it; relative
file:// URIs resolve against the YAML file's folder. The run trains, evaluates, writes the
artifact, verifies it, and prints the ModelVersion the operator would register.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from whetstone_trainer.config import TrainerConfig
from whetstone_trainer.result import EXIT_FAILED, EXIT_INVALID_DATA, EXIT_OK, TrainerResult
from whetstone_trainer.storage import resolve_relative_file_uri


def trainer_config_from_spec(name: str, namespace: str, spec: dict[str, Any]) -> TrainerConfig:
    """The operator's own rendering: one contract, never a copy."""
    from whetstone_operator.render.trainer_config import build_trainer_config

    return build_trainer_config(name, namespace, spec)


def resolve_spec_paths(
    spec: dict[str, Any], base: Path, output: Path | None, name: str
) -> dict[str, Any]:
    """Relative file:// inputs resolve against `base`; the output goes to `output` when
    given, else stays where the spec says if that is an absolute file:// path, else to
    ./whetstone-output/<name>."""
    spec = copy.deepcopy(spec)
    base_model = spec.get("baseModel") or {}
    if "uri" in base_model:
        base_model["uri"] = resolve_relative_file_uri(base_model["uri"], base)
    dataset = spec.get("dataset") or {}
    for part in ("train", "validation", "test"):
        if isinstance(dataset.get(part), dict) and "uri" in dataset[part]:
            dataset[part]["uri"] = resolve_relative_file_uri(dataset[part]["uri"], base)
    out = spec.setdefault("output", {})
    current = str(out.get("uri", ""))
    if output is not None:
        out["uri"] = f"file://{output.resolve().as_posix()}/"
    elif not current.startswith("file:///"):
        out["uri"] = f"file://{(Path.cwd() / 'whetstone-output' / name).as_posix()}/"
    return spec


def model_version(
    job: dict[str, Any], spec: dict[str, Any], result: TrainerResult, now: datetime
) -> dict[str, Any]:
    """The ModelVersion the operator would register (the operator's own builder)."""
    from whetstone_operator.api.errors import parse_spec
    from whetstone_operator.api.finetunejob import FineTuneJobSpec
    from whetstone_operator.reconcile.finetunejob import JobObject, build_model_version

    meta = job.get("metadata") or {}
    parsed = parse_spec(FineTuneJobSpec, spec)
    if parsed.registration is None:
        return {}
    job_object = JobObject(
        name=meta.get("name", ""),
        namespace=meta.get("namespace", "default"),
        uid="local",
        generation=1,
        spec=spec,
        status={},
    )
    return build_model_version(job_object, parsed, result, (), "local", now)


def _quiet_libraries() -> None:
    """Keep the terminal to our progress bar and summary."""
    import logging
    import warnings

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import importlib

    hf_logging: Any = importlib.import_module("transformers.utils.logging")
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _fresh_if_finished(config: TrainerConfig) -> None:
    """A finished run in the output folder is replaced; an unfinished one is resumed."""
    from whetstone_trainer.storage import LocalLocation, open_location
    from whetstone_trainer.train import CHECKPOINTS, FINAL

    output = open_location(config.output.uri)
    if isinstance(output, LocalLocation) and (output.path / FINAL / "COMPLETE").is_file():
        print(f"{output.path} holds a finished run: starting over", file=sys.stderr)
        for part in (CHECKPOINTS, FINAL):
            output.child(part).delete()


def run_local(job_file: Path, output: Path | None = None, *, show_bar: bool = True) -> int:
    """Run the FineTuneJob in `job_file` here; returns the exit code."""
    from whetstone_trainer.artifact import verify
    from whetstone_trainer.data import DataError
    from whetstone_trainer.train import RunOptions, run

    # A busy machine makes many-thread torch slower, not faster, on tiny models.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    job = yaml.safe_load(job_file.read_text())
    if not isinstance(job, dict) or job.get("kind") != "FineTuneJob":
        print(f"{job_file}: not a FineTuneJob", file=sys.stderr)
        return EXIT_FAILED
    meta = job.get("metadata") or {}
    name, namespace = meta.get("name", "local"), meta.get("namespace", "default")
    spec = resolve_spec_paths(job.get("spec") or {}, job_file.resolve().parent, output, name)
    config = trainer_config_from_spec(name, namespace, spec)
    print(
        f"FineTuneJob {namespace}/{name}: {config.method.type} on {config.base_model.uri}, "
        f"output {config.output.uri}",
        file=sys.stderr,
        flush=True,
    )
    _quiet_libraries()
    _fresh_if_finished(config)
    started = time.monotonic()
    try:
        result = run(config, RunOptions(serve_progress=False, show_bar=show_bar))
    except DataError as exc:
        print(f"invalid data: {exc}", file=sys.stderr)
        print(yaml.safe_dump({"dataReport": exc.report.wire()}, sort_keys=False), file=sys.stderr)
        return EXIT_INVALID_DATA
    assert result is not None
    elapsed = time.monotonic() - started
    check = verify(result.artifact_uri, result.manifest_digest)
    report = result.data_report
    metrics = {k: v for k, v in result.metrics.items() if not isinstance(v, dict)}
    summary = {
        "elapsedSeconds": round(elapsed, 1),
        "steps": result.steps,
        "dataReport": report.wire(),
        "metrics": metrics,
        "baseline": result.metrics.get("baseline"),
        "artifact": {
            "uri": result.artifact_uri,
            "digest": result.manifest_digest,
            "verified": check.ok,
        },
    }
    print(yaml.safe_dump(summary, sort_keys=False), file=sys.stderr)
    mv = model_version(job, spec, result, datetime.now(UTC))
    if mv:
        print("# The ModelVersion the operator would register:")
        print(yaml.safe_dump(mv, sort_keys=False), end="")
    return EXIT_OK if check.ok else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="whetstone_trainer local",
        description="Run a FineTuneJob locally on CPU (file:// data, tiny:// model allowed).",
    )
    parser.add_argument("job", type=Path, help="FineTuneJob YAML file")
    parser.add_argument(
        "--output",
        type=Path,
        help="output folder (default: the spec's file:// output, or ./whetstone-output/<name>)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    ns = parser.parse_args(list(argv) if argv is not None else None)
    return run_local(ns.job, ns.output, show_bar=not ns.no_progress)


if __name__ == "__main__":
    sys.exit(main())
