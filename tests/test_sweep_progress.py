"""A sweep's progress display: one line for a burst of jobs, the last job always said, a suite's count and
ETA across its stages, and the UCI suite's total (densbench.progress.SweepProgress driven directly)."""

import json
import re
import sys
from types import SimpleNamespace

import pytest
from conftest import REPO
from hydra.core.utils import JobStatus
from hydra.types import RunMode
from omegaconf import OmegaConf

from densbench import progress
from densbench.methods import recipes
from densbench.progress import SweepProgress

sys.path.insert(0, str(REPO / "scripts"))
import uci_suite


class Clock:
    """A stand-in for the time module that the test moves forward by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(progress, "time", fake)
    return fake


def _config(tmp_path, task, sweeper=None, run_dir=None):
    return OmegaConf.create({"hydra": {
        "mode": RunMode.MULTIRUN, "sweep": {"dir": str(tmp_path / "mr")}, "overrides": {"task": list(task)},
        "sweeper": sweeper or {"params": None}, "runtime": {"output_dir": str(run_dir or tmp_path)}}})


def _end_jobs(cb, tmp_path, n, status="ok"):
    """n jobs end, each with a result.json of this status; the config a Hydra launcher hands on_job_end."""
    for i in range(n):
        run_dir = tmp_path / "mr" / f"job{i}"
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "result.json").write_text(json.dumps({"status": status}))
        cb.on_job_end(_config(tmp_path, [], run_dir=run_dir), SimpleNamespace(status=JobStatus.COMPLETED))


def _lines(capsys):
    return [x for x in capsys.readouterr().err.splitlines() if "jobs done" in x]


def test_fifty_jobs_ending_at_once_print_a_few_lines_and_the_last_says_the_end(tmp_path, clock, capsys):
    cb = SweepProgress()
    cb.on_multirun_start(_config(tmp_path, ["seed=range(0,50)", "loss=nll"]))
    for i in range(50):
        clock.now += 0.02  # all fifty within one second
        _end_jobs(cb, tmp_path, 1)
    lines = _lines(capsys)
    assert len(lines) <= 11  # at most one per tenth (and the end), not one per job
    assert lines[-1].startswith("densbench: [50/50] jobs done: 50 ok, ")
    assert sum("[50/50]" in x for x in lines) == 1


def test_a_stack_ending_together_is_one_line(tmp_path, clock, capsys):
    cb = SweepProgress()
    cb.on_multirun_start(_config(tmp_path, ["seed=range(0,40)"]))
    clock.now += 60
    cb.add(["ok"] * 20 + ["failed"] * 20)
    assert _lines(capsys) == ["densbench: [40/40] jobs done: 20 failed, 20 ok, 60.0 s elapsed"]


def test_time_alone_lets_a_line_through_between_the_tenths(tmp_path, clock, capsys):
    cb = SweepProgress()
    cb.on_multirun_start(_config(tmp_path, ["seed=range(0,100)"]))
    _end_jobs(cb, tmp_path, 3)  # no tenth crossed, no time passed: quiet
    assert _lines(capsys) == []
    clock.now += progress.THROTTLE_S
    _end_jobs(cb, tmp_path, 1)
    assert [x.split(" jobs")[0] for x in _lines(capsys)] == ["densbench: [4/100]"]


def test_a_suite_counts_from_its_offset_to_its_own_total(tmp_path, clock, capsys):
    start = clock.now
    clock.now += 600  # stage 1 took ten minutes
    cb = SweepProgress(total=120, offset=100, start=start)
    cb.on_multirun_start(_config(tmp_path, ["seed=range(0,20)"]))
    clock.now += 60
    _end_jobs(cb, tmp_path, 1)
    # the rate is the suite's: 101 jobs in 660 s, so 19 more take about 124 s
    assert _lines(capsys) == ["densbench: [101/120] jobs done: 100 earlier, 1 ok, 11.0 min elapsed, ETA 2.1 min"]
    clock.now += 100
    _end_jobs(cb, tmp_path, 19)
    assert _lines(capsys)[-1] == "densbench: [120/120] jobs done: 100 earlier, 20 ok, 12.7 min elapsed"


def test_an_eta_appears_once_enough_jobs_are_done(tmp_path, clock, capsys):
    cb = SweepProgress()
    cb.on_multirun_start(_config(tmp_path, ["seed=range(0,100)"]))
    for _ in range(10):
        clock.now += 10  # ten seconds a job: every job's line is due
        _end_jobs(cb, tmp_path, 1)
    lines = _lines(capsys)
    assert len(lines) == 10 and not any("ETA" in x for x in lines[:4])  # under 5% done: no guess yet
    assert lines[5] == "densbench: [6/100] jobs done: 6 ok, 60.0 s elapsed, ETA 15.7 min"
    assert lines[-1] == "densbench: [10/100] jobs done: 10 ok, 1.7 min elapsed, ETA 15.0 min"


def test_a_listed_sweep_is_counted_from_its_list(tmp_path, clock, capsys):
    listed = tmp_path / "stage1.yaml"
    listed.write_text(json.dumps([["dataset.split=0"], ["dataset.split=1"], ["seed=3"]]))
    cb = SweepProgress()
    # each listed job crossed with the command line's sweeps it does not set itself: 2 + 2 + 1
    cb.on_multirun_start(_config(tmp_path, ["seed=1,2", "launcher=stacked"], sweeper={"jobs_file": str(listed), "jobs": []}))
    assert cb.jobs == 5 and cb.total == 5


def test_the_uci_suite_total_covers_both_stages():
    splits = {"boston": 20, "yacht": 20, "protein": 5}
    variants = [["method=gaussian_nll"], ["method=mdn"], ["method=gaussian_nll", "recalibrate=scale"]]
    assert uci_suite.suite_total(splits, variants) == 3 * 45 + 45
    assert uci_suite.progress(180, 135, 12.5) == ["hydra.callbacks.progress.total=180", "hydra.callbacks.progress.offset=135",
                                                  "hydra.callbacks.progress.start=12.5"]


def test_the_uci_suite_ends_with_one_line_per_dataset():
    def run(dataset, method, nll, status="ok"):
        recipe = recipes()[method]
        return None, {"status": status, "labels": {"dataset": dataset, "head": recipe.head}, "metrics": {"nll": nll},
                      "config": {"dataset": {"protocol": "uci"}, "loss": {"_target_": recipe.objective}}}

    results = [run("boston", "gaussian_nll", 2.5), run("boston", "gaussian_nll", 2.7), run("boston", "mdn", 2.4),
               run("boston", "mdn", 2.5), run("boston", "mdn", None, "failed"), run("yacht", "mdn", None, "failed")]
    table = uci_suite.final_table(results).splitlines()
    assert len(table) == 3
    assert re.match(r"  boston +mdn +2\.450 ± 0\.050 +1 failed, 4 ok$", table[1]), table[1]
    assert re.match(r"  yacht +- +- +1 failed$", table[2]), table[2]


def test_a_large_stack_ends_in_one_line_plus_one_per_job_that_is_not_plainly_ok(capsys, tmp_path):
    from densbench.progress import STACK_LINES, announce_stack

    ok = {"status": "ok", "metrics": {"nll": 1.0}, "timing": {"total_s": 1.0}}
    ended = [(dict(ok), tmp_path / "sweep" / f"split={i}") for i in range(20)]
    ended[3] = ({"status": "failed", "error": "Diverged: at step 7"}, tmp_path / "sweep" / "split=3")
    ended[5] = ({**ok, "flags": ["val_nll_rose: ..."]}, tmp_path / "sweep" / "split=5")
    announce_stack(ended)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and "failed: Diverged: at step 7" in lines[0] and "flagged (val_nll_rose" in lines[1]
    assert lines[2] == f"densbench: a stack of 20 jobs ended: 1 failed, 1 flagged, 18 ok  ->  {tmp_path / 'sweep'}"
    announce_stack(ended[:STACK_LINES])  # a small stack: every job's own line
    assert len(capsys.readouterr().err.splitlines()) == STACK_LINES
