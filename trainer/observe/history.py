"""Read a run's files back: metrics.jsonl grouped by record kind (for the curves, the diagnosis and
the sweep report) and its JSON files (summary.json and the like)."""
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
        if (record := parse_record(line)) is not None:
            grouped.setdefault(str(record.get("kind")), []).append(record)
    return grouped


def parse_record(line: str) -> dict[str, Any] | None:
    """One metrics.jsonl line as its record; None for a line that is not a JSON object (half a line)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`, or None when it is absent, cut short by a kill, or not an object."""
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None
