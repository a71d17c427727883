"""Zero-inflated counts: a structural zero with probability g = sigmoid(l), else a count from a base family.

``ZeroInflation`` adds a gate logit field ``gate`` to any count family that has an analytic NLL (its
``nll_terms`` t(y) = -log p_B(y) - lgamma(y + 1), and ``nll_kernel``); ``head=zip`` puts it on the Poisson
(field ``eta`` = log rate, as head=glm's Poisson), ``head=zinb`` on the negative binomial. In log space,
with log g = logsigmoid(l) and log(1 - g) = logsigmoid(-l) (never log of a probability that underflows):

    -log p(0) = -logaddexp(log g, log(1 - g) - t(0)),      -log p(y) = -log(1 - g) + t(y)  (y > 0).

At zero, the posterior probability that the zero is a count, s = sigmoid(-t(0) - l), scales the base
gradient, and the gate's gradient is g - sigmoid(l + t(0)) = sigmoid(l + t) sigmoid(-l) expm1(-t), a
product that keeps its digits for any l and t; above zero they are the base's and g. So the base's own
kernel, given the weight s w, returns the zero-inflated gradients of its fields.

The predictive is densbench.distributions.classes.ZeroInflated (ZeroInflatedPoisson for head=zip); its
CDF g + (1 - g) F_B(y) and quantiles (a search along that CDF) are registered here for both. The CRPS of
counts, the ranked probability score, is E|X - y| - E|X - X'|/2; with the point mass at 0 it is

    CRPS = g y + (1 - g) E|B - y| - (1 - g)^2 H - g (1 - g) E B,    H = E|B - B'| / 2,

in closed form where the base's are (Wei and Held 2014). For the Poisson of rate m, with F and f its CDF and pmf,
E|B - y| = (y - m) (2 F(y) - 1) + 2 m f(y) and H = m e^{-2m} (I0(2m) + I1(2m)), registered here; the
negative binomial's is in zinb.py. Both take O(batch), where pmf sums take O(batch x tail bound).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from densbench.distributions import ops
from densbench.distributions.families.base import Family, Raw, register, weighted_total
from densbench.distributions.families.glm import Poisson
from densbench.distributions.special import needs_grad, scipy_apply
from densbench.errors import ConfigError
from densbench.lazy import F, torch

if TYPE_CHECKING:
    from torch import Tensor

ZERO_INFLATED = "densbench.distributions.classes.ZeroInflated"
ZERO_INFLATED_POISSON = "densbench.distributions.classes.ZeroInflatedPoisson"


class ZeroInflation(Family):
    """A count family `base` with a structural zero: its fields and a gate logit ``gate``."""

    tasks = ("count",)
    support = "counts"
    distribution_type = ZERO_INFLATED

    def __init__(self, base: Family, init_gate: float | None = None) -> None:
        if init_gate is not None and not (isinstance(init_gate, (int, float)) and 0 < init_gate < 1):
            raise ConfigError(f"head.init_gate={init_gate!r} must be a probability strictly between 0 and 1, or null")
        self.base, self.init_gate = base, init_gate

    def fields(self) -> dict[str, int]:
        return {**self.base.fields(), "gate": 1}

    def init_bias(self, bias: Raw) -> None:
        self.base.init_bias(bias)
        if self.init_gate is not None:
            bias["gate"].fill_(math.log(self.init_gate) - math.log1p(-self.init_gate))

    def distribution(self, raw: Raw, loc: Any = 0.0, scale: Any = 1.0):
        from densbench.distributions.classes import ZeroInflated

        return ZeroInflated(None, self.base.distribution(raw), gate_logits=raw["gate"][..., 0])

    @staticmethod
    def _inflated(t: Tensor, l: Tensor, zero: Tensor) -> Tensor:
        """Per-sample NLL from the base's terms t, the gate logits l and where the targets are 0."""
        stay = F.logsigmoid(-l)
        return torch.where(zero, -torch.logaddexp(F.logsigmoid(l), stay - t), t - stay)

    def nll_terms(self, raw: Raw, y: Tensor) -> Tensor:
        return self._inflated(self.base.nll_terms(raw, y), raw["gate"], y == 0)

    def nll_constant(self, y: Tensor) -> Tensor:
        """The base's term of the targets alone, lgamma(y + 1) (0 at y = 0, so the same for structural zeros)."""
        return self.base.nll_constant(y)

    def nll_kernel(self, raw: Raw, y: Tensor, weight: Any):
        raw = {k: v.detach() for k, v in raw.items()}
        t, l, zero = self.base.nll_terms(raw, y), raw["gate"], y == 0
        count_share = torch.where(zero, torch.sigmoid(-t - l), torch.ones_like(t))
        dgate = torch.where(zero, torch.sigmoid(l + t) * torch.sigmoid(-l) * torch.expm1(-t), torch.sigmoid(l))
        _, grads = self.base.nll_kernel(raw, y, count_share * weight)  # its value is the base's NLL: not needed
        return weighted_total(self._inflated(t, l, zero), weight), {**grads, "gate": dgate.mul_(weight)}

    def moments(self, raw: Raw) -> tuple[Tensor, Tensor]:
        m, v = self.base.moments(raw)
        g, stay = torch.sigmoid(raw["gate"]), torch.sigmoid(-raw["gate"])
        return stay * m, stay * (v + g * m * m)

    def reference(self, dist: Any) -> Any:
        base = self.base.reference(dist.base)
        return None if base is None else ZeroInflatedReference(torch.sigmoid(dist.gate_logits).detach().numpy(), base)


