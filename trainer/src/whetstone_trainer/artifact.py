"""The artifact: weights (merged or adapter) as safetensors, the tokenizer, a model card with
a loss-curve plot, and a manifest holding the sha256 of every file.

The manifest's own sha256 is the artifact digest recorded in the ModelVersion. A COMPLETE
marker holding that digest is written after every other file (locally the whole folder is
also swapped in with one rename), so a partial artifact is never taken for a complete one.
`verify` recomputes everything.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from whetstone_trainer.storage import LocalLocation, Location, StorageError, open_location

MANIFEST = "manifest.json"
COMPLETE = "COMPLETE"
MANIFEST_KIND = "whetstone.dev/artifact-v1"
CARD = "README.md"
LOSS_PLOT = "loss-curve.svg"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def build_manifest(folder: Path, info: dict[str, Any]) -> bytes:
    """manifest.json bytes: every file (but the manifest and marker) with size and sha256."""
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in (MANIFEST, COMPLETE):
            continue
        files.append(
            {"path": rel, "size": path.stat().st_size, "sha256": "sha256:" + sha256_file(path)}
        )
    manifest = {"kind": MANIFEST_KIND, **info, "files": files}
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def seal(folder: Path, info: dict[str, Any]) -> str:
    """Write manifest.json then COMPLETE (holding the digest) into `folder`; returns the digest."""
    manifest = build_manifest(folder, info)
    (folder / MANIFEST).write_bytes(manifest)
    digest = sha256_bytes(manifest)
    (folder / COMPLETE).write_text(digest + "\n")
    return digest


def publish(folder: Path, destination: Location) -> None:
    """Copy a sealed folder to its destination, COMPLETE last."""
    destination.upload_dir(folder, last=COMPLETE)


@dataclass
class VerifyReport:
    """What `verify` found."""

    ok: bool
    digest: str | None = None
    problems: list[str] = field(default_factory=list)
    files: int = 0


def verify_folder(folder: Path, expected_digest: str | None = None) -> VerifyReport:
    """Recompute the manifest digest and every file's sha256 in a local folder."""
    problems: list[str] = []
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return VerifyReport(ok=False, problems=[f"{MANIFEST} is missing"])
    raw = manifest_path.read_bytes()
    digest = sha256_bytes(raw)
    marker = folder / COMPLETE
    if not marker.is_file():
        problems.append(f"{COMPLETE} marker is missing: the artifact is incomplete")
    elif marker.read_text().strip() != digest:
        problems.append(f"{COMPLETE} names {marker.read_text().strip()}, manifest is {digest}")
    if expected_digest is not None and expected_digest != digest:
        problems.append(f"manifest digest is {digest}, expected {expected_digest}")
    try:
        manifest = json.loads(raw)
        entries = manifest["files"]
    except (ValueError, KeyError, TypeError) as exc:
        return VerifyReport(ok=False, digest=digest, problems=[*problems, f"bad manifest: {exc}"])
    listed = set()
    for entry in entries:
        rel = entry["path"]
        listed.add(rel)
        path = folder / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
            continue
        actual = "sha256:" + sha256_file(path)
        if actual != entry["sha256"]:
            problems.append(f"{rel}: sha256 {actual} != manifest {entry['sha256']}")
    extra = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.relative_to(folder).as_posix() not in listed | {MANIFEST, COMPLETE}
    )
    problems.extend(f"{rel}: not in the manifest" for rel in extra)
    return VerifyReport(ok=not problems, digest=digest, problems=problems, files=len(entries))


def verify(uri: str, expected_digest: str | None = None) -> VerifyReport:
    """Verify the artifact at a file://, pvc:// or s3:// URI."""
    try:
        location = open_location(uri)
        if isinstance(location, LocalLocation):
            if not location.path.is_dir():
                return VerifyReport(ok=False, problems=[f"{uri}: no artifact here"])
            return verify_folder(location.path, expected_digest)
        with tempfile.TemporaryDirectory(prefix="whetstone-verify-") as tmp:
            location.download_dir(Path(tmp))
            return verify_folder(Path(tmp), expected_digest)
    except StorageError as exc:
        return VerifyReport(ok=False, problems=[str(exc)])


# --- model card ---------------------------------------------------------------------------


