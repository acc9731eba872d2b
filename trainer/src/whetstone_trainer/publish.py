"""After training: score the fine-tuned model (and the base model), stage the artifact, seal
and publish it (COMPLETE last), and write the TrainerResult."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whetstone_contract.config import EvaluationSpec, TrainerConfig
from whetstone_contract.result import TrainerResult
from whetstone_trainer import artifact as artifacts
from whetstone_trainer.evaluate import deltas, evaluate_model
from whetstone_trainer.model import load_base_model, load_finetuned
from whetstone_trainer.prepare import Setup
from whetstone_trainer.storage import Location

FINAL = "final"

Curve = list[tuple[int, float]]


@dataclass(frozen=True)
class TrainedModel:
    """What training left behind for evaluation and the artifact."""

    setup: Setup
    weights: Path  # what the HF Trainer saved: the whole model, or the adapter
    history: list[dict[str, Any]]
    steps: int
    train_seconds: float

    def train_curve(self) -> Curve:
        return [(int(h["step"]), float(h["loss"])) for h in self.history if "loss" in h]

    def eval_curve(self) -> Curve:
        return [(int(h["step"]), float(h["eval_loss"])) for h in self.history if "eval_loss" in h]


@dataclass(frozen=True)
class Scores:
    """The fine-tuned model's metrics on validation (and test), and the base model's."""

    validation: dict[str, float]
    test: dict[str, float] | None
    baseline: dict[str, float] | None


def score(evaluation: EvaluationSpec, setup: Setup, model: Any) -> Scores:
    """The requested metrics of `model`, and of the base model when compared to it."""
    prepared = setup.prepared

    def measure(m: Any, tokenized: Any, examples: Any) -> dict[str, float]:
        return evaluate_model(
            m,
            setup.tokenizer,
            tokenized,
            examples,
            evaluation.metrics,
            max_new_tokens=evaluation.max_new_tokens,
            max_examples=evaluation.max_examples,
        )

    validation = measure(model, prepared.validation, prepared.validation_examples)
    test = measure(model, prepared.test, prepared.test_examples) if prepared.test else None
    baseline = None
    if evaluation.compare_to_baseline:
        assert setup.model_dir is not None
        base = load_base_model(setup.model_dir)
        base.eval()
        baseline = measure(base, prepared.validation, prepared.validation_examples)
        del base
    return Scores(validation, test, baseline)


def _job(config: TrainerConfig) -> str:
    return f"{config.namespace}/{config.job_name}"


def _stage(config: TrainerConfig, trained: TrainedModel, model: Any, work: Path) -> Path:
    """The artifact's folder in the work dir: weights (or adapter), tokenizer, loss plot."""
    staging = work / "artifact"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    if config.output.artifact_format == "merged":
        model.save_pretrained(staging, safe_serialization=True)
    else:
        for name in ("adapter_model.safetensors", "adapter_config.json"):
            shutil.copy2(trained.weights / name, staging / name)
        adapter_config = json.loads((staging / "adapter_config.json").read_text())
        adapter_config["base_model_name_or_path"] = config.base_model.uri
        (staging / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
    trained.setup.tokenizer.save_pretrained(staging)
    (staging / artifacts.LOSS_PLOT).write_text(
        artifacts.loss_curve_svg(trained.train_curve(), trained.eval_curve())
    )
    return staging


def _card(
    config: TrainerConfig,
    trained: TrainedModel,
    scores: Scores,
    hyperparameters: dict[str, float | int | str | bool],
) -> str:
    """The artifact's README.md: lineage, hyperparameters, data report, metrics."""
    report = trained.setup.prepared.report
    lineage: dict[str, Any] = {
        "fineTuneJob": _job(config),
        "baseModel": config.base_model.uri,
        "method": config.method.type,
        "trainData": config.dataset.train.uri,
        "datasetDigest": report.dataset_digest or "",
        "trainerImage": os.environ.get("WHETSTONE_TRAINER_IMAGE", "local"),
        "steps": trained.steps,
    }
    return artifacts.model_card(
        title=f"{config.job_name} ({config.method.type} on {config.base_model.uri})",
        lineage=lineage,
        hyperparameters=hyperparameters,
        data_report=report.wire(),
        metrics=scores.validation,
        baseline=scores.baseline,
        test_metrics=scores.test,
        artifact_format=config.output.artifact_format,
    )


def _result_metrics(trained: TrainedModel, scores: Scores) -> dict[str, float | dict[str, float]]:
    metrics: dict[str, float | dict[str, float]] = dict(scores.validation)
    train_curve = trained.train_curve()
    if train_curve:
        metrics["trainLoss"] = train_curve[-1][1]
        metrics["initialTrainLoss"] = train_curve[0][1]
    metrics["trainSeconds"] = round(trained.train_seconds, 2)
    if scores.baseline is not None:
        metrics["baseline"] = scores.baseline
        metrics["delta"] = deltas(scores.validation, scores.baseline)
    if scores.test:
        metrics["test"] = scores.test
    return metrics


def evaluate_and_publish(
    config: TrainerConfig, trained: TrainedModel, work: Path, output: Location
) -> TrainerResult:
    """Score the trained model, publish its artifact to `output`/final and its result."""
    setup = trained.setup
    assert setup.model_dir is not None
    model = load_finetuned(setup.model_dir, trained.weights, config.method)
    scores = score(config.evaluation, setup, model)
    # Artifact: staged in the work dir, sealed, then published (COMPLETE last).
    staging = _stage(config, trained, model, work)
    hyperparameters = setup.resolved.record()
    (staging / artifacts.CARD).write_text(_card(config, trained, scores, hyperparameters))
    fmt = config.output.artifact_format
    digest = artifacts.seal(
        staging,
        {
            "artifactFormat": fmt,
            "baseModel": config.base_model.uri,
            "fineTuneJob": _job(config),
            "datasetDigest": setup.prepared.report.dataset_digest,
        },
    )
    final = output.child(FINAL)
    artifacts.publish(staging, final)
    result = TrainerResult(
        artifact_uri=final.uri.rstrip("/") + "/",
        artifact_format=fmt,
        manifest_digest=digest,
        metrics=_result_metrics(trained, scores),
        data_report=setup.prepared.report,
        hyperparameters=hyperparameters,
        steps=trained.steps,
    )
    output.child("result.json").write_text(
        result.model_dump_json(by_alias=True, exclude_none=True, indent=2) + "\n"
    )
    return result
