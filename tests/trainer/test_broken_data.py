"""Broken dataset files give clear errors naming the file and line: encodings, truncation, huge
lines, empty files, stray bytes. (Broken *lines* of valid files are in test_data.py.)"""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import pytest

from whetstone_contract.config import DatasetSpec
from whetstone_contract.result import EXIT_INVALID_DATA
from whetstone_trainer.data import DataError, TextSplits, prepare_text, tokenize_splits
from whetstone_trainer.model import load_tokenizer

from trainer_helpers import ConfigFactory, run_trainer, subprocess_env, write_config

pytestmark = pytest.mark.trainer


def chat(i: int, answer: str | None = None) -> str:
    return json.dumps(
        {
            "messages": [
                {"role": "user", "content": f"question {i}?"},
                {"role": "assistant", "content": answer or f"answer {i}."},
            ]
        },
        ensure_ascii=False,
    )


GOOD = [chat(i) for i in range(10)]


def prepare(path: Path, on_invalid: str = "drop") -> TextSplits:
    spec = DatasetSpec.model_validate(
        {"train": {"uri": f"file://{path}"}, "validationSplit": 0.2, "onInvalid": on_invalid}
    )
    return prepare_text(spec, lambda uri: Path(uri.removeprefix("file://")).read_bytes(), 1)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def lines(*texts: str) -> bytes:
    return ("\n".join(texts) + "\n").encode()


def test_a_stray_latin1_byte_costs_its_line_only(tmp_path: Path) -> None:
    data = lines(*GOOD[:4]) + chat(4, "caf\u00e9").encode("latin-1") + b"\n" + lines(*GOOD[5:])
    path = write(tmp_path, "latin1.jsonl", data)
    splits = prepare(path)
    report = splits.builder.report()
    assert report.dropped == {"invalid": 1}
    (problem,) = report.invalid_lines
    assert problem.startswith("latin1.jsonl:5: not UTF-8 text"), problem
    assert len(splits.train) + len(splits.validation) == 9
    with pytest.raises(DataError) as info:
        prepare(path, on_invalid="fail")
    assert "latin1.jsonl:5: not UTF-8 text" in str(info.value)


def test_utf16_is_named_rather_than_reported_line_by_line(tmp_path: Path) -> None:
    path = write(tmp_path, "utf16.jsonl", "\n".join(GOOD).encode("utf-16"))
    with pytest.raises(DataError) as info:
        prepare(path)
    assert info.value.report.invalid_lines == [
        "utf16.jsonl:1: UTF-16 or UTF-32 text: save the file as UTF-8"
    ]


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    splits = prepare(write(tmp_path, "bom.jsonl", codecs.BOM_UTF8 + lines(*GOOD)))
    assert splits.builder.report().dropped == {}
    assert len(splits.train) + len(splits.validation) == 10


def test_line_separators_inside_strings_do_not_split_examples(tmp_path: Path) -> None:
    # U+2028, U+2029 and U+0085 may stand raw in JSON strings; only \n ends a JSON line.
    odd = [chat(i, f"first\u2028second\u2029third\u0085fourth {i}") for i in range(10)]
    splits = prepare(write(tmp_path, "separators.jsonl", lines(*odd)))
    assert splits.builder.report().dropped == {}
    kept = splits.train + splits.validation
    assert len(kept) == 10
    assert all("\u2028" in e.messages[1]["content"] for e in kept)


def test_windows_line_endings_are_fine(tmp_path: Path) -> None:
    splits = prepare(write(tmp_path, "crlf.jsonl", ("\r\n".join(GOOD) + "\r\n").encode()))
    assert splits.builder.report().dropped == {}


def test_a_truncated_file_loses_its_last_line_with_its_number(tmp_path: Path) -> None:
    path = write(tmp_path, "truncated.jsonl", lines(*GOOD)[:-20])
    report = prepare(path).builder.report()
    (problem,) = report.invalid_lines
    assert problem.startswith("truncated.jsonl:10: invalid JSON"), problem


@pytest.mark.parametrize("content", [b"", b"\n\n   \n", b"\r\n"], ids=["empty", "blank", "crlf"])
def test_an_empty_file_is_named(tmp_path: Path, content: bytes) -> None:
    with pytest.raises(DataError) as info:
        prepare(write(tmp_path, "train.jsonl", content))
    assert str(info.value).startswith("train.jsonl is empty"), info.value


def test_nul_bytes_and_a_huge_garbage_line_are_reported_briefly(tmp_path: Path) -> None:
    data = lines(*GOOD[:5]) + b"\x00\x00\x00\n" + b"z" * 5_000_000 + b"\n" + lines(*GOOD[5:])
    report = prepare(write(tmp_path, "garbage.jsonl", data)).builder.report()
    assert report.dropped == {"invalid": 2}
    assert [p.split(":")[1] for p in report.invalid_lines] == ["6", "7"]
    # The report names the problem, never the 5 MB of input.
    assert all(len(p) < 200 for p in report.invalid_lines), report.invalid_lines


def test_a_huge_example_is_dropped_as_too_long(tmp_path: Path, tiny_model_dir: Path) -> None:
    huge = chat(99, "word " * 200_000)  # 1 MB in one line
    path = write(tmp_path, "huge.jsonl", lines(*GOOD[:5], huge, *GOOD[5:]))
    splits = prepare(path)
    prepared = tokenize_splits(
        splits, load_tokenizer(tiny_model_dir), max_len=128, packing=False, batch_size=4
    )
    report = prepared.report
    assert report.dropped == {"tooLong": 1}
    (problem,) = report.invalid_lines
    assert problem.startswith("huge.jsonl:6: too long ("), problem


def test_validate_only_reports_the_broken_file_in_its_termination_message(
    tmp_path: Path, make_config: ConfigFactory
) -> None:
    cases = {
        "empty.jsonl": (b"", "empty.jsonl is empty"),
        "utf16.jsonl": ("\n".join(GOOD).encode("utf-16"), "save the file as UTF-8"),
        "missing.jsonl": (None, "not found"),
    }
    for name, (data, expected) in cases.items():
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        config = make_config(
            dataset={"train": {"uri": f"file://{path}"}, "redact": []},
            output={"uri": f"file://{tmp_path / 'out'}/"},
        )
        termination = tmp_path / f"{name}.termination"
        proc = run_trainer(
            ["--config", str(write_config(config, tmp_path / "c.json")), "--validate-only"],
            env=subprocess_env(WHETSTONE_TERMINATION_LOG=str(termination)),
        )
        assert proc.returncode == EXIT_INVALID_DATA, (name, proc.stderr[-2000:])
        message = json.loads(termination.read_text())
        assert message["reason"] == "InvalidData"
        text = message["message"] + " ".join(message["dataReport"]["invalidLines"])
        assert expected in text, (name, message)
        assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
