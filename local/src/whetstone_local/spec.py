"""The FineTuneJob side of a local run, through the operator's own code: its spec with local
paths resolved, the TrainerConfig it renders to, the ModelVersion it would register."""

from __future__ import annotations

import copy
from datetime import datetime
from pathlib import Path
from typing import Any

from whetstone_contract.config import TrainerConfig
from whetstone_contract.result import TrainerResult
from whetstone_operator.api.errors import parse_spec
from whetstone_operator.api.finetunejob import FineTuneJobSpec
from whetstone_operator.reconcile.core import Obj
from whetstone_operator.reconcile.finetunejob import build_model_version
from whetstone_operator.render.trainer_config import build_trainer_config
from whetstone_trainer.storage import resolve_relative_file_uri


def trainer_config_from_spec(name: str, namespace: str, spec: dict[str, Any]) -> TrainerConfig:
    """The operator's own rendering: one contract, never a copy."""
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
    meta = job.get("metadata") or {}
    parsed = parse_spec(FineTuneJobSpec, spec)
    if parsed.registration is None:
        return {}
    job_object = Obj(
        name=meta.get("name", ""),
        namespace=meta.get("namespace", "default"),
        uid="local",
        generation=1,
        spec=spec,
        status={},
    )
    return build_model_version(job_object, parsed, result, (), "local", now)
