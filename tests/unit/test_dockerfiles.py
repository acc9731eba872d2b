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
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

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


def _base_images(name: str) -> list[str]:
    """The image of every FROM, build arguments replaced by their defaults."""
    args = _args(name)
    images = []
    for line in _lines(name):
        if line.startswith("FROM "):
            image = line.split()[1]
            images.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image))
    return images


@pytest.mark.parametrize("name", FILES)
def test_base_images_are_pinned_by_digest(name: str) -> None:
    images = _base_images(name)
    assert images
    for image in images:
        assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", image), f"{name}: {image}"
    text = (REPO_ROOT / name).read_text()
    # The command that gives the digest to put there is written beside it.
    assert "docker buildx imagetools inspect" in text
    assert "crane digest" in text


def test_both_images_start_from_the_same_base() -> None:
    assert set(_base_images("Dockerfile.operator")) == set(_base_images("Dockerfile.trainer"))
    assert len(set(_base_images("Dockerfile.operator"))) == 1


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


# ---------------------------------------------------------------- lock files

LOCKS = REPO_ROOT / "requirements"
PROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def lock_pins(name: str) -> dict[str, tuple[Version, list[str]]]:
    """name -> (version, sha256 hashes) of a lock file written by requirements/update.sh."""
    text = (LOCKS / name).read_text().replace("\\\n", " ")
    pins: dict[str, tuple[Version, list[str]]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.match(r"([A-Za-z0-9_.\-\[\],]+)==(\S+)(.*)", line)
        assert match, f"{name}: not a pin: {line}"
        package = canonicalize_name(match.group(1).split("[")[0])
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", match.group(3))
        pins[package] = (Version(match.group(2)), hashes)
    return pins


def wanted(*extras: str) -> list[Requirement]:
    reqs = [*PROJECT["dependencies"]]
    for extra in extras:
        reqs += PROJECT["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


IMAGE_LOCKS = {
    "operator.txt": ("operator",),
    "trainer-cuda.txt": ("trainer", "qlora"),
    "trainer-cpu.txt": ("trainer", "qlora"),
}


@pytest.mark.parametrize("lock", [*IMAGE_LOCKS, "deepspeed.txt", "build.txt"])
def test_every_locked_package_has_hashes(lock: str) -> None:
    pins = lock_pins(lock)
    assert pins
    unhashed = [package for package, (_, hashes) in pins.items() if not hashes]
    assert unhashed == [], f"{lock}: no hash for {unhashed}"


@pytest.mark.parametrize("lock", IMAGE_LOCKS)
def test_lock_holds_every_requirement_of_its_image(lock: str) -> None:
    """The lock is resolved from pyproject.toml's extras: every requirement is pinned, to a
    version that satisfies it (a requirement changed without requirements/update.sh fails)."""
    pins = lock_pins(lock) | lock_pins("deepspeed.txt")
    for req in wanted(*IMAGE_LOCKS[lock]):
        name = canonicalize_name(req.name)
        assert name in pins, f"{lock} lacks {req}: run requirements/update.sh"
        version = pins[name][0]
        if name == "torch" and lock == "trainer-cpu.txt":
            assert version.local == "cpu", version
            version = Version(version.public)
        assert req.specifier.contains(version, prereleases=True), (
            f"{lock}: {name}=={version}, {req}"
        )


def test_operator_lock_has_no_trainer_package() -> None:
    assert not {"torch", "transformers", "deepspeed", "peft"} & set(lock_pins("operator.txt"))


def test_trainer_locks_leave_deepspeed_to_its_own_step() -> None:
    """DeepSpeed is built once torch is installed (its ops compile against it): it is in
    deepspeed.txt alone, the dependencies it declares in the trainer locks."""
    (ds,) = [r for r in wanted("trainer") if r.name == "deepspeed"]
    assert set(lock_pins("deepspeed.txt")) == {"deepspeed"}
    assert ds.specifier.contains(lock_pins("deepspeed.txt")["deepspeed"][0])
    for lock in ("trainer-cuda.txt", "trainer-cpu.txt"):
        pins = lock_pins(lock)
        assert "deepspeed" not in pins
        assert {"ninja", "py-cpuinfo", "hjson", "einops", "msgpack", "psutil"} <= set(pins), lock
    assert "nvidia-ml-py" in lock_pins("trainer-cuda.txt")


def test_build_lock_satisfies_the_build_backend() -> None:
    build = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["build-system"]
    pins = lock_pins("build.txt")
    for req in map(Requirement, build["requires"]):
        assert req.specifier.contains(pins[canonicalize_name(req.name)][0]), req


def _runs(name: str, stage: int | None = None) -> list[str]:
    """The shell commands of the RUN instructions (of one stage: 0 = the first FROM)."""
    commands, current = [], -1
    for line in _lines(name):
        if line.startswith("FROM "):
            current += 1
        elif line.startswith("RUN ") and stage in (None, current):
            commands += [c.strip() for c in line.removeprefix("RUN ").split("&&")]
    return commands


@pytest.mark.parametrize("name", FILES)
def test_pip_installs_only_hashed_locks_and_the_project(name: str) -> None:
    """Third-party packages come only from the hashed locks; the project's own wheel is
    installed without dependencies; nothing lets pip resolve or build unchecked."""
    locks = set()
    for command in _runs(name):
        if not re.search(r"\bpip (install|wheel)\b", command):
            continue
        assert "--no-deps" in command, f"{name}: {command}"
        requirement_files = re.findall(r"-r\s+\"?([^\s\"]+)", command)
        if requirement_files:
            assert "--require-hashes" in command, f"{name}: {command}"
            locks.update(requirement_files)
            continue
        targets = [w for w in command.split() if not w.startswith("-") and w not in {"pip"}]
        targets = [w for w in targets if w not in {"install", "wheel", "/wheels", "python"}]
        assert targets in (["."], ["/wheels/*.whl"]), f"{name}: {command}"
        if command.split()[-1] == ".":
            assert "--no-build-isolation" in command, f"{name}: builds with unhashed setuptools"
    assert "requirements/build.txt" in locks
    copied = {dest: srcs[0] for srcs, dest in _copies(name) if len(srcs) == 1}
    for lock in locks:
        lock = _args(name).get(lock.strip('$"{}'), lock)
        assert (REPO_ROOT / copied.get(lock, lock)).is_file(), lock


def test_operator_image_installs_its_lock() -> None:
    text = " ".join(_lines("Dockerfile.operator"))
    assert "COPY requirements/operator.txt" in text
    assert re.search(r"--require-hashes --no-deps --only-binary :all: -r /tmp/operator.txt", text)


def test_trainer_image_installs_a_trainer_lock_then_deepspeed() -> None:
    args = _args("Dockerfile.trainer")
    assert args["TRAINER_LOCK"] == "requirements/trainer-cuda.txt"
    header = (REPO_ROOT / "Dockerfile.trainer").read_text()
    assert "--build-arg TRAINER_LOCK=requirements/trainer-cpu.txt" in header
    build = _runs("Dockerfile.trainer", stage=0)
    order = [c for c in build if "pip install" in c]
    assert '-r "$TRAINER_LOCK"' in order[1]
    assert "-r requirements/deepspeed.txt" in order[2]
    assert "DS_BUILD_CPU_ADAM=1" in order[2]
    # the build checks that the op is compiled in, not left to a compiler at run time
    assert any("installed_ops" in c and "cpu_adam" in c for c in build)


def test_trainer_image_has_no_compiler_at_run_time() -> None:
    """Compilers (DeepSpeed's ops) live in the build stage only; the image copies the virtual
    environment and checks that no compiler or git is on its PATH."""
    stages = [ln for ln in _lines("Dockerfile.trainer") if ln.startswith("FROM ")]
    assert len(stages) == 2 and stages[0].endswith(" AS build")
    build, final = _runs("Dockerfile.trainer", stage=0), _runs("Dockerfile.trainer", stage=1)
    assert any(re.search(r"apt-get install .*\bg\+\+", c) for c in build)
    tools = re.compile(r"\b(build-essential|gcc|g\+\+|clang|git|make|python3-dev)\b")
    assert not [c for c in final if "apt-get" in c or "pip" in c]
    final_text = " ".join(final)
    assert "for tool in gcc cc c++ g++ git" in final_text
    assert "COPY --from=build /opt/venv /opt/venv" in " ".join(_lines("Dockerfile.trainer"))
    assert not tools.search(final_text.replace("for tool in gcc cc c++ g++ git", ""))


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
                target.parent.mkdir(parents=True, exist_ok=True)
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
