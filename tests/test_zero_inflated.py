"""Zero-inflated count heads (head=zip, head=zinb) beyond the common contract (tests/test_conformance.py):
log pmfs against scipy's Poisson and negative binomial at the cases count heads break on (a large mean with a
small shape, a zero the model all but rules out, very large counts), finite NLL gradients there, a float64
gradcheck across them, the closed-form CRPS against scoringrules and against pmf sums, and quantiles of a
tail too heavy to put on a grid."""

import math

import numpy as np
import pytest
import scoringrules as sr
import torch
from scipy import stats
from torch.autograd import gradcheck

from densbench.distributions import ops
from densbench.distributions.classes import ZeroInflatedPoisson
from densbench.distributions.families import zip as zip_module
from densbench.distributions.families.zinb import ZeroInflatedNegativeBinomial
from densbench.distributions.families.zip import ZeroInflatedPoissonFamily
from densbench.errors import ConfigError
from densbench.objectives.nll import NLL

F64 = torch.float64
ZIP, ZINB = ZeroInflatedPoissonFamily(), ZeroInflatedNegativeBinomial()
LOG_SHAPE_1E_3 = math.log(math.expm1(1e-3))  # the softplus raw output of a shape r = 1e-3

# (family, raw outputs, target): the GluonTS / darts failure cases
EXTREMES = [
    pytest.param(ZINB, {"mean": math.log(1e4), "shape": LOG_SHAPE_1E_3, "gate": 0.0}, 0.0, id="zinb-mean1e4-shape1e-3-y0"),
    pytest.param(ZINB, {"mean": math.log(1e4), "shape": LOG_SHAPE_1E_3, "gate": 0.0}, 7.0, id="zinb-mean1e4-shape1e-3-y7"),
    pytest.param(ZINB, {"mean": math.log(1e4), "shape": 50.0, "gate": -30.0}, 0.0, id="zinb-tiny-zero-probability"),
    pytest.param(ZIP, {"eta": math.log(1e4), "gate": -30.0}, 0.0, id="zip-tiny-zero-probability"),
    pytest.param(ZIP, {"eta": math.log(1e4), "gate": 30.0}, 3.0, id="zip-certain-zero-y3"),
    pytest.param(ZIP, {"eta": 0.0, "gate": 0.0}, 1e5, id="zip-y1e5"),
    pytest.param(ZINB, {"mean": 0.0, "shape": 0.0, "gate": 0.0}, 1e5, id="zinb-y1e5"),
    pytest.param(ZINB, {"mean": math.log(1e5), "shape": -12.0, "gate": 2.0}, 1e5, id="zinb-y1e5-mean1e5-shape-at-floor"),
]


def _raw(values, dtype=F64, grad=False):
    return {k: torch.full((1, 1), v, dtype=dtype).requires_grad_(grad) for k, v in values.items()}


def _scipy_base(fam, dist):
    b = dist.base
    if fam is ZIP:
        return stats.poisson(b.rate.detach().numpy())
    return stats.nbinom(b.total_count.detach().numpy(), torch.sigmoid(-b.logits).detach().numpy())


