"""LogNormal(mu, s): positive targets whose logarithm is Gaussian (prices, durations, concentrations).

Fields ``loc`` (mu, the mean of log y) and ``spread`` (s through a positivity map). The family's
support is positive, so targets reach it only scaled, y = c z with loc = 0, and LogNormal(mu, s) of z
is LogNormal(mu + log c, s) of y. With r = (log y - mu)/s the NLL is

    log y + log s + 1/2 log 2 pi + r^2 / 2,

with gradients d/d mu = -r/s and d/d log s = 1 - r^2. The CRPS is the closed form of Baran & Lerch
(2015), y (2 Phi(r) - 1) - 2 exp(mu + s^2/2) (Phi(r - s) + Phi(s / sqrt 2) - 1); torch's LogNormal
has the CDF and the quantiles; recalibration multiplies s.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from densbench.distributions import ops
from densbench.distributions.families.base import PositiveField, Raw, register, weighted_total
from densbench.lazy import D, torch
from densbench.distributions.ops import HALF_LOG_2PI, std_normal_cdf

if TYPE_CHECKING:
    from torch import Tensor


@register
class LogNormal(PositiveField):
    """Log-normal with mu (the mean of log y) and a positive s (the standard deviation of log y)."""

    name = "lognormal"
    tasks = ("regression",)
    distribution_type = "torch.distributions.LogNormal"
    support = "positive"

    def __init__(self, positivity: str = "softplus", floor: float = 1e-6, init_std: float | None = None) -> None:
        super().__init__(positivity, floor, init_std, "init_std")  # init_std: of log y

    def fields(self) -> dict[str, int]:
        return {"loc": 1, "spread": 1}

    def distribution(self, raw: Raw, loc: Any = 0.0, scale: Any = 1.0):
        """Predictive LogNormal in original units (loc is 0: positive targets are only scaled)."""
        log_c = math.log(scale) if isinstance(scale, (int, float)) else torch.log(scale)
        s = self.positivity_map.value(raw["spread"][..., 0])
        return D.LogNormal(raw["loc"][..., 0] + log_c, s, validate_args=False)

    def nll_terms(self, raw: Raw, y: Tensor) -> Tensor:
        log_y, log_s = torch.log(y), self.positivity_map.log_value(raw["spread"])
        r = (log_y - raw["loc"]) * torch.exp(-log_s)
        return log_y + log_s + HALF_LOG_2PI + 0.5 * r * r

    def nll_kernel(self, raw: Raw, y: Tensor, weight: Any):
        """Analytic path: the weighted NLL sum and its gradients by field (see the module docstring)."""
        sp = raw["spread"].detach()
        log_y, log_s, dlog = torch.log(y), self.positivity_map.log_value(sp), self.positivity_map.dlog(sp)
        inv_s = torch.exp(-log_s)
        r = (log_y - raw["loc"].detach()) * inv_s
        r2 = r * r
        grads = {"loc": (-r * inv_s).mul_(weight), "spread": ((1 - r2) * dlog).mul_(weight)}
        return weighted_total(log_y + log_s + HALF_LOG_2PI + 0.5 * r2, weight), grads

    def reference(self, dist: Any) -> Any:
        from scipy import stats

        return stats.lognorm(dist.scale.numpy(), scale=torch.exp(dist.loc).numpy())


@ops.crps.register("torch.distributions.LogNormal")
def crps_lognormal(d: Any, y: Tensor) -> Tensor:
    """Baran & Lerch (2015): y (2 Phi(r) - 1) - 2 e^(mu + s^2/2) (Phi(r - s) + Phi(s/sqrt 2) - 1), r = (log y - mu)/s."""
    mu, s = d.loc, d.scale
    r = (torch.log(y) - mu) / s
    return y * (2 * std_normal_cdf(r) - 1) - 2 * torch.exp(mu + s * s / 2) * (std_normal_cdf(r - s) + std_normal_cdf(s / math.sqrt(2)) - 1)


@ops.rescale.register("torch.distributions.LogNormal")
def _rescale_lognormal(d: Any, factor: float) -> Any:
    """The spread of log y times factor, its median e^mu unchanged."""
    return D.LogNormal(d.loc, d.scale * factor, validate_args=False)
