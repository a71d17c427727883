"""Reports are rebuilt from result.json files alone, failed runs included."""

import csv
import math
import subprocess
import sys

import numpy as np
import pytest

from densbench.report.sweep import write_report
from densbench.results import write_json_atomic


def _result(loss, grad, seed, nll, status="ok", samples=1000.0, error=None, lr=0.003, code="c0de", data="da7a", flags=()):
    labels = {"dataset": "hetero_sine", "loss": loss, "head": "gaussian/softplus", "grad": grad, "device": "cpu", "seed": seed, "split": None}
    config = {"seed": seed, "grad": grad, "loss": {"name": loss}, "optimizer": {"lr": lr}, "name": f"run{seed}",
              "dataset": {"name": "hetero_sine", "seed": 0}}
    res = {"status": status, "labels": labels, "config": config, "wall_time_s": 1.0, "flags": list(flags),
           "provenance": {"source_hash": code, "data_hash": data}}
    if status == "ok":
        res["metrics"] = {"nll": nll, "crps": 0.1, "mace": 0.02 + seed / 100, "coverage90": 0.9, "rmse": 0.2,
                          "train_samples_per_s": samples, "oracle_nll": -0.8, "nll_gap": nll + 0.8}
        res["curves"] = {"pit_hist": [0.05] * 20, "calibration_expected": [i / 99 for i in range(100)],
                         "calibration_observed": [i / 99 for i in range(100)]}
    else:
        res["error"] = error
    return res


@pytest.fixture
def sweep(tmp_path):
    runs = {
        "a": _result("nll", "autograd", 0, -0.70, samples=1000.0),
        "b": _result("nll", "autograd", 1, -0.74, samples=1200.0),
        "c": _result("nll", "analytic", 0, -0.71, samples=2200.0),
        "d": _result("mdn", "autograd", 0, -0.60),
        "e": _result("kl", "autograd", 0, None, status="failed", error="Diverged: training diverged: non-finite loss at optimisation step 17"),
    }
    for name, res in runs.items():
        write_json_atomic(tmp_path / "sweep" / name / "result.json", res)
    return tmp_path


def test_table_groups_seeds_marks_best_and_lists_failures(sweep):
    written = write_report(sweep / "sweep", sweep / "out")
    text = written.path.read_text()
    # seeds 0 and 1 of one configuration: mean -0.72, standard error 0.02, the best NLL of the dataset
    assert "| hetero_sine | gaussian/softplus | nll | autograd | cpu | 2 | **-0.720 ± 0.020** |" in text
    assert "| hetero_sine | gaussian/softplus | nll | analytic | cpu | 1 | -0.710 |" in text
    rows = list(csv.DictReader(open(sweep / "out" / "summary.csv")))
    assert len(rows) == 3
    best_nll = min(rows, key=lambda r: float(r["nll"]))
    assert best_nll["grad"] == "autograd" and best_nll["runs"] == "2"
    assert "| `e` | failed | Diverged: training diverged: non-finite loss at optimisation step 17 |" in text
    assert (sweep / "out" / "compare_hetero_sine.png").stat().st_size > 1000


def test_throughput_ratio_when_both_gradient_paths_ran(sweep):
    text = write_report(sweep / "sweep", sweep / "out").path.read_text()
    # analytic 2200 samples/s against the autograd mean of 1000 and 1200
    assert "| hetero_sine | gaussian/softplus | nll | cpu |  | 2200 | 1100 | 2.00 |" in text


