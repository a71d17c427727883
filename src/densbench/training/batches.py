"""The data of a stack on its device: each model's training rows with its own minibatch order, and the
validation and test batches of every job (a LightningDataModule whose loaders yield the engine's chunks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from densbench.training.engine import EngineState, param_dtype


@dataclass(frozen=True)
class Stack:
    """Which model of the stack belongs to which job (run directory), and the seed each starts from."""

    jobs: list[list[int]]  # jobs[j] = indices of job j's models (one, or an ensemble's members)
    seeds: list[int]  # per model: initialisation and minibatch order

    @property
    def size(self) -> int:
        """N, the number of models."""
        return len(self.seeds)

    @property
    def job_of(self) -> list[int]:
        """Per model, the index of the first job it serves (jobs that differ only in recalibration share models)."""
        out = [-1] * self.size
        for j, models in enumerate(self.jobs):
            for m in models:
                if out[m] < 0:
                    out[m] = j
        return out


class TrainSource:
    """The jobs' training tensors on the device and the minibatch rule of every model of the stack."""

    def __init__(self, x: Tensor, y: Tensor, extra: tuple[Tensor, ...], stack: Stack, batch_size: int | None,
                 rank: int = 0, world: int = 1) -> None:
        self.x, self.y, self.extra = x, y, extra  # [J, n, ...]: one slice per job
        self.stack, self.batch_size, self.rank, self.world = stack, batch_size, rank, world
        self.job_of = torch.tensor(stack.job_of, device=x.device)
        self._full: tuple[Tensor, Tensor, tuple[Tensor, ...]] | None = None
        # per data pass: every model's row order, and its rows gathered in that order once per pass, so
        # that a step's minibatch is a slice (a view), not a gather of its own; at most two passes live
        self._passes: dict[int, tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...]]] = {}

    @property
    def n(self) -> int:
        """Training samples per job (all ranks)."""
        return self.x.shape[1]

    def _segments(self, step: int) -> list[tuple[int, int, int]]:
        """The (pass, start, stop) pieces of the row stream that the minibatch at `step` covers.

        Minibatches are consecutive slices of one endless stream: each model's training rows in a fresh
        random order per pass, pass after pass. Every minibatch therefore holds exactly batch_size rows;
        the last one of a pass is completed by the first rows of the next pass instead of being short.
        A short batch would make a model's numbers depend on its stack: ATen computes the last elements
        of a contiguous tensor that fill no whole vector register with scalar code, whose sigmoid,
        softplus, pow and logaddexp round differently from the vector code, and which elements those
        are depends on how many models share the tensor. With every batch the same multiple of 32 rows,
        each model's rows fill whole registers in a stack of any size (tests/test_stack_exact.py).
        """
        b, n = self.batch_size, self.n
        start, stop = step * b, (step + 1) * b
        out = []
        while start < stop:
            data_pass, at = divmod(start, n)
            take = min(stop - start, n - at)
            out.append((data_pass, at, at + take))
            start += take
        return out

    def _pass(self, data_pass: int) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...]]:
        """(row order [N, n], x, y, extra in that order) of one data pass, built once."""
        if data_pass not in self._passes:
            perms = [torch.randperm(self.n, generator=torch.Generator().manual_seed(seed * 1_000_003 + data_pass))
                     for seed in self.stack.seeds]
            perm, jobs = torch.stack(perms).to(self.x.device), self.job_of.unsqueeze(-1)
            # a rank of several reads its own share of each batch by index: no gathered copies
            gathered = ((self.x[jobs, perm], self.y[jobs, perm], tuple(e[jobs, perm] for e in self.extra))
                        if self.world == 1 else (None, None, ()))
            self._passes = {k: v for k, v in self._passes.items() if k >= data_pass - 1}
            self._passes[data_pass] = (perm, *gathered)
        return self._passes[data_pass]

    def rows(self, step: int) -> Tensor | None:
        """Row indices [N, b] of every model's share of the minibatch at `step` (None: all rows)."""
        if self.batch_size is None:
            return None
        rows = torch.cat([self._pass(p)[0][:, lo:hi] for p, lo, hi in self._segments(step)], dim=1)
        return rows if self.world == 1 else rows[:, self.rank :: self.world]

    def full(self) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        """(x, y, extra) of every model's whole training split (this rank's share of it), [N, n, ...]."""
        if self._full is None:
            def take(t: Tensor) -> Tensor:
                return t[self.job_of][:, self.rank :: self.world]

            self._full = (take(self.x), take(self.y), tuple(take(e) for e in self.extra))
        return self._full

    def batch(self, step: int) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        """(x, y, extra) of every model's minibatch at `step`, [N, b, ...]."""
        if self.batch_size is None:
            return self.full()
        if self.world > 1:
            rows, jobs = self.rows(step), self.job_of.unsqueeze(-1)
            return self.x[jobs, rows], self.y[jobs, rows], tuple(e[jobs, rows] for e in self.extra)
        pieces = [(self._pass(p), slice(lo, hi)) for p, lo, hi in self._segments(step)]
        if len(pieces) == 1:
            (_, x, y, extra), part = pieces[0]
            return x[:, part], y[:, part], tuple(e[:, part] for e in extra)

        def joined(k: int) -> Tensor:
            return torch.cat([stream[k][:, part] for stream, part in pieces], dim=1)

        extras = tuple(torch.cat([stream[3][i][:, part] for stream, part in pieces], dim=1) for i in range(len(self.extra)))
        return joined(1), joined(2), extras


# Rows a model's share of a stacked tensor comes in whole multiples of. ATen computes the elements of a
# contiguous tensor in vector registers (two of 8 float32 per loop iteration under AVX2) and the few left
# over with scalar code, whose sigmoid, softplus, pow and logaddexp round differently; which elements
# are left over depends on how many models share the tensor unless every model's rows fill whole
# registers. 32 rows do so for every family's fields in either precision (tests/test_stack_exact.py).
ROW_BLOCK = 32


