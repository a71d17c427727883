"""A sweep survives its worst members, reruns resume only what did not finish, and the same config
and seed give the same numbers (interrupts and resume: test_resume.py)."""

import json
import time
from pathlib import Path

import pytest

from conftest import make_cfg, run_cli
from densbench.results import EXECUTION_METRICS
from densbench.runs.execution import run_job

pytestmark = pytest.mark.slow
TESTS = str(Path(__file__).parent)


def _results(root):
    return {p.parent.name: json.loads(p.read_text()) for p in Path(root).rglob("result.json")}


def test_one_job_diverges_one_raises_the_others_finish_and_a_rerun_resumes_only_them(tmp_path):
    env = {"PYTHONPATH": TESTS}

    def sweep(lrs, *extra, fail_at=1000000):
        # lr=1e30 diverges; the RaiseAtStep callback raises once its step is reached (40 steps per run)
        return run_cli(["-m", "experiment=fast", f"optimizer.lr={lrs}", "+callbacks.fail._target_=helpers.RaiseAtStep",
                        f"+callbacks.fail.step={fail_at}", f"hydra.sweep.dir={tmp_path}/mr", *extra],
                       cwd=tmp_path, env=env)

    first = sweep("1e-3,1e-2,1e30")
    second = sweep("2e-3", "hydra.sweep.subdir=raises", fail_at=20)
    assert first.returncode == 1 and second.returncode == 1  # the exit status says some failed
    assert "1 of 3 runs failed" in first.stderr
    res = _results(tmp_path / "mr")
    by_lr = {r["config"]["optimizer"]["lr"]: (name, r) for name, r in res.items()}
    assert by_lr[1e-3][1]["status"] == by_lr[1e-2][1]["status"] == "ok"
    diverged = by_lr[1e30][1]
    assert diverged["status"] == "failed" and diverged["error_kind"] == "diverged"
    assert "training diverged: non-finite" in diverged["error"] and "at optimisation step" in diverged["error"]
    raised = by_lr[2e-3][1]
    assert raised["status"] == "failed" and "injected failure after step 20" in raised["error"]
    assert "helpers.py" in (tmp_path / "mr" / by_lr[2e-3][0] / "traceback.txt").read_text()
    report = (tmp_path / "mr" / "report" / "report.md").read_text()
    assert "training diverged" in report and "injected failure" in report

    stamps = {name: r["finished"] for name, r in res.items()}
    time.sleep(1.1)
    rerun = sweep("1e-3,1e-2,1e30")
    assert rerun.returncode == 1 and "1 of 1 runs failed" in rerun.stderr  # only the failed job ran
    after = _results(tmp_path / "mr")
    for lr in (1e-3, 1e-2):  # finished jobs were skipped, their results untouched
        assert after[by_lr[lr][0]]["finished"] == stamps[by_lr[lr][0]]
    assert after[by_lr[1e30][0]]["finished"] != stamps[by_lr[1e30][0]]
    forced = sweep("1e-3", "resume=false")
    assert forced.returncode == 0
    assert _results(tmp_path / "mr")[by_lr[1e-3][0]]["finished"] != stamps[by_lr[1e-3][0]]


def test_same_config_and_seed_give_identical_metrics(tmp_path):
    cfg = make_cfg("experiment=fast", "loss=mdn", "loop.batch_size=32", "logger=none", "figures=false")
    a = run_job(cfg, tmp_path / "a")
    b = run_job(cfg, tmp_path / "b")
    metrics = lambda r: {k: v for k, v in r["metrics"].items() if k not in EXECUTION_METRICS}  # noqa: E731
    assert a["status"] == "ok" and metrics(a) == metrics(b) and a["curves"] == b["curves"]
    c = run_job(make_cfg("experiment=fast", "loss=mdn", "loop.batch_size=32", "logger=none", "figures=false", "seed=1"), tmp_path / "c")
    assert metrics(c)["nll"] != metrics(a)["nll"]
