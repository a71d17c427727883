"""Deep evidential regression's loss (Amini et al., NeurIPS 2020, Sec. 3.3): NIG NLL + lambda |y - gamma| (2 nu + alpha).

The first term is the normal-inverse-gamma marginal NLL of the head's outputs (the family's
``nll_terms``: see densbench.distributions.families.evidential); the second is the paper's evidence
regulariser, the error scaled by the total evidence 2 nu + alpha ("virtual observations"), so that
evidence is removed where the prediction is wrong. ``coef`` is lambda; 0.01 is the value of the
paper's own example (hello_world.py, ``evidential_regression(..., coeff=1e-2)``); its UCI trainer
instead starts lambda at 0 and raises it during training, which is not done here. The error is not
stopped (as in NIG_Reg of the paper's code, losses/continuous.py). The analytic path adds the
regulariser's gradients to the family's NLL kernel: d/d gamma = -lambda sign(y - gamma) (2 nu + alpha),
d/d nu = 2 lambda |y - gamma|, d/d alpha = lambda |y - gamma|, each through its positivity map.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from densbench.distributions.families.base import weighted_total
from densbench.errors import in_range
from densbench.lazy import torch
from densbench.objectives.base import register
from densbench.objectives.nll import NLL

if TYPE_CHECKING:
    from densbench.distributions.families import Family


@register
class Evidential(NLL):
    """NIG marginal NLL plus coef * |y - gamma| * (2 nu + alpha) per sample."""

    name = "evidential"

    def __init__(self, coef: float = 0.01, reduction: str = "mean") -> None:
        super().__init__(reduction)
        in_range("loss.coef", coef, 0.0, math.inf)
        self.coef = float(coef)

    def accepts(self, family: Family) -> str | None:
        if callable(getattr(family, "nig", None)) and "regression" in family.tasks:
            return None
        # the run's refusal goes on to name the heads that fit (densbench.runs.checks)
        return f"loss=evidential trains normal-inverse-gamma outputs (gamma, nu, alpha, beta); head={family.name} has none"

    def terms(self, family: Family, raw: dict, y: Any, extra: tuple) -> Any:
        return super().terms(family, raw, y, extra) + self.coef * (y - raw["loc"]).abs() * family.evidence(raw)

    def kernel(self, family: Family, raw: dict, y: Any, extra: tuple, weight: Any):
        value, grads = family.nll_kernel(raw, y, weight)
        evidence, d_evidence = family.evidence_kernel(raw)
        d = y - raw["loc"].detach()
        error = d.abs()
        value = value + weighted_total(self.coef * error * evidence, weight)
        lam = self.coef * weight  # lambda times the reduction's (or per-sample) weight
        grads["loc"] = grads["loc"] - torch.sign(d) * evidence * lam
        for field, g in d_evidence.items():
            grads[field] = grads[field] + error * g * lam
        return value, grads
