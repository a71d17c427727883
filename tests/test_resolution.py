"""The resolution-aware NLL: targets recorded on a grid h are scored by the interval y +- h/2, which no
predictive can game by stacking mass on the grid's values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from densbench.data.splits import Data, detect_resolution, resolution_of
from densbench.distributions import ops
from densbench.distributions.classes import NormalMixture
from densbench.errors import ConfigError
from densbench.evaluation.metrics import PredictiveMetrics
from densbench.methods import recipes
from densbench.report import uci


@pytest.mark.parametrize("y,h", [([3, 5, 6, 5, 7], 1.0), ([0.975, 0.98, 1.0, 0.985], 0.001), ([12.5, 30.1, 7.0], 0.1),
                                 ([1200, 3400, 500], 100.0), (np.random.default_rng(0).normal(size=50), None), ([4, 4], None)])
def test_the_recording_grid_is_the_coarsest_power_of_ten_every_target_is_a_multiple_of(y, h):
    assert detect_resolution(np.asarray(y, dtype=float)) == h


def test_the_setting_is_auto_a_width_or_none_and_a_bad_one_is_refused():
    data = Data("d", "regression", np.zeros((4, 1)), np.array([1.0, 2.0, 3.0, 0.5]), np.arange(3), np.arange(3, 4),
                np.arange(3, 4), ["x"], "y")
    assert resolution_of("auto", data) == 1.0  # the training rows only: 0.5 is a test row
    assert resolution_of(None, data) is None and resolution_of(0.25, data) == 0.25
    with pytest.raises(ConfigError, match="dataset.resolution=-1"):
        resolution_of(-1, data)


def test_the_interval_nll_is_the_normal_mass_per_width_and_tends_to_the_density_nll():
    dist = torch.distributions.Normal(torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64), torch.tensor([0.5, 2.0, 0.1], dtype=torch.float64))
    y = torch.tensor([0.0, 3.0, 2.05], dtype=torch.float64)
    for h in (1.0, 0.1):
        mass = stats.norm.cdf(y + h / 2, dist.loc, dist.scale) - stats.norm.cdf(y - h / 2, dist.loc, dist.scale)
        np.testing.assert_allclose(ops.interval_nll(dist, y, h).numpy(), -np.log(mass / h), rtol=1e-12)
        assert bool((ops.interval_nll(dist, y, h) >= math.log(h)).all())
    # smooth at the scale of the grid: the interval's NLL is the density's
    torch.testing.assert_close(ops.interval_nll(dist, y, 1e-5), -dist.log_prob(y), rtol=0, atol=1e-8)
    # far in the upper tail, where two CDF values near 1 cannot resolve the mass: finite, near the density's
    far = ops.interval_nll(torch.distributions.Normal(torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)),
                           torch.tensor([9.0], dtype=torch.float64), 0.001)
    assert math.isfinite(float(far)) and abs(float(far) - (40.5 + 0.5 * math.log(2 * math.pi))) < 1e-3


def _tail_nll(sf, y: np.ndarray, h: float) -> np.ndarray:
    """-log[(S(y - h/2) - S(y + h/2)) / h] from a survival function that keeps its digits in the upper tail."""
    return -np.log((sf(y - h / 2) - sf(y + h / 2)) / h)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_target_far_in_a_tail_scores_its_interval_mass_not_the_density_in_its_place(dtype):
    # a width near the scale (wine: h = 1, sd 0.6): the density at y is no stand-in for the interval's mass
    loc, scale, h = 5.0, 0.6, 1.0
    y = np.array([9.5, 10.0, 12.0, 7.0])
    params = [torch.tensor(v, dtype=dtype) for v in (loc, scale)]
    tail = _tail_nll(lambda x: stats.norm.sf(x, float(params[0]), float(params[1])), y, h)
    yt = torch.tensor(y, dtype=torch.float64)
    np.testing.assert_allclose(ops.interval_nll(torch.distributions.Normal(*params), yt, h).numpy(), tail, rtol=1e-9)
    # the same Normal as a two-component mixture (an ensemble's, MC dropout's), and mirrored into the lower tail
    mix = NormalMixture(torch.zeros(1, 2, dtype=dtype), params[0].expand(1, 2), params[1].expand(1, 2))
    np.testing.assert_allclose(ops.interval_nll(mix, yt.unsqueeze(-1), h).squeeze(-1).numpy(), tail, rtol=1e-9)
    mirrored = ops.interval_nll(torch.distributions.Normal(*params), 2 * float(params[0]) - yt, h)
    np.testing.assert_allclose(mirrored.numpy(), tail, rtol=1e-9)
    # a family without a closed form (Student-t: CDF values, then a log-density rule where they cannot resolve it)
    df = torch.tensor(30.0, dtype=dtype)
    far = np.array([9.5, 30.0, 60.0])
    t_tail = _tail_nll(lambda x: stats.t.sf(x, float(df), float(params[0]), float(params[1])), far, h)
    got = ops.interval_nll(torch.distributions.StudentT(df, *params), torch.tensor(far, dtype=torch.float64), h)
    # a float32 Student-t's log-density carries its normalising constant rounded to float32 (~6e-8 of ~1 nat), and
    # the rule integrates that density: its NLL@h is as exact as its NLL, no more
    np.testing.assert_allclose(got.numpy(), t_tail, rtol=1e-9, atol=0 if dtype == torch.float64 else 1e-7)


def test_a_count_far_in_a_continuous_predictives_upper_tail_keeps_its_probability():
    # Laplace(2, 0.5) on counts: log P(y - 1/2 < Y <= y + 1/2) = log(1/2) - (y - 1/2 - 2) / 0.5 + log(1 - e^-2) above 2
    d = torch.distributions.Laplace(torch.tensor([2.0]), torch.tensor([0.5]))
    y = torch.tensor([12.0, 20.0, 30.0, 80.0], dtype=torch.float64)
    exact = math.log(0.5) - (y - 2.5) / 0.5 + math.log(1 - math.exp(-2))
    torch.testing.assert_close(ops.binned_log_prob(d, y), exact, rtol=1e-9, atol=0)
    # the bin of 0 holds everything below 1/2
    assert float(ops.binned_log_prob(d, torch.tensor([0.0], dtype=torch.float64))) == pytest.approx(math.log(0.5 * math.exp(-3)))


def test_mass_stacked_on_the_grid_lowers_the_density_nll_without_bound_but_not_the_interval_nll():
    y = torch.tensor([3.0, 5.0, 6.0, 5.0], dtype=torch.float64)
    values = torch.tensor([3.0, 4.0, 5.0, 6.0, 7.0], dtype=torch.float64)
    spiky = NormalMixture(torch.zeros(4, 5, dtype=torch.float64), values.expand(4, 5), torch.full((4, 5), 1e-4, dtype=torch.float64))
    metrics = PredictiveMetrics("regression", full=True, intervals=False, resolution=1.0)
    metrics.update(spiky, y)
    out = metrics.compute()
    assert float(out["nll"]) < -5  # the density's NLL rewards the spikes
    np.testing.assert_allclose(float(out["nll_binned"]), math.log(5), rtol=1e-9)  # mass 1/5 per unit interval


def _run(dataset, method, nll, binned, split):
    recipe = recipes()[method]
    return None, {"status": "ok", "labels": {"dataset": dataset, "head": recipe.head, "split": split},
                  "metrics": {"nll": nll, "nll_binned": binned}, "train": {"target_resolution": 1.0},
                  "config": {"dataset": {"protocol": "uci"}, "loss": {"_target_": recipe.objective}}}


def test_no_method_is_bold_on_a_gridded_dataset_for_its_density_nll_alone():
    # a mixture beats the Gaussian by 3.7 nats of density NLL on wine's six values, and loses at the grid's resolution
    results = [_run("wine", "mdn", -2.8 + 0.01 * s, 1.02, s) for s in range(3)] + \
              [_run("wine", "gaussian_nll", 0.93 + 0.01 * s, 0.95, s) for s in range(3)]
    found = uci.collect(results)
    assert uci.ranked_best(found["wine"]) == "gaussian_nll"
    board = uci.leaderboard(found, ["wine"], ["gaussian_nll", "mdn"])
    cells = dict(zip(board.columns, board.rows[0][1]))
    assert not cells["mdn"].best  # the lowest density NLL, but not for predictive skill
    binned = uci.binned_leaderboard(found, ["wine"], ["gaussian_nll", "mdn"])
    assert binned.rows[0][0] == "wine (1)" and dict(zip(binned.columns, binned.rows[0][1]))["gaussian_nll"].best


def _spike_and_honest(y):
    """Two predictives of integer targets y: mass stacked on the grid value (and the rest far off), and an honest
    Normal around it. The first wins by density NLL, the second at the targets' resolution h = 1."""
    spike = NormalMixture(torch.zeros(*y.shape, 2, dtype=torch.float64), torch.stack([y, y + 5], -1),
                          torch.tensor([1e-3, 1.0], dtype=torch.float64).expand(*y.shape, 2))
    return spike, torch.distributions.Normal(y, torch.full_like(y, 0.3))


