"""Histogram ("bar distribution", as TabPFN's head): K bins between fixed edges, half-normal tails beyond them.

A softmax over K + 2 logits gives the mass of the left tail, of the K bins and of the right tail (in
that order, left to right). With edges e_0 < ... < e_K, widths w_k and tail scales s_L = w_1, s_R = w_K:

    f(y) = p_k / w_k                                 in bin k, [e_{k-1}, e_k) (the last one closed)
    f(y) = p_R sqrt(2/pi) / s_R exp(-u^2 / 2)        beyond e_K, u = (y - e_K) / s_R
    f(y) = p_L sqrt(2/pi) / s_L exp(-v^2 / 2)        below e_0,  v = (e_0 - y) / s_L

Each tail's scale is the width of the bin next to it: the edges sit at the training targets' minimum
and maximum, so no training target ever lies in a tail and nothing could learn a tail scale (its
gradient is zero); the outer bin's width is the spread the data show at that end (wide where the
targets thin out, with quantile edges), and rescaling the edges rescales the tails with them.

The CDF is piecewise linear inside and 1 - 2 p_R Phi(-u) (2 p_L Phi(-v)) in the tails; quantiles invert
it piece by piece (ndtri, the accurate erfinv, in the tails). The CRPS, int (F - 1{x >= y})^2 dx, is
closed form piece by piece: with x_k = y clamped to bin k, a bin adds (x_k - e_{k-1})(a^2 + ab + b^2)/3 +
(e_k - x_k)((1-b)^2 + (1-b)(1-c) + (1-c)^2)/3 (F runs linearly a -> b -> c over it), and a tail of mass p,
scale s, with the target t >= 0 tail scales beyond its edge, adds s [t - 4p (phi(0) - phi(t) + t Phi(-t)) +
4p^2 A0], A0 = int_{-inf}^0 Phi^2 = phi(0) - 1/(2 sqrt pi) (from int_{-inf}^h Phi^2 = h Phi^2 + 2 Phi phi -
Phi(h sqrt 2)/sqrt pi and int_{-inf}^h Phi = h Phi + phi).

Edges are data-dependent (``head.edges``: uniform over the training targets' range or at their
quantiles), settled by ``fit_targets`` on the standardised training targets and kept in a buffer, one
row per model: the jobs of a stack (UCI splits) each get their own. Recalibration (``rescale``) widens
the predictive about its median: edges m + a (e - m), tails with them. The NLL's gradient in the
logits is softmax(a) - onehot(piece of y). The distribution class is built on first access (PEP 562
module ``__getattr__``) so that this module imports no torch.
"""

from __future__ import annotations

import copy
import math
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from densbench.distributions import ops
from densbench.distributions.families.base import Family, Raw, register, weighted_total
from densbench.distributions.ops import std_normal_cdf, std_normal_pdf
from densbench.errors import DataError, one_of, positive
from densbench.lazy import torch

if TYPE_CHECKING:
    from torch import Tensor

PREDICTIVE = "densbench.distributions.families.histogram.BarDistribution"
EDGES = ("quantile", "uniform")
LOG_HALF_NORMAL = 0.5 * math.log(2 / math.pi)  # log of the half-normal density's constant sqrt(2/pi)
HALF_NORMAL_MEAN = math.sqrt(2 / math.pi)
PHI0 = 1 / math.sqrt(2 * math.pi)
A0 = PHI0 - 0.5 / math.sqrt(math.pi)  # int_{-inf}^0 Phi(u)^2 du
MIN_WIDTH = 0.1  # of a uniform bin: tied targets must not make a quantile bin empty (an unbounded density)
# what the edges are fitted to before any targets are seen: standard-normal targets, +-3 sd
_STANDARD = np.array([NormalDist().inv_cdf(p) for p in np.linspace(NormalDist().cdf(-3), NormalDist().cdf(3), 2001)])


