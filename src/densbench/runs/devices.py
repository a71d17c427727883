"""What this machine can run: the devices a job asks for, the strategies that keep results in this process, threads."""

from __future__ import annotations

from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from omegaconf import DictConfig

from densbench.cores import threads_cap, usable_cores
from densbench.errors import ConfigError

AUTO_THREADS_MIN_ROWS = 2048  # below this many rows per step (all models of a stack) a second thread costs more than it gains


class Skipped(Exception):
    """The job cannot run on this machine (e.g. a GPU job without a GPU); not a failure."""


def world_size(trainer: DictConfig) -> int:
    """Processes one job runs on: devices x nodes."""
    return int(trainer.devices) * int(trainer.num_nodes)


def _is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def check_device(cfg: DictConfig, stacked: bool) -> None:
    """Skip a job this machine lacks the devices for; refuse strategies and layouts that would lose its results."""
    t = cfg.trainer
    if t.accelerator in ("gpu", "cuda") and torch.cuda.device_count() < int(t.devices):
        raise Skipped(f"trainer.accelerator={t.accelerator} needs {t.devices} CUDA device(s); this machine has {torch.cuda.device_count()}")
    strategy = str(t.strategy)
    if strategy.startswith(("ddp_spawn", "ddp_fork", "ddp_notebook")):
        raise ConfigError(
            f"trainer.strategy={strategy} is not supported: the results would stay in the spawned processes; "
            "use trainer=ddp (Lightning starts the processes and rank 0 is this one)"
        )
    if world_size(t) > 1 and stacked:
        raise ConfigError(
            "several devices (trainer.devices x trainer.num_nodes > 1) and a stack of models (launcher=stacked, "
            "ensemble.members > 1) exclude each other: a stack trains its models side by side on one device; "
            "use one device, or train the members one at a time"
        )
    # Slurm tasks or torchrun processes are the ranks themselves; otherwise Lightning re-runs the
    # command line for every extra rank, which inside a multirun would start the whole sweep again
    external = SLURMEnvironment.detect() or TorchElasticEnvironment.detect()
    if strategy.startswith("ddp") and _is_multirun() and not external:
        raise ConfigError(
            f"trainer.strategy={strategy} cannot run inside a multirun on this machine: every extra process "
            "would re-run the sweep command and start the sweep again. Run DDP jobs one at a time (without -m), "
            "sweep them on a cluster with launcher=slurm (Slurm starts one task per device), or sweep "
            "single-device jobs in parallel with launcher=parallel"
        )


def threads(setting: Any, rows_per_step: int) -> int:
    """torch threads for a job: the configured number, or for `auto` all usable cores on steps of at
    least AUTO_THREADS_MIN_ROWS rows and one thread on smaller ones (measured: README, Speed)."""
    cap = threads_cap()  # a worker of a parallel stacked sweep shares the cores with the others
    if setting != "auto":
        return int(setting) if cap is None else min(int(setting), cap)
    cores = usable_cores()
    return min(cores, cap or cores) if rows_per_step >= AUTO_THREADS_MIN_ROWS else 1
