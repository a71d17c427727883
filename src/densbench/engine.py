"""The training engine: device-resident data, chunks of optimisation steps, exact stop and resume.

The seed problems are tiny and run thousands of full-batch steps; a Lightning step per
optimisation step costs several times the step itself (REFERENCE.md section 4). So Lightning's
words mean something else here:

- a Lightning *epoch* is one evaluation period: ``eval_every`` optimisation steps, then validation
  and a checkpoint;
- a Lightning *batch* (one ``training_step``) is a ``Chunk`` of up to ``steps_per_call`` optimisation
  steps, run by ``run_chunk`` in a plain loop on tensors that already live on the device;
- ``trainer.global_step`` is not used; ``EngineState.opt_steps`` counts optimisation steps and is the
  x-axis of every logged curve.

Minibatches are a pure function of the global step (a seeded permutation per data pass), chunk
boundaries are aligned to the start of their period, and the per-step losses of a period are summed
in one fixed order at its end: so where a run stops (a signal between two steps, a kill after a
checkpoint) changes nothing in what it computes after resuming.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import lightning.pytorch as pl
import torch
from torch import Tensor

from densbench.data import Prepared, gaussian_truth_scaled
from densbench.signals import raise_if_stopped


def steps_per_pass(n_train: int, batch_size: int | None) -> int:
    """Optimisation steps per pass over the training data (1 for full batch)."""
    return 1 if batch_size is None else math.ceil(n_train / batch_size)


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

    def rows(self, step: int) -> Tensor | None:
        """Row indices of this rank's share of the minibatch at `step` (None: all rows)."""
        if self.batch_size is None:
            return None if self.world == 1 else self._shard(torch.arange(self.n, device=self.x.device))
        data_pass, j = divmod(step, steps_per_pass(self.n, self.batch_size))
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


