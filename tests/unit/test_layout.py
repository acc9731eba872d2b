"""The shape of the project: the operator never imports torch, `operator/` is never a package,
the contract imports neither side and the trainer never imports the operator."""

from __future__ import annotations

import ast
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
        "contract",
        "operator",
        "trainer",
        "local",
        "crds",
        "charts",
        "manifests",
        "tests",
        "Dockerfile.operator",
        "Dockerfile.trainer",
        ".ci/run",
    ):
        assert (REPO_ROOT / name).exists(), name


def test_contract_imports_neither_side() -> None:
    code = (
        "import sys, whetstone_contract.base, whetstone_contract.config, "
        "whetstone_contract.result; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'kopf', 'whetstone_operator', 'whetstone_trainer', 'whetstone_local')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _imported_packages(folder: str) -> dict[str, set[str]]:
    """Top-level packages each module under `folder` imports (lazy imports included)."""
    out: dict[str, set[str]] = {}
    for path in sorted((REPO_ROOT / folder).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        out[str(path.relative_to(REPO_ROOT))] = names
    return out


def test_trainer_never_imports_the_operator() -> None:
    offenders = {
        module: sorted(names & {"whetstone_operator", "whetstone_local", "kopf"})
        for module, names in _imported_packages("trainer/src").items()
        if names & {"whetstone_operator", "whetstone_local", "kopf"}
    }
    assert offenders == {}


def test_operator_never_imports_the_trainer() -> None:
    offenders = {
        module: sorted(names & {"whetstone_trainer", "whetstone_local"})
        for module, names in _imported_packages("operator/src").items()
        if names & {"whetstone_trainer", "whetstone_local"}
    }
    assert offenders == {}


def _readme_layout() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("## Layout", 1)[1]
    return section.split("```", 2)[1]


def test_the_readme_layout_names_every_module_and_nothing_that_is_gone() -> None:
    import re

    layout = _readme_layout()
    packages = {
        "operator/src/whetstone_operator": "whetstone_operator",
        "contract/src/whetstone_contract": "whetstone_contract",
        "trainer/src/whetstone_trainer": "whetstone_trainer",
        "local/src/whetstone_local": "whetstone_local",
    }
    missing = []
    for folder in packages:
        root = REPO_ROOT / folder
        assert f"{folder}/" in layout, folder
        for path in sorted(root.iterdir()):
            if path.name in ("__init__.py", "py.typed", "__pycache__", "README.md"):
                continue
            shown = f"{path.name}/" if path.is_dir() else path.name
            if not re.search(rf"(?<![\w/]){re.escape(shown)}", layout):
                missing.append(f"{folder}/{shown}")
    assert missing == [], f"not in the README's layout: {missing}"
    named = set(re.findall(r"(?<![\w/.])([a-z_]+\.py)\b", layout))
    existing = {p.name for folder in packages for p in (REPO_ROOT / folder).rglob("*.py")}
    assert named - existing == set(), "the README's layout names modules that do not exist"
