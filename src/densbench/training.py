"""The training engine: device-resident data, chunks of optimisation steps, throughput.

The seed problems are tiny and run thousands of full-batch steps; a Lightning step per
optimisation step costs several times the step itself (REFERENCE.md section 4). So one Lightning
"epoch" is one evaluation period of ``eval_every`` optimisation steps, delivered as chunks of
``steps_per_call`` steps; the module runs the chunk's steps in a plain loop on tensors that already
live on the device. Minibatches are a pure function of the global step (seeded permutation per
data pass), so a resumed run draws the same batches and DDP ranks slice the same global batch.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from dataclasses import dataclass, field

import lightning.pytorch as pl
import torch
from torch import Tensor

from densbench.data import Prepared, gaussian_truth_scaled


@dataclass
class TrainSource:
    """Training tensors on the device and the rule that maps a global step to its minibatch."""

    x: Tensor
    y: Tensor
    extra: tuple[Tensor, ...]  # per-sample targets beyond y (the KL family's true mean and variance)
    batch_size: int | None  # None = full batch
    seed: int
    rank: int = 0
    world: int = 1
    _perm: tuple[int, Tensor] | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        """Number of training samples (all ranks)."""
        return self.x.shape[0]

    @property
    def steps_per_pass(self) -> int:
        """Optimisation steps per pass over the training data."""
        return 1 if self.batch_size is None else math.ceil(self.n / self.batch_size)

    def rows(self, step: int) -> Tensor | None:
        """Row indices of this rank's share of the minibatch at `step` (None: all rows)."""
        if self.batch_size is None:
            return None if self.world == 1 else self._shard(torch.arange(self.n, device=self.x.device))
        data_pass, j = divmod(step, self.steps_per_pass)
        if self._perm is None or self._perm[0] != data_pass:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + data_pass)
            self._perm = (data_pass, torch.randperm(self.n, generator=g).to(self.x.device))
        rows = self._perm[1][j * self.batch_size : (j + 1) * self.batch_size]
        return rows if self.world == 1 else self._shard(rows)

    def _shard(self, rows: Tensor) -> Tensor:
        return rows[self.rank :: self.world]

    def batch(self, step: int) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        """(x, y, extra) of the minibatch at `step`."""
        rows = self.rows(step)
        if rows is None:
            return self.x, self.y, self.extra
        return self.x[rows], self.y[rows], tuple(e[rows] for e in self.extra)


class Chunk:
    """What Lightning hands to training_step: the source and how many steps to run.

    A plain class on purpose: Lightning leaves objects it does not know alone, instead of copying
    and converting every tensor inside on each step.
    """

    __slots__ = ("source", "steps")

    def __init__(self, source: TrainSource, steps: int):
        self.source, self.steps = source, steps


class ChunkStream:
    """Iterable of chunks covering one evaluation period (a Lightning epoch)."""

    def __init__(self, source: TrainSource, eval_every: int, steps_per_call: int):
        self.source, self.eval_every, self.steps_per_call = source, eval_every, steps_per_call

    def __len__(self) -> int:
        return math.ceil(self.eval_every / self.steps_per_call)

    def __iter__(self):
        left = self.eval_every
        while left > 0:
            s = min(self.steps_per_call, left)
            left -= s
            yield Chunk(self.source, s)


class EvalBatch:
    """One split (or this rank's shard of it) for evaluation; a plain class for the reason above."""

    __slots__ = ("x", "y", "x_orig", "u")

    def __init__(self, x: Tensor, y: Tensor, x_orig: Tensor, u: Tensor):
        self.x = x  # standardised inputs, in the model's dtype
        self.y = y  # targets in original units, float64 (class indices for class targets)
        self.x_orig = x_orig  # inputs in original units, for the truth
        self.u = u  # uniforms for the randomised PIT, fixed per row


class Once:
    """An iterable of exactly one batch (a whole evaluation split)."""

    def __init__(self, batch) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return 1

    def __iter__(self):
        yield self.batch


