"""The fast evaluation routes against slow independent references: mixture quantiles against
bisection on scipy's normal CDF, the KL to the MDN document's posterior against a much finer rule."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import ndtr, ndtri

from densbench.distributions import ops
from densbench.distributions.classes import InverseSinePosterior, NormalMixture, legendre_panels

F64 = torch.float64


def sharp_mixtures(n: int, k: int = 5, dtype=F64, seed: int = 0) -> NormalMixture:
    """Mixtures with well separated, very unequal and very narrow components: Newton's hard cases."""
    g = torch.Generator().manual_seed(seed)
    logits = 4 * torch.randn(n, k, generator=g, dtype=F64)
    loc = 10 * torch.randn(n, k, generator=g, dtype=F64)
    scale = torch.exp(3 * torch.randn(n, k, generator=g, dtype=F64) - 2)
    return NormalMixture(logits.to(dtype), loc.to(dtype), scale.to(dtype))


def bisection_quantiles(d: NormalMixture, p: np.ndarray) -> np.ndarray:
    """Quantiles [L, N] by 200 bisections of the mixture CDF written with scipy's ndtr."""
    w, m, s = (t.double().numpy()[None] for t in (d.weights, d.loc, d.scale))  # [1, N, K]
    lo = np.full(p.shape, (m - 40 * s).min()) * np.ones_like(p)
    hi = np.full(p.shape, (m + 40 * s).max()) * np.ones_like(p)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        below = (w * ndtr((mid[..., None] - m) / s)).sum(-1) < p
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def test_mixture_quantiles_equal_bisection_to_1e_10():
    d = sharp_mixtures(300)
    levels = torch.cat([torch.tensor([1e-9, 1e-4]), torch.linspace(0.005, 0.995, 60), torch.tensor([1 - 1e-4])]).double()
    q = ops.quantile(d, levels)  # [L, N]
    ref = bisection_quantiles(d, levels.numpy()[:, None] * np.ones((1, 300)))
    scale = np.maximum(1.0, np.abs(ref))
    assert np.max(np.abs(q.numpy() - ref) / scale) < 1e-10
    # and the CDF there is the level asked for (to 1e-10 relative in x times densities up to ~e^8)
    assert torch.allclose(ops.cdf(d, q), levels[:, None].expand_as(q), rtol=0, atol=1e-8)


