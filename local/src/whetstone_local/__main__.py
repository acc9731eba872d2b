"""Run a FineTuneJob on this machine, without a cluster: the demo and the laptop workflow.

    whetstone-local manifests/samples/finetunejob-tiny.yaml [--output DIR]
    python -m whetstone_local manifests/samples/finetunejob-tiny.yaml [--output DIR]

The FineTuneJob's spec becomes a TrainerConfig exactly as the operator renders it; relative
file:// URIs resolve against the YAML file's folder. The run trains, evaluates, writes the
artifact, verifies it, and prints the ModelVersion the operator would register.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import yaml

from whetstone_contract.result import EXIT_FAILED, EXIT_INVALID_DATA, EXIT_OK
from whetstone_local.spec import model_version, resolve_spec_paths, trainer_config_from_spec


def run_local(job_file: Path, output: Path | None = None, *, show_bar: bool = True) -> int:
    """Run the FineTuneJob in `job_file` here; returns the exit code."""
    from whetstone_trainer.data import DataError
    from whetstone_trainer.interactive import run_interactive

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
    try:
        outcome = run_interactive(config, show_bar=show_bar)
    except DataError as exc:
        print(f"invalid data: {exc}", file=sys.stderr)
        print(yaml.safe_dump({"dataReport": exc.report.wire()}, sort_keys=False), file=sys.stderr)
        return EXIT_INVALID_DATA
    print(yaml.safe_dump(outcome.summary(), sort_keys=False), file=sys.stderr)
    mv = model_version(job, spec, outcome.result, datetime.now(UTC))
    if mv:
        print("# The ModelVersion the operator would register:")
        print(yaml.safe_dump(mv, sort_keys=False), end="")
    return EXIT_OK if outcome.verified else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="whetstone-local",
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
