"""Validation choices among methods, split by split: which method a user would pick on a split without its
test rows (the lowest NLL on that split's own validation rows), for the report's comparisons and for the
suite's choice of each split's ensemble members. Per split, because the published splits' validation rows,
pooled, hold other splits' test rows."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

from densbench.methods import baselines


def validation_nll(run: dict) -> float | None:
    """A run's validation NLL of what it tests: the candidate chosen on validation (MC dropout's), an ensemble's
    mixture, else the model at its selected epoch; None for an ensemble that did not record its mixture's."""
    chosen, train = run.get("chosen") or {}, run.get("train") or {}
    if "val_nll" in chosen:
        return chosen["val_nll"]
    if "nll" in (run.get("validation") or {}):
        return run["validation"]["nll"]
    return None if train.get("members") else train.get("best_val_nll")  # an ensemble's: its members' mean, not its own


def validation_choices(methods: dict[str, list[dict]], ensembles: bool = False) -> dict[int, tuple[str, dict]]:
    """Per split, the network method (and its run) with the lowest NLL on that split's own validation rows (NLL@h
    where set), among the single-model methods or with `ensembles` among every network method; ties go to the
    method listed first. Split by split: the splits' validation rows pooled would hold other splits' test rows."""
    out: dict[int, tuple[str, dict]] = {}
    for m, runs in methods.items():
        if (m == "ensemble" and not ensembles) or m in baselines():
            continue
        for r in runs:
            split, v = split_of(r), validation_nll(r)
            if split is None or v is None or not math.isfinite(v):
                continue
            if split not in out or v < validation_nll(out[split][1]):
                out[split] = (m, r)
    return out


def split_of(run: dict) -> int | None:
    """The split a run tested: its label (the published splits), else its config's dataset.split (a gap split)."""
    split = (run.get("labels") or {}).get("split")
    return split if split is not None else ((run.get("config") or {}).get("dataset") or {}).get("split")


def tally(names: Iterable[str]) -> dict[str, int]:
    """How often each name occurs, most often first (ties by name)."""
    return dict(sorted(Counter(names).items(), key=lambda mn: (-mn[1], mn[0])))


def tally_text(counts: dict[str, int]) -> str:
    """A tally as text: 'mdn 14, student_t 6'."""
    return ", ".join(f"{m} {n}" for m, n in counts.items())


def chosen_counts(choices: dict[int, tuple[str, dict]]) -> str:
    """How often each method was chosen over the splits, most often first: 'mdn 14, student_t 6'."""
    return tally_text(tally(m for m, _ in choices.values()))