def fit_edges(z: np.ndarray, bins: int, how: str) -> np.ndarray:
    """K + 1 increasing edges from the training targets z: uniform over their range, or at their quantiles."""
    lo, hi = float(np.min(z)), float(np.max(z))
    if not hi > lo:
        raise DataError(f"head=histogram spreads its bins over the training targets' range, and every target is {lo:g}")
    if how == "uniform":
        return np.linspace(lo, hi, bins + 1)
    widths = np.maximum(np.diff(np.quantile(z, np.linspace(0, 1, bins + 1))), MIN_WIDTH * (hi - lo) / bins)
    return lo + np.concatenate([[0.0], np.cumsum(widths)])


# ---- the pieces: left tail 0, bins 1..K, right tail K + 1 ---------------------------------------


def _pick(t: Tensor, j: Tensor) -> Tensor:
    """t[..., j] per entry: t [*batch, W] against indices j [*sample, *batch]."""
    return t.expand(*j.shape, t.shape[-1]).gather(-1, j.unsqueeze(-1)).squeeze(-1)


def _locate(edges: Tensor, y: Tensor) -> Tensor:
    """The piece each y falls in: 0 below e_0, k for [e_{k-1}, e_k) (the last bin closed), K + 1 beyond e_K."""
    inner = (edges[..., :-1] <= y.unsqueeze(-1)).sum(-1)
    return torch.where(y > edges[..., -1], inner + 1, inner)


def _tail_scales(edges: Tensor) -> tuple[Tensor, Tensor]:
    """(s_L, s_R): the outer bins' widths, [*batch] each."""
    return edges[..., 1] - edges[..., 0], edges[..., -1] - edges[..., -2]


def _log_density(edges: Tensor, j: Tensor, y: Tensor) -> Tensor:
    """log f(y) - log p_j: -log w_j inside bin j, the unit-mass half-normal's log density in a tail."""
    k = edges.shape[-1] - 1
    inside = -torch.log(_pick(edges[..., 1:] - edges[..., :-1], (j - 1).clamp(0, k - 1)))
    s_left, s_right = _tail_scales(edges)
    left = j == 0
    s = torch.where(left, s_left, s_right)
    u = torch.where(left, edges[..., 0] - y, y - edges[..., -1]) / s
    tail = LOG_HALF_NORMAL - torch.log(s) - 0.5 * u * u
    return torch.where(left | (j == k + 1), tail, inside)


def bar_log_prob(logits: Tensor, edges: Tensor, y: Tensor) -> Tensor:
    """log f(y): the log mass of y's piece (log_softmax) plus its log density within the piece."""
    j = _locate(edges, y)
    return _pick(torch.log_softmax(logits, -1), j) + _log_density(edges, j, y)


def bar_cdf(logits: Tensor, edges: Tensor, y: Tensor) -> Tensor:
    """F(y): linear inside each bin, 2 p_L Phi(-v) below e_0, 1 - 2 p_R Phi(-u) beyond e_K."""
    p = torch.softmax(logits, -1)
    cum = torch.cumsum(p, -1)
    k = edges.shape[-1] - 1
    j = _locate(edges, y)
    b = j.clamp(1, k)
    start = _pick(edges, b - 1)
    inside = _pick(cum, b - 1) + _pick(p, b) * (y - start) / (_pick(edges, b) - start)
    s_left, s_right = _tail_scales(edges)
    left = 2 * p[..., 0] * std_normal_cdf((y - edges[..., 0]) / s_left)
    right = 1 - 2 * p[..., -1] * std_normal_cdf((edges[..., -1] - y) / s_right)
    return torch.where(j == 0, left, torch.where(j == k + 1, right, inside))


