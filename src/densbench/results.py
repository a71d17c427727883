"""result.json: the unit of truth of a run, written atomically, read by reports and resume."""

from __future__ import annotations

import glob
import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from densbench.metric_catalog import HEADLINE
from densbench.atomic import replacing

if TYPE_CHECKING:
    import pandas as pd

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


def _parsed(path: Path) -> tuple[Any, str | None]:
    """A JSON file's content, or (None, why it could not be read)."""
    try:
        with open(path) as f:
            return json.load(f), None
    except (OSError, ValueError) as exc:
        return None, f"unreadable: {exc}"


def read_result(run_dir: str | Path) -> dict | None:
    """The run's result.json, or None when absent, unreadable or not a JSON object."""
    res, _ = _parsed(Path(run_dir) / RESULT_FILE)
    return res if isinstance(res, dict) else None


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
        usable, unusable = scan_results_file(path)
        good += usable
        bad += unusable
    return good, bad


LABEL_COLUMNS = ("dataset", "loss", "head", "grad", "device", "seed", "split")
PROVENANCE_COLUMNS = ("config_hash", "source_hash", "data_hash", "git_commit")
HEADLINE_METRICS = HEADLINE  # the last columns of load(), in the headline order


def flat_config(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested config with their values (lists as they are)."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flat_config(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def run_record(path: Path, res: dict, root: Path) -> dict[str, Any]:
    """One run as a flat record: where it is, its status, labels, provenance and every metric."""
    prov = res.get("provenance") or {}
    lab = res.get("labels") or {}
    rec: dict[str, Any] = {
        "run": str(path.relative_to(root)) if path != root and path.is_relative_to(root) else path.name,
        "status": res.get("status"),
        "error": res.get("error"),
        "flags": "; ".join(res.get("flags") or []),
        **{k: lab.get(k) for k in LABEL_COLUMNS},
        "config_hash": res.get("config_hash"),
        **{k: prov.get(k) for k in PROVENANCE_COLUMNS if k != "config_hash"},
    }
    rec.update(res.get("metrics") or {})
    return rec


def _found(path_or_glob: str | Path) -> tuple[Path, list[tuple[Path, dict]]]:
    """The folder runs are named from and every usable (run_dir, result) a path or glob holds."""
    text = str(path_or_glob)
    matches = [Path(p) for p in sorted(glob.glob(text, recursive=True))]
    if not matches:
        raise FileNotFoundError(f"no results at {text}: give a sweep or run directory, a result.json, or a glob of them")
    fixed = []  # the glob's leading parts without wildcards: run names are relative to them
    for part in Path(text).parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    root = Path(*fixed) if fixed else Path(".")
    if root.is_file():
        root = root.parent
    found: list[tuple[Path, dict]] = []
    bad: list[tuple[Path, str]] = []
    for m in matches:
        if m.is_file():
            good, unusable = scan_results_file(m)
            found += good
            bad += unusable
        elif m.is_dir():
            good, unusable = scan_results(m)
            found += good
            bad += unusable
    if bad:  # left out, but never silently
        warnings.warn(f"{len(bad)} result file(s) left out: " + "; ".join(f"{p} ({why})" for p, why in bad), stacklevel=3)
    if not found:
        raise FileNotFoundError(f"no usable results at {text}" + (f" ({len(bad)} unreadable)" if bad else "")
                                + ": give a sweep or run directory, a result.json, or a glob of them")
    return root, found


def scan_results_file(path: Path) -> tuple[list[tuple[Path, dict]], list[tuple[Path, str]]]:
    """One result.json as scan_results reports it: usable as [(run_dir, result)], or [(path, why not)]."""
    res, unreadable = _parsed(path)
    if unreadable:
        return [], [(path, unreadable)]
    why = problem(res)
    return ([], [(path, f"malformed: {why}")]) if why else ([(path.parent, res)], [])


def load(path_or_glob: str | Path) -> pd.DataFrame:
    """Every run under a sweep directory (or a glob) as a DataFrame indexed by run: its status, labels,
    provenance, the config keys that vary between the runs (as dotted columns) and every metric."""
    import pandas as pd  # only here: the rest of densbench reads results without pandas

    root, found = _found(path_or_glob)
    records = [run_record(p, r, root) for p, r in found]
    configs = [flat_config(r.get("config") or {}) for _, r in found]
    keys = sorted({k for c in configs for k in c})
    varying = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}) > 1]
    for rec, c in zip(records, configs):
        for k in varying:
            if k not in rec:  # a label column of the same name (e.g. seed) already holds it
                rec[k] = c.get(k)
    frame = pd.DataFrame.from_records(records).set_index("run")
    # pandas prints only the first and last columns of a wide frame: the labels that differ between
    # the runs (the swept axes) come first, the headline metrics last, everything else between
    first = [c for c in LABEL_COLUMNS if c in frame and frame[c].nunique(dropna=False) > 1] + ["status"]
    last = [c for c in HEADLINE_METRICS if c in frame]
    return frame[first + [c for c in frame if c not in first and c not in last] + last]
