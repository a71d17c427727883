"""A dataset and its rows: the Data record and the rules that split it into train, validation and test.

Shared by every source of data (synthetic generators in densbench.data.datasets, tables in densbench.data.tables,
the UCI layout in densbench.data.uci), so none of them imports another for these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor
    from torch.distributions import Distribution

# multivariate: several real targets per row, y [N, d] (d >= 2); only heads that model a joint distribution take it
TASKS = ("regression", "count", "binary", "multiclass", "multivariate")


@dataclass
class Data:
    """A dataset in original units with its splits."""

    name: str
    task: str
    x: np.ndarray  # [N, d] float64
    y: np.ndarray  # [N] float64 (regression, count, binary), int64 (multiclass), or [N, d] float64 (multivariate)
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    feature_names: list[str]
    target_name: str
    n_classes: int | None = None
    truth: Callable[[Tensor], Distribution] | None = None  # x (original units) -> p(y | x)
    notes: dict = field(default_factory=dict)
    resolution: float | None = None  # the grid the targets are recorded on (1: whole numbers), where set

    @property
    def n_features(self) -> int:
        """Number of input columns."""
        return self.x.shape[1]

    @property
    def n_targets(self) -> int:
        """Number of target columns (1 unless the task is multivariate)."""
        return 1 if self.y.ndim == 1 else self.y.shape[1]


def target_list(setting: object) -> list:
    """A target setting as a list: null -> [], one name or column -> [it], a list -> its items."""
    if setting is None or setting == "":
        return []
    if isinstance(setting, (str, int)):
        return [setting]
    return list(setting)  # a list or an OmegaConf ListConfig


def random_splits(n: int, val_fraction: float, test_fraction: float, seed: int):
    """Random train/val/test index split."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(round(test_fraction * n))
    n_val = int(round(val_fraction * n))
    return perm[n_test + n_val :], perm[n_test : n_test + n_val], perm[:n_test]


def carve_validation(train: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Validation rows from the end of a training permutation, never from test: (train, val)."""
    n_val = int(round(val_fraction * len(train)))
    return train[: len(train) - n_val], train[len(train) - n_val :]


def protocol_rows(train: np.ndarray, test: np.ndarray, val_fraction: float, tuning: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) of a published split; tuning: the test rows are set aside unread.

    For a hyperparameter search the split's test rows must play no part, so a stand-in test set is
    carved from the training rows (as large as the validation set), then the validation set from
    what remains: every row the run sees belongs to the published training split.
    """
    if tuning:
        train, test = carve_validation(train, val_fraction)
    return (*carve_validation(train, val_fraction), test)


GAP_SHARE = 0.1  # the least share of the rows a gap split tests


def gap_parts(column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, tested rows) of the gap split on one input: rows sorted by it (ties in row order), the
    outer two thirds trained on, and of the middle third the rows whose value lies strictly between the
    training rows' (a middle row tied with a training value would sit in no gap: it is left out of both)."""
    order = np.argsort(column, kind="stable")
    n = len(order)
    third = n // 3
    train = np.concatenate([order[:third], order[n - third:]])  # every input's: the splits of a dataset stack
    middle = order[third:n - third]
    inside = (column[middle] > column[order[third - 1]]) & (column[middle] < column[order[n - third]])
    return train, middle[inside]


def gap_inputs(x: np.ndarray) -> list[int]:
    """The inputs a gap split is cut on, in column order (gap split i is on the i-th): those whose middle third
    keeps GAP_SHARE of the rows strictly inside the gap (not a binary input, a constant one, or one whose values
    bunch in the middle)."""
    least = max(1, int(np.ceil(GAP_SHARE * len(x))))
    return [d for d in range(x.shape[1]) if len(gap_parts(x[:, d])[1]) >= least]


def gap_split(x: np.ndarray, dimension: int) -> tuple[np.ndarray, np.ndarray]:
    """Gap split on input `dimension` (Foong et al. 2019): the middle third of the rows sorted by that input tested,
    the outer two thirds trained on (gap_parts), so every tested value lies strictly between the training rows'
    (the middle third alone put tied rows on both sides: boston's binary input had no gap at all). Both parts
    come shuffled (legacy RandomState(dimension), stable across numpy versions), as a published split's do:
    validation rows are carved from the training rows' end and dataset.max_eval keeps the test rows' first ones,
    which a table ordered by some column would otherwise take from one corner of it."""
    train, test = (np.sort(part) for part in gap_parts(x[:, dimension]))
    if len(test) == 0:
        raise ValueError(f"input {dimension} has no gap split: no row of its middle third lies strictly between the outer thirds' values")
    rng = np.random.RandomState(dimension)
    return train[rng.permutation(len(train))], test[rng.permutation(len(test))]


RESOLUTIONS = tuple(10.0 ** k for k in range(3, -7, -1))  # the recording grids a target is tested against, coarsest first


def detect_resolution(y: np.ndarray) -> float | None:
    """The coarsest power of ten every target is a whole multiple of (wine: 1, naval: 0.001), None if none from
    1000 down to 1e-6 is: a density's NLL is unbounded below on such a grid, an interval's is not."""
    y = np.asarray(y, dtype=np.float64)
    if y.size < 2 or np.unique(y).size < 2:
        return None
    for h in RESOLUTIONS:
        # relative to the grid: values read from text carry float error far below a millionth of a step
        if np.all(np.abs(y / h - np.round(y / h)) < 1e-6):
            return h
    return None


def resolution_of(setting: object, data: Data) -> float | None:
    """dataset.resolution: null (none), auto (detected on the training targets of a regression), or a width."""
    from densbench.errors import ConfigError

    if setting in (None, "", "none", "null", "None"):
        return None
    if setting == "auto":
        return detect_resolution(data.y[data.train]) if data.task == "regression" else None
    try:
        h = float(setting)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        h = float("nan")
    if not h > 0 or data.task != "regression":
        raise ConfigError(f"dataset.resolution={setting!r} must be null, auto or a positive width (regression targets only)")
    return h