def bar_icdf(logits: Tensor, edges: Tensor, t: Tensor) -> Tensor:
    """F^-1(t): the piece whose cumulative mass passes t, then linear inside, ndtri in the tails."""
    p = torch.softmax(logits, -1)
    cum = torch.cumsum(p, -1)
    k = edges.shape[-1] - 1
    j = (cum[..., : k + 1] <= t.unsqueeze(-1)).sum(-1)
    b = j.clamp(1, k)
    start = _pick(edges, b - 1)
    share = ((t - _pick(cum, b - 1)) / _pick(p, b).clamp_min(torch.finfo(p.dtype).tiny)).clamp(0, 1)
    inside = start + share * (_pick(edges, b) - start)
    s_left, s_right = _tail_scales(edges)
    # the tail's own share of its mass, kept in (0, 1/2] where the branch is not taken
    left = edges[..., 0] + s_left * torch.special.ndtri((t / (2 * p[..., 0])).clamp(0, 0.5))
    right = edges[..., -1] - s_right * torch.special.ndtri(((1 - t) / (2 * p[..., -1])).clamp(0, 0.5))
    return torch.where(j == 0, left, torch.where(j == k + 1, right, inside))


def _tail_crps(mass: Tensor, s: Tensor, t: Tensor) -> Tensor:
    """A tail's share of the CRPS, t >= 0 the target's distance beyond its edge in tail scales (module docstring)."""
    return s * (t - 4 * mass * (PHI0 - std_normal_pdf(t) + t * std_normal_cdf(-t)) + 4 * mass * mass * A0)


def bar_crps(logits: Tensor, edges: Tensor, y: Tensor) -> Tensor:
    """int (F(x) - 1{x >= y})^2 dx, in closed form piece by piece (module docstring); differentiable in the logits."""
    p = torch.softmax(logits, -1)
    cum = torch.cumsum(p, -1)
    k = edges.shape[-1] - 1
    lo, hi = edges[..., :-1], edges[..., 1:]
    x = torch.minimum(torch.maximum(y.unsqueeze(-1), lo), hi)  # y clamped to each bin
    a, c = cum[..., :k], cum[..., 1 : k + 1]  # F at each bin's start and end
    b = a + p[..., 1 : k + 1] * (x - lo) / (hi - lo)
    below = (x - lo) * (a * a + a * b + b * b)
    ra, rc = 1 - b, 1 - c
    above = (hi - x) * (ra * ra + ra * rc + rc * rc)
    s_left, s_right = _tail_scales(edges)
    left = _tail_crps(p[..., 0], s_left, (edges[..., 0] - y).clamp_min(0) / s_left)
    right = _tail_crps(p[..., -1], s_right, (y - edges[..., -1]).clamp_min(0) / s_right)
    return (below + above).sum(-1) / 3 + left + right


def _piece_moments(edges: Tensor) -> tuple[Tensor, Tensor]:
    """Means and variances of the unit-mass pieces, [*batch, K + 2] each (uniform bins, half-normal tails)."""
    w = edges[..., 1:] - edges[..., :-1]
    s_left, s_right = w[..., :1], w[..., -1:]
    means = torch.cat([edges[..., :1] - HALF_NORMAL_MEAN * s_left, (edges[..., 1:] + edges[..., :-1]) / 2,
                       edges[..., -1:] + HALF_NORMAL_MEAN * s_right], -1)
    tail = 1 - 2 / math.pi  # a half-normal's variance per squared scale
    return means, torch.cat([tail * s_left * s_left, w * w / 12, tail * s_right * s_right], -1)


# ---- the torch Distribution, built on first access -----------------------------------------------


