"""The loop's settings (config group ``loop``), checked once, and the step arithmetic every part shares.

Torch-free, so a bad value is refused before anything heavy loads. Lightning's own settings are the
``trainer`` group; what Lightning calls an epoch or a batch is explained in densbench.training.engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from densbench.errors import ConfigError, one_of, positive

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def steps_per_pass(n_train: int, batch_size: int | None) -> int:
    """Optimisation steps per epoch: one pass over the training data in whole minibatches (1 for full batch).

    Every minibatch holds batch_size rows (densbench.training.batches), so an epoch of ceil(n / b) steps
    trains on the n rows once plus the first rows of the next pass that complete its last batch."""
    return 1 if batch_size is None else math.ceil(n_train / batch_size)


@dataclass(frozen=True)
class Loop:
    """How long a job trains, how often it validates and how its steps are grouped (see conf/loop/default.yaml)."""

    max_steps: int | None = 3000
    max_epochs: int | None = None
    batch_size: int | None = None
    eval_every: int | None = 100
    steps_per_call: int = 50
    early_stopping_patience: int | None = None
    checkpoint_every_s: float = 10.0
    flag_margin: float = 1.0
    absurd_loss: float = 1e6
    threads: int | str = "auto"
    compile: bool = False
    compile_mode: str = "default"

    def __post_init__(self) -> None:
        positive("loop.max_steps", self.max_steps, integer=True, allow_null=self.max_epochs is not None)
        positive("loop.max_epochs", self.max_epochs, integer=True, allow_null=True)
        positive("loop.batch_size", self.batch_size, integer=True, allow_null=True)
        positive("loop.eval_every", self.eval_every, integer=True, allow_null=True)
        positive("loop.steps_per_call", self.steps_per_call, integer=True)
        positive("loop.early_stopping_patience", self.early_stopping_patience, integer=True, allow_null=True)
        if self.threads != "auto":
            positive("loop.threads", self.threads, integer=True)
        if not (isinstance(self.checkpoint_every_s, (int, float)) and self.checkpoint_every_s >= 0):
            raise ConfigError(f"loop.checkpoint_every_s={self.checkpoint_every_s!r} must be a number >= 0")
        positive("loop.flag_margin", self.flag_margin)
        positive("loop.absurd_loss", self.absurd_loss)
        one_of("loop.compile_mode", self.compile_mode, COMPILE_MODES)

    def batch(self, n_train: int) -> int | None:
        """Rows per model and step; None (full batch) when the batch would hold the whole training split."""
        return None if self.batch_size is None or self.batch_size >= n_train else int(self.batch_size)

    def steps(self, n_train: int) -> tuple[int, int]:
        """(total optimisation steps, steps between validations) for a training split of n_train rows."""
        per_pass = steps_per_pass(n_train, self.batch(n_train))
        total = self.max_epochs * per_pass if self.max_epochs is not None else int(self.max_steps)
        every = self.eval_every if self.eval_every is not None else per_pass
        return total, min(every, total)