def loss_curve_svg(
    train: Sequence[tuple[int, float]],
    evaluation: Sequence[tuple[int, float]],
    width: int = 640,
    height: int = 320,
) -> str:
    """A small self-contained SVG line chart of training (and validation) loss by step."""
    pad_l, pad_r, pad_t, pad_b = 56, 16, 24, 40
    points = list(train) + list(evaluation)
    if not points:
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
            '<text x="20" y="40">no loss recorded</text></svg>\n'
        )
    max_step = max(s for s, _ in points) or 1
    losses = [v for _, v in points]
    lo, hi = min(losses), max(losses)
    if hi - lo < 1e-9:
        hi = lo + 1.0

    def xy(step: int, value: float) -> tuple[float, float]:
        x = pad_l + (width - pad_l - pad_r) * step / max_step
        y = pad_t + (height - pad_t - pad_b) * (1 - (value - lo) / (hi - lo))
        return round(x, 1), round(y, 1)

    def polyline(series: Sequence[tuple[int, float]], colour: str) -> str:
        coords = " ".join(f"{x},{y}" for x, y in (xy(s, v) for s, v in series))
        dots = (
            "".join(
                f'<circle cx="{x}" cy="{y}" r="2.5" fill="{colour}"/>'
                for x, y in (xy(s, v) for s, v in series)
            )
            if len(series) < 40
            else ""
        )
        return (
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>' + dots
        )

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<line x1="{pad_l}" y1="{height - pad_b}" x2="{width - pad_r}" y2="{height - pad_b}" '
        'stroke="#444"/>',
        f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{height - pad_b}" stroke="#444"/>',
    ]
    for i in range(5):
        value = lo + (hi - lo) * i / 4
        _, y = xy(0, value)
        parts.append(f'<text x="{pad_l - 6}" y="{y + 4}" text-anchor="end">{value:.2f}</text>')
        parts.append(f'<line x1="{pad_l}" y1="{y}" x2="{width - pad_r}" y2="{y}" stroke="#ddd"/>')
    for i in range(5):
        step = round(max_step * i / 4)
        x, _ = xy(step, lo)
        parts.append(f'<text x="{x}" y="{height - pad_b + 16}" text-anchor="middle">{step}</text>')
    parts.append(
        f'<text x="{(width + pad_l) / 2}" y="{height - 6}" text-anchor="middle">step</text>'
    )
    if train:
        parts.append(polyline(train, "#1f77b4"))
        parts.append(
            f'<text x="{width - pad_r}" y="{pad_t - 8}" text-anchor="end" '
            'fill="#1f77b4">training loss</text>'
        )
    if evaluation:
        parts.append(polyline(evaluation, "#d62728"))
        parts.append(f'<text x="{pad_l + 4}" y="{pad_t - 8}" fill="#d62728">validation loss</text>')
    parts.append("</svg>\n")
    return "\n".join(parts)


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.extend("| " + " | ".join(escape(str(c)) for c in row) + " |" for row in rows)
    return "\n".join(lines)


def model_card(
    *,
    title: str,
    lineage: dict[str, Any],
    hyperparameters: dict[str, Any],
    data_report: dict[str, Any],
    metrics: dict[str, float],
    baseline: dict[str, float] | None,
    test_metrics: dict[str, float] | None,
    artifact_format: str,
    created: datetime | None = None,
) -> str:
    """README.md of the artifact."""
    created = created or datetime.now(UTC)
    metric_rows = []
    for name, value in metrics.items():
        base = baseline.get(name) if baseline else None
        delta = "" if base is None else f"{value - base:+.4f}"
        metric_rows.append((name, f"{value:.4f}", "" if base is None else f"{base:.4f}", delta))
    sections = [
        f"# {title}",
        "",
        f"Fine-tuned with Whetstone on {created.strftime('%Y-%m-%d %H:%M UTC')}. "
        f"Format: **{artifact_format}** "
        + (
            "(weights with the adapter merged in)."
            if artifact_format == "merged"
            else "(a LoRA adapter to load on the base model)."
        ),
        "",
        "## Lineage",
        "",
        _table(sorted(lineage.items()), ["field", "value"]),
        "",
        "## Metrics (validation)",
        "",
        _table(metric_rows, ["metric", "fine-tuned", "base model", "delta"]),
    ]
    if test_metrics:
        sections += [
            "",
            "## Metrics (test)",
            "",
            _table([(k, f"{v:.4f}") for k, v in test_metrics.items()], ["metric", "value"]),
        ]
    sections += [
        "",
        "## Training loss",
        "",
        f"![loss curve]({LOSS_PLOT})",
        "",
        "## Hyperparameters",
        "",
        _table(sorted(hyperparameters.items()), ["name", "value"]),
        "",
        "## Data report",
        "",
        "```json",
        json.dumps(data_report, indent=2, sort_keys=True),
        "```",
        "",
        f"Every file is listed with its sha256 in `{MANIFEST}`; the artifact digest is the "
        f"sha256 of `{MANIFEST}`. Check it with `python -m whetstone_trainer verify URI "
        "--digest sha256:...`.",
        "",
    ]
    return "\n".join(sections)
