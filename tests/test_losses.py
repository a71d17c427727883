"""Loss values against torch.distributions, for both gradient paths."""

import math

import pytest
import numpy as np
import torch
from torch.distributions import Bernoulli, Categorical, MixtureSameFamily, Normal, Poisson, kl_divergence

import adapters as losses
from densbench.objectives.base import GRADS
from densbench.distributions.positivity import Positivity, Spread

SPREADS = [Spread(Positivity(k, 1e-4), on) for k in ("softplus", "exp") for on in ("variance", "std")]


def _rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * 1.5


@pytest.mark.parametrize("grad", GRADS)
@pytest.mark.parametrize("spread", SPREADS, ids=lambda s: f"{s.positivity.kind}-{s.on}")
def test_gaussian_nll_matches_normal_log_prob(grad, spread):
    mu, raw, y = _rand(50, 1, seed=1), _rand(50, 1, seed=2), _rand(50, 1, seed=3)
    sd = spread.std(raw)
    expected = -Normal(mu, sd).log_prob(y)
    assert torch.allclose(losses.gaussian_nll(mu, raw, y, spread, grad, "mean"), expected.mean(), rtol=1e-12, atol=1e-12)
    assert torch.allclose(losses.gaussian_nll(mu, raw, y, spread, grad, "sum"), expected.sum(), rtol=1e-12, atol=1e-12)


def test_positivity_values_are_base_plus_floor():
    r = torch.linspace(-30, 30, 61, dtype=torch.float64)
    sp = Positivity("softplus", 1e-3)
    ex = Positivity("exp", 1e-3)
    assert torch.allclose(sp.value(r), torch.nn.functional.softplus(r) + 1e-3, rtol=1e-12)
    assert torch.allclose(ex.value(r), torch.exp(r) + 1e-3, rtol=1e-12)
    assert math.isclose(sp.value(torch.tensor(sp.inverse(0.7), dtype=torch.float64)).item(), 0.7, rel_tol=1e-12)
    assert math.isclose(ex.value(torch.tensor(ex.inverse(0.7), dtype=torch.float64)).item(), 0.7, rel_tol=1e-12)


@pytest.mark.parametrize("grad", GRADS)
@pytest.mark.parametrize("spread", SPREADS, ids=lambda s: f"{s.positivity.kind}-{s.on}")
def test_gaussian_kl_matches_kl_divergence(grad, spread):
    mu, raw = _rand(40, 1, seed=4), _rand(40, 1, seed=5)
    m, s2 = _rand(40, 1, seed=6), _rand(40, 1, seed=7).abs() + 0.05
    expected = kl_divergence(Normal(m, s2.sqrt()), Normal(mu, spread.std(raw)))
    got = losses.gaussian_kl(mu, raw, m, s2, spread, grad, "mean")
    assert torch.allclose(got, expected.mean(), rtol=1e-10, atol=1e-12)
    # the document's closed form, written out
    sm, sg = spread.std(raw), s2.sqrt()
    doc = -0.5 + torch.log(sm / sg) + (sg**2 + (m - mu) ** 2) / (2 * sm**2)
    assert torch.allclose(got, doc.mean(), rtol=1e-10)


@pytest.mark.parametrize("grad", GRADS)
@pytest.mark.parametrize("kind", ["exp", "softplus"])
def test_mixture_nll_matches_mixture_same_family(grad, kind):
    n, k = 60, 5
    logits, mu, raw, y = _rand(n, k, seed=8), _rand(n, k, seed=9), _rand(n, k, seed=10), _rand(n, 1, seed=11)
    spread = Spread(Positivity(kind, 1e-4), "std")
    ref = MixtureSameFamily(Categorical(logits=logits), Normal(mu, spread.std(raw)))
    expected = -ref.log_prob(y[:, 0])
    assert torch.allclose(losses.mixture_nll(logits, mu, raw, y, spread, grad), expected.mean(), rtol=1e-12)


