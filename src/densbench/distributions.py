"""Distribution classes densbench defines, with their closed forms registered next to them.

``NormalMixture``: K univariate Gaussians (the MDN's predictive, the two-sines truth, deep ensembles
of Gaussian members): CDF as the weighted sum, quantiles by the safeguarded solver inside the bracket
of component quantiles (never a moment-matched Gaussian), CRPS in closed form, the binned pmf and
Gauss-Hermite quadrature per component. ``InverseSinePosterior``: the MDN document's inverse problem,
exact up to a normaliser computed on a fine grid.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Categorical, Distribution, MixtureSameFamily, Normal, constraints

from densbench import ops
from densbench.ops import HALF_LOG_2PI, INV_SQRT_PI, std_normal_cdf, std_normal_pdf


class NormalMixture(MixtureSameFamily):
    """Mixture of K univariate Gaussians with batch shape [...]; parameters are [..., K]."""

    def __init__(self, logits: Tensor, loc: Tensor, scale: Tensor, validate_args: bool | None = False):
        super().__init__(Categorical(logits=logits, validate_args=validate_args), Normal(loc, scale, validate_args=validate_args),
                         validate_args=validate_args)

    @property
    def weights(self) -> Tensor:
        """Mixing weights pi, [..., K]."""
        return self.mixture_distribution.probs

    @property
    def loc(self) -> Tensor:
        """Component means, [..., K]."""
        return self.component_distribution.loc

    @property
    def scale(self) -> Tensor:
        """Component standard deviations, [..., K]."""
        return self.component_distribution.scale


@ops.cdf.register(NormalMixture)
def _mixture_cdf(d: NormalMixture, y: Tensor) -> Tensor:
    return (d.weights * std_normal_cdf((y.unsqueeze(-1) - d.loc) / d.scale)).sum(-1)


@ops.icdf.register(NormalMixture)
def _mixture_icdf(d: NormalMixture, p: Tensor) -> Tensor:
    # the mixture quantile lies between the smallest and largest component quantiles
    comp = d.loc + d.scale * (math.sqrt(2.0) * torch.erfinv(2 * p.unsqueeze(-1) - 1))
    lo, hi = comp.min(-1).values, comp.max(-1).values
    k = d.loc.shape[-1]
    n = d.loc.numel() // k
    w, loc, scale = (t.reshape(n, k) for t in (d.weights, d.loc, d.scale))

    def F(x: Tensor, idx: Tensor) -> Tensor:
        row = idx % n
        return (w[row] * std_normal_cdf((x.unsqueeze(-1) - loc[row]) / scale[row])).sum(-1)

    def f(x: Tensor, idx: Tensor) -> Tensor:
        row = idx % n
        return (w[row] * std_normal_pdf((x.unsqueeze(-1) - loc[row]) / scale[row]) / scale[row]).sum(-1)

    return ops.solve_quantiles(F, f, p, lo, hi)


def _a(m: Tensor, s: Tensor) -> Tensor:
    # A(m, s^2) = m (2 Phi(m/s) - 1) + 2 s phi(m/s)
    z = m / s
    return m * (2 * std_normal_cdf(z) - 1) + 2 * s * std_normal_pdf(z)


@ops.crps.register(NormalMixture)
def crps_mixture(d: NormalMixture, y: Tensor) -> Tensor:
    """CRPS of a Gaussian mixture, sum_i w_i A(y - m_i, s_i^2) - 1/2 sum_ij w_i w_j A(m_i - m_j, s_i^2 + s_j^2)."""
    w, loc, scale = d.weights, d.loc, d.scale
    first = (w * _a(y.unsqueeze(-1) - loc, scale)).sum(-1)
    var = scale * scale
    pair = _a(loc.unsqueeze(-1) - loc.unsqueeze(-2), torch.sqrt(var.unsqueeze(-1) + var.unsqueeze(-2)))
    second = (w.unsqueeze(-1) * w.unsqueeze(-2) * pair).sum((-1, -2))
    return first - 0.5 * second


def log_normal_mass(loc: Tensor, scale: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
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


def unit_bin(y: Tensor) -> tuple[Tensor, Tensor]:
    """The bin (y - 1/2, y + 1/2] of a count, with everything below 1/2 going to 0."""
    return torch.where(y <= 0, torch.full_like(y, -math.inf), y - 0.5), y + 0.5


@ops.binned_log_prob.register(NormalMixture)
def _mixture_binned(d: NormalMixture, y: Tensor) -> Tensor:
    lo, hi = unit_bin(y)
    log_w = torch.log_softmax(d.mixture_distribution.logits.double(), -1)
    return torch.logsumexp(log_w + log_normal_mass(d.loc, d.scale, lo.unsqueeze(-1), hi.unsqueeze(-1)), -1)


@lru_cache(maxsize=8)
def hermgauss(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Hermite nodes and weights for weight exp(-t^2)."""
    return np.polynomial.hermite.hermgauss(n)


def gauss_hermite(loc: Tensor, scale: Tensor, nodes: int) -> tuple[Tensor, Tensor]:
    """Nodes [Q, *shape] and weights [Q, 1...] for E over N(loc, scale^2) (shapes of loc)."""
    t, w = (torch.as_tensor(a, dtype=loc.dtype, device=loc.device) for a in hermgauss(nodes))
    shape = (-1,) + (1,) * loc.dim()
    return loc.unsqueeze(0) + math.sqrt(2.0) * scale.unsqueeze(0) * t.view(shape), (w * INV_SQRT_PI).view(shape)


@ops.quadrature.register(NormalMixture)
def _mixture_quadrature(d: NormalMixture, nodes: int = ops.QUADRATURE_NODES) -> tuple[Tensor, Tensor]:
    y, w = gauss_hermite(d.loc, d.scale, nodes)  # [Q, ..., K]
    wt = w * d.weights.unsqueeze(0)
    # components' nodes side by side: [Q * K, ...]
    return y.movedim(-1, 1).reshape(-1, *d.batch_shape), wt.movedim(-1, 1).reshape(-1, *d.batch_shape)


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
        return -0.5 * z * z - HALF_LOG_2PI - math.log(self.noise)

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x | y); x broadcasts as [..., N]."""
        z = (self.y - self.curve(x)) / self.noise
        lp = -0.5 * z * z - HALF_LOG_2PI - math.log(self.noise) - self.log_norm
        inside = (x >= self.lo) & (x <= self.hi)
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))

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


@ops.quadrature.register(InverseSinePosterior)
def _posterior_quadrature(d: InverseSinePosterior, nodes: int = ops.QUADRATURE_NODES) -> tuple[Tensor, Tensor]:
    return d.grid_x.unsqueeze(-1).expand(-1, d.y.shape[0]), d.grid_w.T
