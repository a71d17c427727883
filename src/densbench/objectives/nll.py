"""Negative log-likelihood of the targets under the predictive distribution (any family).

The autograd path differentiates the family's ``nll_terms`` (by default -log_prob); grad=analytic uses
the family's ``nll_kernel`` where it has one. Terms of the targets alone (lgamma(y + 1) of count
families) are the family's ``nll_constant``, computed once per target tensor. ``loss=mdn``
(densbench.objectives.mdn) is this objective with a mixture head, under its own name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from densbench.objectives.base import Objective, register

if TYPE_CHECKING:
    from densbench.distributions.families import Family


@register
class NLL(Objective):
    """-log p(y | x), the maximum-likelihood objective."""

    name = "nll"
    family_kernel = ("nll_kernel", "NLL")

    def terms(self, family: Family, raw: dict, y: Any, extra: tuple) -> Any:
        nll_terms = getattr(family, "nll_terms", None)
        return nll_terms(raw, y) if nll_terms is not None else -family.log_prob(raw, y)

    def constant(self, family: Family, y: Any, extra: tuple):
        fn = getattr(family, "nll_constant", None)
        return None if fn is None else (family.name, fn, y)

    def kernel(self, family: Family, raw: dict, y: Any, extra: tuple, weight: Any):
        return family.nll_kernel(raw, y, weight)
