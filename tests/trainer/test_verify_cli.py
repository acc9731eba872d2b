"""`python -m whetstone_trainer verify`: the verdict the operator's verify pod hands back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from whetstone_contract.result import EXIT_OK, EXIT_VERIFY_FAILED
from whetstone_trainer.artifact import seal

pytestmark = pytest.mark.trainer


def _artifact(folder: Path) -> str:
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights" * 100)
    (folder / "config.json").write_text("{}")
    return seal(folder, {"name": "cli-test"})


def _verify(uri: str, digest: str, log: Path) -> tuple[int, dict[str, object]]:
    proc = subprocess.run(
        [sys.executable, "-m", "whetstone_trainer", "verify", uri, "--digest", digest],
        capture_output=True,
        text=True,
        check=False,
        env={"WHETSTONE_TERMINATION_LOG": str(log), "PATH": "/usr/bin:/bin"},
    )
    return proc.returncode, json.loads(log.read_text())


def test_verify_ok_and_tampered(tmp_path: Path) -> None:
    folder = tmp_path / "final"
    digest = _artifact(folder)
    code, verdict = _verify(f"file://{folder}", digest, tmp_path / "ok.log")
    assert (code, verdict["ok"], verdict["digest"]) == (EXIT_OK, True, digest)

    (folder / "model.safetensors").write_bytes(b"tampered")
    code, verdict = _verify(f"file://{folder}", digest, tmp_path / "bad.log")
    assert code == EXIT_VERIFY_FAILED
    assert verdict["ok"] is False
    assert any("model.safetensors" in str(p) for p in verdict["problems"])  # type: ignore[union-attr]


def test_verify_missing_artifact(tmp_path: Path) -> None:
    code, verdict = _verify(f"file://{tmp_path}/nothing/", "sha256:" + "0" * 64, tmp_path / "m.log")
    assert code == EXIT_VERIFY_FAILED and verdict["ok"] is False
