"""What leaves the trainer quotes no value of a redacted kind: the data report's invalid lines
(an unknown role holding personal data, a malformed line), the termination message of a
failed and of a successful run, the data report and result at the output, and the model
card. Excerpts are redacted first, then cut short."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from whetstone_contract.config import DatasetSpec
from whetstone_contract.result import EXIT_FAILED, EXIT_INVALID_DATA, EXIT_OK
from whetstone_trainer.data import EXCERPT_CHARS, REASON_CHARS, prepare_text

from trainer_helpers import ConfigFactory, run_trainer, subprocess_env, write_config

pytestmark = pytest.mark.trainer

ALL_KINDS = ["secret", "email", "creditCard", "iban", "ipAddress", "phone"]
VALUES = [
    "alice@example.com",
    "ghp_0123456789abcdefghijABCDEFGHIJ012345",
    "4111 1111 1111 1111",
    "DE89 3704 0044 0532 0130 00",
    "192.168.1.100",
    "+1 415-555-0134",
]
PLACEHOLDER_PREFIX = "[REDACTED_"


def chat(i: int) -> str:
    return json.dumps(
        {
            "messages": [
                {"role": "user", "content": f"question {i}?"},
                {"role": "assistant", "content": f"answer {i}."},
            ]
        }
    )


def with_role(role: object) -> str:
    return json.dumps(
        {"messages": [{"role": role, "content": "hi"}, {"role": "assistant", "content": "ok"}]}
    )


def bad_lines() -> list[str]:
    return [
        with_role(VALUES[0]),  # the whole role is an address
        with_role(f"{VALUES[1]} {VALUES[2]}"),  # a role with a token, then a card
        with_role({"iban": VALUES[3], "ip": VALUES[4]}),  # not even a string
        with_role(VALUES[5] + " " + "x" * 5000),  # long: cut short after redaction
        '{"messages": [{"role": "user", "content": "mail ' + VALUES[0],  # malformed JSON
    ]


def data_file(tmp_path: Path, good: list[str]) -> Path:
    path = tmp_path / "pii.jsonl"
    path.write_text("\n".join([*good[:3], *bad_lines(), *good[3:]]) + "\n")
    return path


def no_value_in(text: str) -> None:
    for value in VALUES:
        assert value not in text, (value, text[:2000])
    # Nor the part that an excerpt cut short would have kept.
    assert "alice@" not in text and "ghp_0123" not in text and "4111 1111" not in text


def read(uri: str) -> bytes:
    return Path(uri.removeprefix("file://")).read_bytes()


def test_invalid_lines_quote_the_data_redacted_and_short(tmp_path: Path) -> None:
    path = data_file(tmp_path, [chat(i) for i in range(12)])
    spec = DatasetSpec.model_validate(
        {"train": {"uri": f"file://{path}"}, "validationSplit": 0.2, "redact": ALL_KINDS}
    )
    report = prepare_text(spec, read, seed=1).builder.report()
    lines = report.invalid_lines
    assert [line.split(":")[1] for line in lines] == ["4", "5", "6", "7", "8"]
    assert lines[0] == (
        "pii.jsonl:4: message 1 has unknown role '[REDACTED_EMAIL]' "
        "(expected system, user, assistant)"
    )
    assert "'[REDACTED_SECRET] [REDACTED_CREDIT_CARD]'" in lines[1]
    assert """role '{"iban": "[REDACTED_IBAN]", "ip": "[RED\u2026'""" in lines[2]
    assert lines[3].startswith("pii.jsonl:7: message 1 has unknown role '[REDACTED_PHONE] xxx")
    assert lines[4].startswith("pii.jsonl:8: invalid JSON")
    assert all(len(line) <= len("pii.jsonl:8: ") + REASON_CHARS for line in lines)
    no_value_in(json.dumps(report.wire()))
    # Redactions inside the report are not counted as redactions of the data.
    assert report.redacted == {}


def test_without_redaction_an_excerpt_is_still_short(tmp_path: Path) -> None:
    path = tmp_path / "roles.jsonl"
    path.write_text("\n".join([with_role("w" * 10_000), *[chat(i) for i in range(5)]]) + "\n")
    spec = DatasetSpec.model_validate({"train": {"uri": f"file://{path}"}, "validationSplit": 0.2})
    (line,) = prepare_text(spec, read, seed=1).builder.report().invalid_lines
    quoted = line.split("unknown role ", 1)[1].split(" (expected")[0]
    assert quoted == repr("w" * (EXCERPT_CHARS - 1) + "\u2026")


def test_a_failed_run_reports_nothing_unredacted(
    tmp_path: Path, make_config: ConfigFactory
) -> None:
    path = data_file(tmp_path, [chat(i) for i in range(12)])
    config = make_config(
        dataset={"train": {"uri": f"file://{path}"}, "onInvalid": "fail", "redact": ALL_KINDS},
        output={"uri": f"file://{tmp_path / 'out'}/"},
    )
    termination = tmp_path / "termination"
    proc = run_trainer(
        ["--config", str(write_config(config, tmp_path / "c.json")), "--validate-only"],
        env=subprocess_env(WHETSTONE_TERMINATION_LOG=str(termination)),
    )
    assert proc.returncode == EXIT_INVALID_DATA, proc.stderr[-3000:]
    message = json.loads(termination.read_text())
    assert message["reason"] == "InvalidData"
    assert "pii.jsonl:4: message 1 has unknown role '[REDACTED_EMAIL]'" in message["message"]
    no_value_in(termination.read_text())
    no_value_in(proc.stdout)


def test_an_error_message_is_redacted_before_it_is_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from whetstone_trainer.__main__ import _fail

    termination = tmp_path / "termination"
    monkeypatch.setenv("WHETSTONE_TERMINATION_LOG", str(termination))
    # Cut first, the message would end in "alice@"
    message = "x" * 2040 + " alice@example.com"
    assert _fail("Failed", message, EXIT_FAILED, redact=["email"]) == EXIT_FAILED
    failure = json.loads(termination.read_text())
    assert failure["message"] == "x" * 2040 + " [REDACT"


def test_a_trained_model_card_and_result_quote_nothing_unredacted(
    tmp_path: Path, make_config: ConfigFactory, seed_data: Path
) -> None:
    path = data_file(tmp_path, seed_data.read_text().splitlines())
    out = tmp_path / "out"
    config = make_config(
        dataset={"train": {"uri": f"file://{path}"}, "redact": ALL_KINDS},
        hyperparameters={"maxSteps": 4, "evalSteps": 4, "loggingSteps": 2},
        evaluation={"metrics": ["loss"]},
        output={"uri": f"file://{out}/", "checkpointEverySteps": 4},
    )
    termination = tmp_path / "termination"
    proc = run_trainer(
        ["--config", str(write_config(config, tmp_path / "c.json"))],
        env=subprocess_env(WHETSTONE_TERMINATION_LOG=str(termination)),
    )
    assert proc.returncode == EXIT_OK, proc.stderr[-3000:]
    result = json.loads(termination.read_text())
    assert result["dataReport"]["dropped"]["invalid"] == len(bad_lines())
    card = (out / "final" / "README.md").read_text()
    assert "[REDACTED_EMAIL]" in card and "unknown role" in card
    for text in (
        termination.read_text(),
        proc.stdout,
        card,
        (out / "data-report.json").read_text(),
        (out / "result.json").read_text(),
    ):
        no_value_in(text)
        assert PLACEHOLDER_PREFIX in text
