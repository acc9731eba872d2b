"""Helpers of the trainer tier: paths, ports, trainer subprocesses, config files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from whetstone_contract.config import TrainerConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
SEED_DATA = REPO_ROOT / "manifests" / "samples" / "data" / "tiny-chat.jsonl"
TINY_SAMPLE = REPO_ROOT / "manifests" / "samples" / "finetunejob-tiny.yaml"

ConfigFactory = Callable[..., TrainerConfig]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for trainer subprocesses: sources importable, one thread each."""
    env = dict(os.environ)
    paths = [str(REPO_ROOT / part / "src") for part in ("contract", "trainer", "operator", "local")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_trainer(
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    module: str = "whetstone_trainer",
) -> subprocess.CompletedProcess[str]:
    """Run `python -m whetstone_trainer ARGS` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=env or subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
    )


def last_json_line(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line))
    raise AssertionError(f"no JSON line in output:\n{text[-3000:]}")


def write_config(config: TrainerConfig, path: Path) -> Path:
    path.write_text(json.dumps(config.wire(), indent=2))
    return path
