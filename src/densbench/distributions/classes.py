"""Distribution classes densbench defines, with their closed forms registered next to them.

``NormalMixture``: K univariate Gaussians (the MDN's predictive, the two-sines truth, deep ensembles
of Gaussian members): CDF as the weighted sum, quantiles by the safeguarded solver inside the bracket
of component quantiles (never a moment-matched Gaussian), CRPS in closed form, the binned pmf and
Gauss-Hermite quadrature per component. ``InverseSinePosterior``: the MDN document's inverse problem,
exact up to a normaliser computed on a fine grid. ``ZeroInflated``: a count distribution with structural
zeros (``ZeroInflatedPoisson`` is the sine_zip truth). (A recalibrated predictive, R(F(y)), is
densbench.distributions.recalibrated's.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Categorical, Distribution, MixtureSameFamily, Normal, Poisson, constraints, register_kl
from torch.distributions.utils import lazy_property

from densbench.distributions import ops
from densbench.distributions.gauss_rules import hermite, legendre
from densbench.distributions.ops import HALF_LOG_2PI, INV_SQRT_PI, SQRT_2PI


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

    def log_prob(self, x: Tensor) -> Tensor:
        """log sum_k pi_k N(x | mu_k, sigma_k) for x of shape [..., *batch], one component at a time.

        Scoring evaluates many points against few components: K passes over x's shape run faster
        than MixtureSameFamily's logsumexp over a trailing axis of K (the KL to a truth: 1.6x).
        """
        log_a = torch.log_softmax(self.mixture_distribution.logits, -1) - self.scale.log() - HALF_LOG_2PI
        inv = 1 / self.scale
        terms = [log_a[..., k] - 0.5 * ((x - self.loc[..., k]) * inv[..., k]) ** 2 for k in range(log_a.shape[-1])]
        top = torch.stack(terms).amax(0)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        return top + sum(torch.exp(t - top) for t in terms).log()


def log_normal_mass(loc: Tensor, scale: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """log P(lo < Y <= hi) for Y ~ N(loc, scale^2), in float64, accurate far in either tail."""
    a, b = ((lo - loc) / scale).double(), ((hi - loc) / scale).double()
    upper = a >= 0
    # an interval in the upper tail is mirrored into the lower one, where log_ndtr keeps its digits
    a_t, b_t = torch.where(upper, -b, a), torch.where(upper, -a, b)
    log_b = torch.special.log_ndtr(b_t)
    tail = log_b + torch.log(-torch.expm1(torch.special.log_ndtr(a_t) - log_b))
    # an interval around the mean holds a mass no smaller than its distance to the far tails (a narrow one: below)
    middle = torch.log1p(-(torch.special.ndtr(a) + torch.special.ndtr(-b)))
    wide = torch.where(upper | (b <= 0), tail, middle)
    # a narrow interval: the difference of two nearly equal CDFs keeps only 1e-16 / (its relative width) of its
    # digits, so there the density is integrated instead (in logs: exact however far out)
    # the width from the ends themselves: b - a would carry the rounding of each standardised end, ulp(a) / w of it
    w = (hi.double() - lo.double()) / scale.double()
    a, b, w = torch.broadcast_tensors(a, b, w)
    m = (a + b) / 2
    narrow = torch.isfinite(w) & (w * (m.abs() + w) < NARROW_SPAN)
    if not bool(narrow.any()):  # the nodes only where they are needed: a mixture's rows x components are many
        return wide
    return wide.masked_scatter(narrow, _log_narrow_mass(m[narrow], w[narrow]))


NARROW_SPAN = 0.5  # w (|m| + w) below this: log f changes by at most ~0.5 across the interval
NARROW_NODES = 8  # Gauss-Legendre nodes: exp of such a quadratic is a polynomial to 1e-20 at degree 15, which they integrate


def _log_narrow_mass(m: Tensor, w: Tensor) -> Tensor:
    """log of the standard normal's mass over (m - w/2, m + w/2) by Gauss-Legendre on the density, in logs."""
    t, g = (torch.as_tensor(v, dtype=m.dtype, device=m.device) for v in legendre(NARROW_NODES))
    x = m.unsqueeze(-1) + (w / 2).unsqueeze(-1) * t
    return torch.log(w / 2) + torch.logsumexp(torch.log(g) - 0.5 * x * x, -1) - HALF_LOG_2PI


