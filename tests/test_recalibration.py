"""Post-hoc recalibration: closed forms, calibration restored, conformal guarantees, no test data in the fit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
import torch
from torch.distributions import Laplace, Normal, StudentT

from densbench.data import datasets as data_mod
from densbench.distributions import ops, spread
from densbench.distributions.dispatch import Unavailable
from densbench.evaluation import recalibration
from densbench.runs.checks import Incompatible, check_config
from densbench.distributions.classes import NormalMixture
from densbench.distributions.recalibrated import Recalibrated
from densbench.evaluation.ensemble import uniform_mixture
from densbench.errors import ConfigError
from densbench.evaluation.metrics import PredictiveMetrics
from densbench.runs.execution import JobSpec, run_group, run_job

from conftest import make_cfg


def _miscalibrated(n: int, seed: int, ratio: float = 0.5) -> tuple[Normal, torch.Tensor]:
    """Predictive N(mu, (ratio sigma)^2) against targets drawn from N(mu, sigma^2)."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, generator=g, dtype=torch.float64)
    sigma = 0.5 + torch.rand(n, generator=g, dtype=torch.float64)
    y = mu + sigma * torch.randn(n, generator=g, dtype=torch.float64)
    return Normal(mu, ratio * sigma), y


def _score(dist, y) -> dict[str, float]:
    m = PredictiveMetrics("regression")
    m.update(dist, y)
    return {k: float(v) for k, v in m.compute().items()}


def test_scale_factor_gaussian_closed_form_and_search_agree():
    dist, y = _miscalibrated(4000, 0)
    z2 = ((y - dist.loc) / dist.scale).pow(2).mean()
    fitted = recalibration.make("scale")
    fitted.fit(dist, y)
    assert fitted.fitted()["how"] == "closed form"
    assert fitted.factor == pytest.approx(float(z2.sqrt()), rel=1e-12)
    assert fitted.factor == pytest.approx(2.0, rel=0.05)  # the predictive sigma is half the truth
    assert spread._search_factor(dist, y) == pytest.approx(fitted.factor, rel=1e-6)
    # the closed form is the minimum: the NLL of the rescaled predictive rises either side
    nll = lambda s: float(-Normal(dist.loc, s * dist.scale).log_prob(y).mean())  # noqa: E731
    assert nll(fitted.factor) < min(nll(fitted.factor * 0.99), nll(fitted.factor * 1.01))


def test_scale_search_matches_the_laplace_closed_form():
    # Laplace(mu, s b): NLL = log(2 s b) + |y - mu| / (s b), minimised at s = mean(|y - mu| / b)
    dist, y = _miscalibrated(3000, 1)
    lap = Laplace(dist.loc, dist.scale)
    fitted = recalibration.make("scale")
    fitted.fit(lap, y)
    assert fitted.fitted()["how"] == "search on log s"
    assert fitted.factor == pytest.approx(float(((y - lap.loc).abs() / lap.scale).mean()), rel=1e-6)
    assert isinstance(fitted.apply(lap), Laplace)
    assert torch.allclose(fitted.apply(lap).scale, lap.scale * fitted.factor)


def test_rescale_keeps_family_and_scales_every_component():
    mix = NormalMixture(torch.zeros(3, 2, dtype=torch.float64), torch.tensor([[0.0, 1.0]] * 3, dtype=torch.float64),
                        torch.tensor([[1.0, 2.0]] * 3, dtype=torch.float64))
    out = ops.rescale(mix, 3.0)
    assert isinstance(out, NormalMixture) and torch.equal(out.scale, mix.scale * 3) and torch.equal(out.loc, mix.loc)
    t = StudentT(torch.full((3,), 5.0), torch.zeros(3), torch.ones(3))
    ens = uniform_mixture([t, StudentT(torch.full((3,), 3.0), torch.ones(3), torch.ones(3))])
    scaled = ops.rescale(ens, 2.0)
    assert torch.equal(scaled.component_distribution.scale, 2 * ens.component_distribution.scale)
    assert torch.equal(scaled.component_distribution.df, ens.component_distribution.df)
    with pytest.raises(Unavailable):
        ops.rescale(torch.distributions.Poisson(torch.ones(2)), 2.0)


