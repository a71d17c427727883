"""Results that can be trusted: exact resume from any interrupt, a record at every stage, atomic and
checked checkpoints, one process per run directory, and reuse only of results of the same config,
code and data."""

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_cfg, run_cli
from densbench import provenance
from densbench.training import checkpoints
from densbench.runs.checks import check_config
from densbench.results import EXECUTION_METRICS
from densbench.runs.outcome import flags
from densbench.runs.execution import run_job
from densbench.signals import Interrupted

TESTS = str(Path(__file__).parent)
# eval_every is not a multiple of steps_per_call: periods [0, 53), [53, 106), ... and chunks
# [53, 103), [103, 106): step 75 lies inside a chunk
# checkpoint_every_s=0: last.ckpt after every validation, so a kill finds the last period's state
LOOP = ["experiment=fast", "loop.max_steps=160", "loop.eval_every=53", "loop.steps_per_call=50",
        "loop.batch_size=32", "loop.checkpoint_every_s=0", "logger=none", "figures=false"]


def _signal_args(marker, sig="SIGINT", step=75):
    return ["+callbacks.sig._target_=helpers.SignalAtStep", f"+callbacks.sig.step={step}", f"+callbacks.sig.signal={sig}",
            f"+callbacks.sig.marker={marker}"]


@pytest.fixture
def on_path(monkeypatch):
    monkeypatch.syspath_prepend(TESTS)


def _numbers(res):
    """Everything a run computes (not how fast): metrics, curves, step counts."""
    return ({k: v for k, v in res["metrics"].items() if k not in EXECUTION_METRICS}, res["curves"],
            {k: res["train"][k] for k in ("opt_steps", "best_val_nll", "last_val_nll")})


def _read(run_dir):
    return json.loads((Path(run_dir) / "result.json").read_text())


@pytest.fixture
def reference(tmp_path, on_path):
    """The uninterrupted run of the config the interrupt tests use (its marker exists: no signal)."""
    marker = tmp_path / "marker"
    marker.write_text("already")
    args = LOOP + _signal_args(marker)
    res = run_job(make_cfg(*args), tmp_path / "reference")
    assert res["status"] == "ok" and res["train"]["opt_steps"] == 160
    marker.unlink()
    return args, marker, res


def test_sigint_inside_a_chunk_resumes_bit_for_bit(tmp_path, reference, capsys):
    args, marker, ref = reference
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        run_job(make_cfg(*args), run)
    res = _read(run)
    assert res["status"] == "interrupted" and "interrupted by SIGINT while training" in res["error"]
    assert "kept" in res["error"] and "rerun the same command to resume" in res["error"]
    assert capsys.readouterr().err.count("densbench: interrupted by SIGINT") == 1
    # the signal came during step 75; the step finished, the next did not start
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["engine"]["opt_steps"] == 76
    again = run_job(make_cfg(*args), run)
    assert again["status"] == "ok" and again["resumed_from_step"] == 76
    assert _numbers(again) == _numbers(ref)


@pytest.mark.slow
@pytest.mark.parametrize("sig,code,resumed_at", [("SIGTERM", 128 + 15, 76), ("SIGKILL", -9, 53)])
def test_signal_or_kill_in_a_subprocess_resumes_bit_for_bit(tmp_path, reference, sig, code, resumed_at):
    args, marker, ref = reference
    cli = [a for a in args if not a.startswith("+callbacks.sig.signal")] + [f"+callbacks.sig.signal={sig}",
                                                                              f"hydra.run.dir={tmp_path}/run"]
    first = run_cli(cli, cwd=tmp_path, env={"PYTHONPATH": TESTS})
    assert first.returncode == code, first.stderr[-2000:]
    if sig == "SIGTERM":
        lines = [x for x in first.stderr.splitlines() if x.startswith("densbench: interrupted")]
        assert len(lines) == 1 and "while training" in lines[0] and "last.ckpt" in lines[0]
    else:  # killed outright: nothing ran after the signal, the last period's checkpoint remains
        assert not (tmp_path / "run" / "result.json").exists()
    second = run_cli(cli, cwd=tmp_path, env={"PYTHONPATH": TESTS})
    assert second.returncode == 0, second.stderr[-2000:]
    res = _read(tmp_path / "run")
    assert res["status"] == "ok" and res["resumed_from_step"] == resumed_at
    assert f"(resumed from step {resumed_at})" in second.stderr.strip().splitlines()[-1]  # the last line says so
    assert _numbers(res) == _numbers(ref)


