"""The import layers in pyproject.toml hold, and `lint-imports` fails on a wrong import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

SOURCES = ("contract", "operator", "trainer", "local")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(str(root / s / "src") for s in SOURCES)
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=300,
    )


def copy_tree(tmp_path: Path) -> Path:
    for source in SOURCES:
        shutil.copytree(
            REPO_ROOT / source / "src",
            tmp_path / source / "src",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    shutil.copy2(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_every_layer() -> None:
    proc = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


WRONG_IMPORTS = {
    "a decision talks to the API": (
        "operator/src/whetstone_operator/reconcile/core.py",
        "from whetstone_operator import k8s",
        "whetstone_operator.reconcile is not allowed to import whetstone_operator.k8s",
    ),
    "a builder imports kopf": (
        "operator/src/whetstone_operator/render/workload.py",
        "import kopf",
        "whetstone_operator.render is not allowed to import kopf",
    ),
    "the trainer imports the operator": (
        "trainer/src/whetstone_trainer/data.py",
        "import whetstone_operator.api",
        "whetstone_trainer is not allowed to import whetstone_operator",
    ),
    "the contract imports torch": (
        "contract/src/whetstone_contract/config.py",
        "import torch",
        "whetstone_contract is not allowed to import torch",
    ),
    "a lower layer imports the handlers": (
        "operator/src/whetstone_operator/k8s.py",
        "from whetstone_operator.handlers import runtime",
        "whetstone_operator.k8s is not allowed to import whetstone_operator.handlers",
    ),
}


@pytest.mark.parametrize("case", WRONG_IMPORTS, ids=list(WRONG_IMPORTS))
def test_a_wrong_import_breaks_a_contract(tmp_path: Path, case: str) -> None:
    module, line, message = WRONG_IMPORTS[case]
    root = copy_tree(tmp_path)
    target = root / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    proc = lint(root)
    assert proc.returncode != 0, proc.stdout
    assert message in proc.stdout, proc.stdout
