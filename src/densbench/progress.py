"""The lines a user reads: the one that ends every run, a sweep's job count and closing table.

Torch-free (the sweep side runs in Hydra callbacks); the progress bar of a training is in
progress_bar.py. Every run ends with one line of its key test metrics and its run directory; a
sweep counts its finished jobs and ends with a compact table.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from densbench.metric_catalog import ON_THE_LAST_LINE
from densbench.results import read_result

TALLY_FILE = ".jobs_done"  # in the sweep directory: one line per finished job of the current multirun
TABLE_ROWS = 40  # a sweep's closing table lists at most this many runs (the report has them all)


# run directories of this process's sweeps whose record could not be written (Hydra's bookkeeping
# before the job, or result.json after it, met a full or read-only disk): failed in the sweep's exit status
UNRECORDED: dict[str, str] = {}


def job_unrecorded(config: DictConfig, exc: OSError) -> tuple[str, str]:
    """A job that failed in Hydra's bookkeeping (a full or read-only disk): one line, remembered for the sweep's
    end; its (run directory, reason)."""
    run_dir = str(config.hydra.runtime.output_dir)
    why = f"{type(exc).__name__}: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    UNRECORDED[run_dir] = why
    say(f"densbench: failed: {why}  ->  {run_dir}")
    return run_dir, why


def is_terminal() -> bool:
    """Whether stderr (where densbench talks) is an interactive terminal."""
    return sys.stderr.isatty()


def say(line: str) -> None:
    """One line to stderr, flushed."""
    print(line, file=sys.stderr, flush=True)


def duration(seconds: float) -> str:
    """Seconds as '12.3 s' or '4.5 min'."""
    seconds = max(0.0, seconds)
    return f"{seconds:.1f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def metrics_text(metrics: dict[str, Any], as_trained: dict[str, Any] | None = None) -> str:
    """The key test metrics of a result, as 'nll 0.5301  crps 0.2279 ...'; with `as_trained` (a recalibrated
    run's metrics before recalibration), each that changed as 'nll 0.927 (as trained 0.848)'."""
    parts = []
    for name in ON_THE_LAST_LINE:
        value = metrics.get(name)
        if isinstance(value, (int, float)) and math.isfinite(value):
            before = (as_trained or {}).get(name)
            changed = isinstance(before, (int, float)) and math.isfinite(before) and f"{before:.4g}" != f"{value:.4g}"
            parts.append(f"{name} {value:.4g}" + (f" (as trained {before:.4g})" if changed else ""))
    return "  ".join(parts)


def _result_text(result: dict[str, Any]) -> str:
    """What a finished run's line says of its scores: recalibrated beside as trained, early stopping, a resume."""
    text = metrics_text(result.get("metrics") or {}, result.get("metrics_uncalibrated"))
    train = result.get("train") or {}
    if train.get("stopped_early"):  # the steps a user asked for were not all trained: say so, and where it stopped
        text += f"  (stopped early at step {train['opt_steps']} of {train['max_steps']})"
    if result.get("resumed_from_step"):
        text += f"  (resumed from step {result['resumed_from_step']})"
    return text


def run_line(result: dict[str, Any], run_dir: str | Path, reused: bool = False) -> str:
    """The one line that ends a run: status, key test metrics (or the error), wall time, run directory."""
    status = result.get("status", "?")
    if status == "ok":
        what = _result_text(result)
        seconds = (result.get("timing") or {}).get("total_s", result.get("wall_time_s", 0.0))  # start-up included
        took = "" if reused else f"  in {duration(seconds)}"
        head = "reused an earlier ok result:" if reused else "ok"
        if result.get("flags"):  # finished, but not to be read as a good run: say why on the line a user reads
            why = "; ".join(result["flags"])
            head = f"reused an earlier flagged result ({why}):" if reused else f"flagged ({why}):"
        return f"densbench: {head}  {what}{took}  ->  {run_dir}"
    return f"densbench: {status}: {result.get('error')}  ->  {run_dir}"


def announce(result: dict[str, Any], run_dir: str | Path, reused: bool = False) -> None:
    """Print a run's closing line."""
    say(run_line(result, run_dir, reused))


def sweep_size(task_overrides: list[str], sweeper_params: dict[str, Any] | None) -> int | None:
    """How many jobs a basic-sweeper multirun of these overrides has (None if it cannot be told)."""
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parser = OverridesParser.create()
        counts: dict[str, int] = {}
        params = [f"{k}={v}" for k, v in (sweeper_params or {}).items()]
        for override in parser.parse_overrides(params) + parser.parse_overrides(list(task_overrides)):
            key = override.get_key_element()
            counts[key] = len(list(override.sweep_string_iterator())) if override.is_sweep_override() else 1
        return math.prod(counts.values())
    except Exception:  # noqa: BLE001 - a count is a nicety, never a reason to fail a sweep
        return None


def sweep_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """A compact table of a sweep's runs: name, status, key metrics, wall time."""
    names = [name for name, _ in rows[:TABLE_ROWS]]
    width = min(max((len(n) for n in names), default=3), 60)
    lines = []
    for name, res in rows[:TABLE_ROWS]:
        shown = name if len(name) <= width else "..." + name[-(width - 3):]
        status = res.get("status", "?")
        what = _result_text(res) if status == "ok" else str(res.get("error") or "")[:80]
        if status == "ok" and res.get("flags"):
            status, what = "flagged", f"{what}  ({res['flags'][0].split(':')[0]}{', ...' if len(res['flags']) > 1 else ''})"
        lines.append(f"  {shown:<{width}}  {status:<11}  {what}")
    if len(rows) > TABLE_ROWS:
        lines.append(f"  ... and {len(rows) - TABLE_ROWS} more runs (all in the report)")
    return "\n".join(lines)


class SweepProgress(Callback):
    """Hydra callback: after every job of a multirun, how many of how many are done, by status."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        params = config.hydra.sweeper.get("params")
        self.total = sweep_size(list(config.hydra.overrides.task), OmegaConf.to_container(params) if params else None)
        self.counts: dict[str, int] = {}
        # parallel launchers end their jobs in worker processes, each with its own copy of this callback:
        # the sweep's count is kept in a file all of them append to (one short O_APPEND write per job)
        self.tally: Path | None = Path(str(config.hydra.sweep.dir)) / TALLY_FILE
        try:
            self.tally.parent.mkdir(parents=True, exist_ok=True)
            self.tally.write_text("")
        except OSError:
            self.tally = None

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if not hasattr(self, "counts") or config.hydra.mode.name != "MULTIRUN":
            return
        result = read_result(Path(config.hydra.runtime.output_dir)) or {}
        # no record: a job that failed before writing one, or one a stopping parallel worker left unrun
        failed = getattr(job_return.status, "name", "") == "FAILED" or str(config.hydra.runtime.output_dir) in UNRECORDED
        status = result.get("status") or ("failed" if failed else "not run")
        self.counts[status] = self.counts.get(status, 0) + 1
        if self.tally is not None:
            try:
                fd = os.open(self.tally, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
                try:
                    os.write(fd, f"{status}\n".encode())
                finally:
                    os.close(fd)
                statuses = self.tally.read_text().splitlines()
                self.counts = {s: statuses.count(s) for s in set(statuses)}
            except OSError:
                pass  # a count is a nicety: this process's own then
        done = sum(self.counts.values())
        of = f"/{self.total}" if self.total else ""
        tally = ", ".join(f"{n} {s}" for s, n in sorted(self.counts.items()))
        say(f"densbench: [{done}{of}] jobs done: {tally}")
