"""Shared test settings: the repository root, tier markers applied by folder, and the header
reader of the sample corpora."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def sample_header(path: Path) -> dict[str, str]:
    """The leading `# key: value` comment lines of a sample (what it must produce)."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.startswith("# "):
            break
        key, sep, value = line[2:].partition(": ")
        if sep:
            out[key] = value
    return out


_TIER_BY_FOLDER = {"unit": "unit", "integration": "integration", "trainer": "trainer", "e2e": "e2e"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(REPO_ROOT / "tests").parts
        tier = _TIER_BY_FOLDER.get(parts[0]) if parts else None
        if tier and not any(m.name == tier for m in item.iter_markers()):
            item.add_marker(getattr(pytest.mark, tier))
