"""Loss formulas of every family and their two gradient paths.

Each family has one function of named raw outputs and a target that returns the per-sample loss
(`*_terms`), used unchanged by both paths:

- ``autograd``: the per-sample loss is reduced and differentiated by torch.autograd;
- ``analytic``: a ``torch.autograd.Function`` computes the same forward value and returns the
  closed-form gradient (REFERENCE.md section 1) in its backward, carried through the positivity map
  to the raw outputs.

Gaussian NLL and Gaussian KL share one formula: KL(N(m, s2) || N(mu, v)) is the expected NLL of
the model under the target Gaussian minus the target's entropy, so the KL document's derivatives
are the NLL derivatives with (y - mu)^2 replaced by s2 + (m - mu)^2.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from densbench.positivity import Spread

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
GRADS = ("analytic", "autograd")
REDUCTIONS = ("mean", "sum")
GLM_FAMILIES = ("gaussian", "bernoulli", "categorical", "poisson")


def _check(grad: str, reduction: str) -> None:
    if grad not in GRADS:
        raise ValueError(f"grad must be one of {', '.join(GRADS)}, got {grad!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")


def _reduce(per_sample: Tensor, reduction: str) -> Tensor:
    return per_sample.mean() if reduction == "mean" else per_sample.sum()


def _grad_scale(g: Tensor, n: int, reduction: str) -> Tensor:
    return g / n if reduction == "mean" else g


# --------------------------------------------------------------------------------------------
# Gaussian: expected NLL under a target Gaussian N(m, s2); s2 = 0 is the NLL of the sample m.
# --------------------------------------------------------------------------------------------


def gaussian_terms(mu: Tensor, raw: Tensor, m: Tensor, s2: Tensor | float, spread: Spread):
    """Per-sample E_{t~N(m,s2)}[-log N(t | mu, v)] with v from `raw`, and its intermediates."""
    log_v = spread.log_var(raw)
    inv_v = torch.exp(-log_v)
    d = mu - m
    q = (d * d + s2) * inv_v
    loss = 0.5 * (log_v + q) + HALF_LOG_2PI
    return loss, d, inv_v, q


class _GaussianFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mu, raw, m, s2, spread, reduction):  # type: ignore[override]
        loss, d, inv_v, q = gaussian_terms(mu, raw, m, s2, spread)
        # d loss/d mu = (mu - m)/v ; d loss/d log v = (1 - q)/2, times d log v/d raw
        ctx.save_for_backward(d * inv_v, 0.5 * (1.0 - q) * spread.dlog_var(raw))
        ctx.reduction = reduction
        return _reduce(loss, reduction)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        g_mu, g_raw = ctx.saved_tensors
        s = _grad_scale(g, g_mu.numel(), ctx.reduction)
        return g_mu * s, g_raw * s, None, None, None, None


def gaussian_nll(
    mu: Tensor, raw: Tensor, y: Tensor, spread: Spread, grad: str = "autograd", reduction: str = "mean"
) -> Tensor:
    """Heteroscedastic Gaussian NLL, 1/2 log 2pi + 1/2 log v + (y - mu)^2 / (2v), reduced over samples."""
    _check(grad, reduction)
    if grad == "analytic":
        return _GaussianFn.apply(mu, raw, y, 0.0, spread, reduction)
    return _reduce(gaussian_terms(mu, raw, y, 0.0, spread)[0], reduction)


def gaussian_entropy(s2: Tensor) -> Tensor:
    """Entropy of N(., s2): 1/2 log(2 pi e s2)."""
    return 0.5 * torch.log(s2) + HALF_LOG_2PI + 0.5


def gaussian_kl(
    mu: Tensor,
    raw: Tensor,
    m: Tensor,
    s2: Tensor,
    spread: Spread,
    grad: str = "autograd",
    reduction: str = "mean",
) -> Tensor:
    """KL(N(m, s2) || N(mu, v)) = -1/2 + log(sigma_m/sigma_gt) + (s2 + (m - mu)^2)/(2 v), reduced."""
    _check(grad, reduction)
    entropy = _reduce(gaussian_entropy(s2).expand_as(mu), reduction)
    if grad == "analytic":
        return _GaussianFn.apply(mu, raw, m, s2, spread, reduction) - entropy
    return _reduce(gaussian_terms(mu, raw, m, s2, spread)[0], reduction) - entropy


# --------------------------------------------------------------------------------------------
# Gaussian mixture (MDN), log space throughout.
# --------------------------------------------------------------------------------------------


def mixture_terms(logits: Tensor, mu: Tensor, raw: Tensor, y: Tensor, spread: Spread):
    """Per-sample -log sum_k pi_k N(y | mu_k, v_k) via logsumexp, and its intermediates."""
    log_pi = torch.log_softmax(logits, dim=-1)
    log_v = spread.log_var(raw)
    inv_v = torch.exp(-log_v)
    d = mu - y
    z2 = d * d * inv_v
    joint = log_pi - 0.5 * (log_v + z2) - HALF_LOG_2PI
    log_p = torch.logsumexp(joint, dim=-1)
    return -log_p, log_pi, joint, log_p, d, inv_v, z2


class _MixtureFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, mu, raw, y, spread, reduction):  # type: ignore[override]
        loss, log_pi, joint, log_p, d, inv_v, z2 = mixture_terms(logits, mu, raw, y, spread)
        gamma = torch.exp(joint - log_p.unsqueeze(-1))  # responsibilities
        # Bishop's closed form: pi - gamma ; gamma (mu - y)/v ; gamma (1 - z^2)/2 * d log v / d raw
        ctx.save_for_backward(
            torch.exp(log_pi) - gamma,
            gamma * d * inv_v,
            gamma * 0.5 * (1.0 - z2) * spread.dlog_var(raw),
        )
        ctx.reduction = reduction
        return _reduce(loss, reduction)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        g_logits, g_mu, g_raw = ctx.saved_tensors
        s = _grad_scale(g, g_mu.shape[0], ctx.reduction)
        return g_logits * s, g_mu * s, g_raw * s, None, None, None


def mixture_nll(
    logits: Tensor,
    mu: Tensor,
    raw: Tensor,
    y: Tensor,
    spread: Spread,
    grad: str = "autograd",
    reduction: str = "mean",
) -> Tensor:
    """Mixture density network NLL for K univariate components; y has shape [N, 1]."""
    _check(grad, reduction)
    if grad == "analytic":
        return _MixtureFn.apply(logits, mu, raw, y, spread, reduction)
    return _reduce(mixture_terms(logits, mu, raw, y, spread)[0], reduction)


# --------------------------------------------------------------------------------------------
# Natural exponential family with canonical link: dL/d eta = y_hat - y for every family.
# --------------------------------------------------------------------------------------------


def glm_terms(eta: Tensor, y: Tensor, family: str) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample -log q(y | eta) = -log h(y) - eta.y + A(eta), the mean y_hat and y as a vector."""
    if family == "gaussian":
        return 0.5 * (y - eta) ** 2 + HALF_LOG_2PI, eta, y
    if family == "bernoulli":
        return F.softplus(eta) - y * eta, torch.sigmoid(eta), y
    if family == "poisson":
        rate = torch.exp(eta)
        return rate - y * eta + torch.lgamma(y + 1.0), rate, y
    if family == "categorical":
        log_z = torch.logsumexp(eta, dim=-1)
        onehot = F.one_hot(y.long(), eta.shape[-1]).to(eta.dtype)
        loss = log_z - (eta * onehot).sum(-1)
        return loss, torch.exp(eta - log_z.unsqueeze(-1)), onehot
    raise ValueError(f"glm family must be one of {', '.join(GLM_FAMILIES)}, got {family!r}")


class _GLMFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, eta, y, family, reduction):  # type: ignore[override]
        loss, y_hat, y_vec = glm_terms(eta, y, family)
        ctx.save_for_backward(y_hat - y_vec)
        ctx.reduction = reduction
        return _reduce(loss, reduction)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (residual,) = ctx.saved_tensors
        return residual * _grad_scale(g, residual.shape[0], ctx.reduction), None, None, None


def glm_nll(eta: Tensor, y: Tensor, family: str, grad: str = "autograd", reduction: str = "mean") -> Tensor:
    """Canonical-link GLM NLL; y is [N, 1] for gaussian/bernoulli/poisson and [N] class indices for categorical."""
    _check(grad, reduction)
    if grad == "analytic":
        return _GLMFn.apply(eta, y, family, reduction)
    return _reduce(glm_terms(eta, y, family)[0], reduction)


LossFn = Callable[..., Tensor]
