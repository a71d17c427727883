"""Predictive and true distributions, and the operations metrics need from them.

Predictions and truths are ``torch.distributions`` objects with batch shape [N] over a scalar (or
class-index) event. What torch lacks is added here, one formula per function: the CDF and
quantiles of a Gaussian mixture (quantiles by bisection, never by moment matching), the Poisson CDF,
the posterior of the inverse-sine problem, quadrature for KL(truth || prediction) where no closed
form is registered, and the CRPS of every family.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor
from torch.distributions import (
    Bernoulli,
    Categorical,
    Distribution,
    MixtureSameFamily,
    Normal,
    Poisson,
    constraints,
    kl_divergence,
)

INV_SQRT_PI = 1.0 / math.sqrt(math.pi)
LOG_2PI = math.log(2 * math.pi)


def _std_normal_cdf(z: Tensor) -> Tensor:
    return 0.5 * torch.erfc(-z / math.sqrt(2.0))


def _std_normal_pdf(z: Tensor) -> Tensor:
    return torch.exp(-0.5 * z * z - 0.5 * LOG_2PI)


class NormalMixture(MixtureSameFamily):
    """Mixture of K univariate Gaussians with batch shape [N]; parameters are [N, K]."""

    def __init__(self, logits: Tensor, loc: Tensor, scale: Tensor, validate_args: bool | None = False):
        super().__init__(Categorical(logits=logits), Normal(loc, scale), validate_args=validate_args)

    @property
    def weights(self) -> Tensor:
        """Mixing weights pi, [N, K]."""
        return self.mixture_distribution.probs

    @property
    def loc(self) -> Tensor:
        """Component means, [N, K]."""
        return self.component_distribution.loc

    @property
    def scale(self) -> Tensor:
        """Component standard deviations, [N, K]."""
        return self.component_distribution.scale

    def icdf(self, p: Tensor, max_iter: int = 100, rows: int = 2048) -> Tensor:
        """Quantiles of the mixture (not of a moment-matched Gaussian); p broadcasts against the batch.

        Newton steps on F(x) = p inside a bisection bracket (a step that leaves the bracket is
        replaced by bisection, so it always converges), in blocks of rows to stay in cache.
        """
        p = torch.as_tensor(p, dtype=self.loc.dtype, device=self.loc.device)
        n = self.loc.shape[0]
        p = p.expand(*p.shape[:-1], n) if p.dim() else p.expand(n)
        parts = [
            self._icdf_block(p[..., i : i + rows], self.weights[i : i + rows], self.loc[i : i + rows], self.scale[i : i + rows], max_iter)
            for i in range(0, n, rows)
        ]
        return torch.cat(parts, -1)

    @staticmethod
    def _icdf_block(p: Tensor, w: Tensor, loc: Tensor, scale: Tensor, max_iter: int) -> Tensor:
        comp_q = loc + scale * (math.sqrt(2.0) * torch.erfinv(2 * p.unsqueeze(-1) - 1))
        # the mixture quantile lies between the smallest and largest component quantiles
        lo, hi = comp_q.min(-1).values, comp_q.max(-1).values
        x = 0.5 * (lo + hi)
        # relative accuracy far below what any score needs, reached in few steps
        tol = 1e-10 if x.dtype == torch.float64 else 1e-6
        for _ in range(max_iter):
            z = (x.unsqueeze(-1) - loc) / scale
            gap = (w * _std_normal_cdf(z)).sum(-1) - p
            dens = (w * _std_normal_pdf(z) / scale).sum(-1)
            below = gap < 0
            lo, hi = torch.where(below, x, lo), torch.where(below, hi, x)
            step = x - gap / dens
            inside = (step >= lo) & (step <= hi)  # False for NaN/inf steps too
            new = torch.where(inside, step, 0.5 * (lo + hi))
            done = bool((((new - x).abs() <= tol * (1 + x.abs())) | (hi - lo <= tol * (1 + x.abs()))).all())
            x = new
            if done:
                break
        return x


class InverseSinePosterior(Distribution):
    """p(x | y) for x ~ U(lo, hi), y = a sin(b x) + c x + N(0, noise^2): the MDN document's inverse problem.

    The density is exact up to its normaliser, which is computed by trapezoid quadrature on a fine
    grid; the same grid serves for moments, the CDF and KL quadrature.
    """

    arg_constraints: dict = {}
    support = constraints.real
    has_rsample = False

    def __init__(
        self,
        y: Tensor,
        lo: float = -10.5,
        hi: float = 10.5,
        amp: float = 7.0,
        freq: float = 0.75,
        slope: float = 0.5,
        noise: float = 1.0,
        grid: int = 4001,
    ):
        self.y = y.reshape(-1)
        self.lo, self.hi, self.amp, self.freq, self.slope, self.noise = lo, hi, amp, freq, slope, noise
        self.grid_x = torch.linspace(lo, hi, grid, dtype=self.y.dtype, device=self.y.device)
        w = torch.full_like(self.grid_x, (hi - lo) / (grid - 1))
        w[0] = w[-1] = w[0] / 2
        log_lik = self._log_lik(self.grid_x.unsqueeze(0))  # [N, G]
        self.log_norm = torch.logsumexp(log_lik + w.log(), dim=-1)  # [N]
        self.grid_w = torch.exp(log_lik - self.log_norm.unsqueeze(-1)) * w  # quadrature weights [N, G]
        super().__init__(batch_shape=self.y.shape, validate_args=False)

    def curve(self, x: Tensor) -> Tensor:
        """The forward map g(x) = a sin(b x) + c x."""
        return self.amp * torch.sin(self.freq * x) + self.slope * x

    def _log_lik(self, x: Tensor) -> Tensor:
        y = self.y.unsqueeze(-1) if x.dim() == 2 else self.y
        z = (y - self.curve(x)) / self.noise
        return -0.5 * z * z - 0.5 * LOG_2PI - math.log(self.noise)

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x | y); x broadcasts as [..., N]."""
        z = (self.y - self.curve(x)) / self.noise
        lp = -0.5 * z * z - 0.5 * LOG_2PI - math.log(self.noise) - self.log_norm
        inside = (x >= self.lo) & (x <= self.hi)
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))

    def quadrature(self) -> tuple[Tensor, Tensor]:
        """Nodes [G, N] and weights [G, N] with sum_g w f(x_g) ~ E[f(x)]."""
        return self.grid_x.unsqueeze(-1).expand(-1, self.y.shape[0]), self.grid_w.T

    @property
    def mean(self) -> Tensor:
        return (self.grid_w * self.grid_x).sum(-1)

    @property
    def variance(self) -> Tensor:
        return (self.grid_w * (self.grid_x - self.mean.unsqueeze(-1)) ** 2).sum(-1)

    def cdf(self, x: Tensor) -> Tensor:
        """P(X <= x) by summing quadrature weights up to x (resolution of the grid)."""
        cum = torch.cumsum(self.grid_w, dim=-1)
        idx = torch.searchsorted(self.grid_x, x.reshape(-1).contiguous(), right=True) - 1
        idx = idx.clamp(0, self.grid_x.numel() - 1)
        return cum.gather(-1, idx.unsqueeze(-1)).squeeze(-1).clamp(0, 1)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        """Samples from the grid (inverse CDF on the grid nodes)."""
        n = int(np.prod(sample_shape)) if len(sample_shape) else 1
        idx = torch.multinomial(self.grid_w.clamp_min(0), n, replacement=True)  # [N, n]
        return self.grid_x[idx].T.reshape(*sample_shape, -1) if len(sample_shape) else self.grid_x[idx[:, 0]]


