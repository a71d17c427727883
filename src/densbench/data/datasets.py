"""Datasets: the seed documents' synthetic problems and real tables, split and standardised.

A dataset is arrays x [N, d] and y (regression and counts [N, 1] float, classes [N] int), a task,
and for synthetic data the true conditional distribution ``truth(x)`` in original units. Splits
are index arrays; standardisation is fitted on the training split only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Callable, NamedTuple

import numpy as np

from densbench import config, provenance

from densbench.data import tables
from densbench.errors import DataError
from densbench.data.splits import resolution_of, TASKS, Data
from densbench.lazy import D, torch

if TYPE_CHECKING:
    from torch import Tensor
    from torch.distributions import Distribution

__all__ = ["DataError", "TASKS", "Data", "load", "prepare", "describe", "fingerprint"]


CONSTANT = 1e-12  # a column whose standard deviation is below this share of its mean's size is constant


@dataclass(frozen=True)
class Standardizer:
    """Affine map z = (v - loc) / scale fitted on a training split."""

    loc: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, v: np.ndarray) -> "Standardizer":
        """Fit column means and standard deviations (constant columns get scale 1)."""
        loc = v.mean(0)
        scale = v.std(0)
        # constant up to rounding too: naval's 0.998 column has a standard deviation of 2e-13, which would blow any
        # other value up by 1e13
        scale = np.where(scale > CONSTANT * np.abs(loc), scale, 1.0)
        return cls(loc, scale)

    @classmethod
    def identity(cls, d: int) -> "Standardizer":
        """The map that changes nothing."""
        return cls(np.zeros(d), np.ones(d))

    @classmethod
    def fit_scale(cls, v: np.ndarray) -> "Standardizer":
        """Fit a scale only, the columns' mean absolute values (zero columns get 1): v / scale keeps its sign."""
        scale = np.abs(v).mean(0)
        return cls(np.zeros_like(scale), np.where(scale > 0, scale, 1.0))

    def __call__(self, v: np.ndarray) -> np.ndarray:
        return (v - self.loc) / self.scale


# ---------------------------------------------------------------------------------------------
# Synthetic data from the seed documents. Each generator draws n_train + n_val + n_test points
# from the same process, so held-out sets are fresh draws and the training size matches the
# document's n.
# ---------------------------------------------------------------------------------------------


class Kind(NamedTuple):
    """What a dataset is, known before it is loaded: its task and the kind of true distribution (None: unknown)."""

    task: str
    truth: str | None


SYNTHETIC: dict[str, tuple[Callable[..., "Data"], Kind]] = {}


def synthetic(task: str, truth: str) -> Callable:
    """Register a generator under its function name, with the task and truth kind it produces."""

    def deco(fn: Callable[..., "Data"]) -> Callable[..., "Data"]:
        SYNTHETIC[fn.__name__] = (fn, Kind(task, truth))
        return fn

    return deco


def _sizes(cfg) -> tuple[int, int, int]:
    return int(cfg.n_train), int(cfg.n_val), int(cfg.n_test)


def _assemble(name, x, y, cfg, truth, target="y", n_classes=None, features=None) -> Data:
    n_tr, n_va, n_te = _sizes(cfg)
    idx = np.arange(n_tr + n_va + n_te)
    return Data(
        name=name,
        task=SYNTHETIC[name][1].task,
        x=x.reshape(len(idx), -1).astype(np.float64),
        y=y,
        train=idx[:n_tr],
        val=idx[n_tr : n_tr + n_va],
        test=idx[n_tr + n_va :],
        feature_names=features or ["x"],
        target_name=target,
        n_classes=n_classes,
        truth=truth,
    )


# True conditionals p(y | x) in original units; module-level so that they pickle (ddp_spawn, joblib).
def _hetero_sine_truth(x: Tensor) -> Distribution:
    return D.Normal(torch.sin(x[:, 0]), 0.1 * (3 - x[:, 0].abs()))


def _two_sines_truth(x: Tensor, offset: float, noise: float) -> Distribution:
    from densbench.distributions.classes import NormalMixture

    s = torch.sin(x[:, 0]).unsqueeze(-1)
    loc = torch.cat([s + offset, s - offset], -1)
    return NormalMixture(torch.zeros_like(loc), loc, torch.full_like(loc, noise))


def _sine_gaussian_truth(x: Tensor) -> Distribution:
    return D.Normal(_glm_signal(x[:, 0]), torch.full_like(x[:, 0], 0.2))


