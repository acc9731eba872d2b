"""The JSON every benchmark script writes: machine, date, the command that produced it, rows."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def write_report(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "machine": f"{platform.node()} {os.cpu_count()} cores",
                "date": datetime.now(UTC).isoformat(),
                "command": " ".join(sys.argv),
                "rows": rows,
            },
            indent=2,
        )
    )