def _send_sigterm(*_, **__):
    os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("target,stage", [("densbench.data.datasets.load", "loading data"), ("densbench.runs.outcome.write_figures", "writing figures")])
def test_a_signal_at_any_stage_leaves_a_record(tmp_path, monkeypatch, capsys, target, stage):
    args = ["experiment=fast", "logger=none", "figures=true"]
    module, name = target.rsplit(".", 1)
    original = getattr(__import__(module, fromlist=[name]), name)

    def signalled(*a, **k):
        _send_sigterm()
        return original(*a, **k)

    monkeypatch.setattr(target, signalled)
    with pytest.raises(Interrupted):
        run_job(make_cfg(*args), tmp_path / "run")
    res = _read(tmp_path / "run")
    assert res["status"] == "interrupted" and f"SIGTERM while {stage}" in res["error"]
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("densbench: interrupted")]
    assert len(err) == 1
    if stage == "writing figures":  # training had finished: its final state is kept and reused
        assert "kept" in res["error"]
        monkeypatch.setattr(target, original)
        again = run_job(make_cfg(*args), tmp_path / "run")
        clean = run_job(make_cfg(*args), tmp_path / "clean")
        assert again["status"] == "ok" and again["resumed_from_step"] == 40
        assert (tmp_path / "run" / "predictive.png").exists()
        assert _numbers(again) == _numbers(clean)
    else:
        assert "nothing to keep yet" in res["error"]


@pytest.mark.parametrize("damage", ["truncate", "empty"])
def test_a_damaged_checkpoint_is_reported_in_one_line_and_the_run_restarts(tmp_path, reference, damage, capsys):
    args, marker, ref = reference
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        run_job(make_cfg(*args), run)
    ckpt = run / "checkpoints" / "last.ckpt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"")
    capsys.readouterr()
    again = run_job(make_cfg(*args), run)
    err = capsys.readouterr().err
    assert again["status"] == "ok" and again["resumed_from_step"] is None
    why = "it cannot be read" if damage == "truncate" else "the file is empty"
    assert f"densbench: ignoring {ckpt}: {why}" in err and "the run starts over" in err
    assert _numbers(again) == _numbers(ref)


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, reference, monkeypatch):
    args, marker, ref = reference
    marker.write_text("no signal in this test")
    real_save, calls = torch.save, []

    def full_disk(obj, f, *a, **k):
        calls.append(1)
        if len(calls) == 2:  # the second periodic checkpoint: half written, then the disk is full
            import io

            buf = io.BytesIO()
            real_save(obj, buf, *a, **k)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(checkpoints.torch, "save", full_disk)
    run = tmp_path / "run"
    res = run_job(make_cfg(*args), run)
    assert res["status"] == "failed" and "No space left on device" in res["error"]
    assert not list((run / "checkpoints").glob(".*.tmp"))  # no temporary left behind
    path = run / "checkpoints" / "last.ckpt"
    kept = checkpoints.load(path, torch.load(path, weights_only=False)["key"])  # reads back whole
    assert kept["engine"]["opt_steps"] == 53  # the first period's checkpoint, intact
    monkeypatch.setattr(checkpoints.torch, "save", real_save)
    again = run_job(make_cfg(*args), run)
    assert again["status"] == "ok" and again["resumed_from_step"] == 53
    assert _numbers(again) == _numbers(ref)