class DensityData(pl.LightningDataModule):
    """Holds every split as tensors and moves them to the training device once."""

    def __init__(
        self,
        prep: Prepared,
        batch_size: int | None,
        eval_every: int,
        steps_per_call: int,
        seed: int,
        truth_targets: bool = False,
        class_targets: bool = False,
    ):
        super().__init__()
        self.prep = prep
        self.batch_size, self.eval_every, self.steps_per_call, self.seed = batch_size, eval_every, steps_per_call, seed
        self.truth_targets = truth_targets  # train on the true Gaussian's mean and variance (loss=kl)
        self.class_targets = class_targets  # targets as class indices (categorical heads)
        self.dtype = torch.float32
        self.device = torch.device("cpu")
        self.source: TrainSource | None = None

    @property
    def has_val(self) -> bool:
        """Whether a validation split exists (model selection needs one)."""
        return len(self.prep.data.val) > 0

    def setup(self, stage: str) -> None:
        """Place tensors on the strategy's device in the module's dtype."""
        trainer = self.trainer
        self.device = trainer.strategy.root_device
        self.dtype = _param_dtype(str(trainer.precision))
        rank, world = trainer.global_rank, trainer.world_size
        x, y = self.prep.splits["train"]
        if self.class_targets:
            y = y.reshape(-1).long()
        extra: tuple[Tensor, ...] = ()
        if self.truth_targets:
            extra = tuple(self._put(t) for t in gaussian_truth_scaled(self.prep, "train"))
        self.source = TrainSource(self._put(x), self._put(y), extra, self.batch_size, self.seed, rank, world)
        self.eval = {name: self._eval_batch(name, rank, world) for name in ("val", "test")}

    def _put(self, t: Tensor) -> Tensor:
        return t.to(self.device, dtype=self.dtype if t.is_floating_point() else t.dtype)

    def _eval_batch(self, split: str, rank: int, world: int) -> EvalBatch:
        data = self.prep.data
        idx = getattr(data, split)
        x, _ = self.prep.splits[split]
        y = torch.as_tensor(data.y[idx])
        x_orig = torch.as_tensor(data.x[idx], dtype=torch.float64)
        # one uniform per row from a generator seeded by the split: identical for any world size
        u = torch.rand(len(idx), generator=torch.Generator().manual_seed(self.seed + (split == "test")), dtype=torch.float64)
        rows = slice(rank, None, world)
        y = y[rows].reshape(-1).long() if (data.task == "multiclass" or self.class_targets) else y[rows].to(torch.float64)
        return EvalBatch(self._put(x[rows]), self._put(y), x_orig[rows].to(self.device), u[rows].to(self.device))

    def train_dataloader(self):
        return ChunkStream(self.source, self.eval_every, self.steps_per_call)

    def val_dataloader(self):
        return Once(self.eval["val"])

    def test_dataloader(self):
        return Once(self.eval["test"])


class CheckpointOnInterrupt(pl.Callback):
    """Save a checkpoint when training stops on an exception (SIGTERM arrives as one).

    Not Lightning's OnExceptionCheckpoint: its presence makes every fit(ckpt_path=None) silently
    resume from whatever last checkpoint lies in the directory; resuming is decided by run.py.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            trainer.save_checkpoint(self.path)

    def on_fit_end(self, trainer, pl_module) -> None:
        trainer.strategy.remove_checkpoint(self.path)  # finished: nothing to resume


def _param_dtype(precision: str) -> torch.dtype:
    # the dtype the precision plugin gives the parameters; setup runs before it converts the module
    if precision.startswith("64"):
        return torch.float64
    return {"bf16-true": torch.bfloat16, "16-true": torch.float16}.get(precision, torch.float32)


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory of this process on GPU, peak resident set size on CPU (process lifetime)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


class Throughput(pl.Callback):
    """Training samples/s and steps/s after the first evaluation period, evaluation samples/s.

    Times only the training chunks (validation excluded); synchronises CUDA once per period, not per
    step, so the hot path pays nothing.
    """

    def __init__(self) -> None:
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
        pl_module.log_scalars({f"throughput/{k}": v for k, v in self.figures.items()})

    def summary(self, device: torch.device) -> dict[str, float]:
        """Throughput figures for result.json and TensorBoard."""
        t = max(self.train_time, 1e-12)
        return {
            "train_samples_per_s": self.train_samples / t if self.train_steps else float("nan"),
            "train_steps_per_s": self.train_steps / t if self.train_steps else float("nan"),
            "step_time_ms": 1e3 * t / self.train_steps if self.train_steps else float("nan"),
            "eval_samples_per_s": self.eval_samples / max(self.eval_time, 1e-12),
            "peak_memory_mb": peak_memory_mb(device),
        }
