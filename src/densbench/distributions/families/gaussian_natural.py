"""Gaussian in natural parameters (Immer et al. 2023): eta1 = mu / sigma^2, eta2 = -1 / (2 sigma^2) < 0.

Fields ``eta1`` (raw) and ``spread``: the variance v = sigma^2 through a positivity map, and
eta2 = -1/(2v), so the variance has the floor every head has and cannot collapse. The NLL,

    1/2 log 2pi - eta1 y - eta2 y^2 - eta1^2 / (4 eta2) - 1/2 log(-2 eta2),

is evaluated as 1/2 log 2pi + 1/2 log v + (y - mu)^2 / (2v) with mu = eta1 v (no division by a small
eta2). Its gradient is the exponential family's prediction minus observation on the sufficient
statistics (y, y^2): d/d eta1 = mu - y, d/d eta2 = (v + mu^2) - y^2, and through eta2 = -1/(2 v(r)),
d/d r = [v - y^2 + mu^2] / (2v) * d log v / dr. The expected NLL under a Gaussian target N(m, s2) (for
loss=kl) replaces y by m and y^2 by s2 + m^2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from densbench.distributions.families.base import PositiveField, Raw, register, weighted_total
from densbench.lazy import D, torch
from densbench.distributions.ops import HALF_LOG_2PI

if TYPE_CHECKING:
    from torch import Tensor


@register
class GaussianNatural(PositiveField):
    """N(mu, v) output as natural parameters: eta1 raw, eta2 = -1/(2v) with v from a positivity map."""

    name = "gaussian_natural"
    tasks = ("regression", "count")
    traits = frozenset({"location_scale", "gaussian", "natural"})
    distribution_type = "torch.distributions.Normal"

    def __init__(self, positivity: str = "softplus", floor: float = 1e-6, init_std: float | None = None) -> None:
        super().__init__(positivity, floor, init_std, "init_std")

    def init_value(self, init: float) -> float:
        return init**2  # the positive output is the variance

    def fields(self) -> dict[str, int]:
        return {"eta1": 1, "spread": 1}

    def _mean_var(self, raw: Raw) -> tuple[Tensor, Tensor, Tensor]:
        log_v = self.positivity_map.log_value(raw["spread"])
        v = torch.exp(log_v)
        return raw["eta1"] * v, v, log_v

    def distribution(self, raw: Raw, loc: Any = 0.0, scale: Any = 1.0):
        mu, v, _ = self._mean_var(raw)
        return D.Normal(loc + scale * mu[..., 0], scale * v[..., 0].sqrt(), validate_args=False)

    def expected_nll(self, raw: Raw, m: Tensor, s2: Tensor | float) -> Tensor:
        """Per-sample E_{t ~ N(m, s2)}[-log N(t | mu, v)]; s2 = 0 gives the NLL of the sample m."""
        mu, v, log_v = self._mean_var(raw)
        d = mu - m
        return HALF_LOG_2PI + 0.5 * log_v + (d * d + s2) / (2 * v)

    def expected_nll_kernel(self, raw: Raw, m: Tensor, s2: Tensor | float, weight: Any):
        """Analytic path: E[T] - T on (y, y^2) at (eta1, eta2), carried to the raw outputs."""
        r = raw["spread"].detach()
        log_v, dlog = self.positivity_map.log_value(r), self.positivity_map.dlog(r)
        v = torch.exp(log_v)
        mu = raw["eta1"].detach() * v
        d = mu - m
        value = HALF_LOG_2PI + 0.5 * log_v + (d * d + s2) / (2 * v)
        # (v + mu^2) - (s2 + m^2), with mu^2 - m^2 as (mu - m)(mu + m) to keep its digits
        d_eta2 = v - s2 + d * (mu + m)
        return weighted_total(value, weight), {"eta1": d.mul_(weight), "spread": (d_eta2 * dlog / (2 * v)).mul_(weight)}

    def nll_terms(self, raw: Raw, y: Tensor) -> Tensor:
        return self.expected_nll(raw, y, 0.0)

    def nll_kernel(self, raw: Raw, y: Tensor, weight: Any):
        return self.expected_nll_kernel(raw, y, 0.0, weight)

    def crps_kernel(self, raw: Raw, y: Tensor, weight: Any):
        """Analytic CRPS: mu = eta1 v and sigma = sqrt(v) both move with the variance output."""
        from densbench.distributions.families.gaussian import normal_crps_parts

        r = raw["spread"].detach()
        log_v, dlog = self.positivity_map.log_value(r), self.positivity_map.dlog(r)
        v = torch.exp(log_v)
        mu, sigma = raw["eta1"].detach() * v, torch.exp(0.5 * log_v)
        value, d_mu, d_sigma = normal_crps_parts(mu, sigma, y)
        d_raw = (d_mu * mu + d_sigma * 0.5 * sigma) * dlog
        return weighted_total(value, weight), {"eta1": (d_mu * v).mul_(weight), "spread": d_raw.mul_(weight)}

    def moments(self, raw: Raw) -> tuple[Tensor, Tensor]:
        mu, v, _ = self._mean_var(raw)
        return mu, v

    def reference(self, dist: Any) -> Any:
        from scipy import stats

        return stats.norm(dist.loc.numpy(), dist.scale.numpy())