def test_last_checkpoint_follows_every_period_not_only_the_best(tmp_path):
    # lr so high that validation NLL gets worse after the first period: "last" must still move on
    res = run_job(make_cfg(*LOOP, "optimizer.lr=0.5"), tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["engine"]["opt_steps"] == res["train"]["opt_steps"] == 160
    assert json.loads(state["engine"]["history"])[0]["step"] == [53, 106, 159, 160]  # one model's history
    assert len(res["curves"]["train_val_nll"]) == 4


def test_checkpoints_after_validation_are_throttled_but_the_final_state_is_kept(tmp_path, monkeypatch):
    from densbench.training import checkpoints
    written = []
    original = checkpoints.save_atomic

    def save(obj, path):
        if path.name == checkpoints.LAST:
            written.append(obj["engine"]["opt_steps"])
        return original(obj, path)

    monkeypatch.setattr(checkpoints, "save_atomic", save)
    every = [a for a in LOOP if not a.startswith("loop.checkpoint_every_s")]
    assert run_job(make_cfg(*every, "loop.checkpoint_every_s=0"), tmp_path / "each")["status"] == "ok"
    assert written == [53, 106, 159, 160]
    written.clear()
    res = run_job(make_cfg(*every, "loop.checkpoint_every_s=1e9"), tmp_path / "throttled")
    assert written == [160] and res["status"] == "ok"  # only the end of training


def _csv(path, rows):
    path.write_text("x,y\n" + "".join(f"{a},{b}\n" for a, b in rows))


def test_a_result_is_reused_only_for_the_same_config_code_and_data(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data.csv"
    _csv(data, [(i / 10, 2 * i / 10 + (i % 3) / 5) for i in range(200)])
    cfg = make_cfg("experiment=fast", "dataset=csv", f"dataset.path={data}", "dataset.target=y", "logger=none")
    first = run_job(cfg, tmp_path / "run")
    prov = first["provenance"]
    assert prov["source_hash"] and prov["data_hash"] and prov["data_source"] == [str(data.resolve())]
    assert prov["version"] and prov["versions"]["torch"] and prov["git_commit"] and isinstance(prov["git_dirty"], bool)
    assert run_job(cfg, tmp_path / "run")["resumed"].startswith("reused")
    # the same file name with other numbers in it: retrained, and says why
    _csv(data, [(i / 10, -3 * i / 10) for i in range(200)])
    capsys.readouterr()
    second = run_job(cfg, tmp_path / "run")
    assert "resumed" not in second and second["metrics"]["nll"] != first["metrics"]["nll"]
    assert f"densbench: rerunning {tmp_path / 'run'}: the data changed since the earlier result" in capsys.readouterr().err
    assert second["provenance"]["data_hash"] != prov["data_hash"]
    # other code: retrained as well
    real = provenance.code_revision()
    monkeypatch.setattr("densbench.runs.resume.provenance.code_revision", lambda: dict(real, source_hash="0" * 16))
    capsys.readouterr()
    third = run_job(cfg, tmp_path / "run")
    assert "resumed" not in third
    assert f"densbench: rerunning {tmp_path / 'run'}: the code changed since the earlier result" in capsys.readouterr().err


def test_flags_name_a_validation_nll_that_ran_away_and_finite_explosions():
    loop = check_config(make_cfg("experiment=fast")).loop
    out = {"train": {"best_val_nll": 0.5, "last_val_nll": 2.0}, "curves": {"train_train_loss": [1.0, 3.0e9]},
           "metrics": {"nll": 5e9, "rmse": 1e12, "crps": 0.2}}
    found = flags(loop, out)
    assert any(f.startswith("val_nll_rose: the last validation NLL 2 is more than 1 above the best 0.5") for f in found)
    assert "exploded: a period's mean training loss reached 3e+09 (above 1e+06)" in found
    assert "exploded: test nll is 5e+09 (above 1e+06)" in found and "exploded: test rmse is 1e+12 (above 1e+06)" in found
    calm = {"train": {"best_val_nll": 0.5, "last_val_nll": 0.9}, "curves": {"train_train_loss": [1.0, 0.5]},
            "metrics": {"nll": 0.4, "rmse": 1.0}}
    assert flags(loop, calm) == []
    # the thresholds are the checked loop settings of the run's config
    wide = check_config(make_cfg("experiment=fast", "loop.flag_margin=2", "loop.absurd_loss=1e13")).loop
    assert flags(wide, out) == []


@pytest.mark.parametrize("column,where", [("a", "feature column 'a'"), ("y", "target column 'y'")])
def test_values_whose_square_overflows_are_refused_by_column(tmp_path, column, where):
    from densbench.data import datasets as D
    rows = [(i, i + 1.0) for i in range(30)]
    rows[7] = (1e300, 8.0) if column == "a" else (7, 1e300)
    path = tmp_path / "x.csv"
    path.write_text("a,y\n" + "".join(f"{a},{b}\n" for a, b in rows))
    cfg = make_cfg("dataset=csv", f"dataset.path={path}", "dataset.target=y")
    with pytest.raises(D.DataError, match=rf"{where} holds 1e\+300 \(row 7\), too large to square in float32"):
        D.prepare(D.load(cfg.dataset), dtype="float32")


@pytest.mark.slow
def test_an_unwritable_output_directory_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    proc = run_cli(["experiment=fast", f"hydra.run.dir={blocker}/run"], cwd=tmp_path, timeout=120, fresh=True)
    assert proc.returncode == 2
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"densbench: cannot write to the output directory {blocker}/run")
    assert "hydra.run.dir=DIR" in lines[0]


@pytest.mark.slow
def test_two_identical_sweeps_at_once_run_every_job_once(tmp_path):
    # the sweep's HParams experiment, written into one run's folder: not a process that trained it
    from densbench.report.tb_experiment import FILE as DECLARATION

    args = [sys.executable, "-m", "densbench", "-m", "experiment=fast", "seed=0,1", "loop.max_steps=400",
            f"hydra.sweep.dir={tmp_path}/mr"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    procs = [subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1500:] for o in outs]
    runs = [p.parent for p in (tmp_path / "mr").rglob("result.json")]
    assert len(runs) == 2
    for run in runs:
        # event file names end in host.pid.n: the processes that trained this run
        writers = {e.name.split(".")[-2] for e in (run / "tb").glob("events.out.tfevents.*") if e.name != DECLARATION}
        assert len(writers) == 1, f"{run} was trained by {len(writers)} processes"
        assert _read(run)["status"] == "ok"
    err = outs[0][1] + outs[1][1]
    assert err.count("densbench: reused an earlier ok result:") == 2  # each job: one trained it, the other reused it


@pytest.mark.parametrize("content", ['[{"status": "ok"}]', '"ok"', "null", "{"])
def test_a_result_file_that_is_not_a_json_object_is_rerun_not_a_crash(tmp_path, content):
    cfg = make_cfg("experiment=fast", "logger=none", "figures=false")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "result.json").write_text(content)
    res = run_job(cfg, tmp_path / "run")
    assert res["status"] == "ok" and "resumed" not in res
    assert isinstance(_read(tmp_path / "run"), dict)


