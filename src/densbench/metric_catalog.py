"""Every metric a run records: its name, the label tables and lines give it, which way is better, and
the headline order. One home for these, read by the last line of a run, `results.load`, TensorBoard's
HParams table and the reports (torch-free)."""

from __future__ import annotations

from typing import NamedTuple


class Metric(NamedTuple):
    """A recorded metric: name in result.json, label in tables, lower_is_better (None: neither, as coverage)."""

    name: str
    label: str
    lower_is_better: bool | None


CATALOG: dict[str, Metric] = {m.name: m for m in (
    Metric("nll", "NLL", True),
    Metric("nll_binned", "NLL@h", True),  # per unit width of the interval y +- h/2 (h: the targets' recording grid)
    Metric("crps", "CRPS", True),
    Metric("rmse", "RMSE", True),
    Metric("accuracy", "accuracy", False),
    Metric("coverage90", "cover@90", None),
    Metric("mace", "cal. error", True),
    Metric("ece", "ECE", True),
    Metric("width90", "width@90", True),
    Metric("nll_gap", "NLL - oracle", True),
    Metric("train_samples_per_s", "train samples/s", False),
)}
HEADLINE = ("nll", "crps", "rmse", "accuracy", "coverage90", "mace")  # the order tables and TensorBoard show them in
ON_THE_LAST_LINE = HEADLINE[:4]  # the scores a run's last line prints


def label(name: str) -> str:
    """How tables name a metric (its own name when the catalog has no label for it)."""
    return CATALOG[name].label if name in CATALOG else name


def columns(*names: str) -> list[tuple[str, str]]:
    """(name, label) of each metric, in the order given."""
    return [(n, label(n)) for n in names]


def lower_is_better(name: str) -> bool | None:
    """Which way a metric is better (None: neither way, or unknown)."""
    return CATALOG[name].lower_is_better if name in CATALOG else None
