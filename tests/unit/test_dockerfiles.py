"""Static checks of the Dockerfiles (no Docker engine here; the e2e tier builds them)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

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


def _copies(name: str) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context (not from another stage)."""
    out = []
    for line in _lines(name):
        words = line.split()
        if words[0] != "COPY" or any(w.startswith("--from=") for w in words):
            continue
        paths = [w for w in words[1:] if not w.startswith("--")]
        out.append((paths[:-1], paths[-1]))
    return out


def test_operator_image_copies_no_trainer_file() -> None:
    sources = [src for srcs, _ in _copies("Dockerfile.operator") for src in srcs]
    assert "contract/" in sources
    assert "operator/" in sources
    offenders = [s for s in sources if s.startswith(("trainer", "local", ".", "*"))]
    assert offenders == [], f"Dockerfile.operator copies {offenders}"


IMAGE_PACKAGES = {
    "Dockerfile.operator": {"whetstone_contract", "whetstone_operator"},
    "Dockerfile.trainer": {"whetstone_contract", "whetstone_trainer"},
}


@pytest.mark.parametrize("name", FILES)
def test_image_installs_the_contract(name: str, tmp_path: Path) -> None:
    """Build the project's wheel from exactly what the image copies into /src: it holds the
    contract and the image's own package, nothing else; the image checks the import."""
    text = " ".join(_lines(name))
    assert "import whetstone_contract.config" in text
    assert re.search(r'pip (wheel|install) [^&]*(\s|")\.(\[[\w,]+\])?"?(\s|$)', text), text
    context = tmp_path / "src"
    context.mkdir()
    for sources, destination in _copies(name):
        if destination.startswith("/"):
            continue  # outside the build folder: not part of the wheel
        for source in sources:
            origin, target = REPO_ROOT / source, context / source
            if origin.is_dir():
                shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(origin, target)
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    proc = subprocess.run(
        [*build, "-w", str(wheels), str(context)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    packages = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert packages == IMAGE_PACKAGES[name]
    assert {f"{p}/py.typed" for p in packages} <= set(names)
