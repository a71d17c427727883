"""What the families and objectives added with the registry design promise beyond the common contract
(tests/test_conformance.py): scores against scoringrules, the natural-parameter gradient identity, finite
negative-binomial gradients at large counts, beta-NLL's limits and faithful regression's mean."""

import numpy as np
import pytest
import scoringrules as sr
import torch

from densbench.distributions import ops
from densbench.distributions.families.gaussian import Gaussian
from densbench.distributions.families.gaussian_natural import GaussianNatural
from densbench.distributions.families.laplace import Laplace
from densbench.distributions.families.negbin import NegativeBinomial
from densbench.distributions.families.student_t import StudentT
from densbench.training.networks import MLP, Head
from densbench.objectives.beta_nll import BetaNLL
from densbench.objectives.faithful import Faithful
from densbench.objectives.nll import NLL

F64 = torch.float64


def _g(seed):
    return torch.Generator().manual_seed(seed)


def test_student_t_and_laplace_crps_match_scoringrules():
    g = _g(0)
    n = 300
    loc, scale = torch.randn(n, generator=g, dtype=F64), torch.rand(n, generator=g, dtype=F64) + 0.2
    df = torch.rand(n, generator=g, dtype=F64) * 10 + 1.2
    y = torch.randn(n, generator=g, dtype=F64) * 3
    t = torch.distributions.StudentT(df, loc, scale)
    np.testing.assert_allclose(ops.crps(t, y).numpy(), sr.crps_t(y.numpy(), df.numpy(), loc.numpy(), scale.numpy(), backend="numpy"),
                               rtol=1e-9, atol=1e-12)
    lap = torch.distributions.Laplace(loc, scale)
    np.testing.assert_allclose(ops.crps(lap, y).numpy(), sr.crps_laplace(y.numpy(), loc.numpy(), scale.numpy(), backend="numpy"),
                               rtol=1e-10, atol=1e-12)


def test_negative_binomial_rps_matches_scoringrules():
    fam = NegativeBinomial()
    g = _g(1)
    raw = {"mean": torch.randn(50, 1, generator=g, dtype=F64), "shape": torch.randn(50, 1, generator=g, dtype=F64)}
    d = fam.distribution(raw)
    y = d.sample()
    ref = sr.crps_negbinom(y.numpy(), d.total_count.numpy(), mu=d.mean.numpy(), backend="numpy")
    np.testing.assert_allclose(ops.crps(d, y).numpy(), ref, rtol=1e-8, atol=1e-10)


