"""Execution: run jobs, train and test their stack, and end every job in its result.json whatever happens.

A job is one run directory. Jobs that differ only in seed or data split can be trained together as
one stack of models (``run_group``, used by ``launcher=stacked``); a single job is a group of one.
Results are read from the module and callbacks of global rank zero, which under every supported
strategy (one process, DDP started by Lightning, torchrun or Slurm) is this process. The other
concerns live beside: checking (densbench.runs.checks, densbench.runs.devices), assembly (densbench.runs.assembly),
what a finished job leaves (densbench.runs.outcome), provenance and resume (densbench.runs.resume).
"""

from __future__ import annotations

import datetime as dt
import signal
import time
import traceback
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig

from densbench import progress

from densbench.training import checkpoints

from densbench.runs import resume
from densbench.runs.assembly import JobSpec, NotStackable, build, refusal
from densbench.runs.baseline_job import baseline_outcome, is_baseline
from densbench.runs.checks import Incompatible
from densbench.runs.devices import Skipped
from densbench.training.engine import as_param_dtype
from densbench.errors import ConfigError, DataError
from densbench.runs.labels import labels
from densbench.runs.outcome import job_outcome
from densbench.results import RESULT_FILE, write_json_atomic
from densbench.signals import Interrupted, JobSignals
from densbench.timing import JobClock

TRACEBACK_FILE = "traceback.txt"


def train_and_test(specs: list[JobSpec], signals: JobSignals) -> list[dict[str, Any]]:
    """Train one stack and test every job; returns each job's metrics, curves and run facts for result.json."""
    clock = JobClock()
    if any(is_baseline(s) for s in specs):  # not a network: fitted and scored alone (densbench.runs.baseline_job)
        if len(specs) > 1:
            raise NotStackable("baselines (method=ngboost, catboost, gp) run one job at a time")
        return [baseline_outcome(specs[0], signals, clock)]
    signals.enter("loading data")
    b = build(specs, clock=clock)
    module, dm, trainer, selection, state = b.module, b.datamodule, b.trainer, b.selection, b.module.state
    signals.enter("training", deferred=True)
    resumed = all(s.resume_from is not None for s in specs)
    if all(s.weights_from is not None for s in specs):  # post-hoc jobs on weights another run trained
        owners = [s for s, shared in zip(specs, b.shares) if shared is None]  # jobs that differ only in post-hoc keys share
        as_param_dtype(module, str(specs[0].cfg.trainer.precision)).load_weights(_weights_of(owners))
        selection.best_state = {k: v.detach().clone() for k, v in module.weights().items()}
        state.opt_steps = state.total_steps
    elif state.periods_left:
        trainer.fit(module, datamodule=dm)
    elif resumed:  # training had finished before the interruption: its final state is all we need
        checkpoints.restore(as_param_dtype(module, str(specs[0].cfg.trainer.precision)), selection,
                            checkpoints.merge([s.resume_from for s in specs]), optimizer=False)
    signals.enter("testing")
    module.load_weights(selection.selected(module))
    trainer.test(module, datamodule=dm, verbose=False)
    return [job_outcome(specs[j], j, b, signals, clock) for j in range(len(specs))]


