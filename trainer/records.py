"""What a run leaves in its folder: `metrics.jsonl` (a line per log interval and per epoch) and
`summary.json` (written atomically, so a reader never sees half of it)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

RUN_FILES = ("metrics.jsonl", "summary.json")


def json_safe(value: Any) -> Any:
    """JSON has no NaN or infinity: write them as null (a diverged run's loss, say)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


class MetricsLog:
    """Appends one JSON object per line and flushes it, so a killed run keeps what it logged."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("a", encoding="utf-8")

    def log(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(json_safe(record)) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file beside `path`, fsync it, then rename it over `path`."""
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", encoding="utf-8") as file:
        json.dump(json_safe(payload), file, indent=2)
        file.write("\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def previous_run(run_dir: Path) -> Path | None:
    """The first file of an earlier run found in `run_dir`, if any: such a folder is never reused."""
    for name in RUN_FILES:
        if (run_dir / name).exists():
            return run_dir / name
    return None


def write_lines_atomic(path: Path, lines: list[str]) -> None:
    """Replace `path` with `lines` through a temporary file and a rename: never half-written."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text("".join(line + "\n" for line in lines))
    temporary.replace(path)
