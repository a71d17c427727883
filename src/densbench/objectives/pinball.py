"""The pinball (quantile) loss averaged over a fixed set of levels: quantile regression with one head.

For levels t_l = (l - 1/2)/L, l = 1..L, the loss is (1/L) sum_l rho_t(y - q_t) with rho_t(u) = u (t - 1{u < 0}),
q_t the predictive distribution's quantile. Twice it is the midpoint rule of the CRPS's quantile
integral (ops.crps_from_quantiles), so as L grows it trains the CRPS without needing its closed form.
The quantiles are differentiable by the implicit function theorem (ops.differentiable_quantile), so
every continuous family qualifies; there is no closed-form gradient for grad=analytic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from densbench.distributions import ops
from densbench.errors import positive
from densbench.objectives.base import Objective, register

if TYPE_CHECKING:
    from densbench.distributions.families import Family


@register
class Pinball(Objective):
    """Mean pinball loss over `levels` evenly spaced quantile levels."""

    name = "pinball"

    def __init__(self, levels: int = 19, reduction: str = "mean") -> None:
        super().__init__(reduction)
        positive("loss.levels", levels, integer=True)
        self.levels = int(levels)

    def accepts(self, family: Family) -> str | None:
        if family.continuous and "regression" in family.tasks:
            return None
        return f"loss=pinball scores the quantiles of a continuous predictive; head={family.name} has {family.support} support"

    def terms(self, family: Family, raw: dict, y: Any, extra: tuple) -> Any:
        target = y[..., 0]
        q = ops.differentiable_quantile(family.distribution(raw), ops.midpoint_levels(self.levels, target.dtype, target.device))
        return (0.5 * ops.crps_from_quantiles(q, target)).unsqueeze(-1)
