"""Zero-inflated negative binomial: head=negbin's counts (log-link mean m, positive shape r; variance
m + m^2 / r) with a structural zero of probability g = sigmoid(gate logit).

The zero inflation (NLL, analytic gradients, CDF, quantiles) is densbench.distributions.families.zip's
``ZeroInflation`` over densbench.distributions.families.negbin's family, whose log-space pmf and
gradients carry over unchanged: see those modules for the formulas. The CRPS is zip's mixture identity
over the negative binomial's closed form (Wei and Held 2014), with p = r / (r + m) and w = (1 - p) / p^2:

    E|B - y| = y (2 F(y) - 1) - m (2 F_{r+1}(y - 1) - 1),    E|B - B'| / 2 = r w 2F1(r + 1, 1/2; 2; -4 w),

F_{r+1} the CDF of the shape r + 1 (I_p(r + 1, y)). The hypergeometric function is SciPy's, so this
closed form serves the metrics, not training (registered as not differentiable). It replaces the ranked
probability score by pmf sums, whose grid grows with the tail: a shape near its floor asks for 10^7 counts a row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from densbench.distributions import ops
from densbench.distributions.families.base import register
from densbench.distributions.families.negbin import NegativeBinomial
from densbench.distributions.families.zip import (
    ZERO_INFLATED,
    ZeroInflation,
    zero_inflated_crps,
)
from densbench.distributions.special import betainc, scipy_apply
from densbench.lazy import D, torch

if TYPE_CHECKING:
    from torch import Tensor


@register
class ZeroInflatedNegativeBinomial(ZeroInflation):
    """Zero-inflated negative binomial: fields ``mean`` (log m), ``shape`` (r by a positivity map) and ``gate`` (logit)."""

    name = "zinb"

    def __init__(self, positivity: str = "softplus", floor: float = 1e-6, init_shape: float | None = 1.0,
                 init_gate: float | None = None) -> None:
        super().__init__(NegativeBinomial(positivity, floor, init_shape), init_gate)


def _half_mean_difference(r: Tensor, logits: Tensor) -> Tensor:
    """E|B - B'| / 2 = r w 2F1(r + 1, 1/2; 2; -4 w), w = (1 - p) / p^2 = e^logits (1 + e^logits): no 1 - p to cancel."""
    from scipy import special

    e = torch.exp(logits.double())  # w reaches 1e29 for a shape on its floor: past float32 soon after
    w = e * (1 + e)
    return scipy_apply(lambda r, w: r * w * special.hyp2f1(r + 1, 0.5, 2, -4 * w), r, w)


@ops.crps.register(ZERO_INFLATED, differentiable=False)
def _zero_inflated_crps(d: Any, y: Tensor) -> Tensor:
    """The closed form of the module docstring for a negative binomial base, at integer counts y; any other
    base (none is built yet) by the generic pmf sums."""
    if not isinstance(d.base, D.NegativeBinomial):
        return ops.crps.generic(d, y)
    b = d.base
    r, p, m = b.total_count, torch.sigmoid(-b.logits), b.mean
    shifted = torch.where(y >= 1, betainc(r + 1, y.clamp_min(1), p), torch.zeros_like(p))  # F_{r+1}(y - 1)
    expected_abs = y * (2 * ops.cdf(b, y) - 1) - m * (2 * shifted - 1)
    return zero_inflated_crps(d, y, m, expected_abs, _half_mean_difference(r, b.logits))
