"""The non-network baselines (method=ngboost, catboost, gp): scored by densbench exactly as their own libraries
predict, refused without their packages, skipped past the GP's row limit, never stacked with networks, labelled
as what they are by methods and reports, and listed by scripts/uci_suite.py --baselines."""

import json
import math
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO, make_cfg
from densbench.baselines import INSTALL, MissingPackage
from densbench.methods import baselines, method_of, recipes, single_method
from densbench.runs.labels import labels
from densbench.timing import JobClock

UCI_ROOT = REPO.parent / "shared" / "uci"
needs_layout = pytest.mark.skipif(not (UCI_ROOT / "yacht" / "data" / "data.txt").is_file(),
                                  reason=f"the UCI layout is not at {UCI_ROOT}")


def _yacht(*overrides):
    return make_cfg("experiment=uci_yacht", f"dataset.root={UCI_ROOT}", *overrides)


def _run(baseline, split=0):
    from densbench.baselines.common import run

    return run(baseline, _yacht(f"dataset.split={split}").dataset, seed=0, threads=lambda rows: 1, clock=JobClock())


def _test_targets(scored):
    data = scored.prep.data
    return data.y[data.test].astype(np.float64), float(scored.prep.target_loc), float(scored.prep.target_scale)


@needs_layout
def test_ngboost_test_nll_is_its_own_logpdf_in_original_units():
    pytest.importorskip("ngboost")
    from densbench.baselines.ngboost import NGBoost

    baseline = NGBoost(n_estimators=60, early_stopping_rounds=10)
    scored = _run(baseline)
    y, loc, scale = _test_targets(scored)
    own = baseline.model.pred_dist(scored.prep.splits["test"][0].numpy(), max_iter=baseline.kept)
    # a density in original units: the standardised density at (y - loc) / scale, divided by scale
    nll = float(-np.mean(own.logpdf((y - loc) / scale)) + math.log(scale))
    assert scored.metrics["nll"] == pytest.approx(nll, rel=1e-6)
    assert scored.metrics["rmse"] == pytest.approx(math.sqrt(np.mean((loc + scale * own.params["loc"] - y) ** 2)), rel=1e-6)
    assert scored.fit.iterations <= 60 and scored.val_nll is not None


def test_light_normal_is_ngboosts_normal_without_scipy_per_instance():
    pytest.importorskip("ngboost")
    from ngboost import NGBRegressor
    from ngboost.distns import Normal
    from ngboost.manifold import manifold
    from ngboost.scores import LogScore

    from densbench.baselines.ngboost import light_normal

    rng = np.random.default_rng(3)
    params, y = rng.normal(size=(2, 50)) * [[3.0], [1.5]], rng.normal(size=50) * 4
    light, stock = manifold(LogScore, light_normal())(params), manifold(LogScore, Normal)(params)
    assert "dist" not in vars(light)  # nothing of scipy's built until asked for
    np.testing.assert_allclose(light.score(y), stock.score(y), rtol=1e-13)
    # scipy's distribution, built when asked for, through Normal's attribute forwarding
    np.testing.assert_allclose(light.logpdf(y), stock.logpdf(y), rtol=1e-13)
    np.testing.assert_array_equal(light.mean(), stock.mean())
    # the same fit: the same trees, line searches and early stop, so the same predictions
    x, target = rng.normal(size=(120, 3)), rng.normal(size=120)
    fits = [NGBRegressor(Dist=d, n_estimators=80, learning_rate=0.05, random_state=0, verbose=False)
            .fit(x[:90], target[:90], X_val=x[90:], Y_val=target[90:], early_stopping_rounds=5) for d in (light_normal(), Normal)]
    assert fits[0].best_val_loss_itr == fits[1].best_val_loss_itr and fits[0].scalings == fits[1].scalings
    np.testing.assert_allclose(fits[0].pred_dist(x).params["scale"], fits[1].pred_dist(x).params["scale"], rtol=1e-12)
    np.testing.assert_allclose(fits[0].predict(x), fits[1].predict(x), rtol=1e-12)  # the mean, through scipy's
    again = pickle.loads(pickle.dumps(fits[0]))  # a fitted model saves and loads like ngboost's own
    np.testing.assert_array_equal(again.predict(x), fits[0].predict(x))


