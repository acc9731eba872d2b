"""Static checks of the Dockerfiles (no Docker engine here; the e2e tier builds them)."""

from __future__ import annotations

import importlib.util
import json
import re
import tomllib

import pytest

from tests.conftest import REPO_ROOT

FILES = {"Dockerfile.operator": "whetstone_operator", "Dockerfile.trainer": "whetstone_trainer"}


def _lines(name: str) -> list[str]:
    text = (REPO_ROOT / name).read_text().replace("\\\n", " ")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def _args(name: str) -> dict[str, str]:
    out = {}
    for line in _lines(name):
        match = re.match(r"ARG (\w+)=(\S*)", line)
        if match:
            out[match.group(1)] = match.group(2).strip('"')
    return out


@pytest.mark.parametrize("name", FILES)
def test_base_images_are_pinned(name: str) -> None:
    args = _args(name)
    for line in _lines(name):
        if not line.startswith("FROM "):
            continue
        image = line.split()[1]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert ":" in image.split("/")[-1] or "@sha256:" in image, f"{name}: unpinned {image}"
        assert not image.endswith(":latest"), f"{name}: {image}"


@pytest.mark.parametrize("name", FILES)
def test_runs_as_a_numeric_non_root_user(name: str) -> None:
    users = [ln.split()[1] for ln in _lines(name) if ln.startswith("USER ")]
    assert users, f"{name} never sets USER"
    assert users[-1].isdigit() and int(users[-1]) != 0


@pytest.mark.parametrize("name", FILES)
def test_entry_point_exists_in_the_package(name: str) -> None:
    (entry,) = [ln for ln in _lines(name) if ln.startswith("ENTRYPOINT")]
    argv = json.loads(entry.removeprefix("ENTRYPOINT").strip())
    assert argv[:2] == ["python", "-m"]
    assert argv[2] == FILES[name]
    assert importlib.util.find_spec(f"{argv[2]}.__main__") is not None


@pytest.mark.parametrize("name", FILES)
def test_oci_labels(name: str) -> None:
    text = " ".join(_lines(name))
    for key in ("title", "source", "licenses", "version"):
        assert f"org.opencontainers.image.{key}=" in text, key


def test_operator_image_never_installs_torch() -> None:
    text = " ".join(_lines("Dockerfile.operator"))
    assert "torch" not in text.replace("'torch' not in sys.modules", "")
    assert ".[trainer" not in text


def test_operator_image_installs_every_operator_requirement() -> None:
    """The image builds wheels for a list of its own (no pip resolve of the project's extras):
    every requirement of the base install and the operator extra has to be in it."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["operator"]]
    text = " ".join(_lines("Dockerfile.operator"))
    missing = [req for req in wanted if f'"{req}"' not in text]
    assert missing == [], f"Dockerfile.operator does not install {missing}"
