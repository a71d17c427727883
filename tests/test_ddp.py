"""DDP on CPU with gloo: two processes give the results of one, rank 0 alone writes, and DDP inside
a multirun is refused before anything trains. Also the submitit preset, on its local executor."""

import importlib.util
import json
import shutil

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import run_cli

pytestmark = pytest.mark.slow

# float64 so that the two reductions (one full batch; two half batches whose gradients DDP averages)
# agree to round-off; 128 training rows split evenly over the two ranks
COMMON = ["experiment=fast", "trainer.precision=64-true", "figures=false"]
COMPARED = ["nll", "crps", "mace", "rmse", "coverage90", "oracle_nll", "kl_truth", "sharpness", "interval_score"]


@pytest.fixture(scope="module")
def single_and_ddp(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    single = run_cli([*COMMON, f"hydra.run.dir={tmp}/single"], cwd=tmp)
    assert single.returncode == 0, single.stderr[-3000:]
    # fresh: Lightning starts the second rank by rerunning the command line of this process
    ddp = run_cli([*COMMON, "trainer=ddp", "trainer.devices=2", f"hydra.run.dir={tmp}/ddp"], cwd=tmp, fresh=True)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    return tmp


def test_two_processes_match_one(single_and_ddp):
    one = json.loads((single_and_ddp / "single" / "result.json").read_text())
    two = json.loads((single_and_ddp / "ddp" / "result.json").read_text())
    assert one["status"] == two["status"] == "ok"
    assert two["labels"]["device"] == "cpux2" and two["train"]["steps_per_call"] == 1
    for key in COMPARED:
        assert two["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-9, abs=1e-12), key
    assert two["train"]["opt_steps"] == one["train"]["opt_steps"] == 40


def test_rank_zero_alone_writes(single_and_ddp):
    run = single_and_ddp / "ddp"
    assert len(list(run.rglob("result.json"))) == 1
    events = list(run.rglob("events.out.tfevents.*"))
    assert len({e.parent for e in events}) == 1
    ea = EventAccumulator(str(events[0].parent))
    ea.Reload()
    assert [e.step for e in ea.Scalars("curves/val/nll")] == [20, 40]  # one writer: no duplicate points


def test_ddp_inside_a_multirun_is_refused_before_training(tmp_path):
    proc = run_cli(["-m", "trainer=ddp", "seed=0,1", *COMMON, f"hydra.sweep.dir={tmp_path}/mr", "report.enabled=false"], cwd=tmp_path)
    assert proc.returncode == 1
    results = [json.loads(p.read_text()) for p in (tmp_path / "mr").rglob("result.json")]
    assert len(results) == 2  # no nested sweep started more jobs
    for r in results:
        assert r["status"] == "failed" and "cannot run inside a multirun" in r["error"] and "launcher=slurm" in r["error"]
        assert not r.get("metrics")
    assert not list((tmp_path / "mr").rglob("*.ckpt"))


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_torchrun_launches_the_ranks(tmp_path):
    import subprocess

    torchrun = shutil.which("torchrun")
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", "-m", "densbench", *COMMON, "trainer=ddp", "trainer.devices=2",
         f"hydra.run.dir={tmp_path}/run"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    assert res["status"] == "ok" and res["labels"]["device"] == "cpux2"


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
                    reason="hydra-submitit-launcher is not installed")
def test_submitit_preset_runs_a_job_locally(tmp_path):
    proc = run_cli(["-m", "launcher=submitit_local", "experiment=fast", f"hydra.sweep.dir={tmp_path}/mr", "report.enabled=false"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = [json.loads(p.read_text()) for p in (tmp_path / "mr").rglob("result.json")]
    assert result["status"] == "ok"
    assert list((tmp_path / "mr" / ".submitit").rglob("*_submitted.pkl"))


def test_slurm_preset_composes_with_cluster_settings():
    from densbench.config import compose_config

    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        pytest.skip("hydra-submitit-launcher is not installed")
    cfg = compose_config(["launcher=slurm", "trainer=ddp", "trainer.accelerator=gpu", "trainer.devices=4",
                          "trainer.num_nodes=2"], hydra_node=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
