"""The real command in a subprocess: the headline sweep writes results, events and a report."""

import csv
import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def headline_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    proc = run_cli(
        ["-m", "loss=kl,nll,mdn", "experiment=fast", "figures=true", f"hydra.sweep.dir={tmp}/multirun"],
        cwd=tmp,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, proc


def _results(tmp):
    found = [(p.parent, json.loads(p.read_text())) for p in (tmp / "multirun").rglob("result.json")]
    # keyed by the swept loss, from the run directory's name (loss=mdn is the NLL objective with a mixture head)
    return {d.name.split("loss=")[-1]: (d, res) for d, res in found}


def test_one_ok_result_per_job(headline_sweep):
    tmp, _ = headline_sweep
    results = _results(tmp)
    assert sorted(results) == ["kl", "mdn", "nll"]
    for name, (run_dir, res) in results.items():
        assert res["status"] == "ok", res.get("error")
        assert run_dir.name.endswith(f"loss={name}")  # run directories are named after the job's overrides
        assert (res["labels"]["loss"], res["labels"]["head"]) == {"kl": ("kl", "gaussian"), "nll": ("nll", "gaussian"),
                                                                   "mdn": ("nll", "mixture")}[name]
        m = res["metrics"]
        for key in ("nll", "rmse", "oracle_nll", "kl_truth", "crps", "mace", "coverage90", "sharpness", "train_samples_per_s"):
            assert isinstance(m[key], float)
        assert len(res["curves"]["pit_hist"]) == 20 and len(res["curves"]["calibration_observed"]) == 100
        assert (run_dir / "predictive.png").exists() and (run_dir / "calibration.png").exists()
        # NLL minus oracle NLL equals the mean KL(true || predicted) up to sampling noise
        assert m["nll_gap"] == pytest.approx(m["nll"] - m["oracle_nll"])
        assert m["kl_truth"] > 0
        assert res["wall_time_s"] > 0 and res["train"]["opt_steps"] == res["train"]["max_steps"] == 40
        assert res["train"]["model_selection"].startswith("best val/nll")


def test_tensorboard_events_have_the_tags(headline_sweep):
    from tensorboard.plugins.hparams import metadata

    tmp, _ = headline_sweep
    sessions = {}
    for run, (run_dir, _) in _results(tmp).items():
        ea = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0})
        ea.Reload()
        tags = ea.Tags()
        for tag in ("train/loss", "val/nll", "test/nll", "test/rmse", "test/oracle_nll", "test/kl_truth"):
            assert tag in tags["scalars"], (run, tag)
        assert not [t for t in tags["scalars"] if t.startswith("hp/")]  # the final metrics are written once, as test/
        assert [e.step for e in ea.Scalars("val/nll")] == [20, 40]  # x-axis = optimisation steps
        assert {"predictive", "calibration"} <= set(tags["images"])
        hp = ea.PluginTagToContent("hparams")
        # no experiment summary: TensorBoard then builds the HParams table from the runs' sessions and
        # shows first the hyperparameters whose values differ between them (the swept loss and head)
        assert "_hparams_/experiment" not in hp and "_hparams_/session_start_info" in hp
        sessions[run] = dict(metadata.parse_session_start_info_plugin_data(hp["_hparams_/session_start_info"]).hparams)
    values = {key: {str(s[key]) for s in sessions.values()} for key in ("loss", "head", "lr", "dataset")}
    assert len(values["loss"]) == 2 and len(values["head"]) == 2  # kl/nll, gaussian/mixture: they differ
    assert len(values["lr"]) == 1 and len(values["dataset"]) == 1


def test_report_written_after_the_sweep(headline_sweep):
    tmp, _ = headline_sweep
    report = tmp / "multirun" / "report" / "report.md"
    text = report.read_text()
    assert "| hetero_sine | gaussian | kl |" in text and "| hetero_sine | mixture | nll |" in text
    assert (tmp / "multirun" / "report" / "summary.csv").read_text().count("\n") == 4


def test_a_loss_by_head_grid_runs_every_valid_pair_and_skips_the_rest(tmp_path):
    proc = run_cli(["-m", "experiment=fast", "logger=none", "loss=nll,beta_nll,crps,faithful",
                    "head=gaussian,gaussian_natural,student_t,laplace", f"hydra.sweep.dir={tmp_path}/mr"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in (tmp_path / "mr").rglob("result.json")]
    status = {(r["labels"]["loss"], r["labels"]["head"]): r for r in results}
    assert len(status) == 16 and not [r for r in results if r["status"] == "failed"]
    assert sum(r["status"] == "ok" for r in results) >= 12
    skipped = [k for k, r in status.items() if r["status"] == "skipped"]
    assert skipped == [("faithful", "gaussian_natural")] and "has none" in status[skipped[0]]["error"]
    rows = list(csv.DictReader(open(tmp_path / "mr" / "report" / "summary.csv")))
    assert sorted((r["loss"], r["head"]) for r in rows) == sorted(k for k, r in status.items() if r["status"] == "ok")
    report = (tmp_path / "mr" / "report" / "report.md").read_text()
    assert "| skipped | incompatible: loss=faithful trains a `loc` output by squared error; head=gaussian_natural has none |" in report
