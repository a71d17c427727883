"""The gap splits (Foong et al. 2019) beside the published splits: how a method's NLL and coverage change when
the test rows lie between the training rows' ranges of one input (dataset.protocol=gap)."""

from __future__ import annotations

from densbench.report.uci import _nll, ensemble_members
from densbench.report.uci_recalibration import pm


def gap_section(standard: dict, gap: dict) -> list[str]:
    """Per dataset and method run on gap splits: test NLL and 90% coverage there and on the published splits."""
    rows = []
    for ds in standard:
        for m in sorted(gap.get(ds, {})):
            g, s = gap[ds][m], standard[ds].get(m, [])
            cells = [pm(*_nll(g)), pm(*_nll(s)) if s else "-", pm(*_nll(g, "coverage90"), digits=2),
                     pm(*_nll(s, "coverage90"), digits=2) if s else "-"]
            rows.append(f"| {ds} | {m}{members(g, s) if m == 'ensemble' else ''} | {len(g)} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return ["### Gap splits: between the training ranges", "",
            "One split per input (Foong et al. 2019): rows sorted by that input, the middle third tested and the outer "
            "two thirds trained on (validation carved from them as usual); a middle row whose value ties with a training "
            "row's sits in no gap and is left out, so every tested value lies strictly between the training rows' (an "
            "input that keeps less than a tenth of the rows so, a binary one say, has no gap split). A predictive that knows what it has not "
            "seen widens there: its coverage stays near 90% while its NLL grows; an overconfident one loses coverage. "
            "Mean ± standard error over the gap splits, and over the published splits for comparison. An ensemble's "
            "members are, on each split, the single-model method with the lowest NLL on that split's validation rows "
            "among those run there whose networks can be members (not mc_dropout, whose candidates are chosen, not "
            "mixed); its row counts them, gap splits / published splits.", "",
            "| dataset | method | gap splits | NLL (gap) | NLL (published splits) | cover@90 (gap) | cover@90 (published) |",
            "|---|---|---|---|---|---|---|", *rows, ""]


def members(gap: list[dict], published: list[dict]) -> str:
    """An ensemble's member methods, each with its count of gap splits / published splits: ' (gaussian_nll 8 / 11)'."""
    g, p = ensemble_members(gap), ensemble_members(published)
    names = sorted(set(g) | set(p), key=lambda m: (-g.get(m, 0) - p.get(m, 0), m))
    return " (" + ", ".join(f"{m} {g.get(m, 0)} / {p.get(m, 0)}" for m in names) + ")"
