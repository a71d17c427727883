"""The run every baseline shares: a job's rows prepared exactly as for a network, the fit, the predictive
distribution in original target units, and its scores by densbench's own metric code.

A baseline sees the same rows as a network run of the job (its split, its validation rows carved from
training) with inputs and targets standardised on the training rows by densbench.data.datasets.prepare;
it returns per-row means and variances in those standardised units (one column per member of a virtual
ensemble), which become torch Normals in original units (a uniform mixture of them for several members)
and are scored by PredictiveMetrics as a network's predictive is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch.distributions import Distribution, Normal

from densbench.baselines import require
from densbench.data import datasets as data_mod
from densbench.errors import ConfigError
from densbench.evaluation.ensemble import uniform_mixture
from densbench.evaluation.metrics import PredictiveMetrics, validation_nll
from densbench.timing import JobClock


class Refused(Exception):
    """A job this baseline does not run (a dataset too large for it): recorded as skipped, not failed."""


@dataclass
class Rows:
    """A job's rows as a baseline fits them: float64 arrays, inputs and targets standardised on the training rows."""

    x_train: np.ndarray
    y_train: np.ndarray  # [n] standardised targets
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray

    @property
    def has_val(self) -> bool:
        """Whether the job has validation rows (early stopping needs them)."""
        return len(self.y_val) > 0


@dataclass
class Fit:
    """What a baseline's training did: the iterations its model keeps, the most it could run, how it chose them."""

    iterations: int
    max_iterations: int
    selection: str  # e.g. "best validation NLL (early stopping)" or "fixed iterations"
    facts: dict[str, Any] = field(default_factory=dict)  # the baseline's own numbers (fitted hyperparameters, ...)


class Baseline:
    """A baseline method: fit on a job's standardised rows, then per-row moments of its predictive for any inputs."""

    name = "baseline"
    members = 1  # columns of moments(): a virtual ensemble's members

    def __init__(self) -> None:
        require(f"densbench.baselines.{self.name}.{type(self).__name__}")

    def check(self, rows: Rows) -> None:
        """Raise Refused for a job this baseline does not run (before any fitting)."""

    def fit(self, rows: Rows, seed: int, threads: int) -> Fit:
        """Train on rows.x_train, rows.y_train (the validation rows for early stopping where it has them)."""
        raise NotImplementedError

    def moments(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Means and variances of the predictive in standardised target units, [n] or [n, members] each."""
        raise NotImplementedError


@dataclass
class Scored:
    """A fitted and tested baseline job: its test metrics and curves, and what a result.json's train record needs."""

    metrics: dict[str, float]
    curves: dict[str, list[float]]
    fallbacks: dict[str, str]
    fit: Fit
    val_nll: float | None
    threads: int
    prep: Any  # densbench.data.datasets.Prepared
    predict: Callable[[np.ndarray], Distribution]  # x in original units -> predictive in original units (figures)
    train_s: float
    test_s: float


def predictive(mean: np.ndarray, var: np.ndarray, loc: float, scale: float) -> Distribution:
    """Moments in standardised units [n] or [n, M] -> a Normal in original units (M > 1: their uniform mixture)."""
    mean, var = np.asarray(mean, dtype=np.float64), np.asarray(var, dtype=np.float64)
    mean, var = (mean[:, None], var[:, None]) if mean.ndim == 1 else (mean, var)
    members = [Normal(torch.as_tensor(loc + scale * mean[:, k]), torch.as_tensor(scale * np.sqrt(var[:, k])), validate_args=False)
               for k in range(mean.shape[1])]
    return members[0] if len(members) == 1 else uniform_mixture(members)


def score(dist: Distribution, y: np.ndarray, resolution: float | None, full: bool = True,
          truth: Distribution | None = None) -> tuple[dict, dict, dict]:
    """(metrics, curves, fallbacks) of a predictive against targets in original units (and the true distribution,
    where known), as a network's test split is scored."""
    metric = PredictiveMetrics("regression", full=full, resolution=resolution)
    metric.update(dist, torch.as_tensor(np.asarray(y, dtype=np.float64).reshape(-1)), truth)
    values = {k: float(v) for k, v in metric.compute().items()}
    return values, metric.curves(), dict(metric.fallbacks)


def prepared(dataset: Any) -> tuple[Any, Rows]:
    """A job's data loaded and standardised as for a Gaussian network (densbench.data.datasets), and its rows."""
    data = data_mod.load(dataset)
    if data.task != "regression":
        raise ConfigError(f"the baselines fit one real target; dataset {data.name} is a {data.task} task")
    prep = data_mod.prepare(data, target_map="affine", dtype="float64")
    (xt, yt), (xv, yv), (xs, _) = (prep.splits[s] for s in ("train", "val", "test"))
    rows = Rows(xt.numpy(), yt.numpy().reshape(-1), xv.numpy(), yv.numpy().reshape(-1), xs.numpy())
    return prep, rows


def run(baseline: Baseline, dataset: Any, seed: int, threads: Callable[[int], int], clock: JobClock,
        stage: Callable[[str], None] = lambda _: None) -> Scored:
    """Fit a baseline on a job's training rows and score its predictive on the test rows (validation NLL beside)."""
    stage("loading data")
    prep, rows = prepared(dataset)
    baseline.check(rows)
    n_threads = threads(len(rows.y_train))
    torch.set_num_threads(n_threads)
    stage("training")
    clock.mark_first_step()
    started = time.perf_counter()
    fit = baseline.fit(rows, seed, n_threads)
    train_s = time.perf_counter() - started
    loc, scale = float(prep.target_loc), float(prep.target_scale)
    val_nll = None
    if rows.has_val:
        val_started = time.perf_counter()
        y_val = torch.as_tensor(np.asarray(prep.data.y[prep.data.val], dtype=np.float64).reshape(-1))
        dist = predictive(*baseline.moments(rows.x_val), loc, scale)
        val_nll = float(validation_nll(dist, y_val, "regression", prep.data.resolution).double().mean())
        clock.add("validation", time.perf_counter() - val_started)
    clock.add("fit", time.perf_counter() - started)
    stage("testing")
    clock.test_started = time.perf_counter()
    dist = predictive(*baseline.moments(rows.x_test), loc, scale)
    metrics, curves, fallbacks = score(dist, prep.data.y[prep.data.test], prep.data.resolution, truth=prep.truth("test"))
    test_s = time.perf_counter() - clock.test_started
    clock.add("test", test_s)

    def predict(x_orig: np.ndarray) -> Distribution:
        return predictive(*baseline.moments(prep.x_scaler(np.asarray(x_orig, dtype=np.float64))), loc, scale)

    return Scored(metrics, curves, fallbacks, fit, val_nll, n_threads, prep, predict, train_s, test_s)
