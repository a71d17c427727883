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
import weakref
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

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


_CONSTANTS: dict[str, tuple] = {}


def target_constant(name: str, fn: Callable[[Tensor], Tensor], t: Tensor, reduction: str) -> Tensor:
    """Reduced fn(t) for a target tensor t, remembered while t is unchanged.

    Terms that depend on the targets alone (lgamma(y + 1), the target Gaussian's entropy) cost more
    than the rest of the loss, and full-batch training passes the same target tensor every step.
    """
    key = (t.data_ptr(), t._version, tuple(t.shape), t.dtype, t.device, reduction)
    hit = _CONSTANTS.get(name)
    if hit is not None and hit[0] == key and hit[1]() is t:
        return hit[2]
    value = _reduce(fn(t), reduction).detach()
    _CONSTANTS[name] = (key, weakref.ref(t), value)
    return value


# --------------------------------------------------------------------------------------------
# Gaussian: expected NLL under a target Gaussian N(m, s2); s2 = 0 is the NLL of the sample m.
# --------------------------------------------------------------------------------------------


def gaussian_terms(mu: Tensor, raw: Tensor, m: Tensor, s2: Tensor | float, spread: Spread):
    """Per-sample E_{t~N(m,s2)}[-log N(t | mu, v)] with v from `raw` (autograd path)."""
    log_v = spread.log_var(raw)
    inv_v = torch.exp(-log_v)
    d = mu - m
    q = (d * d + s2) * inv_v
    return 0.5 * (log_v + q) + HALF_LOG_2PI


def gaussian_kernel(mu: Tensor, raw: Tensor, m: Tensor, s2: Tensor | float, spread: Spread, scale: float):
    """Analytic path: the summed loss and its gradients (times `scale`) w.r.t. mu and raw."""
    log_v, inv, dlog = spread.terms(raw)
    d = mu - m
    q = d * d
    if isinstance(s2, Tensor):
        q.add_(s2)
    q.mul_(inv)
    total = 0.5 * (log_v.sum() + q.sum()) + mu.shape[0] * HALF_LOG_2PI
    # d/d mu = (mu - m)/v ; d/d raw = (1 - q)/2 * d log v/d raw
    g_mu = d.mul_(inv.mul_(scale))
    g_raw = dlog.mul_(q.mul_(-0.5 * scale).add_(0.5 * scale))
    return total, g_mu, g_raw


class _AnalyticLoss(torch.autograd.Function):
    """Forward: a kernel's summed loss and gradients; backward: hands those gradients over.

    ``apply(kernel, n_diff, reduction, *args)``: gradients flow to the first ``n_diff`` args.
    """

    @staticmethod
    def forward(ctx, kernel, n_diff, reduction, *args):  # type: ignore[override]
        scale = 1.0 / args[0].shape[0] if reduction == "mean" else 1.0
        total, *grads = KERNELS[kernel](*args, scale)
        is_tensor = [isinstance(a, Tensor) for a in args]
        ctx.save_for_backward(*(a for a, t in zip(args, is_tensor) if t))
        ctx.rest = ([a for a, t in zip(args, is_tensor) if not t], is_tensor, kernel, n_diff, scale)
        ctx.grads = grads
        return total * scale

    @staticmethod
    @once_differentiable
    def backward(ctx, g):  # type: ignore[override]
        others, is_tensor, kernel, n_diff, scale = ctx.rest
        grads, ctx.grads = ctx.grads, None  # handed over without a copy
        if grads is None:  # a second backward through a retained graph: compute them again
            tensors, others = iter(ctx.saved_tensors), iter(others)
            args = [next(tensors) if t else next(others) for t in is_tensor]
            grads = KERNELS[kernel](*args, scale)[1:]
        # differentiating the loss itself (g = 1) is the usual case: skip a pass over every gradient
        if not (g.device.type == "cpu" and g.numel() == 1 and g.item() == 1.0):
            grads = [t * g for t in grads]
        return (None, None, None, *grads, *([None] * (len(is_tensor) - n_diff)))


