"""Assembly: from checked configs and loaded data to one wired stack (module, data, callbacks, trainer), untrained."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from densbench.training import checkpoints

from densbench.training import job_log

from densbench.evaluation import recalibration
from densbench.evaluation.candidates import noise_levels
from densbench.data import datasets as data_mod
from densbench.objectives.analytic import use_compiled_kernels
from densbench.training.checkpoints import Checkpoints
from densbench.runs.checks import check_against_data, check_config, check_recalibration, check_validation_choices
from densbench.runs.devices import check_device, threads, world_size
from densbench.training.batches import DensityData, Stack
from densbench.training.engine import EngineState, Selection, param_dtype
from densbench.training.throughput import Throughput
from densbench.errors import ConfigError, DataError
from densbench.training.job_log import CurveFlush, JobLog
from densbench.training.loop import Loop
from densbench.training.module import DensityModule
from densbench.training.jobs import Job
from densbench.training.networks import Head
from densbench.training.progress_bar import Progress
from densbench.runs.resume import training_key
from densbench.timing import JobClock, Timing

ENSEMBLE_SEED_STEP = 7919  # member m of a job with seed s starts from seed s + 7919 m


class NotStackable(Exception):
    """Jobs that cannot train as one stack (different data sizes); they run one after the other instead."""


def dropout_rates(cfg: DictConfig) -> list[float]:
    """One dropout rate per model of a job: a list of rates makes candidates (MC dropout's grid), a rate is every member's."""
    rate = cfg.model.get("dropout", 0.0) or 0.0
    if OmegaConf.is_list(rate):
        return [float(r) for r in rate]
    return [float(rate)] * int(cfg.ensemble.members)


def member_seeds(cfg: DictConfig) -> list[int]:
    """The seeds of a job's models: its own, then one per further ensemble member (or dropout candidate)."""
    return [int(cfg.seed) + ENSEMBLE_SEED_STEP * m for m in range(len(dropout_rates(cfg)))]


@dataclass
class JobSpec:
    """One job to run: its config, its run directory, and what reruns it."""

    cfg: DictConfig
    run_dir: Path
    overrides: list[str] | None = None
    launcher: str = "basic"
    # filled while running
    result: dict[str, Any] = field(default_factory=dict)
    key: dict[str, str] = field(default_factory=dict)
    resume_from: dict | None = None
    weights_from: Path | None = None  # a finished run that trained this post-hoc job's weights (no training here)
    start: float = 0.0


@dataclass
class Built:
    """Everything one stack needs, wired but not yet trained."""

    datas: list[Any]
    preps: list[Any]
    module: DensityModule
    datamodule: DensityData
    trainer: pl.Trainer
    selection: Selection
    throughput: Throughput
    logs: list[JobLog]
    steps_per_call: int
    batch_size: int | None
    has_val: bool  # without validation rows there is no selection: the last weights are tested
    loop: Loop  # the checked loop settings (the report's flags read their thresholds)
    shares: list[int | None]  # per job, the job of this stack whose models it uses (None: its own)
    trained_by: list[Path | None]  # per job, the run directory that trained its weights, when not itself


def refusal(spec: JobSpec) -> Exception | None:
    """Why this job on its own would be refused before training (its config or its data), or None.

    build() checks a stack's jobs together, so one job's bad split or incompatible option stops them
    all; this tells which of them is at fault, so the others can train without it."""
    try:
        _checked_job(spec.cfg, check_config(spec.cfg))
    except (ConfigError, DataError) as exc:
        return exc
    return None


def _checked_job(cfg: DictConfig, plan: Any) -> tuple[Any, Any, Any]:
    """One job's data loaded, checked against its config and prepared: (data, family, prepared data).

    Every check that refuses a single job before training is here, for build() and refusal() alike."""
    d = data_mod.load(cfg.dataset)
    family = check_against_data(plan, d, str(cfg.grad))
    check_recalibration(cfg, d.task, len(d.val))
    check_validation_choices(cfg, plan.family, len(d.val))
    dtype = "float64" if param_dtype(str(cfg.trainer.precision)) == torch.float64 else "float32"
    prep = data_mod.prepare(d, target_map=family.target_map, dtype=dtype)
    return d, family.fit_targets(prep.splits["train"][1].numpy()), prep


def _stack_of(specs: list[JobSpec], seeds: list[list[int]]) -> tuple[Stack, list[int | None]]:
    """The stack's models (each job's seeds) and, per job, the job whose models it shares (None: its own).

    Jobs that differ only in post-hoc keys (recalibrate) train once: they share one set of models."""
    stack, shares, owner = Stack(jobs=[], seeds=[]), [], {}
    for j, (spec, job_seeds) in enumerate(zip(specs, seeds)):
        key = spec.result.get("train_key") or training_key(OmegaConf.to_container(spec.cfg, resolve=True))
        shares.append(owner.get(key))
        if key in owner:
            stack.jobs.append(stack.jobs[owner[key]])
            continue
        owner[key] = j
        stack.jobs.append(list(range(len(stack.seeds), len(stack.seeds) + len(job_seeds))))
        stack.seeds.extend(job_seeds)
    return stack, shares


def _callbacks(specs: list[JobSpec], throughput: Throughput, selection: Selection, loop: Loop,
               clock: JobClock | None) -> list[pl.Callback]:
    """The stack's Lightning callbacks: throughput, checkpoints, timing, progress, and the user's own (config `callbacks`)."""
    callbacks: list[pl.Callback] = [throughput, Checkpoints([s.run_dir / "checkpoints" for s in specs], selection,
                                                            float(loop.checkpoint_every_s)),
                                    CurveFlush(float(loop.checkpoint_every_s))]
    if clock is not None:
        callbacks.append(Timing(clock))
    callbacks.append(Progress(specs[0].run_dir.name if len(specs) == 1 else f"{len(specs)} jobs"))
    return callbacks + [instantiate(c) for c in (specs[0].cfg.get("callbacks") or {}).values()]


def build(specs: list[JobSpec], keep_step_losses: bool = False, clock: JobClock | None = None) -> Built:
    """Check the configs, load every job's data and wire one stack: module, data module, callbacks, trainer."""
    cfg = specs[0].cfg  # the jobs of a stack differ only in seed and data split
    plan = check_config(cfg)
    loop = plan.loop
    seeds = [member_seeds(s.cfg) for s in specs]
    check_device(cfg, stacked=len(specs) > 1 or len(seeds[0]) > 1)
    quiet_lightning()
    pl.seed_everything(int(cfg.seed), workers=False, verbose=False)

    # a stack's jobs may differ in recalibrate (a replication key: it never changes training), so each is checked
    datas, families, preps = (list(c) for c in zip(*(_checked_job(s.cfg, plan) for s in specs)))
    family = families[0]
    sizes = {(len(d.train), len(d.val), d.n_features) for d in datas}
    if len(sizes) > 1:
        raise NotStackable(f"their splits differ in size ({', '.join(f'{a}/{b} rows, {c} features' for a, b, c in sorted(sizes))})")

    stack, shares = _stack_of(specs, seeds)
    rates = [r for s, shared in zip(specs, shares) if shared is None for r in dropout_rates(s.cfg)]
    backbone = instantiate(cfg.model, in_features=datas[0].n_features, seeds=stack.seeds,
                           **({"dropout": rates} if any(rates) else {}))
    head = Head(family, backbone.out_features, stack.seeds, detached=plan.objective.detached_fields(family))
    _job_buffers(head, stack, families)

    n_train, has_val = len(datas[0].train), len(datas[0].val) > 0
    world = world_size(cfg.trainer)
    batch = loop.batch(n_train)
    torch.set_num_threads(threads(loop.threads, (batch or n_train) * stack.size // world))
    total, eval_every = loop.steps(n_train)
    # DDP synchronises gradients inside Lightning's backward: one optimisation step per call
    per_call = 1 if world > 1 else min(loop.steps_per_call, eval_every)
    state = EngineState(total, eval_every, stack.size, keep_step_losses)
    resume_from = None
    if all(s.resume_from is not None for s in specs):
        resume_from = checkpoints.merge([s.resume_from for s, shared in zip(specs, shares) if shared is None])
        # the step count decides the first chunk plan, which Lightning makes before the weights load
        state.load_state_dict(resume_from["engine"])
    selection = Selection(stack.size, loop.early_stopping_patience if has_val else None)

    logs = [job_log.make(cfg.get("logger"), s.run_dir, state.opt_steps if resume_from is not None else None) for s in specs]
    jobs = _jobs(specs, stack, preps, datas, logs, family, has_val)
    module = DensityModule(backbone, head, plan.objective, instantiate(cfg.optimizer), cfg.grad, datas[0].task, stack, jobs,
                           state, selection, samples_per_step=batch or n_train, resume_from=resume_from)
    # set for every job: the kernels are process-wide and a sweep runs many jobs in one process
    use_compiled_kernels(loop.compile and cfg.grad == "analytic")
    if loop.compile:
        module.backbone.compile(mode=loop.compile_mode)
        module.head.compile(mode=loop.compile_mode)
    dm = DensityData(preps, stack, batch, state, per_call, [int(s.cfg.seed) for s in specs],
                     truth_targets=plan.objective.needs_truth == "gaussian",
                     class_targets=bool(getattr(family, "class_targets", False)),
                     sees_validation=[job.sees_validation for job in jobs])

    throughput = Throughput(stack.size)
    callbacks = _callbacks(specs, throughput, selection, loop, clock)
    trainer = trainer_for(cfg.trainer, specs[0].run_dir, max_epochs=state.periods_left, callbacks=callbacks, validate=has_val)
    trained_by = [s.weights_from if i is None else (specs[i].weights_from or specs[i].run_dir) for s, i in zip(specs, shares)]
    return Built(datas, preps, module, dm, trainer, selection, throughput, logs, per_call, batch, has_val, loop, shares, trained_by)


def _jobs(specs: list[JobSpec], stack: Stack, preps: list[Any], datas: list[Any], logs: list[JobLog], family: Any,
          has_val: bool) -> list[Job]:
    """What the module needs of each job: its models, target scaling, truth, loggers, and what it fits on validation."""
    return [Job(models, p.target_loc, p.target_scale, d.truth, lg, s.key, recalibration.make(str(s.cfg.recalibrate)),
                d.resolution, choose=OmegaConf.is_list(s.cfg.model.get("dropout")) and has_val,
                noise_grid=noise_levels(d.notes.get("noise_precisions"), float(p.target_scale))
                if has_val and "noise" in family.chosen_on_validation else None)
            for models, p, d, lg, s in zip(stack.jobs, preps, datas, logs, specs)]


def _job_buffers(head: Head, stack: Stack, families: list[Any]) -> None:
    """Each job's data-dependent buffers (Family.fit_targets on its own training split) into its models' rows."""
    with torch.no_grad():
        for models, family in zip(stack.jobs, families):
            for name, value in family.buffers().items():
                rows = getattr(head, name)
                rows[models] = value.to(rows.dtype)


def trainer_for(node: DictConfig, root: Path, max_epochs: int, callbacks: list[pl.Callback], validate: bool) -> pl.Trainer:
    """Lightning's Trainer from the trainer config, with what the engine owns (checks.ENGINE_OWNED) set here.

    One Lightning epoch is one evaluation period (densbench.training.engine), so max_epochs is the number of
    periods left; each job logs to its own logger, so the trainer has none.
    """
    return instantiate(
        node,
        max_epochs=max_epochs,
        logger=False,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if validate else 0,
        default_root_dir=str(root),
        use_distributed_sampler=False,
    )()


def quiet_lightning() -> None:
    """Silence Lightning's banner lines and advice that does not apply to this loop."""
    # we pass checkpoints explicitly, and our batches are whole device-resident tensors, not DataLoader workers
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (r".*LeafSpec.*", r".*does not have many workers.*", r".*exists and is not empty.*"):
        warnings.filterwarnings("ignore", message=pattern)