def block_padded(t: Tensor) -> Tensor:
    """t [N, n, ...] with its rows repeated cyclically up to a multiple of ROW_BLOCK along axis 1 (real rows first)."""
    n = t.shape[1]
    if n == 0 or n % ROW_BLOCK == 0:
        return t
    return t[:, torch.arange(n + (-n % ROW_BLOCK), device=t.device) % n]


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


class EvalBatch:
    """One job's split (or this rank's shard of it) for evaluation; a plain class for the reason above."""

    __slots__ = ("job", "rows", "split", "u", "x", "x_orig", "y")

    def __init__(self, job: int | None, x: Tensor, y: Tensor, x_orig: Tensor, u: Tensor, split: str = "test",
                 rows: int | None = None):
        self.job = job  # index of the job (run directory); None: every job's split, stacked
        self.rows = rows  # the real rows, first along the row axis (None: all); the rest repeat them as padding
        self.split = split  # "val" in the test loop: the rows a job's recalibration is fitted on
        self.x = x  # standardised inputs, in the model's dtype
        self.y = y  # targets in original units, float64 (class indices for class targets)
        self.x_orig = x_orig  # inputs in original units, for the truth
        self.u = u  # uniforms for the randomised PIT, fixed per row


class Each:
    """An iterable of one batch per job (a whole evaluation split each)."""

    def __init__(self, batches: list[Any]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


class DensityData(pl.LightningDataModule):
    """Holds every job's splits as tensors and moves them to the training device once."""

    def __init__(self, preps: list[Any], stack: Stack, batch_size: int | None, state: EngineState, steps_per_call: int,
                 seeds: list[int], truth_targets: bool = False, class_targets: bool = False,
                 sees_validation: list[bool] | None = None):
        super().__init__()
        self.preps, self.stack, self.seeds = preps, stack, seeds
        self.batch_size, self.state, self.steps_per_call = batch_size, state, steps_per_call
        self.truth_targets = truth_targets  # train on the true Gaussian's mean and variance (loss=kl)
        self.class_targets = class_targets  # targets as class indices (categorical heads)
        # jobs whose test loop sees their validation split first (a recalibration's fit, a validation choice, an
        # ensemble's mixture scored on it)
        self.sees_validation = sees_validation or [False] * len(preps)
        self.dtype = torch.float32
        self.device = torch.device("cpu")
        self.source: TrainSource | None = None

    def setup(self, stage: str) -> None:
        """Place tensors on the strategy's device in the module's dtype."""
        from densbench.data.datasets import gaussian_truth_scaled

        trainer = self.trainer
        self.device = trainer.strategy.root_device
        self.dtype = param_dtype(str(trainer.precision))
        rank, world = trainer.global_rank, trainer.world_size
        xs, ys, extras = [], [], []
        for prep in self.preps:
            x, y = prep.splits["train"]
            xs.append(x)
            ys.append(y.reshape(-1).long() if self.class_targets else y)
            if self.truth_targets:
                extras.append(gaussian_truth_scaled(prep, "train"))
        extra = tuple(self._put(torch.stack(part)) for part in zip(*extras)) if extras else ()
        self.source = TrainSource(self._put(torch.stack(xs)), self._put(torch.stack(ys)), extra, self.stack,
                                  self.batch_size, rank, world)
        # a job's recalibration is fitted on its whole validation split (every rank the same, so every
        # rank fits the same map) before its test batch is scored
        val = [self._eval_batch(j, "val", rank, world) for j in range(len(self.preps))]
        test = [b for j in range(len(self.preps))
                for b in ([val[j] if world == 1 else self._eval_batch(j, "val", 0, 1)] if self.sees_validation[j] else [])
                + [self._eval_batch(j, "test", rank, world)]]
        # validation of every model at once: the jobs' splits are stacked (a stack's jobs have equal sizes)
        # padded to whole row blocks, so that a model's validation scores do not depend on its stack (below)
        n_val = val[0].x.shape[0]
        self.eval = {"test": test, "val": [EvalBatch(None, block_padded(torch.stack([b.x for b in val])),
                                                      block_padded(torch.stack([b.y for b in val])),
                                                      torch.empty(0), torch.empty(0), "val", rows=n_val)]}

    def _put(self, t: Tensor) -> Tensor:
        return t.to(self.device, dtype=self.dtype if t.is_floating_point() else t.dtype)

    def _eval_batch(self, job: int, split: str, rank: int, world: int) -> EvalBatch:
        prep = self.preps[job]
        data = prep.data
        idx = getattr(data, split)
        x, _ = prep.splits[split]
        y = torch.as_tensor(data.y[idx])
        x_orig = torch.as_tensor(data.x[idx], dtype=torch.float64)
        # one uniform per row from a generator seeded by the split: identical for any world size
        g = torch.Generator().manual_seed(self.seeds[job] + (split == "test"))
        u = torch.rand(len(idx), generator=g, dtype=torch.float64)
        rows = slice(rank, None, world)
        y = y[rows].reshape(-1).long() if (data.task == "multiclass" or self.class_targets) else y[rows].to(torch.float64)
        return EvalBatch(job, self._put(x[rows]), self._put(y), x_orig[rows].to(self.device), u[rows].to(self.device), split)

    def training_rows(self) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        """(x, y, extra) of every model's whole training split on this rank, [N, n, ...]."""
        return self.source.full()

    def train_dataloader(self):
        return ChunkStream(self.source, self.state, self.steps_per_call)

    def val_dataloader(self):
        return Each(self.eval["val"])

    def test_dataloader(self):
        return Each(self.eval["test"])
