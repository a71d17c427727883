"""Weibull(lambda, k): positive targets whose logarithm is a (minimum) Gumbel variate: lifetimes, wind speeds.

Fields ``loc`` (a = log lambda) and ``spread`` (s = 1/k through a positivity map): log y = a + s G with
G standard minimum-Gumbel, so s is the scale of log y, as in LogNormal. The support is positive, so
targets reach the family only scaled, y = c z, and Weibull(lambda, k) of z is Weibull(c lambda, k) of y.
With u = (log y - a)/s = k log(y/lambda) the NLL is

    log s + log y - u + e^u,

with gradients d/da = -expm1(u)/s and d/d log s = 1 - u expm1(u). The CDF 1 - exp(-e^u) and the
quantiles lambda (-log(1 - p))^s are closed forms; the CRPS is that of the generalised extreme value
distribution (Friederichs & Thorarinsdottir 2012) for -Y ~ GEV(-lambda, lambda/k, -1/k); recalibration
multiplies s, the spread of log y (k -> k / factor), at a fixed lambda.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from densbench.distributions import ops
from densbench.distributions.families.base import PositiveField, Raw, register, weighted_total
from densbench.distributions.families.gamma import regularized_gamma
from densbench.lazy import D, torch

if TYPE_CHECKING:
    from torch import Tensor

GUMBEL_STD = math.pi / math.sqrt(6)  # the standard deviation of a standard Gumbel variate


@register
class Weibull(PositiveField):
    """Weibull with a log-link scale lambda and a positive spread s = 1/k of log y."""

    name = "weibull"
    tasks = ("regression",)
    distribution_type = "torch.distributions.Weibull"
    support = "positive"

    def __init__(self, positivity: str = "softplus", floor: float = 1e-6, init_std: float | None = None) -> None:
        super().__init__(positivity, floor, init_std, "init_std")  # init_std: of log y

    def init_value(self, init: float) -> float:
        """s for a standard deviation `init` of log y (s pi / sqrt 6)."""
        return init / GUMBEL_STD

    def fields(self) -> dict[str, int]:
        return {"loc": 1, "spread": 1}

    def distribution(self, raw: Raw, loc: Any = 0.0, scale: Any = 1.0):
        """Predictive Weibull(c lambda, k) in original units (loc is 0: positive targets are only scaled)."""
        log_c = math.log(scale) if isinstance(scale, (int, float)) else torch.log(scale)
        log_s = self.positivity_map.log_value(raw["spread"][..., 0])
        return D.Weibull(torch.exp(raw["loc"][..., 0] + log_c), torch.exp(-log_s), validate_args=False)

    def _standardised(self, a: Tensor, log_s: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(log y, 1/s, u = (log y - a)/s)."""
        log_y, inv_s = torch.log(y), torch.exp(-log_s)
        return log_y, inv_s, (log_y - a) * inv_s

    def nll_terms(self, raw: Raw, y: Tensor) -> Tensor:
        log_s = self.positivity_map.log_value(raw["spread"])
        log_y, _, u = self._standardised(raw["loc"], log_s, y)
        return log_s + log_y - u + torch.exp(u)

    def nll_kernel(self, raw: Raw, y: Tensor, weight: Any):
        """Analytic path: the weighted NLL sum and its gradients by field (see the module docstring)."""
        sp = raw["spread"].detach()
        log_s, dlog = self.positivity_map.log_value(sp), self.positivity_map.dlog(sp)
        log_y, inv_s, u = self._standardised(raw["loc"].detach(), log_s, y)
        em1 = torch.expm1(u)
        grads = {"loc": (-em1 * inv_s).mul_(weight), "spread": ((1 - u * em1) * dlog).mul_(weight)}
        return weighted_total(log_s + log_y - u + (em1 + 1), weight), grads

    def reference(self, dist: Any) -> Any:
        from scipy import stats

        return stats.weibull_min(dist.concentration.numpy(), scale=dist.scale.numpy())


def _power(d: Any, y: Tensor) -> Tensor:
    """(y / lambda)^k, 0 at y <= 0."""
    ratio = (y / d.scale).clamp_min(0)
    return ratio ** d.concentration


@ops.cdf.register("torch.distributions.Weibull")
def _weibull_cdf(d: Any, y: Tensor) -> Tensor:
    return -torch.expm1(-_power(d, y))


@ops.icdf.register("torch.distributions.Weibull")
def _weibull_icdf(d: Any, p: Tensor) -> Tensor:
    return d.scale * (-torch.log1p(-p)) ** (1 / d.concentration)


@ops.crps.register("torch.distributions.Weibull")
def crps_weibull(d: Any, y: Tensor) -> Tensor:
    """y (2 F(y) - 1) - lambda Gamma(1 + 1/k) [2 P(1 + 1/k, (y/lambda)^k) - 2^(-1/k)], P the regularised lower
    incomplete gamma function: E|Y - y| - E|Y - Y'|/2 with E[Y 1{Y <= y}] = lambda Gamma(1 + 1/k) P(1 + 1/k, (y/lambda)^k)
    and the Gini mean difference E|Y - Y'| = 2 lambda Gamma(1 + 1/k)(1 - 2^(-1/k))."""
    s = 1 / d.concentration
    z = _power(d, y)
    mean = d.scale * torch.exp(torch.lgamma(1 + s))
    return y * (1 - 2 * torch.exp(-z)) - mean * (2 * regularized_gamma(1 + s, z) - torch.exp(-math.log(2) * s))


@ops.rescale.register("torch.distributions.Weibull")
def _rescale_weibull(d: Any, factor: float) -> Any:
    """The spread 1/k of log y times factor, lambda unchanged."""
    return D.Weibull(d.scale, d.concentration / factor, validate_args=False)
