"""Negative binomial counts with mean m and shape r: an over-dispersed Poisson (variance m + m^2/r).

Fields ``mean`` (log link, a = log m = raw) and ``shape`` (r through a positivity map, b = log r).
Everything is computed in log space, with L = logaddexp(a, b) = log(r + m):

    log p(y) = lgamma(y + r) - lgamma(r) - lgamma(y + 1) + r (b - L) + y (a - L),

and gradients that never form m or r / (r + m) by division:

    d(-log p)/da = r sigmoid(a - b) - y sigmoid(b - a)                      [= r (m - y)/(r + m)],
    d(-log p)/db = -r [psi(y + r) - psi(r) + b - L] - (r sigmoid(a - b) - y sigmoid(b - a)),

so they stay finite at large counts and at large means. The CDF is the regularised incomplete beta
function, F(k) = I_{r/(r+m)}(r, k + 1); lgamma(y + 1) depends on the targets alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from densbench.distributions import ops
from densbench.distributions.families.base import PositiveField, Raw, register, weighted_total
from densbench.lazy import D, torch

if TYPE_CHECKING:
    from torch import Tensor


@register
class NegativeBinomial(PositiveField):
    """Negative binomial with a log-link mean and a positive shape (total count) r."""

    name = "negbin"
    tasks = ("count",)
    support = "counts"
    distribution_type = "torch.distributions.NegativeBinomial"
    positive_field = "shape"

    def __init__(self, positivity: str = "softplus", floor: float = 1e-6, init_shape: float | None = 1.0) -> None:
        super().__init__(positivity, floor, init_shape, "init_shape")

    def fields(self) -> dict[str, int]:
        return {"mean": 1, "shape": 1}

    def _logs(self, raw: Raw) -> tuple[Tensor, Tensor, Tensor]:
        a, b = raw["mean"], self.positivity_map.log_value(raw["shape"])
        return a, b, torch.logaddexp(a, b)

    def distribution(self, raw: Raw, loc: Any = 0.0, scale: Any = 1.0):
        a, b, _ = self._logs(raw)
        return D.NegativeBinomial(total_count=torch.exp(b[..., 0]), logits=(a - b)[..., 0], validate_args=False)

    def nll_terms(self, raw: Raw, y: Tensor) -> Tensor:
        a, b, L = self._logs(raw)
        r = torch.exp(b)
        return torch.lgamma(r) - torch.lgamma(y + r) - r * (b - L) - y * (a - L)

    def nll_constant(self, y: Tensor) -> Tensor:
        """lgamma(y + 1), which depends on the targets alone."""
        return torch.lgamma(y + 1.0)

    def nll_kernel(self, raw: Raw, y: Tensor, weight: Any):
        s = raw["shape"].detach()
        a, b = raw["mean"].detach(), self.positivity_map.log_value(s)
        L = torch.logaddexp(a, b)
        r = torch.exp(b)
        nll = torch.lgamma(r) - torch.lgamma(y + r) - r * (b - L) - y * (a - L)
        da = r * torch.sigmoid(a - b) - y * torch.sigmoid(b - a)
        db = -r * (torch.digamma(y + r) - torch.digamma(r) + b - L) - da
        return weighted_total(nll, weight), {"mean": da.mul_(weight), "shape": (db * self.positivity_map.dlog(s)).mul_(weight)}

    def moments(self, raw: Raw) -> tuple[Tensor, Tensor]:
        m, r = torch.exp(raw["mean"]), self.positivity_map.value(raw["shape"])
        return m, m + m * m / r

    def reference(self, dist: Any) -> Any:
        from scipy import stats

        return stats.nbinom(dist.total_count.numpy(), torch.sigmoid(-dist.logits).numpy())


@ops.cdf.register("torch.distributions.NegativeBinomial")
def _negbin_cdf(d: Any, y: Tensor) -> Tensor:
    from densbench.distributions.special import betainc

    k = torch.floor(y)
    r = d.total_count.expand(torch.broadcast_shapes(k.shape, d.total_count.shape))
    out = betainc(r, k.clamp_min(0) + 1, torch.sigmoid(-d.logits).expand_as(r))
    return torch.where(k < 0, torch.zeros_like(out), out)


