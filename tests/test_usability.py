"""What a user sees and waits for: early refusal of bad configs, progress and closing lines, readable
run names, reports inside the sweep, timing, thread choice, file modes."""

import json
import math
import re
import os
import stat
import sys
from pathlib import Path

import pytest

from conftest import make_cfg, run_cli
from densbench.config import slug
from densbench.runs.devices import AUTO_THREADS_MIN_ROWS, threads
from densbench.runs.execution import run_job


def test_a_bad_value_is_refused_before_torch_is_imported(tmp_path):
    # a torch that cannot be imported: the refusal must come first
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('torch was imported')\n")
    env = {"PYTHONPATH": f"{fake.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = run_cli(["optimizer.lr=-1"], cwd=tmp_path, env=env, fresh=True)
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 1 and lines == ["densbench: optimizer.lr=-1 must be a positive number"]
    proc = run_cli(["loss=kl", "dataset=faithful"], cwd=tmp_path, env=env, fresh=True)
    assert proc.returncode == 1 and "densbench: incompatible: loss=kl trains on the true gaussian" in proc.stderr
    assert "torch was imported" not in proc.stderr


def test_a_run_prints_progress_and_ends_with_its_metrics_and_directory(tmp_path):
    proc = run_cli(["experiment=fast", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [x for x in proc.stderr.splitlines() if x.startswith("densbench:")]
    # not a terminal: plain lines, the last at the last validation, then the closing line
    assert "step 40/40 (100%)" in lines[-2] and "val_nll" in lines[-2] and "steps/s" in lines[-2]
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    assert lines[-1].startswith("densbench: ok  nll ") and f"nll {res['metrics']['nll']:.4g}" in lines[-1]
    assert lines[-1].endswith(f"->  {tmp_path}/run")
    again = run_cli(["experiment=fast", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert "densbench: reused an earlier ok result:" in again.stderr and "step " not in again.stderr


def test_a_sweep_counts_its_jobs_and_ends_with_a_table_and_its_report(tmp_path):
    proc = run_cli(["-m", "experiment=fast", "loss=kl,nll", "dataset=hetero_sine,faithful", "logger=none",
                    f"hydra.sweep.dir={tmp_path}/mr"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # loss=kl needs a true Gaussian p(y|x), which faithful does not have: skipped, and counted as such
    assert "densbench: [4/4] jobs done: 3 ok, 1 skipped" in proc.stderr
    table = proc.stderr.split("densbench: sweep results\n")[1]
    assert re.search(r"dataset=faithful__experiment=fast__logger=none__loss=nll +ok +nll ", table)
    assert re.search(r"dataset=faithful__experiment=fast__logger=none__loss=kl +skipped +incompatible", table)
    assert (tmp_path / "mr" / "report" / "report.md").exists()  # inside the sweep, not in the checkout
    assert f"report written to {tmp_path}/mr/report/report.md" in proc.stdout
    published = run_cli(["-m", "experiment=fast", "loss=nll", "logger=none", f"hydra.sweep.dir={tmp_path}/mr2",
                         f"report.dir={tmp_path}/published"], cwd=tmp_path)
    assert published.returncode == 0 and (tmp_path / "published" / "report.md").exists()


def test_long_run_names_keep_every_key_and_what_varies():
    common = ("dataset=csv,dataset.path=/data/projects/2026/some-long-folder/with/a/deep/layout/measurements_final_v3.csv,"
              "dataset.target=price,dataset.task=multiclass,head=categorical,loss=glm,model.hidden=[64,64],optimizer.lr=0.001,"
              "loop.max_steps=100000,loop.batch_size=512,")
    a, b = slug(common + "grad=analytic"), slug(common + "grad=autograd")
    assert a != b and a.endswith("grad=analytic") and b.endswith("grad=autograd")
    for name in (a, b):
        assert len(name) <= 240
        for key in ("dataset.path=", "dataset.target=price", "model.hidden=64,64", "loop.batch_size=512"):
            assert key in name
    assert slug("experiment=fast,loss=nll") == "experiment=fast__loss=nll"  # short names keep every character


def test_run_folders_separate_keys_one_way_and_hold_no_shell_special_character(tmp_path):
    # a list value keeps its commas but loses its brackets (shell globs); keys are always apart by "__"
    proc = run_cli(["-m", "experiment=fast", "loss=nll,kl", "logger=[tensorboard,csv]"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sweep = tmp_path / "multirun" / "experiment=fast__loss=nll,kl__logger=tensorboard,csv"
    jobs = sorted(p.name for p in sweep.iterdir() if (p / "result.json").exists())
    assert jobs == ["experiment=fast__logger=tensorboard,csv__loss=kl", "experiment=fast__logger=tensorboard,csv__loss=nll"]
    assert slug("dataset.path=/a/b__c.csv__loss=nll") == "dataset.path=-a-b_c.csv__loss=nll"


def test_threads_auto_uses_every_core_only_for_large_steps():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert threads(3, 10) == 3 and threads("auto", AUTO_THREADS_MIN_ROWS - 1) == 1
    assert threads("auto", AUTO_THREADS_MIN_ROWS) == cores


def test_result_json_says_where_the_time_went_and_is_readable_like_other_files(tmp_path):
    res = run_job(make_cfg("experiment=fast", "logger=none", "figures=true"), tmp_path)
    t = res["timing"]
    assert set(t) == {"startup_s", "train_s", "validation_s", "test_s", "figures_s", "total_s"}
    assert all(v >= 0 for v in t.values()) and t["train_s"] > 0 and t["test_s"] > 0 and t["figures_s"] > 0
    # the parts do not overlap: start-up ends where training starts
    assert t["total_s"] >= t["startup_s"] + t["train_s"] + t["validation_s"] + t["test_s"] + t["figures_s"]
    assert res["train"]["threads"] == 1  # 128 rows a step
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    mode = stat.S_IMODE(plain.stat().st_mode)
    for path in ("result.json", "checkpoints/last.ckpt", "checkpoints/best.ckpt", "predictive.png"):
        assert stat.S_IMODE((tmp_path / path).stat().st_mode) == mode, path


@pytest.mark.skipif(sys.platform != "linux", reason="the process start time comes from /proc")
def test_the_first_job_of_a_process_counts_its_start_up_from_the_interpreter(tmp_path):
    code = ("import sys; sys.path.insert(0, %r); from conftest import make_cfg; from densbench.runs.execution import run_job; "
            "print(run_job(make_cfg('experiment=fast', 'logger=none'), %r)['timing']['startup_s'])") % (str(Path(__file__).parent), str(tmp_path))
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    startup = float(out.stdout.strip().splitlines()[-1])
    # the imports of torch and Lightning happened before the job started, and are counted
    assert startup > 0.3


def test_list_shows_losses_heads_the_pairs_that_fit_and_datasets_with_their_support(tmp_path):
    # every cell of the pairs table is what the torch-free check decides for that pair
    from densbench.runs.checks import Incompatible, check_config

    proc = run_cli(["list"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    header = lines.index(next(line for line in lines if line.strip().startswith("loss \\ head")))
    heads = lines[header].split()[3:]
    table = {}
    for line in lines[header + 1:]:
        if not line.strip():
            break
        name, *cells = line.split()
        table[name] = dict(zip(heads, cells))
    assert {"nll", "kl", "pinball"} <= set(table) and {"gaussian", "mixture", "lognormal"} <= set(heads)
    for loss, head in (("kl", "gaussian"), ("kl", "mixture"), ("pinball", "negbin"), ("faithful", "laplace")):
        try:
            check_config(make_cfg(f"loss={loss}", f"head={head}", "dataset=hetero_sine" if head != "negbin" else "dataset=sine_poisson"))
            fits = "yes"
        except Incompatible:
            fits = "-"
        assert table[loss][head] == fits, (loss, head)
    rows = {line.split()[0]: line.split() for line in lines if line.startswith("  sine_lognormal") or line.startswith("  doctorvisits")}
    assert rows["sine_lognormal"][1:4] == ["regression", "3500", "positive"]
    assert rows["doctorvisits"][1:4] == ["count", "5190", "counts"]
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_recalibrated_runs_last_line_shows_its_scores_as_trained_beside_the_recalibrated(tmp_path):
    proc = run_cli(["experiment=fast", "recalibrate=isotonic", "logger=none", "figures=false", f"hydra.run.dir={tmp_path}/run"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    after, before = res["metrics"]["nll"], res["metrics_uncalibrated"]["nll"]
    assert f"densbench: ok  nll {after:.4g} (as trained {before:.4g})" in proc.stderr.strip().splitlines()[-1]


def test_early_stopping_is_on_by_default_and_the_last_line_says_where_a_run_stopped(tmp_path):
    # doctorvisits' negative binomial overfits 128 rows within a few hundred steps: the default patience
    # (10 validations) ends it long before 2000 steps, and the line a user reads says so
    proc = run_cli(["experiment=fast", "dataset=doctorvisits", "head=negbin", "loop.max_steps=2000", "loop.eval_every=10",
                    "logger=none", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    train = json.loads((tmp_path / "run" / "result.json").read_text())["train"]
    assert train["stopped_early"] and train["opt_steps"] < 2000
    assert f"(stopped early at step {train['opt_steps']} of 2000)" in proc.stderr.strip().splitlines()[-1]


def test_the_uci_protocol_and_the_documents_train_their_published_steps_without_early_stopping():
    from densbench.config import compose_config

    assert compose_config([]).loop.early_stopping_patience == 10
    for experiment in ("uci_concrete", "glm_doc", "mdn_doc", "hetero_doc"):
        assert compose_config([f"experiment={experiment}"]).loop.early_stopping_patience is None, experiment


@pytest.mark.parametrize("args,line", [
    (["dataset=csv", "dataset.path=/no/such/file.csv"], "densbench: dataset.path='/no/such/file.csv': no such file"),
    (["dataset=concrete", "dataset.protocol=uci", "dataset.root=/no/such/folder"],
     "densbench: dataset.root=/no/such/folder: no concrete/data/data.txt there"),
    (["optimizer.lr=-1"], "densbench: optimizer.lr=-1 must be a positive number"),
    (["head=mixture", "loss=kl"], "densbench: incompatible: loss=kl compares Gaussians in closed form; head=mixture is "
                                  "not Gaussian; heads that fit loss=kl on regression data: gaussian,"),
])
def test_a_refused_run_says_why_in_one_line_before_torch_and_leaves_no_folder(tmp_path, args, line):
    # -X importtime lists every module imported: torch must not be among them
    import subprocess

    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "densbench", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    said = [x for x in proc.stderr.splitlines() if not x.startswith("import time:")]
    assert len(said) == 1 and said[0].startswith(line), said
    assert not any(x.split("|")[-1].strip() == "torch" for x in proc.stderr.splitlines() if x.startswith("import time:"))
    assert not list(tmp_path.iterdir())  # no outputs/ folder


def test_the_count_head_benchmark_times_a_whole_run_and_reads_its_step_time(tmp_path):
    # scripts/bench_counts.py on a small slice: one negbin run of 20 steps
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    try:
        import bench_counts
    finally:
        sys.path.pop(0)
    out = bench_counts.one_run(["head=negbin"], steps=20)
    assert out["wall_s"] > 0 and out["step_time_ms"] > 0 and math.isfinite(out["nll"])


def test_help_opens_with_the_commands_a_user_needs_first(tmp_path):
    proc = run_cli(["--help"], cwd=tmp_path, timeout=120, fresh=True)
    assert proc.returncode == 0
    first = proc.stdout.splitlines()
    assert first[0].startswith("densbench: ") and "powered by Hydra" not in proc.stdout
    for command in ("python -m densbench list", "python -m densbench -m loss=kl,nll,mdn", "python -m densbench.report"):
        assert any(line.strip().startswith(command) for line in first[:10]), command
    assert "loss: beta_nll, crps" in proc.stdout  # Hydra's list of every group's options follows


def test_the_family_benchmark_scores_every_head_on_the_same_splits(tmp_path):
    # scripts/bench_families.py on a slice: two heads, two splits, 20 steps
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    try:
        import bench_families
    finally:
        sys.path.pop(0)
    scores, seconds = bench_families.sweep("gasolineyield", ["head=gaussian", "head=beta"], 2, tmp_path,
                                           ("loop.max_steps=20", "loop.eval_every=10"))
    assert sorted(scores) == ["beta", "gaussian"] and seconds > 0
    assert all(len(s["nll"]) == 2 and all(math.isfinite(v) for v in s["nll"] + s["crps"]) for s in scores.values())
    rows = bench_families.table("gasolineyield", scores)
    assert len(rows) == 2 and sum(r.count("**") for r in rows) == 4  # the best NLL and the best CRPS, each bold
