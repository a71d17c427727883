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
The data on the device and its chunks are densbench.training.batches; throughput, densbench.training.throughput.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any, Callable

import lightning.pytorch as pl
import torch
from torch import Tensor

from densbench.signals import raise_if_stopped

if TYPE_CHECKING:
    from densbench.training.batches import Chunk


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
