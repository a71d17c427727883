"""The training engine: a stack of models, device-resident data, chunks of optimisation steps, exact stop and resume.

The networks of this field are tiny, so a training step is mostly dispatch overhead; densbench trains
a *stack* of N models (the jobs of a sweep that differ only in seed or data split, the members of a
deep ensemble, or one single model) with one batched step, and runs many steps per Lightning call.
So Lightning's words mean something else here:

- a Lightning *epoch* is one evaluation period: ``eval_every`` optimisation steps, then validation
  of every model on its own validation split, model selection and a checkpoint per job;
- a Lightning *batch* (one ``training_step``) is a ``Chunk`` of up to ``steps_per_call`` optimisation
  steps, run by ``run_chunk`` in a plain loop on tensors that already live on the device;
- ``trainer.global_step`` is not used; ``EngineState.opt_steps`` counts optimisation steps and is the
  x-axis of every logged curve.

Every model of the stack has its own minibatch order (a seeded permutation per data pass, from its
own seed), its own validation, model selection, early stopping and divergence check: it trains to the
same numbers as it would alone. Chunk boundaries are aligned to the start of their period, and the
per-step losses of a period are summed in one fixed order at its end: where a run stops (a signal
between two steps, a kill after a checkpoint) changes nothing in what it computes after resuming.

The engine uses only Lightning's public API, but three behaviours it relies on have no hook of their
own, and tests/test_lightning_contract.py pins them for the supported ``lightning`` range: a train
loader with no length is validated once, after its last batch, however many batches an epoch yields;
an epoch's loader is iterated (so its chunks planned) only after the previous validation; batches of
a class Lightning does not know reach ``training_step`` as the same objects, neither copied nor moved.
The settings of the loop are the ``loop`` config group (densbench.training.loop); Lightning's own, ``trainer``.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import lightning.pytorch as pl
import torch
from torch import Tensor

from densbench.training.loop import steps_per_pass
from densbench.signals import raise_if_stopped


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
        self._perm: tuple[int, Tensor] | None = None
        self._full: tuple[Tensor, Tensor, tuple[Tensor, ...]] | None = None
        # one data pass's rows of every model in its own order, gathered once per pass: a step's
        # minibatch is then a slice (a view), not a gather of its own
        self._pass: tuple[int, Tensor, Tensor, tuple[Tensor, ...]] | None = None

    @property
    def n(self) -> int:
        """Training samples per job (all ranks)."""
        return self.x.shape[1]

    def rows(self, step: int) -> Tensor | None:
        """Row indices [N, b] of every model's share of the minibatch at `step` (None: all rows)."""
        if self.batch_size is None:
            return None
        data_pass, j = divmod(step, steps_per_pass(self.n, self.batch_size))
        if self._perm is None or self._perm[0] != data_pass:
            perms = [torch.randperm(self.n, generator=torch.Generator().manual_seed(seed * 1_000_003 + data_pass))
                     for seed in self.stack.seeds]
            self._perm = (data_pass, torch.stack(perms).to(self.x.device))
        rows = self._perm[1][:, j * self.batch_size : (j + 1) * self.batch_size]
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
        data_pass, j = divmod(step, steps_per_pass(self.n, self.batch_size))
        if self._pass is None or self._pass[0] != data_pass:
            self.rows(step)  # the pass's permutations
            perm, jobs = self._perm[1], self.job_of.unsqueeze(-1)
            self._pass = (data_pass, self.x[jobs, perm], self.y[jobs, perm], tuple(e[jobs, perm] for e in self.extra))
        part = slice(j * self.batch_size, (j + 1) * self.batch_size)
        _, x, y, extra = self._pass
        return x[:, part], y[:, part], tuple(e[:, part] for e in extra)


