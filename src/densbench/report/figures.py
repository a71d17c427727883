"""The report's figures: each dataset's configurations compared, calibration per configuration, and the
runs' own predictive figures; drawn on every core when there are many (torch-free)."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from densbench.atomic import replacing, save_figure
from densbench.metric_catalog import columns, lower_is_better
from densbench.report.rows import GROUP_KEYS


LABEL_MAX = 28  # characters of a row label; a longer one is numbered, and spelled out under the figure


def _labels(rows: list[dict]) -> tuple[list[str], list[str]]:
    """Short row labels for one dataset's configurations (the method's name, and only what varies between
    rows besides), and the legend lines of those still too long."""
    varying = [k for k in ("grad", "device") if len({r.get(k) for r in rows}) > 1]
    names = []
    for r in rows:
        parts = [r.get("method") or f"{r['loss']}/{r['head']}", *(str(r[k]) for k in varying)]
        if r.get("recalibrate") not in (None, "", "none"):
            parts.append(f"+{r['recalibrate']}")
        names.append(" ".join(parts))
    # where the method's name repeats, the config tells the rows apart
    names = [f"{n} {r['config']}" if r.get("config") and names.count(n) > 1 else n for n, r in zip(names, rows)]
    shown, legend = [], []
    for n in names:
        if len(n) > LABEL_MAX:
            legend.append(f"#{len(legend) + 1}: {n}")
            n = f"#{len(legend)}"
        shown.append(n)
    return shown, legend


def _slug(parts) -> str:
    return re.sub(r"[^A-Za-z0-9.,+-]+", "-", "_".join(str(p) for p in parts if p)).strip("-")[:120]


def draw_figures(groups, rows, out_dir: Path, results) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"Comparison per dataset": [], "Calibration": [], "Predictive distributions": []}
    tasks: list[tuple[Any, tuple]] = []  # (drawing function, its arguments): drawn side by side on every core
    by_ds: dict[str, list[tuple[dict, Any]]] = defaultdict(list)
    for r, runs in zip(rows, groups.values()):  # summarise() keeps the groups' order
        by_ds[r["dataset"]].append((r, _mean_curve(runs)))
    for ds, pairs in by_ds.items():
        name = f"compare_{ds}.png"
        tasks.append((_draw_comparison, (ds, [r for r, _ in pairs], out_dir / name, [c for _, c in pairs])))
        out["Comparison per dataset"].append(name)
    run_dirs = {id(r): p for p, r in results}
    for key, runs in groups.items():
        curves = runs[0].get("curves") or {}
        if not {"pit_hist", "calibration_observed", "reliability_conf"} & set(curves):  # a joint predictive has neither
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
    written = {name for names in out.values() for name in names}
    written |= _uci_figures(results, out_dir)
    out["Predictive distributions"] = sorted(set(out["Predictive distributions"]))[:24]
    _remove_stale(out_dir, written)
    return out


def _uci_figures(results, out_dir: Path) -> set[str]:
    """The UCI section's own figures (the critical-difference diagram), by name; none without UCI-protocol runs."""
    from densbench.report import uci, uci_ranking

    found = uci.collect(results)
    datasets = [d for d in uci.DATASETS if d in found]
    return {uci_ranking.FIGURE} if datasets and uci_ranking.draw_cd(found, datasets, out_dir / uci_ranking.FIGURE) else set()


FIGURE_PREFIXES = ("compare_", "calib_", "pred_", "rank_")  # the report's own figures: a folder rewritten holds only this pass's


def _remove_stale(out_dir: Path, written: set[str]) -> None:
    """Delete figures an earlier report left in out_dir (runs since removed, renamed, or from older code)."""
    for path in out_dir.glob("*.png"):
        if path.name.startswith(FIGURE_PREFIXES) and path.name not in written:
            path.unlink(missing_ok=True)


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


def _mean_curve(runs: list[dict]) -> tuple[list[float], list[float]] | None:
    """A configuration's validation NLL by optimisation step, averaged over its runs (to the shortest run's end)."""
    curves = [((r.get("curves") or {}).get("train_step"), (r.get("curves") or {}).get("train_val_nll")) for r in runs]
    curves = [(s, v) for s, v in curves if s and v and len(s) == len(v)]
    if not curves:
        return None
    n = min(len(s) for s, _ in curves)
    return list(curves[0][0][:n]), [sum(v[i] for _, v in curves) / len(curves) for i in range(n)]


def _draw_curves(ax: Any, names: list[str], curves: list[Any]) -> None:
    """Each configuration's mean validation NLL against the step, in the comparison's row order."""
    styles = ["-", "--", ":", "-."]
    for i, (name, curve) in enumerate(zip(names, curves)):
        if curve:
            ax.plot(*curve, styles[(i // 10) % 4], color=f"C{i % 10}", lw=1.5, label=name)
    ax.set_title("validation NLL (lower is better)", fontsize=10)
    ax.set_xlabel("optimisation step", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")


def _draw_comparison(ds: str, rs: list[dict], path: Path, curves: list[Any] | None = None) -> None:
    """Each configuration's test NLL, CRPS and calibration error (ECE for classes) on one dataset, with standard
    errors, and its learning curve (validation NLL by step) beside them."""
    import matplotlib.pyplot as plt

    direction = {True: "lower is better", False: "higher is better", None: ""}
    metrics = [(m, f"test {h} ({direction[lower_is_better(m)]})") for m, h in columns("nll", "crps", "mace", "ece")
               if any(r.get(m) is not None for r in rs)]
    names, legend = _labels(rs)
    learning = bool(curves) and any(curves)
    fig, axes = plt.subplots(1, len(metrics) + learning, figsize=(4.5 * (len(metrics) + learning),
                                                                 0.6 * len(rs) + 1.6 + 0.22 * len(legend)), squeeze=False)
    if learning:
        _draw_curves(axes[0, -1], names, curves)
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
    width = 4.5 * (len(metrics) + learning)
    label_in = 0.075 * max((len(n) for n in names), default=10) + 0.2
    if legend:
        fig.text(0.01, 0.01, "\n".join(legend), fontsize=8, va="bottom", ha="left")
    fig.subplots_adjust(left=min(0.6, label_in / width), right=0.98, bottom=(0.55 + 0.22 * len(legend)) / fig.get_figheight(),
                        top=1 - 0.75 / fig.get_figheight(), wspace=0.12 + 0.1 * learning)
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
