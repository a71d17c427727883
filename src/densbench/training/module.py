"""The LightningModule: a stack of networks (backbone + head of one family), an objective, and the jobs they serve.

It holds no formula: the loss is the objective's, the predictive distributions the family's, the
metrics densbench.evaluation.metrics'. One class serves every objective. A stack trains N models for J jobs
(run directories): each job has one model, or several (a deep ensemble scored as the uniform mixture
of its members), its own data scaling, truth and logger; the module routes every number to its job.
"""

from __future__ import annotations

import gc
from typing import Callable

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch import Tensor, nn
from torch.distributions import Distribution

from densbench.training import checkpoints

from densbench.evaluation import candidates, ensemble
from densbench.distributions.families import Family
from densbench.training.flat_params import FlatParameters
from densbench.training.batches import Chunk, EvalBatch, Stack
from densbench.training.engine import EngineState, Selection, run_chunk
from densbench.training.jobs import Job
from densbench.evaluation.metrics import COVERAGES, ModelScores, PredictiveMetrics, validation_nll
from densbench.evaluation.multivariate import JointModelScores, MultivariateMetrics
from densbench.training.dropout import stochastic_passes
from densbench.training.networks import Head
from densbench.objectives import Objective


class Diverged(RuntimeError):
    """Training produced a non-finite loss or parameter."""


