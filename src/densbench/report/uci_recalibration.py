"""The UCI section's recalibration table: recalibrated runs beside the same models as trained, per dataset
and method, and the goals each recalibration is held to (torch-free)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from densbench.report.leaderboard import mean_se


def pm(m: float, se: float | None, digits: int = 2) -> str:
    """mean ± se as the UCI tables print them ("-" where there is no mean)."""
    if not math.isfinite(m):
        return "-"
    return f"{m:.{digits}f}" if se is None else f"{m:.{digits}f} ± {se:.{digits}f}"


RECALIBRATIONS = ("scale", "isotonic", "conformal")


COVER_LEVEL = 0.9


def _metric(runs: list[dict], name: str, before: bool = False) -> tuple[float, float | None]:
    return mean_se([(r.get("metrics_uncalibrated" if before else "metrics") or {}).get(name) for r in runs])


def calibration_floor(n: int, levels: int = 100) -> float:
    """Expected cal. error of a perfectly calibrated predictive on n test points: the mean over the central
    interval levels p of E|B/n - p|, B ~ Binomial(n, p), in its normal approximation sqrt(2/pi) sqrt(p(1-p)/n)."""
    ps = np.linspace(0, 1, levels)
    return float(np.mean(np.sqrt(2 / np.pi) * np.sqrt(ps * (1 - ps) / max(n, 1))))


def _dataset_row(ds: str, runs: dict[str, list[dict]], goals: dict[str, int], counted: dict[str, int]) -> str:
    """One dataset's row of a method's recalibration table; the goals it meets are counted into `goals`."""
    # each recalibration's own runs carry their models as trained: before and after of the same models
    before = {name: {k: _metric(r, k, before=True) for k in ("mace", "nll", "coverage90", "width90")} for name, r in runs.items() if r}
    after = {name: {k: _metric(r, k) for k in ("mace", "nll", "coverage90", "width90")} for name, r in runs.items() if r}
    base = next(iter(before.values()))
    train = next(r for r in runs.values() if r)[0].get("train") or {}
    cells = [ds, str(max(len(r) for r in runs.values())), f"{train.get('n_val')} / {train.get('n_test')}",
             pm(*base["mace"], 3)]
    cells += [pm(*after[name]["mace"], 3) if name in after else "-" for name in ("scale", "isotonic")]
    cells += [f"{calibration_floor(int(train.get('n_test') or 0)):.3f}", pm(*base["nll"], 3)]
    cells += [pm(*after[name]["nll"], 3) if name in after else "-" for name in ("scale", "isotonic")]
    cells.append(pm(*base["coverage90"], 3))
    if "isotonic" in after:
        counted["isotonic"] += 1
        goals["isotonic"] += after["isotonic"]["mace"][0] <= 0.5 * before["isotonic"]["mace"][0]
    if "scale" in after:
        counted["scale"] += 1
        goals["scale"] += after["scale"]["nll"][0] - before["scale"]["nll"][0] <= 0.01
    if "conformal" in after:
        m, se = after["conformal"]["coverage90"]
        hi = COVER_LEVEL + 1 / (min((r.get("train") or {}).get("n_val") or 0 for r in runs["conformal"]) + 1)
        counted["conformal"] += 1
        goals["conformal"] += COVER_LEVEL - 2 * (se or 0) <= m <= hi + 2 * (se or 0)
        cells += [pm(m, se, 3), f"[0.900, {hi:.3f}]",
                  f"{before['conformal']['width90'][0]:.3g} → {after['conformal']['width90'][0]:.3g}"]
    else:
        cells += ["-", "-", "-"]
    return "| " + " | ".join(cells) + " |"


def recalibration_section(found: dict[str, dict[str, dict[str, list[dict]]]], datasets: list[str]) -> list[str]:
    """Recalibrated runs (by recalibration, dataset and method) beside the same models as trained, and the goals
    they are held to."""
    methods = sorted({m for runs in found.values() for ds in runs for m in runs[ds]})
    if not methods:
        return []
    lines = ["### Recalibration: before and after", "",
             "Each recalibration is fitted on the validation rows of the split (`recalibrate=`) and scored on its test rows; "
             "before = the same models as trained (`metrics_uncalibrated`). cal. error = mean absolute calibration error "
             "over 100 central intervals; its floor is what a perfectly calibrated predictive would still show on the "
             "split's test rows (sampling noise, `calibration_floor`), so no recalibration can go far below it. "
             "`conformal` defines intervals only (its NLL is the model's); its 90% coverage "
             "is held to the split-conformal band [0.90, 0.90 + 1/(n_val + 1)], up to two standard errors over splits.", ""]
    recal = [r for name in RECALIBRATIONS for ds in found[name].values() for runs in ds.values() for r in runs]
    reused = [r for r in recal if r.get("trained_by")]
    if recal:
        example = Path(reused[0]["trained_by"]).name if reused else None
        lines += [f"Trained once: {len(reused)} of {len(recal)} recalibrated runs use the weights of the run as trained on "
                  f"the same split (result.json `trained_by`{f', e.g. `{example}`' if example else ''}); "
                  f"{len(recal) - len(reused)} trained a model of their own.", ""]
    for method in methods:
        lines += [f"Method `{method}`:", "",
                  "| dataset | splits | n_val / n_test | cal. error as trained | scale | isotonic | floor | NLL as trained "
                  "| scale | isotonic | cover@90 as trained | conformal | band | width@90 as trained → conformal |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        goals, counted = defaultdict(int), defaultdict(int)
        for ds in datasets:
            runs = {name: found[name].get(ds, {}).get(method, []) for name in RECALIBRATIONS}
            if any(runs.values()):
                lines.append(_dataset_row(ds, runs, goals, counted))
        lines += ["", f"Goals for `{method}`: isotonic halves the mean calibration error on {goals['isotonic']} of "
                  f"{counted['isotonic']} datasets (goal: at least 7 of 9); scale worsens the mean test NLL by at most 0.01 on "
                  f"{goals['scale']} of {counted['scale']} (goal: all); conformal 90% coverage inside its band on "
                  f"{goals['conformal']} of {counted['conformal']} (goal: all).", ""]
    return lines
