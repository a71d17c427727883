"""Hydra callbacks for launcher presets, and one job of a local launcher (hydra_plugins.densbench_local_launchers)."""

from __future__ import annotations

from typing import Any, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

_PARSED: dict[str, Any] = {}


def parse_overrides(lines: Sequence[str]) -> list[Any]:
    """Hydra's parse of override lines (its ``Override`` objects), each distinct line parsed once per process.

    Hydra's grammar parser costs about a millisecond a line, and a suite's thousands of jobs repeat a
    few dozen distinct lines (experiment=..., dataset.split=3) in every stage of the launch.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    missing = list(dict.fromkeys(line for line in lines if line not in _PARSED))
    if missing:
        _PARSED.update(zip(missing, OverridesParser.create().parse_overrides(missing)))
    return [_PARSED[line] for line in lines]


class ParallelWorkers(Callback):
    """A parallel sweep's worker processes: a signal reaches them, and they go when the sweep ends.

    SIGINT or SIGTERM to the sweep's own process is passed on to its workers (``parallel_stop``). Left to the interpreter's exit handlers, idle workers (each holding
    torch and Lightning) take seconds to go, added to every sweep's wall time. The executor is looked
    up, not requested: asking loky for one would start fresh workers when the sweep's were configured
    differently.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from functools import partial
        from pathlib import Path

        from densbench.launching import parallel_stop
        from densbench.signals import forward_to

        sweep_dir = Path(str(config.hydra.sweep.dir))
        parallel_stop.reset(sweep_dir)
        self._unregister = forward_to(partial(parallel_stop.forward, sweep_dir))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        import multiprocessing

        from densbench.launching import parallel_stop
        if multiprocessing.parent_process() is not None:  # a worker process, not a sweep of n_jobs=1 in the parent
            parallel_stop.become_worker(config.hydra.sweep.dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from joblib.externals.loky import reusable_executor

        from pathlib import Path

        from densbench.launching import parallel_stop
        getattr(self, "_unregister", lambda: None)()
        parallel_stop.reset(Path(str(config.hydra.sweep.dir)))
        executor = getattr(reusable_executor, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=True, kill_workers=True)


def refuse_bad_config(cfg: DictConfig) -> None:
    """Exit with one line if the config is invalid, its parts do not fit or its data files are missing,
    before torch is imported. A sweep instead records such a job (failed, or skipped when incompatible)."""
    import sys

    from densbench.errors import ConfigError, DataError
    from densbench.runs.checks import Incompatible, check_config

    try:
        check_config(cfg)
    except Incompatible as exc:
        print(f"densbench: incompatible: {exc}", file=sys.stderr)
        sys.exit(1)
    except (ConfigError, DataError) as exc:
        print(f"densbench: {exc}", file=sys.stderr)
        sys.exit(1)


class OutputCheck(Callback):
    """Before anything runs: a single run's config is checked (a refused run leaves no folder behind),
    and the output directory must be writable; else one line says why."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        refuse_bad_config(OmegaConf.masked_copy(config, [k for k in config if k != "hydra"]))
        self._check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir")

    @staticmethod
    def _check(directory: str, key: str) -> None:
        import os
        import sys
        import tempfile
        from pathlib import Path

        try:
            Path(directory).mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".densbench-write-test-", dir=directory)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            print(f"densbench: cannot write to the output directory {directory} ({exc.strerror or exc}); "
                  f"choose another with {key}=DIR", file=sys.stderr)
            sys.exit(2)


def run_job_alone(hydra_context: Any, task_function: Any, config: DictConfig) -> Any:
    """Hydra's ``run_job`` for one job of a sweep; a disk error in Hydra's bookkeeping fails that job only.

    The job's JobReturn is then COMPLETED (Hydra's sweeper re-raises a FAILED job's exception, which
    would end the sweep after all) with ``{"unrecorded": why, "run_dir": dir}`` as its value.
    """
    from hydra.core.utils import JobReturn, JobStatus, run_job

    from densbench.progress import job_unrecorded

    try:
        return run_job(hydra_context=hydra_context, task_function=task_function, config=config,
                       job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    except OSError as exc:
        run_dir, why = job_unrecorded(config, exc)
        ret = JobReturn(overrides=list(config.hydra.overrides.task), status=JobStatus.COMPLETED,
                        _return_value={"unrecorded": why, "run_dir": run_dir})
        hydra_context.callbacks.on_job_end(config=config, job_return=ret)
        return ret


def note_unrecorded(runs: Sequence[Any]) -> None:
    """In a sweep's process: remember the jobs its workers could not record, for the sweep's exit status."""
    from densbench.progress import UNRECORDED

    for ret in runs:
        value = getattr(ret, "_return_value", None)
        if isinstance(value, dict) and "unrecorded" in value:
            UNRECORDED[value["run_dir"]] = value["unrecorded"]