def _sine_bernoulli_truth(x: Tensor) -> Distribution:
    return D.Bernoulli(logits=3.5 * _glm_signal(x[:, 0]))


def _sine_poisson_truth(x: Tensor) -> Distribution:
    return D.Poisson(2 * torch.exp(_glm_signal(x[:, 0])))


def _sine_lognormal_truth(x: Tensor) -> Distribution:
    return D.LogNormal(torch.sin(x[:, 0]), 0.2 + 0.1 * x[:, 0].abs())


def _sine_beta_mean(x):
    return 1 / (1 + np.exp(-1.5 * np.sin(x))) if isinstance(x, np.ndarray) else torch.sigmoid(1.5 * torch.sin(x))


def _sine_beta_truth(x: Tensor) -> Distribution:
    m = _sine_beta_mean(x[:, 0])
    return D.Beta(SINE_BETA_PRECISION * m, SINE_BETA_PRECISION * (1 - m))


def _sine_zip_truth(x: Tensor) -> Distribution:
    from densbench.distributions.classes import ZeroInflatedPoisson

    return ZeroInflatedPoisson(torch.full_like(x[:, 0], SINE_ZIP_ZEROS), 2 * torch.exp(_glm_signal(x[:, 0])))


def _inverse_sine_truth(v: Tensor) -> Distribution:
    from densbench.distributions.classes import InverseSinePosterior

    return InverseSinePosterior(v[:, 0])


@synthetic("regression", "gaussian")
def hetero_sine(cfg) -> Data:
    """x ~ U(-3, 3), y = sin x + N(0, (0.1 (3 - |x|))^2): the heteroscedastic document's data."""
    rng = np.random.default_rng(cfg.seed)
    n = sum(_sizes(cfg))
    x = rng.uniform(-3, 3, n)
    y = np.sin(x) + rng.normal(size=n) * 0.1 * (3 - np.abs(x))

    return _assemble("hetero_sine", x, y, cfg, _hetero_sine_truth)


@synthetic("regression", "mixture")
def two_sines(cfg) -> Data:
    """Contradictory data: y = sin x + 1 or sin x - 1 with equal odds, plus N(0, noise^2)."""
    rng = np.random.default_rng(cfg.seed)
    n = sum(_sizes(cfg))
    x = rng.uniform(-3, 3, n)
    branch = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    y = np.sin(x) + cfg.offset * branch + rng.normal(size=n) * cfg.noise

    truth = partial(_two_sines_truth, offset=float(cfg.offset), noise=float(cfg.noise))
    return _assemble("two_sines", x, y, cfg, truth)


def _glm_signal(x: np.ndarray | Tensor):
    return np.sin(10 * x) if isinstance(x, np.ndarray) else torch.sin(10 * x)


@synthetic("regression", "gaussian")
def sine_gaussian(cfg) -> Data:
    """GLM document: x ~ U(0, 1), y = sin(10 x) + N(0, 0.2^2)."""
    rng = np.random.default_rng(cfg.seed)
    n = sum(_sizes(cfg))
    x = rng.uniform(0, 1, n)
    y = _glm_signal(x) + rng.normal(size=n) * 0.2
    return _assemble("sine_gaussian", x, y, cfg, _sine_gaussian_truth)


@synthetic("binary", "bernoulli")
def sine_bernoulli(cfg) -> Data:
    """GLM document: x ~ U(0, 1), y ~ Bernoulli(sigmoid(3.5 sin(10 x)))."""
    rng = np.random.default_rng(cfg.seed)
    n = sum(_sizes(cfg))
    x = rng.uniform(0, 1, n)
    p = 1 / (1 + np.exp(-3.5 * _glm_signal(x)))
    y = (rng.random(n) < p).astype(np.float64)
    return _assemble("sine_bernoulli", x, y, cfg, _sine_bernoulli_truth, n_classes=2)


@synthetic("count", "poisson")
def sine_poisson(cfg) -> Data:
    """GLM document: x ~ U(0, 1), y ~ Poisson(2 exp(sin(10 x)))."""
    rng = np.random.default_rng(cfg.seed)
    n = sum(_sizes(cfg))
    x = rng.uniform(0, 1, n)
    y = rng.poisson(2 * np.exp(_glm_signal(x))).astype(np.float64)
    return _assemble("sine_poisson", x, y, cfg, _sine_poisson_truth)


