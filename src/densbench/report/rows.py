"""A sweep's runs as rows of the report: runs that differ only in seed or data split grouped into one
configuration, each metric as mean ± standard error, the best per dataset marked (torch-free)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from densbench.config import REPLICATION_KEYS
from densbench.methods import method_of
from densbench.metric_catalog import columns, lower_is_better
from densbench.report.leaderboard import Cell, Leaderboard, best_of, contested, mean_se
from densbench.results import flat_config


GROUP_KEYS = ("dataset", "head", "loss", "grad", "device")


ROW_KEYS = GROUP_KEYS + ("config",)  # config: the other settings that differ between rows


MAIN_COLUMNS = ("nll", "nll_binned", "crps", "mace", "ece", "coverage90", "rmse", "accuracy", "nll_gap", "train_samples_per_s")


CSV_METRICS = [
    "nll", "nll_binned", "rmse", "accuracy", "crps", "mace", "rmsce", "miscal_area", "quantile_mace", "ece", "sharpness",
    "coverage50", "coverage90", "coverage95", "width50", "width90", "width95", "interval_score", "check_score",
    "pit_ks", "oracle_nll", "kl_truth", "nll_gap", "floor_hits", "train_samples_per_s", "train_steps_per_s",
    "step_time_ms", "stack_size", "stack_samples_per_s", "eval_samples_per_s", "peak_memory_mb",
]


def fmt(m: float, se: float | None, digits: int = 3) -> str:
    if m is None or not math.isfinite(m):
        return "-"
    if abs(m) >= 1e4:
        s = f"{m:.3g}"
    else:
        s = f"{m:.{digits}f}"
    return s if se is None else f"{s} ± {se:.{digits}f}"


BOOKKEEPING_KEYS = ("name", "resume", "report", "figures", "logger")  # never change a run's numbers


_MISSING = "<unset>"


def flatten(tree: Any) -> dict[str, str]:
    """Dotted keys of a nested config, values as canonical JSON (lists and nulls compare exactly)."""
    return {k: json.dumps(v, sort_keys=True, default=str) for k, v in flat_config(tree).items()}


def run_axes(res: dict) -> dict[str, str]:
    """Everything a run's numbers depend on: its resolved config (minus replication and bookkeeping keys),
    its code revision and its data."""
    flat = {k: v for k, v in flatten(res.get("config") or {}).items()
            if k not in REPLICATION_KEYS and k.split(".")[0] not in BOOKKEEPING_KEYS}
    prov = res.get("provenance") or {}
    flat["code"] = json.dumps(prov.get("source_hash"))
    flat["data"] = json.dumps(prov.get("dataset_hash") or prov.get("data_hash"))
    return flat


def _label_key(res: dict) -> tuple:
    lab = res.get("labels", {})
    return tuple(lab.get(k) for k in GROUP_KEYS)


def distinguishing_keys(runs: list[dict]) -> list[str]:
    """Config keys (and code/data) that differ between runs and are not already told apart by the label columns."""
    axes = [run_axes(r) for r in runs]
    keys = sorted({k for a in axes for k in a})
    by_label: dict[tuple, list[dict[str, str]]] = defaultdict(list)
    for r, a in zip(runs, axes):
        by_label[_label_key(r)].append(a)
    out = []
    for k in keys:
        if len({a.get(k, _MISSING) for a in axes}) < 2:
            continue
        if all(len({a.get(k, _MISSING) for a in group}) == 1 for group in by_label.values()):
            continue  # the label columns already separate these runs
        out.append(k)
    return out


def _show(key: str, value: str) -> str:
    v = json.loads(value) if value != _MISSING else "unset"
    if key in ("code", "data") and isinstance(v, str):
        v = v[:8]
    return f"{key}={v}"


def group_results(results: list[tuple[Path, dict]]) -> dict[tuple, list[dict]]:
    """Ok runs grouped by everything that can change their numbers except seed and split.

    The key is the label columns plus a `config` string naming the other keys that differ (e.g.
    ``optimizer.lr=0.03``), so runs of different settings, code revisions or data never share a row.
    """
    ok = [r for _, r in results if r.get("status") == "ok"]
    keys = distinguishing_keys(ok)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in ok:
        axes = run_axes(r)
        config = ", ".join(_show(k, axes.get(k, _MISSING)) for k in keys)
        groups[_label_key(r) + (config,)].append(r)
    return dict(sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])))


def summarise(groups: dict[tuple, list[dict]]) -> list[dict[str, Any]]:
    """One row per configuration with mean and standard error of every metric."""
    rows = []
    for key, runs in groups.items():
        row: dict[str, Any] = dict(zip(ROW_KEYS, key))
        row["method"] = method_of(runs[0].get("config") or {}, runs[0].get("labels") or {})
        row["runs"] = len(runs)
        row["splits"] = frozenset(str((r.get("labels") or {}).get("split")) for r in runs)  # which rows it can rival
        row["flagged"] = sum(1 for r in runs if r.get("flags"))
        row["stopped_early"] = sum(1 for r in runs if (r.get("train") or {}).get("stopped_early"))
        row["recalibrate"] = (runs[0].get("config") or {}).get("recalibrate", "none")
        for m in CSV_METRICS:
            vals = [r.get("metrics", {}).get(m) for r in runs]
            if any(v is not None for v in vals):
                row[m], row[f"{m}_se"] = mean_se(vals)
            before = [(r.get("metrics_uncalibrated") or {}).get(m) for r in runs]
            if any(v is not None for v in before):
                row[f"{m}_before"], row[f"{m}_before_se"] = mean_se(before)
        rows.append(row)
    return rows


def comparable(rows: list[dict], idx: list[int]) -> list[int]:
    """Of a dataset's rows (indices), those over the same data splits as its row of the most splits: a row over
    other splits is no rival (an ensemble row of the 2 of 20 splits whose members were one method, the gap protocol's
    splits); rows that differ only in their seeds all are."""
    full = max((rows[i].get("splits", frozenset()) for i in idx), key=len, default=frozenset())
    return [i for i in idx if rows[i].get("splits", frozenset()) == full]


def best_marks(rows: list[dict]) -> set[tuple[int, str]]:
    """(row, metric) of the best value of each dataset's comparable rows in each headline column."""
    marks = set()
    by_dataset: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_dataset[r["dataset"]].append(i)
    for metric in MAIN_COLUMNS:
        lower = lower_is_better(metric)
        for all_idx in by_dataset.values():
            if len(all_idx) < 2:
                continue
            scored = [(rows[i].get(metric), i) for i in comparable(rows, all_idx)]
            vals = [(v, i) for v, i in scored if v is not None and math.isfinite(v)]
            if not contested([v for v, _ in scored]) or not vals:
                continue
            if lower is None:  # coverage: closest to nominal
                best = min(vals, key=lambda t: abs(t[0] - 0.9))[1]
            else:
                best = (min if lower else max)(vals)[1]
            marks.add((best, metric))
    return marks


