"""Stacks of a sweep on worker processes: their order, the workers, and one stack's run inside a worker.

Torch-free at import: the stacked launcher's main process composes configs and writes Hydra's
records while workers (which import torch and Lightning once each) train the stacks. Stacks go out
largest first, by an estimate of their training work, so that two workers finish together instead
of one waiting on the last large stack.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from densbench.cores import THREADS_VARIABLE


def cost(task: dict[str, Any], jobs: int) -> float:
    """Training work of a stack, for ordering: models x passes x rows (the data files' size stands in for rows)."""
    from densbench.data import tables
    loop, dataset = task.get("loop") or {}, task.get("dataset") or {}
    models = jobs * int((task.get("ensemble") or {}).get("members") or 1)
    if loop.get("max_epochs"):
        try:
            from omegaconf import OmegaConf

            size = sum(os.path.getsize(f) for f in tables.source_files(OmegaConf.create(dataset)))
        except Exception:  # noqa: BLE001 - an estimate only
            size = 0
        return models * float(loop["max_epochs"]) * max(size, 1)
    return models * float(loop.get("max_steps") or 1) * float(loop.get("batch_size") or 1)


_POOL: dict[int, ProcessPoolExecutor] = {}


def pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes for stacks, one torch thread each, kept for the process's later sweeps (a suite of
    multiruns pays the workers' imports of torch and Lightning once); forked where the platform allows,
    so a worker starts with the sweep side already imported."""
    if workers not in _POOL:
        shutdown()
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() and sys.platform != "darwin" else "spawn"
        _POOL[workers] = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method),
                                             initializer=_start_worker)
        for _ in range(workers):  # start them now (an executor starts its processes on the first task)
            _POOL[workers].submit(os.getpid)
    return _POOL[workers]


def shutdown(cancel: bool = False) -> None:
    """Stop the worker processes (a later sweep starts new ones); cancel: drop the stacks not yet started."""
    for executor in _POOL.values():
        executor.shutdown(wait=True, cancel_futures=cancel)
    _POOL.clear()


def _start_worker() -> None:
    """A worker's start: one torch thread, and the training side imported now, all workers at once."""
    os.environ[THREADS_VARIABLE] = "1"
    import densbench.runs.execution  # noqa: F401 - torch and Lightning, while the sweep side composes the jobs


def run_stack(payload: list[tuple[dict, str, list[str], dict]], hydra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Train and test one stack: per job (task config, run directory, overrides, env_set); each job's result.

    ``hydra``: the sweep's hydra node, made current in a worker (which may have served another sweep).
    """
    from omegaconf import OmegaConf

    from densbench.runs.execution import JobSpec, run_group  # torch and Lightning: in the process that trains

    if hydra is not None:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(hydra_config(hydra))
    for _, _, _, env in payload[:1]:
        os.environ.update({str(k): str(v) for k, v in env.items()})
    specs = [JobSpec(OmegaConf.create(task), Path(run_dir), list(overrides), "stacked")
             for task, run_dir, overrides, _ in payload]
    return run_group(specs)


def hydra_config(hydra: dict[str, Any], task: dict[str, Any] | None = None) -> Any:
    """A config with a typed hydra node (as HydraConfig requires) from the node as plain data, and the task config."""
    from hydra.conf import HydraConf
    from omegaconf import OmegaConf

    node = OmegaConf.structured(HydraConf)
    OmegaConf.set_struct(node, False)  # a composed node carries keys the schema leaves open
    return OmegaConf.create({**(task or {}), "hydra": OmegaConf.merge(node, hydra)})
