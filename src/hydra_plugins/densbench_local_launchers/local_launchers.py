"""Hydra's basic and joblib launchers, with each job's own disk errors kept to that job.

Hydra writes a job's ``.hydra/*.yaml`` before the task runs; on a full or read-only disk that write
raises out of Hydra's launcher and ends the whole sweep with a traceback, the later jobs never tried
and no report written. Here such a job fails alone in one line and the sweep goes on with the jobs
it can still run (``densbench.launching.launchers.run_job_alone``); the loops are Hydra's own, through its
public ``run_job``.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class DensbenchBasicLauncherConf:
    _target_: str = "hydra_plugins.densbench_local_launchers.local_launchers.DensbenchBasicLauncher"


@dataclass
class DensbenchJoblibLauncherConf(JobLibLauncherConf):
    _target_: str = "hydra_plugins.densbench_local_launchers.local_launchers.DensbenchJoblibLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="densbench_basic", node=DensbenchBasicLauncherConf,
                             provider="densbench")
ConfigStore.instance().store(group="hydra/launcher", name="densbench_joblib", node=DensbenchJoblibLauncherConf,
                             provider="densbench")


class DensbenchBasicLauncher(Launcher):
    """Jobs one after the other in this process."""

    def __init__(self) -> None:
        super().__init__()
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from densbench.launching.launchers import run_job_alone

        setup_globals()
        assert self.hydra_context is not None and self.config is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs locally")
        runs: List[JobReturn] = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            runs.append(run_job_alone(self.hydra_context, self.task_function, sweep_config))
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return runs


def _execute_job(idx: int, overrides: Sequence[str], hydra_context: HydraContext, config: DictConfig,
                 task_function: TaskFunction, singleton_state: Dict[Any, Any]) -> JobReturn:
    """One job in a joblib worker, as Hydra's joblib launcher runs it."""
    from densbench.launching.launchers import run_job_alone

    setup_globals()
    Singleton.set_state(singleton_state)
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
    HydraConfig.instance().set_config(sweep_config)
    return run_job_alone(hydra_context, task_function, sweep_config)


class DensbenchJoblibLauncher(JoblibLauncher):
    """Jobs in joblib's worker processes (loky)."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from joblib import Parallel, delayed

        from densbench.launching.launchers import note_unrecorded

        setup_globals()
        assert self.config is not None and self.task_function is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        joblib_cfg = dict(self.joblib, backend="loky")  # the threading backend is incompatible with Hydra
        for key in ("pre_dispatch", "batch_size", "max_nbytes"):  # numbers given as strings in the config
            if isinstance(joblib_cfg.get(key), str) and joblib_cfg[key].isdigit():
                joblib_cfg[key] = int(joblib_cfg[key])
        log.info(f"Joblib.Parallel({','.join(f'{k}={v}' for k, v in joblib_cfg.items())}) is launching {len(job_overrides)} jobs")
        for idx, overrides in enumerate(job_overrides):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        singleton_state = Singleton.get_state()
        runs = Parallel(**joblib_cfg)(
            delayed(_execute_job)(initial_job_idx + idx, overrides, self.hydra_context, self.config, self.task_function,
                                  singleton_state)
            for idx, overrides in enumerate(job_overrides))
        note_unrecorded(runs)  # what the workers could not record counts in this process's exit status
        return runs