@pytest.mark.parametrize("p_shape", [(7, 4, 3), (1, 4, 3), (4, 3)])
def test_mixture_quantiles_take_levels_of_any_broadcastable_shape(p_shape):
    base = sharp_mixtures(12, seed=1)
    d = NormalMixture(base.mixture_distribution.logits.reshape(4, 3, 5), base.loc.reshape(4, 3, 5), base.scale.reshape(4, 3, 5))
    p = torch.rand(p_shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    q = ops.icdf(d, p)
    assert q.shape == torch.broadcast_shapes(p_shape, (4, 3))
    assert torch.allclose(ops.cdf(d, q), p.expand_as(q), rtol=0, atol=1e-8)
    lone = ops.icdf(NormalMixture(d.mixture_distribution.logits[1, 2], d.loc[1, 2], d.scale[1, 2]), p[..., 1, 2])
    assert torch.allclose(q[..., 1, 2], lone, rtol=1e-10, atol=0)  # an entry's answer does not depend on its batch


def test_a_mixture_with_one_component_has_the_normal_quantile():
    loc, scale = torch.tensor([[0.3], [-2.0]], dtype=F64), torch.tensor([[1e-3], [40.0]], dtype=F64)
    d = NormalMixture(torch.zeros(2, 1, dtype=F64), loc, scale)
    p = torch.tensor([[1e-12], [0.5], [0.975], [1 - 1e-12]], dtype=F64).expand(4, 2)
    # scipy's ndtri, not torch's Normal.icdf, which rounds 2p - 1 and so loses the far tails
    expected = loc.squeeze(-1) + scale.squeeze(-1) * torch.from_numpy(ndtri(p.numpy()))
    assert torch.allclose(ops.icdf(d, p), expected, rtol=1e-10, atol=1e-12)


def test_float32_mixture_quantiles_match_float64_to_float32_resolution():
    d64 = sharp_mixtures(200, seed=3)
    d32 = NormalMixture(d64.mixture_distribution.logits.float(), d64.loc.float(), d64.scale.float())
    levels = torch.linspace(0.01, 0.99, 99, dtype=F64)
    q32 = ops.quantile(d32, levels.float())
    # the level lies between the float64 CDF a few float32 ulps either side of the float32 answer: a
    # component narrower than an ulp of its location makes the CDF jump there, and no float32 x does better
    ulps = 4 * q32.abs().clamp_min(1e-30) * torch.finfo(torch.float32).eps
    below, above = ops.cdf(d64, (q32 - ulps).double()), ops.cdf(d64, (q32 + ulps).double())
    p = levels[:, None].expand_as(below)
    assert torch.all(below - 1e-5 <= p) and torch.all(p <= above + 1e-5)


def fine_kl(p: InverseSinePosterior, q: torch.distributions.Distribution) -> torch.Tensor:
    """KL(p || q) with uniform panels a hundred times narrower than the fast rule's."""
    x, w = (torch.as_tensor(a, dtype=F64) for a in legendre_panels(p.lo, p.hi, 0.005, 24))
    log_p = p.log_lik(x.unsqueeze(0))
    log_p = log_p - torch.logsumexp(log_p + w.log(), -1, keepdim=True)
    log_q = q.log_prob(x.unsqueeze(-1).expand(-1, p.y.shape[0])).T
    return (w * log_p.exp() * (log_p - log_q)).sum(-1)


@pytest.mark.parametrize("narrowest", [0.02, 0.1, 0.3])
def test_kl_to_the_posterior_matches_a_much_finer_rule_and_beats_the_old_grid(narrowest):
    g = torch.Generator().manual_seed(4)
    y = torch.linspace(-9, 9, 40, dtype=F64)
    post = InverseSinePosterior(y)
    logits, loc, width = (torch.randn(40, 5, generator=g, dtype=F64), 6 * torch.randn(40, 5, generator=g, dtype=F64),
                          torch.rand(40, 5, generator=g, dtype=F64))
    for q in (NormalMixture(logits, loc, narrowest + width), torch.distributions.Normal(loc[:, 0], narrowest + width[:, 0])):
        kl = torch.distributions.kl_divergence(post, q)
        ref = fine_kl(post, q)
        assert ((kl - ref).abs() / (1 + ref.abs())).max() < 1e-9  # the rows' own check is relative too
        # the posterior's own 4001-point trapezoid grid, which the KL used before (and still uses for other predictions)
        grid_x = post.grid_x.unsqueeze(-1).expand(-1, 40)
        trapezoid = (post.grid_w * (post.log_prob(grid_x).T - q.log_prob(grid_x).T)).sum(-1)
        assert (kl - ref).abs().max() < (trapezoid - ref).abs().max() / 10
        assert torch.all(kl >= 0)


def test_kl_of_the_posterior_to_itself_as_a_fine_mixture_is_near_zero():
    # a fine Gaussian-kernel histogram of the posterior approximates it: KL small, non-negative
    y = torch.tensor([-3.0, 0.5, 6.0], dtype=F64)
    post = InverseSinePosterior(y)
    x, w = post.grid_x[::20], post.grid_w[:, ::20]  # 201 kernels per row
    q = NormalMixture(w.clamp_min(1e-300).log(), x.expand(3, -1), torch.full((3, x.numel()), 0.15, dtype=F64))
    kl = torch.distributions.kl_divergence(post, q)
    assert torch.all(kl > 0) and torch.all(kl < 0.05)
    assert math.isfinite(float(kl.sum()))


def test_a_weightless_narrow_component_changes_nothing_and_float32_predictions_are_scored_in_float64():
    y = torch.tensor([-4.0, 1.0, 5.0], dtype=F64)
    post = InverseSinePosterior(y)
    logits, loc, scale = torch.zeros(3, 2, dtype=F64), torch.tensor([[-2.0, 1.0]] * 3, dtype=F64), torch.ones(3, 2, dtype=F64)
    plain = torch.distributions.kl_divergence(post, NormalMixture(logits, loc, scale))
    # a parked component: weight e^-40, scale 0.003, right where the posterior has mass
    parked = NormalMixture(torch.cat([logits, torch.full((3, 1), -40.0, dtype=F64)], 1),
                           torch.cat([loc, post.mean.unsqueeze(-1)], 1), torch.cat([scale, torch.full((3, 1), 0.003, dtype=F64)], 1))
    assert torch.allclose(torch.distributions.kl_divergence(post, parked), plain, rtol=0, atol=1e-12)
    as32 = NormalMixture(logits.float(), loc.float(), scale.float())  # exactly representable: the same prediction
    assert torch.distributions.kl_divergence(post, as32).dtype == F64
    assert torch.allclose(torch.distributions.kl_divergence(post, as32), plain, rtol=0, atol=1e-13)


def test_the_evaluation_benchmarks_kl_table_shows_the_panel_rule_beating_the_old_grid():
    # the figures reports/bench_eval.md prints, from the script's own code path
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_eval", Path(__file__).resolve().parents[1] / "scripts" / "bench_eval.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        kl = bench.kl_comparison()  # on one thread, as the benchmark measures
    finally:
        torch.set_num_threads(threads)
    assert kl["panels_max_error"] < 1e-9 < kl["grid_4001_max_error"]


def test_the_mixtures_log_density_equals_torchs_mixture_same_family():
    d = sharp_mixtures(50, seed=6)
    reference = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(logits=d.mixture_distribution.logits),
                                                      torch.distributions.Normal(d.loc, d.scale))
    x = torch.cat([torch.linspace(-60, 60, 200, dtype=F64).unsqueeze(-1).expand(-1, 50), d.loc.T])  # [205, 50], the means too
    assert torch.allclose(d.log_prob(x), reference.log_prob(x), rtol=1e-12, atol=1e-12)
    far = torch.full((1, 50), 1e6, dtype=F64)  # every component's density underflows: still finite and equal
    assert torch.allclose(d.log_prob(far), reference.log_prob(far), rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_a_student_t_ensembles_crps_is_the_integral_of_its_squared_cdf_gap_in_either_precision(dtype):
    # no closed form: the grid rule. Its outermost nodes sit at the 1 - 1e-12 quantile, which float32
    # levels rounded to 1 (an infinite node and a NaN CRPS for every float32 ensemble of Student-t members)
    from scipy import integrate, stats

    g = torch.Generator().manual_seed(7)
    n, k = 4, 5
    df = torch.tensor([1.5, 2.5, 6.0, 30.0], dtype=F64).view(n, 1).expand(n, k)
    loc, scale = torch.randn(n, k, generator=g, dtype=F64), 0.3 + torch.rand(n, k, generator=g, dtype=F64)
    y = torch.randn(n, generator=g, dtype=F64)
    mix = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(probs=torch.full((n, k), 1 / k, dtype=dtype)),
                                                torch.distributions.StudentT(df.to(dtype), loc.to(dtype), scale.to(dtype)))
    got = ops.crps(mix, y.to(dtype))
    for i in range(n):
        def F(x, i=i):
            return stats.t.cdf(x, df[i].numpy(), loc[i].numpy(), scale[i].numpy()).mean()

        below = integrate.quad(lambda x: F(x) ** 2, -np.inf, float(y[i]), limit=400)[0]
        above = integrate.quad(lambda x: (1 - F(x)) ** 2, float(y[i]), np.inf, limit=400)[0]
        # the rule refines until its error estimate is below 1e-6 of the components' spread (CRPS_CHECK, here
        # about 1): an estimate, so a few times that
        assert float(got[i]) == pytest.approx(below + above, abs=1e-5 if dtype == torch.float32 else 5e-6)


