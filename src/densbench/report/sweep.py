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
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from densbench.report import uci as uci_report
from densbench.atomic import replacing, write_text
from densbench.config import is_unset
from densbench.report.leaderboard import to_latex, to_markdown
from densbench.progress import UNRECORDED, sweep_table
from densbench.results import RESULT_FILE, run_record, scan_results
from densbench.report.figures import draw_figures
from densbench.report.markdown import RECALIBRATION_COLUMNS, TIMING_PARTS, markdown, relative
from densbench.report.rows import CSV_METRICS, GROUP_KEYS, ROW_KEYS, group_results, summarise, sweep_leaderboard
from densbench.signals import Interrupted, install_process_handlers, process_stage


def write_leaderboards(sweep_dir: str | Path, out_dir: str | Path, fmt: str, title: str | None = None) -> list[Path]:
    """leaderboard.tex or .md (every configuration) and, with UCI-protocol runs, uci_leaderboard beside it."""
    sweep_dir, out_dir = Path(sweep_dir), Path(out_dir)
    results, _ = scan_results(sweep_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return _leaderboards(results, summarise(group_results(results)), out_dir, fmt, title or sweep_dir.name)


def _leaderboards(results: list[tuple[Path, dict]], rows: list[dict], out_dir: Path, fmt: str, title: str) -> list[Path]:
    """The sweep's leaderboard and, with UCI-protocol runs, the UCI one, written as Markdown or LaTeX."""
    render, ext = (to_latex, "tex") if fmt == "latex" else (to_markdown, "md")
    boards = {"leaderboard": sweep_leaderboard(rows, title)} if rows else {}
    uci = uci_report.leaderboard_of(results)
    if uci is not None:
        boards["uci_leaderboard"] = uci
    return [write_text(out_dir / f"{name}.{ext}", render(board)) for name, board in boards.items()]


@dataclass
class Written:
    """What write_report produced: the report's path and the result files it had to leave out."""

    path: Path
    skipped: list[tuple[Path, str]]


def write_report(sweep_dir: str | Path, out_dir: str | Path, title: str | None = None,
                 scanned: tuple[list[tuple[Path, dict]], list[tuple[Path, str]]] | None = None) -> Written:
    """Build report.md, summary.csv, runs.csv, leaderboard.md and figures for every result.json under sweep_dir
    (`scanned`: what scan_results(sweep_dir) returned, when the caller has read them already)."""
    sweep_dir, out_dir = Path(sweep_dir), Path(out_dir)
    results, skipped = scanned if scanned is not None else scan_results(sweep_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = group_results(results)
    rows = summarise(groups)
    _write_csv(out_dir / "summary.csv", list(ROW_KEYS) + ["method", "recalibrate", "runs", "flagged", "stopped_early"]
               + [c for m in CSV_METRICS for c in (m, f"{m}_se")]
               + [c for m, _ in RECALIBRATION_COLUMNS for c in (f"{m}_before", f"{m}_before_se")], rows)
    _write_csv(out_dir / "runs.csv", RUN_COLUMNS + CSV_METRICS, [_run_row(p, r, sweep_dir) for p, r in results])
    figures = draw_figures(groups, rows, out_dir, results)
    _leaderboards(results, rows, out_dir, "markdown", title or sweep_dir.name)  # beside the report, as the CLI's
    md = markdown(title or sweep_dir.name, sweep_dir, results, rows, figures, skipped)
    return Written(write_text(out_dir / "report.md", md), skipped)


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
        table = sorted(((str(relative(p, sweep_dir)), r) for p, r in results), key=lambda pr: pr[0])
        stage = (config.hydra.callbacks.get("progress") or {}).get("total") is not None
        if table and not stage:  # a stage of a larger sweep (a suite counting all of it) leaves the table to its end
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
    # one line, not argparse's usage block: the command was right, the folder is not
    if not sweep.is_dir():
        print(f"densbench: {sweep} is not a directory", file=sys.stderr)
        sys.exit(2)
    if not any(sweep.rglob(RESULT_FILE)):
        print(f"densbench: no result.json under {sweep}: nothing to report", file=sys.stderr)
        sys.exit(2)
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