@needs_layout
def test_gp_predictive_is_gpytorchs_with_the_noise():
    gpytorch = pytest.importorskip("gpytorch")
    from densbench.baselines.gp import GP

    baseline = GP(iterations=5)
    scored = _run(baseline)
    x = scored.prep.splits["test"][0]
    with torch.no_grad(), gpytorch.settings.max_cholesky_size(10_000):
        own = baseline.likelihood(baseline.model(x))  # gpytorch's predictive of y: latent posterior plus noise
    y, loc, scale = _test_targets(scored)
    mean, var = loc + scale * own.mean.numpy(), scale**2 * own.variance.numpy()
    nll = np.mean(0.5 * np.log(2 * np.pi * var) + (y - mean) ** 2 / (2 * var))
    assert scored.metrics["nll"] == pytest.approx(nll, rel=1e-6)
    assert scored.metrics["sharpness"] == pytest.approx(math.sqrt(var.mean()), rel=1e-6)


@needs_layout
def test_catboost_is_scored_as_the_uniform_mixture_of_its_virtual_members():
    pytest.importorskip("catboost")
    from scipy.special import logsumexp
    from scipy.stats import norm

    from densbench.baselines.catboost import CatBoost

    baseline = CatBoost(iterations=40, early_stopping_rounds=20, virtual_ensembles_count=4)
    scored = _run(baseline)
    x = scored.prep.splits["test"][0].numpy()
    members = baseline.model.virtual_ensembles_predict(x, prediction_type="VirtEnsembles", virtual_ensembles_count=4)
    y, loc, scale = _test_targets(scored)
    mean, sd = loc + scale * members[..., 0], scale * np.sqrt(members[..., 1])
    nll = -np.mean(logsumexp(norm.logpdf(y[:, None], mean, sd), axis=1) - math.log(4))
    assert scored.metrics["nll"] == pytest.approx(nll, rel=1e-6)
    assert scored.metrics["rmse"] == pytest.approx(math.sqrt(np.mean((mean.mean(1) - y) ** 2)), rel=1e-6)


def test_a_missing_package_is_refused_before_any_work_with_the_install_command(monkeypatch, capsys):
    from densbench.launching.launchers import refuse_bad_config
    from densbench.runs.checks import check_config

    monkeypatch.setitem(sys.modules, "ngboost", None)  # what `import ngboost` finds when it is not installed
    cfg = make_cfg("method=ngboost")
    with pytest.raises(MissingPackage, match="method=ngboost needs the package ngboost") as info:
        check_config(cfg)
    assert INSTALL in str(info.value) and 'pip install "densbench[baselines]"' == INSTALL
    with pytest.raises(SystemExit):
        refuse_bad_config(cfg)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith(INSTALL)
    from densbench.baselines.ngboost import NGBoost

    with pytest.raises(MissingPackage):  # instantiated directly, the class refuses too
        NGBoost(n_estimators=1)


@needs_layout
def test_the_gp_row_limit_skips_the_job_and_says_why(tmp_path):
    pytest.importorskip("gpytorch")
    from densbench.runs.execution import JobSpec, run_group

    [result] = run_group([JobSpec(_yacht("method=gp", "baseline.max_train_rows=100"), tmp_path / "gp")])
    assert result["status"] == "skipped"
    assert "limited to 100 training rows" in result["error"] and "this job has 249" in result["error"]
    assert json.loads((tmp_path / "gp" / "result.json").read_text())["status"] == "skipped"


@needs_layout
def test_baseline_jobs_run_alone_and_record_every_metric_a_network_run_has(tmp_path):
    pytest.importorskip("ngboost")
    from densbench.runs.execution import JobSpec, run_group

    net = run_group([JobSpec(_yacht("method=gaussian_nll", "loop.max_epochs=2"), tmp_path / "net")])[0]
    specs = [JobSpec(_yacht("method=ngboost", "baseline.n_estimators=15", f"dataset.split={s}"), tmp_path / f"ngb{s}")
             for s in (0, 1)]
    results = run_group(specs)  # two splits handed over as one group: fitted one after the other
    assert net["status"] == "ok" and [r["status"] for r in results] == ["ok", "ok"]
    for r in results:
        assert set(net["metrics"]) <= set(r["metrics"])
        assert set(net["train"]) <= set(r["train"]) and set(net["timing"]) == set(r["timing"])
        assert r["labels"]["loss"] == "ngboost" and method_of(r["config"], r["labels"]) == "ngboost"
        assert r["provenance"]["versions"]["ngboost"]
    assert results[0]["metrics"]["nll"] != results[1]["metrics"]["nll"]


