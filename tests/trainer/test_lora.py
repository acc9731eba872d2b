"""A LoRA fine-tune end to end: loss falls, progress is served, the artifact is written,
reloads, generates and verifies; tampering and incompleteness are caught."""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from whetstone_contract.config import TrainerConfig
from whetstone_contract.result import TrainerResult
from whetstone_trainer.artifact import COMPLETE, MANIFEST, verify
from whetstone_trainer.train import RunOptions, run

from trainer_helpers import ConfigFactory, run_trainer

pytestmark = pytest.mark.trainer


@dataclass
class LoraRun:
    config: TrainerConfig
    result: TrainerResult
    output: Path
    polled: list[dict[str, Any]]
    checkpoints: list[dict[str, Any]]
    seconds: float


@pytest.fixture(scope="module")
def lora_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, seed_data: Path
) -> LoraRun:
    from whetstone_contract.config import TrainerConfig

    from trainer_helpers import free_port

    root = tmp_path_factory.mktemp("lora")
    port = free_port()
    config = TrainerConfig.model_validate(
        {
            "jobName": "lora-e2e",
            "baseModel": {"uri": f"file://{tiny_model_dir}"},
            "dataset": {
                "train": {"uri": f"file://{seed_data}"},
                "validationSplit": 0.1,
                "redact": ["email", "phone", "secret"],
            },
            "method": {"type": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.0}},
            "hyperparameters": {
                "epochs": 12,
                "batchSize": 8,
                "learningRate": 3e-3,
                "warmupSteps": 5,
                "lrScheduler": "cosine",
                "maxSeqLength": 256,
                "seed": 42,
                "loggingSteps": 5,
            },
            "earlyStopping": {"patience": 3, "minDelta": 0.01},
            "evaluation": {
                "metrics": ["loss", "perplexity", "exactMatch", "rougeL", "accuracy"],
                "compareToBaseline": True,
                "maxNewTokens": 16,
            },
            "output": {"uri": f"file://{root}/out/", "checkpointEverySteps": 50},
            "progressPort": port,
        }
    )
    polled: list[dict[str, Any]] = []
    checkpoints: list[dict[str, Any]] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/progress", timeout=2) as resp:
                    polled.append(json.loads(resp.read()))
                url = f"http://127.0.0.1:{port}/checkpoints"
                with urllib.request.urlopen(url, timeout=2) as resp:
                    listed = json.loads(resp.read())
                    if listed:
                        checkpoints[:] = listed
            except OSError:
                pass
            time.sleep(0.2)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    started = time.monotonic()
    try:
        result = run(config, RunOptions(install_sigterm=False, work_dir=root / "work"))
    finally:
        done.set()
    poller.join()
    assert result is not None
    return LoraRun(config, result, root / "out", polled, checkpoints, time.monotonic() - started)


def test_loss_falls_and_beats_the_base_model(lora_run: LoraRun) -> None:
    metrics = lora_run.result.metrics
    initial, final = metrics["initialTrainLoss"], metrics["trainLoss"]
    assert isinstance(initial, float) and isinstance(final, float)
    assert final < 0.6 * initial, (initial, final)
    baseline = metrics["baseline"]
    assert isinstance(baseline, dict)
    assert metrics["evalLoss"] < baseline["evalLoss"] - 1.0
    assert metrics["rougeL"] > baseline["rougeL"]
    delta = metrics["delta"]
    assert isinstance(delta, dict) and delta["evalLoss"] < 0
    print(
        f"LoRA: loss {initial:.2f} -> {final:.2f}, eval {metrics['evalLoss']:.2f} "
        f"(base {baseline['evalLoss']:.2f}), exactMatch {metrics['exactMatch']}, "
        f"{lora_run.result.steps} steps, {lora_run.seconds:.1f} s"
    )


def test_progress_is_served_and_written(lora_run: LoraRun) -> None:
    assert lora_run.polled, "the progress endpoint never answered"
    steps = [p["step"] for p in lora_run.polled]
    assert steps == sorted(steps)
    assert any(0 < p["step"] < p["totalSteps"] for p in lora_run.polled)
    assert any("loss" in p for p in lora_run.polled)
    on_disk = json.loads((lora_run.output / "progress.json").read_text())
    assert on_disk["step"] == lora_run.result.steps and on_disk["percent"] == 100
    assert any(p.get("tokensPerSecond", 0) > 0 for p in lora_run.polled)
    assert lora_run.checkpoints and all(
        c["uri"].startswith("file://") and "/checkpoints/checkpoint-" in c["uri"]
        for c in lora_run.checkpoints
    ), "/checkpoints lists the complete checkpoints"


