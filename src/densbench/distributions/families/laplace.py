"""Laplace(mu, b): absolute-error regression with a learned scale (a median with its uncertainty).

Fields ``loc`` and ``spread`` (b through a positivity map). With z = (y - mu)/b the NLL is
log 2b + |z|, with gradients d/d mu = -sign(y - mu)/b and d/d log b = 1 - |z| (the subgradient 0
at y = mu, as autograd takes it). The CRPS is b (|z| + exp(-|z|) - 3/4); torch's Laplace has the CDF
and the quantiles.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from densbench.distributions import ops
from densbench.distributions.families.base import PositiveField, Raw, register, weighted_total
from densbench.lazy import D, torch

if TYPE_CHECKING:
    from torch import Tensor

LOG_2 = math.log(2.0)


@register
class Laplace(PositiveField):
    """Laplace with loc and a positive scale b (variance 2 b^2)."""

    name = "laplace"
    tasks = ("regression", "count")
    traits = frozenset({"location_scale"})
    distribution_type = "torch.distributions.Laplace"

    def __init__(self, positivity: str = "softplus", floor: float = 1e-6, init_std: float | None = None) -> None:
        super().__init__(positivity, floor, init_std, "init_std")

    def init_value(self, init: float) -> float:
        return init / math.sqrt(2.0)  # b of the initial standard deviation sqrt(2) b

    def fields(self) -> dict[str, int]:
        return {"loc": 1, "spread": 1}

    def distribution(self, raw: Raw, loc: Any = 0.0, scale: Any = 1.0):
        b = self.positivity_map.value(raw["spread"][..., 0])
        return D.Laplace(loc + scale * raw["loc"][..., 0], scale * b, validate_args=False)

    def nll_terms(self, raw: Raw, y: Tensor) -> Tensor:
        log_b = self.positivity_map.log_value(raw["spread"])
        return LOG_2 + log_b + (y - raw["loc"]).abs() * torch.exp(-log_b)

    def nll_kernel(self, raw: Raw, y: Tensor, weight: Any):
        r = raw["spread"].detach()
        log_b, dlog = self.positivity_map.log_value(r), self.positivity_map.dlog(r)
        inv_b = torch.exp(-log_b)
        d = y - raw["loc"].detach()
        az = d.abs() * inv_b
        grads = {"loc": (-torch.sign(d) * inv_b).mul_(weight), "spread": ((1 - az) * dlog).mul_(weight)}
        return weighted_total(LOG_2 + log_b + az, weight), grads

    def crps_kernel(self, raw: Raw, y: Tensor, weight: Any):
        """Analytic CRPS b (|z| + e^-|z| - 3/4): d/d mu = -sign(z) (1 - e^-|z|), d/d b = e^-|z| (1 + |z|) - 3/4."""
        r = raw["spread"].detach()
        log_b, dlog = self.positivity_map.log_value(r), self.positivity_map.dlog(r)
        b = torch.exp(log_b)
        d = y - raw["loc"].detach()
        az = d.abs() / b
        e = torch.exp(-az)
        value = b * (az + e - 0.75)
        grads = {"loc": (-torch.sign(d) * (1 - e)).mul_(weight), "spread": ((e * (1 + az) - 0.75) * b * dlog).mul_(weight)}
        return weighted_total(value, weight), grads

    def moments(self, raw: Raw) -> tuple[Tensor, Tensor]:
        return raw["loc"], 2 * self.positivity_map.value(raw["spread"]) ** 2

    def reference(self, dist: Any) -> Any:
        from scipy import stats

        return stats.laplace(dist.loc.numpy(), dist.scale.numpy())


@ops.crps.register("torch.distributions.Laplace")
def crps_laplace(d: Any, y: Tensor) -> Tensor:
    """b (|z| + exp(-|z|) - 3/4), z = (y - mu)/b."""
    az = ((y - d.loc) / d.scale).abs()
    return d.scale * (az + torch.exp(-az) - 0.75)
