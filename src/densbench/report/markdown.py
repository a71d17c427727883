"""report.md: the main table, the recalibration and gradient-path comparisons, the UCI section, runs
that need attention, figures and every run with where its time went (torch-free)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from densbench.metric_catalog import columns
from densbench.report import uci as uci_report
from densbench.report.rows import MAIN_COLUMNS, ROW_KEYS, best_marks, fmt, throughput_ratios


TIMING_PARTS = ("startup_s", "train_s", "validation_s", "test_s", "figures_s", "total_s")  # result.json's timing


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(title: str, sweep_dir: Path, results, rows, figures: dict[str, list[str]], skipped) -> str:
    """The whole report.md, section by section."""
    ok = sum(1 for _, r in results if r.get("status") == "ok")
    lines = [f"# densbench report: {title}", ""]
    lines.append(f"Sweep directory: `{sweep_dir}`. Runs: {len(results)} ({ok} ok)"
                 + (f"; {len(skipped)} result files could not be read (listed below)" if skipped else "") + ". "
                 "Metrics are on the test split in original target units; mean ± standard error over runs that "
                 "differ only in seed or data split (every other setting, the code revision and the data are the "
                 "same within a row; `config` names the settings that differ between rows); **bold** marks the "
                 "best value per dataset.")
    lines.append("")
    lines += _main_table(rows)
    lines += _recalibration_section(rows)
    lines += _gradient_paths(rows)
    lines += uci_report.section(results, sweep_dir)
    lines += _attention(results, skipped, sweep_dir)
    for section, paths in figures.items():
        if paths:
            lines += [f"## {section}", ""] + [f"![{Path(p).stem}]({p})" for p in paths] + [""]
    lines += _runs_table(results, sweep_dir)
    return "\n".join(lines)


def _main_table(rows: list[dict]) -> list[str]:
    """One row per configuration, the headline metrics as mean ± SE, the best per dataset in bold."""
    if not rows:
        return []
    cols = [(m, h) for m, h in columns(*MAIN_COLUMNS) if any(r.get(m) is not None for r in rows)]
    keys = [k for k in ROW_KEYS if k != "config" or any(r["config"] for r in rows)]
    marks = best_marks(rows)
    lines = ["| " + " | ".join(keys + ["runs"] + [h for _, h in cols]) + " |", "|" + "---|" * (len(keys) + 1 + len(cols))]
    for i, r in enumerate(rows):
        notes = [f"{r[k]} {k.replace('_', ' ')}" for k in ("flagged", "stopped_early") if r.get(k)]
        runs = f"{r['runs']} ({', '.join(notes)})" if notes else str(r["runs"])
        cells = [_cell(r[k]) for k in keys] + [runs]
        for m, _ in cols:
            c = fmt(r.get(m, float("nan")), r.get(f"{m}_se"), 0 if m == "train_samples_per_s" else 3)
            cells.append(f"**{c}**" if (i, m) in marks else c)
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", "Column meanings: NLL = mean negative log-likelihood (nats, all constants); CRPS = continuous ranked "
                    "probability score (ranked probability score for counts and classes); cal. error = mean absolute "
                    "calibration error of central intervals over 100 levels; ECE = expected calibration error, 15 bins; "
                    "cover@90 = share of test targets inside the central 90% interval; NLL - oracle = gap to the true "
                    "distribution's NLL where it is known. Bold: the best of each dataset's rows over the splits of its "
                    "fullest row (a row over other splits is no rival). Every metric is in `summary.csv`, every "
                    "run in `runs.csv`.", ""]


def _gradient_paths(rows: list[dict]) -> list[str]:
    """Training throughput of the analytic and the autograd path, where a configuration ran both."""
    ratios = throughput_ratios(rows)
    if not ratios:
        return []
    lines = ["## Analytic vs autograd gradients (training throughput)", "",
             "| dataset | head | loss | device | config | analytic samples/s | autograd samples/s | analytic / autograd |",
             "|---|---|---|---|---|---|---|---|"]
    for r in ratios:
        lines.append(f"| {r['dataset']} | {r['head']} | {r['loss']} | {r['device']} | {_cell(r['config'])} | "
                     f"{r['analytic']:.0f} | {r['autograd']:.0f} | {r['ratio']:.2f} |")
    return lines + [""]


def _attention(results, skipped, sweep_dir: Path) -> list[str]:
    """Runs that failed, were skipped, interrupted or flagged, and result files that could not be read."""
    attention = [(p, r) for p, r in results if r.get("status") != "ok" or r.get("flags")]
    if not attention and not skipped:
        return []
    lines = ["## Runs that need attention", "", "| run | status | what |", "|---|---|---|"]
    for p, r in attention:
        what = r.get("error") if r.get("status") != "ok" else "; ".join(r["flags"])
        lines.append(f"| `{relative(p, sweep_dir)}` | {r.get('status')}{' (flagged)' if r.get('flags') else ''} | {_cell(what)} |")
    for p, why in skipped:
        lines.append(f"| `{relative(p, sweep_dir)}` | left out | {_cell(why)} |")
    return lines + [""]


def _runs_table(results, sweep_dir: Path) -> list[str]:
    """Every run with its test NLL and where its time went."""
    lines = ["## Runs", "", "Seconds: start-up (process or job start to the first optimisation step), training, validation, "
             "testing, figures, and the job's total (the jobs of one stack share its start-up, training and test).", "",
             "| run | status | dataset | loss | head | grad | device | seed/split | NLL | start-up | train | validation | test | figures | total |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p, r in results:
        lab = r.get("labels", {})
        nll = (r.get("metrics") or {}).get("nll")
        ss = lab.get("split") if lab.get("split") is not None else lab.get("seed")
        timing = r.get("timing") or {"total_s": r.get("wall_time_s")}  # results from before timing was recorded
        seconds = ["-" if timing.get(k) is None else f"{timing[k]:.1f}" for k in TIMING_PARTS]
        lines.append(f"| `{relative(p, sweep_dir)}` | {r.get('status')} | {lab.get('dataset')} | {lab.get('loss')} | {lab.get('head')} | "
                     f"{lab.get('grad')} | {lab.get('device')} | {ss} | {fmt(nll, None)} | " + " | ".join(seconds) + " |")
    return lines + [""]


RECALIBRATION_COLUMNS = columns("nll", "crps", "mace", "coverage90", "width90")


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
            cells.append(f"{fmt(r.get(f'{m}_before', float('nan')), r.get(f'{m}_before_se'))} → "
                         f"{fmt(r.get(m, float('nan')), r.get(f'{m}_se'))}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def relative(p: Path, root: Path) -> Path:
    return p.relative_to(root) if p != root else Path(p.name)
