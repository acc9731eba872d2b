#!/usr/bin/env python3
"""Find or install the Prometheus server that the Rollout analysis tests query for real.

Resolution order: ``$WHETSTONE_PROMETHEUS`` (a path to the binary), ``prometheus`` on
``PATH``, ``/usr/bin/prometheus``; otherwise Debian's ``prometheus`` package is installed
(``apt-get install -y --no-install-recommends prometheus``; its service is not started).
Idempotent: a second run only looks the binary up.

Usage::

    python hack/prometheus.py            # find or install, print the path and timings
    python hack/prometheus.py --print-env

Importable: :func:`find_or_install` returns the binary's path.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provision import ProvisionError, apt_install

PACKAGE = "prometheus"
CANDIDATES = (Path("/usr/bin/prometheus"),)


def log(message: str) -> None:
    print(f"[prometheus] {message}", file=sys.stderr, flush=True)


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find() -> Path | None:
    """The Prometheus binary, if one is already here."""
    override = os.environ.get("WHETSTONE_PROMETHEUS")
    if override:
        path = Path(override)
        if not _executable(path):
            raise ProvisionError(f"WHETSTONE_PROMETHEUS={override} is not an executable file")
        return path
    found = shutil.which("prometheus")
    if found:
        return Path(found)
    return next((p for p in CANDIDATES if _executable(p)), None)


def version(binary: Path) -> str:
    out = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    first = (out.stdout or out.stderr).strip().splitlines()
    return first[0] if first else "unknown version"


def find_or_install() -> Path:
    """Path of the Prometheus binary, installing Debian's package when there is none."""
    started = time.monotonic()
    binary = find()
    if binary is not None:
        log(f"found {binary} in {time.monotonic() - started:.1f}s")
        return binary
    log(f"not found: apt-get install {PACKAGE} ...")
    apt_install([PACKAGE])
    binary = find()
    if binary is None:
        raise ProvisionError(f"apt-get installed {PACKAGE} but no prometheus binary was found")
    log(f"installed {binary} in {time.monotonic() - started:.1f}s")
    return binary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--print-env", action="store_true", help="print `export WHETSTONE_PROMETHEUS=...`"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        binary = find_or_install()
        text = version(binary)
    except ProvisionError as exc:
        log(f"FAILED: {exc}")
        return 1
    log(f"{binary}: {text} (total {time.monotonic() - started:.1f}s)")
    if args.print_env:
        print(f"export WHETSTONE_PROMETHEUS={binary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