def test_isotonic_restores_calibration_of_a_too_narrow_gaussian():
    val, y_val = _miscalibrated(3000, 2)
    test, y_test = _miscalibrated(40000, 3)
    iso = recalibration.make("isotonic")
    iso.fit(val, y_val)
    before, after = _score(test, y_test), _score(iso.apply(test), y_test)
    truth = _score(Normal(test.loc, 2 * test.scale), y_test)
    assert before["mace"] > 0.15  # intervals half as wide as they should be
    # sampling noise of a calibration curve from 3000 validation and 40000 test points: ~1/sqrt(3000)
    assert after["mace"] < 0.02
    assert abs(after["coverage90"] - 0.9) < 0.02
    # the density through a piecewise-linear R: close to the truth's NLL, far below the raw one's
    assert after["nll"] < before["nll"] - 0.5 and after["nll"] == pytest.approx(truth["nll"], abs=0.1)
    assert after["crps"] == pytest.approx(truth["crps"], rel=0.02)


def test_recalibrated_distribution_is_consistent():
    val, y_val = _miscalibrated(500, 4, ratio=2.0)
    iso = recalibration.make("isotonic")
    iso.fit(val, y_val)
    test, _ = _miscalibrated(7, 5, ratio=2.0)
    g = iso.apply(test)
    p = torch.tensor([0.05, 0.3, 0.5, 0.9], dtype=torch.float64)
    q = ops.quantile(g, p)
    assert torch.allclose(g.cdf(q), p.unsqueeze(-1).expand_as(q), atol=1e-9)
    # density = derivative of the CDF (central differences inside a linear piece of R)
    y = q[1]
    h = 1e-6
    assert torch.allclose(g.log_prob(y).exp(), (g.cdf(y + h) - g.cdf(y - h)) / (2 * h), rtol=1e-4)
    # the density integrates to one
    grid = torch.linspace(-30, 30, 200001, dtype=torch.float64).unsqueeze(-1).expand(-1, 7)
    assert torch.allclose(torch.trapezoid(g.log_prob(grid).exp(), grid, dim=0), torch.ones(7, dtype=torch.float64), atol=1e-4)


def _recalibrated_by_quadrature(base, p, r, y):
    """(mean, variance, CRPS) of R(F(x)) by adaptive quadrature on its CDF, breaking at the knots' quantiles."""
    from scipy import integrate

    G = lambda x: float(np.interp(float(base.cdf(torch.tensor(x, dtype=torch.float64))), p, r))  # noqa: E731
    breaks = sorted(float(base.icdf(torch.tensor(v, dtype=torch.float64))) for v in p[1:-1])
    c, s = float(base.mean), float(base.stddev)
    lo, hi = c - 40 * s, c + 40 * s

    def quad(f, a, b):
        return integrate.quad(f, a, b, points=[x for x in breaks + [y] if a < x < b] or None, limit=500, epsabs=0, epsrel=1e-13)[0]

    shift = quad(lambda x: 1 - G(x), c, hi) - quad(G, lo, c)  # E[Y] - c
    ex2 = quad(lambda x: 2 * (x - c) * (1 - G(x)), c, hi) + quad(lambda x: 2 * (c - x) * G(x), lo, c)
    return c + shift, ex2 - shift**2, quad(lambda x: (G(x) - float(x >= y)) ** 2, lo, hi)


@pytest.mark.parametrize("loc,scale,y", [(1.5, 0.7, 1.0), (-2.0, 3.0, 5.0), (100.0, 0.01, 100.03)])
def test_recalibrated_mean_variance_and_crps_are_exact_for_a_gaussian_base(loc, scale, y):
    # sums over R's segments of the Gaussian's quantile integrals; the midpoint rule on 1000 levels they replace
    # was 6e-6 sigma off in the mean, 9e-4 relative in the variance and up to 4e-6 in the CRPS
    rng = np.random.default_rng(0)
    p, r = (np.sort(np.concatenate([[0.0, 1.0], rng.uniform(0, 1, 12)])) for _ in range(2))
    base = Normal(torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64))
    g = Recalibrated(base, torch.tensor(p), torch.tensor(r))
    mean, var, crps = _recalibrated_by_quadrature(base, p, r, y)
    assert float(g.mean) == pytest.approx(mean, rel=0, abs=1e-12 * scale)
    assert float(g.variance) == pytest.approx(var, rel=1e-12)
    assert float(ops.crps(g, torch.tensor(y, dtype=torch.float64))) == pytest.approx(crps, rel=1e-12)
    # a base without quantile integrals (Laplace) keeps the midpoint rule on its quantiles, close to the same
    lap = Laplace(torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64))
    g = Recalibrated(lap, torch.tensor(p), torch.tensor(r))
    mean, var, crps = _recalibrated_by_quadrature(lap, p, r, y)
    assert float(g.mean) == pytest.approx(mean, rel=0, abs=1e-3 * scale)
    assert float(ops.crps(g, torch.tensor(y, dtype=torch.float64))) == pytest.approx(crps, rel=1e-3)