def test_validation_scores_rank_at_the_resolution_per_model_of_a_stack():
    from densbench.evaluation.metrics import ModelScores

    y = torch.arange(6, dtype=torch.float64)
    for alone, stacked in zip(_spike_and_honest(y), _spike_and_honest(torch.stack([y, y]))):
        scores = ModelScores("regression", 2, [1.0, None])  # model 0's job is recorded to whole numbers, model 1's not
        scores.update(stacked, torch.stack([y, y]))
        nll = scores.compute()["nll"]
        torch.testing.assert_close(nll[0], ops.interval_nll(alone, y, 1.0).mean())
        torch.testing.assert_close(nll[1], -alone.log_prob(y).double().mean())
    density = [float(-d.log_prob(y).mean()) for d in _spike_and_honest(y)]
    binned = [float(ops.interval_nll(d, y, 1.0).mean()) for d in _spike_and_honest(y)]
    assert density[0] < density[1] and binned[1] < binned[0]


def test_a_candidate_is_chosen_at_the_targets_resolution():
    from densbench.evaluation import candidates

    y = torch.arange(6, dtype=torch.float64)
    options = _spike_and_honest(y)
    assert candidates.choose(lambda i, noise: options[i], 2, None, y).index == 0  # the density NLL prefers the spike
    assert candidates.choose(lambda i, noise: options[i], 2, None, y, resolution=1.0).index == 1