def _build_class() -> type:
    from torch.distributions import Distribution, constraints

    class BarDistribution(Distribution):
        """K bins of uniform density between edges [..., K + 1], half-normal tails; logits [..., K + 2]."""

        arg_constraints: ClassVar[dict] = {}
        support = constraints.real
        has_rsample = False

        def __init__(self, logits: Tensor, edges: Tensor, validate_args: bool | None = False) -> None:
            self.logits = logits
            self.edges = edges.expand(*logits.shape[:-1], edges.shape[-1])
            super().__init__(logits.shape[:-1], validate_args=False)

        @property
        def probs(self) -> Tensor:
            """Masses of the left tail, the K bins and the right tail."""
            return torch.softmax(self.logits, -1)

        @property
        def mean(self) -> Tensor:
            means, _ = _piece_moments(self.edges)
            return (self.probs * means).sum(-1)

        @property
        def variance(self) -> Tensor:
            means, variances = _piece_moments(self.edges)
            p = self.probs
            centre = (p * means).sum(-1, keepdim=True)
            return (p * (variances + (means - centre) ** 2)).sum(-1)

        def log_prob(self, value: Tensor) -> Tensor:
            return bar_log_prob(self.logits, self.edges, value)

        def cdf(self, value: Tensor) -> Tensor:
            return bar_cdf(self.logits, self.edges, value)

        def icdf(self, value: Tensor) -> Tensor:
            return bar_icdf(self.logits, self.edges, value)

        def sample(self, sample_shape: Any = ()) -> Tensor:
            with torch.no_grad():
                u = torch.rand(self._extended_shape(torch.Size(sample_shape)), dtype=self.logits.dtype, device=self.logits.device)
                return self.icdf(u)

    BarDistribution.__module__, BarDistribution.__qualname__ = __name__, "BarDistribution"
    return BarDistribution


def __getattr__(name: str) -> Any:
    # PEP 562: the class (and with it torch) exists once its dotted name is first resolved
    if name != "BarDistribution":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cls = globals()["BarDistribution"] = _build_class()
    return cls


def _bar_class() -> type:
    return globals().get("BarDistribution") or __getattr__("BarDistribution")


# ---- the family ----------------------------------------------------------------------------------


@register
class Histogram(Family):
    """K bins over the training targets' range (uniform or at their quantiles) and two half-normal tails."""

    name = "histogram"
    tasks = ("regression",)
    distribution_type = PREDICTIVE

    def __init__(self, bins: int = 64, edges: str = "quantile") -> None:
        positive("head.bins", bins, integer=True)
        one_of("head.edges", edges, EDGES)
        self.bins, self.how = int(bins), edges
        self.edge_values = fit_edges(_STANDARD, self.bins, edges)  # until fit_targets sees the data
        self.n_targets: int | None = None

    def fit_targets(self, z: Any) -> Family:
        """The family with its edges fitted to these (standardised) training targets."""
        fitted = copy.copy(self)
        z = np.asarray(z, dtype=np.float64).reshape(-1)
        fitted.edge_values, fitted.n_targets = fit_edges(z, self.bins, self.how), len(z)
        return fitted

    def fields(self) -> dict[str, int]:
        return {"logits": self.bins + 2}

    def buffers(self) -> dict[str, Tensor]:
        # one row of edges per model ([N, 1, K + 1] against logits [N, B, K + 2]), set per job by the assembly
        return {"edges": torch.tensor(self.edge_values, dtype=torch.get_default_dtype()).view(1, 1, -1)}

    def init_bias(self, bias: Raw) -> None:
        # exchangeable targets: a new one exceeds the n seen with probability 1/(n + 1), about K/(n + 1)
        # times a bin's share, so each tail starts there instead of at a bin's mass
        if self.n_targets is not None:
            tail = math.log(self.bins / (self.n_targets + 1))
            bias["logits"][..., :1].fill_(tail)
            bias["logits"][..., -1:].fill_(tail)

    def distribution(self, raw: Raw, loc: Any = 0.0, scale: Any = 1.0):
        """Predictive histogram with batch shape [..., B] in original units (edges loc + scale e)."""
        logits = raw["logits"]
        if not isinstance(loc, (int, float)):  # per-model standardisation [..., 1] meets edges [..., 1, K + 1]
            loc, scale = loc.unsqueeze(-1), scale.unsqueeze(-1)
        return _bar_class()(logits, loc + scale * raw["edges"].to(logits.dtype))

    def nll_terms(self, raw: Raw, y: Tensor) -> Tensor:
        """Per-sample -log f(y), [..., B, 1]."""
        return -bar_log_prob(raw["logits"], raw["edges"].to(y.dtype), y[..., 0]).unsqueeze(-1)

    def nll_kernel(self, raw: Raw, y: Tensor, weight: Any):
        """Analytic NLL: the weighted sum and its gradient softmax(a) - onehot(piece of y), times the weight."""
        logits, edges, y0 = raw["logits"].detach(), raw["edges"].to(y.dtype), y[..., 0]
        j = _locate(edges, y0)
        log_p = torch.log_softmax(logits, -1)
        terms = -(_pick(log_p, j) + _log_density(edges, j, y0)).unsqueeze(-1)
        grad = log_p.exp_().scatter_add_(-1, j.unsqueeze(-1), torch.full_like(terms, -1.0))
        return weighted_total(terms, weight), {"logits": grad.mul_(weight)}

    def reference(self, dist: Any) -> Any:
        return _Reference(dist.probs.numpy(), dist.edges.numpy())


