"""Data pipeline: schema errors with line numbers, policies, redaction, selection, split."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from whetstone_contract.config import DatasetSpec
from whetstone_contract.result import EXIT_INVALID_DATA, EXIT_OK
from whetstone_trainer.data import (
    IGNORE_INDEX,
    DataError,
    Example,
    prepare_text,
    tokenize_example,
    tokenize_splits,
)
from whetstone_trainer.model import load_tokenizer
from whetstone_trainer.redact import redact_text
from whetstone_trainer.train import RunOptions, run

from trainer_helpers import ConfigFactory, last_json_line, run_trainer, subprocess_env, write_config

pytestmark = pytest.mark.trainer


def chat(user: str, answer: str, **meta: Any) -> str:
    return json.dumps(
        {
            "messages": [
                {"role": "user", "content": user},
                {"role": "assistant", "content": answer},
            ],
            "metadata": meta,
        }
    )


GOOD = [
    chat(f"question number {i}?", f"answer {i}.", quality_score=0.9, tags=["a"]) for i in range(12)
]
BROKEN_LINES = {
    3: '{"messages": [{"role": "user", "content": "unterminated"}',  # bad JSON
    5: json.dumps(
        {"messages": [{"content": "who am I?"}, {"role": "assistant", "content": "nobody"}]}
    ),  # missing role
    7: json.dumps(
        {
            "messages": [
                {"role": "user", "content": "say nothing"},
                {"role": "assistant", "content": "   "},
            ]
        }
    ),  # empty assistant
    9: chat("long " * 400, "ok"),  # over-long for maxSeqLength 128
    11: json.dumps(
        {
            "messages": [
                {"role": "wizard", "content": "hi"},
                {"role": "assistant", "content": "hello"},
            ]
        }
    ),  # unknown role
}


def broken_file(tmp_path: Path) -> Path:
    lines = list(GOOD)
    for number in sorted(BROKEN_LINES):
        lines.insert(number - 1, BROKEN_LINES[number])
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def read(uri: str) -> bytes:
    return Path(uri.removeprefix("file://")).read_bytes()


def test_broken_data_is_dropped_with_line_numbers(tmp_path: Path, tiny_model_dir: Path) -> None:
    path = broken_file(tmp_path)
    spec = DatasetSpec.model_validate(
        {"train": {"uri": f"file://{path}"}, "validationSplit": 0.2, "onInvalid": "drop"}
    )
    splits = prepare_text(spec, read, seed=1)
    tokenizer = load_tokenizer(tiny_model_dir)
    prepared = tokenize_splits(splits, tokenizer, max_len=128, packing=False, batch_size=4)
    report = prepared.report
    assert report.dropped == {"invalid": 4, "tooLong": 1}
    lines = report.invalid_lines
    assert any(line.startswith("broken.jsonl:3: invalid JSON") for line in lines), lines
    assert "broken.jsonl:5: message 1 has no role" in lines
    assert "broken.jsonl:7: message 2 is an empty assistant turn" in lines
    assert any(line.startswith("broken.jsonl:9: too long (") for line in lines), lines
    assert any(line.startswith("broken.jsonl:11: message 1 has unknown role") for line in lines)
    assert report.examples + report.validation_examples == len(GOOD)


def test_fail_policy_raises_with_line_numbers(tmp_path: Path) -> None:
    path = broken_file(tmp_path)
    spec = DatasetSpec.model_validate(
        {"train": {"uri": f"file://{path}"}, "validationSplit": 0.2, "onInvalid": "fail"}
    )
    with pytest.raises(DataError) as info:
        prepare_text(spec, read, seed=1)
    assert "broken.jsonl:3" in str(info.value)
    assert info.value.report.dropped["invalid"] == 4
    assert [line.split(":")[1] for line in info.value.report.invalid_lines] == ["3", "5", "7", "11"]


def test_validate_only_cli_fails_and_writes_nothing(
    tmp_path: Path, make_config: ConfigFactory
) -> None:
    path = broken_file(tmp_path)
    output = tmp_path / "never-written"
    config = make_config(
        dataset={"train": {"uri": f"file://{path}"}, "onInvalid": "fail"},
        output={"uri": f"file://{output}/"},
    )
    termination = tmp_path / "termination-log"
    proc = run_trainer(
        ["--config", str(write_config(config, tmp_path / "c.json")), "--validate-only"],
        env=subprocess_env(WHETSTONE_TERMINATION_LOG=str(termination)),
    )
    assert proc.returncode == EXIT_INVALID_DATA, proc.stderr[-2000:]
    assert not output.exists()
    message = json.loads(termination.read_text())
    assert message["reason"] == "InvalidData"
    assert "broken.jsonl:5: message 1 has no role" in message["dataReport"]["invalidLines"]
    assert last_json_line(proc.stdout) == message


def test_training_on_invalid_data_writes_nothing(
    tmp_path: Path, make_config: ConfigFactory
) -> None:
    path = broken_file(tmp_path)
    output = tmp_path / "untouched"
    config = make_config(
        dataset={"train": {"uri": f"file://{path}"}, "onInvalid": "fail"},
        output={"uri": f"file://{output}/"},
    )
    with pytest.raises(DataError):
        run(
            config,
            RunOptions(serve_progress=False, install_sigterm=False, work_dir=tmp_path / "work"),
        )
    assert not output.exists()


def test_validate_only_loads_no_weights(
    tmp_path: Path, make_config: ConfigFactory, tiny_model_dir: Path
) -> None:
    # A base model folder without weights: validation must still work (tokenizer only).
    no_weights = tmp_path / "tokenizer-only"
    no_weights.mkdir()
    for f in tiny_model_dir.iterdir():
        if not f.name.endswith(".safetensors"):
            (no_weights / f.name).write_bytes(f.read_bytes())
    output = tmp_path / "out"
    config = make_config(
        baseModel={"uri": f"file://{no_weights}"}, output={"uri": f"file://{output}/"}
    )
    proc = run_trainer(
        ["--config", str(write_config(config, tmp_path / "c.json")), "--validate-only"]
    )
    assert proc.returncode == EXIT_OK, proc.stderr[-3000:]
    report = last_json_line(proc.stdout)
    assert report["examples"] > 150
    assert report["dropped"] == {"duplicate": 3}
    assert report["redacted"] == {"email": 2, "phone": 2, "secret": 2}
    assert report["datasetDigest"].startswith("sha256:")
    assert report["tokens"]["max"] <= 256
    assert json.loads((output / "data-report.json").read_text()) == report
    assert sorted(p.name for p in output.iterdir()) == ["data-report.json"]


SEEDED = {
    "email": ["alice@example.com", "bob.smith+ml@corp.example.org", "ops@team.example.io"],
    "phone": ["+1 415-555-0134", "(212) 555-0198", "+44 20 7946 0958", "415.555.0100"],
    "secret": [
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_0123456789abcdefghijABCDEFGHIJ012345",
        "sk-proj-abcdefghijklmnopqrstuvwxyz012345",
        "hf_abcdefghijklmnopqrstuvwxyzABCDEFGH",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dBjftJeZ4CVPmB92K27uhbUJU1p1r_wW1gFWFOEjXk",
    ],
}
NOT_SECRET = ["version 2.10.3", "on 2024-01-15", "at 192.168.1.100", "order 1234567", "port 8080"]


def test_redaction_counts_and_placeholders() -> None:
    counts: Counter[str] = Counter()
    text = (
        " | ".join(v for values in SEEDED.values() for v in values) + " | password: hunter2hunter2"
    )
    out = redact_text(text, ["email", "phone", "secret"], counts)
    for values in SEEDED.values():
        for value in values:
            assert value not in out
    assert "hunter2hunter2" not in out and "password: [REDACTED_SECRET]" in out
    assert counts == {"email": 3, "phone": 4, "secret": 6}
    untouched = " ".join(NOT_SECRET)
    assert redact_text(untouched, ["email", "phone", "secret"], Counter()) == untouched
    # Only the kinds asked for are redacted.
    only_email: Counter[str] = Counter()
    assert "+1 415-555-0134" in redact_text("x@y.com +1 415-555-0134", ["email"], only_email)
    assert only_email == {"email": 1}


def test_redacted_text_never_reaches_the_tokenizer(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = [v for values in SEEDED.values() for v in values]
    lines = [
        chat(f"my contact is {value}, please help with item {i}", f"done {i}.")
        for i, value in enumerate(secrets)
    ]
    lines += [chat(f"plain question {i}", f"plain answer {i}.") for i in range(10)]
    path = tmp_path / "pii.jsonl"
    path.write_text("\n".join(lines) + "\n")
    spec = DatasetSpec.model_validate(
        {
            "train": {"uri": f"file://{path}"},
            "validationSplit": 0.2,
            "redact": ["email", "phone", "secret"],
        }
    )
    splits = prepare_text(spec, read, seed=3)
    assert dict(splits.builder.redacted) == {"email": 3, "phone": 4, "secret": 5}
    # The text a tiny tokenizer is trained on is already redacted.
    assert not any(s in text for s in secrets for text in splits.texts())

    tokenizer = load_tokenizer(tiny_model_dir)
    seen: list[str] = []
    original = type(tokenizer).apply_chat_template

    def spy(self: Any, conversation: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(json.dumps(conversation))
        return original(self, conversation, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer), "apply_chat_template", spy)
    prepared = tokenize_splits(splits, tokenizer, max_len=256, packing=True, batch_size=4)
    assert len(seen) >= len(lines)
    assert not any(s in text for s in secrets for text in seen)
    assert prepared.report.redacted == {"email": 3, "phone": 4, "secret": 5}
    assert any("[REDACTED_EMAIL]" in text for text in seen)


def test_select_dedupe_split_and_digest(tmp_path: Path) -> None:
    lines = [
        chat(
            f"q{i}",
            f"a{i}",
            quality_score=0.5 + i / 40,
            tags=["x" if i % 2 else "y"],
            role="sre" if i % 3 else "architect",
        )
        for i in range(20)
    ]
    lines += [lines[0], lines[1]]  # duplicates
    path = tmp_path / "sel.jsonl"
    path.write_text("\n".join(lines) + "\n")

    def prep(select: dict[str, Any] | None, seed: int = 7) -> Any:
        spec = DatasetSpec.model_validate(
            {"train": {"uri": f"file://{path}"}, "validationSplit": 0.25, "select": select}
        )
        return prepare_text(spec, read, seed)

    everything = prep(None)
    assert everything.builder.dropped == {"duplicate": 2}
    assert len(everything.train) + len(everything.validation) == 20
    by_quality = prep({"minQualityScore": 0.75})
    # q0..q9 score below 0.75, and so do the two duplicate copies of q0 and q1.
    assert by_quality.builder.dropped == {"notSelected": 12}
    by_tag_role = prep({"tags": ["x"], "roles": ["sre"]})
    kept = by_tag_role.train + by_tag_role.validation
    assert all(e.metadata["role"] == "sre" and "x" in e.metadata["tags"] for e in kept)
    # The split is seeded: same seed, same split; another seed, another split.
    again = prep(None)
    assert [e.line for e in again.validation] == [e.line for e in everything.validation]
    assert [e.line for e in prep(None, seed=8).validation] != [
        e.line for e in everything.validation
    ]


def test_completion_format_and_assistant_only_labels(tmp_path: Path, tiny_model_dir: Path) -> None:
    path = tmp_path / "completion.jsonl"
    path.write_text(
        "\n".join(json.dumps({"prompt": f"p{i}", "completion": f"c{i} done"}) for i in range(6))
        + "\n"
        + '{"prompt": "x"}\n'
    )
    spec = DatasetSpec.model_validate(
        {"train": {"uri": f"file://{path}"}, "validationSplit": 0.2, "format": "completion"}
    )
    splits = prepare_text(spec, read, seed=0)
    assert splits.builder.invalid_lines == ["completion.jsonl:7: missing or empty completion"]
    tokenizer = load_tokenizer(tiny_model_dir)
    example = Example(
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello there"},
            {"role": "assistant", "content": "general kenobi"},
        ],
        metadata={},
        source="x",
        line=1,
    )
    tokenized = tokenize_example(tokenizer, example)
    target = [
        t
        for t, label in zip(tokenized.input_ids, tokenized.labels, strict=True)
        if label != IGNORE_INDEX
    ]
    assert tokenizer.decode(target) == "general kenobi<|end|>"