def test_a_validation_point_far_in_a_float32_tail_leaves_the_recalibrated_moments_finite():
    # concrete split 3: one validation target 5.3 sigma out, where a float32 Gaussian's F(y) is 1 - 6e-8;
    # R^-1 mapped the top levels above that knot to levels that float32 rounds to 1 (infinite quantiles),
    # so the recalibrated mean, RMSE, sharpness and CRPS were NaN
    base = Normal(torch.zeros(3), torch.ones(3))
    y_val = torch.cat([torch.linspace(-1.5, 1.5, 60), torch.tensor([5.3])])
    iso = recalibration.make("isotonic")
    iso.fit(Normal(torch.zeros(61), torch.ones(61)), y_val)
    assert float(iso.knots_p[-2]) == 1 - 2**-24  # the float32 CDF's last value below 1
    g = iso.apply(base)
    top = float(Normal(0.0, 1.0).icdf(torch.tensor(1 - 2**-24, dtype=torch.float64)))
    assert torch.isfinite(g.mean).all() and torch.isfinite(g.variance).all()
    assert torch.isfinite(ops.crps(g, torch.zeros(3))).all()
    assert float(ops.quantile(g, torch.tensor([0.999], dtype=torch.float64)).max()) == pytest.approx(top, rel=1e-6)
    # and the bottom: an overconfident model with a tenth of its validation targets beyond 4.7 sigma below puts
    # the first knot near 1e-6, and R^-1 maps the lowest levels below what 2u - 1 can tell from -1 in float32
    low = torch.cat([torch.linspace(-4.9, -4.7, 12), torch.linspace(-1.5, 1.5, 88)])
    iso.fit(Normal(torch.zeros(100), torch.ones(100)), low)
    for base in (Normal(torch.zeros(3), torch.ones(3)), Laplace(torch.zeros(3), torch.ones(3))):
        g = iso.apply(base)
        assert torch.isfinite(g.quantile_grid()).all() and torch.isfinite(g.mean).all()
        assert torch.isfinite(ops.crps(g, torch.zeros(3))).all()


