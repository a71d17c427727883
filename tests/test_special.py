"""Special functions against scipy."""

import math

import numpy as np
import pytest
import torch
from scipy import special

from densbench.distributions.special import betainc, log_beta


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-11), (torch.float32, 1e-6)])
def test_betainc_matches_scipy_over_a_wide_range(dtype, rtol):
    g = np.random.default_rng(0)
    a = np.exp(g.uniform(np.log(0.05), np.log(500.0), 4000))
    b = np.exp(g.uniform(np.log(0.05), np.log(500.0), 4000))
    x = np.concatenate([g.uniform(0, 1, 3000), [0.0, 1.0] * 500])
    ta, tb, tx = (torch.tensor(v, dtype=dtype) for v in (a, b, x))
    got = betainc(ta, tb, tx).double().numpy()
    # the reference at the inputs as rounded to `dtype` (near x = 1 with large a, I_x is steep)
    ref = special.betainc(*(t.double().numpy() for t in (ta, tb, tx)))
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * 1e-3)


def test_betainc_gives_student_t_cdf_and_is_differentiable_in_x():
    from scipy import stats

    t = torch.linspace(-30, 30, 201, dtype=torch.float64)
    nu = torch.tensor(3.7, dtype=torch.float64)
    x = (nu / (nu + t * t)).requires_grad_(True)
    tail = 0.5 * betainc(nu / 2, torch.tensor(0.5, dtype=torch.float64), x)
    cdf = torch.where(t > 0, 1 - tail, tail)
    np.testing.assert_allclose(cdf.detach().numpy(), stats.t.cdf(t.numpy(), 3.7), rtol=1e-11, atol=1e-14)
    (g,) = torch.autograd.grad(tail.sum(), x)
    # d/dx I_x(a, b) = x^(a-1) (1-x)^(b-1) / B(a, b)
    a, b = 3.7 / 2, 0.5
    xs = x.detach().numpy()
    with np.errstate(divide="ignore"):
        expected = 0.5 * xs ** (a - 1) * (1 - xs) ** (b - 1) / special.beta(a, b)
    ok = (xs > 1e-6) & (xs < 1 - 1e-6)  # the density of I_x diverges at the ends
    np.testing.assert_allclose(g.numpy()[ok], expected[ok], rtol=1e-7)