def unit_bin(y: Tensor) -> tuple[Tensor, Tensor]:
    """The bin (y - 1/2, y + 1/2] of a count, with everything below 1/2 going to 0."""
    return torch.where(y <= 0, torch.full_like(y, -math.inf), y - 0.5), y + 0.5


def gauss_hermite(loc: Tensor, scale: Tensor, nodes: int) -> tuple[Tensor, Tensor]:
    """Nodes [Q, *shape] and weights [Q, 1...] for E over N(loc, scale^2) (shapes of loc)."""
    t, w = (torch.as_tensor(a, dtype=loc.dtype, device=loc.device) for a in hermite(nodes))
    shape = (-1,) + (1,) * loc.dim()
    return loc.unsqueeze(0) + math.sqrt(2.0) * scale.unsqueeze(0) * t.view(shape), (w * INV_SQRT_PI).view(shape)


class ZeroInflated(Distribution):
    """A structural zero with probability `gate`, else a draw from the count distribution `base`: excess zeros.

    The gate is kept as logits l (give either): log gate = logsigmoid(l), log(1 - gate) = logsigmoid(-l) keep
    their digits where gate rounds to 0 or 1. Its closed forms are registered by the families that build it (zip, zinb).
    """

    arg_constraints = {"gate": constraints.unit_interval, "gate_logits": constraints.real}  # noqa: RUF012 (torch's API)
    support = constraints.nonnegative_integer

    def __init__(self, gate: Tensor | None, base: Distribution, gate_logits: Tensor | None = None, validate_args: bool = False) -> None:
        if (gate is None) == (gate_logits is None):
            raise ValueError("ZeroInflated takes the gate as a probability or as logits, exactly one of them")
        shape = torch.broadcast_shapes((gate if gate is not None else gate_logits).shape, base.batch_shape)
        self.base = base if base.batch_shape == shape else base.expand(shape)
        if gate is not None:  # the other is derived on first use (lazy_property)
            self.gate = gate.expand(shape)
        else:
            self.gate_logits = gate_logits.expand(shape)
        super().__init__(shape, validate_args=validate_args)

    @lazy_property
    def gate(self) -> Tensor:
        return torch.sigmoid(self.gate_logits)

    @lazy_property
    def gate_logits(self) -> Tensor:
        return torch.log(self.gate) - torch.log1p(-self.gate)

    @property
    def mean(self) -> Tensor:
        return torch.sigmoid(-self.gate_logits) * self.base.mean

    @property
    def variance(self) -> Tensor:
        """(1 - gate) (Var B + gate (E B)^2): the base's variance plus the spread the structural zeros add."""
        return torch.sigmoid(-self.gate_logits) * (self.base.variance + self.gate * self.base.mean**2)

    def log_prob(self, y: Tensor) -> Tensor:
        """logaddexp(log gate, log(1 - gate) + log p_B(0)) at zero, log(1 - gate) + log p_B(y) elsewhere."""
        log_gate, log_stay = (torch.nn.functional.logsigmoid(s * self.gate_logits) for s in (1, -1))
        counts = log_stay + self.base.log_prob(y)
        return torch.where(y == 0, torch.logaddexp(log_gate, counts), counts)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:  # noqa: B008 (torch's signature)
        with torch.no_grad():
            counts = self.base.sample(sample_shape)
            zero = torch.rand(counts.shape, dtype=counts.dtype, device=counts.device) < self.gate.expand(counts.shape)
            return torch.where(zero, torch.zeros_like(counts), counts)


