"""The continuous ranked probability score as the training loss (a proper score that is robust to outliers).

The loss is the closed form the family's distribution registers with densbench.distributions.ops (the same formula
the metrics use), evaluated in standardised units and differentiated by autograd; grad=analytic uses
the family's ``crps_kernel`` where it has one. Families without a closed form (trait ``crps``) and
discrete ones are refused: a quantile-integral CRPS would not be differentiable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from densbench.distributions import ops
from densbench.objectives.base import Objective, register

if TYPE_CHECKING:
    from densbench.distributions.families import Family


@register
class CRPS(Objective):
    """Mean CRPS of the predictive distribution at the targets."""

    name = "crps"
    family_kernel = ("crps_kernel", "CRPS")

    def accepts(self, family: Family) -> str | None:
        if family.has_closed_form("crps", differentiable=True) and "regression" in family.tasks:
            return None
        return f"loss=crps needs a continuous head with a differentiable closed-form CRPS; head={family.name} has none"

    def terms(self, family: Family, raw: dict, y: Any, extra: tuple) -> Any:
        return ops.crps(family.distribution(raw), y[..., 0]).unsqueeze(-1)

    def kernel(self, family: Family, raw: dict, y: Any, extra: tuple, weight: Any):
        return family.crps_kernel(raw, y, weight)
