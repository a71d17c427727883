"""result.json: the unit of truth of a run, written atomically, read by reports and resume."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from densbench.atomic import replacing

RESULT_FILE = "result.json"
STATUSES = ("ok", "failed", "skipped", "interrupted")
# what a result or checkpoint must match to be reused, and the word for each in messages
KEY_FIELDS = {"config_hash": "config", "source_hash": "code", "data_hash": "data"}
# metrics of how a run executed (speed, memory, the size of its stack): they vary between identical
# runs and between launchers, everything else must not
EXECUTION_METRICS = frozenset({"train_samples_per_s", "train_steps_per_s", "step_time_ms", "stack_size",
                               "stack_samples_per_s", "eval_samples_per_s", "peak_memory_mb"})


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
    """Write JSON through a temporary file renamed over `path` (flushed to disk first)."""
    with replacing(path, sync=True) as f:
        json.dump(_clean(payload), f, indent=2, sort_keys=False, allow_nan=False)
    return Path(path)


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


def problem(res: Any) -> str | None:
    """Why a parsed result.json cannot be used, or None."""
    if not isinstance(res, dict):
        return f"not a JSON object but {type(res).__name__}"
    if res.get("status") not in STATUSES:
        return f"status {res.get('status')!r} is not one of {', '.join(STATUSES)}"
    if not isinstance(res.get("labels"), dict):
        return "no 'labels' object"
    if not isinstance(res.get("config", {}), dict):
        return "'config' is not an object"
    if res["status"] == "ok":
        metrics = res.get("metrics")
        if not isinstance(metrics, dict):
            return "status ok but no 'metrics' object"
        bad = [k for k, v in metrics.items() if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)))]
        if bad:
            return f"metric {bad[0]!r} is not a number"
    return None


def scan_results(root: str | Path) -> tuple[list[tuple[Path, dict]], list[tuple[Path, str]]]:
    """Every usable (run_dir, result) under root, and every (path, reason) that could not be used."""
    good, bad = [], []
    for path in sorted(Path(root).rglob(RESULT_FILE)):
        try:
            with open(path) as f:
                res = json.load(f)
        except (OSError, ValueError) as exc:
            bad.append((path, f"unreadable: {exc}"))
            continue
        why = problem(res)
        if why:
            bad.append((path, f"malformed: {why}"))
        else:
            good.append((path.parent, res))
    return good, bad
