"""Devices and launchers as sweep axes: a GPU job without a GPU is skipped, parallel sweeps run,
torch.compile is an option, and every run records its throughput."""

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import make_cfg, run_cli
from densbench.runs.execution import run_job

pytestmark = pytest.mark.slow


def _results(root):
    return [json.loads(p.read_text()) for p in root.rglob("result.json")]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_gpu_job_is_skipped_and_the_sweep_goes_on(tmp_path):
    proc = run_cli(["-m", "trainer=cpu,gpu", "experiment=fast", f"hydra.sweep.dir={tmp_path}/mr"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    by_device = {r["labels"]["device"]: r for r in _results(tmp_path / "mr")}
    assert by_device["cpu"]["status"] == "ok"
    assert by_device["gpu"]["status"] == "skipped" and "needs 1 CUDA device(s); this machine has 0" in by_device["gpu"]["error"]
    assert "| skipped | trainer.accelerator=gpu needs 1 CUDA device(s)" in (tmp_path / "mr" / "report" / "report.md").read_text()


def test_parallel_launcher_runs_jobs_in_worker_processes(tmp_path):
    proc = run_cli(["-m", "loss=kl,nll", "experiment=fast", "launcher=parallel", "hydra.launcher.n_jobs=2",
                    f"hydra.sweep.dir={tmp_path}/mr"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = _results(tmp_path / "mr")
    assert sorted(r["labels"]["loss"] for r in results) == ["kl", "nll"]
    assert all(r["status"] == "ok" and r["config"]["loop"]["threads"] == 1 for r in results)
    assert (tmp_path / "mr" / "report" / "report.md").exists()
    # the count is the sweep's, not each worker's own
    counts = [line for line in proc.stderr.splitlines() if "jobs done" in line]
    assert [c.rsplit(", ", 1)[0] for c in counts] == ["densbench: [1/2] jobs done: 1 ok", "densbench: [2/2] jobs done: 2 ok"]


def test_throughput_recorded_in_result_and_tensorboard(tmp_path):
    res = run_job(make_cfg("experiment=fast", "loop.max_steps=60"), tmp_path)
    m = res["metrics"]
    # 3 evaluation periods of 20 steps; the first is warm-up, so 40 timed steps of 128 samples
    assert m["train_steps_per_s"] > 0 and m["train_samples_per_s"] == pytest.approx(128 * m["train_steps_per_s"])
    assert m["step_time_ms"] == pytest.approx(1e3 / m["train_steps_per_s"])
    assert m["eval_samples_per_s"] > 0 and m["peak_memory_mb"] > 10
    ea = EventAccumulator(str(tmp_path / "tb"))
    ea.Reload()
    assert {"throughput/train_samples_per_s", "throughput/peak_memory_mb"} <= set(ea.Tags()["scalars"])


@pytest.mark.parametrize("grad", ["autograd", "analytic"])
def test_compile_option_trains_to_the_same_result(tmp_path, grad):
    eager = run_job(make_cfg("experiment=fast", f"grad={grad}", "trainer.precision=64-true", "logger=none"), tmp_path / "eager")
    compiled = run_job(make_cfg("experiment=fast", f"grad={grad}", "trainer.precision=64-true", "logger=none", "loop.compile=true"),
                       tmp_path / "compiled")
    assert compiled["status"] == "ok", compiled.get("error")
    assert compiled["metrics"]["nll"] == pytest.approx(eager["metrics"]["nll"], rel=1e-6)
