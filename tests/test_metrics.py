"""Scores and calibration against independent implementations and closed-form cases."""

import math

import numpy as np
import properscoring as ps
import pytest
import scoringrules as sr
import torch
import uncertainty_toolbox as uct
from scipy import stats
from torch.distributions import Bernoulli, Categorical, Normal, Poisson
from torchmetrics.classification import BinaryCalibrationError, MulticlassCalibrationError

from densbench.distributions.classes import NormalMixture
from densbench.distributions.ops import binned_log_prob, cdf, crps, kl_to_truth, pit, quantile
from densbench.evaluation.metrics import PredictiveMetrics

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _normal_case(n=400, seed=0, narrow=1.0):
    g = _gen(seed)
    loc = torch.randn(n, generator=g, dtype=F64)
    scale = torch.rand(n, generator=g, dtype=F64) + 0.3
    y = loc + scale * narrow * torch.randn(n, generator=g, dtype=F64) * 1.3
    return Normal(loc, scale), y


def _mixture_case(n=300, k=3, seed=1):
    g = _gen(seed)
    logits = torch.randn(n, k, generator=g, dtype=F64)
    loc = 2 * torch.randn(n, k, generator=g, dtype=F64)
    scale = torch.rand(n, k, generator=g, dtype=F64) + 0.2
    y = 2 * torch.randn(n, generator=g, dtype=F64)
    return NormalMixture(logits, loc, scale), y


def test_reference_check_values():
    # REFERENCE.md section 3
    assert crps(Normal(torch.tensor(0.1, dtype=F64), torch.tensor(0.4, dtype=F64)), torch.tensor(0.0, dtype=F64)).item() == pytest.approx(0.1033999, abs=1e-7)
    m = NormalMixture(torch.tensor([[0.1, 0.2, 0.7]], dtype=F64).log(), torch.tensor([[0.1, -0.3, 1.0]], dtype=F64),
                      torch.tensor([[0.4, 2.1, 0.7]], dtype=F64))
    assert crps(m, torch.zeros(1, dtype=F64)).item() == pytest.approx(0.468068667, abs=1e-9)


def test_crps_gaussian_matches_properscoring():
    dist, y = _normal_case()
    ref = ps.crps_gaussian(y.numpy(), mu=dist.loc.numpy(), sig=dist.scale.numpy())
    assert np.allclose(crps(dist, y).numpy(), ref, rtol=1e-10, atol=1e-12)


def test_crps_mixture_matches_scoringrules():
    dist, y = _mixture_case()
    ref = sr.crps_mixnorm(y.numpy(), dist.loc.numpy(), dist.scale.numpy(), w=dist.weights.numpy(), backend="numpy")
    assert np.allclose(crps(dist, y).numpy(), ref, rtol=1e-8, atol=1e-10)


def test_discrete_crps_against_direct_sums():
    g = _gen(2)
    rate = torch.rand(50, generator=g, dtype=F64) * 8 + 0.1
    y = torch.poisson(rate, generator=g)
    ks = np.arange(0, 200)
    ref = [((stats.poisson.cdf(ks, r) - (yy <= ks)) ** 2).sum() for r, yy in zip(rate.numpy(), y.numpy())]
    assert np.allclose(crps(Poisson(rate), y).numpy(), ref, rtol=1e-9)
    probs = torch.softmax(torch.randn(40, 4, generator=g, dtype=F64), -1)
    yc = torch.randint(0, 4, (40,), generator=g)
    ref_c = ((np.cumsum(probs.numpy(), -1) - (yc.numpy()[:, None] <= np.arange(4))) ** 2).sum(-1)
    assert np.allclose(crps(Categorical(probs=probs), yc).numpy(), ref_c)
    p = torch.rand(30, generator=g, dtype=F64)
    yb = torch.bernoulli(p, generator=g)
    assert np.allclose(crps(Bernoulli(probs=p), yb).numpy(), ((p - yb) ** 2).numpy())


def test_mixture_cdf_and_bisection_quantiles():
    dist, y = _mixture_case(n=20)
    w, m, s = dist.weights.numpy(), dist.loc.numpy(), dist.scale.numpy()
    ref = (w * stats.norm.cdf((y.numpy()[:, None] - m) / s)).sum(-1)
    assert np.allclose(cdf(dist, y).numpy(), ref, rtol=1e-12)
    ps_ = torch.tensor([0.005, 0.1, 0.5, 0.9, 0.995], dtype=F64)
    q = quantile(dist, ps_)
    assert torch.allclose(cdf(dist, q), ps_.view(-1, 1).expand_as(q), atol=1e-12)