class _Reference:
    """The same predictive from scipy's uniform and half-normal laws, batch-shaped: an independent check of the formulas."""

    def __init__(self, probs: np.ndarray, edges: np.ndarray) -> None:
        from scipy import stats

        w = np.diff(edges, axis=-1)
        self.p, self.first, self.last = probs, edges[..., :1], edges[..., -1:]
        self.bins = stats.uniform(edges[..., :-1], w)
        self.left, self.right = stats.halfnorm(scale=w[..., :1]), stats.halfnorm(scale=w[..., -1:])

    def logpdf(self, y: np.ndarray) -> np.ndarray:
        from scipy.special import logsumexp

        y = y[..., None]
        parts = [self.left.logpdf(self.first - y), self.bins.logpdf(y), self.right.logpdf(y - self.last)]
        return logsumexp(np.concatenate(parts, -1), -1, b=self.p)

    def cdf(self, y: np.ndarray) -> np.ndarray:
        y = y[..., None]
        parts = [self.left.sf(self.first - y), self.bins.cdf(y), self.right.cdf(y - self.last)]
        return (self.p * np.concatenate(parts, -1)).sum(-1)

    def _moments(self) -> tuple[np.ndarray, np.ndarray]:
        means = np.concatenate([self.first - self.left.mean(), self.bins.mean(), self.last + self.right.mean()], -1)
        return means, np.concatenate([self.left.var(), self.bins.var(), self.right.var()], -1)

    def mean(self) -> np.ndarray:
        return (self.p * self._moments()[0]).sum(-1)

    def var(self) -> np.ndarray:
        means, variances = self._moments()
        centre = (self.p * means).sum(-1, keepdims=True)
        return (self.p * (variances + (means - centre) ** 2)).sum(-1)


# ---- closed forms, registered by name ----------------------------------------------------------


@ops.cdf.register(PREDICTIVE)
def _histogram_cdf(d: Any, y: Tensor) -> Tensor:
    return d.cdf(y)


@ops.icdf.register(PREDICTIVE)
def _histogram_icdf(d: Any, p: Tensor) -> Tensor:
    return d.icdf(p)


@ops.crps.register(PREDICTIVE)
def _histogram_crps(d: Any, y: Tensor) -> Tensor:
    return bar_crps(d.logits, d.edges, y)


@ops.rescale.register(PREDICTIVE)
def _histogram_rescale(d: Any, factor: float) -> Any:
    """Edges (and with them the tails) spread by `factor` about the median; the masses unchanged."""
    m = d.icdf(torch.full_like(d.logits[..., 0], 0.5)).unsqueeze(-1)
    return type(d)(d.logits, m + factor * (d.edges - m))