def test_log_beta():
    a, b = torch.tensor([0.5, 3.0, 200.0], dtype=torch.float64), torch.tensor([0.5, 0.25, 7.0], dtype=torch.float64)
    np.testing.assert_allclose(log_beta(a, b).numpy(), special.betaln(a.numpy(), b.numpy()), rtol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_student_t_quantiles_on_a_level_axis_equal_every_entrys_own(dtype):
    # the metrics ask 199 levels of every entry: the Student-t answers levels p and 1 - p from one
    # evaluation per entry, which must give each entry exactly its own quantile
    from torch.distributions import StudentT

    from densbench.distributions import ops
    g = torch.Generator().manual_seed(0)
    df = (0.6 + 30 * torch.rand(50, generator=g)).to(dtype)
    loc, scale = torch.randn(50, generator=g).to(dtype), (0.1 + torch.rand(50, generator=g)).to(dtype)
    levels = (torch.arange(1, 200, dtype=torch.float64) / 200).to(dtype).unsqueeze(-1)  # [199, 1]
    got = ops.icdf(StudentT(df, loc, scale), levels).double()
    p, nu = torch.broadcast_tensors(levels.double(), df.double())
    ref = loc.double() + scale.double() * torch.from_numpy(special.stdtrit(nu.numpy(), p.numpy()))
    # float64: exact, or (a batch of thousands) from a table in 1/nu checked to 1e-12 (relative, absolute
    # below 1); float32: loc + scale t rounds near 0
    torch.testing.assert_close(got, ref, rtol=1e-12 if dtype == torch.float64 else 2e-6,
                               atol=1e-12 if dtype == torch.float64 else 1e-6)
    assert ops.shared_levels(p) is not None and ops.shared_levels(torch.rand(3, 4)) is None


def test_tabulated_student_t_quantiles_match_scipy_for_every_df_and_level():
    # the table covers nu >= 2 (1/nu in [0, 1/2]) and is exact beyond; the normal limit at nu = inf
    from densbench.distributions.special import student_t_icdf_levels

    levels = torch.arange(1, 101, dtype=torch.float64) / 200
    nu = torch.cat([2 + 300 * torch.rand(4200, generator=torch.Generator().manual_seed(1), dtype=torch.float64),  # a table's batch
                    torch.tensor([2.0, 2.5, 1.99, 1.0, 0.3, 1e9, math.inf], dtype=torch.float64)])
    got = student_t_icdf_levels(levels, nu)
    ref = torch.from_numpy(special.stdtrit(nu.numpy()[None, :], levels.numpy()[:, None]))
    ref[:, nu == math.inf] = torch.from_numpy(special.ndtri(levels.numpy()))[:, None]
    assert got.shape == (100, len(nu))
    assert ((got - ref).abs() / ref.abs().clamp(min=1)).max() <= 1e-12


def test_a_small_batch_of_student_t_quantiles_is_exact_and_makes_no_table(monkeypatch):
    # below _T_TABLE_MIN_ROWS making a table costs more than it saves: stdtrit itself, bit for bit
    from densbench.distributions import special as dspecial
    monkeypatch.setattr(dspecial, "_T_TABLES", {})
    levels = torch.arange(1, 101, dtype=torch.float64) / 200
    nu = 2 + 300 * torch.rand(500, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref = torch.from_numpy(special.stdtrit(nu.numpy()[None, :], levels.numpy()[:, None]))
    assert torch.equal(dspecial.student_t_icdf_levels(levels, nu), ref) and dspecial._T_TABLES == {}


def test_student_t_quantiles_are_exact_when_no_table_reaches_the_tolerance(monkeypatch):
    # a cap below the nodes the levels need: no table is kept, and every quantile is stdtrit's own
    from densbench.distributions import special as dspecial
    monkeypatch.setattr(dspecial, "_T_TABLE_MAX_NODES", 512)
    monkeypatch.setattr(dspecial, "_T_TABLES", {})
    levels = torch.tensor([1e-6, 0.3, 0.999999], dtype=torch.float64)
    nu = torch.tensor([2.0, 3.7, 40.0, math.inf], dtype=torch.float64)
    assert dspecial._t_table(levels.numpy()) is None
    # a batch that would use a table if one were kept: its three finite df >= 2 fill _T_TABLE_MIN_ROWS rows
    nu = nu.repeat(-(-dspecial._T_TABLE_MIN_ROWS // 3))
    ref = torch.from_numpy(special.stdtrit(nu.numpy()[None, :], levels.numpy()[:, None]))
    ref[:, nu == math.inf] = torch.from_numpy(special.ndtri(levels.numpy()))[:, None]
    assert torch.equal(dspecial.student_t_icdf_levels(levels, nu), ref)


@pytest.mark.parametrize("a", [1e-3, 0.5, 3.0, 19.99, 20.0, 150.0, 1e4, 1e8, 1e12])
def test_the_half_step_of_lgamma_and_digamma_keeps_its_digits_for_every_argument(a):
    import mpmath as mp

    from densbench.distributions.special import digamma_half_step, log_gamma_half_step

    mp.mp.dps = 40
    x = torch.tensor([a], dtype=torch.float64)
    want_r = mp.loggamma(mp.mpf(a) + 0.5) - mp.loggamma(mp.mpf(a))
    want_d = mp.digamma(mp.mpf(a) + 0.5) - mp.digamma(mp.mpf(a))
    # two lgammas of 1.7e9 subtracted (df 1e8) leave about 1e-8 of the difference's digits
    assert float(log_gamma_half_step(x)) == pytest.approx(float(want_r), rel=1e-14)
    assert float(digamma_half_step(x)) == pytest.approx(float(want_d), rel=2e-14)


def test_the_half_step_of_lgamma_is_differentiable_with_the_digamma_half_step_as_its_derivative():
    from densbench.distributions.special import digamma_half_step, log_gamma_half_step

    x = torch.tensor([1e-2, 2.0, 19.5, 20.5, 300.0, 1e6], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(log_gamma_half_step, (x,))
    (grad,) = torch.autograd.grad(log_gamma_half_step(x).sum(), x)
    torch.testing.assert_close(grad, digamma_half_step(x.detach()), rtol=1e-13, atol=0)


def _mp_student_t(nu, z):
    import mpmath as mp

    nu, z = mp.mpf(nu), mp.mpf(z)
    log_f = mp.loggamma((nu + 1) / 2) - mp.loggamma(nu / 2) - mp.log(nu * mp.pi) / 2 - (nu + 1) / 2 * mp.log1p(z * z / nu)
    cdf = 1 - mp.betainc(nu / 2, mp.mpf(1) / 2, 0, nu / (nu + z * z), regularized=True) / 2  # z >= 0
    last = 2 * mp.sqrt(nu) * mp.beta(0.5, nu - 0.5) / ((nu - 1) * mp.beta(0.5, nu / 2) ** 2)
    return log_f, z * (2 * cdf - 1) + 2 * mp.exp(log_f) * (nu + z * z) / (nu - 1) - last


@pytest.mark.parametrize("nu", [1.5, 30.0, 1e4, 1e8, 1e12])
def test_student_t_log_density_and_crps_keep_their_digits_up_to_the_gaussian_limit(nu):
    import mpmath as mp

    from densbench.distributions.families.student_t import _log_density, crps_student_t

    mp.mp.dps = 60
    log_f, crps = _mp_student_t(nu, 0.7)
    t = torch.tensor([nu], dtype=torch.float64)
    z = torch.tensor([0.7], dtype=torch.float64)
    assert float(_log_density(z, t)) == pytest.approx(float(log_f), rel=1e-14)
    d = torch.distributions.StudentT(t, torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    assert float(crps_student_t(d, z)) == pytest.approx(float(crps), rel=1e-13)
