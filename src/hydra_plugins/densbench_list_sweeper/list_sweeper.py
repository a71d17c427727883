"""A Hydra sweeper over an explicit list of jobs: ``hydra/sweeper=list hydra.sweeper.jobs_file=jobs.yaml``.

Hydra's basic sweeper runs the cartesian product of the swept values, which cannot say "splits 0-19
of these datasets and 0-4 of that one" or "for each dataset, an ensemble of its own best method".
This one takes the jobs as a list (a YAML or JSON file holding a list of override lists, or inline
``hydra.sweeper.jobs``), crossed with whatever the command line sweeps, and hands them to the
launcher as one batch: a stacked launcher with workers keeps every core busy across all of them,
and each job is named and recorded exactly as the basic sweeper would.
"""

# no `from __future__ import annotations`: Hydra's plugin scan loads this module outside sys.modules,
# where dataclasses cannot resolve string annotations
import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from densbench.launching.launchers import parse_overrides

log = logging.getLogger(__name__)


@dataclass
class ListSweeperConf:
    _target_: str = "hydra_plugins.densbench_list_sweeper.list_sweeper.ListSweeper"
    jobs_file: Optional[str] = None  # a YAML or JSON list of jobs, each a list of overrides
    jobs: List[Any] = field(default_factory=list)  # or the list inline
    # swept like the command line's sweeps, but a key a listed job sets itself is the job's (an
    # experiment's default sweep, e.g. the UCI protocol's dataset.split: range(20), yields to the list)
    params: Optional[Dict[str, str]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="list", node=ListSweeperConf, provider="densbench")


def read_jobs(jobs_file: Optional[str], jobs: Sequence[Any]) -> List[List[str]]:
    """The listed jobs, each a list of override strings; one line naming the problem otherwise."""
    listed = list(jobs)
    if jobs_file:
        path = Path(jobs_file)
        try:
            loaded = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise HydraException(f"hydra.sweeper.jobs_file={jobs_file}: cannot be read ({exc})") from None
        listed += list(loaded or [])
    if not listed:
        raise HydraException("hydra/sweeper=list needs jobs: hydra.sweeper.jobs_file=<yaml or json list of override lists>")
    out = []
    for i, job in enumerate(listed):
        if not isinstance(job, (list, tuple)) or not all(isinstance(o, str) for o in job):
            raise HydraException(f"hydra/sweeper=list: job {i} is {job!r}, not a list of overrides like [a=1, b=x]")
        out.append(list(job))
    return out


class ListSweeper(Sweeper):
    """Runs the listed jobs (crossed with the command line's own sweeps) as one batch."""

    def __init__(self, jobs_file: Optional[str] = None, jobs: Optional[List[Any]] = None,
                 params: Optional[Dict[str, str]] = None) -> None:
        self.jobs_file, self.jobs = jobs_file, list(jobs or [])
        self.params = dict(params or {})
        self.config: Optional[DictConfig] = None
        self.launcher: Any = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context, task_function=task_function,
                                                                config=config)

    def sweep(self, arguments: List[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        jobs = read_jobs(self.jobs_file, self.jobs)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        axes: Dict[str, List[str]] = {}
        for o in parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()] + list(arguments)):
            key = o.get_key_element()
            if o.is_sweep_override():
                if not o.is_discrete_sweep():
                    raise HydraException(f"hydra/sweeper=list: {o.input_line} is not a list of values")
                axes[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
            else:
                axes[key] = [f"{key}={o.get_value_element_as_str()}"]
        batch = []
        for job in jobs:
            own = {o.get_key_element() for o in parse_overrides(job)}
            for common in itertools.product(*(v for k, v in axes.items() if k not in own)):
                batch.append(list(common) + job)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        if not getattr(self.launcher, "composes_jobs", False):  # else the launcher composes each job as it goes
            self.validate_batch_is_legal(batch)
        log.info(f"{len(batch)} listed jobs")
        return [self.launcher.launch(batch, initial_job_idx=0)]