@pytest.mark.slow
def test_a_sweep_reruns_a_job_whose_result_is_a_json_list_under_either_launcher(tmp_path):
    for launcher in ("basic", "stacked"):
        args = ["-m", "experiment=fast", "seed=0,1", f"launcher={launcher}", "logger=none", "figures=false",
                "report.enabled=false", f"hydra.sweep.dir={tmp_path}/{launcher}"]
        assert run_cli(args, cwd=tmp_path).returncode == 0
        damaged = sorted((tmp_path / launcher).rglob("result.json"))[0]
        damaged.write_text('[{"status":"ok"}]')
        again = run_cli(args, cwd=tmp_path)
        assert again.returncode == 0 and "AttributeError" not in again.stderr, again.stderr[-2000:]
        assert json.loads(damaged.read_text())["status"] == "ok"


def test_a_run_far_worse_than_predicting_the_training_mean_is_flagged_and_its_last_line_says_so():
    from types import SimpleNamespace

    import numpy as np

    from densbench.runs.outcome import trivial_scores
    from densbench.progress import run_line, sweep_table

    rng = np.random.default_rng(0)
    y = rng.normal(3.0, 2.0, size=(50, 1))
    data = SimpleNamespace(task="regression", y=y, train=np.arange(40), test=np.arange(40, 50))
    trivial = trivial_scores(data)
    m, s = y[:40].mean(), y[:40].std()
    ref = -torch.distributions.Normal(torch.tensor(m), torch.tensor(s)).log_prob(torch.as_tensor(y[40:])).mean().item()
    assert trivial["nll"] == pytest.approx(ref, rel=1e-12)
    assert trivial["rmse"] == pytest.approx(float(np.sqrt(((y[40:] - m) ** 2).mean())), rel=1e-12)
    assert trivial_scores(SimpleNamespace(task="multiclass", y=y, train=data.train, test=data.test)) is None

    loop = check_config(make_cfg("experiment=fast")).loop
    base = {"train": {"best_val_nll": 1.0, "last_val_nll": 1.0}, "curves": {}, "trivial": trivial}
    # the case: finite, below every absolute threshold for NLL, yet RMSE 4.7e5 on targets of order 1
    bad = {**base, "metrics": {"nll": 857.0, "rmse": 4.7e5}}
    found = flags(loop, bad)
    assert any(f.startswith("worse_than_trivial: test rmse 4.7e+05 is more than 10x") for f in found)
    assert any(f.startswith("worse_than_trivial: test nll 857 is more than 10 nats above") for f in found)
    assert flags(loop, {**base, "metrics": {"nll": trivial["nll"] - 0.5, "rmse": trivial["rmse"] / 2}}) == []
    result = {"status": "ok", "metrics": bad["metrics"], "flags": found, "timing": {"total_s": 1.0}}
    line = run_line(result, "out/run")
    assert line.startswith("densbench: flagged (worse_than_trivial: test rmse") and " ok " not in line
    assert "flagged" in sweep_table([("run", result)]) and "flagged" not in sweep_table([("run", {**result, "flags": []})])