def throughput_ratios(rows: list[dict]) -> list[dict]:
    """analytic / autograd training throughput per row that both gradient paths ran."""
    by: dict[tuple, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r.get("train_samples_per_s") is not None and math.isfinite(r["train_samples_per_s"]):
            by[(r["dataset"], r["head"], r["loss"], r["device"], r["config"])][r["grad"]] = r["train_samples_per_s"]
    out = []
    for (ds, head, loss, dev, config), v in sorted(by.items()):
        if "analytic" in v and "autograd" in v:
            out.append({"dataset": ds, "head": head, "loss": loss, "device": dev, "config": config, "analytic": v["analytic"],
                        "autograd": v["autograd"], "ratio": v["analytic"] / v["autograd"]})
    return out


LEADERBOARD_COLUMNS = columns("nll", "crps", "mace", "rmse")  # lower is better


def sweep_leaderboard(rows: list[dict], title: str) -> Leaderboard:
    """The sweep's configurations (rows of the main table) with mean ± SE of the headline metrics, best per dataset bold."""
    cols = [(m, h) for m, h in LEADERBOARD_COLUMNS if any(r.get(m) is not None and math.isfinite(r[m]) for r in rows)]
    grads = {r["grad"] for r in rows}
    board = Leaderboard(caption=f"{title}: test metrics, mean ± standard error over seeds and splits (lower is better)",
                        row_header="dataset: loss / head", columns=[h for _, h in cols], digits=3,
                        notes="Bold: the best in that column of each dataset's rows over the splits of its fullest row (a "
                              "row over other splits is no rival). cal. error: mean absolute calibration "
                              "error of central intervals over 100 levels.")
    cells = [[Cell(r.get(m, float("nan")), r.get(f"{m}_se")) for m, _ in cols] for r in rows]
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        idx = comparable(rows, [i for i, r in enumerate(rows) if r["dataset"] == ds])
        for k in range(len(cols)):
            for i, b in zip(idx, best_of([cells[i][k].mean for i in idx], board.digits)):
                cells[i][k] = Cell(cells[i][k].mean, cells[i][k].pm, b)
    for r, c in zip(rows, cells):
        name = f"{r['dataset']}: {r['loss']} / {r['head']}" + (f", {r['grad']}" if len(grads) > 1 else "")
        board.rows.append((name + (f" ({r['config']})" if r.get("config") else ""), c))
    return board
