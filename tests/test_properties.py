"""Property-based checks over every loss family and both gradient paths: finite values and
gradients over wide input ranges, and the analytic gradient equal to autograd where both are finite."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import adapters as losses
from densbench.objectives.base import GRADS
from densbench.distributions.positivity import Positivity, Spread

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True)
DTYPES = {"float32": torch.float32, "float64": torch.float64}
KINDS = ("softplus", "exp")


def floats(lo, hi):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, width=32)


def _both(fn, xs):
    """Loss and gradients of fn on both paths; xs are leaf tensors (cloned per path)."""
    out = {}
    for grad in GRADS:
        leaves = [x.detach().clone().requires_grad_(True) for x in xs]
        val = fn(grad, *leaves)
        out[grad] = (val.detach(), torch.autograd.grad(val, leaves))
    return out


def _finite(out):
    for val, grads in out.values():
        assert torch.isfinite(val), val
        for g in grads:
            assert torch.isfinite(g).all(), g


def _agree(out, rtol):
    (va, ga), (vb, gb) = out["analytic"], out["autograd"]
    assert torch.allclose(va, vb, rtol=rtol, atol=rtol)
    for a, b in zip(ga, gb):
        # gradients that cancel to ~0 (e.g. pi - gamma for equal components) are round-off on both
        # paths: compare them at the scale of the terms, not of their difference (pi and gamma are
        # probabilities, so a float32 difference of two of them is off by up to ~1e-7 at 1e-3)
        scale = max(b.abs().max().item(), 1e-3)
        assert torch.allclose(a, b, rtol=rtol, atol=rtol * scale), (a, b)


gaussian_inputs = st.lists(st.tuples(floats(-1e4, 1e4), floats(-50, 50), floats(-1e4, 1e4), floats(2**-20, 1e4)), min_size=1, max_size=8)


@SETTINGS
@given(rows=gaussian_inputs, kind=st.sampled_from(KINDS), on=st.sampled_from(("variance", "std")),
       dtype=st.sampled_from(list(DTYPES)), family=st.sampled_from(("nll", "kl")))
def test_gaussian_losses(rows, kind, on, dtype, family):
    dt = DTYPES[dtype]
    mu, raw, y, s2 = (torch.tensor([[r[i]] for r in rows], dtype=dt) for i in range(4))
    sp = Spread(Positivity(kind, 1e-6), on)
    if family == "nll":
        out = _both(lambda g, a, b: losses.gaussian_nll(a, b, y, sp, g), [mu, raw])
    else:
        out = _both(lambda g, a, b: losses.gaussian_kl(a, b, y, s2, sp, g), [mu, raw])
    _finite(out)
    _agree(out, 1e-9 if dt == torch.float64 else 2e-3)


@SETTINGS
@given(k=st.integers(1, 6), n=st.integers(1, 5), data=st.data(), kind=st.sampled_from(KINDS), dtype=st.sampled_from(list(DTYPES)))
def test_mixture_loss(k, n, data, kind, dtype):
    dt = DTYPES[dtype]
    # every component within `zmax` of its own scale from the target: wide in float64; in float32
    # log-densities of -z^2/2 lose the digits that separate components beyond a few hundred
    zmax = 1e4 if dt == torch.float64 else 30.0
    logits = torch.tensor(data.draw(st.lists(floats(-50, 50), min_size=n * k, max_size=n * k)), dtype=dt).view(n, k)
    raw = torch.tensor(data.draw(st.lists(floats(-20, 20), min_size=n * k, max_size=n * k)), dtype=dt).view(n, k)
    z = torch.tensor(data.draw(st.lists(floats(-zmax, zmax), min_size=n * k, max_size=n * k)), dtype=dt).view(n, k)
    y = torch.tensor(data.draw(st.lists(floats(-1e3, 1e3), min_size=n, max_size=n)), dtype=dt).view(n, 1)
    sp = Spread(Positivity(kind, 1e-6), "std")
    mu = y + z * sp.std(raw)
    out = _both(lambda g, a, b, c: losses.mixture_nll(a, b, c, y, sp, g), [logits, mu, raw])
    _finite(out)
    _agree(out, 1e-8 if dt == torch.float64 else 2e-3)


@SETTINGS
@given(family=st.sampled_from(losses.GLM_FAMILIES), data=st.data(), dtype=st.sampled_from(list(DTYPES)), n=st.integers(1, 6))
def test_glm_losses(family, data, dtype, n):
    dt = DTYPES[dtype]
    if family == "categorical":
        c = data.draw(st.integers(2, 5))
        eta = torch.tensor(data.draw(st.lists(floats(-1e3, 1e3), min_size=n * c, max_size=n * c)), dtype=dt).view(n, c)
        y = torch.tensor(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    else:
        lo, hi = {"gaussian": (-1e5, 1e5), "bernoulli": (-1e3, 1e3), "poisson": (-60, 60)}[family]
        eta = torch.tensor(data.draw(st.lists(floats(lo, hi), min_size=n, max_size=n)), dtype=dt).view(n, 1)
        target = {"gaussian": floats(-1e5, 1e5), "bernoulli": st.sampled_from([0.0, 1.0]), "poisson": st.integers(0, 10**6)}[family]
        y = torch.tensor(data.draw(st.lists(target, min_size=n, max_size=n)), dtype=dt).view(n, 1)
    out = _both(lambda g, e: losses.glm_nll(e, y, family, g), [eta])
    _finite(out)
    _agree(out, 1e-9 if dt == torch.float64 else 1e-4)


def test_exp_overflow_is_the_only_way_to_infinity():
    # the one genuine overflow: a Poisson rate exp(eta) beyond float32's range
    eta = torch.tensor([[100.0]], requires_grad=True)
    val = losses.glm_nll(eta, torch.tensor([[1.0]]), "poisson", "analytic")
    assert math.isinf(val.item())
    with pytest.raises(AssertionError):
        _finite({"analytic": (val.detach(), torch.autograd.grad(val, eta))})
