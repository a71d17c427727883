"""Beta(m phi, (1 - m) phi): targets in the open unit interval (rates, proportions, fractions).

The mean-precision parametrisation of Ferrari & Cribari-Neto (2004, J. Appl. Stat. 31(7)): fields
``loc`` (m = sigmoid(loc), the mean) and ``precision`` (phi = c v(raw), v a positivity map, c the
``precision_unit``); then a = m phi, b = (1 - m) phi and the variance is m (1 - m) / (1 + phi).
The unit exists because raw outputs are O(1) when no bias sets them: at phi below about 1 a Beta
whose mean is near 1 puts its upper quantiles closer to 1 than float64 resolves (I^-1 at 0.995
rounds to 1, where the CDF jumps to 1), so c says which precision an O(1) output means.
Unit-interval targets reach the family unchanged. With psi the digamma function the NLL is

    lgamma(a) + lgamma(b) - lgamma(phi) - (a - 1) log y - (b - 1) log(1 - y),

    d/d loc       = phi m (1 - m) [psi(a) - psi(b) - log y + log(1 - y)],
    d/d log phi   = a [psi(a) - psi(phi) - log y] + b [psi(b) - psi(phi) - log(1 - y)];

the brackets hold differences of the same order, so the terms stay O(sqrt phi) near the fit
instead of the O(phi log phi) that a psi(a) + b psi(b) - phi psi(phi) would cancel. The CDF is the
regularised incomplete beta function I_y(a, b), the quantiles its inverse (SciPy's betaincinv), the
CRPS the closed form of Jordan, Krueger & Lerch (2019, J. Stat. Softw. 90(12), as scoringrules'
crps_beta):

    y (2 I_y(a, b) - 1) + m (1 - 2 I_y(a + 1, b)) - 2 B(2a, 2b) / (phi B(a, b)^2).

Recalibration scales the precision, phi -> phi / s^2 at a fixed mean (see _rescale_beta).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from densbench.distributions import ops
from densbench.distributions.families.base import (
    PositiveField,
    Raw,
    register,
    weighted_total,
)
from densbench.errors import positive
from densbench.lazy import D, F, torch

if TYPE_CHECKING:
    from torch import Tensor

LOG_2 = math.log(2.0)


@register
class Beta(PositiveField):
    """Beta with a logit-link mean and a positive precision (Ferrari & Cribari-Neto's beta regression)."""

    name = "beta"
    tasks = ("regression",)
    support = "unit_interval"
    distribution_type = "torch.distributions.Beta"
    positive_field = "precision"

    def __init__(self, positivity: str = "softplus", floor: float = 1e-6, init_precision: float | None = None,
                 precision_unit: float = 10.0) -> None:
        super().__init__(positivity, floor, init_precision, "init_precision")
        positive("head.precision_unit", precision_unit)
        self.unit, self.log_unit = float(precision_unit), math.log(precision_unit)

    def fields(self) -> dict[str, int]:
        return {"loc": 1, "precision": 1}

    def init_value(self, init: float) -> float:
        """The positivity map's value that gives this initial precision: the precision in units."""
        return init / self.unit

    def log_shapes(self, raw: Raw) -> tuple[Tensor, Tensor, Tensor]:
        """(log a, log b, log phi), a = m phi and b = (1 - m) phi formed in log space (no 1 - m cancellation)."""
        u, log_phi = raw["loc"], self.positivity_map.log_value(raw["precision"]) + self.log_unit
        return F.logsigmoid(u) + log_phi, F.logsigmoid(-u) + log_phi, log_phi

    def distribution(self, raw: Raw, loc: Any = 0.0, scale: Any = 1.0):
        """Predictive Beta; loc and scale are ignored (unit-interval targets are never mapped)."""
        log_a, log_b, _ = self.log_shapes(raw)
        return D.Beta(torch.exp(log_a[..., 0]), torch.exp(log_b[..., 0]), validate_args=False)

    def nll_terms(self, raw: Raw, y: Tensor) -> Tensor:
        log_a, log_b, _ = self.log_shapes(raw)
        return _nll(torch.exp(log_a), torch.exp(log_b), torch.log(y), torch.log1p(-y))

    def nll_kernel(self, raw: Raw, y: Tensor, weight: Any):
        """Analytic path: the weighted NLL sum and its gradients by field (see the module docstring)."""
        detached = {k: raw[k].detach() for k in self.fields()}
        log_a, log_b, log_phi = self.log_shapes(detached)
        a, b, phi = torch.exp(log_a), torch.exp(log_b), torch.exp(log_phi)
        log_y, log_1my = torch.log(y), torch.log1p(-y)
        psi_a, psi_b, psi_phi = torch.digamma(a), torch.digamma(b), torch.digamma(phi)
        u = detached["loc"]
        d_loc = phi * torch.sigmoid(u) * torch.sigmoid(-u) * (psi_a - psi_b - log_y + log_1my)
        d_log_phi = a * (psi_a - psi_phi - log_y) + b * (psi_b - psi_phi - log_1my)
        d_precision = d_log_phi * self.positivity_map.dlog(detached["precision"])
        grads = {"loc": d_loc.mul_(weight), "precision": d_precision.mul_(weight)}
        return weighted_total(_nll(a, b, log_y, log_1my), weight), grads

    def reference(self, dist: Any) -> Any:
        from scipy import stats

        return stats.beta(dist.concentration1.numpy(), dist.concentration0.numpy())


def _nll(a: Tensor, b: Tensor, log_y: Tensor, log_1my: Tensor) -> Tensor:
    """-log Beta(y | a, b) from log y and log(1 - y)."""
    return torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b) - (a - 1) * log_y - (b - 1) * log_1my


