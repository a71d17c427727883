"""Gaussian N(mu, v): a mean output and a positive spread output (the heteroscedastic NLL document).

The positivity map (softplus or exp, plus a floor) gives the variance or the standard deviation
(``spread``). The NLL and the KL to a Gaussian target share one formula: KL(N(m, s2) || N(mu, v)) is
the expected NLL under the target minus its entropy, so the KL document's derivatives are the NLL's
with (y - mu)^2 replaced by s2 + (m - mu)^2. Closed forms of torch's Normal (CRPS, the binned pmf of
count targets, Gauss-Hermite quadrature, the NLL-optimal spread factor) are registered here.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from densbench.distributions import ops
from densbench.errors import one_of, positive
from densbench.distributions.families.base import Family, Raw, register, total, weighted_total
from densbench.lazy import D, torch
from densbench.distributions.ops import HALF_LOG_2PI, INV_SQRT_PI, std_normal_cdf, std_normal_pdf
from densbench.distributions.positivity import SPREAD_TARGETS, Spread, head_positivity
from densbench.distributions.quantile_integrals import quantile_integrals

if TYPE_CHECKING:
    from torch import Tensor


def expected_nll(mu: Tensor, raw: Tensor, m: Tensor, s2: Tensor | float, spread: Spread) -> Tensor:
    """Per-sample E_{t ~ N(m, s2)}[-log N(t | mu, v)], v from `raw`; s2 = 0 gives the NLL of the sample m."""
    log_v = spread.log_var(raw)
    inv_v = torch.exp(-log_v)
    d = mu - m
    q = (d * d + s2) * inv_v
    return 0.5 * (log_v + q) + HALF_LOG_2PI


def expected_nll_kernel(mu: Tensor, raw: Tensor, m: Tensor, s2: Tensor | float, spread: Spread, weight: Any):
    """Analytic path: the weighted sum of expected_nll and its gradients w.r.t. mu and raw (times the weight)."""
    log_v, inv, dlog = spread.terms(raw)
    d = mu - m
    q = d * d
    if not isinstance(s2, float):
        q.add_(s2)
    q.mul_(inv)
    if isinstance(weight, float):
        value = (0.5 * (total(log_v) + total(q)) + mu.shape[-2] * HALF_LOG_2PI) * weight
        # d/d mu = (mu - m)/v ; d/d raw = (1 - q)/2 * d log v/d raw
        g_mu = d.mul_(inv.mul_(weight))
        g_raw = dlog.mul_(q.mul_(-0.5 * weight).add_(0.5 * weight))
    else:  # one weight per sample (beta-NLL)
        value = total(weight * (0.5 * (log_v + q) + HALF_LOG_2PI))
        g_mu = d.mul_(inv).mul_(weight)
        g_raw = dlog.mul_(q.mul_(-0.5).add_(0.5)).mul_(weight)
    return value, g_mu, g_raw


def normal_crps_parts(mu: Tensor, sigma: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """CRPS of N(mu, sigma^2) at y and its derivatives: d/d mu = 1 - 2 Phi(z), d/d sigma = 2 phi(z) - 1/sqrt(pi)."""
    z = (y - mu) / sigma
    cdf, pdf = std_normal_cdf(z), std_normal_pdf(z)
    value = sigma * (z * (2 * cdf - 1) + 2 * pdf - INV_SQRT_PI)
    return value, 1 - 2 * cdf, 2 * pdf - INV_SQRT_PI


@register
class Gaussian(Family):
    """N(mu, v): mu raw; the positivity map of the second output gives the variance or the standard deviation."""

    name = "gaussian"
    tasks = ("regression", "count")
    traits = frozenset({"location_scale", "gaussian"})
    distribution_type = "torch.distributions.Normal"
    has_floor = True

    def __init__(self, positivity: str = "softplus", floor: float = 1e-6, spread: str = "variance",
                 init_std: float | None = None) -> None:
        one_of("head.spread", spread, SPREAD_TARGETS)
        positive("head.init_std", init_std, allow_null=True)
        self.spread = Spread(head_positivity(positivity, floor), spread)
        self.init_std = init_std

    def fields(self) -> dict[str, int]:
        return {"loc": 1, "spread": 1}

    def init_bias(self, bias: Raw) -> None:
        if self.init_std is not None:
            bias["spread"].fill_(self.spread.raw_for_std(self.init_std))

    def distribution(self, raw: Raw, loc: Any = 0.0, scale: Any = 1.0):
        """Predictive Normal with batch shape [..., B] in original units."""
        return D.Normal(loc + scale * raw["loc"][..., 0], scale * self.spread.std(raw["spread"][..., 0]), validate_args=False)

    def nll_terms(self, raw: Raw, y: Tensor) -> Tensor:
        """Per-sample NLL, 1/2 log 2pi + 1/2 log v + (y - mu)^2 / (2v)."""
        return expected_nll(raw["loc"], raw["spread"], y, 0.0, self.spread)

    def nll_kernel(self, raw: Raw, y: Tensor, weight: Any):
        """Analytic NLL: (weighted sum, gradients by field)."""
        value, g_mu, g_raw = expected_nll_kernel(raw["loc"], raw["spread"], y, 0.0, self.spread, weight)
        return value, {"loc": g_mu, "spread": g_raw}

    def expected_nll(self, raw: Raw, m: Tensor, s2: Tensor) -> Tensor:
        """Per-sample expected NLL under a Gaussian target N(m, s2) (the KL objective's cross-entropy)."""
        return expected_nll(raw["loc"], raw["spread"], m, s2, self.spread)

    def expected_nll_kernel(self, raw: Raw, m: Tensor, s2: Tensor, weight: Any):
        """Analytic expected NLL under N(m, s2): (weighted sum, gradients by field)."""
        value, g_mu, g_raw = expected_nll_kernel(raw["loc"], raw["spread"], m, s2, self.spread, weight)
        return value, {"loc": g_mu, "spread": g_raw}

    def crps_kernel(self, raw: Raw, y: Tensor, weight: Any):
        """Analytic CRPS: (weighted sum, gradients by field); the spread's through sigma = exp(log v / 2)."""
        r = raw["spread"].detach()
        log_v = self.spread.log_var(r)
        sigma = torch.exp(0.5 * log_v)
        value, d_mu, d_sigma = normal_crps_parts(raw["loc"].detach(), sigma, y)
        d_raw = d_sigma * sigma * 0.5 * self.spread.dlog_var(r)
        return weighted_total(value, weight), {"loc": d_mu.mul_(weight), "spread": d_raw.mul_(weight)}

    def moments(self, raw: Raw) -> tuple[Tensor, Tensor]:
        return raw["loc"], self.spread.log_var(raw["spread"]).exp()

    def reference(self, dist: Any) -> Any:
        from scipy import stats

        return stats.norm(dist.loc.numpy(), dist.scale.numpy())

    def floor_hits(self, raw: Raw) -> Tensor:
        return total(self.spread.at_floor(raw["spread"]))


@ops.crps.register("torch.distributions.Normal")
def crps_normal(d: Any, y: Tensor) -> Tensor:
    """CRPS of N(loc, scale^2) at y: sigma [z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi)]."""
    z = (y - d.loc) / d.scale
    return d.scale * (z * (2 * std_normal_cdf(z) - 1) + 2 * std_normal_pdf(z) - INV_SQRT_PI)


@quantile_integrals.register("torch.distributions.Normal")
def _normal_quantile_integrals(d: Any, lo: Tensor, hi: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """In z = (x - mu) / sigma between a = Phi^-1(lo) and b = Phi^-1(hi), with t = (c - mu) / sigma:
    I0 = sigma [phi(a) - phi(b) - t (hi - lo)],
    I1 = sigma [lo phi(a) - hi phi(b) + (Phi(b sqrt 2) - Phi(a sqrt 2)) / (2 sqrt pi) - t (hi^2 - lo^2) / 2]
    (by parts, with phi^2 = phi(z sqrt 2) / sqrt(2 pi)), I2 = sigma^2 [(1 + t^2)(hi - lo) + a phi(a) - b phi(b)
    - 2 t (phi(a) - phi(b))]; the levels stand for Phi(a) and Phi(b), so no width is a difference of CDF values."""
    sigma = d.scale.double()
    t = (c.double() - d.loc.double()) / sigma
    a, b = torch.special.ndtri(lo), torch.special.ndtri(hi)
    pa, pb = std_normal_pdf(a), std_normal_pdf(b)
    za, zb = (torch.where(torch.isinf(z), torch.zeros_like(p), z * p) for z, p in ((a, pa), (b, pb)))  # 0 at the ends
    width, dphi = hi - lo, pa - pb
    i0 = sigma * (dphi - t * width)
    i1 = sigma * (lo * pa - hi * pb + (std_normal_cdf(math.sqrt(2) * b) - std_normal_cdf(math.sqrt(2) * a)) * INV_SQRT_PI / 2
                  - t * (hi * hi - lo * lo) / 2)
    i2 = sigma * sigma * ((1 + t * t) * width + za - zb - 2 * t * dphi)
    return i0, i1, i2


@ops.log_interval_mass.register("torch.distributions.Normal")
def _normal_interval(d: Any, lo: Tensor, hi: Tensor) -> Tensor:
    from densbench.distributions.classes import log_normal_mass

    return log_normal_mass(d.loc, d.scale, lo, hi)


@ops.binned_log_prob.register("torch.distributions.Normal")
def _normal_binned(d: Any, y: Tensor) -> Tensor:
    from densbench.distributions.classes import unit_bin

    return _normal_interval(d, *unit_bin(y))


@ops.quadrature.register("torch.distributions.Normal")
def _normal_quadrature(d: Any, nodes: int = ops.QUADRATURE_NODES) -> tuple[Tensor, Tensor]:
    from densbench.distributions.classes import gauss_hermite

    y, w = gauss_hermite(d.loc, d.scale, nodes)
    return y, w.expand_as(y)


@ops.spread_factor.register("torch.distributions.Normal")
def _normal_spread_factor(d: Any, y: Tensor) -> float:
    """argmin_s of the mean NLL of N(mu, s^2 sigma^2): s^2 = mean((y - mu)^2 / sigma^2)."""
    z = (y.double() - d.loc.double()) / d.scale.double()
    return float(z.pow(2).mean().sqrt())
