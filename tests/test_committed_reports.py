"""The committed reports as a reader takes them: written by the code beside them, and a figure for every metric
of every run. An earlier release committed 95 UCI runs with a NaN metric (null in runs.csv) that no one saw,
and its tables averaged the other splits as if they were all."""

from __future__ import annotations

import csv
import math

import pytest

from conftest import REPO
from densbench.provenance import code_revision

REPORTS = {"uci": REPO / "reports" / "uci" / "runs.csv", "headline": REPO / "reports" / "loss=kl,nll,mdn" / "runs.csv"}
# what every UCI run reports (NLL@h where the dataset's targets have a resolution: below)
UCI_METRICS = ("nll", "rmse", "crps", "mace", "rmsce", "miscal_area", "quantile_mace", "sharpness", "coverage50",
               "coverage90", "coverage95", "width50", "width90", "width95", "interval_score", "check_score", "pit_ks")


def _rows(name: str) -> list[dict[str, str]]:
    with REPORTS[name].open(newline="") as fh:
        return list(csv.DictReader(fh))


def _finite(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:  # '' (null in result.json)
        return False


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_every_committed_run_was_written_by_this_code(name):
    # a src or conf change without `python scripts/regenerate.py` leaves figures of older code behind
    hashes = {r["source_hash"] for r in _rows(name)}
    assert hashes == {code_revision()["source_hash"]}, f"{REPORTS[name]}: regenerate the reports (scripts/regenerate.py)"


def test_every_committed_uci_run_has_a_finite_figure_for_every_metric():
    rows = _rows("uci")
    assert rows and all(r["status"] == "ok" for r in rows)
    missing = [(r["run"], m) for r in rows for m in UCI_METRICS if not _finite(r[m])]
    assert not missing, f"{len(missing)} missing figures, e.g. {missing[:3]}"
    # NLL@h: on every run of a dataset whose targets have a resolution (all but kin8nm), on none of the others
    by_dataset: dict[str, set[bool]] = {}
    for r in rows:
        by_dataset.setdefault(r["dataset"], set()).add(_finite(r["nll_binned"]))
    assert all(len(has) == 1 for has in by_dataset.values()), by_dataset
    assert {d for d, has in by_dataset.items() if has == {False}} == {"kin8nm"}


def test_the_committed_latex_leaderboard_has_the_markdown_reports_figures():
    # the LaTeX tables once stayed behind for several releases while report.md was regenerated
    import re

    report = (REPO / "reports" / "uci" / "report.md").read_text()
    tex = (REPO / "reports" / "uci" / "uci_leaderboard.tex").read_text()
    table = report[report.index("### Leaderboard: test NLL"):].split("\n\n")[2]  # heading, caption, the table
    md_rows = {line.split("|")[1].strip(): re.findall(r"-?\d+\.\d+ ± \d+\.\d+", line)
               for line in table.splitlines() if "±" in line}
    tex_rows = {line.split("&")[0].strip(): re.findall(r"-?\d+\.\d+ \\pm \d+\.\d+", line)
                for line in tex.splitlines() if "&" in line and "\\pm" in line}
    assert md_rows and tex_rows.keys() == md_rows.keys()
    for dataset, cells in md_rows.items():
        assert [c.replace(" \\pm ", " ± ") for c in tex_rows[dataset]] == cells, dataset