@pytest.mark.parametrize("fam,values,y", EXTREMES)
def test_log_pmf_matches_scipy_at_the_extremes(fam, values, y):
    raw = _raw(values)
    dist = fam.distribution(raw)
    target = torch.full((1,), y, dtype=F64)
    base = _scipy_base(fam, dist).logpmf(y)
    log_gate, log_stay = -np.logaddexp(0, -values["gate"]), -np.logaddexp(0, values["gate"])
    expected = np.logaddexp(log_gate, log_stay + base) if y == 0 else log_stay + base
    np.testing.assert_allclose(dist.log_prob(target).numpy(), expected, rtol=1e-10)
    nll = fam.nll_terms(raw, target.view(1, 1)) + fam.nll_constant(target.view(1, 1))
    np.testing.assert_allclose(nll.detach().numpy().ravel(), -expected, rtol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("fam,values,y", EXTREMES)
def test_nll_and_its_gradients_are_finite_at_the_extremes_and_analytic_is_autograd(fam, values, y, dtype):
    raw = _raw(values, dtype, grad=True)
    target = torch.full((1, 1), y, dtype=dtype)
    value, grads = fam.nll_kernel(raw, target, 1.0)
    fam.nll_terms(raw, target).sum().backward()
    assert bool(torch.isfinite(value))
    for name, g in grads.items():
        assert bool(torch.isfinite(g).all()), name
        # float32: the two paths round differently where a gradient is a small difference of large terms
        tol = (1e-3, 1e-6) if dtype == torch.float32 else (1e-10, 1e-12)
        torch.testing.assert_close(g, raw[name].grad, rtol=tol[0], atol=tol[1])


# large counts alone and with a wider step: a finite difference of an NLL of ~1e5 rounds by ~1e-16 * 1e5 / eps,
# which at eps = 1e-6 is more than the gate's gradient may be off
@pytest.mark.parametrize("counts,eps", [([0, 0, 0, 1, 3, 40], 1e-6), ([1e3, 1e3], 1e-6), ([1e5], 1e-3)], ids=["small", "1e3", "1e5"])
@pytest.mark.parametrize("fam", [ZIP, ZINB], ids=["zip", "zinb"])
def test_analytic_gradient_passes_float64_gradcheck_across_zeros_and_large_counts(fam, counts, eps):
    g = torch.Generator().manual_seed(0)
    names = list(fam.fields())
    raw = [(torch.randn(1, len(counts), 1, generator=g, dtype=F64) * 2).requires_grad_() for _ in names]
    y = torch.tensor(counts, dtype=F64).view(1, -1, 1)
    nll = NLL()

    def loss(*fields):
        return nll.loss(fam, dict(zip(names, fields)), y, (), "analytic")

    assert gradcheck(loss, raw, eps=eps, atol=1e-7, rtol=1e-5)


def _random(fam, n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    raw = {f: torch.randn(n, 1, generator=g, dtype=F64) * 1.5 for f in fam.fields()}
    torch.manual_seed(seed)
    dist = fam.distribution(raw)
    return raw, dist, dist.sample()


def test_crps_without_a_gate_is_the_base_crps_of_scoringrules():
    raw, _, y = _random(ZIP)
    pois = ZIP.distribution({**raw, "gate": torch.full_like(raw["gate"], -60.0)})
    np.testing.assert_allclose(ops.crps(pois, y).numpy(), sr.crps_poisson(y.numpy(), pois.rate.numpy(), backend="numpy"),
                               rtol=1e-11, atol=1e-12)
    raw, _, y = _random(ZINB)
    nb = ZINB.distribution({**raw, "gate": torch.full_like(raw["gate"], -60.0)}).base
    ref = sr.crps_negbinom(y.numpy(), nb.total_count.numpy(), mu=nb.mean.numpy(), backend="numpy")
    got = ops.crps(ZINB.distribution({**raw, "gate": torch.full_like(raw["gate"], -60.0)}), y).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("fam", [ZIP, ZINB], ids=["zip", "zinb"])
def test_closed_form_crps_is_the_ranked_probability_score(fam):
    _, dist, y = _random(fam)
    torch.testing.assert_close(ops.crps(dist, y), ops.crps.generic(dist, y), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("fam", [ZIP, ZINB], ids=["zip", "zinb"])
def test_both_quantile_searches_give_the_smallest_count_whose_cdf_reaches_the_level(fam):
    _, dist, _ = _random(fam, n=100)
    levels = torch.tensor([0.005, 0.3, 0.5, 0.77, 0.995, 0.0], dtype=F64).view(-1, 1).expand(-1, 100)
    top = ops.tail_bound(dist)
    grid, bisection = zip_module._icdf_on_grid(dist, levels, top), zip_module._icdf_by_bisection(dist, levels, top)
    torch.testing.assert_close(grid, bisection, rtol=0, atol=0)
    assert bool((grid[-1] == 0).all())  # level 0: the first count
    grid, levels = grid[:-1], levels[:-1]
    assert bool((ops.cdf(dist, grid) >= levels).all()) and bool((ops.cdf(dist, grid - 1) < levels).all())


@pytest.mark.parametrize("fam", [ZIP, ZINB], ids=["zip", "zinb"])
def test_the_tail_bound_in_float32_is_no_longer_than_in_float64(fam):
    # 1 - F must be exactly 0 where the base's is: a rounding residue of 1e-8 would count up to 10^7 every row
    raw = _random(fam, n=200)[0]
    f32 = fam.distribution({k: v.float() for k, v in raw.items()})
    assert ops.tail_bound(f32) <= ops.tail_bound(fam.distribution(raw)) < ops.MAX_COUNT


def test_a_tail_too_heavy_for_a_grid_is_scored_in_bounded_memory():
    # shapes on their floor: the tail bound is 10^7 counts a row, which pmf sums would hold for every row
    n = 200
    raw = {"mean": torch.linspace(0, 8, n).view(n, 1), "shape": torch.full((n, 1), -14.0), "gate": torch.zeros(n, 1)}
    dist = ZINB.distribution(raw)
    y = torch.arange(n, dtype=torch.float32) % 7
    assert ops.tail_bound(dist) == ops.MAX_COUNT
    crps = ops.crps(dist, y)
    q = ops.quantile(dist, torch.tensor([0.1, 0.5, 0.9999]))
    assert bool(torch.isfinite(crps).all()) and bool((crps >= 0).all())
    assert bool((ops.cdf(dist, q) >= torch.tensor([0.1, 0.5, 0.9999]).view(-1, 1)).all())


def test_the_truth_class_takes_the_gate_as_probability_or_logits():
    rate, gate = torch.tensor([0.5, 3.0, 40.0], dtype=F64), torch.tensor([0.3, 1e-12, 0.999], dtype=F64)
    y = torch.tensor([0.0, 2.0, 0.0], dtype=F64)
    by_prob, by_logit = ZeroInflatedPoisson(gate, rate), ZeroInflatedPoisson(None, rate, gate_logits=torch.logit(gate))
    torch.testing.assert_close(by_prob.log_prob(y), by_logit.log_prob(y), rtol=1e-12, atol=0)
    torch.testing.assert_close(by_prob.mean, (1 - gate) * rate)
    torch.testing.assert_close(by_prob.variance, (1 - gate) * rate * (1 + gate * rate))
    with pytest.raises(ValueError):
        ZeroInflatedPoisson(gate, rate, gate_logits=torch.logit(gate))


def test_initial_gate_is_checked_and_set():
    with pytest.raises(ConfigError, match="init_gate"):
        ZeroInflatedNegativeBinomial(init_gate=1.0)
    bias = {"mean": torch.zeros(1), "shape": torch.zeros(1), "gate": torch.zeros(1)}
    ZeroInflatedNegativeBinomial(init_gate=0.2, init_shape=2.0).init_bias(bias)
    assert math.isclose(torch.sigmoid(bias["gate"]).item(), 0.2, rel_tol=1e-6)
    assert math.isclose(torch.nn.functional.softplus(bias["shape"]).item() + 1e-6, 2.0, rel_tol=1e-6)
