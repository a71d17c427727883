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

TASKS = ("regression", "count", "binary", "multiclass")


@dataclass
class Data:
    """A dataset in original units with its splits."""

    name: str
    task: str
    x: np.ndarray  # [N, d] float64
    y: np.ndarray  # [N] float64 (regression, count, binary) or int64 (multiclass)
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    feature_names: list[str]
    target_name: str
    n_classes: int | None = None
    truth: Callable[[Tensor], Distribution] | None = None  # x (original units) -> p(y | x)
    notes: dict = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        """Number of input columns."""
        return self.x.shape[1]



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
