"""A baseline job (method=ngboost, catboost, gp): fitted and scored by densbench.baselines, recorded as a network job is.

Its result.json has the same parts as a network run's (metrics with the throughput figures, curves,
train record, timing, trivial scores, flags), so reports, leaderboards and tables read it alike. A
baseline job runs alone, never in a stack of networks; a dataset too large for a baseline is skipped.
"""

from __future__ import annotations

import time
from importlib import metadata
from typing import Any

import torch

from densbench.baselines import PACKAGES
from densbench.baselines.common import Refused, Scored, run
from densbench.runs.assembly import JobSpec
from densbench.runs.checks import check_config, instantiate_checked
from densbench.runs.devices import Skipped, threads
from densbench.runs.labels import title
from densbench.runs.outcome import flags, trivial_scores, write_figures
from densbench.signals import JobSignals
from densbench.timing import JobClock
from densbench.training.job_log import JobLog
from densbench.training.throughput import peak_memory_mb


def is_baseline(spec: JobSpec) -> bool:
    """Whether a job is a baseline's (its config has a `baseline` node), not a network's."""
    return bool(spec.cfg.get("baseline"))


def baseline_outcome(spec: JobSpec, signals: JobSignals, clock: JobClock) -> dict[str, Any]:
    """Fit and test one baseline job: what its result.json records (as job_outcome does for a network job)."""
    cfg = spec.cfg
    plan = check_config(cfg)
    baseline = instantiate_checked(cfg.baseline)
    try:
        scored = run(baseline, cfg.dataset, int(cfg.seed), lambda rows: threads(plan.loop.threads, rows), clock, signals.enter)
    except Refused as exc:
        raise Skipped(str(exc)) from None
    package = PACKAGES[baseline.name]
    spec.result.setdefault("provenance", {}).setdefault("versions", {})[package] = _version(package)
    data = scored.prep.data
    out: dict[str, Any] = {
        "metrics": {**scored.metrics, **_throughput(scored, len(data.train), len(data.test)), "floor_hits": 0.0},
        "fallbacks": scored.fallbacks,
        "curves": scored.curves,
        "train": _train_record(scored, baseline.members),
        "artifacts": {},
    }
    figures_started = time.perf_counter()
    if cfg.figures:
        signals.enter("writing figures")
        name = title(spec.result.get("labels") or {"dataset": data.name, "loss": baseline.name, "head": "-", "grad": "-"})
        out["artifacts"].update(write_figures(name, scored.predict, scored.prep, scored.curves, spec.run_dir, JobLog(),
                                              scored.fit.iterations))
    out["timing"] = clock.summary(figures_s=time.perf_counter() - figures_started)
    out["trivial"] = trivial_scores(data)
    out["flags"] = flags(plan.loop, out)
    return out


def _train_record(scored: Scored, members: int) -> dict[str, Any]:
    """How a baseline trained, in the keys of a network's train record (None where a key has no meaning)."""
    fit, data = scored.fit, scored.prep.data
    return {
        "opt_steps": fit.iterations,
        "max_steps": fit.max_iterations,
        "eval_every": None,
        "steps_per_call": None,
        "batch_size": None,
        "stopped_early": fit.iterations < fit.max_iterations,
        "best_val_nll": scored.val_nll,
        "last_val_nll": scored.val_nll,  # the model tested is the one selected: no later state to compare
        "model_selection": fit.selection,
        "n_train": len(data.train),
        "n_val": len(data.val),
        "n_test": len(data.test),
        "target_resolution": data.resolution,
        "parameters": None,
        "stack": {"models": 1, "jobs": 1, "members": members},
        "threads": scored.threads,
        "baseline": fit.facts,
    }


def _throughput(scored: Scored, n_train: int, n_test: int) -> dict[str, float]:
    """The throughput figures of a network run, an iteration (a boosting round, an optimiser step) as its step."""
    t, steps = max(scored.train_s, 1e-12), scored.fit.iterations
    per_model = n_train * steps / t if steps else float("nan")
    return {"train_samples_per_s": per_model, "train_steps_per_s": steps / t if steps else float("nan"),
            "step_time_ms": 1e3 * t / steps if steps else float("nan"), "stack_size": 1.0,
            "stack_samples_per_s": per_model, "eval_samples_per_s": n_test / max(scored.test_s, 1e-12),
            "peak_memory_mb": peak_memory_mb(torch.device("cpu"))}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