class ZeroInflatedPoisson(ZeroInflated):
    """ZeroInflated over Poisson(rate): head=zip's predictive and the sine_zip truth."""

    def __init__(self, gate: Tensor | None, rate: Tensor, gate_logits: Tensor | None = None) -> None:
        super().__init__(gate, Poisson(rate, validate_args=False), gate_logits)

    @property
    def rate(self) -> Tensor:
        """The Poisson rate of the counts that are not structural zeros."""
        return self.base.rate


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
        log_lik = self.log_lik(self.grid_x.unsqueeze(0))  # [N, G]
        self.log_norm = torch.logsumexp(log_lik + w.log(), dim=-1)  # [N]
        self.grid_w = torch.exp(log_lik - self.log_norm.unsqueeze(-1)) * w  # quadrature weights [N, G]
        super().__init__(batch_shape=self.y.shape, validate_args=False)

    def curve(self, x: Tensor) -> Tensor:
        """The forward map g(x) = a sin(b x) + c x."""
        return self.amp * torch.sin(self.freq * x) + self.slope * x

    def log_lik(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """log p(y | x), for this posterior's y (broadcast over a trailing node axis when x is 2-D) or given y."""
        if y is None:
            y = self.y.unsqueeze(-1) if x.dim() == 2 else self.y
        z = (y - self.curve(x)) / self.noise
        return -0.5 * z * z - HALF_LOG_2PI - math.log(self.noise)

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x | y); x broadcasts as [..., N]."""
        lp = self.log_lik(x, self.y) - self.log_norm
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


PANEL_WIDTH, PANEL_NODES = 0.5, 16  # Gauss-Legendre panels for integrals over the posterior's support
BUMP_PANEL, BUMP_REACH = 1.5, 6  # around a narrow component: panels 1.5 scales wide, 6 each side of its mean
MATTERS = 1e-10  # a component whose bump changes the KL by less than this needs no panels of its own
NODES_PER_CHUNK = 2_000_000  # rows x nodes evaluated at once
CHECK_NODES, CHECK_TOL = 10, 1e-9  # the coarser rule that checks every row, and how far it may differ
MAX_HALVINGS = 6  # a row in doubt has its panels halved at most this often


@lru_cache(maxsize=16)
def legendre_panels(lo: float, hi: float, width: float, nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of Gauss-Legendre rules of `nodes` points on panels of about `width` covering [lo, hi]."""
    t, w = legendre(nodes)
    edges = np.linspace(lo, hi, max(1, math.ceil((hi - lo) / width)) + 1)
    half, mid = np.diff(edges)[:, None] / 2, (edges[:-1] + edges[1:])[:, None] / 2
    return (mid + half * t).reshape(-1), (half * w).reshape(-1)


def _panel_edges(p: InverseSinePosterior, loc: Tensor, scale: Tensor, matters: Tensor) -> Tensor:
    """Sorted panel edges per row [N, E]: a uniform grid of PANEL_WIDTH, refined around narrow components that matter."""
    base = torch.linspace(p.lo, p.hi, math.ceil((p.hi - p.lo) / PANEL_WIDTH) + 1, dtype=loc.dtype, device=loc.device)
    steps = BUMP_PANEL * torch.arange(-BUMP_REACH, BUMP_REACH + 1, dtype=loc.dtype, device=loc.device)
    bump = loc.unsqueeze(-1) + scale.unsqueeze(-1) * steps  # [N, K, S]
    refine = matters & (BUMP_PANEL * scale < PANEL_WIDTH)
    bump = torch.where(refine.unsqueeze(-1), bump, torch.full_like(bump, p.lo))  # unused edges: empty panels at lo
    edges = torch.cat([base.expand(loc.shape[0], -1), bump.flatten(1)], 1).clamp(p.lo, p.hi)
    return edges.sort(-1).values


