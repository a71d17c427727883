"""Sweep reports rebuilt from result.json files alone: report.md, summary.csv and figures.

Written automatically after every multirun (a Hydra callback) and by hand with
``python -m densbench.report SWEEP_DIR [--out DIR]``. Runs that failed or were skipped are listed
with their error; runs that differ only in seed or data split are averaged (mean +- standard error).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import math
import re
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from densbench.report import uci as uci_report
from densbench.atomic import replacing, save_figure, write_text
from densbench.config import is_unset
from densbench.report.leaderboard import Cell, Leaderboard, best_of, to_latex, to_markdown
from densbench.methods import method_of
from densbench.progress import UNRECORDED, sweep_table
from densbench.results import RESULT_FILE, flat_config, run_record, scan_results
from densbench.signals import Interrupted, install_process_handlers, process_stage

GROUP_KEYS = ("dataset", "head", "loss", "grad", "device")
ROW_KEYS = GROUP_KEYS + ("config",)  # config: the other settings that differ between rows
# (metric, header, lower is better); the main table's columns
MAIN_COLUMNS = [
    ("nll", "NLL", True),
    ("crps", "CRPS", True),
    ("mace", "cal. error", True),
    ("ece", "ECE", True),
    ("coverage90", "cover@90", None),
    ("rmse", "RMSE", True),
    ("accuracy", "accuracy", False),
    ("nll_gap", "NLL - oracle", True),
    ("train_samples_per_s", "train samples/s", False),
]
CSV_METRICS = [
    "nll", "rmse", "accuracy", "crps", "mace", "rmsce", "miscal_area", "quantile_mace", "ece", "sharpness",
    "coverage50", "coverage90", "coverage95", "width50", "width90", "width95", "interval_score", "check_score",
    "pit_ks", "oracle_nll", "kl_truth", "nll_gap", "floor_hits", "train_samples_per_s", "train_steps_per_s",
    "step_time_ms", "stack_size", "stack_samples_per_s", "eval_samples_per_s", "peak_memory_mb",
]


def _mean_se(values: list[float]) -> tuple[float, float | None]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return float("nan"), None
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, None
    var = sum((v - m) ** 2 for v in vals) / (len(vals) - 1)
    return m, math.sqrt(var / len(vals))


def _fmt(m: float, se: float | None, digits: int = 3) -> str:
    if m is None or not math.isfinite(m):
        return "-"
    if abs(m) >= 1e4:
        s = f"{m:.3g}"
    else:
        s = f"{m:.{digits}f}"
    return s if se is None else f"{s} ± {se:.{digits}f}"


REPLICATION_KEYS = ("seed", "dataset.seed", "dataset.split")  # what varies between runs averaged in one row
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
        row["flagged"] = sum(1 for r in runs if r.get("flags"))
        row["recalibrate"] = (runs[0].get("config") or {}).get("recalibrate", "none")
        for m in CSV_METRICS:
            vals = [r.get("metrics", {}).get(m) for r in runs]
            if any(v is not None for v in vals):
                row[m], row[f"{m}_se"] = _mean_se(vals)
            before = [(r.get("metrics_uncalibrated") or {}).get(m) for r in runs]
            if any(v is not None for v in before):
                row[f"{m}_before"], row[f"{m}_before_se"] = _mean_se(before)
        rows.append(row)
    return rows


def _best_marks(rows: list[dict]) -> set[tuple[int, str]]:
    marks = set()
    by_dataset: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_dataset[r["dataset"]].append(i)
    for metric, _, lower in MAIN_COLUMNS:
        for idx in by_dataset.values():
            vals = [(rows[i].get(metric), i) for i in idx if rows[i].get(metric) is not None and math.isfinite(rows[i][metric])]
            if len(vals) < 2:
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


LEADERBOARD_COLUMNS = (("nll", "NLL"), ("crps", "CRPS"), ("mace", "cal. error"), ("rmse", "RMSE"))  # lower is better


def sweep_leaderboard(rows: list[dict], title: str) -> Leaderboard:
    """The sweep's configurations (rows of the main table) with mean ± SE of the headline metrics, best per dataset bold."""
    cols = [(m, h) for m, h in LEADERBOARD_COLUMNS if any(r.get(m) is not None and math.isfinite(r[m]) for r in rows)]
    grads = {r["grad"] for r in rows}
    board = Leaderboard(caption=f"{title}: test metrics, mean ± standard error over seeds and splits (lower is better)",
                        row_header="dataset: loss / head", columns=[h for _, h in cols], digits=3,
                        notes="Bold: the best of each dataset's rows in that column. cal. error: mean absolute calibration "
                              "error of central intervals over 100 levels.")
    cells = [[Cell(r.get(m, float("nan")), r.get(f"{m}_se")) for m, _ in cols] for r in rows]
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        idx = [i for i, r in enumerate(rows) if r["dataset"] == ds]
        for k in range(len(cols)):
            for i, b in zip(idx, best_of([cells[i][k].mean for i in idx], board.digits)):
                cells[i][k] = Cell(cells[i][k].mean, cells[i][k].pm, b)
    for r, c in zip(rows, cells):
        name = f"{r['dataset']}: {r['loss']} / {r['head']}" + (f", {r['grad']}" if len(grads) > 1 else "")
        board.rows.append((name + (f" ({r['config']})" if r.get("config") else ""), c))
    return board