def _weights_of(specs: list[JobSpec]) -> dict[str, Any]:
    """The selected weights of the runs that trained these post-hoc jobs, stacked in job order."""
    import torch

    parts = [torch.load(s.weights_from / "checkpoints" / checkpoints.BEST, map_location="cpu", weights_only=False)["state_dict"]
             for s in specs]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def run_job(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """The job boundary: every outcome ends in a result.json (rank 0), never in a lost sweep."""
    return run_group([JobSpec(cfg, Path(run_dir), _overrides(), _launcher())])[0]


def run_group(specs: list[JobSpec]) -> list[dict[str, Any]]:
    """Jobs that differ only in seed or data split, trained as stacks; each ends in its own result.json."""
    rank0 = _rank() == 0
    with JobSignals() as signals, ExitStack() as held:
        usable = []
        for spec in specs:
            try:
                spec.run_dir.mkdir(parents=True, exist_ok=True)
                if rank0:
                    held.enter_context(resume.locked(spec.run_dir, progress.say))
                usable.append(spec)
            except OSError as exc:  # a full or read-only disk: this job cannot run, the others may
                spec.result = {"status": "failed", "error": f"OSError: {exc.strerror or exc}: {exc.filename or spec.run_dir}",
                               "error_kind": "disk", "run_dir": str(spec.run_dir)}
                progress.UNRECORDED[str(spec.run_dir)] = spec.result["error"]  # its record cannot be written either
                progress.say(f"densbench: failed: {spec.result['error']}  ->  {spec.run_dir}")
        signals.enter("checking the run directories")
        pending = [spec for spec in usable if not _prepare(spec)]
        # jobs resumed from different steps (or started afresh), and post-hoc jobs whose weights a
        # finished run trained, form separate stacks
        by_step: dict[Any, list[JobSpec]] = {}
        for spec in pending:
            step = "trained" if spec.weights_from is not None else (spec.resume_from or {}).get("engine", {}).get("opt_steps")
            by_step.setdefault(step, []).append(spec)
        for part in by_step.values():
            _run_stack(part, signals, rank0)
    return [spec.result for spec in specs]


def _prepare(spec: JobSpec) -> bool:
    """Fill in a job's key and result skeleton; True when an earlier result is reused as it is."""
    cfg = spec.cfg
    spec.start = time.perf_counter()
    resolved, spec.key, prov = resume.job_key(cfg)
    spec.result = {
        "config": resolved, "config_hash": spec.key["config_hash"], "labels": labels(cfg), "run_dir": str(spec.run_dir),
        "overrides": spec.overrides, "launcher": spec.launcher, "provenance": prov,
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    spec.result["train_key"] = resume.training_key(resolved)
    previous = resume.reusable(cfg, spec.run_dir, spec.key, _rank() == 0)
    if previous is not None:
        spec.result = previous
        return True
    spec.resume_from = resume.previous_checkpoint(spec.run_dir, spec.key) if cfg.resume else None
    spec.result["resumed_from_step"] = (spec.resume_from or {}).get("engine", {}).get("opt_steps")
    if spec.resume_from is None:
        spec.weights_from = resume.trained_weights(spec.run_dir, spec.result)
        if spec.weights_from is not None:
            spec.result["trained_by"] = str(spec.weights_from)
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
                spec.result.update(status="ok", error=None, flags=out.pop("flags"), **out)
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
        raise Interrupted(sig, stage, announced=rank0) from None
    except (ConfigError, DataError) as exc:
        if len(specs) > 1 and _without_the_refused(specs, signals, rank0):
            return
        for spec in specs:
            _record_failure(spec, exc, rank0)
    except Exception as exc:  # noqa: BLE001 - the job boundary records every failure
        for spec in specs:
            _record_failure(spec, exc, rank0)
    if rank0:
        for spec in specs:
            _finish(spec)
        progress.announce_stack([(spec.result, spec.run_dir) for spec in specs])


def _without_the_refused(specs: list[JobSpec], signals: JobSignals, rank0: bool) -> bool:
    """A stack refused before training: record each job refused on its own with its own reason and train
    the others as a stack without them. False when no job alone is refused (the stack as a whole is)."""
    refused = [refusal(spec) for spec in specs]
    if not any(refused):
        return False
    for spec, exc in zip(specs, refused):
        if exc is not None:
            _record_failure(spec, exc, rank0)
            if rank0:
                _finish(spec)
                progress.announce(spec.result, spec.run_dir)
    rest = [spec for spec, exc in zip(specs, refused) if exc is None]
    if rest:
        progress.say(f"densbench: {len(specs) - len(rest)} of the stack's {len(specs)} jobs refused on their own; "
                     f"the other {len(rest)} train without them")
        _run_stack(rest, signals, rank0)
    return True


def _record_failure(spec: JobSpec, exc: Exception, rank0: bool) -> None:
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
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None


def _launcher() -> str:
    """The launcher preset that runs this job (conf/launcher: basic, parallel, ...; "basic" without Hydra)."""
    if not HydraConfig.initialized():
        return "basic"
    choices = HydraConfig.get().runtime.choices
    return str(choices.get("launcher") or choices.get("hydra/launcher", "basic"))


def _signame(signum: int) -> str:
    return signal.Signals(signum).name


def _finish(spec: JobSpec) -> None:
    result = spec.result
    result["wall_time_s"] = time.perf_counter() - spec.start
    result["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    try:
        write_json_atomic(spec.run_dir / RESULT_FILE, result)
    except OSError as exc:  # a full disk: without its record the job is failed, and its line says so
        why = f"its record could not be written: {exc.strerror or exc}: {spec.run_dir / RESULT_FILE}"
        spec.result.update(status="failed", error=why, error_kind="disk")
        progress.UNRECORDED[str(spec.run_dir)] = why


def _rank() -> int:
    return int(getattr(rank_zero_only, "rank", 0) or 0)
