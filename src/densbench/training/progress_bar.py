"""A training's progress: a tqdm bar (optimisation steps, steps/s, the last validation NLL, time
left) when stderr is a terminal, one plain line per validation period otherwise (CI logs, files)."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import lightning.pytorch as pl

from densbench.progress import duration, is_terminal, say


LINE_EVERY_S = 5.0  # without a terminal: at most one line per validation period, and one per this many seconds


class Progress(pl.Callback):
    """Optimisation steps of a run (or a stack of runs) as a tqdm bar, or a line per validation."""

    def __init__(self, label: str, interactive: bool | None = None) -> None:
        self.label = label
        self.interactive = is_terminal() if interactive is None else interactive
        self.bar = None
        self._t0 = self._said = 0.0
        self._first = 0
        self._warm: tuple[float, int] | None = None  # (time, step) at the end of the first validation period

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        state = pl_module.state
        self._t0, self._first, self._warm = time.perf_counter(), state.opt_steps, None
        if self.interactive and trainer.is_global_zero:
            from tqdm import tqdm

            self.bar = tqdm(total=state.total_steps, initial=state.opt_steps, unit="step", desc=self.label,
                            file=sys.stderr, dynamic_ncols=True, leave=False)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.bar is not None:
            self.bar.update(pl_module.state.opt_steps - self.bar.n)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        state = pl_module.state
        last = [h["val_nll"][-1] for h, on in zip(state.history, state.active) if on and h.get("val_nll")]
        val = f"val_nll {sum(last) / len(last):.4f}" + (f" (mean of {len(last)})" if len(last) > 1 else "") if last else ""
        if self.bar is not None:
            self.bar.set_postfix_str(val)
            return
        done, total = state.opt_steps, state.total_steps
        now = time.perf_counter()
        # the first period pays for warm-up (lazy imports, allocator, first validation): the time left is
        # told from the steps after it, so that a run's first lines do not promise twice its length
        warm, self._warm = self._warm, self._warm or (now, done)
        if now - self._said < LINE_EVERY_S and done < total:
            return
        self._said = now
        since, start = (warm[0], warm[1]) if warm is not None and done > warm[1] else (self._t0, self._first)
        rate = (done - start) / (now - since) if now > since else float("nan")
        eta = (total - done) / rate if warm is not None and rate > 0 else float("nan")
        parts = [f"step {done}/{total} ({100 * done / max(total, 1):.0f}%)", f"{rate:.0f} steps/s"]
        parts += [val] if val else []
        parts += [f"{duration(eta)} left"] if math.isfinite(eta) else []
        say(f"densbench: {self.label}: " + ", ".join(parts))

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
