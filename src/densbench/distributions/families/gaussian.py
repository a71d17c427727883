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
from densbench.distributions.quantile_averages import NARROW, NARROW_NODES, quantile_averages

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


@ops.cdf.register("torch.distributions.Normal")
def _normal_cdf(d: Any, y: Tensor) -> Tensor:
    """Phi((y - mu) / sigma) through erfc: torch's through 1 + erf is 0 below about -8.4 sigma (a recalibrated CRPS needs
    F(y) to place y among R's knots, which an overconfident model's validation points put as low as 1e-300)."""
    return std_normal_cdf((y - d.loc) / d.scale)


@quantile_averages.register("torch.distributions.Normal")
def _normal_quantile_averages(d: Any, lo: Tensor, hi: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """In z = (x - mu) / sigma between a = Phi^-1(lo) and b = Phi^-1(hi), w = hi - lo and t = (c - mu) / sigma:
    A0 = sigma [(phi(a) - phi(b)) / w - t], A1 = sigma [(Phi(b sqrt 2) - Phi(a sqrt 2)) / (2 sqrt(pi) w^2) - phi(b) / w
    - t / 2] (by parts, phi^2 being a Normal of variance 1/2 over 2 sqrt pi), A2 = sigma^2 [1 + t^2 + (a phi(a)
    - b phi(b)) / w - 2 t (phi(a) - phi(b)) / w], and A0+ the same as A0 over the part above t, whose level width
    comes from Phi(-t) above the median (1 - Phi(t) would keep nothing of a segment 1e-13 below 1); each ratio in
    logs (w may be subnormal). Across a segment narrow against its distance to 0 or 1 these differences cancel
    (to 1e-16 / w of their size): there Gauss-Legendre on Q, its nodes above 1/2 placed from 1 - u."""
    from densbench.distributions.classes import log_normal_mass
    from densbench.distributions.gauss_rules import legendre

    sigma = d.scale.double()
    t = (c.double() - d.loc.double()) / sigma
    width, log_width = hi - lo, torch.log(hi - lo)
    a, b = torch.special.ndtri(lo), torch.special.ndtri(hi)
    upper = lo >= 0.5
    # the part of the segment above t, in levels: all of it, none, or from Phi(t) (or 1 - Phi(-t)) up to hi
    part = torch.where(upper, std_normal_cdf(-t) - (1 - hi), hi - std_normal_cdf(t))
    part = torch.minimum(torch.where(t <= a, width, torch.where(t >= b, torch.zeros_like(width), part.clamp_min(0))), width)
    ra, rb, rt = (torch.exp(-0.5 * z * z - HALF_LOG_2PI - log_width) for z in (a, b, torch.maximum(a, torch.minimum(t, b))))
    za, zb = (torch.where(torch.isinf(z), torch.zeros_like(r), z * r) for z, r in ((a, ra), (b, rb)))
    squared = torch.exp(log_normal_mass(torch.zeros_like(a), torch.full_like(a, math.sqrt(0.5)), a, b) - 2 * log_width)
    a0 = ra - rb - t
    a1 = squared * INV_SQRT_PI / 2 - rb - t / 2
    a2 = 1 + t * t + za - zb - 2 * t * (ra - rb)
    above = torch.where(t >= b, torch.zeros_like(a0), rt - rb - t * part / width)
    narrow = width < NARROW * torch.where(upper, 1 - hi, lo)  # 1 - hi is exact above 1/2
    if bool(narrow.any()):
        x, g = (torch.as_tensor(v, dtype=torch.float64, device=lo.device).view(-1, *([1] * lo.dim())) for v in legendre(NARROW_NODES))
        s, g = (1 + x) / 2, g / 2  # lambda at the nodes; weights of an average

        def q(level_width: Tensor) -> Tensor:  # Q - c at the nodes of the top `level_width` of the segment
            return torch.where(upper, -torch.special.ndtri((1 - hi) + level_width * (1 - s)),
                               torch.special.ndtri(hi - level_width * (1 - s))) - t

        z = q(width)
        a0, a1, a2 = (torch.where(narrow, (g * v).sum(0), closed) for v, closed in ((z, a0), (s * z, a1), (z * z, a2)))
        above = torch.where(narrow, (part / width) * (g * q(part).clamp_min(0)).sum(0), above)
    return sigma * a0, sigma * a1, sigma * sigma * a2, sigma * above


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