class DensityModule(pl.LightningModule):
    """Shared wiring: stacked backbone + head, a chunked manual-optimisation loop, evaluation and logging."""

    def __init__(
        self,
        backbone: nn.Module,
        head: Head,
        objective: Objective,
        optimizer: Callable[..., torch.optim.Optimizer],
        grad: str,
        task: str,
        stack: Stack,
        jobs: list[Job],
        state: EngineState,
        selection: Selection,
        samples_per_step: int = 1,
        resume_from: dict | None = None,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.backbone, self.head = backbone, head
        self.family, self.objective = head.family, objective
        self.optimizer_factory = optimizer
        self.grad, self.task = grad, task
        self.stack, self.jobs = stack, jobs
        self.samples_per_step = samples_per_step
        self.state, self.selection = state, selection
        self.resume_from = resume_from  # a checkpoint to continue from, loaded once optimisers exist
        job_of = stack.job_of
        # per model [N, 1] (or [N, 1, d] with d targets): the target standardisation of its job, for validating
        # every model in one pass
        self.register_buffer("target_loc", torch.tensor([[jobs[j].target_loc] for j in job_of]), persistent=False)
        self.register_buffer("target_scale", torch.tensor([[jobs[j].target_scale] for j in job_of]), persistent=False)
        self.register_buffer("job_of", torch.tensor(job_of), persistent=False)
        joint = task == "multivariate"  # one joint predictive of several targets: scored by evaluation.multivariate
        self.val_scores = JointModelScores(stack.size) if joint else ModelScores(task, stack.size,
                                                                                  [jobs[j].resolution for j in job_of])
        self.test_metrics = nn.ModuleList([MultivariateMetrics(self.family.targets) if joint else
                                           PredictiveMetrics(task, full=True, resolution=job.resolution) for job in jobs])
        # a recalibrated job is also scored as trained (result.json's metrics_uncalibrated), once per set of models
        self.as_trained = scored_as_trained_by(jobs)
        self.uncalibrated_metrics = nn.ModuleDict({str(j): PredictiveMetrics(task, full=True, resolution=job.resolution)
                                                   for j, job in enumerate(jobs) if job.recalibration.active and j not in self.as_trained})
        # an ensemble's members are also scored alone (result.json reports their mean), once per set of models
        self.member_metrics = nn.ModuleDict({f"{j}_{i}": PredictiveMetrics(task, full=True, intervals=False, resolution=job.resolution)
                                             for j, job in enumerate(jobs) if job.ensemble and j not in self.as_trained
                                             for i in range(len(job.models))})
        self.diverged: dict[int, str] = {}  # model -> message
        self.test_results: list[dict[str, float]] = [{} for _ in jobs]
        self.member_results: list[dict[str, float]] = [{} for _ in jobs]
        self.uncalibrated_results: list[dict[str, float]] = [{} for _ in jobs]
        self.uncalibrated_curves: list[dict[str, list[float]]] = [{} for _ in jobs]
        self.test_curves: list[dict[str, list[float]]] = [{} for _ in jobs]
        self.test_samples = 0
        self.mc_samples = int(getattr(backbone, "mc_samples", 0))  # MC dropout: evaluation averages this many passes
        self.choices: list[candidates.Choice | None] = [None for _ in jobs]
        self.mixture_val_nll: list[float | None] = [None for _ in jobs]  # an ensemble's, as tested (score_mixture)

    # ------------------------------------------------------------------ parts
    def forward(self, x: Tensor, models: Tensor | None = None, passes: Tensor | None = None) -> dict[str, Tensor]:
        """Named raw head outputs [N, B, width] for standardised inputs [N, B, d] (or a subset of models)."""
        if passes is None:
            return self.head(self.backbone(x, models), models)
        return self.head(self.backbone(x, models, passes), models)

    def evaluation_passes(self, x: Tensor, models: Tensor | None = None) -> list[dict[str, Tensor]]:
        """Raw outputs of every evaluation pass: one, or MC dropout's stochastic passes (each with its own masks)."""
        return stochastic_passes(self, x, models, self.mc_samples) if self.mc_samples else [self(x, models)]

    def passes_on(self, x: Tensor, models: Tensor) -> list[dict[str, Tensor]]:
        """Every evaluation pass of `models` on one job's rows x [B, d]."""
        return self.evaluation_passes(x.expand(len(models), *x.shape), models)

    def loss(self, raw: dict[str, Tensor], y: Tensor, extra: tuple[Tensor, ...]) -> Tensor:
        """The objective's reduced training loss of every model, [N]."""
        return self.objective.loss(self.family, raw, y, extra, self.grad)

    def tested_models(self, job: int) -> Tensor:
        """The models a job's predictive is made of: its ensemble's members, or the candidate chosen on validation."""
        j, chosen = self.jobs[job], self.choices[job]
        return torch.tensor(j.models if chosen is None or not j.choose else [j.models[chosen.index]], device=self.device)

    def predictive(self, job: int, passes: list[dict[str, Tensor]]) -> tuple[Distribution, list[Distribution]]:
        """A job's predictive distribution in original units from its tested models' passes (the uniform mixture
        of an ensemble's members, or the chosen candidate at its chosen noise level) and its members'."""
        j = self.jobs[job]
        if self.choices[job] is not None:
            return (pred := self.candidate(job, passes, 0, self.choices[job].noise)), [pred]
        members = [self.candidate(job, passes, i) for i in range(len(j.models))]
        return (members[0] if len(members) == 1 else ensemble.uniform_mixture(members)), members

    def candidate(self, job: int, passes: list[dict[str, Tensor]], i: int, noise: float | None = None) -> Distribution:
        """Model i of a job (over its evaluation passes), with its noise level set to `noise` (original units) if given."""
        j = self.jobs[job]
        picked = [{k: v[i] for k, v in raw.items()} for raw in passes]
        if noise is not None:  # (a multivariate job's scale is a list: no family of it has a noise level)
            picked = candidates.with_noise(picked, noise, float(j.target_scale))
        return ensemble.over_passes(self.family, picked, j.target_loc, j.target_scale)

    def choose(self, job: int, x: Tensor, y: Tensor) -> None:
        """Pick a job's candidate model and noise level on its validation rows x, y (candidates.choose)."""
        j = self.jobs[job]
        models = torch.tensor(j.models, device=self.device)
        passes = self.passes_on(x, models)
        count = len(j.models) if j.choose else 1
        self.choices[job] = candidates.choose(lambda i, noise: self.candidate(job, passes, i, noise), count, j.noise_grid, y,
                                              j.resolution)

    def score_mixture(self, job: int, x: Tensor, y: Tensor) -> None:
        """An ensemble's validation NLL as it is tested, on its validation rows x, y: its members' uniform mixture,
        each at its selected epoch (NLL@h where set), which validation choices among methods compare."""
        pred, _ = self.predictive(job, self.passes_on(x, self.tested_models(job)))
        nll = validation_nll(pred, y, self.task, self.jobs[job].resolution)
        self.mixture_val_nll[job] = float(nll.double().mean())

    def configure_optimizers(self):
        # one device in full precision (the plain loop): every parameter a view of one buffer, which
        # the optimiser steps as one tensor (densbench.training.flat_params); DDP and mixed precision keep
        # Lightning's handling of the parameters as they are
        strategy = self.trainer.strategy
        self._flat = None
        if isinstance(strategy, SingleDeviceStrategy) and str(self.trainer.precision) in ("32-true", "64-true"):
            self._flat = FlatParameters(list(self.parameters()))
            return self.optimizer_factory([self._flat.param])
        return self.optimizer_factory(self.parameters())

    def optimizer_state(self) -> dict:
        """The optimiser's state_dict per parameter tensor (whatever the layout it steps), for checkpoints."""
        opt = self.optimizers()
        state = (opt.optimizer if hasattr(opt, "optimizer") else opt).state_dict()
        return self._flat.per_parameter(state) if getattr(self, "_flat", None) is not None else state

    def load_optimizer_state(self, state: dict) -> None:
        """Load what optimizer_state() returned."""
        opt = self.optimizers()
        opt = opt.optimizer if hasattr(opt, "optimizer") else opt
        opt.load_state_dict(self._flat.flat(state) if getattr(self, "_flat", None) is not None else state)

    def weights(self) -> dict[str, Tensor]:
        """The networks' parameters and buffers by name ([N, ...] each): what selection and checkpoints keep.

        Cheaper than state_dict(), which would also walk every job's metric objects.
        """
        return {**self.backbone.state_dict(prefix="backbone."), **self.head.state_dict(prefix="head.")}

    def load_weights(self, weights: dict[str, Tensor]) -> None:
        """Load what weights() returned (strictly: every network tensor, nothing else)."""
        for name, net in (("backbone", self.backbone), ("head", self.head)):
            net.load_state_dict({k[len(name) + 1:]: v for k, v in weights.items() if k.startswith(name + ".")})

    def log_job(self, job: int, values: dict[str, Tensor | float], final: bool = False) -> None:
        """Write scalars to a job's loggers at the current optimisation step (global rank zero only; final: end values).

        Through the job's own loggers (JobLog), not self.log: that costs milliseconds per key, which adds up
        over hundreds of evaluations, and it knows nothing of the jobs of a stack.
        """
        log = self.jobs[job].log
        if log and self.trainer.is_global_zero:
            log.metrics(values, step=self.state.opt_steps, final=final)

    def log_models(self, prefix: str, values: dict[str, Tensor]) -> None:
        """Per-model values [N] to each job's logger: the value of a single model, or an ensemble's mean and members."""
        if not any(job.log for job in self.jobs) or not self.trainer.is_global_zero:
            return
        # one transfer for the stack, then plain numbers per job (a stack of 80 jobs logs every period)
        lists = {name: v.detach().double().cpu().tolist() for name, v in values.items()}
        for j, job in enumerate(self.jobs):
            if j in self.as_trained:  # its models are another job's (only post-hoc keys differ): so are the curves
                continue
            out = {}
            for name, v in lists.items():
                picked = [v[m] for m in job.models]
                out[f"{prefix}/{name}"] = sum(picked) / len(picked)
                if len(picked) > 1:
                    out.update({f"{prefix}/{name}/member{i}": x for i, x in enumerate(picked)})
            self.log_job(j, out)

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
            if self._flat is not None:
                self._flat.zero_grad()
            else:
                raw_opt.zero_grad(set_to_none=True)
            loss.backward()
            raw_opt.step()
        else:
            opt = self.optimizers()
            opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            opt.step()

    def training_step(self, chunk: Chunk, batch_idx: int) -> None:
        self._raw_optimizer = self.optimizers().optimizer
        first = self.state.opt_steps
        losses_t, hits_t = run_chunk(self, chunk, self._step, self.family.has_floor)
        finite = torch.isfinite(losses_t).all(0)
        for p in self.parameters():
            finite &= torch.isfinite(p).flatten(1).all(1)
        if not bool(finite.all()):  # the one host synchronisation of the chunk
            self._diverged(losses_t, hits_t, first, finite.cpu())
        if self.state.at_period_end:
            loss, hits = self.state.close_period()
            self.log_models("train", {"loss": loss, "floor_hits_per_step": hits})

    def _diverged(self, losses_t: Tensor, hits_t: Tensor, first: int, finite: Tensor) -> None:
        """Stop every model whose loss or weights turned non-finite; training goes on for the others."""
        for m in (~finite).nonzero().flatten().tolist():
            if not self.state.active[m]:
                continue
            bad = (~torch.isfinite(losses_t[:, m])).nonzero()
            i = int(bad[0]) if len(bad) else len(losses_t) - 1
            what = "loss" if len(bad) else "parameters"
            hits = int(hits_t[i, m])
            hint = (f"; {hits} spread outputs of that step sat on the floor (variance collapse)" if hits
                    else "; no spread on the floor (overflow: try a smaller optimizer.lr)")
            self.diverged[m] = f"training diverged: non-finite {what} at optimisation step {first + i}{hint}"
            self.state.active[m] = False
        if self.state.finished:
            self.trainer.should_stop = True

    # ------------------------------------------------------------------ evaluation
    def _refresh_from_training(self) -> None:
        # families that estimate something from the training data after fitting (the canonical
        # Gaussian's dispersion) get its sums, per model, over every rank's share; the others need
        # no pass over the training rows
        if type(self.family).training_statistics is Family.training_statistics:
            return
        with torch.no_grad():
            x, y, _ = self.trainer.datamodule.training_rows()
            sums = self.family.training_statistics(self(x), y)
            if sums is None:
                return
            sums = {k: self.trainer.strategy.reduce(v, reduce_op="sum") for k, v in sums.items()}
        self.family.update_buffers({n: getattr(self.head, n) for n in self.family.buffers()}, sums)

    def on_validation_epoch_start(self) -> None:
        self._refresh_from_training()

    def validation_step(self, batch: EvalBatch, batch_idx: int) -> None:
        # every model on its own job's validation split, in one stacked pass
        # the mean network (dropout off) chooses the epoch: MC dropout's passes are for the final choice and the test
        dist = self.family.distribution(self(batch.x[self.job_of]), self.target_loc, self.target_scale)
        self.val_scores.update(dist, batch.y[self.job_of], batch.rows)

    def on_validation_epoch_end(self) -> None:
        # [N] per score (torchmetrics hands a one-element result back as a 0-dim tensor)
        scores = {k: v.reshape(-1) for k, v in self.val_scores.compute().items()}
        self.val_scores.reset()
        self.selection.update(self, scores["nll"])
        if self.state.finished:
            self.trainer.should_stop = True
        self.log_models("val", scores)

    def on_test_epoch_start(self) -> None:
        self._refresh_from_training()
        self.test_floor_hits = [torch.zeros((), device=self.device) for _ in self.jobs]
        self.test_samples = 0

    def _failed(self, job: int) -> bool:
        """A job whose model (or one ensemble member) diverged: its result is the failure, not its test."""
        return any(m in self.diverged for m in self.jobs[job].models)

    def test_step(self, batch: EvalBatch, batch_idx: int) -> None:
        j = batch.job
        if self._failed(j):
            return
        recalibration = self.jobs[j].recalibration
        if batch.split == "val":  # the job's validation split, handed over before its test split
            if self.jobs[j].chooses:
                self.choose(j, batch.x, batch.y)
            elif self.jobs[j].ensemble:
                self.score_mixture(j, batch.x, batch.y)
            if recalibration.active:
                models = self.tested_models(j)
                recalibration.fit(self.predictive(j, self.passes_on(batch.x, models))[0], batch.y)
            return
        models = self.tested_models(j)  # only the chosen candidate's passes: the others are not tested
        passes = self.passes_on(batch.x, models)
        raw = passes[0]
        pred, members = self.predictive(j, passes)
        truth = self.jobs[j].truth(batch.x_orig) if self.jobs[j].truth is not None else None
        self.test_metrics[j].update(recalibration.apply(pred), batch.y, truth, batch.u, recalibration.intervals(pred, COVERAGES))
        if recalibration.active and j not in self.as_trained:
            self.uncalibrated_metrics[str(j)].update(pred, batch.y, truth, batch.u)
        if len(members) > 1 and j not in self.as_trained:
            for i, dist in enumerate(members):
                self.member_metrics[f"{j}_{i}"].update(dist, batch.y, truth, batch.u)
        self.test_floor_hits[j] += self.head.floor_hits(raw).sum()
        self.test_samples += batch.x.shape[0] * len(models)

    def on_test_epoch_end(self) -> None:
        for j, job in enumerate(self.jobs):
            if self._failed(j):
                continue
            values = self.test_metrics[j].compute()
            values["floor_hits"] = self.trainer.strategy.reduce(self.test_floor_hits[j].double(), reduce_op="sum")
            self.test_curves[j] = self.test_metrics[j].curves()
            self.test_metrics[j].reset()
            self.test_results[j] = {k: float(v) for k, v in values.items()}
            if job.recalibration.active and j not in self.as_trained:
                before = self.uncalibrated_metrics[str(j)]
                self.uncalibrated_results[j] = {k: float(v) for k, v in before.compute().items()}
                self.uncalibrated_curves[j] = before.curves()
                before.reset()
            if job.ensemble and j not in self.as_trained:  # the mean of the members' own metrics
                own = [self.member_metrics[f"{j}_{i}"].compute() for i in range(len(job.models))]
                self.member_results[j] = {k: float(sum(o[k] for o in own) / len(own)) for k in own[0]}
            self.log_job(j, {f"test/{k}": v for k, v in self.test_results[j].items()}, final=True)
        for j, k in self.as_trained.items():  # scored as trained by the job that shares its models
            plain = not self.jobs[k].recalibration.active  # its own test metrics are the models as trained
            scores = self.test_results[k] if plain else self.uncalibrated_results[k]
            self.uncalibrated_results[j] = {name: v for name, v in scores.items() if name != "floor_hits"}
            self.uncalibrated_curves[j] = self.test_curves[k] if plain else self.uncalibrated_curves[k]
            self.member_results[j] = self.member_results[k]
        for j, job in enumerate(self.jobs):
            if job.recalibration.active and not self._failed(j):
                self.log_job(j, {f"test_uncalibrated/{k}": v for k, v in self.uncalibrated_results[j].items()}, final=True)

    def fallbacks(self, job: int) -> dict[str, str]:
        """Metrics of a job computed by a generic method instead of a closed form."""
        return dict(self.test_metrics[job].fallbacks)


def scored_as_trained_by(jobs: list[Job]) -> dict[int, int]:
    """Per recalibrated job that needs no scoring of its own as trained, the job of the stack whose score of
    the same models it takes: one without recalibration (its test metrics), else the first recalibrated one."""
    out = {}
    for j, job in enumerate(jobs):
        if not job.recalibration.active:
            continue
        same = [k for k, other in enumerate(jobs) if k != j and other.models == job.models]
        plain = [k for k in same if not jobs[k].recalibration.active]
        earlier = [k for k in same if k < j]  # without a plain one, the first of them scores itself
        if plain or earlier:
            out[j] = (plain or earlier)[0]
    return out