@synthetic("regression", "lognormal")
def sine_lognormal(cfg) -> Data:
    """Positive targets: x ~ U(-3, 3), log y = sin x + N(0, (0.2 + 0.1 |x|)^2)."""
    rng = np.random.default_rng(cfg.seed)
    n = sum(_sizes(cfg))
    x = rng.uniform(-3, 3, n)
    y = np.exp(np.sin(x) + rng.normal(size=n) * (0.2 + 0.1 * np.abs(x)))
    return _assemble("sine_lognormal", x, y, cfg, _sine_lognormal_truth)


SINE_BETA_PRECISION, SINE_ZIP_ZEROS = 20.0, 0.3


@synthetic("regression", "beta")
def sine_beta(cfg) -> Data:
    """Unit-interval targets: x ~ U(-3, 3), y ~ Beta with mean sigmoid(1.5 sin x) and precision 20."""
    rng = np.random.default_rng(cfg.seed)
    x = rng.uniform(-3, 3, sum(_sizes(cfg)))
    m = _sine_beta_mean(x)
    return _assemble("sine_beta", x, rng.beta(SINE_BETA_PRECISION * m, SINE_BETA_PRECISION * (1 - m)), cfg, _sine_beta_truth)


@synthetic("count", "zero_inflated_poisson")
def sine_zip(cfg) -> Data:
    """Counts with excess zeros: sine_poisson's counts, each replaced by a structural zero with probability 0.3."""
    rng = np.random.default_rng(cfg.seed)
    n = sum(_sizes(cfg))
    x = rng.uniform(0, 1, n)
    y = np.where(rng.random(n) < SINE_ZIP_ZEROS, 0, rng.poisson(2 * np.exp(_glm_signal(x)))).astype(np.float64)
    return _assemble("sine_zip", x, y, cfg, _sine_zip_truth)


@synthetic("regression", "posterior")
def inverse_sine(cfg) -> Data:
    """MDN document, inverted: u ~ U(-10.5, 10.5), v = 7 sin(0.75 u) + 0.5 u + N(0, 1); predict u from v."""
    rng = np.random.default_rng(cfg.seed)
    n = sum(_sizes(cfg))
    u = rng.uniform(-10.5, 10.5, n)
    v = 7 * np.sin(0.75 * u) + 0.5 * u + rng.normal(size=n)
    return _assemble("inverse_sine", v, u, cfg, _inverse_sine_truth, target="x", features=["y"])


def describe(cfg) -> Kind:
    """Task and truth of the dataset a config names, without loading it (torch-free)."""
    if cfg.name in SYNTHETIC:
        return SYNTHETIC[cfg.name][1]
    if cfg.name in tables.LOADERS:
        return Kind(tables.task_of(cfg), None)
    raise _unknown(cfg.name)


def _unknown(name: str) -> DataError:
    allowed = ", ".join(sorted(set(SYNTHETIC) | set(tables.LOADERS)))
    return DataError(f"dataset.name={name!r} is unknown; allowed: {allowed}")


def load(cfg) -> Data:
    """Build the dataset named by cfg.name."""
    if cfg.name in SYNTHETIC:
        data = SYNTHETIC[cfg.name][0](cfg)
    elif cfg.name in tables.LOADERS:
        data = tables.LOADERS[cfg.name](cfg)
    else:
        raise _unknown(cfg.name)
    # caps for quick runs: the first rows of each split (splits are already shuffled)
    if cfg.get("max_train"):
        data.train = data.train[: int(cfg.max_train)]
    if cfg.get("max_eval"):
        data.val, data.test = data.val[: int(cfg.max_eval)], data.test[: int(cfg.max_eval)]
    data.resolution = resolution_of(cfg.get("resolution"), data)
    return data


# dataset keys that pick a replicate of the same data (a draw or a split), not different data
REPLICATION_KEYS = tuple(k.removeprefix("dataset.") for k in config.REPLICATION_KEYS if k.startswith("dataset."))


def fingerprint(cfg) -> dict:
    """Hashes of the data a config reads: the bytes of its files, or the settings of a synthetic generator.

    data_hash covers everything the run read (the resume key); dataset_hash leaves out what only
    picks a replicate (a split's index files), so that the splits of one dataset share a report row.
    """
    if cfg.name in SYNTHETIC:
        settings = provenance.settings_fingerprint({k: v for k, v in cfg.items() if k not in REPLICATION_KEYS})
        return {"data_hash": settings, "dataset_hash": settings, "data_source": f"synthetic {cfg.name}"}
    files = tables.source_files(cfg)
    if not files:
        return {"data_hash": "missing", "dataset_hash": "missing", "data_source": None}
    return {"data_hash": provenance.file_fingerprint(files),
            "dataset_hash": provenance.file_fingerprint(tables.source_files(cfg, with_split=False)),
            "data_source": [str(f) for f in files]}