def test_an_interval_across_which_the_log_density_falls_by_hundreds_of_nats_keeps_its_digits():
    # a unit bin one step from a narrow predictive's centre: the mass is too small for two CDF values, and one
    # 16-point rule over the bin was 2.7 nats off for a Laplace of scale 1e-3 (-log of its mass: 500.7)
    from scipy.special import betainc

    from densbench.distributions.recalibrated import Recalibrated

    y, h = torch.tensor([1.0], dtype=torch.float64), 1.0
    for b in (1e-2, 1e-3, 1e-4):
        lap = torch.distributions.Laplace(torch.tensor([0.0], dtype=torch.float64), torch.tensor([b], dtype=torch.float64))
        exact = -(math.log(0.5) - 0.5 / b + math.log(-math.expm1(-h / b)))  # 1/2 e^{-x/b} between 1/2 and 3/2
        assert float(ops.interval_nll(lap, y, h)) == pytest.approx(exact, rel=1e-12)
    for df in (30.0, 1000.0):  # an evidential predictive with much evidence: near-Gaussian, 25-50 nats out
        t = torch.distributions.StudentT(torch.tensor([df], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64),
                                         torch.tensor([0.05], dtype=torch.float64))
        sf = [0.5 * betainc(df / 2, 0.5, df / (df + (x / 0.05) ** 2)) for x in (0.5, 1.5)]  # upper tails, no cancellation
        exact = -math.log(sf[0] * (1 - sf[1] / sf[0]) / h)
        assert float(ops.interval_nll(t, y, h)) == pytest.approx(exact, rel=1e-10)
    # a Gaussian recalibrated by the identity map takes the generic route; the Gaussian's own is a closed form
    base = torch.distributions.Normal(torch.tensor([0.0], dtype=torch.float64), torch.tensor([0.02], dtype=torch.float64))
    same = Recalibrated(base, torch.tensor([0.0, 1.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert float(ops.interval_nll(same, y, h)) == pytest.approx(float(ops.interval_nll(base, y, h)), rel=1e-10)


def test_a_bin_narrow_against_the_spread_keeps_its_digits_in_the_middle_and_in_the_tails():
    # two CDF values of a bin 1e-9 sigma wide agree to 9 digits, and their difference kept 7 (1e-5 relative
    # error 9 sigma out); the Gaussian's and a Gaussian mixture's interval masses must not depend on that
    import mpmath as mp

    mp.mp.dps = 120
    rng = np.random.default_rng(3)
    z = np.concatenate([[0.3, -0.2, 9.0, -5.0, 30.0], rng.uniform(-35, 35, 20)])
    w = np.concatenate([[1e-9, 1e-12, 1e-9, 1e-7, 1e-3], 10.0 ** rng.uniform(-12, 0, 20)])
    y, h = torch.as_tensor(z), torch.as_tensor(w)
    normal = torch.distributions.Normal(torch.zeros_like(y), torch.ones_like(y))
    lone = NormalMixture(torch.zeros(len(z), 1, dtype=torch.float64), torch.zeros(len(z), 1, dtype=torch.float64),
                         torch.ones(len(z), 1, dtype=torch.float64))
    for i, (zi, wi) in enumerate(zip(z, w)):
        lo, hi = mp.mpf(zi) - mp.mpf(wi) / 2, mp.mpf(zi) + mp.mpf(wi) / 2  # the bin itself, not its ends rounded
        mass = mp.ncdf(-lo) - mp.ncdf(-hi) if lo > 0 else mp.ncdf(hi) - mp.ncdf(lo)  # each side's small tail
        want = float(-mp.log(mass / mp.mpf(wi)))
        assert float(ops.interval_nll(normal, y, h)[i]) == pytest.approx(want, rel=1e-13, abs=1e-13), (zi, wi)
        assert float(ops.interval_nll(lone, y, h)[i]) == pytest.approx(want, rel=1e-13, abs=1e-13), (zi, wi)


def test_a_bin_narrow_against_the_spread_keeps_its_digits_for_a_family_without_a_closed_form():
    # Student-t (df 5) and Laplace take the generic route: two CDF values of a bin 1e-9 wide at 0.3 left 2e-7 nats
    # of error, 5e-7 at 12 with a 1e-5 bin; such bins are integrated now (a Laplace bin across its kink: ~1e-10)
    import mpmath as mp

    mp.mp.dps = 60
    f64 = dict(dtype=torch.float64)
    t = torch.distributions.StudentT(torch.tensor(5.0, **f64))
    lap = torch.distributions.Laplace(torch.tensor(0.0, **f64), torch.tensor(1.0, **f64))
    t_pdf = lambda x: mp.gamma(3) / (mp.sqrt(5 * mp.pi) * mp.gamma(mp.mpf(5) / 2)) * (1 + x * x / 5) ** -3  # noqa: E731
    lap_pdf = lambda x: mp.exp(-abs(x)) / 2  # noqa: E731
    for dist, pdf, tol in ((t, t_pdf, 1e-11), (lap, lap_pdf, 5e-10)):
        for y in (0.0, 1e-7, 0.3, 4.0, 12.0, -3.0):
            for h in (1e-2, 1e-4, 1e-6, 1e-9, 1e-12):
                yt = torch.tensor([y], **f64)
                lo, hi = mp.mpf(y) - mp.mpf(h) / 2, mp.mpf(y) + mp.mpf(h) / 2
                want = float(-mp.log(mp.quad(pdf, [lo, 0, hi] if lo < 0 < hi else [lo, hi]) / mp.mpf(h)))
                assert float(ops.interval_nll(dist, yt, h)) == pytest.approx(want, rel=0, abs=tol), (dist, y, h)


def test_the_rule_for_narrow_bins_keeps_to_what_it_improves():
    # float32 parameters: the log-density's constants are float32, so two CDF values (float64 inside) stay the
    # better estimate (integrating the density of a float32 Student-t of df 1e4 was 5e-3 nats off)
    from scipy import stats as st

    y = torch.tensor([0.3], dtype=torch.float64)
    for df in (3.0, 100.0, 1e4):
        want = -math.log((st.t.cdf(0.3 + 5e-6, df) - st.t.cdf(0.3 - 5e-6, df)) / 1e-5)
        got = float(ops.interval_nll(torch.distributions.StudentT(torch.tensor(df)), y, 1e-5))
        assert got == pytest.approx(want, abs=1e-8), df
    # a bin with an infinite end is never integrated: Laplace(0, 1) over (10, inf) holds e^-10 / 2
    lap = torch.distributions.Laplace(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    got = ops.log_interval_mass(lap, torch.tensor([10.0], dtype=torch.float64), torch.tensor([math.inf], dtype=torch.float64))
    assert float(got) == pytest.approx(math.log(0.5) - 10, rel=1e-12)
    with pytest.raises(ValueError, match="positive width"):
        ops.interval_nll(lap, y, 0.0)


def test_a_narrow_bin_of_a_gaussian_off_the_unit_scale_keeps_its_width():
    # each end standardised on its own carries ulp(z) of rounding: a bin 1e-12 wide at 3.5 sigma lost 8.4e-5 nats
    import mpmath as mp

    mp.mp.dps = 50
    loc, scale = 1.3, 0.37
    d = torch.distributions.Normal(torch.tensor([loc], dtype=torch.float64), torch.tensor([scale], dtype=torch.float64))
    for z, w in ((3.5, 1e-12), (7.3, 1e-9), (0.2, 1e-12), (-20.0, 1e-10)):
        lo = loc + scale * z
        hi = lo + w
        a, b = ((mp.mpf(v) - mp.mpf(loc)) / mp.mpf(scale) for v in (lo, hi))
        want = mp.log(mp.ncdf(-a) - mp.ncdf(-b)) if z > 0 else mp.log(mp.ncdf(b) - mp.ncdf(a))
        got = ops.log_interval_mass(d, torch.tensor([lo], dtype=torch.float64), torch.tensor([hi], dtype=torch.float64))
        assert float(got) == pytest.approx(float(want), abs=1e-13), (z, w)