class EngineState:
    """Where training stands: the step count, the running period's per-step losses, the history.

    Saved in every checkpoint; restoring it (with the weights and optimiser state) continues a run
    exactly where it stopped.
    """

    def __init__(self, total_steps: int, eval_every: int, keep_step_losses: bool = False) -> None:
        self.total_steps, self.eval_every = total_steps, eval_every
        self.opt_steps = 0
        self.finished = False  # early stopping ended training before total_steps
        self.history: dict[str, list[float]] = {"step": [], "train_loss": [], "val_nll": []}
        self.step_losses: list[Tensor] | None = [] if keep_step_losses else None
        self._losses: Tensor | None = None  # per-step losses of the running period, float64
        self._hits: Tensor | None = None

    @property
    def period_start(self) -> int:
        """First step of the running evaluation period."""
        return (self.opt_steps // self.eval_every) * self.eval_every

    @property
    def period_end(self) -> int:
        """Step at which the running period ends (validation follows)."""
        return min(self.period_start + self.eval_every, self.total_steps)

    @property
    def periods_left(self) -> int:
        """Evaluation periods still to run, the one in progress included."""
        if self.finished:
            return 0
        return math.ceil((self.total_steps - self.period_start) / self.eval_every) if self.opt_steps < self.total_steps else 0

    def _buffers(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if self._losses is None or self._losses.device != device:
            self._losses = torch.zeros(self.eval_every, dtype=torch.float64, device=device)
            self._hits = torch.zeros(self.eval_every, dtype=torch.float64, device=device)
        return self._losses, self._hits

    def record(self, first: int, losses: list[Tensor], hits: list[Tensor]) -> None:
        """Store the losses (and floor hits) of the steps first, first + 1, ... of the running period."""
        if not losses:
            return
        buf, hbuf = self._buffers(losses[0].device)
        j = first - (first // self.eval_every) * self.eval_every
        stacked = torch.stack(losses).double()
        buf[j : j + len(losses)] = stacked
        if hits:
            hbuf[j : j + len(hits)] = torch.stack(hits).double()
        if self.step_losses is not None:
            self.step_losses.append(stacked)

    def close_period(self) -> dict[str, Tensor]:
        """Mean loss and floor hits per step of the period that just ended, summed in step order."""
        n = self.opt_steps - ((self.opt_steps - 1) // self.eval_every) * self.eval_every
        buf, hbuf = self._buffers(self._losses.device if self._losses is not None else torch.device("cpu"))
        out = {"train/loss": buf[:n].sum() / n, "train/floor_hits_per_step": hbuf[:n].sum() / n}
        self.history["step"].append(self.opt_steps)
        self.history["train_loss"].append(float(out["train/loss"]))
        buf.zero_()
        hbuf.zero_()
        return out

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (buffers on the CPU)."""
        return {
            "opt_steps": self.opt_steps,
            "finished": self.finished,
            "history": {k: list(v) for k, v in self.history.items()},
            "losses": None if self._losses is None else self._losses.cpu(),
            "hits": None if self._hits is None else self._hits.cpu(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict saved."""
        self.opt_steps = int(state["opt_steps"])
        self.finished = bool(state["finished"])
        self.history = {k: list(v) for k, v in state["history"].items()}
        self._losses, self._hits = state["losses"], state["hits"]


class Chunk:
    """What Lightning hands to training_step: the source and how many steps to run.

    A plain class on purpose: Lightning leaves objects it does not know alone, instead of copying
    and converting every tensor inside on each step.
    """

    __slots__ = ("source", "steps")

    def __init__(self, source: TrainSource, steps: int):
        self.source, self.steps = source, steps


class ChunkStream:
    """The chunks of the running evaluation period (a Lightning epoch), from wherever training stands.

    Chunk boundaries are aligned to the period's start, so a period resumed from inside a chunk runs
    the rest of that chunk and then the usual ones. No ``__len__`` on purpose: Lightning then
    validates after the last chunk an epoch yields, however many that is (with a length it validates
    only after the len()-th chunk, and a short last or resumed period would go unvalidated).
    """

    def __init__(self, source: TrainSource, state: EngineState, steps_per_call: int):
        self.source, self.state, self.steps_per_call = source, state, steps_per_call

    def __iter__(self):
        # planned when the epoch starts: Lightning fetches one chunk ahead of the one it runs
        start, end, spc = self.state.opt_steps, self.state.period_end, self.steps_per_call
        base = self.state.period_start
        at = start
        while at < end:
            nxt = min(base + ((at - base) // spc + 1) * spc, end)
            yield Chunk(self.source, nxt - at)
            at = nxt


def run_chunk(module: Any, chunk: Chunk, step: Callable[[Tensor], None], count_hits: bool) -> tuple[Tensor, Tensor]:
    """Run a chunk of optimisation steps; returns their losses and floor hits (the chunk's part of the period).

    ``step(loss)`` does backward and the optimiser update. A stop request is honoured before a step
    starts, never inside one; the steps done so far are recorded first.
    """
    state: EngineState = module.state
    first = state.opt_steps
    losses: list[Tensor] = []
    hits: list[Tensor] = []
    try:
        for _ in range(chunk.steps):
            raise_if_stopped()
            x, y, extra = chunk.source.batch(state.opt_steps)
            raw = module(x)
            loss = module.loss(raw, y, extra)
            step(loss)
            state.opt_steps += 1
            losses.append(loss.detach())
            if count_hits:  # collapsed spreads are counted every step, not averaged away
                hits.append(module.head.floor_hits(raw))
    finally:
        state.record(first, losses, hits)
    losses_t = torch.stack(losses).double() if losses else torch.zeros(0, dtype=torch.float64)
    hits_t = torch.stack(hits) if hits else losses_t.new_zeros(len(losses), dtype=torch.long)
    return losses_t, hits_t


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
        state: EngineState,
        steps_per_call: int,
        seed: int,
        truth_targets: bool = False,
        class_targets: bool = False,
    ):
        super().__init__()
        self.prep = prep
        self.batch_size, self.state, self.steps_per_call, self.seed = batch_size, state, steps_per_call, seed
        self.truth_targets = truth_targets  # train on the true Gaussian's mean and variance (loss=kl)
        self.class_targets = class_targets  # targets as class indices (categorical heads)
        self.dtype = torch.float32
        self.device = torch.device("cpu")
        self.source: TrainSource | None = None

    def setup(self, stage: str) -> None:
        """Place tensors on the strategy's device in the module's dtype."""
        trainer = self.trainer
        self.device = trainer.strategy.root_device
        self.dtype = param_dtype(str(trainer.precision))
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
        return ChunkStream(self.source, self.state, self.steps_per_call)

    def val_dataloader(self):
        return Once(self.eval["val"])

    def test_dataloader(self):
        return Once(self.eval["test"])


class Selection(pl.Callback):
    """Model selection and early stopping on the validation NLL, in memory and in every checkpoint.

    Keeps the weights of the best validation so far (the last weights when there is no validation
    split) and stops training after ``patience`` validations without improvement.
    """

    def __init__(self, patience: int | None = None) -> None:
        self.patience = patience
        self.best_score: float | None = None
        self.best_state: dict[str, Tensor] | None = None
        self.wait = 0

    def on_validation_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        score = float(trainer.callback_metrics["val/nll"])
        pl_module.state.history["val_nll"].append(score)
        if math.isfinite(score) and (self.best_score is None or score < self.best_score):
            self.best_score, self.wait = score, 0
            self.best_state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        else:
            self.wait += 1
            if self.patience and self.wait >= self.patience:
                pl_module.state.finished = True
                trainer.should_stop = True

    def selected(self, pl_module: Any) -> dict[str, Tensor]:
        """The weights to test: the best validation's, else the current ones."""
        return self.best_state if self.best_state is not None else pl_module.state_dict()

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_state": self.best_state, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_score, self.best_state, self.wait = state["best_score"], state["best_state"], state["wait"]


def param_dtype(precision: str) -> torch.dtype:
    """The dtype Lightning's precision plugin gives the parameters (setup runs before it converts them)."""
    if precision.startswith("64"):
        return torch.float64
    return {"bf16-true": torch.bfloat16, "16-true": torch.float16}.get(precision, torch.float32)


def as_param_dtype(module: torch.nn.Module, precision: str) -> torch.nn.Module:
    """Give a module the parameter dtype of `precision` the way Lightning's plugins do.

    Through .double() / .half() / .bfloat16(), which torchmetrics leaves alone: its float64 metric
    states must not become float32 (``module.to(dtype=...)`` would convert them).
    """
    method = {torch.float64: "double", torch.float16: "half", torch.bfloat16: "bfloat16"}.get(param_dtype(precision))
    return getattr(module, method)() if method else module


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
