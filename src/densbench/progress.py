"""The lines a user reads: the one that ends every run, a sweep's job count and closing table.

Torch-free (the sweep side runs in Hydra callbacks); the progress bar of a training is in
progress_bar.py. Every run ends with one line of its key test metrics and its run directory; a
sweep counts its finished jobs and ends with a compact table.
"""

from __future__ import annotations

import math
import os
import sys
import time
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


STACK_LINES = 4  # a stack of more jobs ends in one line for all, plus one for each job that is not plainly ok


def announce_stack(ended: list[tuple[dict[str, Any], Path]]) -> None:
    """The closing lines of a stack's jobs: each job's for a small stack; for a large one (the 20 splits of a
    UCI method), only the jobs that failed or are flagged, and one line for the rest, so a suite does not flood."""
    if len(ended) <= STACK_LINES:
        for result, run_dir in ended:
            announce(result, run_dir)
        return
    counts: dict[str, int] = {}
    for result, run_dir in ended:
        status = result.get("status", "?")
        if status != "ok" or result.get("flags"):
            announce(result, run_dir)
        key = "flagged" if status == "ok" and result.get("flags") else status
        counts[key] = counts.get(key, 0) + 1
    parent = os.path.commonpath([str(Path(d).parent) for _, d in ended])
    tally = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    say(f"densbench: a stack of {len(ended)} jobs ended: {tally}  ->  {parent}")


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


def listed_size(sweeper: dict[str, Any], task_overrides: list[str]) -> int | None:
    """How many jobs a hydra/sweeper=list multirun has: each listed job crossed with the sweeps it does not set."""
    try:
        import yaml
        from hydra.core.override_parser.overrides_parser import OverridesParser

        listed = list(sweeper.get("jobs") or [])
        if sweeper.get("jobs_file"):
            listed += list(yaml.safe_load(Path(sweeper["jobs_file"]).read_text()) or [])  # JSON is YAML
        params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
        axes = {o.get_key_element(): len(list(o.sweep_string_iterator())) if o.is_sweep_override() else 1
                for o in OverridesParser.create().parse_overrides(params + list(task_overrides))}
        # a listed job's keys by plain splitting: Hydra's parser on every one of a thousand jobs is slow
        own = [{o.split("=", 1)[0].lstrip("+~") for o in job} for job in listed]
        return sum(math.prod(n for k, n in axes.items() if k not in keys) for keys in own) or None
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


THROTTLE_S = 5.0  # a sweep's count is said at most this often, unless another tenth is done or the sweep ends
ETA_MIN_JOBS, ETA_MIN_SHARE = 2, 0.05  # no ETA before this many jobs and this share of the total: too noisy


def crossed(before: int, after: int, mark: int) -> bool:
    """Whether a count going from `before` to `after` reached `mark`."""
    return before < mark <= after


def tenths_crossed(before: int, after: int, total: int | None) -> bool:
    """Whether a count going from `before` to `after` reached another tenth of `total`."""
    return bool(total) and (10 * min(after, total)) // total > (10 * min(before, total)) // total


def eta(done: int, total: int | None, elapsed: float) -> float | None:
    """Seconds left at the rate measured so far (None while too few jobs are done to say)."""
    if not total or done >= total or elapsed <= 0 or done < max(ETA_MIN_JOBS, ETA_MIN_SHARE * total):
        return None
    return elapsed * (total - done) / done


def count_line(done: int, total: int | None, counts: dict[str, int], earlier: int, elapsed: float,
               left: float | None) -> str:
    """'densbench: [done/total] jobs done: <counts by status>, <elapsed> elapsed, ETA <left>'."""
    of = f"/{total}" if total else ""
    tally = ", ".join(([f"{earlier} earlier"] if earlier else []) + [f"{n} {s}" for s, n in sorted(counts.items())])
    tail = f", ETA {duration(left)}" if left is not None else ""
    return f"densbench: [{done}{of}] jobs done: {tally}, {duration(elapsed)} elapsed{tail}"