def test_float32_mixture_quantiles_at_the_outer_levels_are_finite():
    # 50 identical MC dropout passes (a row whose dropped units did not matter), in float32: the grid's
    # outermost nodes at levels 1e-12 and 1 - 1e-12 were -inf and inf (2p - 1 rounds to -1 and 1), and the
    # quantile at 0.005 came from the cell [-inf, x]: NaN, and with it the interval score
    loc, scale = 0.905439019203186, 0.08164966106414795  # as the run had them (float32)
    d = NormalMixture(torch.zeros(2, 50), torch.full((2, 50), loc), torch.full((2, 50), scale))
    p = torch.tensor([0.005, 0.5, 0.995]).view(-1, 1)
    got = ops.quantile(d, p)
    want = torch.tensor(loc + scale * ndtri(np.array([0.005, 0.5, 0.995])), dtype=torch.float32).view(-1, 1)
    assert torch.isfinite(got).all() and torch.allclose(got, want.expand_as(got), rtol=2e-6)


@pytest.mark.parametrize("k", [20, 50])
def test_the_crps_of_many_heavy_tailed_passes_is_the_integral_of_its_squared_cdf_gap(k):
    # MC dropout's 50 passes (or a 20-member ensemble) of a Student-t head: thinning each component's levels to
    # five left tail cells 1e5 wide, where the rule's endpoint correction made the CRPS of df 2.05 negative
    from scipy import special

    g = np.random.default_rng(0)
    n = 3
    y = np.array([0.0, 3.0, 1e3])
    for df in (2.05, 3.0):
        loc, scale = g.normal(0, 0.05, (n, k)), 1 + 0.05 * g.normal(size=(n, k))
        mix = torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(probs=torch.full((n, k), 1 / k, dtype=F64)),
            torch.distributions.StudentT(torch.full((n, k), df, dtype=F64), torch.tensor(loc), torch.tensor(scale)))
        got = ops.crps(mix, torch.tensor(y)).numpy()
        for i in range(n):
            def F(x, i=i):
                return special.stdtr(df, (x - loc[i]) / scale[i]).mean()

            assert got[i] == pytest.approx(crps_by_quadrature(F, y[i], [-1e4, -100, -10, 0, 10, 100, 1e4]), rel=1e-5)


