"""Throughput and memory of a training: samples and steps per second over timed periods (the first,
warm-up, left out), evaluation speed and the peak memory of the device."""

from __future__ import annotations

import resource
import sys
import time

import lightning.pytorch as pl
import torch


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory of this process on GPU, peak resident set size on CPU (process lifetime)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


class Throughput(pl.Callback):
    """Training samples/s and steps/s after the first evaluation period, evaluation samples/s.

    Times only the training chunks (validation excluded); synchronises CUDA once per period, not per
    step, so the hot path pays nothing. Samples count per model: a stack of N models processes N
    times as many (``stack_samples_per_s``).
    """

    def __init__(self, models: int = 1) -> None:
        self.models = models
        self.train_time = 0.0
        self.train_steps = 0
        self.train_samples = 0
        self.eval_time = 0.0
        self.eval_samples = 0
        self.figures: dict[str, float] = {}  # the summary, taken once at the end of testing
        self._t0: float | None = None
        self._period_steps = 0
        self._period_samples = 0
        self._periods = 0
        self.warmup_time = 0.0

    def _sync(self, trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._sync(trainer)
        self._t0 = time.perf_counter()
        self._period_steps = self._period_samples = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._period_steps += batch.steps
        self._period_samples += batch.steps * pl_module.samples_per_step

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self._t0 is None:
            return
        self._close_period(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._t0 is not None:
            self._close_period(trainer)

    def _close_period(self, trainer) -> None:
        self._sync(trainer)
        dt = time.perf_counter() - self._t0
        self._t0 = None
        self._periods += 1
        if self._periods == 1 and trainer.max_epochs != 1:
            self.warmup_time = dt  # the first period pays one-off costs (allocation, lazy init)
            return
        self.train_time += dt
        self.train_steps += self._period_steps
        self.train_samples += self._period_samples

    def on_test_start(self, trainer, pl_module) -> None:
        self._sync(trainer)
        self._te = time.perf_counter()

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._sync(trainer)
        self.eval_time = time.perf_counter() - self._te
        n = torch.tensor(float(pl_module.test_samples), device=trainer.strategy.root_device)
        self.eval_samples = int(trainer.strategy.reduce(n, reduce_op="sum"))
        # taken once, so TensorBoard and result.json show the same peak memory
        self.figures = self.summary(trainer.strategy.root_device)
        for job in range(len(pl_module.jobs)):
            pl_module.log_job(job, {f"throughput/{k}": v for k, v in self.figures.items()}, final=True)

    def summary(self, device: torch.device) -> dict[str, float]:
        """Throughput figures for result.json and TensorBoard: per model, and for the whole stack."""
        t = max(self.train_time, 1e-12)
        per_model = self.train_samples / t if self.train_steps else float("nan")
        return {
            "train_samples_per_s": per_model,
            "train_steps_per_s": self.train_steps / t if self.train_steps else float("nan"),
            "step_time_ms": 1e3 * t / self.train_steps if self.train_steps else float("nan"),
            "stack_size": float(self.models),
            "stack_samples_per_s": per_model * self.models,
            "eval_samples_per_s": self.eval_samples / max(self.eval_time, 1e-12),
            "peak_memory_mb": peak_memory_mb(device),
        }
