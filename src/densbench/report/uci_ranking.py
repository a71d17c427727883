"""Ranking methods across the UCI datasets: average ranks, Friedman's test and Nemenyi's critical difference
(Demšar 2006) through autorank, and the critical-difference diagram.

Each dataset ranks the methods by mean test NLL at its targets' resolution (NLL@h where it is set, else the
density NLL); only methods with runs on every dataset take part (a GP skipped on the large datasets does
not), so each rank is over the same set.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np

from densbench.methods import baselines
from densbench.report.uci import _nll, paired, ranked_best, ranking_key

FIGURE = "rank_cd.png"


def score_table(found: dict, datasets: list[str]) -> tuple[list[str], list[list[float]]]:
    """The methods with a finite score on every dataset, and their scores [dataset][method] (NLL@h or NLL)."""
    methods = sorted(set.intersection(*(set(found[ds]) for ds in datasets))) if datasets else []
    rows = []
    for ds in datasets:
        key = ranking_key(found[ds])
        rows.append([_nll(found[ds][m], key)[0] for m in methods])
    finite = [j for j in range(len(methods)) if all(row[j] == row[j] for row in rows)]
    return [methods[j] for j in finite], [[row[j] for j in finite] for row in rows]


def ranking(found: dict, datasets: list[str]):
    """autorank's result for the score table (lower is better; Friedman and Nemenyi), or None with fewer than
    three methods (autorank compares two by Wilcoxon's test, without a critical difference) or five datasets."""
    methods, rows = score_table(found, datasets)
    if len(methods) < 3 or len(rows) < 5:
        return None
    import pandas as pd
    from autorank import autorank

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # autorank warns about its assumptions
        warnings.simplefilter("ignore")
        return autorank(pd.DataFrame(rows, columns=methods, index=datasets), alpha=0.05, order="ascending",
                        force_mode="nonparametric")


def ranking_section(found: dict, datasets: list[str]) -> list[str]:
    """Average ranks, the critical difference and the diagram (drawn by draw_cd beside the report)."""
    result = ranking(found, datasets)
    if result is None:
        return []
    ranks = result.rankdf["meanrank"].sort_values()
    lines = ["### Ranking across datasets", "",
             f"Methods ranked per dataset by mean test NLL@h (the density NLL where no resolution is set), over the "
             f"{len(datasets)} datasets; only methods run on every dataset. Friedman's test: p = {result.pvalue:.2g}; "
             f"Nemenyi's critical difference at α = 0.05: **{result.cd:.2f}** ranks (methods whose average ranks differ "
             "by less are not told apart by these datasets).", "",
             "| method | average rank |", "|---|---|"]
    lines += [f"| {m} | {r:.2f} |" for m, r in ranks.items()]
    return lines + ["", f"![critical-difference diagram]({FIGURE})", ""]


def draw_cd(found: dict, datasets: list[str], path: Path) -> bool:
    """Draw the critical-difference diagram into path; False when there is no ranking to draw."""
    result = ranking(found, datasets)
    if result is None:
        return False
    import matplotlib.pyplot as plt
    from autorank import plot_stats

    from densbench.atomic import save_figure

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # it prints the table it draws
        warnings.simplefilter("ignore")
        ax = plot_stats(result, allow_insignificant=True)
    save_figure(ax.get_figure(), path, bbox_inches="tight", dpi=120)
    plt.close(ax.get_figure())
    return True


def per_split(runs: list[dict], key: str) -> np.ndarray:
    """A method's metric by split index (NaN where a split has no run)."""
    splits = {int(r["labels"]["split"]): (r.get("metrics") or {}).get(key) for r in runs if r["labels"].get("split") is not None}
    out = np.full(max(splits, default=-1) + 1, np.nan)
    for s, v in splits.items():
        out[s] = np.nan if v is None else v
    return out


def paired_section(found: dict, datasets: list[str]) -> list[str]:
    """Every method against the best network of each dataset, split by split: mean difference and splits won."""
    methods = sorted({m for ds in datasets for m in found[ds]}, key=lambda m: (m in baselines(), m == "ensemble", m))
    header, cells = [], {m: [] for m in methods}
    for ds in datasets:
        key = ranking_key(found[ds])
        best = ranked_best({m: r for m, r in found[ds].items() if m not in baselines()})
        header.append(f"{ds} (vs {best})")
        reference = per_split(found[ds][best], key) if best else np.array([])
        for m in methods:
            p = paired(found[ds][m], reference, key) if m in found[ds] and m != best else None
            cells[m].append("best" if m == best else "-" if p is None else f"{p['mean']:+.3f} ± {p['se']:.3f} ({p['won']}/{p['splits']})")
    return ["### Paired per split against each dataset's best network", "",
            "Test NLL@h (the density NLL where no resolution is set) minus that of the dataset's best network on the "
            "same split: mean ± standard error of the differences, and (splits it wins / splits paired). Paired "
            "differences remove the split-to-split spread that the leaderboard's standard errors carry.", "",
            "| method | " + " | ".join(header) + " |", "|---|" + "---|" * len(header),
            *[f"| {m} | " + " | ".join(c) + " |" for m, c in cells.items()], ""]