def crps_by_quadrature(F, y: float, cuts: list[float]) -> float:
    """The integral of (F(x) - 1{x >= y})^2 by scipy's quad on pieces split at y and at the cuts."""
    from scipy import integrate

    pts = sorted({float(c) for c in cuts} | {float(y)})
    def gap(x):
        return F(x) ** 2 if x < y else (1 - F(x)) ** 2

    pieces = [(-np.inf, pts[0]), *zip(pts[:-1], pts[1:]), (pts[-1], np.inf)]
    return sum(integrate.quad(gap, a, b, limit=400, epsabs=1e-12, epsrel=1e-10)[0] for a, b in pieces)


def test_a_crps_the_grid_rule_cannot_settle_is_recorded_in_the_fallbacks():
    # components 1e15 apart in scale: the rule halves its cells CRPS_HALVINGS times and still doubts its
    # estimate; the value is kept, and the run's fallbacks say so instead of nothing
    from densbench.distributions.dispatch import recording_fallbacks

    wide = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(probs=torch.tensor([[0.5, 0.5]], dtype=F64)),
                                                 torch.distributions.Normal(torch.zeros(1, 2, dtype=F64), torch.tensor([[1e-12, 1e3]], dtype=F64)))
    with recording_fallbacks() as used:
        ops.crps(wide, torch.zeros(1, dtype=F64))
    assert "halvings" in used["crps"]
    plain = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(probs=torch.tensor([[0.5, 0.5]], dtype=F64)),
                                                  torch.distributions.Normal(torch.zeros(1, 2, dtype=F64), torch.tensor([[1.0, 2.0]], dtype=F64)))
    with recording_fallbacks() as used:
        ops.crps(plain, torch.zeros(1, dtype=F64))
    assert "crps" not in used


def test_a_weightless_far_component_does_not_loosen_the_crps_check():
    # the check's scale is the mixture's own interquartile span: the components' (a weightless one 1000 away)
    # let the rule stop at 1.2e-3 relative error
    comp = torch.distributions.Laplace(torch.tensor([[0.0, 1e3]], dtype=F64), torch.tensor([[1.0, 1e-3]], dtype=F64))
    mix = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(probs=torch.tensor([[1.0, 0.0]], dtype=F64)), comp)
    assert float(ops.crps(mix, torch.zeros(1, dtype=F64))) == pytest.approx(0.25, rel=1e-6)  # Laplace(0, 1) at 0: b/2


def test_a_student_t_with_scalar_parameters_has_its_cdf_quantile_and_crps():
    from scipy import stats

    d = torch.distributions.StudentT(torch.tensor(4.0, dtype=F64), torch.tensor(0.5, dtype=F64), torch.tensor(2.0, dtype=F64))
    assert float(ops.cdf(d, torch.tensor(1.0, dtype=F64))) == pytest.approx(stats.t.cdf(1.0, 4, 0.5, 2.0), rel=1e-12)
    assert float(ops.icdf(d, torch.tensor(0.3, dtype=F64))) == pytest.approx(stats.t.ppf(0.3, 4, 0.5, 2.0), rel=1e-10)
    import scoringrules

    want = float(scoringrules.crps_t(1.0, 4.0, 0.5, 2.0, backend="numpy"))
    assert float(ops.crps(d, torch.tensor(1.0, dtype=F64))) == pytest.approx(want, rel=1e-10)
