"""Command line of the trainer.

    python -m whetstone_trainer --config FILE [--validate-only]   what the pods run
    python -m whetstone_trainer verify URI [--digest sha256:...]  recompute an artifact's digests

Exit codes: 0 success, 1 failure, 3 invalid data, 143 preempted (checkpoint saved).
The termination message (TrainerResult, or TrainerFailure on error) is also printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import yaml
from pydantic import ValidationError

from whetstone_contract.config import RedactionKind, TrainerConfig
from whetstone_contract.result import (
    EXIT_FAILED,
    EXIT_INVALID_DATA,
    EXIT_OK,
    EXIT_PREEMPTED,
    EXIT_VERIFY_FAILED,
    TERMINATION_MESSAGE_LIMIT,
    DataReport,
    TrainerFailure,
)


def load_config(path: Path) -> TrainerConfig:
    """A TrainerConfig from a YAML or JSON file (the ConfigMap's content)."""
    data = yaml.safe_load(path.read_text())
    return TrainerConfig.model_validate(data)


def _fail(
    reason: str,
    message: str,
    code: int,
    report: DataReport | None = None,
    *,
    step: int | None = None,
    checkpoint_uri: str | None = None,
    redact: Sequence[RedactionKind] = (),
) -> int:
    from whetstone_trainer.progress import write_termination_message
    from whetstone_trainer.redact import redact_text

    # An error's text may quote the data: redacted before it is cut short, never after.
    failure = TrainerFailure(
        reason=reason,
        message=redact_text(message, redact, Counter())[:2048],
        data_report=report,
        step=step,
        checkpoint_uri=checkpoint_uri,
    )
    text = failure.termination_message()
    write_termination_message(text)
    print(text, flush=True)
    return code


def run_config(path: Path, *, validate_only: bool = False) -> int:
    """The pod entry point: returns the exit code."""
    try:
        config = load_config(path)
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        return _fail("Failed", f"bad trainer config {path}: {exc}", EXIT_FAILED)

    from whetstone_trainer.data import DataError
    from whetstone_trainer.progress import write_termination_message
    from whetstone_trainer.train import PreemptedError, run
    from whetstone_trainer.train import validate_only as validate

    try:
        if validate_only:
            report = validate(config)
            text = report.model_dump_json(by_alias=True, exclude_none=True)
            write_termination_message(text)
            print(text, flush=True)
            return EXIT_OK
        result = run(config)
    except DataError as exc:
        return _fail(
            "InvalidData", str(exc), EXIT_INVALID_DATA, exc.report, redact=config.dataset.redact
        )
    except PreemptedError as exc:
        return _fail(
            "Preempted", str(exc), EXIT_PREEMPTED, step=exc.step, checkpoint_uri=exc.checkpoint
        )
    except Exception as exc:
        traceback.print_exc()
        return _fail(
            "Failed", f"{type(exc).__name__}: {exc}", EXIT_FAILED, redact=config.dataset.redact
        )
    if result is not None:
        text = result.termination_message()
        write_termination_message(text)
        print(text, flush=True)
    return EXIT_OK


def verify_command(uri: str, digest: str | None) -> int:
    """Recompute the digests; the verdict goes to stdout and the termination message."""
    from whetstone_trainer.artifact import verify
    from whetstone_trainer.progress import write_termination_message

    try:
        report = verify(uri, digest)
    except Exception as exc:  # storage unreachable: the Job retries, this is no verdict
        traceback.print_exc()
        return _fail("Failed", f"could not read {uri}: {type(exc).__name__}: {exc}", EXIT_FAILED)
    verdict = {
        "uri": uri,
        "ok": report.ok,
        "digest": report.digest,
        "problems": report.problems[:20],
    }
    print(json.dumps({**verdict, "files": report.files}, indent=2))
    write_termination_message(json.dumps(verdict)[:TERMINATION_MESSAGE_LIMIT])
    return EXIT_OK if report.ok else EXIT_VERIFY_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "verify":
        parser = argparse.ArgumentParser(
            prog="whetstone_trainer verify", description="Recompute an artifact's sha256 digests."
        )
        parser.add_argument("uri", help="artifact location (file://, pvc://, s3://)")
        parser.add_argument("--digest", help="expected manifest digest (sha256:...)")
        ns = parser.parse_args(args[1:])
        return verify_command(ns.uri, ns.digest)
    parser = argparse.ArgumentParser(
        prog="whetstone_trainer",
        description="Fine-tune a model from a TrainerConfig. Subcommand: verify URI.",
    )
    parser.add_argument(
        "--config", type=Path, required=True, help="TrainerConfig file (YAML or JSON)"
    )
    parser.add_argument(
        "--validate-only",
        action="store_true",
        help="check the data and print the data report; load no model",
    )
    ns = parser.parse_args(args)
    return run_config(ns.config, validate_only=ns.validate_only)


if __name__ == "__main__":
    sys.exit(main())