class ZeroInflatedReference:
    """The zero-inflated distribution over a frozen scipy.stats count distribution (scipy has none): the tests' reference."""

    def __init__(self, gate: np.ndarray, base: Any) -> None:
        self.gate, self.base = gate, base

    def logpmf(self, y: np.ndarray) -> np.ndarray:
        """log(g 1{y = 0} + (1 - g) p_B(y))."""
        counts = np.log1p(-self.gate) + self.base.logpmf(y)
        return np.where(y == 0, np.logaddexp(np.log(self.gate), counts), counts)

    def cdf(self, y: np.ndarray) -> np.ndarray:
        """g + (1 - g) F_B(y) from zero on."""
        return np.where(np.asarray(y) < 0, 0.0, self.gate + (1 - self.gate) * self.base.cdf(y))

    def mean(self) -> np.ndarray:
        """(1 - g) E B."""
        return (1 - self.gate) * self.base.mean()

    def var(self) -> np.ndarray:
        """(1 - g) (Var B + g (E B)^2)."""
        return (1 - self.gate) * (self.base.var() + self.gate * self.base.mean() ** 2)


@register
class ZeroInflatedPoissonFamily(ZeroInflation):
    """Zero-inflated Poisson: log rate ``eta`` (rate = exp) and gate logit ``gate`` (gate = sigmoid)."""

    name = "zip"
    distribution_type = ZERO_INFLATED_POISSON

    def __init__(self, init_gate: float | None = None) -> None:
        super().__init__(Poisson(), init_gate)

    def distribution(self, raw: Raw, loc: Any = 0.0, scale: Any = 1.0):
        from densbench.distributions.classes import ZeroInflatedPoisson

        return ZeroInflatedPoisson(None, self.base.distribution(raw).rate, gate_logits=raw["gate"][..., 0])


@ops.cdf.register(ZERO_INFLATED, ZERO_INFLATED_POISSON)
def _zero_inflated_cdf(d: Any, y: Tensor) -> Tensor:
    # g + (1 - g) F_B below the base's median, 1 - (1 - g)(1 - F_B) above it: each exact where its end is (a
    # tail 1 - F that rounding leaves at 1e-8 in float32 would send ops.tail_bound to its 1e7 cap), and
    # 1 - g = sigmoid(-l), not 1 - sigmoid(l), which rounds to 0 for a certain zero
    base, stay = ops.cdf(d.base, y), torch.sigmoid(-d.gate_logits)
    out = torch.where(base < 0.5, torch.sigmoid(d.gate_logits) + stay * base, 1 - stay * (1 - base))
    return torch.where(y < 0, torch.zeros_like(out), out)


