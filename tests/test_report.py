"""Reports are rebuilt from result.json files alone, failed runs included."""

import csv
import subprocess
import sys

import pytest

from densbench.report import write_report
from densbench.results import write_json_atomic


def _result(loss, grad, seed, nll, status="ok", samples=1000.0, error=None):
    labels = {"dataset": "hetero_sine", "loss": loss, "head": "gaussian/softplus", "grad": grad, "device": "cpu", "seed": seed, "split": None}
    res = {"status": status, "labels": labels, "config": {}, "wall_time_s": 1.0}
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
    (tmp_path / "sweep" / "broken").mkdir()
    (tmp_path / "sweep" / "broken" / "result.json").write_text("{ not json")  # ignored, not fatal
    return tmp_path


def test_table_groups_seeds_marks_best_and_lists_failures(sweep):
    path = write_report(sweep / "sweep", sweep / "out")
    text = path.read_text()
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
    text = write_report(sweep / "sweep", sweep / "out").read_text()
    # analytic 2200 samples/s against the autograd mean of 1000 and 1200
    assert "| hetero_sine | gaussian/softplus | nll | cpu | 2200 | 1100 | 2.00 |" in text


def test_cli_rebuilds_and_refuses_empty_dirs(sweep, tmp_path):
    out = tmp_path / "cli_out"
    proc = subprocess.run([sys.executable, "-m", "densbench.report", str(sweep / "sweep"), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (out / "report.md").exists() and (out / "summary.csv").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([sys.executable, "-m", "densbench.report", str(empty)], capture_output=True, text=True)
    assert proc.returncode == 2 and "no result.json under" in proc.stderr


def test_report_does_not_import_torch(sweep):
    """A parallel sweep's parent writes the report: importing torch there would add seconds to every sweep."""
    code = (
        "import sys; from densbench.report import write_report; "
        f"write_report({str(sweep / 'sweep')!r}, {str(sweep / 'out')!r}); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert list((sweep / "out").glob("calib_*.png")), "the report should have drawn calibration figures"
    assert out.stdout.strip().splitlines()[-1] == "False"