def write_leaderboards(sweep_dir: str | Path, out_dir: str | Path, fmt: str, title: str | None = None) -> list[Path]:
    """leaderboard.tex or .md (every configuration) and, with UCI-protocol runs, uci_leaderboard beside it."""
    sweep_dir, out_dir = Path(sweep_dir), Path(out_dir)
    results, _ = scan_results(sweep_dir)
    rows = summarise(group_results(results))
    render, ext = (to_latex, "tex") if fmt == "latex" else (to_markdown, "md")
    boards = {"leaderboard": sweep_leaderboard(rows, title or sweep_dir.name)} if rows else {}
    uci = uci_report.leaderboard_of(results)
    if uci is not None:
        boards["uci_leaderboard"] = uci
    out_dir.mkdir(parents=True, exist_ok=True)
    return [write_text(out_dir / f"{name}.{ext}", render(board)) for name, board in boards.items()]


@dataclass
class Written:
    """What write_report produced: the report's path and the result files it had to leave out."""

    path: Path
    skipped: list[tuple[Path, str]]


def write_report(sweep_dir: str | Path, out_dir: str | Path, title: str | None = None,
                 scanned: tuple[list[tuple[Path, dict]], list[tuple[Path, str]]] | None = None) -> Written:
    """Build report.md, summary.csv, runs.csv and figures for every result.json under sweep_dir
    (`scanned`: what scan_results(sweep_dir) returned, when the caller has read them already)."""
    sweep_dir, out_dir = Path(sweep_dir), Path(out_dir)
    results, skipped = scanned if scanned is not None else scan_results(sweep_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = group_results(results)
    rows = summarise(groups)
    _write_csv(out_dir / "summary.csv", list(ROW_KEYS) + ["method", "recalibrate", "runs", "flagged"]
               + [c for m in CSV_METRICS for c in (m, f"{m}_se")]
               + [c for m, _ in RECALIBRATION_COLUMNS for c in (f"{m}_before", f"{m}_before_se")], rows)
    _write_csv(out_dir / "runs.csv", RUN_COLUMNS + CSV_METRICS, [_run_row(p, r, sweep_dir) for p, r in results])
    figures = _figures(groups, rows, out_dir, results)
    md = _markdown(title or sweep_dir.name, sweep_dir, results, rows, figures, skipped)
    return Written(write_text(out_dir / "report.md", md), skipped)


TIMING_PARTS = ("startup_s", "train_s", "validation_s", "test_s", "figures_s", "total_s")  # result.json's timing
RUN_COLUMNS = ["run", "status", "flags", "overrides", "config_hash", "source_hash", "data_hash", "numerics", *GROUP_KEYS,
               "seed", "split", *TIMING_PARTS]


def _run_row(path: Path, res: dict, root: Path) -> dict[str, Any]:
    """A run's line in runs.csv: results.load's record of it, with how to rerun it and where its time went."""
    row = run_record(path, res, root)
    row["overrides"] = json.dumps(res.get("overrides"))
    row["numerics"] = ((res.get("provenance") or {}).get("numerics") or {}).get("mode")
    row.update({k: v for k, v in (res.get("timing") or {}).items() if k in TIMING_PARTS})
    return row


def _write_csv(path: Path, cols: list[str], rows: list[dict]) -> None:
    with replacing(path, newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _markdown(title: str, sweep_dir: Path, results, rows, figures: dict[str, list[str]], skipped) -> str:
    ok = sum(1 for _, r in results if r.get("status") == "ok")
    lines = [f"# densbench report: {title}", ""]
    lines.append(f"Sweep directory: `{sweep_dir}`. Runs: {len(results)} ({ok} ok)"
                 + (f"; {len(skipped)} result files could not be read (listed below)" if skipped else "") + ". "
                 "Metrics are on the test split in original target units; mean ± standard error over runs that "
                 "differ only in seed or data split (every other setting, the code revision and the data are the "
                 "same within a row; `config` names the settings that differ between rows); **bold** marks the "
                 "best value per dataset.")
    lines.append("")
    if rows:
        cols = [(m, h) for m, h, _ in MAIN_COLUMNS if any(r.get(m) is not None for r in rows)]
        keys = [k for k in ROW_KEYS if k != "config" or any(r["config"] for r in rows)]
        marks = _best_marks(rows)
        lines.append("| " + " | ".join(keys + ["runs"] + [h for _, h in cols]) + " |")
        lines.append("|" + "---|" * (len(keys) + 1 + len(cols)))
        for i, r in enumerate(rows):
            runs = f"{r['runs']} ({r['flagged']} flagged)" if r["flagged"] else str(r["runs"])
            cells = [_cell(r[k]) for k in keys] + [runs]
            for m, _ in cols:
                digits = 0 if m == "train_samples_per_s" else 3
                c = _fmt(r.get(m, float("nan")), r.get(f"{m}_se"), digits)
                cells.append(f"**{c}**" if (i, m) in marks else c)
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines.append("Column meanings: NLL = mean negative log-likelihood (nats, all constants); CRPS = continuous ranked "
                     "probability score (ranked probability score for counts and classes); cal. error = mean absolute "
                     "calibration error of central intervals over 100 levels; ECE = expected calibration error, 15 bins; "
                     "cover@90 = share of test targets inside the central 90% interval; NLL - oracle = gap to the true "
                     "distribution's NLL where it is known. Every metric is in `summary.csv`, every run in `runs.csv`.")
        lines.append("")
    lines += _recalibration_section(rows)
    ratios = throughput_ratios(rows)
    if ratios:
        lines += ["## Analytic vs autograd gradients (training throughput)", "",
                  "| dataset | head | loss | device | config | analytic samples/s | autograd samples/s | analytic / autograd |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in ratios:
            lines.append(f"| {r['dataset']} | {r['head']} | {r['loss']} | {r['device']} | {_cell(r['config'])} | "
                         f"{r['analytic']:.0f} | {r['autograd']:.0f} | {r['ratio']:.2f} |")
        lines.append("")
    lines += uci_report.section(results, sweep_dir)
    attention = [(p, r) for p, r in results if r.get("status") != "ok" or r.get("flags")]
    if attention or skipped:
        lines += ["## Runs that need attention", "", "| run | status | what |", "|---|---|---|"]
        for p, r in attention:
            what = r.get("error") if r.get("status") != "ok" else "; ".join(r["flags"])
            lines.append(f"| `{_rel(p, sweep_dir)}` | {r.get('status')}{' (flagged)' if r.get('flags') else ''} | {_cell(what)} |")
        for p, why in skipped:
            lines.append(f"| `{_rel(p, sweep_dir)}` | left out | {_cell(why)} |")
        lines.append("")
    for section, paths in figures.items():
        if paths:
            lines += [f"## {section}", ""] + [f"![{Path(p).stem}]({p})" for p in paths] + [""]
    lines += ["## Runs", "", "Seconds: start-up (process or job start to the first optimisation step), training, validation, "
              "testing, figures, and the job's total (the jobs of one stack share its start-up, training and test).", "",
              "| run | status | dataset | loss | head | grad | device | seed/split | NLL | start-up | train | validation | test | figures | total |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p, r in results:
        lab = r.get("labels", {})
        nll = (r.get("metrics") or {}).get("nll")
        ss = lab.get("split") if lab.get("split") is not None else lab.get("seed")
        timing = r.get("timing") or {"total_s": r.get("wall_time_s")}  # results from before timing was recorded
        seconds = ["-" if timing.get(k) is None else f"{timing[k]:.1f}" for k in TIMING_PARTS]
        lines.append(f"| `{_rel(p, sweep_dir)}` | {r.get('status')} | {lab.get('dataset')} | {lab.get('loss')} | {lab.get('head')} | "
                     f"{lab.get('grad')} | {lab.get('device')} | {ss} | {_fmt(nll, None)} | " + " | ".join(seconds) + " |")
    lines.append("")
    return "\n".join(lines)


RECALIBRATION_COLUMNS = (("nll", "NLL"), ("crps", "CRPS"), ("mace", "cal. error"), ("coverage90", "cover@90"),
                         ("width90", "width@90"))


def _recalibration_section(rows: list[dict]) -> list[str]:
    """Rows of recalibrated runs: each metric before (as trained) and after recalibration."""
    recal = [r for r in rows if r.get("recalibrate", "none") != "none"]
    if not recal:
        return []
    lines = ["## Recalibration: before and after", "",
             "Each recalibration is fitted on the validation split and applied to the test predictive (`recalibrate=`). "
             "Cells read before → after (mean ± standard error over runs). `conformal` defines intervals, not a "
             "density: its NLL, CRPS and calibration error are the model's own, only coverage and width change.", "",
             "| dataset | head | loss | config | runs | " + " | ".join(h for _, h in RECALIBRATION_COLUMNS) + " |",
             "|" + "---|" * (5 + len(RECALIBRATION_COLUMNS))]
    for r in recal:
        cells = [_cell(r[k]) for k in ("dataset", "head", "loss", "config")] + [str(r["runs"])]
        for m, _ in RECALIBRATION_COLUMNS:
            cells.append(f"{_fmt(r.get(f'{m}_before', float('nan')), r.get(f'{m}_before_se'))} → "
                         f"{_fmt(r.get(m, float('nan')), r.get(f'{m}_se'))}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _rel(p: Path, root: Path) -> Path:
    return p.relative_to(root) if p != root else Path(p.name)


def _short(row: dict) -> str:
    text = f"{row['loss']}/{row['head']} {row['grad']}/{row['device']}"
    return f"{text} {row['config']}" if row.get("config") else text


def _slug(parts) -> str:
    return re.sub(r"[^A-Za-z0-9.,+-]+", "-", "_".join(str(p) for p in parts if p)).strip("-")[:120]


def _figures(groups, rows, out_dir: Path, results) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"Comparison per dataset": [], "Calibration": [], "Predictive distributions": []}
    tasks: list[tuple[Any, tuple]] = []  # (drawing function, its arguments): drawn side by side on every core
    by_ds: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_ds[r["dataset"]].append(r)
    for ds, rs in by_ds.items():
        name = f"compare_{ds}.png"
        tasks.append((_draw_comparison, (ds, rs, out_dir / name)))
        out["Comparison per dataset"].append(name)
    run_dirs = {id(r): p for p, r in results}
    for key, runs in groups.items():
        curves = runs[0].get("curves") or {}
        if not curves:
            continue
        name = "calib_" + _slug(key) + ".png"
        own = run_dirs[id(runs[0])] / str((runs[0].get("artifacts") or {}).get("calibration_figure", ""))
        if len(runs) == 1 and own.is_file():
            _copy(own, out_dir / name)  # one run: its own figure already shows it
        else:
            before = [r["curves_uncalibrated"] for r in runs if r.get("curves_uncalibrated")]
            tasks.append((_draw_calibration, ([r["curves"] for r in runs], " | ".join(str(k) for k in key if k), before or None,
                                              out_dir / name)))
        out["Calibration"].append(name)
    _draw_all(tasks)
    for p, r in results:
        fig_name = (r.get("artifacts") or {}).get("figure")
        if r.get("status") == "ok" and fig_name and (p / fig_name).exists():
            lab = r["labels"]
            target = "pred_" + _slug([lab.get(k) for k in GROUP_KEYS] + [r.get("config_hash", "")[:6]])
            suffix = f"_s{lab.get('split') if lab.get('split') is not None else lab.get('seed')}"
            _copy(p / fig_name, out_dir / f"{target}{suffix}.png")
            out["Predictive distributions"].append(f"{target}{suffix}.png")
    out["Predictive distributions"] = sorted(set(out["Predictive distributions"]))[:24]
    return out


PARALLEL_FIGURES = 8  # from this many figures on, a report draws them on every core


def _draw_all(tasks: list[tuple[Any, tuple]]) -> None:
    """Draw the figures: in forked worker processes when there are many and forking is safe (no other
    thread in this process, whose locks a child could inherit held), else here one after the other."""
    import multiprocessing
    import threading
    from concurrent.futures import ProcessPoolExecutor

    from densbench.cores import usable_cores

    cores = usable_cores()
    forkable = "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1
    if len(tasks) < PARALLEL_FIGURES or cores < 2 or not forkable:
        for fn, args in tasks:
            fn(*args)
        return
    with ProcessPoolExecutor(max_workers=min(cores, len(tasks)), mp_context=multiprocessing.get_context("fork")) as pool:
        for future in [pool.submit(fn, *args) for fn, args in tasks]:
            future.result()


def _draw_comparison(ds: str, rs: list[dict], path: Path) -> None:
    """Each configuration's test NLL and calibration error (ECE for classes) on one dataset, with standard errors."""
    import matplotlib.pyplot as plt

    metrics = [(m, h) for m, h in (("nll", "test NLL"), ("mace", "calibration error"), ("ece", "ECE"))
               if any(r.get(m) is not None for r in rs)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 0.6 * len(rs) + 1.6), squeeze=False)
    names = [_short(r) for r in rs]
    for ax, (m, h) in zip(axes[0], metrics):
        vals = [r.get(m, float("nan")) for r in rs]
        errs = [r.get(f"{m}_se") or 0.0 for r in rs]
        # points with error bars, not bars: NLL has no natural zero
        ax.errorbar(vals, range(len(rs)), xerr=errs, fmt="o", color="#2E2585", ms=6, capsize=3)
        ax.grid(axis="x", alpha=0.3)
        ax.xaxis.set_major_locator(plt.MaxNLocator(4))
        ax.tick_params(axis="x", labelsize=8)
        ax.set_ylim(len(rs) - 0.5, -0.5)
        ax.set_yticks(range(len(rs)), names if ax is axes[0, 0] else [""] * len(rs), fontsize=8)
        ax.set_title(h, fontsize=10)
    fig.suptitle(ds, fontsize=11)
    # fixed margins (tight_layout measures every label: seconds per report); the labels' width sets the left one
    width = 4.5 * len(metrics)
    label_in = 0.075 * max((len(n) for n in names), default=10) + 0.2
    fig.subplots_adjust(left=min(0.6, label_in / width), right=0.98, bottom=0.55 / fig.get_figheight(),
                        top=1 - 0.5 / fig.get_figheight(), wspace=0.12)
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def _draw_calibration(curves: list[dict], title: str, before: list[dict] | None, path: Path) -> None:
    """A configuration's PIT histogram and calibration curve, averaged over its runs."""
    import matplotlib.pyplot as plt

    from densbench.report.calibration_plot import calibration_figure

    fig = calibration_figure(curves, title=title, before=before)
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def _copy(src: Path, dst: Path) -> None:
    with replacing(dst, "wb") as f:
        f.write(src.read_bytes())


def report_dir(sweep_dir: Path, configured: str | None) -> Path:
    """Where a sweep's report goes: `report.dir` when set, else <sweep dir>/report."""
    return Path(sweep_dir) / "report" if is_unset(configured) else Path(configured)


class SweepReport(Callback):
    """Hydra callback: after a multirun, write the report and make the exit status say if jobs failed."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._started = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        with process_stage("writing the sweep's report"):
            try:
                self._end(config)
            except OSError as exc:  # a full or read-only disk: the runs' own records stand; one line, not a traceback
                where = f": {exc.filename}" if exc.filename else ""
                print(f"densbench: the sweep's report could not be written: {exc.strerror or exc}{where}", file=sys.stderr)
                sys.exit(1)

    def _end(self, config: DictConfig) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        results, skipped = scan_results(sweep_dir)
        table = sorted(((str(_rel(p, sweep_dir)), r) for p, r in results), key=lambda pr: pr[0])
        if table:
            print("densbench: sweep results\n" + sweep_table(table), file=sys.stderr)
        report = config.get("report") or {}
        if report.get("enabled", True):
            written = write_report(sweep_dir, report_dir(sweep_dir, report.get("dir")), scanned=(results, skipped))
            print(f"densbench: report written to {written.path}")
        for path, why in skipped:
            print(f"densbench: left out of the report: {path}: {why}", file=sys.stderr)
        if report.get("enabled", True):  # report.enabled=false: neither the report nor the sweep-wide records
            sweep_end(sweep_dir, results)
        # the exit status is about the jobs this command ran; results of earlier runs in the same
        # directory (kept by resume) are in the report but not in the count
        started = getattr(self, "_started", 0.0)
        ran = [r for p, r in results if (p / RESULT_FILE).stat().st_mtime >= started]
        failed = [r for r in ran if r.get("status") == "failed"]
        interrupted = [r for r in ran if r.get("status") == "interrupted"]
        if failed:
            print(f"densbench: {len(failed)} of {len(ran)} runs failed; see the report", file=sys.stderr)
        if interrupted:
            print(f"densbench: {len(interrupted)} of {len(ran)} runs interrupted; rerun the same command to resume",
                  file=sys.stderr)
        failed += interrupted
        unrecorded = {d: why for d, why in UNRECORDED.items() if Path(d).resolve().parent == sweep_dir.resolve()}
        if unrecorded:
            print(f"densbench: {len(unrecorded)} job{'s' if len(unrecorded) != 1 else ''} could not write a record "
                  f"({next(iter(unrecorded.values()))}); rerun the same command to retry them", file=sys.stderr)
        if failed or skipped or unrecorded:
            sys.exit(1)


def sweep_end(sweep_dir: Path, records: list[tuple[Path, dict[str, Any]]]) -> None:
    """After a sweep, the sweep-wide records its runs' loggers asked for (result.json's sweep_end: TensorBoard's
    HParams experiment), each given the sweep and (log directory, result) of the runs that asked; by name,
    so that a sweep whose runs trained elsewhere never imports the loggers (or torch) here."""
    hooks: dict[tuple[str, str], list[tuple[Path, dict[str, Any]]]] = {}
    for path, res in records:
        for logger, hook in (res.get("sweep_end") or {}).items():
            where = (res.get("artifacts") or {}).get(logger)
            if where:
                hooks.setdefault((logger, hook), []).append((path / where, res))
    for (logger, hook), dirs in hooks.items():
        module, _, name = hook.partition(":")
        try:
            getattr(importlib.import_module(module), name)(Path(sweep_dir), dirs)
        except Exception as e:  # the runs and the report stand without it
            print(f"densbench: the sweep's {logger} record was not written: {type(e).__name__}: {e}", file=sys.stderr)


SKIPPED_EXIT = 3  # the report was written, but some result files could not be read


def main(argv: list[str] | None = None) -> None:
    """Rebuild a report: python -m densbench.report SWEEP_DIR [--out DIR] [--title T]."""
    install_process_handlers()
    try:
        with process_stage("writing the report"):
            _main(argv)
    except Interrupted as exc:  # every file is written atomically: what was written stands, the rest is not
        print(exc.line().replace("finished runs are kept", "files written so far are whole"), file=sys.stderr)
        sys.exit(128 + exc.signum)
    except OSError as exc:  # a read-only or full disk: one line naming the file
        print(f"densbench: the report could not be written: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        sys.exit(1)


def _main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m densbench.report", description=main.__doc__)
    parser.add_argument("sweep_dir", help="a multirun directory (or any folder holding result.json files)")
    parser.add_argument("--out", default=None, help="output folder (default: <sweep dir>/report)")
    parser.add_argument("--title", default=None)
    parser.add_argument("--format", choices=("markdown", "latex"), default="markdown",
                        help="markdown: the full report and leaderboard.md; latex: the leaderboards as .tex tables")
    args = parser.parse_args(argv)
    sweep = Path(args.sweep_dir)
    if not sweep.is_dir():
        parser.error(f"{sweep} is not a directory")
    if not any(sweep.rglob(RESULT_FILE)):
        parser.error(f"no result.json under {sweep}")
    out = report_dir(sweep, args.out)
    if args.format == "latex":
        for path in write_leaderboards(sweep, out, "latex", args.title):
            print(path)
        skipped = scan_results(sweep)[1]
        for path, why in skipped:
            print(f"densbench: left out of the tables: {path}: {why}", file=sys.stderr)
        if skipped:
            sys.exit(SKIPPED_EXIT)
        return
    written = write_report(sweep, out, args.title)
    write_leaderboards(sweep, out, "markdown", args.title)
    sweep_end(sweep, scan_results(sweep)[0])  # and the sweep's TensorBoard HParams table
    print(written.path)
    for path, why in written.skipped:
        print(f"densbench: left out of the report: {path}: {why}", file=sys.stderr)
    if written.skipped:
        sys.exit(SKIPPED_EXIT)


if __name__ == "__main__":
    main()
