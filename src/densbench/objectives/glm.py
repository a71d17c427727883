"""The GLM document's objective: the NLL of a canonical exponential family.

For natural parameters eta, -log q(y | eta) = -log h(y) - eta y + A(eta), whose gradient at eta is
y_hat - y for every such family: the families' analytic kernels return exactly that. This is the NLL
objective restricted to families with the ``natural`` trait (head=glm picks the canonical family of
the data's task).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from densbench.objectives.base import register
from densbench.objectives.nll import NLL

if TYPE_CHECKING:
    from densbench.distributions.families import Family


@register
class GLM(NLL):
    """Canonical-link NLL: gradient y_hat - y at the natural parameter."""

    name = "glm"

    def accepts(self, family: Family) -> str | None:
        if "natural" in family.traits:
            return None
        return f"loss=glm needs a canonical exponential family (head=glm); head={family.name} is not one"
