"""beta-NLL (Seitzer et al. 2022): each sample's NLL weighted by the stop-gradient of sigma^(2 beta).

sigma^2 is the predictive variance of the sample (the family's moments, detached). beta = 0 is the
NLL; beta = 1 gives a Gaussian's mean the gradient of the squared error, so badly fit points with a
large variance are not ignored. The analytic path is the family's NLL kernel with per-sample weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from densbench.errors import in_range
from densbench.objectives.base import register
from densbench.objectives.nll import NLL

if TYPE_CHECKING:
    from densbench.distributions.families import Family


@register
class BetaNLL(NLL):
    """sg(sigma^(2 beta)) * NLL per sample, beta in [0, 1]."""

    name = "beta_nll"
    stops_gradients = True

    def __init__(self, beta: float = 0.5, reduction: str = "mean") -> None:
        super().__init__(reduction)
        in_range("loss.beta", beta, 0.0, 1.0)
        self.beta = float(beta)

    def accepts(self, family: Family) -> str | None:
        if "regression" in family.tasks:
            return None
        return f"loss=beta_nll weights by a continuous predictive variance; head={family.name} models {', '.join(family.tasks)}"

    def weights(self, family: Family, raw: dict) -> Any:
        """sg(sigma^(2 beta)) per sample, [..., B, 1]."""
        return family.moments(raw)[1].detach() ** self.beta

    def terms(self, family: Family, raw: dict, y: Any, extra: tuple) -> Any:
        return self.weights(family, raw) * super().terms(family, raw, y, extra)

    def constant(self, family: Family, y: Any, extra: tuple):
        return None  # every term carries a model-dependent weight

    def kernel(self, family: Family, raw: dict, y: Any, extra: tuple, weight: Any):
        return family.nll_kernel(raw, y, weight * self.weights(family, raw))