def test_the_csv_logger_keeps_the_rows_before_an_interrupt_when_the_run_resumes(tmp_path, reference):
    import csv

    args, marker, _ = reference
    args = [a for a in args if a != "logger=none"] + ["logger=csv"]

    def rows(run):
        with open(run / "csv" / "metrics.csv", newline="") as f:
            return [{k: v for k, v in r.items() if v != "" and not k.startswith("throughput")} for r in csv.DictReader(f)]

    marker.write_text("already")
    whole = tmp_path / "whole"
    assert run_job(make_cfg(*args), whole)["status"] == "ok"
    marker.unlink()
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        run_job(make_cfg(*args), run)
    assert run_job(make_cfg(*args), run)["resumed_from_step"] == 76
    got, want = rows(run), rows(whole)
    steps = lambda rs: sorted(int(float(r["step"])) for r in rs)  # noqa: E731
    assert steps(got) == steps(want) and len(got) > 0
    key = lambda r: (int(float(r["step"])), sorted(r))  # noqa: E731
    for g, w in zip(sorted(got, key=key), sorted(want, key=key)):
        assert g.keys() == w.keys()
        assert all(float(g[k]) == float(w[k]) for k in g if "time" not in k and "per_s" not in k and "ms" not in k)


@pytest.mark.parametrize("launcher", ["basic", "stacked"])
def test_an_interrupted_mlflow_run_resumes_into_the_same_mlflow_run(tmp_path, on_path, launcher):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    from mlflow.tracking import MlflowClient

    marker = tmp_path / "marker"
    args = ["-m", *[a for a in LOOP if a != "logger=none"], "logger=mlflow", "seed=0,1", f"launcher={launcher}",
            "report.enabled=false", f"hydra.sweep.dir={tmp_path}/mr", *_signal_args(marker)]
    first = run_cli(args, cwd=tmp_path, env={"PYTHONPATH": TESTS})
    assert first.returncode != 0 and "interrupted by SIGINT" in first.stderr
    marker.write_text("already")  # no signal the second time
    second = run_cli(args, cwd=tmp_path, env={"PYTHONPATH": TESTS})
    assert second.returncode == 0, second.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mr' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    results = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "mr").rglob("result.json")}
    assert sorted(r.info.run_name for r in runs) == sorted(results)  # one MLflow run per job, none left RUNNING
    assert all(r.info.status == "FINISHED" for r in runs)
    resumed = [r for r in results.values() if r.get("resumed_from_step")]
    assert resumed
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/nll")]
        assert steps == results[run.info.run_name]["curves"]["train_step"]  # every validation, once