def gaussian_nll(
    mu: Tensor, raw: Tensor, y: Tensor, spread: Spread, grad: str = "autograd", reduction: str = "mean"
) -> Tensor:
    """Heteroscedastic Gaussian NLL, 1/2 log 2pi + 1/2 log v + (y - mu)^2 / (2v), reduced over samples."""
    _check(grad, reduction)
    if grad == "analytic":
        return _AnalyticLoss.apply("gaussian", 2, reduction, mu, raw, y, 0.0, spread)
    return _reduce(gaussian_terms(mu, raw, y, 0.0, spread), reduction)


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
    entropy = target_constant("gaussian_entropy", gaussian_entropy, s2.expand_as(mu) if s2.shape != mu.shape else s2, reduction)
    if grad == "analytic":
        return _AnalyticLoss.apply("gaussian", 2, reduction, mu, raw, m, s2, spread) - entropy
    return _reduce(gaussian_terms(mu, raw, m, s2, spread), reduction) - entropy


# --------------------------------------------------------------------------------------------
# Gaussian mixture (MDN), log space throughout.
# --------------------------------------------------------------------------------------------


def mixture_terms(logits: Tensor, mu: Tensor, raw: Tensor, y: Tensor, spread: Spread):
    """Per-sample -log sum_k pi_k N(y | mu_k, v_k) via logsumexp (autograd path)."""
    log_pi = torch.log_softmax(logits, dim=-1)
    log_v = spread.log_var(raw)
    inv_v = torch.exp(-log_v)
    d = mu - y
    z2 = d * d * inv_v
    joint = log_pi - 0.5 * (log_v + z2) - HALF_LOG_2PI
    return -torch.logsumexp(joint, dim=-1)


def mixture_kernel(logits: Tensor, mu: Tensor, raw: Tensor, y: Tensor, spread: Spread, scale: float):
    """Analytic path: sum_i -log p(y_i), and Bishop's gradients (times `scale`) w.r.t. logits, means, raw.

    Works on [K, N] copies: reductions over a handful of components along the last axis are slow on
    CPU, along the first axis they are plain vector adds. Gradients are returned as [N, K] views.
    """
    a, mu_t, r = logits.T.contiguous(), mu.T.contiguous(), raw.T.contiguous()
    yt = y.reshape(1, -1)
    top = a.amax(0, keepdim=True)
    e = (a - top).exp_()
    log_norm = e.sum(0, keepdim=True).log_().add_(top)  # log sum_k exp(logit_k)
    log_v, inv, dlog = spread.terms(r)
    d = mu_t - yt
    z2 = d * d
    z2.mul_(inv)
    # joint_k = log pi_k + log N_k, then responsibilities gamma_k = exp(joint_k - log p)
    joint = log_v.add_(z2).mul_(-0.5).add_(a).sub_(log_norm).sub_(HALF_LOG_2PI)
    jtop = joint.amax(0, keepdim=True)
    gamma = joint.sub_(jtop).exp_()
    p_rel = gamma.sum(0, keepdim=True)
    log_p = p_rel.log().add_(jtop)
    gamma.mul_(p_rel.reciprocal_().mul_(scale))
    # pi - gamma ; gamma (mu - y)/v ; gamma (1 - z^2)/2 * d log v/d raw  (all times scale)
    g_logits = e.mul_(torch.exp(top - log_norm).mul_(scale)).sub_(gamma)
    g_mu = d.mul_(inv).mul_(gamma)
    g_raw = dlog.mul_(z2.mul_(-0.5).add_(0.5).mul_(gamma))
    return -log_p.sum(), g_logits.T, g_mu.T, g_raw.T


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
        return _AnalyticLoss.apply("mixture", 3, reduction, logits, mu, raw, y, spread)
    return _reduce(mixture_terms(logits, mu, raw, y, spread), reduction)