# ---------------------------------------------------------------------------------------------
# Discrete CDFs and quantiles
# ---------------------------------------------------------------------------------------------


def is_discrete(dist: Distribution) -> bool:
    """Whether the distribution lives on integers (counts or classes)."""
    return isinstance(dist, (Poisson, Bernoulli, Categorical))


def cdf(dist: Distribution, y: Tensor) -> Tensor:
    """P(Y <= y) for every supported family (discrete: y rounded down to an integer)."""
    if isinstance(dist, Poisson):
        k = torch.floor(y)
        out = torch.special.gammaincc(k.clamp_min(0) + 1, dist.rate.expand_as(k))
        return torch.where(k < 0, torch.zeros_like(out), out)
    if isinstance(dist, Bernoulli):
        k = torch.floor(y)
        p0 = 1 - dist.probs
        return torch.where(k < 0, torch.zeros_like(p0), torch.where(k < 1, p0, torch.ones_like(p0)))
    if isinstance(dist, Categorical):
        cum = torch.cumsum(dist.probs, -1)
        k = torch.floor(y).long()
        inside = cum.gather(-1, k.clamp(0, cum.shape[-1] - 1).unsqueeze(-1)).squeeze(-1)
        return torch.where(k < 0, torch.zeros_like(inside), inside)
    return dist.cdf(y)


