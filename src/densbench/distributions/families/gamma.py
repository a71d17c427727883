"""Gamma(k, k/m): positive targets whose spread grows with their mean (a constant coefficient of variation).

Fields ``mean`` (log link, a = log m = raw) and ``shape`` (k through a positivity map); the predictive
is torch's Gamma(concentration=k, rate=k/m). The support is positive, so targets reach the family only
scaled, y = c z, and Gamma(k, k/m) of z is Gamma(k, k/(c m)) of y. With r = y/m the NLL is

    lgamma(k) - k log k + k (r - log r) + log y,

with gradients d/da = k (1 - r) and d/dk = psi(k) - log k - 1 + r - log r. The CDF is the regularised
lower incomplete gamma function P(k, k y/m); the CRPS is the closed form of Scheuerer & Moller (2015),
differentiable here because ``regularized_gamma`` supplies the derivative in the shape that torch's
igamma lacks; quantiles by Halley's method on P from a Wilson-Hilferty start.

Recalibration multiplies the standard deviation of log y by the factor at a fixed E[log y], as LogNormal
and Weibull do: Var log y = psi'(k) and E log y = psi(k) - log b, so k' solves psi'(k') = factor^2 psi'(k)
and log b' = log b + psi(k') - psi(k). For large k this is k' ~ k / factor^2 at a nearly fixed mean; the
fixed-mean rule itself would narrow the central intervals of shapes below about 1.5 (the mass piles up
at 0 while the mean is held by the tail), so it could not widen an overconfident prediction there.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

from densbench.distributions import ops
from densbench.distributions.families.base import PositiveField, Raw, register, weighted_total
from densbench.lazy import D, torch

if TYPE_CHECKING:
    from torch import Tensor

# the step of the shape derivative's difference quotient, relative to the scale min(a, sqrt a) on which
# P(a, x) changes by O(1): truncation error ~ STEP^4, rounding ~ 1e-16 / STEP, both near 1e-12
SHAPE_STEP = 1e-3
HALLEY_STEPS = 30  # it takes 3 to 5 from the start below; more only for shapes far below 1


def standard_log_density(a: Tensor, x: Tensor) -> Tensor:
    """log of the Gamma(a, 1) density at x > 0: (a - 1) log x - x - lgamma(a)."""
    return torch.xlogy(a - 1, x) - x - torch.lgamma(a)


def shape_derivative(a: Tensor, x: Tensor) -> Tensor:
    """dP(a, x)/da by a fourth-order central difference of torch's igamma in float64 (it has no analytic one)."""
    a64, x64 = a.double(), x.double()
    h = SHAPE_STEP * torch.minimum(a64, a64.sqrt())  # a - 2h stays above 0.99 a
    P = torch.special.gammainc
    diff = 8 * (P(a64 + h, x64) - P(a64 - h, x64)) - (P(a64 + 2 * h, x64) - P(a64 - 2 * h, x64))
    return (diff / (12 * h)).to(a.dtype)


@functools.cache
def _regularized_gamma_function() -> type:
    """The autograd Function of P(a, x), built on first use (this module imports no torch)."""
    from torch.autograd.function import once_differentiable

    class RegularizedGamma(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, a: Tensor, x: Tensor) -> Tensor:
            ctx.save_for_backward(a, x)
            return torch.special.gammainc(a, x)

        @staticmethod
        @once_differentiable
        def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
            a, x = ctx.saved_tensors
            ga = grad * shape_derivative(a, x) if ctx.needs_input_grad[0] else None
            gx = None
            if ctx.needs_input_grad[1]:
                density = torch.exp(standard_log_density(a, x.clamp_min(torch.finfo(x.dtype).tiny)))
                gx = grad * torch.where(x > 0, density, torch.zeros_like(density))
            return ga, gx

    return RegularizedGamma


def regularized_gamma(a: Tensor, x: Tensor) -> Tensor:
    """P(a, x), the regularised lower incomplete gamma function (x >= 0), differentiable in a and in x."""
    from densbench.distributions.special import needs_grad

    a, x = torch.broadcast_tensors(a, x.clamp_min(0))
    if not needs_grad(a, x):
        return torch.special.gammainc(a, x)
    return _regularized_gamma_function().apply(a, x)


def _quantile_start(a: Tensor, p: Tensor) -> Tensor:
    """Starting points for Halley's method (Numerical Recipes' invgammp): Wilson-Hilferty above a = 1,
    below it the tails of x^a / Gamma(a + 1) (lower) and of e^-x (upper)."""
    z = torch.special.ndtri(p)
    wilson_hilferty = a * (1 - 1 / (9 * a) + z / (3 * a.sqrt())) ** 3
    t = 1 - a * (0.253 + 0.12 * a)
    small_a = torch.where(p < t, (p / t) ** (1 / a), 1 - torch.log1p(-(p - t) / (1 - t)))
    return torch.where(a > 1, wilson_hilferty.clamp_min(1e-3), small_a)


def standard_quantile(a: Tensor, p: Tensor) -> Tensor:
    """Quantiles of Gamma(a, 1) at levels p (broadcast), by Halley's method on P(a, x) - p; no gradient."""
    a, p = torch.broadcast_tensors(a.detach(), p.detach())
    x = _quantile_start(a, p)
    # Halley's error after a step is of order the step cubed: a step below sqrt(eps) x leaves roundoff
    tol = torch.finfo(x.dtype).eps ** 0.5
    for _ in range(HALLEY_STEPS):
        err = torch.special.gammainc(a, x) - p
        u = err * torch.exp(-standard_log_density(a, x))
        step = u / (1 - 0.5 * torch.clamp(u * ((a - 1) / x - 1), max=1))
        step = torch.nan_to_num(step, nan=0.0, posinf=0.0, neginf=0.0)  # a density that underflowed: stay put
        moved = x - step
        x = torch.where(moved > 0, moved, 0.5 * x)  # a step past 0 halves x instead
        done = (step.abs() <= tol * x) | (x <= 0)
        if bool(done.all()):
            break
    x = torch.where(p <= 0, torch.zeros_like(x), x)
    return torch.where(p >= 1, torch.full_like(x, math.inf), x)