# --------------------------------------------------------------------------------------------
# Natural exponential family with canonical link: dL/d eta = y_hat - y for every family.
# --------------------------------------------------------------------------------------------


def glm_terms(eta: Tensor, y: Tensor, family: str) -> Tensor:
    """Per-sample -log q(y | eta) = -log h(y) - eta.y + A(eta) (autograd path)."""
    if family == "gaussian":
        return 0.5 * (y - eta) ** 2 + HALF_LOG_2PI
    if family == "bernoulli":
        return F.softplus(eta) - y * eta
    if family == "poisson":  # -log h(y) = lgamma(y + 1) is added by glm_nll
        return torch.exp(eta) - y * eta
    if family == "categorical":
        onehot = F.one_hot(y.long(), eta.shape[-1]).to(eta.dtype)
        return torch.logsumexp(eta, dim=-1) - (eta * onehot).sum(-1)
    raise ValueError(f"glm family must be one of {', '.join(GLM_FAMILIES)}, got {family!r}")


def glm_kernel(eta: Tensor, y: Tensor, family: str, scale: float):
    """Analytic path: sum_i -log q(y_i | eta_i), and (y_hat - y) * scale, the gradient at eta."""
    if family == "categorical":
        # [C, N] layout for the same reason as in mixture_kernel
        et = eta.T.contiguous()
        top = et.amax(0, keepdim=True)
        p = (et - top).exp_()
        z = p.sum(0, keepdim=True)
        total = (z.log() + top).sum() - eta.gather(-1, y.long().unsqueeze(-1)).sum()
        p.mul_(z.reciprocal_())
        p[y.long(), torch.arange(eta.shape[0], device=eta.device)] -= 1.0
        return total, p.mul_(scale).T
    e, t = eta.reshape(-1), y.reshape(-1)
    if family == "gaussian":
        resid = eta - y
        return 0.5 * torch.dot(resid.reshape(-1), resid.reshape(-1)) + e.numel() * HALF_LOG_2PI, resid.mul_(scale)
    if family == "bernoulli":
        return F.softplus(eta).sum() - torch.dot(t, e), torch.sigmoid(eta).sub_(y).mul_(scale)
    if family == "poisson":  # without lgamma(y + 1), which glm_nll adds
        rate = torch.exp(eta)
        return rate.sum() - torch.dot(t, e), rate.sub_(y).mul_(scale)
    raise ValueError(f"glm family must be one of {', '.join(GLM_FAMILIES)}, got {family!r}")


def glm_nll(eta: Tensor, y: Tensor, family: str, grad: str = "autograd", reduction: str = "mean") -> Tensor:
    """Canonical-link GLM NLL; y is [N, 1] for gaussian/bernoulli/poisson and [N] class indices for categorical."""
    _check(grad, reduction)
    if grad == "analytic":
        loss = _AnalyticLoss.apply("glm", 1, reduction, eta, y, family)
    else:
        loss = _reduce(glm_terms(eta, y, family), reduction)
    if family == "poisson":
        loss = loss + target_constant("log_factorial", log_factorial, y, reduction)
    return loss


def log_factorial(y: Tensor) -> Tensor:
    """-log h(y) of the Poisson family: lgamma(y + 1), exact (no Stirling approximation)."""
    return torch.lgamma(y + 1.0)


_EAGER_KERNELS: dict[str, Callable] = {"gaussian": gaussian_kernel, "mixture": mixture_kernel, "glm": glm_kernel}
_COMPILED_KERNELS: dict[str, Callable] = {}
KERNELS: dict[str, Callable] = dict(_EAGER_KERNELS)


def use_compiled_kernels(enabled: bool = True) -> None:
    """Run the analytic kernels through torch.compile (each becomes one fused loop) or eagerly."""
    if enabled and not _COMPILED_KERNELS:
        _COMPILED_KERNELS.update({k: torch.compile(f, dynamic=True) for k, f in _EAGER_KERNELS.items()})
    KERNELS.update(_COMPILED_KERNELS if enabled else _EAGER_KERNELS)
