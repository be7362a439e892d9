"""Read a run's metrics.jsonl back, grouped by record kind, for the curves and the diagnosis."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

KINDS = ("step", "epoch", "layers")


def read_metrics(metrics_path: Path) -> dict[str, list[dict[str, Any]]]:
    """metrics.jsonl's records grouped by kind: always "step", "epoch" and "layers", plus any other
    kind found. A line that is not a JSON object (a run killed mid-write leaves half a line) is skipped.

    Raises:
        OSError: the file cannot be read.
    """
    grouped: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    for line in Path(metrics_path).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            grouped.setdefault(str(record.get("kind")), []).append(record)
    return grouped