def test_mixture_quantiles_converge_where_newton_bounces_between_modes():
    # two well-separated modes: from the bracket's middle, plain Newton steps jump from one side of
    # the gap to the other and the bracket shrinks slowly (the solver before issue 13 stopped after
    # 100 such steps with F(q) up to 0.3 away from p); rtsafe's rule bisects those steps instead
    w = torch.tensor([[0.0135, 0.4061, 0.4814, 0.0219, 0.0770]], dtype=F64)
    loc = torch.tensor([[1.9195, 0.3224, 7.2250, 3.7507, 3.8674]], dtype=F64)
    scale = torch.tensor([[1.0298, 0.4948, 0.4631, 0.9594, 0.1580]], dtype=F64)
    dist = NormalMixture(w.log(), loc, scale)
    levels = torch.arange(1, 200, dtype=F64) / 200
    q = quantile(dist, levels)
    assert torch.allclose(cdf(dist, q), levels.view(-1, 1), rtol=0, atol=1e-12)
    g = _gen(11)
    many = NormalMixture(torch.randn(2000, 5, generator=g, dtype=F64), 3 * torch.randn(2000, 5, generator=g, dtype=F64),
                         torch.rand(2000, 5, generator=g, dtype=F64) + 0.1)
    q = quantile(many, levels)
    assert float((cdf(many, q) - levels.view(-1, 1)).abs().max()) < 1e-12


def test_randomised_pit_of_poisson_draws_is_uniform():
    g = _gen(3)
    rate = torch.rand(20000, generator=g, dtype=F64) * 5 + 0.2
    y = torch.poisson(rate, generator=g)
    u = pit(Poisson(rate), y, torch.rand(20000, generator=g, dtype=F64))
    assert stats.kstest(u.numpy(), "uniform").pvalue > 0.01
    plain = cdf(Poisson(rate), y)  # the non-randomised PIT of counts is not uniform
    assert stats.kstest(plain.numpy(), "uniform").pvalue < 1e-6


def _metrics(dist, y, task="regression", **kw):
    m = PredictiveMetrics(task, **kw)
    m.update(dist, y)
    return {k: float(v) for k, v in m.compute().items()}, m


def test_gaussian_calibration_metrics_match_uncertainty_toolbox():
    dist, y = _normal_case(n=500)
    out, _ = _metrics(dist, y)
    mu, sd, yy = dist.loc.numpy(), dist.scale.numpy(), y.numpy()
    assert out["mace"] == pytest.approx(uct.mean_absolute_calibration_error(mu, sd, yy), abs=1e-12)
    assert out["rmsce"] == pytest.approx(uct.root_mean_squared_calibration_error(mu, sd, yy), abs=1e-12)
    assert out["miscal_area"] == pytest.approx(uct.miscalibration_area(mu, sd, yy), abs=1e-9)
    assert out["sharpness"] == pytest.approx(uct.sharpness(sd), rel=1e-12)
    assert out["interval_score"] == pytest.approx(uct.interval_score(mu, sd, yy), rel=1e-9)
    assert out["check_score"] == pytest.approx(uct.check_score(mu, sd, yy), rel=1e-9)
    assert out["nll"] == pytest.approx(-stats.norm.logpdf(yy, mu, sd).mean(), rel=1e-12)
    assert out["crps"] == pytest.approx(ps.crps_gaussian(yy, mu, sd).mean(), rel=1e-10)
    assert out["rmse"] == pytest.approx(math.sqrt(((mu - yy) ** 2).mean()), rel=1e-12)


def test_calibrated_sample_has_small_error_and_narrow_predictor_undercovers():
    g = _gen(4)
    loc = torch.randn(20000, generator=g, dtype=F64)
    scale = torch.rand(20000, generator=g, dtype=F64) + 0.5
    y = loc + scale * torch.randn(20000, generator=g, dtype=F64)
    good, _ = _metrics(Normal(loc, scale), y)
    narrow, _ = _metrics(Normal(loc, scale / 2), y)
    assert good["mace"] < 0.01 and abs(good["coverage90"] - 0.9) < 0.01 and good["pit_ks"] < 0.01
    assert narrow["coverage90"] < 0.65 and narrow["coverage50"] < 0.3 and narrow["mace"] > 0.15
    assert narrow["width90"] == pytest.approx(good["width90"] / 2, rel=1e-9)


