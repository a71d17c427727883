"""Homoscedastic Gaussian N(mu, sigma^2): a mean output and one noise level per model, not learned by gradient.

The network predicts the mean only; the noise sigma (standardised units) is a per-model buffer. It
trains as squared error (the NLL with sigma fixed is (y - mu)^2 / (2 sigma^2) plus a constant), and
evaluation may set it from a grid chosen on validation rows: MC dropout's model precision tau
(Gal & Ghahramani 2016) picked from the UCI layout's tau_values.txt (densbench.evaluation.candidates).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from densbench.distributions.families.base import Family, Raw, register, total
from densbench.distributions.ops import HALF_LOG_2PI
from densbench.errors import positive
from densbench.lazy import D, torch

if TYPE_CHECKING:
    from torch import Tensor


@register
class Homoscedastic(Family):
    """N(mu, sigma^2): mu raw, sigma a buffer per model (``noise``, standardised units) until evaluation sets it."""

    name = "homoscedastic"
    tasks = ("regression",)
    traits = frozenset({"gaussian"})
    distribution_type = "torch.distributions.Normal"
    chosen_on_validation = ("noise",)

    def __init__(self, noise: float = 1.0) -> None:
        positive("head.noise", noise)
        self.noise = float(noise)

    def fields(self) -> dict[str, int]:
        return {"loc": 1}

    def buffers(self) -> dict[str, Tensor]:
        # [1, 1, 1]: the head keeps one row per model, [N, 1, 1] against a mean [N, B, 1]
        return {"noise": torch.full((1, 1, 1), self.noise, dtype=torch.get_default_dtype())}

    def distribution(self, raw: Raw, loc: Any = 0.0, scale: Any = 1.0):
        """Predictive Normal with batch shape [..., B] in original units."""
        mu = raw["loc"][..., 0]
        return D.Normal(loc + scale * mu, (scale * raw["noise"][..., 0]).expand_as(mu), validate_args=False)

    def expected_nll(self, raw: Raw, m: Tensor, s2: Tensor | float) -> Tensor:
        """Per-sample E_{t ~ N(m, s2)}[-log N(t | mu, sigma^2)]; s2 = 0: the NLL of the sample m."""
        sigma = raw["noise"]
        d = raw["loc"] - m
        return 0.5 * (d * d + s2) / (sigma * sigma) + torch.log(sigma) + HALF_LOG_2PI

    def expected_nll_kernel(self, raw: Raw, m: Tensor, s2: Tensor | float, weight: Any):
        """Analytic expected NLL under N(m, s2): (weighted sum, gradient d/d mu = (mu - m) / sigma^2, times the weight)."""
        terms = self.expected_nll(raw, m, s2)
        grad = (raw["loc"] - m) / (raw["noise"] * raw["noise"])
        if isinstance(weight, float):
            return total(terms) * weight, {"loc": grad * weight}
        return total(weight * terms), {"loc": grad * weight}

    def nll_terms(self, raw: Raw, y: Tensor) -> Tensor:
        """Per-sample NLL, (y - mu)^2 / (2 sigma^2) + log sigma + 1/2 log 2pi."""
        return self.expected_nll(raw, y, 0.0)

    def nll_kernel(self, raw: Raw, y: Tensor, weight: Any):
        """Analytic NLL: (weighted sum, gradients by field)."""
        return self.expected_nll_kernel(raw, y, 0.0, weight)

    def moments(self, raw: Raw) -> tuple[Tensor, Tensor]:
        return raw["loc"], (raw["noise"] * raw["noise"]).expand_as(raw["loc"])

    def reference(self, dist: Any) -> Any:
        from scipy import stats

        return stats.norm(dist.loc.numpy(), dist.scale.numpy())
