"""The security scanners' set-up: run by the test command, exceptions written where they apply.

The scanners themselves run in hack/scan.sh (bandit on the sources, checkov on the rendered
chart); the chart's exceptions are checked in test_chart.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

SOURCES = [REPO_ROOT / part / "src" for part in ("operator", "contract", "trainer", "local")]
NOSEC = re.compile(r"#\s*nosec\b(.*)$")


def _commands(script: str) -> list[str]:
    lines = (REPO_ROOT / script).read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def test_the_test_command_runs_both_scanners() -> None:
    commands = _commands("hack/test.sh")
    assert "./hack/scan.sh bandit" in commands
    assert "./hack/scan.sh checkov" in commands
    # bandit as soon as the code is linted; checkov once helm is provisioned
    assert commands.index("./hack/scan.sh bandit") < commands.index("$PY hack/provision.py")
    assert commands.index("./hack/scan.sh checkov") > commands.index("$PY hack/provision.py")


def test_scan_covers_every_source_tree() -> None:
    script = (REPO_ROOT / "hack" / "scan.sh").read_text()
    for source in SOURCES:
        assert str(source.relative_to(REPO_ROOT)) in script
    # Only asserts are skipped by check id everywhere; the rest is skipped on its line.
    assert re.findall(r"--skip (\S+)", script) == ["B101"]
    assert "--skip-download" in script  # checkov offline


def test_scanners_are_installed_pinned_outside_the_project_venv() -> None:
    script = (REPO_ROOT / "hack" / "install.sh").read_text()
    assert re.search(r"bandit==[\d.]+", script)
    assert re.search(r"checkov==[\d.]+", script)
    assert "scanners" in script and ".venv/bin/python -m pip install -q $wanted" not in script


def _nosec_lines() -> list[tuple[Path, int, str]]:
    found = []
    for source in SOURCES:
        for path in sorted(source.rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                match = NOSEC.search(line)
                if match:
                    found.append((path, number, match.group(1)))
    return found


@pytest.mark.parametrize(
    "line",
    _nosec_lines(),
    ids=lambda item: f"{item[0].relative_to(REPO_ROOT)}:{item[1]}",
)
def test_every_bandit_exception_names_its_check_and_reason(line: tuple[Path, int, str]) -> None:
    _, _, rest = line
    # bandit reads test ids up to the next '#': the reason goes after it.
    match = re.fullmatch(r"\s+(B\d{3}(?:,\s*B\d{3})*)\s+#\s+(.+)", rest)
    assert match, f"write `# nosec Bxxx # why`, not `# nosec{rest}`"
    assert len(match.group(2).split()) >= 4, "say why the finding is accepted"