@pytest.mark.parametrize("grad", GRADS)
def test_mixture_nll_survives_far_components(grad):
    # every component ~1e4 standard deviations away: probability space underflows, log space must not
    logits = torch.zeros(3, 4, dtype=torch.float32)
    mu = torch.full((3, 4), 100.0, dtype=torch.float32)
    raw = torch.full((3, 4), math.log(0.01), dtype=torch.float32)
    y = torch.zeros(3, 1, dtype=torch.float32)
    spread = Spread(Positivity("exp", 1e-6), "std")
    val = losses.mixture_nll(logits, mu, raw, y, spread, grad)
    ref = 0.5 * (100.0 / (0.01 + 1e-6)) ** 2 + math.log(0.01 + 1e-6) + 0.5 * math.log(2 * math.pi)
    assert torch.isfinite(val) and math.isclose(val.item(), ref, rel_tol=1e-5)


def _glm_case(family, n=30):
    g = torch.Generator().manual_seed(12)
    f64 = torch.float64
    if family == "categorical":
        eta = torch.randn(n, 4, generator=g, dtype=f64)
        return eta, torch.randint(0, 4, (n,), generator=g), Categorical(logits=eta), None
    eta = torch.randn(n, 1, generator=g, dtype=f64)
    if family == "gaussian":
        y = torch.randn(n, 1, generator=g, dtype=f64)
        return eta, y, Normal(eta, 1.0), y
    if family == "bernoulli":
        y = torch.randint(0, 2, (n, 1), generator=g).double()
        return eta, y, Bernoulli(logits=eta), y
    y = torch.poisson(torch.full((n, 1), 3.0, dtype=f64), generator=g)
    return eta, y, Poisson(eta.exp()), y


@pytest.mark.parametrize("grad", GRADS)
@pytest.mark.parametrize("family", losses.GLM_FAMILIES)
def test_glm_nll_matches_distribution_log_prob(grad, family):
    eta, y, dist, _ = _glm_case(family)
    expected = -dist.log_prob(y).mean()
    assert torch.allclose(losses.glm_nll(eta, y, family, grad), expected, rtol=1e-12)


def test_poisson_nll_uses_exact_lgamma_not_stirling():
    eta = torch.tensor([[0.3], [1.2]], dtype=torch.float64)
    y = torch.tensor([[0.0], [7.0]], dtype=torch.float64)
    exact = (eta.exp() - y * eta + torch.lgamma(y + 1)).mean()
    stirling = torch.nn.functional.poisson_nll_loss(eta, y, log_input=True, full=True)
    assert torch.allclose(losses.glm_nll(eta, y, "poisson"), exact)
    assert not torch.allclose(exact, stirling)  # PyTorch's full=True term is an approximation


def test_unknown_grad_and_family_are_named():
    from densbench.errors import ConfigError
    from densbench.distributions.families.glm import GLM

    with pytest.raises(ConfigError, match="grad='numeric' is not allowed; choose one of: analytic, autograd"):
        losses.glm_nll(torch.zeros(2, 1), torch.zeros(2, 1), "gaussian", grad="numeric")
    with pytest.raises(ConfigError, match="head.distribution='gamma' is not allowed; choose one of: auto, gaussian"):
        GLM("gamma")
    with pytest.raises(ValueError, match="floor must be a positive"):
        Positivity("softplus", 0.0)


def test_pinball_loss_is_the_mean_quantile_score_at_scipys_quantiles():
    # independent reference: SciPy's normal quantiles at t = (l - 1/2)/L and the pinball score written out
    from scipy import stats

    from densbench import objectives

    from densbench.distributions import families
    fam = families.get("gaussian")(spread="std", positivity="exp")
    g = torch.Generator().manual_seed(3)
    raw = {"loc": torch.randn(1, 7, 1, generator=g, dtype=torch.float64),
           "spread": 0.3 * torch.randn(1, 7, 1, generator=g, dtype=torch.float64)}
    y = torch.randn(1, 7, 1, generator=g, dtype=torch.float64)
    loss = objectives.get("pinball")(levels=9).loss(fam, raw, y, (), "autograd")
    t = (np.arange(9) + 0.5) / 9
    mu, sigma, yy = raw["loc"].numpy().ravel(), np.exp(raw["spread"].numpy().ravel()) + 1e-6, y.numpy().ravel()
    q = stats.norm.ppf(t[:, None], mu[None, :], sigma[None, :])
    u = yy[None, :] - q
    expected = np.mean(np.maximum(t[:, None] * u, (t[:, None] - 1) * u))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-10)
