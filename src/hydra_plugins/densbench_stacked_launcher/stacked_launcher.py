"""A Hydra launcher that trains the jobs of a multirun that differ only in replication keys as one stack.

The jobs of a sweep are grouped by their resolved config with the replication keys (``replicate``:
seed, data split) left out; each group of two or more trains in this process as one stack of models
(densbench.run.run_group), and every job still gets its own run directory, result.json, events and
figures. Groups of one, and groups whose data cannot stack, run as ordinary jobs. Hydra's own
bookkeeping (the .hydra folder, callbacks) is done per job, as its basic launcher does.
"""

# no `from __future__ import annotations`: Hydra's plugin scan loads this module outside sys.modules,
# where dataclasses cannot resolve string annotations
import copy
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


@dataclass
class StackedLauncherConf:
    _target_: str = "hydra_plugins.densbench_stacked_launcher.stacked_launcher.StackedLauncher"
    # config keys whose values may differ within one stack (the replication axes of a sweep)
    # recalibrate: post-hoc, so jobs that differ only in it train identical models side by side
    replicate: list[str] = field(default_factory=lambda: ["seed", "dataset.split", "dataset.seed", "recalibrate"])


ConfigStore.instance().store(group="hydra/launcher", name="stacked", node=StackedLauncherConf, provider="densbench")


def _without(tree: Any, dotted: list[str]) -> Any:
    """A copy of a nested dict without the dotted keys."""
    tree = copy.deepcopy(tree)
    for key in dotted:
        node, parts = tree, key.split(".")
        for part in parts[:-1]:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    return tree


class StackedLauncher(Launcher):
    """Groups a sweep's jobs by config (replication keys aside) and trains each group as one stack."""

    def __init__(self, replicate: list[str]) -> None:
        self.replicate = list(replicate)
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        _compose_each_job_once(hydra_context.config_loader, self.replicate)

    def _job(self, idx: int, overrides: Sequence[str]) -> tuple[DictConfig, DictConfig, str]:
        """(sweep config, task config, run directory) of one job, resolved as Hydra's run_job would."""
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = idx
            sweep_config.hydra.job.num = idx
        HydraConfig.instance().set_config(sweep_config)
        run_dir = os.path.join(str(OmegaConf.select(sweep_config, "hydra.sweep.dir")),
                               str(OmegaConf.select(sweep_config, "hydra.sweep.subdir")))
        task_cfg = copy.deepcopy(sweep_config)
        with open_dict(task_cfg):
            del task_cfg["hydra"]
        return sweep_config, task_cfg, run_dir

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from densbench.progress import say
        from densbench.run import JobSpec, run_group

        setup_globals()
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        jobs = [(initial_job_idx + i, list(o), *self._job(initial_job_idx + i, o)) for i, o in enumerate(job_overrides)]
        groups: dict[str, list[int]] = {}
        for k, (_, _, _, task_cfg, _) in enumerate(jobs):
            key = json.dumps(_without(OmegaConf.to_container(task_cfg, resolve=True), self.replicate), sort_keys=True, default=str)
            groups.setdefault(key, []).append(k)
        log.info(f"Launching {len(jobs)} jobs as {len(groups)} stack(s)")
        done: dict[int, dict] = {}
        for members in groups.values():
            if len(members) < 2:
                continue
            shared = set.intersection(*(set(jobs[k][1]) for k in members))
            differing = [" ".join(o for o in filter_overrides(jobs[k][1]) if o not in shared) for k in members]
            say(f"densbench: training {len(members)} jobs as one stack: " + ", ".join(differing[:4])
                + (f", ... ({len(members) - 4} more)" if len(members) > 4 else ""))
            specs = [JobSpec(jobs[k][3], Path(jobs[k][4]), jobs[k][1], "stacked") for k in members]
            for k, result in zip(members, run_group(specs)):
                done[k] = result
        returns = []
        for k, (idx, overrides, sweep_config, _, _) in enumerate(jobs):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            # a stacked job already ran: Hydra's bookkeeping (output folder, .hydra files, callbacks) around its result
            task = self.task_function if k not in done else _returning(done[k])
            returns.append(run_job(hydra_context=self.hydra_context, task_function=task, config=sweep_config,
                                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir"))
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returns


def _compose_each_job_once(loader: Any, replicate: Sequence[str]) -> None:
    """Compose each group of a sweep once and hand every job its config once.

    Hydra's sweeper composes every job of a batch to check it, discards the configs, and the
    launcher composes them all again, more than a stacked job trains (the UCI suite has 1,155 jobs).
    So the first composition of an override list is kept for the launcher, and a job
    whose overrides differ from an already composed one only in the values of replication keys
    (plain `key=value` overrides such as dataset.split=3, which cannot change the defaults list) is
    derived from it: the values set, and Hydra's own record of the overrides (hydra.overrides.task,
    hydra.job.override_dirname) rebuilt as its config loader builds them. tests/test_stacked.py checks
    that derived configs equal composed ones.
    """
    if getattr(loader, "_densbench_once", False):
        return
    from hydra._internal.config_loader_impl import get_overrides_dirname
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType, ValueType

    compose, kept, templates = loader.load_sweep_config, {}, {}
    parser = OverridesParser.create()

    def replicated(o: Any) -> bool:
        return (o.key_or_group in replicate and o.type == OverrideType.CHANGE and o.package is None
                and o.value_type == ValueType.ELEMENT)

    def load_sweep_config(master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        key = (id(master_config), tuple(sweep_overrides))
        if key in kept:
            return kept.pop(key)
        parsed = parser.parse_overrides(list(sweep_overrides))
        shape = (id(master_config), tuple(o.key_or_group if replicated(o) else o.input_line for o in parsed))
        if shape in templates:
            cfg = copy.deepcopy(templates[shape])
            with open_dict(cfg):
                for o in parsed:
                    if replicated(o):
                        OmegaConf.update(cfg, o.key_or_group, o.value(), merge=False)
                task = [o for o in parsed if not o.is_hydra_override()]
                cfg.hydra.overrides.task = [o.input_line for o in task]
                named = cfg.hydra.job.config.override_dirname
                cfg.hydra.job.override_dirname = get_overrides_dirname(
                    overrides=task, kv_sep=named.kv_sep, item_sep=named.item_sep, exclude_keys=named.exclude_keys)
            OmegaConf.copy_cache(from_config=master_config, to_config=cfg)
        else:
            cfg = compose(master_config, sweep_overrides)
            templates[shape] = copy.deepcopy(cfg)
        # the sweeper only checks that a job composes and the launcher asks once: both get the same object
        kept[key] = cfg
        return cfg

    loader.load_sweep_config = load_sweep_config
    loader._densbench_once = True


def _returning(result: dict):
    """A task function that returns what a stacked job's run returned (its test NLL)."""

    def task(cfg: DictConfig) -> float | None:
        return (result.get("metrics") or {}).get("nll")

    return task