def _shapes(d: Any, *like: Tensor) -> tuple[Tensor, ...]:
    """a and b of a Beta, broadcast with the given tensors."""
    shape = torch.broadcast_shapes(d.concentration1.shape, *(t.shape for t in like))
    return d.concentration1.expand(shape), d.concentration0.expand(shape)


@ops.cdf.register("torch.distributions.Beta")
def _beta_cdf(d: Any, y: Tensor) -> Tensor:
    """I_y(a, b), 0 below the support and 1 above (differentiable in a and b when a gradient is asked for)."""
    from densbench.distributions.special import betainc

    a, b = _shapes(d, y)
    return betainc(a, b, y.clamp(0, 1).expand_as(a))


@ops.icdf.register("torch.distributions.Beta")
def _beta_icdf(d: Any, p: Tensor) -> Tensor:
    """I^-1_p(a, b) by SciPy's betaincinv (no gradient; differentiable_quantile adds the implicit one)."""
    from scipy import special

    from densbench.distributions.special import scipy_apply

    a, b = _shapes(d, p)
    return scipy_apply(special.betaincinv, a, b, p.expand_as(a)).to(p.dtype)


@ops.crps.register("torch.distributions.Beta")
def crps_beta(d: Any, y: Tensor) -> Tensor:
    """y (2 I_y(a, b) - 1) + m (1 - 2 I_y(a + 1, b)) - 2 B(2a, 2b) / (phi B(a, b)^2) (Jordan, Krueger & Lerch 2019)."""
    from densbench.distributions.special import betainc, log_beta

    a, b = _shapes(d, y)
    phi, yc = a + b, y.clamp(0, 1).expand_as(a)
    # outside [0, 1] the clamped CDFs (0 or 1) leave E|X - y| = |m - y| minus the same half mean difference
    half_gini = torch.exp(LOG_2 + log_beta(2 * a, 2 * b) - torch.log(phi) - 2 * log_beta(a, b))
    return y * (2 * betainc(a, b, yc) - 1) + a / phi * (1 - 2 * betainc(a + 1, b, yc)) - half_gini


@ops.rescale.register("torch.distributions.Beta")
def _rescale_beta(d: Any, factor: float) -> Any:
    """phi -> phi / factor^2 at a fixed mean: both shapes divided by factor^2.

    The variance m (1 - m) / (1 + phi) cannot grow by factor^2 for every factor (it stays below
    m (1 - m)), and 1 + phi' = (1 + phi) / factor^2 would need a clamp that breaks composition
    (rescaling by 2 then 1/2 must give the distribution back); dividing phi is a group action that
    keeps phi' > 0, multiplies the variance by factor^2 (1 + phi) / (factor^2 + phi) (a widening for
    every factor > 1) and the standard deviation by factor as phi grows.
    """
    f2 = factor * factor
    return D.Beta(d.concentration1 / f2, d.concentration0 / f2, validate_args=False)
