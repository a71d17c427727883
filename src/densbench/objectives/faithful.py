"""Faithful heteroscedastic regression (Stirn et al. 2023).

loss = 1/2 (y - mu)^2 + NLL(y | sg(mu), spread): the mean is trained by the squared error alone, the
spread by the NLL with the mean's gradient stopped, and the spread outputs are computed from detached
backbone features, so no spread gradient reaches the shared representation. The mean (and the
representation) is then exactly that of a homoscedastic least-squares fit, and the spread is fitted
around it. For location-scale heads with a ``loc`` output; the analytic path is the family's NLL
kernel with the mean's gradient replaced by the squared error's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from densbench.distributions.families.base import weighted_total
from densbench.objectives.base import register
from densbench.objectives.nll import NLL

if TYPE_CHECKING:
    from densbench.distributions.families import Family


@register
class Faithful(NLL):
    """Squared error for the mean, NLL with a stopped mean for the spread, spread heads cut from the backbone."""

    name = "faithful"
    stops_gradients = True

    def accepts(self, family: Family) -> str | None:
        if "location_scale" in family.traits and "loc" in family.fields() and "regression" in family.tasks:
            return None
        return f"loss=faithful trains a `loc` output by squared error; head={family.name} has none"

    def detached_fields(self, family: Family) -> frozenset[str]:
        return frozenset(f for f in family.fields() if f != "loc")

    def terms(self, family: Family, raw: dict, y: Any, extra: tuple) -> Any:
        stopped = {**raw, "loc": raw["loc"].detach()}
        return 0.5 * (y - raw["loc"]) ** 2 + super().terms(family, stopped, y, extra)

    def constant(self, family: Family, y: Any, extra: tuple):
        return None  # location-scale heads have no target-only term

    def kernel(self, family: Family, raw: dict, y: Any, extra: tuple, weight: Any):
        value, grads = family.nll_kernel(raw, y, weight)
        d = raw["loc"].detach() - y
        grads["loc"] = d * weight
        return value + weighted_total(0.5 * d * d, weight), grads
