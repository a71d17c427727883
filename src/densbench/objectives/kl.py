"""KL(true Gaussian || predicted Gaussian) per input (the KL document): training on the known truth.

Datasets with a Gaussian truth N(m(x), s2(x)) train on (m, s2) instead of samples. The KL is the
expected NLL of the prediction under the truth minus the truth's entropy; the entropy depends on the
targets alone and is computed once. Gaussian heads provide the expected NLL and its closed-form
gradient (the NLL's with (y - mu)^2 replaced by s2 + (m - mu)^2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from densbench.lazy import torch
from densbench.objectives.base import Objective, register
from densbench.distributions.ops import HALF_LOG_2PI

if TYPE_CHECKING:
    from torch import Tensor

    from densbench.distributions.families import Family


def neg_gaussian_entropy(s2: Tensor) -> Tensor:
    """-(entropy of N(., s2)) = -1/2 log(2 pi e s2)."""
    return -(0.5 * torch.log(s2) + HALF_LOG_2PI + 0.5)


@register
class KL(Objective):
    """KL(N(m, s2) || prediction), the document's loss."""

    name = "kl"
    family_kernel = ("expected_nll_kernel", "KL")
    needs_truth = "gaussian"

    def accepts(self, family: Family) -> str | None:
        if "gaussian" in family.traits and callable(getattr(family, "expected_nll", None)):
            return None
        return f"loss=kl compares Gaussians in closed form; head={family.name} is not Gaussian"

    def terms(self, family: Family, raw: dict, y: Any, extra: tuple) -> Any:
        m, s2 = extra
        return family.expected_nll(raw, m, s2)

    def constant(self, family: Family, y: Any, extra: tuple):
        m, s2 = extra
        return "entropy", neg_gaussian_entropy, s2

    def kernel(self, family: Family, raw: dict, y: Any, extra: tuple, weight: Any):
        m, s2 = extra
        return family.expected_nll_kernel(raw, m, s2, weight)