def check_values(data: Data, dtype: str = "float64") -> None:
    """Refuse NaN, infinite, or so large values that their square overflows the training dtype, naming the column."""
    limit = math.sqrt(float(np.finfo(dtype).max))
    columns = [(f"feature column {c!r}", data.x[:, j]) for j, c in enumerate(data.feature_names)]
    columns.append((f"target column {data.target_name!r}", data.y.astype(np.float64)))
    for what, values in columns:
        bad = ~np.isfinite(values)
        if bad.any():
            raise DataError(
                f"dataset {data.name}: {what} has {int(bad.sum())} NaN or infinite values "
                f"(first at row {int(np.flatnonzero(bad)[0])}); clean or drop them"
            )
        big = np.abs(values) > limit
        if big.any():
            raise DataError(
                f"dataset {data.name}: {what} holds {values[big][0]:.3g} (row {int(np.flatnonzero(big)[0])}), too large to "
                f"square in {dtype} (limit {limit:.2g}); rescale the column (or train in float64)"
            )


@dataclass
class Prepared:
    """Standardised tensors of every split, the scalers, and the truth of each split where known."""

    data: Data
    x_scaler: Standardizer
    y_scaler: Standardizer
    splits: dict[str, tuple[Tensor, Tensor]]  # split -> (x scaled, y scaled)

    def truth(self, split: str) -> Distribution | None:
        """p(y | x) of a split's rows in original units, where the data's truth is known."""
        idx = getattr(self.data, split)
        if self.data.truth is None or not len(idx):
            return None
        return self.data.truth(torch.as_tensor(self.data.x[idx], dtype=torch.float64))

    @property
    def target_loc(self) -> float | list[float]:
        """Mean subtracted from targets (one per target column when there are several)."""
        loc = [float(v) for v in self.y_scaler.loc]
        return loc[0] if len(loc) == 1 else loc

    @property
    def target_scale(self) -> float | list[float]:
        """Scale dividing targets (one per target column when there are several)."""
        scale = [float(v) for v in self.y_scaler.scale]
        return scale[0] if len(scale) == 1 else scale


TARGET_MAPS = {"affine": Standardizer.fit, "scale": Standardizer.fit_scale}  # "none": the identity


def prepare(data: Data, scale_x: bool = True, target_map: str = "affine", dtype: str = "float64") -> Prepared:
    """Fit the feature standardisation and the target map (affine, scale or none: what the family's support
    allows) on the training split and build float64 tensors of every split (values checked for `dtype`)."""
    check_values(data, dtype)
    if len(data.train) == 0:
        raise DataError(f"dataset {data.name}: the training split is empty")
    xs = Standardizer.fit(data.x[data.train]) if scale_x else Standardizer.identity(data.n_features)
    # only continuous targets are mapped, multivariate ones per column; counts and classes keep their meaning
    fit = TARGET_MAPS.get(target_map) if data.task in ("regression", "multivariate") else None
    columns = data.n_targets
    ys = fit(data.y[data.train].reshape(-1, columns).astype(np.float64)) if fit else Standardizer.identity(columns)
    splits = {}
    for name in ("train", "val", "test"):
        idx = getattr(data, name)
        x = torch.as_tensor(xs(data.x[idx]), dtype=torch.float64)
        if data.task == "multiclass":
            y = torch.as_tensor(data.y[idx], dtype=torch.long)
        else:
            y = torch.as_tensor(ys(data.y[idx].reshape(-1, columns).astype(np.float64)), dtype=torch.float64)
        splits[name] = (x, y)
    return Prepared(data, xs, ys, splits)


def gaussian_truth_scaled(prep: Prepared, split: str) -> tuple[Tensor, Tensor]:
    """Mean [n, 1] and variance [n, 1] of a Gaussian truth in standardised target units."""
    t = prep.truth(split)
    if not isinstance(t, D.Normal):
        raise DataError(f"dataset {prep.data.name} has no Gaussian truth")
    loc = (t.loc - prep.target_loc) / prep.target_scale
    var = (t.scale / prep.target_scale) ** 2
    return loc.reshape(-1, 1), var.reshape(-1, 1)
