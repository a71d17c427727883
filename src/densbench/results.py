"""result.json: the unit of truth of a run, written atomically, read by reports and resume."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"
STATUSES = ("ok", "failed", "skipped", "interrupted")


def _clean(value: Any) -> Any:
    # JSON has no NaN/inf: write them as null so every reader can parse the file
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json_atomic(path: str | Path, payload: dict) -> Path:
    """Write JSON to a temporary file in the same directory and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_clean(payload), f, indent=2, sort_keys=False, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_result(run_dir: str | Path) -> dict | None:
    """The run's result.json, or None when absent or unreadable."""
    try:
        with open(Path(run_dir) / RESULT_FILE) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def config_hash(config: dict) -> str:
    """Stable hash of a resolved config (key order independent)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def find_results(root: str | Path) -> list[tuple[Path, dict]]:
    """Every (run_dir, result) under root, sorted by path."""
    out = []
    for path in sorted(Path(root).rglob(RESULT_FILE)):
        res = read_result(path.parent)
        if res is not None:
            out.append((path.parent, res))
    return out