def _icdf_on_grid(d: Any, p: Tensor, top: int) -> Tensor:
    """Smallest k with F(k) >= p: a binary search of every row's CDF on the counts 0..top, [top + 1, *batch] held."""
    cum = _zero_inflated_cdf(d, ops.count_grid(d, top)).reshape(top + 1, -1).T.contiguous()  # [batch, K], increasing
    k = torch.searchsorted(cum, p.reshape(p.shape[0], -1).T.contiguous()).T  # how many counts have F(k) < p
    return k.clamp(max=top).to(cum.dtype).reshape(p.shape)


def _icdf_by_bisection(d: Any, p: Tensor, top: int) -> Tensor:
    """Smallest k with F(k) >= p: bisection on (lo, hi] with F(lo) < p <= F(hi), [L, *batch] held."""
    lo, hi = torch.full_like(p, -1.0), torch.full_like(p, float(top))
    for _ in range(top.bit_length() + 1):
        mid = torch.floor((lo + hi) / 2)
        below = _zero_inflated_cdf(d, mid) < p
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return hi.clamp_min(0)  # a level 0 would leave the search at F(-1) = 0


@ops.icdf.register(ZERO_INFLATED, ZERO_INFLATED_POISSON)
def _zero_inflated_icdf(d: Any, p: Tensor) -> Tensor:
    """Quantiles at levels p [L, *batch] on the counts up to the tail bound K (ops.tail_bound): a search along
    the CDF on all K + 1 counts where that is cheaper than log2 K CDFs per level, else bisection (a heavy
    tail, K up to 1e7, would not fit as a grid)."""
    top = ops.tail_bound(d)
    p = p.to(d.gate_logits.dtype).expand(p.shape[0], *d.batch_shape)
    search = _icdf_on_grid if top + 1 <= p.shape[0] * (top.bit_length() + 1) else _icdf_by_bisection
    return search(d, p, top)


def _poisson_cdf(y: Tensor, m: Tensor) -> Tensor:
    """P(B <= y) for B ~ Poisson(m): SciPy's without a gradient to carry (torch's incomplete gamma errs by up
    to 4e-10 for counts around 20 and more), torch's with one."""
    if needs_grad(y, m):
        return torch.special.gammaincc(torch.floor(y) + 1, m)
    from scipy import special

    return scipy_apply(special.pdtr, y, m)


def zero_inflated_crps(d: Any, y: Tensor, mean: Tensor, expected_abs: Tensor, half_mean_difference: Tensor) -> Tensor:
    """E|X - y| - E|X - X'|/2 for X = 0 with probability g, else B, from the base's E B, E|B - y| and E|B - B'|/2."""
    g, stay = torch.sigmoid(d.gate_logits), torch.sigmoid(-d.gate_logits)
    return g * y + stay * expected_abs - stay * (stay * half_mean_difference + g * mean)


@ops.crps.register(ZERO_INFLATED_POISSON)
def _zip_crps(d: Any, y: Tensor) -> Tensor:
    """The closed form of the module docstring, at integer counts y."""
    m = d.rate
    pmf = torch.exp(torch.xlogy(y, m) - m - torch.lgamma(y + 1))
    expected_abs = (y - m) * (2 * _poisson_cdf(y, m) - 1) + 2 * m * pmf
    half_mean_difference = m * (torch.special.i0e(2 * m) + torch.special.i1e(2 * m))  # e^{-2m} inside: no overflow
    return zero_inflated_crps(d, y, m, expected_abs, half_mean_difference)
