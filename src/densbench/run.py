"""One job: validate, build, train, test, and write the run directory's result.json.

Results are read from the module and callbacks of global rank zero, which under every supported
strategy (one process, DDP started by Lightning, torchrun or Slurm) is this process.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import sys
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from densbench import checkpoints, provenance, resume
from densbench.atomic import save_figure
from densbench.results import RESULT_FILE, config_hash, read_result, write_json_atomic
from densbench.signals import Interrupted, JobSignals

TRACEBACK_FILE = "traceback.txt"
# bookkeeping switches: they change where and whether a run is written, never its numbers
NOT_IN_KEY = ("resume", "report", "name")


class Skipped(Exception):
    """The job cannot run on this machine (e.g. a GPU job without a GPU); not a failure."""


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


def _check_device(cfg: DictConfig) -> None:
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


@dataclass
class Built:
    """Everything one run needs, wired but not yet trained."""

    data: Any
    prep: Any
    module: Any
    datamodule: Any
    trainer: Any
    selection: Any
    throughput: Any
    logger: Any
    steps_per_call: int
    batch_size: int | None

    @property
    def has_val(self) -> bool:
        """Whether model selection on a validation split happens."""
        return len(self.data.val) > 0


def build(cfg: DictConfig, run_dir: Path, run_key: dict[str, str] | None = None, resume_from: dict | None = None,
          keep_step_losses: bool = False) -> Built:
    """Validate the config, load data and wire module, data module, callbacks and trainer."""
    import lightning.pytorch as pl
    from hydra.utils import instantiate

    from densbench import data as data_mod
    from densbench.analytic import use_compiled_kernels
    from densbench.checkpoints import Checkpoints
    from densbench.checks import check_against_data, check_config
    from densbench.engine import DensityData, EngineState, Selection, Throughput, steps_per_pass
    from densbench.module import DensityModule
    from densbench.networks import Head

    plan = check_config(cfg)
    _check_device(cfg)
    _quiet_lightning()
    t = cfg.trainer
    torch.set_num_threads(int(t.threads))
    pl.seed_everything(int(cfg.seed), workers=False, verbose=False)

    data = data_mod.load(cfg.dataset)
    family = check_against_data(plan, data, str(cfg.grad))
    prep = data_mod.prepare(data, dtype="float64" if str(t.precision).startswith("64") else "float32")

    backbone = instantiate(cfg.model, in_features=data.n_features)
    head = Head(family, backbone.out_features, detached=plan.objective.detached_fields(family))

    world = int(t.devices) * int(t.num_nodes)
    batch = None if t.batch_size is None or int(t.batch_size) >= len(data.train) else int(t.batch_size)
    total, eval_every = _steps(cfg, steps_per_pass(len(data.train), batch))
    # DDP synchronises gradients inside Lightning's backward: one optimisation step per call
    per_call = 1 if world > 1 else min(int(t.steps_per_call), eval_every)
    state = EngineState(total, eval_every, keep_step_losses)
    if resume_from is not None:
        # the step count decides the first chunk plan, which Lightning makes before the weights load
        state.load_state_dict(resume_from["engine"])
    selection = Selection(int(t.early_stopping_patience) if len(data.val) and t.early_stopping_patience else None)

    module = DensityModule(
        backbone=backbone,
        head=head,
        objective=plan.objective,
        optimizer=instantiate(cfg.optimizer),
        grad=cfg.grad,
        task=data.task,
        target_loc=prep.target_loc,
        target_scale=prep.target_scale,
        truth_fn=data.truth,
        samples_per_step=batch or len(data.train),
        state=state,
        selection=selection,
        run_key=run_key,
        resume_from=resume_from,
    )
    # set for every job: the kernels are process-wide and a sweep runs many jobs in one process
    use_compiled_kernels(bool(t.compile) and cfg.grad == "analytic")
    if t.compile:
        module.backbone.compile(mode=t.compile_mode)
        module.head.compile(mode=t.compile_mode)
    dm = DensityData(prep, batch, state, per_call, int(cfg.seed), truth_targets=plan.objective.needs_truth == "gaussian",
                     class_targets=bool(getattr(family, "class_targets", False)))

    throughput = Throughput()
    callbacks: list[pl.Callback] = [throughput, selection, Checkpoints(run_dir / "checkpoints", selection)]
    callbacks += [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    logger = False
    if cfg.get("logger") and "_target_" in cfg.logger:
        # events a killed run wrote after its last checkpoint are hidden, not shown twice
        purge = {"purge_step": state.opt_steps + 1} if resume_from is not None else {}
        logger = instantiate(cfg.logger, save_dir=str(run_dir), **purge)

    trainer = pl.Trainer(
        accelerator=t.accelerator,
        devices=int(t.devices),
        num_nodes=int(t.num_nodes),
        strategy=t.strategy,
        precision=t.precision,
        max_epochs=state.periods_left,
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if len(data.val) else 0,
        log_every_n_steps=1,
        deterministic=bool(t.deterministic),
        default_root_dir=str(run_dir),
        use_distributed_sampler=False,
    )
    return Built(data, prep, module, dm, trainer, selection, throughput, logger, per_call, batch)


def train_and_test(cfg: DictConfig, run_dir: Path, signals: JobSignals, run_key: dict[str, str] | None = None,
                   resume_from: dict | None = None) -> dict[str, Any]:
    """Train and test one configuration; returns metrics, curves and run facts for result.json."""
    signals.enter("loading data")
    b = build(cfg, run_dir, run_key, resume_from)
    module, dm, trainer, selection, throughput, logger = b.module, b.datamodule, b.trainer, b.selection, b.throughput, b.logger
    data, prep, state = b.data, b.prep, module.state
    signals.enter("training", deferred=True)
    if state.periods_left:
        trainer.fit(module, datamodule=dm)
    elif resume_from is not None:  # training had finished before the interruption: its final state is all we need
        from densbench.engine import as_param_dtype

        checkpoints.restore(as_param_dtype(module, str(cfg.trainer.precision)), selection, resume_from, optimizer=False)
    signals.enter("testing")
    module.load_state_dict(selection.selected(module))
    trainer.test(module, datamodule=dm, verbose=False)

    metrics = dict(module.test_results)
    metrics.update(throughput.figures)
    curves = dict(module.test_curves)
    curves.update({f"train_{k}": v for k, v in state.history.items()})

    artifacts: dict[str, str] = {}
    if trainer.is_global_zero:
        checkpoints.save_atomic({"state_dict": selection.selected(module), "config": OmegaConf.to_container(cfg, resolve=True)},
                                run_dir / "checkpoints" / checkpoints.BEST)
        signals.enter("writing figures")
        if logger:
            logger.log_hyperparams(_flat_hparams(cfg), {f"hp/{k}": v for k, v in metrics.items() if math.isfinite(v)})
            artifacts["tensorboard"] = os.path.relpath(logger.log_dir, run_dir)
        if cfg.get("figures", True):
            artifacts.update(_figures(cfg, module, prep, module.test_curves, run_dir, logger, state.opt_steps))
    hist = state.history
    return {
        "metrics": metrics,
        # operations served by a generic method (a solver, a quadrature) instead of a closed form
        "fallbacks": dict(module.test_metrics.fallbacks),
        "curves": curves,
        "train": {
            "opt_steps": state.opt_steps,
            "max_steps": state.total_steps,
            "eval_every": state.eval_every,
            "steps_per_call": b.steps_per_call,
            "batch_size": b.batch_size,
            "stopped_early": state.finished,
            "best_val_nll": selection.best_score if b.has_val else None,
            "last_val_nll": hist["val_nll"][-1] if hist["val_nll"] else None,
            "model_selection": "best val/nll" if b.has_val else "last weights (no validation split)",
            "n_train": len(data.train),
            "n_val": len(data.val),
            "n_test": len(data.test),
            "parameters": sum(p.numel() for p in module.parameters()),
        },
        "artifacts": artifacts,
    }


def _figures(cfg, module, prep, curves, run_dir: Path, logger, step: int) -> dict[str, str]:
    """Predictive-distribution and calibration figures: PNGs in the run directory and TensorBoard images."""
    import matplotlib.pyplot as plt

    from densbench.calibration_plot import calibration_figure
    from densbench.figures import predictive_figure

    out = {}
    figs = {"figure": ("predictive", predictive_figure(module.cpu(), prep, title=_title(cfg)))}
    if curves:
        figs["calibration_figure"] = ("calibration", calibration_figure([curves], title=_title(cfg)))
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
    return f"{lab['dataset']} | loss={lab['loss']} | head={lab['head']} | grad={lab['grad']}"


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


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


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
        _say(f"densbench: ignoring {path}: {exc}; the run starts over")
        path.unlink(missing_ok=True)
        return None


def run_job(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """The job boundary: every outcome ends in a result.json (rank 0), never in a lost sweep."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rank0 = _rank() == 0
    with JobSignals() as signals, (resume.locked(run_dir, _say) if rank0 else nullcontext(False)):
        signals.enter("checking the run directory")
        start = time.perf_counter()
        resolved, key, prov = run_key(cfg)
        result: dict[str, Any] = {
            "config": resolved, "config_hash": key["config_hash"], "labels": labels(cfg), "run_dir": str(run_dir),
            "overrides": _overrides(), "provenance": prov,
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        try:
            previous = _reusable(cfg, run_dir, key)
            if previous is not None:
                return previous
            resume_from = _previous_checkpoint(run_dir, key) if cfg.get("resume", True) else None
            result["resumed_from_step"] = (resume_from or {}).get("engine", {}).get("opt_steps")
            out = train_and_test(cfg, run_dir, signals, key, resume_from)
            result.update(status="ok", error=None, flags=flags(cfg, out), **out)
        except Skipped as exc:
            result.update(status="skipped", error=str(exc))
        except (Interrupted, SystemExit) as exc:
            # SystemExit: Lightning's SIGTERMException, raised between two chunks after its own handler ran
            sig = exc.signum if isinstance(exc, Interrupted) else 15
            stage = exc.stage if isinstance(exc, Interrupted) else "training"
            kept = run_dir / "checkpoints" / checkpoints.LAST
            note = f"kept {kept}" if kept.exists() else "nothing to keep yet"
            result.update(status="interrupted", error=f"interrupted by {_signame(sig)} while {stage}; {note}; "
                                                     "rerun the same command to resume")
            if rank0:
                _finish(result, run_dir, start)
                _say(f"densbench: {result['error']}")
            raise Interrupted(sig, stage) from None
        except Exception as exc:  # noqa: BLE001 - the job boundary records every failure
            _record_failure(result, exc, run_dir, rank0)
        if rank0:
            _finish(result, run_dir, start)
    return result


def _reusable(cfg: DictConfig, run_dir: Path, key: dict[str, str]) -> dict | None:
    """The earlier result to reuse, or None (after one line saying why an ok result is not reused)."""
    previous = read_result(run_dir)
    if not cfg.get("resume", True):
        if _rank() == 0:  # a forced rerun starts from scratch
            (run_dir / "checkpoints" / checkpoints.LAST).unlink(missing_ok=True)
        return None
    reuse, why = resume.reuse_verdict(previous, key)
    if reuse:
        _say(f"densbench: reusing the finished result in {run_dir} (resume=false reruns it)")
        previous["resumed"] = "reused: result.json is ok for this config, code and data"
        return previous
    if why and previous and previous.get("status") == "ok":
        _say(f"densbench: rerunning {run_dir}: {why}")
    return None


def _record_failure(result: dict, exc: Exception, run_dir: Path, rank0: bool) -> None:
    from densbench.checks import Incompatible
    from densbench.errors import ConfigError, DataError
    from densbench.module import Diverged

    if isinstance(exc, Incompatible):  # a valid config whose parts do not fit: a sweep goes on without it
        result.update(status="skipped", error=f"incompatible: {exc}", error_kind="incompatible")
        return
    if isinstance(exc, (ConfigError, DataError)):
        result.update(status="failed", error=f"{type(exc).__name__}: {exc}", error_kind="invalid input")
        return
    kind = "diverged" if isinstance(exc, Diverged) else type(exc).__name__
    result.update(status="failed", error=f"{type(exc).__name__}: {exc}", error_kind=kind, traceback=TRACEBACK_FILE)
    if rank0:
        try:
            (run_dir / TRACEBACK_FILE).write_text(traceback.format_exc())
        except OSError:
            pass
        if isinstance(exc, Diverged):  # non-finite weights must not seed a rerun
            (run_dir / "checkpoints" / checkpoints.LAST).unlink(missing_ok=True)


def _overrides() -> list[str] | None:
    """The command-line overrides of this job (what reruns it), when Hydra launched it."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None


def _signame(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


def _finish(result: dict, run_dir: Path, start: float) -> None:
    result["wall_time_s"] = time.perf_counter() - start
    result["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    try:
        write_json_atomic(run_dir / RESULT_FILE, result)
    except OSError as exc:  # a full disk: say so in one line instead of a traceback
        _say(f"densbench: could not write {run_dir / RESULT_FILE}: {exc.strerror or exc}")
