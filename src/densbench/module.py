"""The LightningModule: a backbone, a head (its family) and an objective, wired to the engine and the loggers.

It holds no formula: the loss is the objective's, the predictive distribution the family's, the
metrics densbench.metrics'. One class serves every objective; what differs between them lives in
the objective and family modules.
"""

from __future__ import annotations

import gc
from typing import Callable

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch import Tensor, nn
from torch.distributions import Distribution

from densbench import checkpoints
from densbench.engine import Chunk, EngineState, EvalBatch, Selection, run_chunk
from densbench.metrics import PredictiveMetrics
from densbench.networks import Head
from densbench.objectives import Objective


class Diverged(RuntimeError):
    """Training produced a non-finite loss or parameter."""


class DensityModule(pl.LightningModule):
    """Shared wiring: backbone + head, a chunked manual-optimisation loop, evaluation and logging."""

    def __init__(
        self,
        backbone: nn.Module,
        head: Head,
        objective: Objective,
        optimizer: Callable[..., torch.optim.Optimizer],
        grad: str,
        task: str,
        target_loc: float = 0.0,
        target_scale: float = 1.0,
        truth_fn: Callable[[Tensor], Distribution] | None = None,
        samples_per_step: int = 1,
        state: EngineState | None = None,
        selection: Selection | None = None,
        run_key: dict[str, str] | None = None,
        resume_from: dict | None = None,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.backbone, self.head = backbone, head
        self.family, self.objective = head.family, objective
        self.optimizer_factory = optimizer
        self.grad, self.task = grad, task
        self.target_loc, self.target_scale = float(target_loc), float(target_scale)
        self.truth_fn = truth_fn
        self.samples_per_step = samples_per_step
        self.val_metrics = PredictiveMetrics(task, full=False)
        self.test_metrics = PredictiveMetrics(task, full=True)
        self.state = state
        self.selection = selection
        self.run_key = run_key or {}
        self.resume_from = resume_from  # a checkpoint to continue from, loaded once optimisers exist
        self.test_samples = 0
        self.test_results: dict[str, float] = {}
        self.test_curves: dict[str, list[float]] = {}

    # ------------------------------------------------------------------ parts
    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Named raw head outputs for standardised inputs."""
        return self.head(self.backbone(x))

    def loss(self, raw: dict[str, Tensor], y: Tensor, extra: tuple[Tensor, ...]) -> Tensor:
        """The objective's reduced training loss on one minibatch."""
        return self.objective.loss(self.family, raw, y, extra, self.grad)

    def predictive(self, raw: dict[str, Tensor]) -> Distribution:
        """Predictive distribution in original target units."""
        return self.family.distribution(raw, self.target_loc, self.target_scale)

    def configure_optimizers(self):
        return self.optimizer_factory(self.parameters())

    # ------------------------------------------------------------------ training
    def on_fit_start(self) -> None:
        # the plain loop (raw optimizer, loss.backward) is exact on one device in full precision;
        # anything else (DDP, mixed precision) goes through Lightning's optimizer and backward
        strategy = self.trainer.strategy
        self._plain = isinstance(strategy, SingleDeviceStrategy) and str(self.trainer.precision) in ("32-true", "64-true")
        if self.resume_from is not None:  # optimisers exist now; the first chunk is planned after this hook
            checkpoints.restore(self, self.selection, self.resume_from)
            self.resume_from = None
        # every step allocates autograd objects and triggers Python's cyclic GC, whose full passes
        # would walk all of Lightning's (and earlier jobs') long-lived objects: take those out of it
        # (no gc.collect() first: with a few hundred thousand objects alive it costs a tenth of a second)
        gc.freeze()

    def on_fit_end(self) -> None:
        gc.unfreeze()

    def _step(self, loss: Tensor) -> None:
        if self._plain:
            raw_opt = self._raw_optimizer
            raw_opt.zero_grad(set_to_none=True)
            loss.backward()
            raw_opt.step()
        else:
            opt = self.optimizers()
            opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            opt.step()

    def training_step(self, chunk: Chunk, batch_idx: int) -> None:
        opt = self.optimizers()
        self._raw_optimizer = opt.optimizer
        losses_t, hits_t = run_chunk(self, chunk, self._step, self.family.has_floor)
        total = losses_t.sum()
        finite = torch.isfinite(total) & torch.stack([torch.isfinite(p).all() for p in self.parameters()]).all()
        if not bool(finite):  # the one host synchronisation of the chunk
            self._diverged(losses_t, hits_t, self.state.opt_steps - len(losses_t))
        if self.state.opt_steps % self.state.eval_every == 0 or self.state.opt_steps == self.state.total_steps:
            self.log_scalars(self.state.close_period())

    def _diverged(self, losses_t: Tensor, hits_t: Tensor, first: int) -> None:
        bad = (~torch.isfinite(losses_t)).nonzero()
        i = int(bad[0]) if len(bad) else len(losses_t) - 1
        what = "loss" if len(bad) else "parameters"
        hits = int(hits_t[i])
        hint = (
            f"; {hits} spread outputs of that step sat on the floor (variance collapse)"
            if hits
            else "; no spread on the floor (overflow: try a smaller optimizer.lr)"
        )
        raise Diverged(f"training diverged: non-finite {what} at optimisation step {first + i}{hint}")

    def log_scalars(self, values: dict[str, Tensor | float]) -> None:
        """Write scalars to the loggers at the current optimisation step.

        Straight to Lightning's loggers (rank zero only): self.log costs milliseconds per key, which
        adds up over hundreds of evaluations; self.log is kept for what callbacks monitor.
        """
        if self.loggers and self.trainer.is_global_zero:
            scalars = {k: float(v) for k, v in values.items()}
            for logger in self.loggers:
                logger.log_metrics(scalars, step=self.state.opt_steps)


    # ------------------------------------------------------------------ evaluation
    def _refresh_from_training(self) -> None:
        # families that estimate something from the training data after fitting (the canonical
        # Gaussian's dispersion) get its sums over every rank's share
        source = self.trainer.datamodule.source
        with torch.no_grad():
            x, y = source.x[source.rank :: source.world], source.y[source.rank :: source.world]
            sums = self.family.training_statistics(self(x), y)
            if sums is None:
                return
            sums = {k: self.trainer.strategy.reduce(v, reduce_op="sum") for k, v in sums.items()}
        self.family.update_buffers({n: getattr(self.head, n) for n in self.family.buffers()}, sums)

    def _evaluate(self, batch: EvalBatch, metrics: PredictiveMetrics, truth: bool) -> dict[str, Tensor]:
        raw = self(batch.x)
        dist = self.predictive(raw)
        t = self.truth_fn(batch.x_orig) if (truth and self.truth_fn is not None) else None
        metrics.update(dist, batch.y, t, batch.u)
        return raw

    def on_validation_epoch_start(self) -> None:
        self._refresh_from_training()

    def validation_step(self, batch: EvalBatch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, truth=False)

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        self.val_metrics.reset()
        self.log("val/nll", values["nll"], logger=False)  # monitored by model selection
        self.log_scalars({f"val/{k}": v for k, v in values.items()})

    def on_test_epoch_start(self) -> None:
        self._refresh_from_training()
        self.test_floor_hits = torch.zeros((), device=self.device)
        self.test_samples = 0

    def test_step(self, batch: EvalBatch, batch_idx: int) -> None:
        raw = self._evaluate(batch, self.test_metrics, truth=True)
        self.test_floor_hits += self.head.floor_hits(raw)
        self.test_samples += batch.x.shape[0]

    def on_test_epoch_end(self) -> None:
        values = self.test_metrics.compute()
        values["floor_hits"] = self.trainer.strategy.reduce(self.test_floor_hits.double(), reduce_op="sum")
        self.test_curves = self.test_metrics.curves()
        self.test_metrics.reset()
        self.test_results = {k: float(v) for k, v in values.items()}
        self.log_scalars({f"test/{k}": v for k, v in self.test_results.items()})