class EngineState:
    """Where training stands: the step count, the running period's per-step losses, every model's history.

    Saved in every checkpoint (each job keeps its models' share); restoring it with the weights and
    the optimiser state continues a run exactly where it stopped.
    """

    def __init__(self, total_steps: int, eval_every: int, models: int = 1, keep_step_losses: bool = False) -> None:
        self.total_steps, self.eval_every, self.models = total_steps, eval_every, models
        self.opt_steps = 0
        # per model: the steps at which its periods ended, its mean training loss and its validation NLL there
        self.history: list[dict[str, list[float]]] = [{"step": [], "train_loss": [], "val_nll": []} for _ in range(models)]
        self.active = [True] * models  # False once a model stopped early or diverged: its history ends there
        self.step_losses: list[Tensor] | None = [] if keep_step_losses else None
        self._losses: Tensor | None = None  # per-step losses of the running period, [eval_every, N], float64
        self._hits: Tensor | None = None

    @property
    def finished(self) -> bool:
        """Every model has stopped early (or diverged): training is over before total_steps."""
        return not any(self.active)

    @property
    def period_start(self) -> int:
        """First step of the running evaluation period."""
        return (self.opt_steps // self.eval_every) * self.eval_every

    @property
    def period_end(self) -> int:
        """Step at which the running period ends (validation follows)."""
        return min(self.period_start + self.eval_every, self.total_steps)

    @property
    def at_period_end(self) -> bool:
        """The last step taken ended an evaluation period."""
        return self.opt_steps > 0 and (self.opt_steps % self.eval_every == 0 or self.opt_steps == self.total_steps)

    @property
    def periods_left(self) -> int:
        """Evaluation periods still to run, the one in progress included."""
        if self.finished or self.opt_steps >= self.total_steps:
            return 0
        return math.ceil((self.total_steps - self.period_start) / self.eval_every)

    def _buffers(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if self._losses is None or self._losses.device != device:
            self._losses = torch.zeros(self.eval_every, self.models, dtype=torch.float64, device=device)
            self._hits = torch.zeros(self.eval_every, self.models, dtype=torch.float64, device=device)
        return self._losses, self._hits

    def record(self, first: int, losses: list[Tensor], hits: list[Tensor]) -> None:
        """Store the losses [N] (and floor hits) of the steps first, first + 1, ... of the running period."""
        if not losses:
            return
        buf, hbuf = self._buffers(losses[0].device)
        j = first - (first // self.eval_every) * self.eval_every
        stacked = torch.stack(losses).double().reshape(len(losses), self.models)
        buf[j : j + len(losses)] = stacked
        if hits:
            hbuf[j : j + len(hits)] = torch.stack(hits).double().reshape(len(hits), self.models)
        if self.step_losses is not None:
            self.step_losses.append(stacked)

    def close_period(self) -> tuple[Tensor, Tensor]:
        """Per model: mean loss and floor hits per step of the period that just ended, summed in step order."""
        n = self.opt_steps - ((self.opt_steps - 1) // self.eval_every) * self.eval_every
        buf, hbuf = self._buffers(self._losses.device if self._losses is not None else torch.device("cpu"))
        # each model's steps summed as one contiguous row: a column sum would group the additions
        # differently with the stack size, and a model must not depend on its neighbours
        loss = buf[:n].t().contiguous().sum(-1) / n
        hits = hbuf[:n].t().contiguous().sum(-1) / n
        for m, value in enumerate(loss.tolist()):
            if self.active[m]:
                self.history[m]["step"].append(self.opt_steps)
                self.history[m]["train_loss"].append(value)
        buf.zero_()
        hbuf.zero_()
        return loss, hits

    def state_dict(self, models: list[int] | None = None) -> dict[str, Any]:
        """Everything needed to continue exactly, for all models or a job's share (buffers on the CPU)."""
        idx = list(range(self.models)) if models is None else models

        def col(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[:, idx].cpu()

        return {
            "opt_steps": self.opt_steps,
            # one string, not thousands of floats for torch.save to visit (json keeps every digit)
            "history": json.dumps([self.history[m] for m in idx]),
            "active": [self.active[m] for m in idx],
            "losses": col(self._losses),
            "hits": col(self._hits),
        }

    @staticmethod
    def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
        """One state from the shares of several jobs saved at the same step (their models in order)."""
        if len({p["opt_steps"] for p in parts}) != 1:
            raise ValueError("checkpoints of different steps cannot be stacked")

        def cat(key: str) -> Tensor | None:
            return None if parts[0][key] is None else torch.cat([p[key] for p in parts], 1)

        return {"opt_steps": parts[0]["opt_steps"], "history": json.dumps([h for p in parts for h in json.loads(p["history"])]),
                "active": [a for p in parts for a in p["active"]], "losses": cat("losses"), "hits": cat("hits")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict saved (for every model of this stack)."""
        self.opt_steps = int(state["opt_steps"])
        self.history = json.loads(state["history"])
        self.active = list(state["active"])
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
    """Run a chunk of optimisation steps; returns their losses and floor hits, [steps, N] each.

    ``step(loss)`` does backward and the optimiser update of the summed per-model losses (each model's
    gradient is that of its own loss). A stop request is honoured before a step starts, never inside
    one; the steps done so far are recorded first.
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
            step(loss.sum())
            state.opt_steps += 1
            losses.append(loss.detach())
            if count_hits:  # collapsed spreads are counted every step, not averaged away
                hits.append(module.head.floor_hits(raw))
    finally:
        state.record(first, losses, hits)
    n = state.models
    losses_t = torch.stack(losses).double().reshape(-1, n) if losses else torch.zeros(0, n, dtype=torch.float64)
    hits_t = torch.stack(hits).reshape(-1, n) if hits else losses_t.new_zeros(len(losses), n, dtype=torch.long)
    return losses_t, hits_t


class EvalBatch:
    """One job's split (or this rank's shard of it) for evaluation; a plain class for the reason above."""

    __slots__ = ("job", "x", "y", "x_orig", "u", "split")

    def __init__(self, job: int | None, x: Tensor, y: Tensor, x_orig: Tensor, u: Tensor, split: str = "test"):
        self.job = job  # index of the job (run directory); None: every job's split, stacked
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
                 calibrate: list[bool] | None = None):
        super().__init__()
        self.preps, self.stack, self.seeds = preps, stack, seeds
        self.batch_size, self.state, self.steps_per_call = batch_size, state, steps_per_call
        self.truth_targets = truth_targets  # train on the true Gaussian's mean and variance (loss=kl)
        self.class_targets = class_targets  # targets as class indices (categorical heads)
        self.calibrate = calibrate or [False] * len(preps)  # jobs whose recalibration sees their validation split first
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
                for b in ([val[j] if world == 1 else self._eval_batch(j, "val", 0, 1)] if self.calibrate[j] else [])
                + [self._eval_batch(j, "test", rank, world)]]
        # validation of every model at once: the jobs' splits are stacked (a stack's jobs have equal sizes)
        self.eval = {"test": test, "val": [EvalBatch(None, torch.stack([b.x for b in val]), torch.stack([b.y for b in val]),
                                                      torch.empty(0), torch.empty(0), "val")]}

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


SELECTION_TOLERANCE = 1e-9  # relative improvement a validation NLL needs to become the new best


class Selection(pl.Callback):
    """Per model: selection and early stopping on its own validation NLL, in memory and in every checkpoint.

    Keeps each model's weights of its best validation so far (the last weights when there is no
    validation split) and stops a model after ``patience`` validations without improvement; training
    ends when every model has stopped. A validation counts as better only by more than
    ``SELECTION_TOLERANCE`` (relative): a near-tie decided by the last digits would make the chosen
    epoch, and every test figure with it, depend on rounding.
    """

    def __init__(self, models: int, patience: int | None = None) -> None:
        self.models, self.patience = models, patience
        self.best_score = torch.full((models,), math.inf, dtype=torch.float64)
        self.best_state: dict[str, Tensor] | None = None
        self.wait = torch.zeros(models, dtype=torch.long)

    def update(self, pl_module: Any, scores: Tensor) -> None:
        """Take the validation NLL of every model [N] after a period."""
        state: EngineState = pl_module.state
        scores = scores.detach().double().cpu()
        active = torch.tensor(state.active)
        for m in range(self.models):
            if state.active[m]:
                state.history[m]["val_nll"].append(float(scores[m]))
        margin = SELECTION_TOLERANCE * torch.clamp(self.best_score.abs(), min=1.0).nan_to_num(posinf=0.0)
        better = active & torch.isfinite(scores) & (scores < self.best_score - margin)
        current = pl_module.weights()
        if self.best_state is None:
            self.best_state = {k: v.detach().clone() for k, v in current.items()}
        elif bool(better.any()):
            for k, v in current.items():
                self.best_state[k][better.to(v.device)] = v.detach()[better.to(v.device)]
        self.best_score = torch.where(better, scores, self.best_score)
        self.wait = torch.where(better, torch.zeros_like(self.wait), self.wait + active.long())
        if self.patience:
            for m in (active & (self.wait >= self.patience)).nonzero().flatten().tolist():
                state.active[m] = False

    def selected(self, pl_module: Any) -> dict[str, Tensor]:
        """The weights to test: each model's best validation's, else the current ones."""
        return self.best_state if self.best_state is not None else pl_module.weights()

    def state_dict(self, models: list[int] | None = None) -> dict[str, Any]:
        idx = list(range(self.models)) if models is None else models
        best = None if self.best_state is None else {k: v[idx].cpu() for k, v in self.best_state.items()}
        return {"best_score": self.best_score[idx], "best_state": best, "wait": self.wait[idx]}

    @staticmethod
    def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
        """One selection state from the shares of several jobs (their models in order)."""
        best = None if any(p["best_state"] is None for p in parts) else \
            {k: torch.cat([p["best_state"][k] for p in parts]) for k in parts[0]["best_state"]}
        return {"best_score": torch.cat([p["best_score"] for p in parts]), "best_state": best,
                "wait": torch.cat([p["wait"] for p in parts])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_score, self.wait = state["best_score"].clone(), state["wait"].clone()
        self.best_state = None if state["best_state"] is None else {k: v.clone() for k, v in state["best_state"].items()}


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