@register
class Gamma(PositiveField):
    """Gamma with a log-link mean m and a positive shape k (coefficient of variation 1/sqrt k)."""

    name = "gamma"
    tasks = ("regression",)
    distribution_type = "torch.distributions.Gamma"
    support = "positive"
    positive_field = "shape"

    def __init__(self, positivity: str = "softplus", floor: float = 1e-6, init_shape: float | None = None) -> None:
        super().__init__(positivity, floor, init_shape, "init_shape")

    def fields(self) -> dict[str, int]:
        return {"mean": 1, "shape": 1}

    def distribution(self, raw: Raw, loc: Any = 0.0, scale: Any = 1.0):
        """Predictive Gamma(k, k/(c m)) in original units (loc is 0: positive targets are only scaled)."""
        log_c = math.log(scale) if isinstance(scale, (int, float)) else torch.log(scale)
        log_k = self.positivity_map.log_value(raw["shape"][..., 0])
        return D.Gamma(torch.exp(log_k), torch.exp(log_k - raw["mean"][..., 0] - log_c), validate_args=False)

    def _nll(self, a: Tensor, log_k: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(NLL, k, r, r - log r) from the log mean a, the log shape and the targets."""
        log_y = torch.log(y)
        log_r = log_y - a
        r = torch.exp(log_r)
        k = torch.exp(log_k)
        excess = r - log_r  # >= 1, its minimum at the mean
        return torch.lgamma(k) - k * log_k + k * excess + log_y, k, r, excess

    def nll_terms(self, raw: Raw, y: Tensor) -> Tensor:
        return self._nll(raw["mean"], self.positivity_map.log_value(raw["shape"]), y)[0]

    def nll_kernel(self, raw: Raw, y: Tensor, weight: Any):
        """Analytic path: the weighted NLL sum and its gradients by field (see the module docstring)."""
        s = raw["shape"].detach()
        log_k = self.positivity_map.log_value(s)
        nll, k, r, excess = self._nll(raw["mean"].detach(), log_k, y)
        d_k = torch.digamma(k) - log_k - 1 + excess
        grads = {"mean": (k * (1 - r)).mul_(weight), "shape": (d_k * k * self.positivity_map.dlog(s)).mul_(weight)}
        return weighted_total(nll, weight), grads

    def moments(self, raw: Raw) -> tuple[Tensor, Tensor]:
        a = raw["mean"]
        return torch.exp(a), torch.exp(2 * a - self.positivity_map.log_value(raw["shape"]))

    def reference(self, dist: Any) -> Any:
        from scipy import stats

        return stats.gamma(dist.concentration.numpy(), scale=1 / dist.rate.numpy())


@ops.cdf.register("torch.distributions.Gamma")
def _gamma_cdf(d: Any, y: Tensor) -> Tensor:
    return regularized_gamma(d.concentration, d.rate * y)


@ops.icdf.register("torch.distributions.Gamma")
def _gamma_icdf(d: Any, p: Tensor) -> Tensor:
    from densbench.distributions.special import needs_grad

    q = standard_quantile(d.concentration, p) / d.rate.detach()
    if needs_grad(d.concentration, d.rate):  # the implicit-function gradient, dq = -dF(q) / f(q)
        q = q - (_gamma_cdf(d, q) - p) / torch.exp(d.log_prob(q)).detach()
    return q


@ops.crps.register("torch.distributions.Gamma")
def crps_gamma(d: Any, y: Tensor) -> Tensor:
    """Scheuerer & Moller (2015): y (2 F_a(y) - 1) - (a/b)(2 F_{a+1}(y) - 1) - 1/(b B(1/2, a)), for Gamma(a, b)."""
    from densbench.distributions.special import log_beta

    a, b = d.concentration, d.rate
    x = b * y
    F = regularized_gamma(a, x)
    # F_{a+1} = F_a - x^a e^-x / Gamma(a + 1) (DLMF 8.8.5): one incomplete gamma instead of two, and the
    # terms of order m = a/b cancel in closed form instead of in floating point
    return ((y - a / b) * (2 * F - 1) + 2 * torch.exp(torch.xlogy(a, x) - x - torch.lgamma(a)) / b
            - torch.exp(-log_beta(torch.full_like(a, 0.5), a)) / b)


def inverse_trigamma(t: Tensor) -> Tensor:
    """The k > 0 with psi'(k) = t > 0, by Newton's method on 1/psi'(k), which is nearly linear (Smyth 2004)."""
    t64 = t.double()
    k = torch.where(t64 > 1e7, t64.rsqrt(), torch.where(t64 < 1e-6, 1 / t64, 0.5 + 1 / t64))
    for _ in range(50):
        tri = torch.polygamma(1, k)
        step = tri * (1 - tri / t64) / torch.polygamma(2, k)
        k = k + step
        if bool((step.abs() <= 1e-8 * k).all()):  # Newton: the error left is of order the step squared
            break
    return k.to(t.dtype)


@ops.rescale.register("torch.distributions.Gamma")
def _rescale_gamma(d: Any, factor: float) -> Any:
    """The standard deviation of log y times factor at a fixed E[log y] (see the module docstring)."""
    k = d.concentration
    k2 = inverse_trigamma(factor * factor * torch.polygamma(1, k))
    return D.Gamma(k2, d.rate * torch.exp(torch.digamma(k2) - torch.digamma(k)), validate_args=False)