def test_isotonic_knots_are_the_empirical_cdf_with_ties_merged():
    # n = 4: every k = 2nd point of the empirical CDF; the tie at 0.5 is one point at count 3
    p, r = recalibration.isotonic_knots(torch.tensor([0.5, 0.2, 0.5, 0.9], dtype=torch.float64))
    assert p.tolist() == [0.0, 0.5, 0.9, 1.0]
    assert r.tolist() == pytest.approx([0.0, 3 / 5, 4 / 5, 1.0])
    v = torch.rand(10000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    p, r = recalibration.isotonic_knots(v)
    assert len(p) == 100 + 2 and (p.diff() > 0).all() and (r.diff() > 0).all()
    sorted_v = v.sort().values
    assert torch.equal(p[1:-1], sorted_v[99::100])  # the 100th, 200th, ... PIT values
    assert torch.allclose(r[1:-1], torch.arange(100, 10001, 100, dtype=torch.float64) / 10001)


def test_conformal_coverage_inside_its_finite_sample_band():
    n_val, level, reps = 49, 0.9, 300
    cover = []
    for rep in range(reps):
        val, y_val = _miscalibrated(n_val, 100 + rep, ratio=0.4)
        test, y_test = _miscalibrated(500, 10000 + rep, ratio=0.4)
        conf = recalibration.make("conformal")
        conf.fit(val, y_val)
        lo, hi = conf.intervals(test, (level,))[level]
        cover.append(float(((y_test >= lo) & (y_test <= hi)).double().mean()))
    mean, se = float(np.mean(cover)), float(np.std(cover, ddof=1) / math.sqrt(reps))
    # split conformal: level <= E[coverage] <= level + 1/(n+1)
    assert level - 3 * se <= mean <= level + 1 / (n_val + 1) + 3 * se


def test_conformal_uses_the_pit_score_for_mixtures_and_infinite_bounds_when_too_few_points():
    mix = NormalMixture(torch.zeros(40, 2, dtype=torch.float64), torch.tensor([[-1.0, 1.0]] * 40, dtype=torch.float64),
                        torch.full((40, 2), 0.3, dtype=torch.float64))
    y = mix.sample()
    conf = recalibration.make("conformal")
    conf.fit(mix, y)
    assert conf.fitted()["score"] == "|F(y) - 1/2|"
    lo, hi = conf.intervals(mix, (0.5, 0.99))[0.5]
    q = conf.threshold(0.5)
    assert torch.allclose(mix.cdf(lo), torch.full_like(lo, 0.5 - q), atol=1e-8)
    assert torch.allclose(mix.cdf(hi), torch.full_like(hi, 0.5 + q), atol=1e-8)
    # ceil(41 * 0.99) = 41 > 40 scores: no finite bound carries the guarantee
    lo99, hi99 = conf.intervals(mix, (0.99,))[0.99]
    assert torch.isinf(lo99).all() and torch.isinf(hi99).all()


FAST = ["experiment=fast"]


def test_refusals_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="recalibrate='sharpen' is not allowed; choose one of: none, scale, isotonic, conformal"):
        check_config(make_cfg(*FAST, "recalibrate=sharpen"))
    with pytest.raises(Incompatible, match="binary task"):
        check_config(make_cfg(*FAST, "dataset=sine_bernoulli", "loss=glm", "recalibrate=isotonic"))
    with pytest.raises(Incompatible, match="validation split, which has 0 rows"):
        check_config(make_cfg(*FAST, "dataset.n_val=0", "recalibrate=scale"))
    # too few rows is known only once the data is loaded: the job is skipped, not crashed
    res = run_job(make_cfg(*FAST, "dataset.n_val=10", "dataset.max_eval=10", "recalibrate=conformal"), tmp_path)
    assert res["status"] == "skipped" and "at least 20" in res["error"]


def test_recalibration_never_sees_test_targets(tmp_path, monkeypatch):
    seen = []
    original_fit = {name: cls.fit for name, cls in recalibration.METHODS.items()}

    def spy(name):
        def fit(self, dist, y):
            seen.append(y.clone())
            return original_fit[name](self, dist, y)
        return fit

    for name, cls in recalibration.METHODS.items():
        monkeypatch.setattr(cls, "fit", spy(name))
    cfg = make_cfg(*FAST, "recalibrate=isotonic")
    first = run_job(cfg, tmp_path / "a")
    loaded = data_mod.load(cfg.dataset)
    assert first["status"] == "ok" and len(seen) == 1
    assert np.array_equal(np.sort(seen[0].numpy()), np.sort(loaded.y[loaded.val].astype(np.float32)))  # in the model dtype

    # the same job with different test targets fits the same map, and only its test scores move
    real_load = data_mod.load

    def shifted(dcfg):
        d = real_load(dcfg)
        d.y = d.y.copy()
        d.y[d.test] += 3.0
        return d

    monkeypatch.setattr(data_mod, "load", shifted)
    second = run_job(make_cfg(*FAST, "recalibrate=isotonic", "resume=false"), tmp_path / "b")
    assert second["recalibration"] == first["recalibration"]
    assert second["metrics"]["nll"] != first["metrics"]["nll"]


def test_stacked_sweep_of_every_recalibration_trains_once(tmp_path):
    names = list(recalibration.METHODS)
    specs = [JobSpec(make_cfg(*FAST, f"recalibrate={n}", "ensemble.members=2"), tmp_path / n, launcher="stacked") for n in names]
    results = dict(zip(names, run_group(specs)))
    assert all(r["status"] == "ok" for r in results.values())
    none = results["none"]
    assert "metrics_uncalibrated" not in none and "trained_by" not in none
    for name in names[1:]:
        r = results[name]
        # one ensemble of two members, trained once for all four jobs, recalibrated three ways
        assert r["train"]["stack"] == {"models": 2, "jobs": len(names), "members": 2}
        assert r["trained_by"] == str(tmp_path / "none")
        assert r["metrics_uncalibrated"] == {k: v for k, v in none["metrics"].items()
                                             if k in r["metrics_uncalibrated"]}  # scored once, as trained
        assert r["metrics_members"] == none["metrics_members"]
        assert r["recalibration"]["method"] == name
        saved = json.loads((tmp_path / name / "result.json").read_text())
        assert saved["metrics_uncalibrated"] == r["metrics_uncalibrated"]
    assert results["conformal"]["metrics"]["nll"] == results["conformal"]["metrics_uncalibrated"]["nll"]
    assert results["conformal"]["metrics"]["coverage90"] != results["conformal"]["metrics_uncalibrated"]["coverage90"]
    assert results["scale"]["recalibration"]["how"] == "search on log s"  # an ensemble is a mixture: no closed form
    assert results["scale"]["metrics"]["nll"] != none["metrics"]["nll"]


