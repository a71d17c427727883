"""A Hydra launcher that trains the jobs of a multirun that differ only in replication keys as one stack.

The jobs of a sweep are grouped by their config with the replication keys (``replicate``: seed, data
split, recalibrate) left out; each group trains as one stack of models (densbench.runs.execution.run_group) and
every job still gets its own run directory, result.json, events, figures and Hydra's record of it
(``.hydra/config.yaml``, ``hydra.yaml``, ``overrides.yaml``). ``workers`` > 1 trains several stacks
at once in worker processes (one torch thread each), the largest first, while this process writes
Hydra's records of the jobs that have finished.

What a sweep costs outside training is kept small: every group is composed by Hydra once, and its
jobs are derived from that composition by setting the replication values in plain data (Hydra's
record of each job rebuilt as its config loader builds it; tests/test_stacked.py checks that the
records equal the basic launcher's), instead of composing, deep-copying and dumping a DictConfig per
job. Hydra's job callbacks (on_job_start, on_job_end) are called per job only when a configured
callback other than densbench's own implements them; densbench's progress (SweepProgress) counts stacks as they end.
With workers, a sweeper that leaves composing to the launcher (hydra/sweeper=list: ``composes_jobs``)
has its jobs composed family by family (jobs that differ only in replication keys) while the workers
train the stacks already composed; a job that does not compose still ends the sweep, with Hydra's
message, after the stacks already running.
"""

# no `from __future__ import annotations`: Hydra's plugin scan loads this module outside sys.modules,
# where dataclasses cannot resolve string annotations
import copy
import json
import logging
import os
import re
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.types import Override, OverrideType, ValueType
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.experimental.callback import Callback
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from densbench.config import REPLICATION_KEYS
from densbench.launching.launchers import parse_overrides

log = logging.getLogger(__name__)


@dataclass
class StackedLauncherConf:
    _target_: str = "hydra_plugins.densbench_stacked_launcher.stacked_launcher.StackedLauncher"
    # config keys whose values may differ within one stack: the replication keys (densbench.config) and
    # recalibrate, which is post-hoc, so jobs that differ only in it share their trained models
    replicate: List[str] = field(default_factory=lambda: [*REPLICATION_KEYS, "recalibrate"])
    # processes training stacks at once: 1 trains in this process; "auto" one per core
    workers: Any = 1


ConfigStore.instance().store(group="hydra/launcher", name="stacked", node=StackedLauncherConf, provider="densbench")


@dataclass
class Job:
    """One job of the sweep: what Hydra knows of it and what its run needs, as plain data."""

    idx: int
    overrides: List[str]
    task: Dict[str, Any]  # the task config (no hydra node), unresolved as Hydra composed it
    hydra: Dict[str, Any]  # the hydra node as Hydra records it for this job
    run_dir: str


def _without(tree: Any, dotted: Sequence[str]) -> Any:
    """A copy of a nested dict without the dotted keys."""
    tree = copy.deepcopy(tree)
    for key in dotted:
        node, parts = tree, key.split(".")
        for part in parts[:-1]:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    return tree


def _set(tree: Dict[str, Any], dotted: str, value: Any) -> None:
    node, parts = tree, dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def override_dirname(overrides: Sequence[Override], named: Dict[str, Any]) -> str:
    """hydra.job.override_dirname as Hydra's config loader builds it: the sorted override lines, some keys excluded."""
    lines = sorted(o.input_line for o in overrides if o.key_or_group not in named["exclude_keys"])
    return re.sub("[=]", named["kv_sep"], named["item_sep"].join(lines))


def _replicated(o: Override, replicate: Sequence[str]) -> bool:
    """A plain `key=value` override of a replication key: it cannot change the defaults list, only a value."""
    return (o.key_or_group in replicate and o.type == OverrideType.CHANGE and o.package is None
            and o.value_type == ValueType.ELEMENT)


def _shape(parsed: Sequence[Override], replicate: Sequence[str]) -> Tuple[str, ...]:
    """A job's overrides with the values of replication keys left out: jobs of one shape compose alike."""
    return tuple(o.key_or_group if _replicated(o, replicate) else o.input_line for o in parsed)


