"""Jobs: validate, build, train, test, and write each run directory's result.json.

A job is one run directory. Jobs that differ only in seed or data split can be trained together as
one stack of models (``run_group``, used by ``launcher=stacked``); a single job is a group of one.
Results are read from the module and callbacks of global rank zero, which under every supported
strategy (one process, DDP started by Lightning, torchrun or Slurm) is this process.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import time
import traceback
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from densbench import checkpoints, progress, provenance, resume
from densbench.atomic import save_figure
from densbench.results import RESULT_FILE, config_hash, read_result, write_json_atomic
from densbench.signals import Interrupted, JobSignals

TRACEBACK_FILE = "traceback.txt"
# bookkeeping switches: they change where and whether a run is written, never its numbers
NOT_IN_KEY = ("resume", "report", "name")
ENSEMBLE_SEED_STEP = 7919  # member m of a job with seed s starts from seed s + 7919 m


class Skipped(Exception):
    """The job cannot run on this machine (e.g. a GPU job without a GPU); not a failure."""


class NotStackable(Exception):
    """Jobs that cannot train as one stack (different data sizes); they run one after the other instead."""


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
    start: float = 0.0


def labels(cfg: DictConfig, plan: Any = None) -> dict[str, Any]:
    """The axes a report groups by: dataset, objective, predictive family, gradient path, devices."""
    if plan is None:
        try:
            from densbench.checks import check_config

            plan = check_config(cfg)
        except Exception:  # noqa: BLE001 - a config that fails its checks is still labelled from its names
            plan = None
    if plan is not None:
        loss = plan.objective.label
        head = plan.bound_family().label
    else:
        loss, head = (_registered_name(node) for node in (cfg.loss, cfg.head))
    t = cfg.trainer
    n = int(t.devices) * int(t.num_nodes)
    return {
        "dataset": cfg.dataset.name,
        "loss": loss,
        "head": head,
        "grad": cfg.grad,
        "device": t.accelerator if n == 1 else f"{t.accelerator}x{n}",
        "seed": int(cfg.seed),
        "split": int(cfg.dataset.get("split", 0) or 0) if cfg.dataset.get("protocol") == "uci" else None,
    }


def _registered_name(node: DictConfig) -> str:
    """The registry name of a loss or head config's class, even when its values fail the checks."""
    from hydra.utils import get_class

    try:
        return str(get_class(node._target_).name)
    except Exception:  # noqa: BLE001 - an unknown class: the last part of its path
        return str(node.get("_target_", "?")).rsplit(".", 1)[-1].lower()


def _steps(cfg: DictConfig, steps_per_pass: int) -> tuple[int, int]:
    t = cfg.trainer
    total = int(t.max_epochs) * steps_per_pass if t.max_epochs is not None else int(t.max_steps)
    every = int(t.eval_every) if t.eval_every is not None else steps_per_pass
    return total, min(every, total)


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _check_device(cfg: DictConfig, stacked: bool) -> None:
    from densbench.errors import ConfigError

    t = cfg.trainer
    if t.accelerator in ("gpu", "cuda") and torch.cuda.device_count() < int(t.devices):
        raise Skipped(f"trainer.accelerator={t.accelerator} needs {t.devices} CUDA device(s); this machine has {torch.cuda.device_count()}")
    strategy = str(t.strategy)
    if strategy.startswith(("ddp_spawn", "ddp_fork", "ddp_notebook")):
        raise ConfigError(
            f"trainer.strategy={strategy} is not supported: the results would stay in the spawned processes; "
            "use trainer=ddp (Lightning starts the processes and rank 0 is this one)"
        )
    world = int(t.devices) * int(t.num_nodes)
    if world > 1 and stacked:
        raise ConfigError(
            "several devices (trainer.devices x trainer.num_nodes > 1) and a stack of models (launcher=stacked, "
            "ensemble.members > 1) exclude each other: a stack trains its models side by side on one device; "
            "use one device, or train the members one at a time"
        )
    # Slurm tasks or torchrun processes are the ranks themselves; otherwise Lightning re-runs the
    # command line for every extra rank, which inside a multirun would start the whole sweep again
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    external = SLURMEnvironment.detect() or TorchElasticEnvironment.detect()
    if strategy.startswith("ddp") and _is_multirun() and not external:
        raise ConfigError(
            f"trainer.strategy={strategy} cannot run inside a multirun on this machine: every extra process "
            "would re-run the sweep command and start the sweep again. Run DDP jobs one at a time (without -m), "
            "sweep them on a cluster with launcher=slurm (Slurm starts one task per device), or sweep "
            "single-device jobs in parallel with launcher=parallel"
        )


