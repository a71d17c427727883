"""Mixture of K Gaussians (the MDN document): softmax weights, free means, positive component scales.

The NLL is computed in log space throughout (log_softmax + logsumexp): probability-space mixture
likelihoods underflow for components far from the target. The analytic gradients are Bishop's: with
responsibilities gamma_k, d/d logit_k = pi_k - gamma_k, d/d mu_k = gamma_k (mu_k - y)/sigma_k^2,
d/d log sigma_k = gamma_k (1 - z_k^2). The predictive is densbench.distributions.classes.NormalMixture,
whose closed forms (CDF, quantiles, CRPS, binned mass, quadrature, rescale) this module registers by
name, as every family module does for the distribution it produces: what a family can do is what is
registered for its distribution type, known before torch is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from densbench.errors import positive
from densbench.distributions.families.base import Family, Raw, register, total, weighted_total
from densbench.distributions import ops
from densbench.lazy import torch
from densbench.distributions.ops import HALF_LOG_2PI, std_normal_cdf, std_normal_pdf
from densbench.distributions.positivity import Spread, head_positivity

if TYPE_CHECKING:
    from torch import Tensor

    from densbench.distributions.classes import NormalMixture

PREDICTIVE = "densbench.distributions.classes.NormalMixture"


def mixture_nll(logits: Tensor, mu: Tensor, raw: Tensor, y: Tensor, spread: Spread) -> Tensor:
    """Per-sample -log sum_k pi_k N(y | mu_k, v_k) via logsumexp (autograd path); y is [..., B, 1]."""
    log_pi = torch.log_softmax(logits, dim=-1)
    log_v = spread.log_var(raw)
    inv_v = torch.exp(-log_v)
    d = mu - y
    z2 = d * d * inv_v
    joint = log_pi - 0.5 * (log_v + z2) - HALF_LOG_2PI
    return -torch.logsumexp(joint, dim=-1, keepdim=True)


def mixture_nll_kernel(logits: Tensor, mu: Tensor, raw: Tensor, y: Tensor, spread: Spread, weight: Any):
    """Analytic path: the weighted sum of -log p(y_i) and Bishop's gradients (times the weight).

    Works on [..., K, B] copies: reductions over a handful of components along the last axis are slow
    on CPU, along the one before they are plain vector adds. Gradients are returned as [..., B, K] views.
    """
    a, mu_t, r = (t.transpose(-1, -2).contiguous() for t in (logits, mu, raw))
    yt = y.transpose(-1, -2)
    top = a.amax(-2, keepdim=True)
    e = (a - top).exp_()
    log_norm = e.sum(-2, keepdim=True).log_().add_(top)  # log sum_k exp(logit_k)
    log_v, inv, dlog = spread.terms(r)
    d = mu_t - yt
    z2 = d * d
    z2.mul_(inv)
    # joint_k = log pi_k + log N_k, then responsibilities gamma_k = exp(joint_k - log p)
    joint = log_v.add_(z2).mul_(-0.5).add_(a).sub_(log_norm).sub_(HALF_LOG_2PI)
    jtop = joint.amax(-2, keepdim=True)
    gamma = joint.sub_(jtop).exp_()
    p_rel = gamma.sum(-2, keepdim=True)
    log_p = p_rel.log().add_(jtop)
    per_sample = weight if isinstance(weight, float) else weight.transpose(-1, -2)
    gamma.mul_(p_rel.reciprocal_().mul_(per_sample))
    # pi - gamma ; gamma (mu - y)/v ; gamma (1 - z^2)/2 * d log v/d raw  (all times the weight)
    g_logits = e.mul_(torch.exp(top - log_norm).mul_(per_sample)).sub_(gamma)
    g_mu = d.mul_(inv).mul_(gamma)
    g_raw = dlog.mul_(z2.mul_(-0.5).add_(0.5).mul_(gamma))
    value = -weighted_total(log_p, weight if isinstance(weight, float) else per_sample)
    return value, g_logits.transpose(-1, -2), g_mu.transpose(-1, -2), g_raw.transpose(-1, -2)


@register
class Mixture(Family):
    """Mixture of K Gaussians: logits, means and spread outputs (sigma = exp(raw) + floor by default)."""

    name = "mixture"
    tasks = ("regression", "count")
    traits = frozenset({"mixture"})
    distribution_type = PREDICTIVE
    has_floor = True

    def __init__(self, components: int = 5, positivity: str = "exp", floor: float = 1e-6, init_std: float | None = None) -> None:
        positive("head.components", components, integer=True)
        positive("head.init_std", init_std, allow_null=True)
        self.k = int(components)
        self.spread = Spread(head_positivity(positivity, floor), "std")
        self.init_std = init_std

    def fields(self) -> dict[str, int]:
        return {"logits": self.k, "loc": self.k, "spread": self.k}

    def init_bias(self, bias: Raw) -> None:
        if self.init_std is not None:
            bias["spread"].fill_(self.spread.raw_for_std(self.init_std))

    def distribution(self, raw: Raw, loc: Any = 0.0, scale: Any = 1.0):
        """Predictive Gaussian mixture with batch shape [..., B] in original units."""
        from densbench.distributions.classes import NormalMixture

        if not isinstance(loc, float):  # per-model standardisation [..., 1] meets components [..., B, K]
            loc, scale = loc.unsqueeze(-1), scale.unsqueeze(-1)
        return NormalMixture(raw["logits"], loc + scale * raw["loc"], scale * self.spread.std(raw["spread"]))

    def nll_terms(self, raw: Raw, y: Tensor) -> Tensor:
        return mixture_nll(raw["logits"], raw["loc"], raw["spread"], y, self.spread)

    def nll_kernel(self, raw: Raw, y: Tensor, weight: Any):
        total, g_a, g_mu, g_raw = mixture_nll_kernel(raw["logits"], raw["loc"], raw["spread"], y, self.spread, weight)
        return total, {"logits": g_a, "loc": g_mu, "spread": g_raw}

    def floor_hits(self, raw: Raw) -> Tensor:
        return total(self.spread.at_floor(raw["spread"]))


@ops.cdf.register(PREDICTIVE)
def _mixture_cdf(d: NormalMixture, y: Tensor) -> Tensor:
    return (d.weights * std_normal_cdf((y.unsqueeze(-1) - d.loc) / d.scale)).sum(-1)


@ops.icdf.register(PREDICTIVE)
def _mixture_icdf(d: NormalMixture, p: Tensor) -> Tensor:
    """Quantiles by densbench.distributions.mixtures (grid, inverse Hermite guesses, safeguarded Newton), erfc per component."""
    from densbench.distributions import mixtures

    return mixtures.batch_quantiles(d, p)


def _a(m: Tensor, s: Tensor) -> Tensor:
    # A(m, s^2) = m (2 Phi(m/s) - 1) + 2 s phi(m/s)
    z = m / s
    return m * (2 * std_normal_cdf(z) - 1) + 2 * s * std_normal_pdf(z)


@ops.rescale.register(PREDICTIVE)
def _mixture_rescale(d: NormalMixture, factor: float) -> NormalMixture:
    """Every component's standard deviation times the factor."""
    return type(d)(d.mixture_distribution.logits, d.loc, d.scale * factor)