def test_the_stacked_launcher_gives_every_baseline_job_a_stack_of_its_own():
    from types import SimpleNamespace

    from hydra_plugins.densbench_stacked_launcher.stacked_launcher import StackedLauncher

    launcher = StackedLauncher(replicate=["seed", "dataset.split", "recalibrate"])

    def job(split, baseline=None):
        task = {"dataset": {"name": "yacht", "split": split}, "seed": 0, "loss": {"_target_": "nll"}}
        return SimpleNamespace(task={**task, "baseline": baseline} if baseline else task)

    ngb = {"_target_": "densbench.baselines.ngboost.NGBoost"}
    jobs = [job(0), job(1), job(0, ngb), job(1, ngb), job(2)]
    assert sorted(launcher._stacks(jobs, range(len(jobs)))) == [[0, 1, 4], [2], [3]]


def test_recipes_are_networks_and_method_of_names_the_baselines():
    assert set(baselines()) == {"ngboost", "catboost", "gp"}
    assert not set(baselines()) & set(recipes())  # scripts/uci_suite.py's SINGLE is built from recipes()
    for name in baselines():
        cfg = make_cfg(f"method={name}")
        resolved, lab = OmegaConf.to_container(cfg, resolve=True), labels(cfg)
        assert method_of(resolved, lab) == name and single_method(resolved, lab) is None
        assert lab["loss"] == name
    plain = make_cfg("method=gaussian_nll")
    assert method_of(OmegaConf.to_container(plain, resolve=True), labels(plain)) == "gaussian_nll"
    assert "baseline" not in plain  # a network run's config (and its hash) is as before


@needs_layout
def test_uci_suite_baselines_stage_lists_every_split_and_the_gp_where_it_fits(monkeypatch):
    from densbench.data.uci import ROOT_VARIABLE

    monkeypatch.delenv(ROOT_VARIABLE, raising=False)  # restored after the test, whatever main() sets in this process
    sys.path.insert(0, str(REPO / "scripts"))
    import uci_suite

    listed = uci_suite.baseline_jobs({"yacht": 2, "kin8nm": 1}, str(UCI_ROOT))
    methods = [(j[0], j[1], j[2]) for j in listed]
    assert methods == [("experiment=uci_yacht", f"method={m}", f"dataset.split={s}") for m in baselines() for s in (0, 1)] \
        + [("experiment=uci_kin8nm", f"method={m}", "dataset.split=0") for m in baselines() if m != "gp"]
    only = uci_suite.baseline_jobs({"yacht": 1, "kin8nm": 1}, str(UCI_ROOT), uci_suite.restrictions(["ngboost=yacht"]))
    assert [(j[0], j[1]) for j in only] == [("experiment=uci_yacht", f"method={m}") for m in baselines()] \
        + [("experiment=uci_kin8nm", "method=catboost")]
    for bad in ("ngboost=atlantis", "xgboost=yacht", "ngboost="):
        with pytest.raises(SystemExit, match=f"--baseline-only '{bad}'"):
            uci_suite.restrictions([bad])
    with pytest.raises(SystemExit):  # without the stage it restricts: argparse's one-line error, before any work
        uci_suite.main(["--root", str(UCI_ROOT), "--datasets", "yacht", "--baseline-only", "ngboost=yacht"])
    assert ROOT_VARIABLE not in os.environ  # refused before it set anything for its workers
    assert not any(m in uci_suite.SINGLE for m in baselines())


def test_the_uci_report_tells_the_baselines_from_the_networks():
    from densbench.report import uci as uci_report
    from densbench.report.validation_choice import validation_choices

    def run(method, val_nll):
        return {"labels": {"split": 0}, "train": {"best_val_nll": val_nll}, "metrics": {"nll": val_nll}}

    found = {"yacht": {"ngboost": [run("ngboost", -3.0)], "gaussian_nll": [run("gaussian_nll", 1.0)]}}
    assert validation_choices(found["yacht"])[0][0] == "gaussian_nll"  # stage 2 ensembles networks only
    board = uci_report.leaderboard(found, ["yacht"], ["gaussian_nll", "ngboost"])
    assert "Not networks: ngboost" in board.notes
    assert "Not networks" not in uci_report.leaderboard(found, ["yacht"], ["gaussian_nll"]).notes