def test_natural_gaussian_gradient_is_prediction_minus_observation():
    # REFERENCE.md 1b: d NLL / d eta1 = mu - y, d NLL / d eta2 = (sigma^2 + mu^2) - y^2, on the NLL in (eta1, eta2)
    g = _g(2)
    eta1 = torch.randn(20, generator=g, dtype=F64).requires_grad_()
    eta2 = (-0.5 / (torch.rand(20, generator=g, dtype=F64) + 0.3)).requires_grad_()
    y = torch.randn(20, generator=g, dtype=F64)
    nll = 0.5 * np.log(2 * np.pi) - eta1 * y - eta2 * y**2 - eta1**2 / (4 * eta2) - 0.5 * torch.log(-2 * eta2)
    d1, d2 = torch.autograd.grad(nll.sum(), (eta1, eta2))
    mu, var = -eta1 / (2 * eta2), -1 / (2 * eta2)
    torch.testing.assert_close(d1, mu - y)
    torch.testing.assert_close(d2, var + mu**2 - y**2)
    # and the family's NLL is that formula, with the variance output mapped to eta2 = -1/(2v)
    fam = GaussianNatural()
    v = var.detach()
    raw = {"eta1": eta1.detach().unsqueeze(-1), "spread": torch.log(torch.expm1(v - 1e-6)).unsqueeze(-1)}
    torch.testing.assert_close(fam.nll_terms(raw, y.unsqueeze(-1))[:, 0], nll.detach(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("y,log_mean,shape_raw", [(1e6, np.log(1e6), -8.0), (1e6, np.log(3.0), 0.0), (0.0, 40.0, 30.0),
                                                   (5e7, np.log(5e7), 40.0), (3.0, -30.0, -20.0)])
def test_negative_binomial_gradients_stay_finite_at_large_counts(dtype, y, log_mean, shape_raw):
    fam, objective = NegativeBinomial(), NLL()
    grads = {}
    for grad in ("analytic", "autograd"):
        raw = {"mean": torch.tensor([[log_mean]], dtype=dtype, requires_grad=True),
               "shape": torch.tensor([[shape_raw]], dtype=dtype, requires_grad=True)}
        loss = objective.loss(fam, raw, torch.tensor([[y]], dtype=dtype), (), grad)
        grads[grad] = (loss.detach(), torch.autograd.grad(loss, [raw["mean"], raw["shape"]]))
        assert torch.isfinite(loss) and all(torch.isfinite(t).all() for t in grads[grad][1]), (grad, grads[grad])
    if dtype == F64:
        (va, ga), (vb, gb) = grads["analytic"], grads["autograd"]
        torch.testing.assert_close(va, vb, rtol=1e-9, atol=1e-9)
        for a, b in zip(ga, gb):
            torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


def _gaussian_batch(n=40, seed=3):
    g = _g(seed)
    raw = {"loc": torch.randn(n, 1, generator=g, dtype=F64).requires_grad_(),
           "spread": torch.randn(n, 1, generator=g, dtype=F64).requires_grad_()}
    return raw, torch.randn(n, 1, generator=g, dtype=F64) * 2


@pytest.mark.parametrize("grad", ["autograd", "analytic"])
def test_beta_nll_is_the_nll_at_beta_0_and_gives_the_mean_the_squared_error_gradient_at_beta_1(grad):
    fam = Gaussian()
    raw, y = _gaussian_batch()
    nll = NLL().loss(fam, raw, y, (), grad)
    b0 = BetaNLL(beta=0.0).loss(fam, raw, y, (), grad)
    torch.testing.assert_close(b0, nll, rtol=1e-14, atol=1e-14)
    for a, b in zip(torch.autograd.grad(b0, list(raw.values())), torch.autograd.grad(nll, list(raw.values()))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    b1 = BetaNLL(beta=1.0).loss(fam, raw, y, (), grad)
    (d_mu,) = torch.autograd.grad(b1, [raw["loc"]])
    torch.testing.assert_close(d_mu, (raw["loc"].detach() - y) / y.shape[0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("family", [Gaussian(), StudentT(), Laplace()], ids=lambda f: f.name)
@pytest.mark.parametrize("grad", ["autograd", "analytic"])
def test_faithful_trains_the_mean_and_the_representation_as_least_squares_does(family, grad):
    # the gradient reaching the backbone and the mean's head rows is exactly that of 1/2 (y - mu)^2
    torch.manual_seed(0)
    x = torch.linspace(-2, 2, 30, dtype=F64).view(1, -1, 1)  # a stack of one model
    y = torch.sin(2 * x) + 0.3 * torch.randn(1, 30, 1, dtype=F64)
    backbone = MLP(1, [16], "tanh").double()
    objective = Faithful()
    head = Head(family, 16, detached=objective.detached_fields(family)).double()
    raw = head(backbone(x))
    loss = objective.loss(family, raw, y, (), grad).sum()
    params = [*backbone.parameters(), head.linear.weight, head.linear.bias]
    got = torch.autograd.grad(loss, params)
    raw = head(backbone(x))
    lsq = (0.5 * (y - raw["loc"]) ** 2).mean()
    want = torch.autograd.grad(lsq, params, allow_unused=True)
    for a, b in zip(got[:-2], want[:-2]):  # the backbone: least squares only
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    # the head's weight is [models, outputs, features]: row 0 is the mean's
    torch.testing.assert_close(got[-2][:, 0], want[-2][:, 0], rtol=1e-12, atol=1e-14)
    assert got[-2][:, 1:].abs().sum() > 0  # the spread rows learn from the NLL