class SweepProgress(Callback):
    """Hydra callback: how many of a multirun's (or a suite's) jobs are done, by status, with the time
    elapsed and an ETA; one line at most every few seconds, at every tenth, and at the sweep's end.

    A suite of several multiruns passes its own count (hydra.callbacks.progress.total, .offset: its
    jobs done before this multirun, .start: its start in epoch seconds), so that its stages read as one.
    """

    def __init__(self, total: int | None = None, offset: int | None = None, start: float | None = None) -> None:
        self.suite_total, self.offset, self.suite_start = total, int(offset or 0), start

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweeper = OmegaConf.to_container(config.hydra.sweeper)
        task = list(config.hydra.overrides.task)
        listed = sweeper.get("jobs_file") or sweeper.get("jobs")
        self.begin(listed_size(sweeper, task) if listed else sweep_size(task, sweeper.get("params")),
                   Path(str(config.hydra.sweep.dir)))

    def begin(self, jobs: int | None, sweep_dir: Path | None = None) -> None:
        """Start counting a multirun of `jobs` jobs (None: not known), its tally file in sweep_dir if given."""
        self.expect(jobs)
        self.counts: dict[str, int] = {}
        self.said_at = time.time()
        self.start = self.suite_start if self.suite_start is not None else self.said_at
        # parallel launchers end their jobs in worker processes, each with its own copy of this callback:
        # the sweep's count is kept in a file all of them append to (one short O_APPEND write per job)
        self.tally: Path | None = sweep_dir / TALLY_FILE if sweep_dir is not None else None
        try:
            if self.tally is not None:
                self.tally.parent.mkdir(parents=True, exist_ok=True)
                self.tally.write_text("")
        except OSError:
            self.tally = None

    def expect(self, jobs: int | None) -> None:
        """This multirun has `jobs` jobs (None: not known); a launcher that knows better may say so."""
        self.jobs = jobs
        self.total = self.suite_total or (self.offset + jobs if jobs else None)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if not hasattr(self, "counts") or config.hydra.mode.name != "MULTIRUN":
            return
        result = read_result(Path(config.hydra.runtime.output_dir)) or {}
        # no record: a job that failed before writing one, or one a stopping parallel worker left unrun
        failed = getattr(job_return.status, "name", "") == "FAILED" or str(config.hydra.runtime.output_dir) in UNRECORDED
        self.add([result.get("status") or ("failed" if failed else "not run")])

    def add(self, statuses: list[str]) -> None:
        """Count finished jobs (one, or a stack's that ended together) and say where the sweep stands, if due."""
        mine = self._record(statuses)
        now, done, n = time.time(), self.offset + mine, len(statuses)
        # the job that ends the multirun is known by its place in the tally: exactly one line says the end
        ended = crossed(mine - n, mine, self.jobs) if self.jobs else bool(self.total) and crossed(done - n, done, self.total)
        # without a total there is no end to wait for: every job is said, as a sweep of unknown size always was
        if not (self.total is None or ended or now - self.said_at >= THROTTLE_S or tenths_crossed(done - n, done, self.total)):
            return
        self.said_at = now
        # the rate counts the jobs done since `start`: the earlier stages' only when `start` is the suite's
        base = 0 if self.suite_start is not None else self.offset
        left = eta(done - base, self.total - base if self.total else None, now - self.start)
        say(count_line(done, self.total, self.counts, self.offset, now - self.start, left))

    def _record(self, statuses: list[str]) -> int:
        """Count statuses in the sweep's tally file (shared with the other workers); this multirun's jobs
        done up to and including them (this process's own count where the file cannot be used)."""
        if self.tally is not None:
            try:
                fd = os.open(self.tally, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
                try:
                    os.write(fd, "".join(f"{s}\n" for s in statuses).encode())
                    upto = os.lseek(fd, 0, os.SEEK_CUR)  # the end of this write: the jobs before and these
                finally:
                    os.close(fd)
                seen = self.tally.read_bytes()[:upto].decode(errors="replace").splitlines()
                self.counts = {s: seen.count(s) for s in set(seen)}
                return len(seen)
            except OSError:
                pass  # a count is a nicety: this process's own then
        for s in statuses:
            self.counts[s] = self.counts.get(s, 0) + 1
        return sum(self.counts.values())