def test_result_fits_the_termination_message(lora_run: LoraRun) -> None:
    text = lora_run.result.termination_message()
    assert len(text.encode()) < 4096
    assert TrainerResult.model_validate_json(text).manifest_digest == (
        lora_run.result.manifest_digest
    )
    on_disk = TrainerResult.model_validate_json((lora_run.output / "result.json").read_text())
    assert on_disk.manifest_digest == lora_run.result.manifest_digest


def test_checkpoints_are_complete_and_rotated(lora_run: LoraRun) -> None:
    checkpoints = sorted((lora_run.output / "checkpoints").glob("checkpoint-*"))
    assert 1 <= len(checkpoints) <= lora_run.config.output.keep_checkpoints
    for folder in checkpoints:
        assert (folder / COMPLETE).is_file()
        assert (folder / "adapter_model.safetensors").is_file()


def test_artifact_reloads_and_generates(lora_run: LoraRun) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = lora_run.output / "final"
    names = {p.name for p in final.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "README.md",
        "loss-curve.svg",
        MANIFEST,
        COMPLETE,
    } <= names
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert not any("lora" in name for name, _ in model.named_parameters())
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Which object runs a batch workload to completion?"}],
        tokenize=True,
        return_dict=True,
        add_generation_prompt=True,
    )["input_ids"]
    ids = torch.tensor([list(prompt)])
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=12,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert text.strip(), "the reloaded model generated nothing"
    print(f"generated: {text!r}")


def test_model_card_has_the_sections(lora_run: LoraRun) -> None:
    card = (lora_run.output / "final" / "README.md").read_text()
    for heading in (
        "## Lineage",
        "## Metrics (validation)",
        "## Hyperparameters",
        "## Data report",
        "## Training loss",
    ):
        assert heading in card
    assert "base model" in card and "datasetDigest" in card and "learningRate" in card
    svg = (lora_run.output / "final" / "loss-curve.svg").read_text()
    assert svg.startswith("<svg") and "<polyline" in svg


def test_digests_verify_and_tampering_fails(lora_run: LoraRun, tmp_path: Path) -> None:
    digest = lora_run.result.manifest_digest
    report = verify(lora_run.result.artifact_uri, digest)
    assert report.ok, report.problems
    assert report.files >= 6
    proc = run_trainer(["verify", lora_run.result.artifact_uri, "--digest", digest])
    assert proc.returncode == 0, proc.stdout + proc.stderr

    copy = tmp_path / "copy"
    shutil.copytree(lora_run.output / "final", copy)
    assert verify(f"file://{copy}", digest).ok
    assert not verify(f"file://{copy}", "sha256:" + "0" * 64).ok  # wrong expected digest
    with (copy / "model.safetensors").open("r+b") as handle:
        handle.seek(-8, 2)
        handle.write(b"\x00\x01\x02\x03\x04\x05\x06\x07")
    tampered = verify(f"file://{copy}", digest)
    assert not tampered.ok
    assert any(p.startswith("model.safetensors: sha256") for p in tampered.problems)
    proc = run_trainer(["verify", f"file://{copy}", "--digest", digest])
    assert proc.returncode != 0 and "model.safetensors" in proc.stdout

    incomplete = tmp_path / "incomplete"
    shutil.copytree(lora_run.output / "final", incomplete)
    (incomplete / COMPLETE).unlink()
    assert any("incomplete" in p for p in verify(f"file://{incomplete}").problems)
    (incomplete / "extra.bin").write_bytes(b"x")
    assert any(
        "extra.bin: not in the manifest" in p for p in verify(f"file://{incomplete}").problems
    )
    assert not verify(f"file://{tmp_path}/absent").ok


def test_lora_via_the_pod_entry_point(tmp_path: Path, make_config: ConfigFactory) -> None:
    from trainer_helpers import subprocess_env, write_config

    config = make_config(
        hyperparameters={"maxSteps": 12, "evalSteps": 6},
        output={"checkpointEverySteps": 6, "artifactFormat": "adapter"},
    )
    termination = tmp_path / "termination-log"
    proc = run_trainer(
        ["--config", str(write_config(config, tmp_path / "config.json"))],
        env=subprocess_env(WHETSTONE_TERMINATION_LOG=str(termination)),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = TrainerResult.model_validate_json(termination.read_text())
    assert result.artifact_format == "adapter" and result.steps == 12
    final = Path(result.artifact_uri.removeprefix("file://"))
    assert (final / "adapter_model.safetensors").is_file()
    adapter_config = json.loads((final / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == config.base_model.uri
    assert verify(result.artifact_uri, result.manifest_digest).ok
    # Progress lines are JSON on stdout, and the result is the last line.
    assert any('"loss"' in line for line in proc.stdout.splitlines())
