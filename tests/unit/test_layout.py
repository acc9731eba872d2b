"""The shape of the project: the operator never imports torch, `operator/` is never a package."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_operator_never_imports_torch() -> None:
    code = (
        "import sys, whetstone_operator.__main__, whetstone_operator.webhooks, "
        "whetstone_operator.crdgen; "
        "heavy = sorted(m for m in ('torch', 'transformers', 'deepspeed', 'peft') "
        "if m in sys.modules); print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_folder_named_operator_is_a_package() -> None:
    offenders = [
        str(p.relative_to(REPO_ROOT))
        for p in REPO_ROOT.rglob("operator/__init__.py")
        if ".venv" not in p.parts
    ]
    assert offenders == []
    import operator

    assert operator.__file__ is not None and "site-packages" not in operator.__file__
    assert hasattr(operator, "itemgetter"), "the stdlib module must win"


def test_top_level_layout() -> None:
    for name in (
        "pyproject.toml",
        "README.md",
        "operator",
        "trainer",
        "crds",
        "charts",
        "manifests",
        "tests",
        "Dockerfile.operator",
        "Dockerfile.trainer",
        ".ci/run",
    ):
        assert (REPO_ROOT / name).exists(), name
