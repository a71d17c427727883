"""One job: validate, build, train, test, and write the run directory's result.json.

Results are read from the module and callbacks of global rank zero, which under every supported
strategy (one process, DDP started by Lightning, torchrun or Slurm) is this process.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from densbench.results import RESULT_FILE, config_hash, read_result, write_json_atomic

TRACEBACK_FILE = "traceback.txt"
CONFIG_HASH_FILE = "config_hash.txt"
INTERRUPTED_CKPT = "interrupted"  # written by Lightning on SIGTERM or an exception mid-training


class Skipped(Exception):
    """The job cannot run on this machine (e.g. a GPU job without a GPU); not a failure."""


def labels(cfg: DictConfig) -> dict[str, Any]:
    """The axes a report groups by."""
    head = str(cfg.head._target_).rsplit(".", 1)[-1].replace("Head", "").lower()
    variant = [head]
    if "positivity" in cfg.head:
        variant.append(cfg.head.positivity)
    if "components" in cfg.head:
        variant.append(f"K={cfg.head.components}")
    if "family" in cfg.head:
        variant.append(cfg.head.family)
    t = cfg.trainer
    device = t.accelerator if int(t.devices) * int(t.num_nodes) == 1 else f"{t.accelerator}x{int(t.devices) * int(t.num_nodes)}"
    return {
        "dataset": cfg.dataset.name,
        "loss": cfg.loss.name,
        "head": "/".join(map(str, variant)),
        "grad": cfg.grad,
        "device": device,
        "seed": int(cfg.seed),
        "split": int(cfg.dataset.get("split", 0) or 0) if cfg.dataset.get("protocol") == "uci" else None,
    }


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
    from densbench.validate import ConfigError

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
    checkpoint: Any
    throughput: Any
    logger: Any
    total_steps: int
    eval_every: int
    steps_per_call: int
    batch_size: int | None

    @property
    def has_val(self) -> bool:
        """Whether model selection on a validation split happens."""
        return len(self.data.val) > 0


def build(cfg: DictConfig, run_dir: Path) -> Built:
    """Validate the config, load data and wire module, data module, callbacks and trainer."""
    import lightning.pytorch as pl
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from densbench import data as data_mod
    from densbench.modules import module_class
    from densbench.training import CheckpointOnInterrupt, DensityData, Throughput
    from densbench.validate import check_against_data, check_config, resolve_glm_family

    check_config(cfg)
    _check_device(cfg)
    _quiet_lightning()
    t = cfg.trainer
    torch.set_num_threads(int(t.threads))
    pl.seed_everything(int(cfg.seed), workers=False, verbose=False)

    data = data_mod.load(cfg.dataset)
    check_against_data(cfg, data)
    prep = data_mod.prepare(data)

    backbone = instantiate(cfg.model, in_features=data.n_features)
    head_kwargs: dict[str, Any] = {"in_features": backbone.out_features}
    if cfg.loss.name == "glm":
        head_kwargs.update(family=resolve_glm_family(cfg, data), n_classes=data.n_classes)
    head = instantiate(cfg.head, **head_kwargs)

    world = int(t.devices) * int(t.num_nodes)
    batch = None if t.batch_size is None or int(t.batch_size) >= len(data.train) else int(t.batch_size)
    steps_per_pass = 1 if batch is None else math.ceil(len(data.train) / batch)
    total, eval_every = _steps(cfg, steps_per_pass)
    # DDP synchronises gradients inside Lightning's backward: one optimisation step per call
    per_call = 1 if world > 1 else min(int(t.steps_per_call), eval_every)
    periods = math.ceil(total / eval_every)

    module = module_class(cfg.loss.name)(
        backbone=backbone,
        head=head,
        optimizer=instantiate(cfg.optimizer),
        grad=cfg.grad,
        task=data.task,
        target_loc=prep.target_loc,
        target_scale=prep.target_scale,
        truth_fn=data.truth,
        reduction=cfg.loss.reduction,
        samples_per_step=batch or len(data.train),
    )
    class_targets = cfg.loss.name == "glm" and head.family == "categorical"
    from densbench.losses import use_compiled_kernels

    # set for every job: the kernels are process-wide and a sweep runs many jobs in one process
    use_compiled_kernels(bool(t.compile) and cfg.grad == "analytic")
    if t.compile:
        module.backbone.compile(mode=t.compile_mode)
        module.head.compile(mode=t.compile_mode)
    dm = DensityData(prep, batch, eval_every, per_call, int(cfg.seed), cfg.loss.name == "kl", class_targets)

    throughput = Throughput()
    interrupted = str(run_dir / "checkpoints" / f"{INTERRUPTED_CKPT}.ckpt")
    callbacks: list[pl.Callback] = [throughput, CheckpointOnInterrupt(interrupted)]
    has_val = len(data.val) > 0
    ckpt = ModelCheckpoint(
        dirpath=str(run_dir / "checkpoints"),
        filename="best",
        monitor="val/nll" if has_val else None,
        mode="min",
        save_last=True,
        save_top_k=1,
        enable_version_counter=False,
    )
    callbacks.append(ckpt)
    callbacks += [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    if has_val and t.early_stopping_patience:
        callbacks.append(EarlyStopping("val/nll", patience=int(t.early_stopping_patience), mode="min", check_finite=False))
    logger = instantiate(cfg.logger, save_dir=str(run_dir)) if cfg.get("logger") and "_target_" in cfg.logger else False

    trainer = pl.Trainer(
        accelerator=t.accelerator,
        devices=int(t.devices),
        num_nodes=int(t.num_nodes),
        strategy=t.strategy,
        precision=t.precision,
        max_epochs=periods,
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if has_val else 0,
        log_every_n_steps=1,
        deterministic=bool(t.deterministic),
        default_root_dir=str(run_dir),
        use_distributed_sampler=False,
    )
    return Built(data, prep, module, dm, trainer, ckpt, throughput, logger, total, eval_every, per_call, batch)


def train_and_test(cfg: DictConfig, run_dir: Path, resume_from: str | None = None) -> dict[str, Any]:
    """Train and test one configuration; returns metrics, curves and run facts for result.json."""
    b = build(cfg, run_dir)
    module, dm, trainer, ckpt, throughput, logger = b.module, b.datamodule, b.trainer, b.checkpoint, b.throughput, b.logger
    data, prep = b.data, b.prep
    has_val, total, eval_every, per_call, batch = b.has_val, b.total_steps, b.eval_every, b.steps_per_call, b.batch_size
    trainer.fit(module, datamodule=dm, ckpt_path=resume_from)
    last_val = trainer.callback_metrics.get("val/nll")
    best = ckpt.best_model_path if has_val and ckpt.best_model_path else None
    trainer.test(module, datamodule=dm, ckpt_path=best, verbose=False)

    metrics = dict(module.test_results)
    metrics.update(throughput.figures)
    curves = module.test_curves

    artifacts: dict[str, str] = {}
    if trainer.is_global_zero:
        if best:
            module.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)["state_dict"])
        if logger:
            logger.log_hyperparams(_flat_hparams(cfg), {f"hp/{k}": v for k, v in metrics.items() if math.isfinite(v)})
            artifacts["tensorboard"] = os.path.relpath(logger.log_dir, run_dir)
        if cfg.get("figures", True):
            artifacts.update(_figures(cfg, module, prep, curves, run_dir, logger, module.opt_steps))
    return {
        "metrics": metrics,
        "curves": curves,
        "train": {
            "opt_steps": module.opt_steps,
            "max_steps": total,
            "eval_every": eval_every,
            "steps_per_call": per_call,
            "batch_size": batch,
            "best_val_nll": float(ckpt.best_model_score) if has_val and ckpt.best_model_score is not None else None,
            "last_val_nll": float(last_val) if last_val is not None else None,
            "model_selection": "best val/nll checkpoint" if has_val else "last weights (no validation split)",
            "n_train": len(data.train),
            "n_val": len(data.val),
            "n_test": len(data.test),
            "parameters": sum(p.numel() for p in module.parameters()),
        },
        "artifacts": artifacts,
        "is_rank_zero": trainer.is_global_zero,
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
        fig.savefig(run_dir / f"{name}.png", dpi=110)
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


def _versions() -> dict[str, str]:
    import sys

    import lightning

    return {"python": sys.version.split()[0], "torch": torch.__version__, "lightning": lightning.__version__}


def _rank() -> int:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def run_job(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """The job boundary: every outcome ends in a result.json (rank 0), never in a lost sweep."""
    from densbench.data import DataError
    from densbench.validate import ConfigError

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    # the hash covers what can change a result, not bookkeeping switches
    chash = config_hash({k: v for k, v in resolved.items() if k not in ("resume", "report", "name")})
    base = {"config": resolved, "config_hash": chash, "labels": labels(cfg), "run_dir": str(run_dir)}

    previous = read_result(run_dir)
    if cfg.get("resume", True) and previous and previous.get("status") == "ok" and previous.get("config_hash") == chash:
        previous["resumed"] = "skipped: result.json is ok for this exact config"
        return previous
    resume_from = _resume_checkpoint(run_dir, chash, bool(cfg.get("resume", True)))

    start = time.perf_counter()
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    result: dict[str, Any] = dict(base, started=started, versions=_versions(), resumed_from_checkpoint=resume_from is not None)
    try:
        out = train_and_test(cfg, run_dir, resume_from)
        result.update(status="ok", error=None, **{k: v for k, v in out.items() if k != "is_rank_zero"})
    except Skipped as exc:
        result.update(status="skipped", error=str(exc))
    except (ConfigError, DataError) as exc:
        result.update(status="failed", error=f"{type(exc).__name__}: {exc}", error_kind="invalid input")
    except (KeyboardInterrupt, SystemExit) as exc:
        # SIGTERM reaches here as Lightning's SIGTERMException (a SystemExit) after the last
        # checkpoint was saved: record the interruption, then let the process end
        result.update(status="interrupted", error=f"{type(exc).__name__}: interrupted; rerun the same command to resume")
        if _rank() == 0:
            _finish(result, run_dir, start)
        if isinstance(exc, SystemExit) and not exc.code:
            raise SystemExit(128 + 15) from exc  # Lightning's SIGTERM exit carries no status: say it was SIGTERM
        raise
    except Exception as exc:  # noqa: BLE001 - the job boundary records every failure
        from densbench.modules import Diverged

        tb = traceback.format_exc()
        kind = "diverged" if isinstance(exc, Diverged) else type(exc).__name__
        result.update(status="failed", error=f"{type(exc).__name__}: {exc}", error_kind=kind, traceback=TRACEBACK_FILE)
        if _rank() == 0:
            (run_dir / TRACEBACK_FILE).write_text(tb)
            # a failed run's checkpoints (possibly non-finite weights) must not seed a rerun
            for c in (run_dir / "checkpoints").glob("*.ckpt"):
                c.unlink()
    if _rank() == 0:
        _finish(result, run_dir, start)
    return result


def _resume_checkpoint(run_dir: Path, chash: str, resume: bool) -> str | None:
    """The newest checkpoint of an unfinished run of this exact config; stale ones are removed."""
    hash_file = run_dir / CONFIG_HASH_FILE
    ckpts = [run_dir / "checkpoints" / f"{n}.ckpt" for n in (INTERRUPTED_CKPT, "last")]
    same = hash_file.exists() and hash_file.read_text().strip() == chash
    found = [c for c in ckpts if c.exists()]
    if resume and same and found:
        return str(max(found, key=lambda c: c.stat().st_mtime))
    if _rank() == 0:
        for c in found + list((run_dir / "checkpoints").glob("best*.ckpt")):
            c.unlink()  # checkpoints of another config (or a forced rerun) must not leak into this run
        hash_file.write_text(chash + "\n")
    return None


def _finish(result: dict, run_dir: Path, start: float) -> None:
    result["wall_time_s"] = time.perf_counter() - start
    result["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    write_json_atomic(run_dir / RESULT_FILE, result)