@ops.crps.register(PREDICTIVE)
def crps_mixture(d: NormalMixture, y: Tensor) -> Tensor:
    """CRPS of a Gaussian mixture, sum_i w_i A(y - m_i, s_i^2) - 1/2 sum_ij w_i w_j A(m_i - m_j, s_i^2 + s_j^2)."""
    w, loc, scale = d.weights, d.loc, d.scale
    first = (w * _a(y.unsqueeze(-1) - loc, scale)).sum(-1)
    var = scale * scale
    pair = _a(loc.unsqueeze(-1) - loc.unsqueeze(-2), torch.sqrt(var.unsqueeze(-1) + var.unsqueeze(-2)))
    second = (w.unsqueeze(-1) * w.unsqueeze(-2) * pair).sum((-1, -2))
    return first - 0.5 * second


@ops.log_interval_mass.register(PREDICTIVE)
def _mixture_interval(d: NormalMixture, lo: Tensor, hi: Tensor) -> Tensor:
    from densbench.distributions.classes import log_normal_mass

    log_w = torch.log_softmax(d.mixture_distribution.logits.double(), -1)
    return torch.logsumexp(log_w + log_normal_mass(d.loc, d.scale, lo.unsqueeze(-1), hi.unsqueeze(-1)), -1)


@ops.binned_log_prob.register(PREDICTIVE)
def _mixture_binned(d: NormalMixture, y: Tensor) -> Tensor:
    from densbench.distributions.classes import unit_bin

    return _mixture_interval(d, *unit_bin(y))


@ops.quadrature.register(PREDICTIVE)
def _mixture_quadrature(d: NormalMixture, nodes: int = ops.QUADRATURE_NODES) -> tuple[Tensor, Tensor]:
    from densbench.distributions.classes import gauss_hermite

    y, w = gauss_hermite(d.loc, d.scale, nodes)  # [Q, ..., K]
    wt = w * d.weights.unsqueeze(0)
    # components' nodes side by side: [Q * K, ...]
    return y.movedim(-1, 1).reshape(-1, *d.batch_shape), wt.movedim(-1, 1).reshape(-1, *d.batch_shape)
