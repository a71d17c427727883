"""`python -m densbench list`: what densbench can run, read from its configs (torch-free).

The losses and heads of conf/loss and conf/head with what each accepts, the datasets of conf/dataset
with their task, rows and target support (loaded where that is cheap; the UCI sets need their root),
and which loss x head pairs train together.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.utils import instantiate

from densbench.config import config_dir
from densbench.data import datasets as data_mod
from densbench.data.uci import FOLDERS, ROOT_VARIABLE
from densbench.errors import ConfigError, DataError

CLASSES = {"regression": None, "count": None, "binary": 2, "multiclass": 3, "multivariate": None}


def _options(group: str) -> dict[str, Any]:
    """Each option of a config group, composed as a run would compose it (a head may extend another)."""
    from hydra import compose, initialize_config_dir

    names = sorted(path.stem for path in Path(config_dir(), group).glob("*.yaml"))
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return {name: compose(config_name="config", overrides=[f"{group}={name}"])[group] for name in names}


def _support(data: Any) -> str:
    """The narrowest support that holds every target of a loaded dataset."""
    y = data.y
    if data.task in ("binary", "multiclass"):
        return "classes"
    if data.task == "count":
        return "counts"
    if ((y > 0) & (y < 1)).all():
        return "unit_interval"
    return "positive" if (y > 0).all() else "real"


def _dataset_row(name: str, node: Any) -> list[str]:
    kind = data_mod.describe(node)
    if name in FOLDERS and not (node.get("root") or os.environ.get(ROOT_VARIABLE)):
        return [name, kind.task, "-", f"- (needs dataset.root or {ROOT_VARIABLE})", kind.truth or "-"]
    if name == "csv":
        return [name, kind.task, "-", "- (your file: dataset.path)", "-"]
    try:
        data = data_mod.load(node)
    except (DataError, ConfigError, OSError) as exc:
        return [name, kind.task, "-", f"- ({str(exc).splitlines()[0][:60]})", kind.truth or "-"]
    return [name, kind.task, str(len(data.y)), _support(data), kind.truth or "-"]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]


def listing() -> str:
    """The whole listing, as printed."""
    heads = {name: instantiate(node) for name, node in _options("head").items()}
    losses = {name: instantiate(node) for name, node in _options("loss").items()}
    lines = ["heads (head=):", *("  " + line for line in _table(
        ["name", "family", "targets", "support"],
        [[n, h.name, ", ".join(h.tasks), h.support] for n, h in heads.items()]))]
    lines += ["", "losses (loss=):", *("  " + line for line in _table(
        ["name", "objective", "trains on", "grad=analytic with"],
        [[n, type(o).__name__, f"the {o.needs_truth} truth" if o.needs_truth else "samples",
          ", ".join(h for h, f in heads.items() if _fits(o, f) and o.analytic_refusal(_bound(f)) is None) or "-"]
         for n, o in losses.items()]))]
    lines += ["", "which pairs train (loss x head; yes = accepted, - = refused with the reason before training):"]
    lines += ["  " + line for line in _table(["loss \\ head", *heads], [[n, *("yes" if _fits(o, f) else "-" for f in heads.values())]
                                                                       for n, o in losses.items()])]
    rows = [_dataset_row(n, node) for n, node in _options("dataset").items()]
    lines += ["", "datasets (dataset=):", *("  " + line for line in _table(["name", "task", "rows", "support", "truth"], rows))]
    return "\n".join(lines)


def _bound(family: Any) -> Any:
    task = family.tasks[0]
    return family.bind(task, CLASSES[task])


def _fits(objective: Any, family: Any) -> bool:
    try:
        return objective.accepts(_bound(family)) is None
    except ConfigError:
        return False