def _workers(setting: Any) -> int:
    if setting in ("auto", None):
        from densbench.cores import usable_cores

        return usable_cores()
    return max(1, int(setting))


class StackedLauncher(Launcher):
    """Groups a sweep's jobs by config (replication keys aside) and trains each group as one stack."""

    def __init__(self, replicate: List[str], workers: Any = 1) -> None:
        self.replicate = list(replicate)
        self.workers = _workers(workers)
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None
        self._templates: Dict[Tuple[str, ...], Tuple[Dict[str, Any], Dict[str, Any]]] = {}

    # a sweeper may leave composing the jobs to launch (hydra/sweeper=list does): with workers, the
    # stacks of the first jobs composed train while the rest are composed
    composes_jobs = True

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        _compose_each_shape_once(hydra_context.config_loader, self.replicate)
        if self.workers > 1:  # the workers import torch and Lightning while the sweeper composes the jobs
            from densbench.launching import stack_plan
            stack_plan.pool(self.workers)

    # ------------------------------------------------------------------ jobs as plain data
    def _jobs(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int, indices: Optional[Sequence[int]] = None) -> List[Job]:
        """The jobs at indices (all when None) of the sweep's list, each shape composed once."""
        from densbench.config import slug  # the resolver of hydra.sweep.subdir

        templates = self._templates
        jobs = []
        for i in range(len(job_overrides)) if indices is None else indices:
            lines = job_overrides[i]
            parsed = parse_overrides(list(lines))
            shape = _shape(parsed, self.replicate)
            if shape not in templates:
                composed = self.hydra_context.config_loader.load_sweep_config(self.config, list(lines))
                full = OmegaConf.to_container(composed, resolve=False, enum_to_str=True)
                templates[shape] = ({k: v for k, v in full.items() if k != "hydra"}, full["hydra"])
            task, hydra = copy.deepcopy(templates[shape][0]), copy.deepcopy(templates[shape][1])
            for o in parsed:
                if _replicated(o, self.replicate):
                    _set(task, o.key_or_group, o.value())
            task_lines = [o.input_line for o in parsed if not o.is_hydra_override()]
            hydra["overrides"]["task"] = task_lines
            hydra["job"]["override_dirname"] = override_dirname([o for o in parsed if not o.is_hydra_override()],
                                                                hydra["job"]["config"]["override_dirname"])
            hydra["job"]["id"], hydra["job"]["num"] = str(initial_job_idx + i), initial_job_idx + i  # as Hydra's schema types them
            named = hydra["job"]["override_dirname"]
            if str(hydra["sweep"]["subdir"]) == "${densbench.slug:${hydra.job.override_dirname}}":
                subdir = slug(named) if named else "default"
            else:
                subdir = self._subdir(task, hydra)
            run_dir = os.path.join(str(self.config.hydra.sweep.dir), subdir)
            hydra["runtime"]["output_dir"] = os.path.abspath(run_dir)
            jobs.append(Job(initial_job_idx + i, list(lines), task, hydra, run_dir))
        return jobs

    def _subdir(self, task: Dict[str, Any], hydra: Dict[str, Any]) -> str:
        """A sweep subdir other than densbench's default: resolved by OmegaConf for this job."""
        from densbench.launching.stack_plan import hydra_config

        cfg = hydra_config(hydra, task)
        HydraConfig.instance().set_config(cfg)
        return str(OmegaConf.select(cfg, "hydra.sweep.subdir"))

    # ------------------------------------------------------------------ the sweep
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from densbench.progress import say

        setup_globals()
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        workers = self.workers
        if workers > 1:  # composing and training overlap: the stacks of each family go out as it is composed
            jobs: List[Optional[Job]] = [None] * len(job_overrides)
            batches = ((family, self._stacks(jobs, family)) for family in self._families(job_overrides, initial_job_idx, jobs))
        else:
            jobs = self._jobs(job_overrides, initial_job_idx)
            batches = iter([(list(range(len(jobs))), self._stacks(jobs, range(len(jobs))))])
        log.info(f"Launching {len(job_overrides)} jobs as stacks" + (f" on {workers} workers" if workers > 1 else ""))
        progress = self._progress(len(job_overrides))
        per_job = self._per_job_callbacks()
        returns: Dict[int, JobReturn] = {}
        for members, results in self._run(jobs, batches, workers, say):
            for k, result in zip(members, results):
                returns[k] = self._record(jobs[k], result, per_job)
            progress.add([r.get("status", "failed") for r in results])
        return [returns[k] for k in range(len(job_overrides))]

    def _families(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int, jobs: List[Any]):
        """The sweep's jobs composed family by family (jobs whose overrides differ only in replication keys,
        present or not, as a recalibration and its plain job): each family's indices once its jobs are in jobs."""
        families: Dict[Tuple[str, ...], List[int]] = {}
        for i, lines in enumerate(job_overrides):
            key = tuple(o.input_line for o in parse_overrides(list(lines)) if not _replicated(o, self.replicate))
            families.setdefault(key, []).append(i)
        for indices in families.values():
            for job in self._jobs(job_overrides, initial_job_idx, indices):
                jobs[job.idx - initial_job_idx] = job
            yield indices

    def _stacks(self, jobs: Sequence[Any], indices: Any) -> List[List[int]]:
        """The jobs at indices grouped into stacks: equal configs with the replication keys left out.

        A baseline job (method=ngboost, catboost, gp: a `baseline` node) is not a network: a stack of its own."""
        groups: Dict[str, List[int]] = {}
        for k in indices:
            key = json.dumps(_without(jobs[k].task, self.replicate), sort_keys=True, default=str)
            if jobs[k].task.get("baseline"):
                key = f"baseline job {k}"
            groups.setdefault(key, []).append(k)
        return list(groups.values())

    def _run(self, jobs: List[Any], batches: Any, workers: int, say: Any):
        """(members, results) of every stack as it ends: in this process, or on worker processes.

        batches yields (indices, stacks) as jobs are composed; queued stacks go out largest first.
        """
        from densbench.launching import stack_plan
        def largest_first(stacks: List[List[int]]) -> List[List[int]]:
            return sorted(stacks, key=lambda ks: -stack_plan.cost(jobs[ks[0]].task, len(ks)))

        def announce(members: List[int]) -> None:
            if len(members) > 1:
                shared = set.intersection(*(set(jobs[k].overrides) for k in members))
                differing = [" ".join(o for o in filter_overrides(jobs[k].overrides) if o not in shared) for k in members]
                say(f"densbench: training {len(members)} jobs as one stack: " + ", ".join(differing[:4])
                    + (f", ... ({len(members) - 4} more)" if len(members) > 4 else ""))

        def payload(members: List[int]) -> List[Tuple[Any, ...]]:
            return [(jobs[k].task, jobs[k].run_dir, jobs[k].overrides, jobs[k].hydra["job"].get("env_set") or {}) for k in members]

        if workers == 1:
            for _, stacks in batches:
                for members in largest_first(stacks):
                    announce(members)
                    # the sweep's Hydra node made current, as in a worker: a job's shared stores (MLflow) go to the sweep
                    yield members, stack_plan.run_stack(payload(members), jobs[members[0]].hydra)
            return
        executor = stack_plan.pool(workers)
        pending: Dict[Future, List[int]] = {}
        queue: List[List[int]] = []
        composing = True
        while composing or queue or pending:
            if composing:
                try:
                    batch = next(batches, None)
                except BaseException:
                    # a job that does not compose ends the sweep as it would before any training: the
                    # stacks already running finish (and are kept for a resume), the rest never start
                    stack_plan.shutdown(cancel=True)
                    raise
                composing = batch is not None
                if composing:
                    queue = largest_first(queue + batch[1])
            while queue and len(pending) < workers:
                members = queue.pop(0)
                announce(members)
                pending[executor.submit(stack_plan.run_stack, payload(members), jobs[members[0]].hydra)] = members
            if not pending:
                continue
            # while jobs are still being composed, only collect the stacks that have ended
            done, _ = wait(pending, timeout=0 if composing else None, return_when=FIRST_COMPLETED)
            for future in done:
                members = pending.pop(future)
                yield members, future.result()  # an interrupt in a worker is raised here, after its records

    # ------------------------------------------------------------------ Hydra's bookkeeping of a job
    def _progress(self, jobs: int) -> Any:
        """The sweep's progress display (the SweepProgress callback, which may count a whole suite), told
        this multirun's number of jobs; a plain one where that callback is not configured."""
        from densbench.progress import SweepProgress

        for cb in getattr(self.hydra_context.callbacks, "callbacks", []):
            if isinstance(cb, SweepProgress) and hasattr(cb, "counts"):
                cb.expect(jobs)
                return cb
        progress = SweepProgress()
        progress.begin(jobs)
        return progress

    def _per_job_callbacks(self) -> List[Callback]:
        """Configured callbacks that act per job (densbench's progress counts stacks itself)."""
        from densbench.progress import SweepProgress

        own = (SweepProgress,)
        out = []
        for cb in getattr(self.hydra_context.callbacks, "callbacks", []):
            if isinstance(cb, own):
                continue
            if type(cb).on_job_start is not Callback.on_job_start or type(cb).on_job_end is not Callback.on_job_end:
                out.append(cb)
        return out

    def _record(self, job: Job, result: Dict[str, Any], per_job: List[Callback]) -> JobReturn:
        """Hydra's record of a finished job (.hydra files), its JobReturn, and the per-job callbacks."""
        from densbench.atomic import dump_yaml
        from densbench.progress import UNRECORDED, say

        out = Path(job.hydra["runtime"]["output_dir"])
        if result.get("error_kind") == "disk":  # its result.json could not be written (in a worker): the exit status counts it
            UNRECORDED[str(out)] = str(result.get("error"))
        subdir = job.hydra.get("output_subdir")
        if subdir is not None:
            folder = out / subdir
            try:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "config.yaml").write_text(dump_yaml(job.task))
                (folder / "hydra.yaml").write_text(dump_yaml({"hydra": job.hydra}))
                (folder / "overrides.yaml").write_text(dump_yaml(job.hydra["overrides"]["task"]))
            except OSError as exc:  # Hydra's copy of the config; the job's own record (result.json) has it all
                say(f"densbench: Hydra's record of the job was not written: {exc.strerror or exc}: {exc.filename or folder}")
        ret = JobReturn()
        ret.overrides = job.hydra["overrides"]["task"]
        ret.working_dir = os.getcwd()
        ret.task_name = job.hydra["job"]["name"]
        ret.status = JobStatus.COMPLETED
        ret.return_value = (result.get("metrics") or {}).get("nll")
        if per_job:
            from densbench.launching.stack_plan import hydra_config

            config = hydra_config(job.hydra, job.task)
            ret.cfg = OmegaConf.create(job.task)
            HydraConfig.instance().set_config(config)
            ret.hydra_cfg = hydra_config(job.hydra)
            for cb in per_job:
                cb.on_job_start(config=config, task_function=self.task_function)
                cb.on_job_end(config=config, job_return=ret)
        return ret


def _compose_each_shape_once(loader: Any, replicate: Sequence[str]) -> None:
    """Compose each shape of a sweep's jobs once.

    Hydra's sweeper composes every job of a batch only to check that it composes, then discards the
    configs. A job whose overrides differ from an already composed one only in the values of
    replication keys (plain `key=value` overrides such as dataset.split=3, which cannot change the
    defaults list) composes if that one does, so the first composition of its shape is returned
    for it; the launcher derives each job's own config from it as plain data.
    """
    if getattr(loader, "_densbench_once", False):
        return
    compose, templates = loader.load_sweep_config, {}

    def load_sweep_config(master_config: DictConfig, sweep_overrides: List[str]) -> DictConfig:
        shape = (id(master_config), _shape(parse_overrides(list(sweep_overrides)), replicate))
        if shape not in templates:
            templates[shape] = compose(master_config, sweep_overrides)
        return templates[shape]

    loader.load_sweep_config = load_sweep_config
    loader._densbench_once = True
