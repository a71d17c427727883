"""Calibration figures drawn from recorded curves alone (per run and per report).

Kept apart from figures.py, which needs torch and a model: a report built from result.json files
(in the sweep's parent process, or by `python -m densbench.report`) then imports matplotlib only.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def calibration_figure(curves: list[dict], title: str = "", before: list[dict] | None = None):
    """PIT histogram and calibration curve (reliability diagram for classes), averaged over runs;
    `before`: the same runs' curves before recalibration, drawn beside them."""

    def avg(name, source=curves):
        arrs = [np.asarray(c[name], dtype=float) for c in (source or []) if name in c]
        return np.mean(arrs, 0) if arrs else None

    pit_before, obs_before = avg("pit_hist", before), avg("calibration_observed", before)
    label = "recalibrated" if before else "model"

    pit, exp, obs = avg("pit_hist"), avg("calibration_expected"), avg("calibration_observed")
    conf, acc, cnt = avg("reliability_conf"), avg("reliability_acc"), avg("reliability_count")
    panels = [p for p in (pit is not None, exp is not None or conf is not None) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    i = 0
    if pit is not None:
        ax = axes[0, i]
        b = len(pit)
        ax.bar((np.arange(b) + 0.5) / b, pit * b, width=1 / b, color="#2E2585", alpha=0.75, label=label)
        if pit_before is not None:
            ax.stairs(pit_before * b, np.linspace(0, 1, b + 1), color="#DD5500", lw=1.5, label="before recalibration")
            ax.legend(fontsize=8)
        ax.axhline(1.0, color="grey", ls="--", lw=1)
        ax.set_xlabel("PIT value")
        ax.set_ylabel("density")
        ax.set_title("PIT histogram", fontsize=10)
        i += 1
    ax = axes[0, i] if i < len(panels) else None
    if ax is not None and exp is not None:
        ax.plot(exp, obs, color="#2E2585", lw=1.8, label=label)
        if obs_before is not None:
            ax.plot(exp, obs_before, color="#DD5500", lw=1.5, ls="-.", label="before recalibration")
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="ideal")
        ax.set_xlabel("expected proportion in central interval")
        ax.set_ylabel("observed proportion")
        ax.set_title("calibration curve", fontsize=10)
        ax.legend(fontsize=8)
    elif ax is not None and conf is not None:
        keep = cnt > 0
        ax.plot(conf[keep], acc[keep], "o-", color="#2E2585", lw=1.5, label="model")
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="ideal")
        ax.set_xlabel("confidence")
        ax.set_ylabel("observed frequency")
        ax.set_title("reliability diagram (15 bins)", fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    # fixed margins: tight_layout measures every text box and cost 0.2 s a figure, most of a report's time
    fig.subplots_adjust(left=0.1 if len(panels) > 1 else 0.17, right=0.98, bottom=0.14, top=0.84, wspace=0.28)
    return fig