def _poisson_kmax(rate: Tensor) -> int:
    """A count above which every rate in the batch leaves a negligible tail (12 standard deviations)."""
    return int(torch.ceil(rate.max() + 12 * rate.max().sqrt() + 12).item())


def quantile(dist: Distribution, p: Tensor) -> Tensor:
    """Quantile function; p of shape [L] gives [L, N]. Discrete: smallest k with F(k) >= p."""
    p = torch.as_tensor(p)
    if isinstance(dist, Poisson):
        rate = dist.rate
        ks = torch.arange(_poisson_kmax(rate) + 1, dtype=rate.dtype, device=rate.device)
        F = cdf(dist, ks.view(-1, *([1] * rate.dim())).expand(-1, *rate.shape))  # [K, N]
        pp = p.to(rate).view(-1, 1, *([1] * rate.dim()))
        return (F.unsqueeze(0) < pp).sum(1).to(rate.dtype)
    p = p.to(dist.mean).view(-1, *([1] * len(dist.batch_shape)))
    return dist.icdf(p)


def pit(dist: Distribution, y: Tensor, u: Tensor | None = None, counts: bool = False) -> Tensor:
    """Probability integral transform F(y); randomised F(y-1) + u (F(y) - F(y-1)) for discrete targets.

    ``counts=True`` treats a continuous prediction of count targets as its binned pmf (see binned_log_prob).
    """
    if not is_discrete(dist) and not counts:
        return cdf(dist, y)
    if u is None:
        raise ValueError("discrete targets need uniform draws u for the randomised PIT")
    F = cdf if is_discrete(dist) else binned_cdf
    lower = F(dist, y - 1)
    return lower + u * (F(dist, y) - lower)


# ---------------------------------------------------------------------------------------------
# Continuous predictions of count targets, scored as the pmf of unit bins
# ---------------------------------------------------------------------------------------------