def test_mixture_scored_as_mixture_not_moments():
    # bimodal truth: a moment-matched Gaussian would put 90% intervals over the empty middle
    g = _gen(5)
    n = 8000
    loc = torch.tensor([[-3.0, 3.0]], dtype=F64).expand(n, 2)
    scale = torch.full((n, 2), 0.5, dtype=F64)
    dist = NormalMixture(torch.zeros(n, 2, dtype=F64), loc, scale)
    y = torch.where(torch.rand(n, generator=g, dtype=F64) < 0.5, -3.0, 3.0) + 0.5 * torch.randn(n, generator=g, dtype=F64)
    out, _ = _metrics(dist, y)
    assert out["mace"] < 0.015 and abs(out["coverage90"] - 0.9) < 0.015
    ref = sr.crps_mixnorm(y.numpy(), loc.numpy(), scale.numpy(), w=np.full((n, 2), 0.5), backend="numpy").mean()
    assert out["crps"] == pytest.approx(ref, rel=1e-8)


@pytest.mark.parametrize("kind", ["binary", "multiclass"])
def test_ece_and_accuracy_match_torchmetrics(kind):
    g = _gen(6)
    if kind == "binary":
        p = torch.rand(1000, generator=g, dtype=F64)
        y = torch.bernoulli(p ** 0.7, generator=g)
        out, _ = _metrics(Bernoulli(probs=p), y, task="binary")
        ref = BinaryCalibrationError(n_bins=15)(p.float(), y.long())
        acc = ((p > 0.5).double() == y).double().mean()
    else:
        probs = torch.softmax(2 * torch.randn(1000, 5, generator=g, dtype=F64), -1)
        y = torch.multinomial(probs, 1, generator=g)[:, 0]
        out, _ = _metrics(Categorical(probs=probs), y, task="multiclass")
        ref = MulticlassCalibrationError(num_classes=5, n_bins=15)(probs.float(), y)
        acc = (probs.argmax(-1) == y).double().mean()
    assert out["ece"] == pytest.approx(float(ref), abs=1e-6)
    assert out["accuracy"] == pytest.approx(float(acc))


def test_states_are_sums_so_batches_combine_exactly():
    dist, y = _normal_case(n=600)
    whole = PredictiveMetrics("regression")
    whole.update(dist, y)
    parts = PredictiveMetrics("regression")
    for sl in (slice(0, 250), slice(250, 600)):
        parts.update(Normal(dist.loc[sl], dist.scale[sl]), y[sl])
    a, b = whole.compute(), parts.compute()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-12, atol=1e-15), k


# --- continuous predictions of count targets: the pmf of unit bins -------------------------


def _mp_log_mass(loc, scale, lo, hi):
    import mpmath

    mpmath.mp.dps = 60
    if lo != -math.inf and lo >= loc:  # upper tail: difference of survival functions, no cancellation
        return float(mpmath.log(mpmath.ncdf((loc - mpmath.mpf(lo)) / scale) - mpmath.ncdf((loc - mpmath.mpf(hi)) / scale)))
    lower = 0 if lo == -math.inf else mpmath.ncdf((mpmath.mpf(lo) - loc) / scale)
    return float(mpmath.log(mpmath.ncdf((mpmath.mpf(hi) - loc) / scale) - lower))


@pytest.mark.parametrize("y,loc,scale", [(0, 3.0, 2.0), (4, 3.0, 2.0), (0, 40.0, 1.0), (60, 3.0, 2.0), (7, 3.0, 1e-2),
                                         (2, -30.0, 1.0), (5, 5.2, 1e4), (1, 1.0, 0.05)])
def test_binned_log_prob_matches_high_precision_reference(y, loc, scale):
    got = float(binned_log_prob(Normal(torch.tensor(loc, dtype=F64), torch.tensor(scale, dtype=F64)), torch.tensor(float(y), dtype=F64)))
    want = _mp_log_mass(loc, scale, -math.inf if y == 0 else y - 0.5, y + 0.5)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_binned_pmf_sums_to_one_for_gaussian_and_mixture():
    k = torch.arange(0, 400, dtype=F64).unsqueeze(-1)  # [K, 1] against a batch of 3 predictions
    normal = Normal(torch.tensor([0.3, 4.0, 50.0], dtype=F64), torch.tensor([0.2, 3.0, 20.0], dtype=F64))
    mix = NormalMixture(torch.tensor([[0.0, 1.0]] * 3, dtype=F64), torch.tensor([[-2.0, 6.0], [1.0, 30.0], [0.5, 0.6]], dtype=F64),
                        torch.tensor([[1.0, 2.0], [0.5, 5.0], [0.1, 0.3]], dtype=F64))
    for dist in (normal, mix):
        total = binned_log_prob(dist, k.expand(-1, 3)).exp().sum(0)
        torch.testing.assert_close(total, torch.ones(3, dtype=F64), rtol=0, atol=1e-10)


