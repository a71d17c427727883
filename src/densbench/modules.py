"""LightningModules, one per loss family over a shared base. They wire parts and log; the formulas
live in ``losses``, ``distributions`` and ``metrics``."""

from __future__ import annotations

import gc
from functools import partial
from typing import Callable

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch import Tensor, nn
from torch.distributions import Distribution

from densbench import losses
from densbench.heads import GaussianHead, GLMHead, Head, MixtureHead
from densbench.metrics import PredictiveMetrics
from densbench import checkpoints
from densbench.engine import Chunk, EngineState, EvalBatch, Selection, run_chunk


class Diverged(RuntimeError):
    """Training produced a non-finite loss or parameter."""


class DensityModule(pl.LightningModule):
    """Shared wiring: backbone + head, a chunked manual-optimisation loop, evaluation and logging."""

    family = "base"
    head_type: type[Head] = Head

    def __init__(
        self,
        backbone: nn.Module,
        head: Head,
        optimizer: Callable[..., torch.optim.Optimizer],
        grad: str,
        task: str,
        target_loc: float = 0.0,
        target_scale: float = 1.0,
        truth_fn: Callable[[Tensor], Distribution] | None = None,
        reduction: str = "mean",
        samples_per_step: int = 1,
        state: EngineState | None = None,
        selection: Selection | None = None,
        run_key: dict[str, str] | None = None,
        resume_from: dict | None = None,
    ):
        super().__init__()
        if not isinstance(head, self.head_type):
            raise TypeError(f"loss={self.family} needs a {self.head_type.__name__}, got {type(head).__name__}")
        self.automatic_optimization = False
        self.backbone, self.head = backbone, head
        self.optimizer_factory = optimizer
        self.grad, self.task, self.reduction = grad, task, reduction
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
    def forward(self, x: Tensor):
        """Named raw head outputs for standardised inputs."""
        return self.head(self.backbone(x))

    def loss(self, raw, y: Tensor, extra: tuple[Tensor, ...]) -> Tensor:  # pragma: no cover - abstract
        """The family's training loss (reduced) on one minibatch."""
        raise NotImplementedError

    def predictive(self, raw) -> Distribution:
        """Predictive distribution in original target units."""
        return self.head.distribution(raw, self.target_loc, self.target_scale)

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
        losses_t, hits_t = run_chunk(self, chunk, self._step, self.head.has_floor)
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
    def _evaluate(self, batch: EvalBatch, metrics: PredictiveMetrics, truth: bool) -> None:
        raw = self(batch.x)
        dist = self.predictive(raw)
        t = self.truth_fn(batch.x_orig) if (truth and self.truth_fn is not None) else None
        metrics.update(dist, batch.y, t, batch.u)
        return raw

    def validation_step(self, batch: EvalBatch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, truth=False)

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        self.val_metrics.reset()
        self.log("val/nll", values["nll"], logger=False)  # monitored by checkpointing and early stopping
        self.log_scalars({f"val/{k}": v for k, v in values.items()})

    def on_test_epoch_start(self) -> None:
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


class KLModule(DensityModule):
    """Trains a Gaussian head on KL(true Gaussian || predicted Gaussian) per input."""

    family = "kl"
    head_type = GaussianHead

    def loss(self, raw, y, extra):
        m, s2 = extra
        return losses.gaussian_kl(raw.loc, raw.spread, m, s2, self.head.spread, self.grad, self.reduction)


class NLLModule(DensityModule):
    """Heteroscedastic Gaussian negative log-likelihood."""

    family = "nll"
    head_type = GaussianHead

    def loss(self, raw, y, extra):
        return losses.gaussian_nll(raw.loc, raw.spread, y, self.head.spread, self.grad, self.reduction)


class MDNModule(DensityModule):
    """Mixture density network: Gaussian-mixture negative log-likelihood in log space."""

    family = "mdn"
    head_type = MixtureHead

    def loss(self, raw, y, extra):
        return losses.mixture_nll(raw.logits, raw.loc, raw.spread, y, self.head.spread, self.grad, self.reduction)


class GLMModule(DensityModule):
    """Canonical-link GLM: Gaussian/identity, Bernoulli/sigmoid, categorical/softmax, Poisson/exp."""

    family = "glm"
    head_type = GLMHead

    def loss(self, raw, y, extra):
        return losses.glm_nll(raw.eta, y, self.head.family, self.grad, self.reduction)

    def _estimate_dispersion(self) -> None:
        # the canonical Gaussian has unit dispersion; the predictive scale is its estimate from
        # training residuals (mean squared residual, as a GLM fit reports it)
        if self.head.family != "gaussian":
            return
        source = self.trainer.datamodule.source
        with torch.no_grad():
            x, y = source.x[source.rank :: source.world], source.y[source.rank :: source.world]
            eta = self(x).eta
            reduce = partial(self.trainer.strategy.reduce, reduce_op="sum")
            sq = reduce(((y - eta) ** 2).sum().double())
            n = reduce(torch.tensor(float(y.shape[0]), device=self.device, dtype=torch.float64))
        self.head.dispersion.fill_(float(sq / n))

    def on_validation_epoch_start(self) -> None:
        self._estimate_dispersion()

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._estimate_dispersion()


MODULES: dict[str, type[DensityModule]] = {m.family: m for m in (KLModule, NLLModule, MDNModule, GLMModule)}


def module_class(family: str) -> type[DensityModule]:
    """The LightningModule class of a loss family."""
    try:
        return MODULES[family]
    except KeyError:
        raise ValueError(f"loss must be one of {', '.join(MODULES)}, got {family!r}") from None

