"""Where a run's time went: start-up, training, validation, testing, figures (result.json `timing`).

Start-up runs from the job's start to its first optimisation step; for the first job of a process it
runs from the interpreter's start, so it includes the imports a user waits for. The jobs of a stack
share its start-up, training, validation and test times.
"""

from __future__ import annotations

import os
import time
from typing import Any

import lightning.pytorch as pl


def _process_start() -> float:
    """Wall-clock time (time.time()) at which this process started; this module's import time elsewhere."""
    try:
        with open("/proc/self/stat") as f:
            # the command name (field 2) may hold spaces: count fields after its closing parenthesis
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


PROCESS_START = _process_start()


class Throttle:
    """Something done at most once every `every_s` seconds: due() since the last mark() (or since creation)."""

    def __init__(self, every_s: float) -> None:
        self.every_s = float(every_s)
        self.mark()

    def mark(self) -> None:
        """It was just done."""
        self._last = time.monotonic()

    def due(self) -> bool:
        """Whether `every_s` seconds have passed since it was last done."""
        return time.monotonic() - self._last >= self.every_s


_first_job = True


class JobClock:
    """Wall-clock spans of one job (or one stack): started when the job starts."""

    def __init__(self) -> None:
        global _first_job
        now = time.time()
        self.origin = PROCESS_START if _first_job else now
        _first_job = False
        self.started = time.perf_counter() - (now - self.origin)
        self.spans: dict[str, float] = {}
        self.first_step: float | None = None
        self.test_started: float | None = None

    def add(self, name: str, seconds: float) -> None:
        """Add seconds to a named span."""
        self.spans[name] = self.spans.get(name, 0.0) + seconds

    def mark_first_step(self) -> bool:
        """The first optimisation step is about to run: start-up ends here. True the first time only."""
        if self.first_step is not None:
            return False
        self.first_step = time.perf_counter()
        return True

    def summary(self, figures_s: float = 0.0) -> dict[str, float]:
        """Seconds per part; `total_s` is the job's wall time so far."""
        now = time.perf_counter()
        # a resumed run with no step left is ready when testing starts
        ready = next((t for t in (self.first_step, self.test_started) if t is not None), now)
        out = {"startup_s": ready - self.started, "train_s": max(self.spans.get("fit", 0.0) - self.spans.get("validation", 0.0), 0.0),
               "validation_s": self.spans.get("validation", 0.0), "test_s": self.spans.get("test", 0.0), "figures_s": figures_s}
        out["total_s"] = now - self.started
        return out


class Timing(pl.Callback):
    """Feeds a JobClock from Lightning's hooks: the first step, then fit (less validation) and test spans."""

    def __init__(self, clock: JobClock) -> None:
        self.clock = clock
        self._t: dict[str, float] = {}

    def _start(self, name: str) -> None:
        self._t[name] = time.perf_counter()

    def _stop(self, name: str) -> None:
        if name in self._t:
            self.clock.add(name, time.perf_counter() - self._t.pop(name))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._stop("fit")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.clock.mark_first_step():  # training starts where start-up ends, so neither counts the other
            self._start("fit")

    def on_validation_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._start("validation")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._stop("validation")

    def on_test_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if self.clock.test_started is None:
            self.clock.test_started = time.perf_counter()
        self._start("test")

    def on_test_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._stop("test")