def test_count_task_scores_continuous_heads_by_their_binned_pmf():
    g = _gen(5)
    loc, scale = torch.full((20000,), 3.0, dtype=F64), torch.full((20000,), 2.0, dtype=F64)
    # draws from the binned pmf itself: round a Gaussian draw, everything below 1/2 to 0
    y = torch.clamp(torch.round(loc + scale * torch.randn(20000, generator=g, dtype=F64)), min=0)
    counts, _ = _metrics(Normal(loc, scale), y, task="count")
    dens, _ = _metrics(Normal(loc, scale), y, task="regression")
    assert counts["nll"] == pytest.approx(float(-binned_log_prob(Normal(loc, scale), y).mean()), rel=1e-12)
    assert dens["nll"] == pytest.approx(float(-Normal(loc, scale).log_prob(y).mean()), rel=1e-12)
    # the randomised PIT of the binned pmf is uniform for its own draws; the continuous PIT is not
    assert counts["pit_ks"] < 0.02 and dens["pit_ks"] > 0.05
    assert counts["mace"] < 0.01


def test_kl_from_poisson_truth_to_continuous_prediction_sums_over_counts():
    rate = torch.tensor([0.5, 3.0, 12.0], dtype=F64)
    pred = Normal(torch.tensor([1.0, 3.0, 11.0], dtype=F64), torch.tensor([1.0, 1.5, 4.0], dtype=F64))
    k = torch.arange(0, 200, dtype=F64).unsqueeze(-1).expand(-1, 3)
    p = Poisson(rate).log_prob(k).exp()
    want = (p * (Poisson(rate).log_prob(k) - binned_log_prob(pred, k))).sum(0)
    torch.testing.assert_close(kl_to_truth(Poisson(rate), pred), want, rtol=1e-10, atol=1e-12)
    assert bool((want > 0).all())


class _NoCdf(torch.distributions.Distribution):
    """A continuous distribution with a density and moments but no CDF or quantiles (a future family)."""

    arg_constraints: dict = {}
    support = torch.distributions.constraints.real

    def __init__(self, loc):
        self.loc = loc
        super().__init__(batch_shape=loc.shape, validate_args=False)

    def log_prob(self, y):
        return Normal(self.loc, 1.0).log_prob(y)

    @property
    def mean(self):
        return self.loc

    @property
    def variance(self):
        return torch.ones_like(self.loc)


def test_a_distribution_without_a_cdf_loses_those_metrics_not_the_run():
    g = _gen(9)
    loc = torch.randn(50, generator=g, dtype=F64)
    y = loc + torch.randn(50, generator=g, dtype=F64)
    m = PredictiveMetrics("regression")
    m.update(_NoCdf(loc), y)
    out = {k: float(v) for k, v in m.compute().items()}
    assert out["nll"] == pytest.approx(float(-Normal(loc, 1.0).log_prob(y).mean()), rel=1e-12)
    assert out["rmse"] == pytest.approx(float(((loc - y) ** 2).mean().sqrt()), rel=1e-12)
    for name in ("crps", "mace", "coverage90", "interval_score", "pit_ks"):
        assert math.isnan(out[name]), name
    for part in ("crps", "pit", "intervals"):
        assert m.fallbacks[part].startswith("unavailable: no cdf for _NoCdf"), m.fallbacks
    assert not any(v == "not finite" for v in m.fallbacks.values())  # said once, as unavailable


def test_a_metric_that_comes_out_infinite_is_named_in_the_fallbacks():
    # a Student-t with df <= 1 has no mean: its CRPS (E|X - y| - E|X - X'| / 2) is infinite, a true value
    # that result.json can only write as null, so the fallbacks say it
    g = _gen(10)
    y = torch.randn(40, generator=g, dtype=F64)
    m = PredictiveMetrics("regression", intervals=False)
    m.update(torch.distributions.StudentT(torch.full((40,), 0.8, dtype=F64), torch.zeros(40, dtype=F64),
                                          torch.ones(40, dtype=F64)), y)
    out = m.compute()
    assert not torch.isfinite(out["crps"]) and m.fallbacks["crps value"] == "not finite"
    assert torch.isfinite(out["nll"]) and "nll value" not in m.fallbacks