def test_a_signal_while_a_run_starts_is_one_line_and_an_interrupted_record(tmp_path):
    # once Hydra has made the run directory, the task imports torch and Lightning for seconds (a signal
    # there is honoured when the import ends); any later stage must give the same
    import time

    proc = subprocess.Popen([sys.executable, "-m", "densbench", "experiment=fast", f"hydra.run.dir={tmp_path}/run"],
                            cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    while not (tmp_path / "run" / ".hydra" / "overrides.yaml").exists() and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.3)  # past Hydra's last steps before the task (a signal there is one line, with no record yet)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err and err.count("densbench: interrupted by SIGTERM") == 1, err[-2000:]
    assert _read(tmp_path / "run")["status"] == "interrupted"


def test_a_signal_while_the_sweeps_report_is_written_is_one_line(tmp_path):
    proc = run_cli(["-m", "experiment=fast", "seed=0,1", "logger=none", "figures=false", f"hydra.sweep.dir={tmp_path}/mr",
                    "+hydra.callbacks.sig._target_=helpers.SignalWhileReporting"], cwd=tmp_path, env={"PYTHONPATH": TESTS})
    assert proc.returncode == 128 + signal.SIGINT
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("densbench: interrupted by SIGINT while writing the sweep's report")
    assert all(_read(p.parent)["status"] == "ok" for p in (tmp_path / "mr").rglob("result.json"))  # the runs are kept