AUTO_THREADS_MIN_ROWS = 2048  # below this many rows per step (all models of a stack) a second thread costs more than it gains


def threads(setting: Any, rows_per_step: int) -> int:
    """torch threads for a job: the configured number, or for `auto` all usable cores on steps of at
    least AUTO_THREADS_MIN_ROWS rows and one thread on smaller ones (measured: README, Speed)."""
    if setting != "auto":
        return int(setting)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores if rows_per_step >= AUTO_THREADS_MIN_ROWS else 1


def member_seeds(cfg: DictConfig) -> list[int]:
    """The seeds of a job's models: its own, then one per further ensemble member."""
    members = int(cfg.get("ensemble", {}).get("members", 1))
    return [int(cfg.seed) + ENSEMBLE_SEED_STEP * m for m in range(members)]


@dataclass
class Built:
    """Everything one stack needs, wired but not yet trained."""

    datas: list[Any]
    preps: list[Any]
    module: Any
    datamodule: Any
    trainer: Any
    selection: Any
    throughput: Any
    loggers: list[Any]
    steps_per_call: int
    batch_size: int | None


def build(specs: list[JobSpec], keep_step_losses: bool = False, clock: Any = None) -> Built:
    """Check the configs, load every job's data and wire one stack: module, data module, callbacks, trainer."""
    import lightning.pytorch as pl
    from hydra.utils import instantiate

    from densbench import data as data_mod
    from densbench.analytic import use_compiled_kernels
    from densbench.checkpoints import Checkpoints
    from densbench import recalibration
    from densbench.checks import check_against_data, check_config, check_recalibration
    from densbench.engine import DensityData, EngineState, Selection, Stack, Throughput, steps_per_pass
    from densbench.module import DensityModule, Job
    from densbench.networks import Head

    cfg = specs[0].cfg  # the jobs of a stack differ only in seed and data split
    plan = check_config(cfg)
    seeds = [member_seeds(s.cfg) for s in specs]
    _check_device(cfg, stacked=len(specs) > 1 or len(seeds[0]) > 1)
    _quiet_lightning()
    t = cfg.trainer
    pl.seed_everything(int(cfg.seed), workers=False, verbose=False)

    dtype = "float64" if str(t.precision).startswith("64") else "float32"
    datas = [data_mod.load(s.cfg.dataset) for s in specs]
    family = [check_against_data(plan, d, str(cfg.grad)) for d in datas][0]
    sizes = {(len(d.train), len(d.val), d.n_features) for d in datas}
    if len(sizes) > 1:
        raise NotStackable(f"their splits differ in size ({', '.join(f'{a}/{b} rows, {c} features' for a, b, c in sorted(sizes))})")
    for s, d in zip(specs, datas):  # a stack's jobs may differ in recalibrate (a replication key: it never changes training)
        check_recalibration(s.cfg, d.task, len(d.val))
    preps = [data_mod.prepare(d, dtype=dtype) for d in datas]

    stack = Stack(jobs=[], seeds=[])
    for job_seeds in seeds:
        stack.jobs.append(list(range(len(stack.seeds), len(stack.seeds) + len(job_seeds))))
        stack.seeds.extend(job_seeds)
    backbone = instantiate(cfg.model, in_features=datas[0].n_features, seeds=stack.seeds)
    head = Head(family, backbone.out_features, stack.seeds, detached=plan.objective.detached_fields(family))

    n_train = len(datas[0].train)
    world = int(t.devices) * int(t.num_nodes)
    batch = None if t.batch_size is None or int(t.batch_size) >= n_train else int(t.batch_size)
    torch.set_num_threads(threads(t.threads, (batch or n_train) * stack.size // world))
    total, eval_every = _steps(cfg, steps_per_pass(n_train, batch))
    # DDP synchronises gradients inside Lightning's backward: one optimisation step per call
    per_call = 1 if world > 1 else min(int(t.steps_per_call), eval_every)
    state = EngineState(total, eval_every, stack.size, keep_step_losses)
    resume_from = None
    if all(s.resume_from is not None for s in specs):
        resume_from = checkpoints.merge([s.resume_from for s in specs])
        # the step count decides the first chunk plan, which Lightning makes before the weights load
        state.load_state_dict(resume_from["engine"])
    selection = Selection(stack.size, int(t.early_stopping_patience) if len(datas[0].val) and t.early_stopping_patience else None)

    loggers = []
    for s in specs:
        logger = None
        if cfg.get("logger") and "_target_" in cfg.logger:
            # events a killed run wrote after its last checkpoint are hidden, not shown twice
            purge = {"purge_step": state.opt_steps + 1} if resume_from is not None else {}
            logger = instantiate(cfg.logger, save_dir=str(s.run_dir), **purge)
        loggers.append(logger)
    jobs = [Job(models, p.target_loc, p.target_scale, d.truth, lg, s.key, recalibration.make(str(s.cfg.get("recalibrate", "none"))))
            for models, p, d, lg, s in zip(stack.jobs, preps, datas, loggers, specs)]
    module = DensityModule(backbone, head, plan.objective, instantiate(cfg.optimizer), cfg.grad, datas[0].task, stack, jobs,
                           state, selection, samples_per_step=batch or n_train, resume_from=resume_from)
    # set for every job: the kernels are process-wide and a sweep runs many jobs in one process
    use_compiled_kernels(bool(t.compile) and cfg.grad == "analytic")
    if t.compile:
        module.backbone.compile(mode=t.compile_mode)
        module.head.compile(mode=t.compile_mode)
    dm = DensityData(preps, stack, batch, state, per_call, [int(s.cfg.seed) for s in specs],
                     truth_targets=plan.objective.needs_truth == "gaussian",
                     class_targets=bool(getattr(family, "class_targets", False)),
                     calibrate=[job.recalibration.active for job in jobs])

    throughput = Throughput(stack.size)
    callbacks: list[pl.Callback] = [throughput, Checkpoints([s.run_dir / "checkpoints" for s in specs], selection,
                                                                  float(t.checkpoint_every_s))]
    if clock is not None:
        from densbench.timing import Timing

        callbacks.append(Timing(clock))
    from densbench.progress_bar import Progress

    callbacks.append(Progress(specs[0].run_dir.name if len(specs) == 1 else f"{len(specs)} jobs"))
    callbacks += [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    trainer = pl.Trainer(
        accelerator=t.accelerator,
        devices=int(t.devices),
        num_nodes=int(t.num_nodes),
        strategy=t.strategy,
        precision=t.precision,
        max_epochs=state.periods_left,
        logger=False,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if len(datas[0].val) else 0,
        deterministic=bool(t.deterministic),
        default_root_dir=str(specs[0].run_dir),
        use_distributed_sampler=False,
    )
    return Built(datas, preps, module, dm, trainer, selection, throughput, loggers, per_call, batch)


def train_and_test(specs: list[JobSpec], signals: JobSignals) -> list[dict[str, Any]]:
    """Train one stack and test every job; returns each job's metrics, curves and run facts for result.json."""
    from densbench.timing import JobClock

    clock = JobClock()
    signals.enter("loading data")
    b = build(specs, clock=clock)
    module, dm, trainer, selection, state = b.module, b.datamodule, b.trainer, b.selection, b.module.state
    signals.enter("training", deferred=True)
    resumed = all(s.resume_from is not None for s in specs)
    if state.periods_left:
        trainer.fit(module, datamodule=dm)
    elif resumed:  # training had finished before the interruption: its final state is all we need
        from densbench.engine import as_param_dtype

        checkpoints.restore(as_param_dtype(module, str(specs[0].cfg.trainer.precision)), selection,
                            checkpoints.merge([s.resume_from for s in specs]), optimizer=False)
    signals.enter("testing")
    module.load_weights(selection.selected(module))
    trainer.test(module, datamodule=dm, verbose=False)
    return [_job_out(specs[j], j, b, signals, clock) for j in range(len(specs))]


def _job_out(spec: JobSpec, j: int, b: Built, signals: JobSignals, clock: Any) -> dict[str, Any]:
    """One job's share of a trained and tested stack: what result.json records, and its files."""
    module, state, selection, data = b.module, b.module.state, b.selection, b.datas[j]
    models = module.jobs[j].models
    diverged = [(i, module.diverged[m]) for i, m in enumerate(models) if m in module.diverged]
    if diverged:
        (spec.run_dir / "checkpoints" / checkpoints.LAST).unlink(missing_ok=True)  # non-finite weights must not seed a rerun
        member, message = diverged[0]
        return {"diverged": message if len(models) == 1 else f"ensemble member {member}: {message}"}
    history = [state.history[m] for m in models]
    metrics = dict(module.test_results[j])
    metrics.update(b.throughput.figures)
    curves = dict(module.test_curves[j])
    curves.update({f"train_{k}": v for k, v in history[0].items()})
    steps = history[0]["step"][-1] if history[0]["step"] else state.opt_steps
    artifacts: dict[str, str] = {}
    has_val = len(data.val) > 0
    best = [float(selection.best_score[m]) for m in models]
    out: dict[str, Any] = {
        "metrics": metrics,
        # operations served by a generic method (a solver, a quadrature) instead of a closed form
        "fallbacks": module.fallbacks(j),
        "curves": curves,
        "train": {
            "opt_steps": steps,
            "max_steps": state.total_steps,
            "eval_every": state.eval_every,
            "steps_per_call": b.steps_per_call,
            "batch_size": b.batch_size,
            "stopped_early": steps < state.total_steps,
            "best_val_nll": (best[0] if len(best) == 1 else sum(best) / len(best)) if has_val else None,
            "last_val_nll": history[0]["val_nll"][-1] if history[0]["val_nll"] else None,
            "model_selection": "best val/nll" if has_val else "last weights (no validation split)",
            "n_train": len(data.train),
            "n_val": len(data.val),
            "n_test": len(data.test),
            "parameters": sum(p[0].numel() for p in module.parameters()),
            "stack": {"models": module.stack.size, "jobs": len(module.jobs), "members": len(models)},
            "threads": torch.get_num_threads(),
        },
        "artifacts": artifacts,
    }
    recalibration = module.jobs[j].recalibration
    if recalibration.active:
        out["metrics_uncalibrated"] = module.uncalibrated_results[j]
        out["curves_uncalibrated"] = module.uncalibrated_curves[j]
        out["recalibration"] = {"method": recalibration.name, "fitted_on": f"validation split ({len(data.val)} rows)",
                                "changes_density": recalibration.changes_density, **recalibration.fitted()}
    if len(models) > 1:
        out["metrics_members"] = module.member_results[j]
        out["train"]["members"] = history
    if b.trainer.is_global_zero:
        selected = selection.selected(module)
        checkpoints.save_atomic({"state_dict": {k: v[models].cpu() for k, v in selected.items()},
                                 "config": OmegaConf.to_container(spec.cfg, resolve=True)},
                                spec.run_dir / "checkpoints" / checkpoints.BEST)
        signals.enter("writing figures")
        logger = b.loggers[j]
        if logger:
            logger.log_hyperparams(_flat_hparams(spec.cfg), {f"hp/{k}": v for k, v in metrics.items() if math.isfinite(v)})
            artifacts["tensorboard"] = os.path.relpath(logger.log_dir, spec.run_dir)
        figures_started = time.perf_counter()
        if spec.cfg.get("figures", True):
            artifacts.update(_figures(spec.cfg, _predictor(module, j, b.preps[j]), b.preps[j], module.test_curves[j],
                                      spec.run_dir, logger, steps,
                                      module.uncalibrated_curves[j] if recalibration.changes_density else None))
        if logger:
            logger.finalize("success")
        out["timing"] = clock.summary(figures_s=time.perf_counter() - figures_started)
    return out


def _predictor(module: Any, job: int, prep: Any):
    """x in original units (numpy) -> a job's predictive distribution, for figures."""

    @torch.no_grad()
    def predict(x_orig):
        models = torch.tensor(module.jobs[job].models, device=module.device)
        dtype = next(module.parameters()).dtype
        x = torch.as_tensor(prep.x_scaler(x_orig), dtype=dtype, device=module.device)
        module.eval()
        pred, _ = module.predictive(job, module(x.expand(len(models), *x.shape), models))
        return pred

    return predict


def _figures(cfg, predict, prep, curves, run_dir: Path, logger, step: int, before: dict | None = None) -> dict[str, str]:
    """Predictive-distribution and calibration figures: PNGs in the run directory and TensorBoard images."""
    import matplotlib.pyplot as plt

    from densbench.calibration_plot import calibration_figure
    from densbench.figures import predictive_figure

    out = {}
    figs = {"figure": ("predictive", predictive_figure(predict, prep, title=_title(cfg)))}
    if curves:
        figs["calibration_figure"] = ("calibration", calibration_figure([curves], title=_title(cfg), before=[before] if before else None))
    for key, (name, fig) in figs.items():
        save_figure(fig, run_dir / f"{name}.png", dpi=110)
        if logger:
            logger.experiment.add_figure(name, fig, global_step=step)
        plt.close(fig)
        out[key] = f"{name}.png"
    if logger:
        logger.experiment.flush()
    return out


def _quiet_lightning() -> None:
    import logging
    import warnings

    # Lightning's banner lines and advice that does not apply to this loop (we pass checkpoints
    # explicitly, and our batches are whole device-resident tensors, not DataLoader workers)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (r".*LeafSpec.*", r".*does not have many workers.*", r".*exists and is not empty.*"):
        warnings.filterwarnings("ignore", message=pattern)


def _title(cfg: DictConfig) -> str:
    lab = labels(cfg)
    recal = cfg.get("recalibrate", "none")
    return (f"{lab['dataset']} | loss={lab['loss']} | head={lab['head']} | grad={lab['grad']}"
            + (f" | recalibrate={recal}" if recal != "none" else ""))


def _flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    lab = labels(cfg)
    flat = {f"{k}": v for k, v in lab.items() if v is not None}
    flat.update(
        {
            "lr": float(cfg.optimizer.lr),
            "optimizer": str(cfg.optimizer._target_).rsplit(".", 1)[-1],
            "hidden": str(list(cfg.model.hidden)),
            "max_steps": cfg.trainer.max_steps if cfg.trainer.max_epochs is None else f"{cfg.trainer.max_epochs} epochs",
            "batch_size": str(cfg.trainer.batch_size),
        }
    )
    return flat


def _rank() -> int:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def run_key(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    """The resolved config, the key a reusable result must match, and the provenance to record."""
    from densbench.data import fingerprint

    resolved = OmegaConf.to_container(cfg, resolve=True)
    code = provenance.code_revision()
    data = fingerprint(cfg.dataset)
    key = resume.run_key(config_hash({k: v for k, v in resolved.items() if k not in NOT_IN_KEY}), code["source_hash"], data["data_hash"])
    prov = dict(code, **data, versions=provenance.library_versions())
    return resolved, key, prov


def flags(cfg: DictConfig, out: dict[str, Any]) -> list[str]:
    """Warnings a report must show beside a finished run: validation NLL that ran away, absurd values."""
    t, found = cfg.trainer, []
    train = out["train"]
    best, last = train.get("best_val_nll"), train.get("last_val_nll")
    margin = float(t.get("flag_margin", 1.0))
    if best is not None and last is not None and last > best + margin:
        found.append(f"val_nll_rose: the last validation NLL {last:.4g} is more than {margin:g} above the best {best:.4g}")
    absurd = float(t.get("absurd_loss", 1e6))
    worst = max((abs(v) for v in out["curves"].get("train_train_loss", []) if math.isfinite(v)), default=0.0)
    if worst > absurd:
        found.append(f"exploded: a period's mean training loss reached {worst:.3g} (above {absurd:g})")
    for name in ("nll", "crps", "rmse"):
        v = out["metrics"].get(name)
        if v is not None and math.isfinite(v) and abs(v) > absurd:
            found.append(f"exploded: test {name} is {v:.3g} (above {absurd:g})")
    return found


def _previous_checkpoint(run_dir: Path, key: dict[str, str]) -> dict | None:
    """The last checkpoint of an unfinished run with this key; anything else is reported and set aside."""
    path = run_dir / "checkpoints" / checkpoints.LAST
    if not path.exists():
        return None
    try:
        return checkpoints.load(path, key)
    except checkpoints.CheckpointError as exc:
        progress.say(f"densbench: ignoring {path}: {exc}; the run starts over")
        path.unlink(missing_ok=True)
        return None


def run_job(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """The job boundary: every outcome ends in a result.json (rank 0), never in a lost sweep."""
    return run_group([JobSpec(cfg, Path(run_dir), _overrides(), _launcher())])[0]


def run_group(specs: list[JobSpec]) -> list[dict[str, Any]]:
    """Jobs that differ only in seed or data split, trained as stacks; each ends in its own result.json."""
    rank0 = _rank() == 0
    with JobSignals() as signals, ExitStack() as held:
        for spec in specs:
            spec.run_dir.mkdir(parents=True, exist_ok=True)
            if rank0:
                held.enter_context(resume.locked(spec.run_dir, progress.say))
        signals.enter("checking the run directories")
        pending = [spec for spec in specs if not _prepare(spec)]
        # jobs resumed from different steps (or started afresh) form separate stacks
        by_step: dict[Any, list[JobSpec]] = {}
        for spec in pending:
            by_step.setdefault((spec.resume_from or {}).get("engine", {}).get("opt_steps"), []).append(spec)
        for part in by_step.values():
            _run_stack(part, signals, rank0)
    return [spec.result for spec in specs]


def _prepare(spec: JobSpec) -> bool:
    """Fill in a job's key and result skeleton; True when an earlier result is reused as it is."""
    cfg = spec.cfg
    spec.start = time.perf_counter()
    resolved, spec.key, prov = run_key(cfg)
    spec.result = {
        "config": resolved, "config_hash": spec.key["config_hash"], "labels": labels(cfg), "run_dir": str(spec.run_dir),
        "overrides": spec.overrides, "launcher": spec.launcher, "provenance": prov,
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    previous = _reusable(cfg, spec.run_dir, spec.key)
    if previous is not None:
        spec.result = previous
        return True
    spec.resume_from = _previous_checkpoint(spec.run_dir, spec.key) if cfg.get("resume", True) else None
    spec.result["resumed_from_step"] = (spec.resume_from or {}).get("engine", {}).get("opt_steps")
    return False


def _run_stack(specs: list[JobSpec], signals: JobSignals, rank0: bool) -> None:
    """Train and test jobs as one stack; every job ends with its result.json, whatever happens."""
    try:
        try:
            outs = train_and_test(specs, signals)
        except NotStackable as exc:
            progress.say(f"densbench: {len(specs)} jobs run one after the other, not as one stack: {exc}")
            for spec in specs:
                _run_stack([spec], signals, rank0)
            return
        for spec, out in zip(specs, outs):
            if "diverged" in out:
                spec.result.update(status="failed", error=f"Diverged: {out['diverged']}", error_kind="diverged")
            else:
                spec.result.update(status="ok", error=None, flags=flags(spec.cfg, out), **out)
    except Skipped as exc:
        for spec in specs:
            spec.result.update(status="skipped", error=str(exc))
    except (Interrupted, SystemExit) as exc:
        # SystemExit: Lightning's SIGTERMException, raised between two chunks after its own handler ran
        sig = exc.signum if isinstance(exc, Interrupted) else 15
        stage = exc.stage if isinstance(exc, Interrupted) else "training"
        for spec in specs:
            kept = spec.run_dir / "checkpoints" / checkpoints.LAST
            note = f"kept {kept}" if kept.exists() else "nothing to keep yet"
            spec.result.update(status="interrupted", error=f"interrupted by {_signame(sig)} while {stage}; {note}; "
                                                            "rerun the same command to resume")
            if rank0:
                _finish(spec)
                progress.say(f"densbench: {spec.result['error']}")
        raise Interrupted(sig, stage) from None
    except Exception as exc:  # noqa: BLE001 - the job boundary records every failure
        for spec in specs:
            _record_failure(spec, exc, rank0)
    if rank0:
        for spec in specs:
            _finish(spec)
            progress.announce(spec.result, spec.run_dir)


def _reusable(cfg: DictConfig, run_dir: Path, key: dict[str, str]) -> dict | None:
    """The earlier result to reuse, or None (after one line saying why an ok result is not reused)."""
    previous = read_result(run_dir)
    if not cfg.get("resume", True):
        if _rank() == 0:  # a forced rerun starts from scratch
            (run_dir / "checkpoints" / checkpoints.LAST).unlink(missing_ok=True)
        return None
    reuse, why = resume.reuse_verdict(previous, key)
    if reuse:
        if _rank() == 0:
            progress.announce(previous, run_dir, reused=True)
        previous["resumed"] = "reused: result.json is ok for this config, code and data"
        return previous
    if why and previous and previous.get("status") == "ok":
        progress.say(f"densbench: rerunning {run_dir}: {why}")
    return None


def _record_failure(spec: JobSpec, exc: Exception, rank0: bool) -> None:
    from densbench.checks import Incompatible
    from densbench.errors import ConfigError, DataError

    result = spec.result
    if isinstance(exc, Incompatible):  # a valid config whose parts do not fit: a sweep goes on without it
        result.update(status="skipped", error=f"incompatible: {exc}", error_kind="incompatible")
        return
    if isinstance(exc, (ConfigError, DataError)):
        result.update(status="failed", error=f"{type(exc).__name__}: {exc}", error_kind="invalid input")
        return
    result.update(status="failed", error=f"{type(exc).__name__}: {exc}", error_kind=type(exc).__name__, traceback=TRACEBACK_FILE)
    if rank0:
        try:
            (spec.run_dir / TRACEBACK_FILE).write_text("".join(traceback.format_exception(exc)))
        except OSError:
            pass


def _overrides() -> list[str] | None:
    """The command-line overrides of this job (what reruns it), when Hydra launched it."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None


def _launcher() -> str:
    """The Hydra launcher that runs this job ("basic" when Hydra is not involved)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return "basic"
    return str(HydraConfig.get().runtime.choices.get("hydra/launcher", "basic"))


def _signame(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


def _finish(spec: JobSpec) -> None:
    result = spec.result
    result["wall_time_s"] = time.perf_counter() - spec.start
    result["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    try:
        write_json_atomic(spec.run_dir / RESULT_FILE, result)
    except OSError as exc:  # a full disk: say so in one line instead of a traceback
        progress.say(f"densbench: could not write {spec.run_dir / RESULT_FILE}: {exc.strerror or exc}")