def _kl_on_edges(p: InverseSinePosterior, rows: Tensor, edges: Tensor, nodes: int, log_q: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """KL for `rows` by `nodes`-point Gauss-Legendre rules on the panels between edges [n, E]."""
    t, gw = (torch.as_tensor(a, dtype=edges.dtype, device=edges.device) for a in legendre(nodes))
    half, mid = (edges[:, 1:] - edges[:, :-1]).unsqueeze(-1) / 2, (edges[:, 1:] + edges[:, :-1]).unsqueeze(-1) / 2
    x, w = (mid + half * t).flatten(1), (half * gw).flatten(1)  # [n, Q]; empty panels weigh 0
    log_p = p.log_lik(x, p.y[rows].unsqueeze(-1))
    log_p = log_p - torch.logsumexp(log_p + w.log(), -1, keepdim=True)
    return (w * log_p.exp() * (log_p - log_q(x.T, rows).T)).sum(-1)


def _kl_posterior_panels(p: InverseSinePosterior, loc: Tensor, scale: Tensor, matters: Tensor,
                         log_q: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """KL per row by Gauss-Legendre panels, p normalised on the same nodes, checked by a coarser rule.

    A prediction's narrow components give log q a curvature that wide panels miss: with panels of
    1.5 component scales around each one that matters, the KL of a trained mdn_doc model agrees with
    a 250-times finer rule to 1e-11, where the posterior's own 4001-point trapezoid grid erred by 2e-5.
    Where q puts p's mass far in its components' tails, log q kinks where one tail takes over from
    another: a row whose 10-node rule disagrees with the 16-node one has its panels halved until they
    agree (at most MAX_HALVINGS times). Components [N, K] are loc and scale; ``log_q(x, rows)`` is the
    log density of those rows' predictions at nodes x [Q, len(rows)].
    """
    edges = _panel_edges(p, loc, scale, matters)
    out = torch.empty_like(p.y)
    step = max(1, NODES_PER_CHUNK // (edges.shape[1] * PANEL_NODES))
    for part in torch.arange(p.y.shape[0], device=loc.device).split(step):
        e = edges[part]
        e = e[:, int((e == p.lo).sum(-1).min()) - 1:]  # edges at lo every row of the chunk has are empty panels
        rows = part
        for halvings in range(MAX_HALVINGS + 1):
            kl = _kl_on_edges(p, rows, e, PANEL_NODES, log_q)
            out[rows] = kl
            doubt = (kl - _kl_on_edges(p, rows, e, CHECK_NODES, log_q)).abs() > CHECK_TOL * (1 + kl.abs())
            if halvings == MAX_HALVINGS or not bool(doubt.any()):
                break
            rows, e = rows[doubt], e[doubt]
            halves = torch.stack([e[:, :-1], (e[:, :-1] + e[:, 1:]) / 2], -1).flatten(1)  # every edge, then its panel's midpoint
            e = torch.cat([halves, e[:, -1:]], 1)
    return out


@register_kl(InverseSinePosterior, NormalMixture)
def _kl_posterior_mixture(p: InverseSinePosterior, q: NormalMixture) -> Tensor:
    """KL per row; a component matters if its bump moves the integral of p log q by more than MATTERS.

    A bump of weight w on the rest of the mixture, q_rest, changes that integral by about
    p(m) w / q_rest(m) at its mean m: trained MDNs park unused components, narrow and nearly
    weightless, where they change nothing, and panels for those would cost time for nothing.
    """
    # in the posterior's precision (float64): float32 rounding of log q alone is ~1e-7 nats
    q = NormalMixture(*(t.to(p.y.dtype) for t in (q.mixture_distribution.logits, q.loc, q.scale)))
    loc, scale, w = (t.reshape(p.y.shape[0], -1) for t in (q.loc, q.scale, q.weights))
    own = w / (scale * SQRT_2PI)
    rest = (q.log_prob(loc.T).T.exp() - own).clamp_min(torch.finfo(loc.dtype).tiny)  # p, q of each row at its means
    matters = p.log_prob(loc.T).T.exp() * w / rest > MATTERS
    logits = q.mixture_distribution.logits
    return _kl_posterior_panels(p, loc, scale, matters,
                                lambda x, rows: NormalMixture(logits[rows], q.loc[rows], q.scale[rows]).log_prob(x))


@register_kl(InverseSinePosterior, Normal)
def _kl_posterior_normal(p: InverseSinePosterior, q: Normal) -> Tensor:
    q = Normal(q.loc.to(p.y.dtype), q.scale.to(p.y.dtype))
    loc, scale = q.loc.reshape(-1, 1), q.scale.reshape(-1, 1)
    return _kl_posterior_panels(p, loc, scale, torch.ones_like(loc, dtype=torch.bool),
                                lambda x, rows: Normal(q.loc[rows], q.scale[rows]).log_prob(x))


@register_kl(InverseSinePosterior, Distribution)
def _kl_posterior(p: InverseSinePosterior, q: Distribution) -> Tensor:
    """KL(p || q) for any prediction on the posterior's own fine grid (its widths are not known here)."""
    log_q = q.log_prob(p.grid_x.unsqueeze(-1).expand(-1, p.y.shape[0])).T  # [N, G]
    return (p.grid_w * (p.log_lik(p.grid_x.unsqueeze(0)) - p.log_norm.unsqueeze(-1) - log_q)).sum(-1)


@ops.quadrature.register(InverseSinePosterior)
def _posterior_quadrature(d: InverseSinePosterior, nodes: int = ops.QUADRATURE_NODES) -> tuple[Tensor, Tensor]:
    return d.grid_x.unsqueeze(-1).expand(-1, d.y.shape[0]), d.grid_w.T