def test_a_recalibration_run_later_uses_the_weights_of_the_finished_run_beside_it(tmp_path):
    trained = run_job(make_cfg(*FAST), tmp_path / "experiment=fast")
    later = run_job(make_cfg(*FAST, "recalibrate=isotonic"), tmp_path / "experiment=fast,recalibrate=isotonic")
    assert later["status"] == "ok" and later["trained_by"] == str(tmp_path / "experiment=fast")
    assert later["timing"]["train_s"] == 0 and later["train"]["opt_steps"] == trained["train"]["opt_steps"]
    assert later["metrics_uncalibrated"]["nll"] == trained["metrics"]["nll"]
    assert later["curves"]["train_val_nll"] == trained["curves"]["train_val_nll"]  # its training record is the trained run's
    # a run of another config beside it is not taken for it
    other = run_job(make_cfg(*FAST, "recalibrate=isotonic", "seed=3"), tmp_path / "experiment=fast,recalibrate=isotonic,seed=3")
    assert "trained_by" not in other and other["timing"]["train_s"] > 0


def test_cli_sweep_writes_before_and_after(tmp_path):
    from conftest import run_cli

    proc = run_cli(["-m", *FAST, "recalibrate=none,scale,isotonic,conformal", "head=mixture", "head.components=2",
                    f"hydra.sweep.dir={tmp_path}/sweep"], cwd=tmp_path.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = (tmp_path / "sweep" / "report" / "report.md").read_text()
    assert "## Recalibration: before and after" in report
    rows = [line for line in report.splitlines() if line.startswith("| hetero_sine") and "→" in line]
    assert len(rows) == 3 and {r.split("|")[4].strip() for r in rows} == {f"recalibrate={n}" for n in ("scale", "isotonic", "conformal")}
    results = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/result.json")]
    assert len(results) == 4 and all(r["status"] == "ok" for r in results)
    iso = next(r for r in results if r["config"]["recalibrate"] == "isotonic")
    assert iso["recalibration"]["knots"] == len(iso["recalibration"]["pit"]) > 2
    assert iso["curves_uncalibrated"]["calibration_observed"] != iso["curves"]["calibration_observed"]


def test_calibration_floor_matches_simulated_perfect_calibration():
    from densbench.report.uci_recalibration import calibration_floor

    rng = np.random.default_rng(0)
    levels = np.linspace(0, 1, 100)
    n = 60
    pit = rng.random((4000, n))  # a perfectly calibrated predictive: uniform PIT values
    inside = (np.abs(pit[..., None] - 0.5) <= levels / 2).mean(1)
    simulated = np.abs(inside - levels).mean(1).mean()
    assert calibration_floor(n) == pytest.approx(simulated, rel=0.05)


def test_tensorboard_gets_before_and_after_and_the_figure_both_curves(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    res = run_job(make_cfg(*FAST, "recalibrate=isotonic", "figures=true"), tmp_path)
    assert res["status"] == "ok"
    events = sorted(tmp_path.rglob("events.out.tfevents.*"))
    ea = EventAccumulator(str(events[0].parent))
    ea.Reload()
    for tag, metrics in (("test", res["metrics"]), ("test_uncalibrated", res["metrics_uncalibrated"])):
        for name in ("nll", "crps", "mace", "coverage90"):
            assert ea.Scalars(f"{tag}/{name}")[-1].value == pytest.approx(metrics[name], rel=1e-5)
    assert res["metrics"]["nll"] != res["metrics_uncalibrated"]["nll"]
    assert "calibration" in ea.Tags()["images"] and (tmp_path / res["artifacts"]["calibration_figure"]).is_file()


def test_an_interrupted_stack_of_recalibrations_resumes_each_job_from_the_shared_checkpoint(tmp_path, monkeypatch):
    from densbench.signals import Interrupted

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    marker = tmp_path / "marker"
    sig = ["+callbacks.sig._target_=helpers.SignalAtStep", "+callbacks.sig.step=23", f"+callbacks.sig.marker={marker}"]
    loop = ["loop.max_steps=60", "loop.eval_every=20", "loop.batch_size=32"]
    cfgs = {n: make_cfg(*FAST, *loop, *sig, f"recalibrate={n}") for n in ("none", "isotonic")}
    marker.write_text("no signal")
    ref = {n: run_job(cfg, tmp_path / f"ref-{n}") for n, cfg in cfgs.items()}
    marker.unlink()
    dirs = {n: tmp_path / n for n in cfgs}
    with pytest.raises(Interrupted):
        run_group([JobSpec(cfgs[n], dirs[n]) for n in cfgs])
    # the job that shares the models keeps a pointer to its stack-mate's state, not a copy
    pointer = torch.load(dirs["isotonic"] / "checkpoints" / "last.ckpt", weights_only=False)
    assert pointer["same_as"] == str(dirs["none"] / "checkpoints" / "last.ckpt") and "model" not in pointer
    alone = run_job(cfgs["isotonic"], dirs["isotonic"])  # resumed on its own, through the pointer
    assert alone["status"] == "ok" and alone["resumed_from_step"] == 24
    from densbench.results import EXECUTION_METRICS

    figures = (lambda r: {k: v for k, v in r["metrics"].items() if k not in EXECUTION_METRICS})
    assert figures(alone) == figures(ref["isotonic"])


@pytest.mark.parametrize("shared", [[{"format": 2}], {"format": 1}, {"format": 2, "key": {"source_hash": "other", "data_hash": "d"}}])
def test_a_pointer_to_a_foreign_or_malformed_checkpoint_is_refused_with_the_reason(tmp_path, shared):
    from densbench.training import checkpoints
    key = {"config_hash": "c", "source_hash": "s", "data_hash": "d"}
    checkpoints.save_atomic(shared, tmp_path / "shared.ckpt")
    pointer = checkpoints.save_atomic({"format": checkpoints.FORMAT, "key": key, "same_as": str(tmp_path / "shared.ckpt")},
                                      tmp_path / "last.ckpt")
    with pytest.raises(checkpoints.CheckpointError, match="shared.ckpt, was written by another run"):
        checkpoints.load(pointer, key)


def test_recalibrations_without_the_plain_job_score_their_shared_models_as_trained_once(tmp_path):
    from types import SimpleNamespace

    from densbench.training.module import scored_as_trained_by

    def job(models, active):
        return SimpleNamespace(models=models, recalibration=SimpleNamespace(active=active))

    # [scale, isotonic] share models 0-1 with no plain job: the first scores them, the second copies;
    # with a plain job beside them, every recalibration copies the plain job's test scores
    assert scored_as_trained_by([job([0, 1], True), job([0, 1], True), job([2], True)]) == {1: 0}
    assert scored_as_trained_by([job([0], True), job([0], False), job([0], True)]) == {0: 1, 2: 1}
    specs = [JobSpec(make_cfg(*FAST, f"recalibrate={n}"), tmp_path / n, launcher="stacked") for n in ("scale", "isotonic")]
    scale, isotonic = run_group(specs)
    assert scale["status"] == isotonic["status"] == "ok"
    assert isotonic["metrics_uncalibrated"] == scale["metrics_uncalibrated"] and "nll" in scale["metrics_uncalibrated"]
    assert isotonic["trained_by"] == str(tmp_path / "scale")


def test_a_steep_segment_a_subnormal_knot_and_a_bin_across_a_knot_keep_their_digits():
    # an overconfident model's isotonic map has segments 1e-9 wide rising by 0.3 (slope 3e8), and knots down to
    # 1e-300: slope times integral cancelled (CRPS 1.624 for 0.190) or overflowed (a mean of -inf)
    f64 = dict(dtype=torch.float64)
    base = Normal(torch.tensor(0.0, **f64), torch.tensor(1.0, **f64))
    p, r = np.array([0.0, 0.4, 0.4 + 1e-9, 1.0]), np.array([0.0, 0.3, 0.6, 1.0])
    g = Recalibrated(base, torch.tensor(p), torch.tensor(r))
    mean, var, crps = _recalibrated_by_quadrature(base, p, r, 0.0)
    assert float(ops.crps(g, torch.tensor(0.0, **f64))) == pytest.approx(crps, rel=1e-9)
    assert float(g.mean) == pytest.approx(mean, abs=1e-9) and float(g.variance) == pytest.approx(var, rel=1e-9)
    # a knot 1e-13 below 1 (a validation point 7.4 sigma out) and y just above its quantile: F(y) in float64 cannot
    # place y within that last segment (1.7e-3 off at 8.3 sigma), its upper tail can
    from scipy import integrate
    from scipy.special import log_ndtr

    top = 1 - 1e-13
    g = Recalibrated(base, torch.tensor([0.0, 0.5, top, 1.0], **f64), torch.tensor([0.0, 0.5, 0.9, 1.0], **f64))
    gap = 1 - top  # 1.0003e-13: the knot as stored
    x_top = stats.norm.isf(gap)

    def survival(x):  # 1 - G(x), from the Normal's upper tail
        sf = math.exp(log_ndtr(-x))
        return 0.1 * sf / gap if x > x_top else 0.1 + 0.4 * (sf - gap) / (0.5 - gap) if x > 0 else sf

    for y in (7.5, 8.3, 9.0):
        parts = [(-40, 0), (0, x_top), (x_top, y)]
        below = sum(integrate.quad(lambda x: (1 - survival(x)) ** 2, a, b, epsabs=1e-15, epsrel=1e-13, limit=200)[0] for a, b in parts)
        want = below + integrate.quad(lambda x: survival(x) ** 2, y, 40, epsabs=1e-15, epsrel=1e-13, limit=200)[0]
        assert float(ops.crps(g, torch.tensor(y, **f64))) == pytest.approx(want, rel=1e-10), y
    # a knot at 1e-310: 5% of the mass where the Gaussian has 1e-310; its mean there is -phi(b) / 1e-310, b = Q(1e-310)
    g = Recalibrated(base, torch.tensor([0.0, 1e-310, 0.5, 1.0], **f64), torch.tensor([0.0, 0.05, 0.5, 1.0], **f64))
    b = stats.norm.isf(1e-310) * -1
    tail_mean = -math.exp(stats.norm.logpdf(b) - math.log(1e-310))
    half = -stats.norm.pdf(0) / 0.5  # the average of Q over (0, 1/2], and minus that over (1/2, 1)
    want = 0.05 * tail_mean + 0.45 * (half + stats.norm.pdf(b) / 0.5) + 0.5 * -half
    assert float(g.mean) == pytest.approx(want, rel=1e-10)
    assert math.isfinite(float(g.variance)) and math.isfinite(float(ops.crps(g, torch.tensor(0.0, **f64))))
    # NLL@h of a bin across a knot's quantile: G's density jumps there, so the mass is summed segment by segment
    g = Recalibrated(base, torch.tensor([0.0, 0.97, 1.0], **f64), torch.tensor([0.0, 0.5, 1.0], **f64))
    import mpmath as mp

    mp.mp.dps = 40
    k = mp.sqrt(2) * mp.erfinv(2 * mp.mpf(0.97) - 1)  # the knot's quantile, exactly
    for h in (1e-3, 1e-6):
        y = torch.tensor([float(k) + 0.4 * h], **f64)  # the bin (y - h/2, y + h/2] holds it
        lo, hi = mp.mpf(float(y)) - mp.mpf(h) / 2, mp.mpf(float(y)) + mp.mpf(h) / 2
        mass = mp.mpf(0.5) / mp.mpf(0.97) * (mp.ncdf(k) - mp.ncdf(lo)) + mp.mpf(0.5) / (1 - mp.mpf(0.97)) * (mp.ncdf(hi) - mp.ncdf(k))
        # the quantile in float64 is uncertain by 1e-16, which moves the mass by ~1e-15 / h of itself
        assert float(ops.interval_nll(g, y, h)) == pytest.approx(float(-mp.log(mass / h)), abs=1e-15 / h)


def test_the_normal_cdf_keeps_its_lower_tail():
    # torch's Normal.cdf goes through 1 + erf and is 0 below -8.3 sigma; a recalibrated CRPS places y by it
    d = Normal(torch.tensor([0.0, 2.0], dtype=torch.float64), torch.tensor([1.0, 0.5], dtype=torch.float64))
    y = torch.tensor([-30.0, -10.0], dtype=torch.float64)
    want = stats.norm.cdf(y.numpy(), [0.0, 2.0], [1.0, 0.5])
    np.testing.assert_allclose(ops.cdf(d, y).numpy(), want, rtol=1e-12)


def _every_segment(base, p, r, y, lo, hi):
    """(mean, variance, CRPS, log interval mass) summed over every segment for every entry: the [S, n] sums the
    standard units' prefix sums and windows replace."""
    from densbench.distributions.quantile_averages import quantile_averages

    S = len(p) - 1
    pl, ph = p[:-1].view(-1, 1).expand(S, len(y)), p[1:].view(-1, 1).expand(S, len(y))
    d = (r[1:] - r[:-1]).view(-1, 1)
    c = base.mean.double()
    a0, _, a2, _ = quantile_averages(base, pl, ph, c)
    shift = (d * a0).sum(0)
    b0, b1, _, above = quantile_averages(base, pl, ph, y)
    crps = 2 * (d * (above - r[:-1].view(-1, 1) * b0 - d * b1)).sum(0)
    return c + shift, (d * a2).sum(0) - shift**2, crps, _every_segments_mass(base, p, r, lo, hi)


def _every_segments_mass(base, p, r, lo, hi):
    """log sum_k s_k P_F((lo, hi] within segment k's quantiles), every segment for every entry."""
    edges = ops.icdf(base, p.view(-1, 1).expand(-1, len(lo))).double()
    a, b = torch.maximum(lo, edges[:-1]), torch.minimum(hi, edges[1:])
    inside = b > a
    log_mass = ops.log_interval_mass(base, torch.where(inside, a, lo), torch.where(inside, b, hi))
    log_slope = (torch.log(r[1:] - r[:-1]) - torch.log(p[1:] - p[:-1])).view(-1, 1)
    return torch.logsumexp(torch.where(inside, log_slope + log_mass, torch.full_like(log_mass, -math.inf)), 0)


def test_hundreds_of_knots_cost_a_window_per_entry_and_give_every_segments_sums():
    # an isotonic map of a few thousand validation rows has hundreds of knots; summing them all for every test row
    # was most of the suite's evaluation on protein. Prefix sums over Z's averages and the segments around each
    # target (or overlapping each bin) give the same numbers, knots near 0 and 1 and targets on a knot included
    rng = np.random.default_rng(7)
    S, n = 400, 300
    p = np.sort(np.concatenate([[0.0, 1e-300, 1e-17, 1 - 1e-13, 1.0], rng.uniform(0, 1, S - 4)]))
    r = np.sort(np.concatenate([[0.0, 1.0], rng.uniform(0, 1, S - 1)]))
    p, r = torch.tensor(p), torch.tensor(r)
    loc, scale = torch.tensor(rng.normal(0, 3, n)), torch.tensor(rng.uniform(0.1, 2, n))
    base = Normal(loc, scale)
    y = loc + scale * torch.tensor(rng.standard_t(2, n)) * 3
    y[:3] = loc[:3] + scale[:3] * ops.icdf(Normal(0.0, 1.0), p[[50, 200, 350]].float()).double()  # on knots
    lo, hi = y - 0.05, y + 0.05
    mean, var, crps, log_mass = _every_segment(base, p, r, y, lo, hi)
    g = Recalibrated(base, p, r)
    assert torch.allclose(g.mean, mean, rtol=0, atol=1e-12 * scale.max())
    assert torch.allclose(g.variance, var, rtol=1e-12, atol=0)
    assert torch.allclose(ops.crps(g, y), crps, rtol=1e-12, atol=0)
    assert torch.allclose(ops.log_interval_mass(g, lo, hi), log_mass, rtol=0, atol=1e-9)
    # a reversed bin, segments apart, holds nothing (its window is empty)
    assert torch.equal(ops.log_interval_mass(g, hi + 5, lo - 5), torch.full_like(lo, -math.inf))
    # a base without quantile averages (Laplace) still takes the window for its interval masses, which need none
    lap = Laplace(loc, scale)
    want = _every_segments_mass(lap, p, r, lo, hi)
    assert torch.allclose(ops.log_interval_mass(Recalibrated(lap, p, r), lo, hi), want, rtol=0, atol=1e-9)