def test_cli_rebuilds_and_refuses_empty_dirs(sweep, tmp_path):
    out = tmp_path / "cli_out"
    proc = subprocess.run([sys.executable, "-m", "densbench.report", str(sweep / "sweep"), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (out / "report.md").exists() and (out / "summary.csv").exists()
    # the leaderboard beside it, one row per configuration of summary.csv, its best cell per column in bold
    board = (out / "leaderboard.md").read_text()
    with open(out / "summary.csv") as f:
        configurations = len(f.readlines()) - 1
    assert board.count("\n| ") >= configurations and "**" in board
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([sys.executable, "-m", "densbench.report", str(empty)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == f"densbench: no result.json under {empty}: nothing to report"


def test_report_does_not_import_torch(sweep):
    """A parallel sweep's parent writes the report: importing torch there would add seconds to every sweep."""
    code = (
        "import sys; from densbench.report.sweep import write_report; "
        f"write_report({str(sweep / 'sweep')!r}, {str(sweep / 'out')!r}); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert list((sweep / "out").glob("calib_*.png")), "the report should have drawn calibration figures"
    assert out.stdout.strip().splitlines()[-1] == "False"


def _rows(out):
    return list(csv.DictReader(open(out / "summary.csv")))


def test_rows_separate_every_setting_that_differs_but_average_seeds(tmp_path):
    # the lr sweep of issue 12: two learning rates are two rows, named by the key that differs
    runs = {"lo0": _result("nll", "autograd", 0, 0.77, lr=1e-3), "lo1": _result("nll", "autograd", 1, 0.75, lr=1e-3),
            "hi0": _result("nll", "autograd", 0, 0.07, lr=3e-2)}
    for name, res in runs.items():
        write_json_atomic(tmp_path / "sweep" / name / "result.json", res)
    text = write_report(tmp_path / "sweep", tmp_path / "out").path.read_text()
    rows = {r["config"]: r for r in _rows(tmp_path / "out")}
    assert set(rows) == {"optimizer.lr=0.001", "optimizer.lr=0.03"}
    assert rows["optimizer.lr=0.001"]["runs"] == "2" and float(rows["optimizer.lr=0.001"]["nll"]) == pytest.approx(0.76)
    assert "| hetero_sine | gaussian/softplus | nll | autograd | cpu | optimizer.lr=0.03 | 1 | **0.070** |" in text
    # the run name (bookkeeping) differs too, but never splits or labels a row
    assert "name=" not in text.split("## Runs")[0]


@pytest.mark.parametrize("field,other", [("code", "beef"), ("data", "f00d")])
def test_runs_from_other_code_or_data_never_share_a_row(tmp_path, field, other):
    a = _result("nll", "autograd", 0, 0.5)
    b = _result("nll", "autograd", 1, 0.9, **{field: other})
    for name, res in (("a", a), ("b", b)):
        write_json_atomic(tmp_path / "sweep" / name / "result.json", res)
    write_report(tmp_path / "sweep", tmp_path / "out")
    rows = _rows(tmp_path / "out")
    assert len(rows) == 2 and {r["runs"] for r in rows} == {"1"}
    assert any(f"{field}={other}" in r["config"] for r in rows)


def test_unreadable_and_malformed_results_are_listed_and_the_exit_status_says_so(sweep, tmp_path):
    (sweep / "sweep" / "truncated").mkdir()
    (sweep / "sweep" / "truncated" / "result.json").write_text('{"status": "ok", "labels": {"dataset"')
    (sweep / "sweep" / "nometrics").mkdir()
    (sweep / "sweep" / "nometrics" / "result.json").write_text('{"status": "ok", "labels": {}, "config": {}}')
    (sweep / "sweep" / "badvalue").mkdir()
    (sweep / "sweep" / "badvalue" / "result.json").write_text('{"status": "ok", "labels": {}, "metrics": {"nll": "low"}}')
    written = write_report(sweep / "sweep", sweep / "out")
    assert sorted(p.parent.name for p, _ in written.skipped) == ["badvalue", "nometrics", "truncated"]
    text = written.path.read_text()
    assert "3 result files could not be read" in text
    assert "| `truncated/result.json` | left out | unreadable:" in text
    assert "| `nometrics/result.json` | left out | malformed: status ok but no 'metrics' object |" in text
    assert "| `badvalue/result.json` | left out | malformed: metric 'nll' is not a number |" in text
    assert len(_rows(sweep / "out")) == 3  # the good runs are still reported
    proc = subprocess.run([sys.executable, "-m", "densbench.report", str(sweep / "sweep"), "--out", str(tmp_path / "cli")],
                          capture_output=True, text=True)
    assert proc.returncode == 3 and (tmp_path / "cli" / "report.md").exists()
    assert proc.stderr.count("left out of the report") == 3


def test_flagged_runs_are_counted_in_their_row_and_listed(tmp_path):
    runs = {"a": _result("nll", "autograd", 0, 0.5), "b": _result("nll", "autograd", 1, 0.6, flags=["exploded: test nll is 5e+09"])}
    for name, res in runs.items():
        write_json_atomic(tmp_path / "sweep" / name / "result.json", res)
    text = write_report(tmp_path / "sweep", tmp_path / "out").path.read_text()
    assert "| 2 (1 flagged) |" in text
    assert "| `b` | ok (flagged) | exploded: test nll is 5e+09 |" in text
    assert _rows(tmp_path / "out")[0]["flagged"] == "1"


def test_the_report_shows_where_each_runs_time_went(tmp_path):
    timed = _result("nll", "autograd", 0, -0.7)
    timed["timing"] = {"startup_s": 5.25, "train_s": 12.5, "validation_s": 0.75, "test_s": 1.25, "figures_s": 0.5, "total_s": 20.25}
    write_json_atomic(tmp_path / "sweep" / "timed" / "result.json", timed)
    write_json_atomic(tmp_path / "sweep" / "old" / "result.json", _result("nll", "autograd", 1, -0.6))  # no timing: its wall time
    text = write_report(tmp_path / "sweep", tmp_path / "out").path.read_text()
    assert "| `timed` | ok | hetero_sine | nll | gaussian/softplus | autograd | cpu | 0 | -0.700 | 5.2 | 12.5 | 0.8 | 1.2 | 0.5 | 20.2 |" in text
    assert "| `old` | ok | hetero_sine | nll | gaussian/softplus | autograd | cpu | 1 | -0.600 | - | - | - | - | - | 1.0 |" in text
    runs = {r["run"]: r for r in csv.DictReader(open(tmp_path / "out" / "runs.csv"))}
    assert {k: float(runs["timed"][k]) for k in timed["timing"]} == timed["timing"]


def test_a_rewritten_report_keeps_only_its_own_figures(sweep):
    # figures of runs an earlier report saw (since removed, renamed, older code) must not linger beside the new ones
    out = sweep / "out"
    out.mkdir()
    for stale in ("compare_gone.png", "calib_old-config.png", "pred_old-config-abc123_s0.png"):
        (out / stale).write_bytes(b"old")
    (out / "notes.png").write_bytes(b"the user's own")
    write_report(sweep / "sweep", out)
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "compare_hetero_sine.png" in pngs and "notes.png" in pngs
    assert not {"compare_gone.png", "calib_old-config.png", "pred_old-config-abc123_s0.png"} & set(pngs)


def test_comparison_rows_are_labelled_by_method_and_what_varies_with_a_legend_for_long_ones():
    from densbench.report.figures import LABEL_MAX, _labels

    common = {"loss": "nll", "head": "gaussian", "grad": "autograd", "device": "cpu"}
    rows = [{**common, "method": "gaussian_nll", "recalibrate": "none", "config": "ensemble.members=1, recalibrate=none"},
            {**common, "method": "gaussian_nll", "recalibrate": "isotonic", "config": "ensemble.members=1, recalibrate=isotonic"},
            {**common, "head": "student_t", "method": "student_t", "recalibrate": "none", "config": "ensemble.members=5, recalibrate=none"},
            {**common, "head": "student_t", "method": "student_t", "recalibrate": "none", "config": "ensemble.members=1, recalibrate=none"},
            {**common, "loss": "kl", "method": None, "recalibrate": "none", "config": ""}]
    shown, legend = _labels(rows)
    assert shown[:2] == ["gaussian_nll", "gaussian_nll +isotonic"] and shown[4] == "kl/gaussian"
    assert len(set(shown)) == len(shown) and all(len(s) <= LABEL_MAX for s in shown)
    assert not any("autograd" in s or "cpu" in s for s in shown)  # the same for every row: said nowhere
    # the two Student-t rows differ only in their config: numbered, spelled out in the legend
    assert shown[2:4] == ["#1", "#2"] and legend == ["#1: student_t ensemble.members=5, recalibrate=none", "#2: student_t ensemble.members=1, recalibrate=none"]


def test_the_comparison_figure_puts_each_configurations_learning_curve_beside_its_scores(monkeypatch, tmp_path):
    from densbench.report import figures

    drawn = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, path, dpi=100: drawn.setdefault("fig", fig))
    runs = [[{"curves": {"train_step": [10, 20, 30], "train_val_nll": [1.0, 0.8, 0.7 + d]}} for d in (0.0, 0.2)],
            [{"curves": {"train_step": [10, 20], "train_val_nll": [2.0, 1.5]}}]]
    rows = [{"dataset": "d", "loss": "nll", "head": "gaussian", "grad": "autograd", "device": "cpu", "nll": 0.7},
            {"dataset": "d", "loss": "kl", "head": "gaussian", "grad": "autograd", "device": "cpu", "nll": 1.5}]
    figures._draw_comparison("d", rows, tmp_path / "c.png", [figures._mean_curve(r) for r in runs])
    axes = drawn["fig"].axes
    assert [a.get_title() for a in axes] == ["test NLL (lower is better)", "validation NLL (lower is better)"]
    lines = {ln.get_label(): ln.get_xydata() for ln in axes[-1].get_lines()}
    assert sorted(lines) == ["kl/gaussian", "nll/gaussian"]
    np.testing.assert_allclose(lines["nll/gaussian"], [[10, 1.0], [20, 0.8], [30, 0.8]])  # the mean of the two runs
    np.testing.assert_allclose(lines["kl/gaussian"], [[10, 2.0], [20, 1.5]])


def test_a_row_over_other_splits_is_never_bold():
    # the UCI suite's ensemble rows split by the member chosen per split: 2 of boston's 20 splits made a row
    # whose mean (2.20) took the bold from every full row
    from densbench.report.rows import best_marks

    every, two = frozenset(map(str, range(20))), frozenset({"3", "11"})
    rows = [{"dataset": "d", "splits": every, "nll": 2.5}, {"dataset": "d", "splits": every, "nll": 2.4},
            {"dataset": "d", "splits": two, "nll": 2.2}, {"dataset": "d", "splits": frozenset({"None"}), "nll": 2.0},
            # seeds of one setting, one of them lost: the same (no) splits, so rivals as ever
            {"dataset": "e", "splits": frozenset({"None"}), "nll": 1.0}, {"dataset": "e", "splits": frozenset({"None"}), "nll": 0.9}]
    marks = {i for i, m in best_marks(rows) if m == "nll"}
    assert marks == {1, 5}
    # a dataset whose only full row has rivals over other splits alone: that row is best of nothing
    lone = [{"dataset": "f", "splits": every, "nll": 2.5}, {"dataset": "f", "splits": two, "nll": 2.2}]
    assert not {m for _, m in best_marks(lone)}
    cauchy = [{"dataset": "g", "splits": every, "crps": 0.41}, {"dataset": "g", "splits": every, "crps": math.inf}]
    assert (0, "crps") in best_marks(cauchy)  # an infinite score is a rival, and the finite one beats it