def _log_normal_mass(loc: Tensor, scale: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """log P(lo < Y <= hi) for Y ~ N(loc, scale^2), in float64, accurate far in either tail."""
    a, b = ((lo - loc) / scale).double(), ((hi - loc) / scale).double()
    upper = a >= 0
    # an interval in the upper tail is mirrored into the lower one, where log_ndtr keeps its digits
    a_t, b_t = torch.where(upper, -b, a), torch.where(upper, -a, b)
    log_b = torch.special.log_ndtr(b_t)
    tail = log_b + torch.log(-torch.expm1(torch.special.log_ndtr(a_t) - log_b))
    # an interval around the mean holds a mass no smaller than its distance to the far tails
    middle = torch.log1p(-(torch.special.ndtr(a) + torch.special.ndtr(-b)))
    return torch.where(upper | (b <= 0), tail, middle)


def binned_log_prob(dist: Distribution, y: Tensor) -> Tensor:
    """log P(y - 1/2 < Y <= y + 1/2) at integer counts y, all mass below 1/2 going to y = 0.

    This makes a Gaussian or mixture prediction a proper pmf on 0, 1, 2, ..., so its NLL on count
    data is comparable with a Poisson head's (a density's NLL is not: it can fall below any pmf's).
    """
    lo = torch.where(y <= 0, torch.full_like(y, -math.inf), y - 0.5)
    hi = y + 0.5
    if isinstance(dist, NormalMixture):
        log_w = torch.log_softmax(dist.mixture_distribution.logits.double(), -1)
        return torch.logsumexp(log_w + _log_normal_mass(dist.loc, dist.scale, lo.unsqueeze(-1), hi.unsqueeze(-1)), -1)
    if isinstance(dist, Normal):
        return _log_normal_mass(dist.loc, dist.scale, lo, hi)
    raise TypeError(f"no binned pmf for {type(dist).__name__}")


def binned_cdf(dist: Distribution, k: Tensor) -> Tensor:
    """CDF of the binned pmf of binned_log_prob at integers k: P(Y <= k + 1/2), 0 below 0."""
    k = torch.floor(k)
    out = dist.cdf(k + 0.5)
    return torch.where(k < 0, torch.zeros_like(out), out)


def target_log_prob(dist: Distribution, y: Tensor, task: str) -> Tensor:
    """Log-likelihood of targets: the binned pmf for continuous predictions of counts, else log_prob."""
    if task == "count" and not is_discrete(dist):
        return binned_log_prob(dist, y)
    return dist.log_prob(y)


# ---------------------------------------------------------------------------------------------
# CRPS (closed forms) and the discrete ranked probability score
# ---------------------------------------------------------------------------------------------


def crps_normal(y: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """CRPS of N(loc, scale^2) at y: sigma [z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi)]."""
    z = (y - loc) / scale
    return scale * (z * (2 * _std_normal_cdf(z) - 1) + 2 * _std_normal_pdf(z) - INV_SQRT_PI)


def _a(m: Tensor, s: Tensor) -> Tensor:
    # A(m, s^2) = m (2 Phi(m/s) - 1) + 2 s phi(m/s)
    z = m / s
    return m * (2 * _std_normal_cdf(z) - 1) + 2 * s * _std_normal_pdf(z)


def crps_mixture(y: Tensor, w: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """CRPS of a Gaussian mixture (weights w, means, sds [N, K]) at y [N], in closed form."""
    first = (w * _a(y.unsqueeze(-1) - loc, scale)).sum(-1)
    var = scale * scale
    pair_s = torch.sqrt(var.unsqueeze(-1) + var.unsqueeze(-2))
    pair = _a(loc.unsqueeze(-1) - loc.unsqueeze(-2), pair_s)
    second = (w.unsqueeze(-1) * w.unsqueeze(-2) * pair).sum((-1, -2))
    return first - 0.5 * second


def crps_poisson(y: Tensor, rate: Tensor) -> Tensor:
    """Discrete CRPS sum_k (F(k) - 1{y <= k})^2 over k = 0, 1, ... (truncated where F = 1)."""
    top = torch.maximum(y.max(), rate.max() + 12 * rate.max().sqrt() + 12)
    ks = torch.arange(int(top.item()) + 1, dtype=rate.dtype, device=rate.device).unsqueeze(-1)
    F = torch.special.gammaincc(ks + 1, rate.unsqueeze(0))  # [K, N]
    step = (y.unsqueeze(0) <= ks).to(rate.dtype)
    return ((F - step) ** 2).sum(0)


def rps_categorical(y: Tensor, probs: Tensor) -> Tensor:
    """Ranked probability score over ordered classes, sum_k (F_k - 1{y <= k})^2; two classes: (p_1 - y)^2."""
    cum = torch.cumsum(probs, -1)
    ks = torch.arange(probs.shape[-1], device=probs.device)
    step = (y.long().unsqueeze(-1) <= ks).to(probs.dtype)
    return ((cum - step) ** 2).sum(-1)


def crps(dist: Distribution, y: Tensor) -> Tensor:
    """Per-sample CRPS (continuous families) or ranked probability score (counts and classes)."""
    if isinstance(dist, NormalMixture):
        return crps_mixture(y, dist.weights, dist.loc, dist.scale)
    if isinstance(dist, Normal):
        return crps_normal(y, dist.loc, dist.scale)
    if isinstance(dist, Poisson):
        return crps_poisson(y, dist.rate)
    if isinstance(dist, Bernoulli):
        return rps_categorical(y, torch.stack([1 - dist.probs, dist.probs], -1))
    if isinstance(dist, Categorical):
        return rps_categorical(y, dist.probs)
    raise TypeError(f"no CRPS for {type(dist).__name__}")


# ---------------------------------------------------------------------------------------------
# Quadrature and KL(truth || prediction)
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _hermgauss(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.hermite.hermgauss(n)


def quadrature(dist: Distribution, nodes: int = 64) -> tuple[Tensor, Tensor]:
    """Nodes [Q, N] and weights [Q, N] such that sum_q w f(y_q) approximates E_dist[f(Y)]."""
    if isinstance(dist, InverseSinePosterior):
        return dist.quadrature()
    if isinstance(dist, NormalMixture):
        t, w = (torch.as_tensor(a, dtype=dist.loc.dtype, device=dist.loc.device) for a in _hermgauss(nodes))
        y = dist.loc.unsqueeze(0) + math.sqrt(2.0) * dist.scale.unsqueeze(0) * t.view(-1, 1, 1)  # [Q, N, K]
        wt = (w.view(-1, 1, 1) * INV_SQRT_PI) * dist.weights.unsqueeze(0)
        return y.permute(0, 2, 1).reshape(-1, y.shape[1]), wt.permute(0, 2, 1).reshape(-1, y.shape[1])
    if isinstance(dist, Normal):
        t, w = (torch.as_tensor(a, dtype=dist.loc.dtype, device=dist.loc.device) for a in _hermgauss(nodes))
        y = dist.loc.unsqueeze(0) + math.sqrt(2.0) * dist.scale.unsqueeze(0) * t.view(-1, 1)
        return y, (w * INV_SQRT_PI).view(-1, 1).expand_as(y)
    if isinstance(dist, Poisson):  # exact up to a negligible tail
        rate = dist.rate
        ys = torch.arange(_poisson_kmax(rate) + 1, dtype=rate.dtype, device=rate.device).view(-1, 1).expand(-1, rate.shape[0])
        return ys, dist.log_prob(ys).exp()
    if isinstance(dist, Bernoulli):
        ys = torch.stack([torch.zeros_like(dist.probs), torch.ones_like(dist.probs)])
        return ys, torch.stack([1 - dist.probs, dist.probs])
    if isinstance(dist, Categorical):
        c = dist.probs.shape[-1]
        ys = torch.arange(c, device=dist.probs.device).view(-1, 1).expand(c, dist.probs.shape[0])
        return ys, dist.probs.T
    raise TypeError(f"no quadrature rule for {type(dist).__name__}")


def kl_to_truth(truth: Distribution, pred: Distribution) -> Tensor:
    """Per-sample KL(truth || pred): closed form where torch registers one, quadrature otherwise."""
    if isinstance(truth, Bernoulli) and isinstance(pred, Categorical):
        truth = Categorical(probs=torch.stack([1 - truth.probs, truth.probs], -1))
    try:
        return kl_divergence(truth, pred)
    except NotImplementedError:
        pass
    ys, w = quadrature(truth)
    # a continuous prediction of counts is compared with the truth through its binned pmf
    log_q = binned_log_prob(pred, ys) if isinstance(truth, Poisson) and not is_discrete(pred) else pred.log_prob(ys)
    log_ratio = truth.log_prob(ys) - log_q
    # weights that are exactly zero (outside a truth's support) must not turn 0 * inf into NaN
    return torch.where(w > 0, w * log_ratio, torch.zeros_like(w)).sum(0)