def _alive(pid: int) -> bool:
    """A process that runs (a zombie left for a container's init to reap has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_to_a_parallel_sweep_reaches_its_workers_which_record_and_go(tmp_path):
    # a worker sends SIGTERM to the sweep's own process from inside its step 30: the parent passes it on,
    # the running jobs stop at a step boundary with their records and checkpoints, the queued one stays
    # unrun, no worker outlives the sweep, and the same command then finishes every job
    args = ["-m", "experiment=fast", "seed=0,1,2", "loop.max_steps=3000", "logger=none", "figures=false",
            "launcher=parallel", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path}/mr",
            *_signal_args(tmp_path / "signalled", "SIGTERM", step=30), "+callbacks.sig.parent=true"]
    first = run_cli(args, cwd=tmp_path, env={"PYTHONPATH": TESTS})
    assert first.returncode == 128 + signal.SIGTERM, first.stderr[-2000:]
    assert "Traceback" not in first.stderr
    assert first.stderr.strip().splitlines()[-1].startswith("densbench: interrupted by SIGTERM while running the sweep")
    records = {p.parent.name: _read(p.parent) for p in (tmp_path / "mr").rglob("result.json")}
    assert records and all(r["status"] == "interrupted" for r in records.values())  # none trained on to its end
    kept = [r for r in records.values() if "kept " in r["error"]]
    assert kept and all(Path(r["error"].split("kept ")[1].split(";")[0]).exists() for r in kept)
    assert len(records) < 3  # the third job never started
    for pid in {int(p) for p in (tmp_path / "signalled.pids").read_text().split()}:  # the processes that trained
        assert not _alive(pid), f"worker {pid} outlived the sweep"
    second = run_cli(args, cwd=tmp_path, env={"PYTHONPATH": TESTS})
    assert second.returncode == 0, second.stderr[-2000:]
    again = {p.parent.name: _read(p.parent) for p in (tmp_path / "mr").rglob("result.json")}
    assert len(again) == 3 and all(r["status"] == "ok" for r in again.values())
    assert all(again[name].get("resumed_from_step") for name, r in records.items() if "kept " in r["error"])


def _report_command_with(monkeypatch, capsys, sweep, write_report):
    """`python -m densbench.report SWEEP` in this process with report.write_report replaced: (exit code, stderr)."""
    from densbench.report import sweep as report
    previous = signal.getsignal(signal.SIGINT)  # the command installs its own handlers
    monkeypatch.setattr(report, "write_report", write_report)
    try:
        with pytest.raises(SystemExit) as code:
            report.main([str(sweep)])
    finally:
        signal.signal(signal.SIGINT, previous)
    return code.value.code, capsys.readouterr().err.strip()


def test_a_signal_or_a_read_only_folder_in_the_report_command_is_one_line(tmp_path, monkeypatch, capsys):
    from densbench.report import sweep as report
    sweep = tmp_path / "mr"
    assert run_cli(["-m", "experiment=fast", "seed=0", "logger=none", "figures=false", "report.enabled=false",
                    f"hydra.sweep.dir={sweep}"], cwd=tmp_path).returncode == 0
    original = report.write_report

    def signalled(*args, **kw):
        os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kw)

    def read_only(sweep_dir, out, *args, **kw):  # as a read-only file system answers (root ignores chmod)
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(Path(out) / "report.md"))

    code, err = _report_command_with(monkeypatch, capsys, sweep, signalled)
    assert code == 128 + signal.SIGINT
    assert err == ("densbench: interrupted by SIGINT while writing the report; files written so far are whole; "
                   "rerun the same command to resume")
    code, err = _report_command_with(monkeypatch, capsys, sweep, read_only)
    assert code == 1 and "\n" not in err
    assert err == f"densbench: the report could not be written: Read-only file system: {sweep / 'report' / 'report.md'}"

def test_a_job_whose_run_directory_cannot_be_written_fails_alone_in_one_line(tmp_path, monkeypatch, capsys):
    from densbench.runs import resume
    from densbench.runs.execution import JobSpec, run_group

    real = resume.locked
    full = tmp_path / "full"

    def locked(run_dir, announce=print):
        if run_dir == full:  # as a full disk answers when the lock file is created
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(run_dir / ".lock"))
        return real(run_dir, announce)

    monkeypatch.setattr(resume, "locked", locked)
    cfgs = [make_cfg("experiment=fast", f"seed={s}", "logger=none", "figures=false") for s in (0, 1)]
    out = run_group([JobSpec(cfgs[0], full, launcher="stacked"), JobSpec(cfgs[1], tmp_path / "fine", launcher="stacked")])
    assert out[0]["status"] == "failed" and "No space left on device" in out[0]["error"]
    assert out[1]["status"] == "ok" and _read(tmp_path / "fine")["status"] == "ok"
    assert f"densbench: failed: OSError: No space left on device: {full / '.lock'}" in capsys.readouterr().err


@pytest.mark.parametrize("launcher", ["basic", "parallel", "stacked"])
def test_a_disk_error_in_hydras_record_of_one_job_fails_that_job_alone(tmp_path, launcher):
    # Hydra writes .hydra/hydra.yaml before the task runs; a directory in its place fails that open
    # as a full or read-only disk would (and does so for root too); the stacked launcher writes the
    # .hydra files after the job, whose own record stands
    blocked = tmp_path / "mr" / "experiment=fast__seed=1" / ".hydra" / "hydra.yaml"
    blocked.mkdir(parents=True)
    extra = {"parallel": ["launcher=parallel", "hydra.launcher.n_jobs=2"], "stacked": ["launcher=stacked"]}.get(launcher, [])
    proc = run_cli(["-m", "experiment=fast", "seed=0,1,2", *extra, f"hydra.sweep.dir={tmp_path}/mr"], cwd=tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    records = {p.parent.name: _read(p.parent)["status"] for p in (tmp_path / "mr").rglob("result.json")}
    assert (tmp_path / "mr" / "report" / "report.md").exists()  # the sweep went on to its end
    if launcher == "stacked":
        assert proc.returncode == 0 and records == {f"experiment=fast__seed={s}": "ok" for s in (0, 1, 2)}
        assert f"densbench: Hydra's record of the job was not written: Is a directory: {blocked}" in proc.stderr
        return
    assert proc.returncode == 1
    assert records == {"experiment=fast__seed=0": "ok", "experiment=fast__seed=2": "ok"}
    assert f"densbench: failed: IsADirectoryError: Is a directory: {blocked}  ->  {blocked.parent.parent}" in proc.stderr
    assert "densbench: 1 job could not write a record (IsADirectoryError: Is a directory" in proc.stderr


def test_a_full_disk_while_the_sweeps_report_is_written_is_one_line(tmp_path):
    proc = run_cli(["-m", "experiment=fast", "seed=0,1", "logger=none", "figures=false", f"hydra.sweep.dir={tmp_path}/mr",
                    "+hydra.callbacks.disk._target_=helpers.FullDiskWhileReporting"], cwd=tmp_path, env={"PYTHONPATH": TESTS})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (f"densbench: the sweep's report could not be written: No space left on device: "
                                                    f"{tmp_path / 'mr' / 'report' / 'report.md'}")
    assert all(_read(p.parent)["status"] == "ok" for p in (tmp_path / "mr").rglob("result.json"))
