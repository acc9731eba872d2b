"""Metrics, baseline deltas, the model card's plot and the termination-message size."""

from __future__ import annotations

import pytest

from whetstone_contract.result import DataReport, TrainerFailure, TrainerResult
from whetstone_trainer.artifact import loss_curve_svg, model_card
from whetstone_trainer.evaluate import deltas, exact_match, improved, normalize_answer, rouge_l

pytestmark = pytest.mark.trainer


def test_exact_match_normalises() -> None:
    assert normalize_answer("  The Job! ") == "job"
    assert exact_match(["A Job.", "a replicaset"], ["a job", "A Deployment"]) == 0.5
    assert exact_match([], []) == 0.0


def test_rouge_l() -> None:
    assert rouge_l(["the cat sat"], ["the cat sat"]) == pytest.approx(1.0)
    assert rouge_l(["dog"], ["the cat sat"]) == 0.0
    partial = rouge_l(["the cat"], ["the cat sat"])
    assert 0.0 < partial < 1.0


def test_baseline_deltas() -> None:
    metrics = {"evalLoss": 1.5, "exactMatch": 0.8, "rougeL": 0.7}
    baseline = {"evalLoss": 3.0, "exactMatch": 0.1}
    assert deltas(metrics, baseline) == {"evalLoss": -1.5, "exactMatch": pytest.approx(0.7)}
    assert improved("evalLoss", -1.5) and improved("exactMatch", 0.7)
    assert not improved("perplexity", 2.0)


def test_loss_curve_svg_and_card() -> None:
    svg = loss_curve_svg([(1, 5.0), (10, 3.0), (20, 1.5)], [(10, 3.2), (20, 2.0)])
    assert svg.count("<polyline") == 2 and "training loss" in svg and "validation loss" in svg
    assert "no loss recorded" in loss_curve_svg([], [])
    card = model_card(
        title="t",
        lineage={"baseModel": "tiny://llama"},
        hyperparameters={"learningRate": 0.001},
        data_report={"examples": 3},
        metrics={"evalLoss": 1.0},
        baseline={"evalLoss": 2.0},
        test_metrics=None,
        artifact_format="merged",
    )
    assert "| evalLoss | 1.0000 | 2.0000 | -1.0000 |" in card


def test_termination_messages_fit_in_4_kb() -> None:
    report = DataReport(invalid_lines=[f"train.jsonl:{i}: " + "x" * 200 for i in range(50)])
    result = TrainerResult(
        artifact_uri="s3://b/k/", manifest_digest="sha256:" + "a" * 64, data_report=report
    )
    assert len(result.termination_message().encode()) <= 4096
    failure = TrainerFailure(reason="InvalidData", message="m" * 2000, data_report=report)
    text = failure.termination_message()
    assert len(text.encode()) <= 4096
    assert TrainerFailure.model_validate_json(text).reason == "InvalidData"
