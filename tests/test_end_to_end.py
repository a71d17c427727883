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
        cwd=tmp, fresh=True,  # the README's main job, as a user starts it
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, proc


def _results(tmp):
    found = [(p.parent, json.loads(p.read_text())) for p in (tmp / "multirun").rglob("result.json")]
    # keyed by the swept loss, from the run directory's name
    return {d.name.split("loss=")[-1]: (d, res) for d, res in found}


def test_one_ok_result_per_job(headline_sweep):
    tmp, _ = headline_sweep
    results = _results(tmp)
    assert sorted(results) == ["kl", "mdn", "nll"]
    for name, (run_dir, res) in results.items():
        assert res["status"] == "ok", res.get("error")
        assert run_dir.name.endswith(f"loss={name}")  # run directories are named after the job's overrides
        assert (res["labels"]["loss"], res["labels"]["head"]) == {"kl": ("kl", "gaussian"), "nll": ("nll", "gaussian"),
                                                                   "mdn": ("mdn", "mixture")}[name]  # its own name
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
    sessions, declaring = {}, 0
    for run, (run_dir, _) in _results(tmp).items():
        ea = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0})
        ea.Reload()
        tags = ea.Tags()
        for tag in ("curves/train/loss", "curves/val/nll", "test/nll", "test/rmse", "test/oracle_nll", "test/kl_truth"):
            assert tag in tags["scalars"], (run, tag)
        assert not [t for t in tags["scalars"] if t.startswith("hp/")]  # the final metrics are written once, as test/
        assert [e.step for e in ea.Scalars("curves/val/nll")] == [20, 40]  # x-axis = optimisation steps
        assert {"predictive", "calibration"} <= set(tags["images"])
        # TensorBoard's Scalars page sorts its sections by name and opens the first: the curves'
        sections = sorted({t.split("/", 1)[0] for t in tags["scalars"]})
        assert sections[0] == "curves" and {"test", "throughput"} <= set(sections)
        hp = ea.PluginTagToContent("hparams")
        # a run declares only its session; the sweep declares the experiment, once for all of its runs, in one run's folder
        assert "_hparams_/session_start_info" in hp
        declaring += "_hparams_/experiment" in hp
        sessions[run] = dict(metadata.parse_session_start_info_plugin_data(hp["_hparams_/session_start_info"]).hparams)
    assert declaring == 1 and not list((tmp / "multirun").glob("*tfevents*"))  # none at the root: no run "."
    values = {key: {str(s[key]) for s in sessions.values()} for key in ("loss", "head", "lr", "dataset")}
    assert len(values["loss"]) == 3 and len(values["head"]) == 2  # kl/nll/mdn, gaussian/mixture: they differ
    assert len(values["lr"]) == 1 and len(values["dataset"]) == 1


def test_tensorboard_hparams_table_shows_the_swept_keys_and_the_headline_metrics_first(headline_sweep):
    """The HParams table as TensorBoard's own backend serves it from the sweep's event files."""
    tmp, _ = headline_sweep
    experiment, groups = _tensorboard_hparams(tmp / "multirun")
    # TensorBoard's HParams tab displays the first five hyperparameters and metrics of this experiment
    shown = [h.name for h in experiment.hparam_infos][:5]
    assert {h.name for h in experiment.hparam_infos if h.differs} == {"loss", "head"} <= set(shown)
    assert [m.name.tag for m in experiment.metric_infos][:3] == ["test/nll", "test/crps", "test/rmse"]
    domains = {h.name: {v.string_value for v in h.domain_discrete.values} for h in experiment.hparam_infos}
    assert domains["loss"] == {"kl", "nll", "mdn"} and domains["head"] == {"gaussian", "mixture"}
    # one session group per run, its metric columns equal to the run's result.json
    results = {res["labels"]["loss"] + "/" + res["labels"]["head"]: res for _, res in _results(tmp).values()}
    assert len(groups) == 3
    tags = [m.name.tag for m in experiment.metric_infos]
    for group in groups:
        res = results[group.hparams["loss"].string_value + "/" + group.hparams["head"].string_value]
        values = {tags[i].split("/", 1)[1]: mv.value for i, mv in enumerate(group.metric_values)}
        for name in ("nll", "crps", "rmse", "coverage90", "train_samples_per_s"):
            assert values[name] == pytest.approx(res["metrics"][name], rel=1e-6)


def _tensorboard_hparams(logdir):
    """The experiment and session groups TensorBoard's HParams plugin serves for a log directory."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    ctx = backend_context.Context(base_plugin.TBContext(data_provider=data_provider.MultiplexerDataProvider(mux, str(logdir)),
                                                        logdir=str(logdir)))
    rc = context.RequestContext()
    experiment = ctx.experiment_from_metadata(rc, "", True, ctx.hparams_metadata(rc, ""), ctx.hparams_from_data_provider(rc, "", 100))
    request = api_pb2.ListSessionGroupsRequest(allowed_statuses=[api_pb2.STATUS_SUCCESS, api_pb2.STATUS_UNKNOWN], slice_size=100)
    metrics = [api_pb2.ColParams(metric=m.name) for m in experiment.metric_infos]
    request.col_params.extend(metrics)
    return experiment, list_session_groups.Handler(rc, ctx, "", request).run().session_groups


def test_report_written_after_the_sweep(headline_sweep):
    tmp, _ = headline_sweep
    report = tmp / "multirun" / "report" / "report.md"
    text = report.read_text()
    assert "| hetero_sine | gaussian | kl |" in text and "| hetero_sine | mixture | mdn |" in text
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
    assert "| skipped | incompatible: loss=faithful trains a `loc` output by squared error; head=gaussian_natural has none; " \
           "heads that fit loss=faithful on regression data: evidential, gaussian, laplace, student_t |" in report
