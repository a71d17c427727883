"""Operations on predictive distributions, dispatched on the distribution's type, with generic fallbacks.

Each operation (``cdf``, ``icdf``, ``crps``, ``log_interval_mass``, ``binned_log_prob``, ``quadrature``, and
``rescale`` of densbench.distributions.spread) keeps a
registry from distribution types to closed forms, filled the way ``torch.distributions.register_kl``
is: next to the type, by the family module that produces it (``@ops.crps.register(...)``). Types
can be named by their dotted path ("torch.distributions.Laplace") so that family modules register
without importing torch; names are resolved on first use. Dispatch follows the class hierarchy.

Where no closed form is registered, a generic method takes over, so a missing formula degrades a
metric's cost or accuracy instead of failing the run: quantiles by a safeguarded Newton-bisection
solver on the CDF, CRPS by the quantile integral, interval masses from CDF differences (a log-density
rule far in a tail), KL by
quadrature of the truth, and for discrete distributions sums of the pmf. Every such use is recorded
(``recording_fallbacks``) so result.json can say which metrics used one.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from densbench.distributions.roots import solve_quantiles
from densbench.distributions.dispatch import Operation, Unavailable, note
from densbench.lazy import D, torch

if TYPE_CHECKING:
    from torch import Tensor
    from torch.distributions import Distribution

INV_SQRT_PI = 1.0 / math.sqrt(math.pi)
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)  # the one home of the Gaussian normalising constant
SQRT_2PI = math.sqrt(2 * math.pi)  # the same constant outside the log, where a density is needed directly


# ------------------------------------------------------------------------------------------------
# Support and tails
# ------------------------------------------------------------------------------------------------


def is_discrete(dist: Distribution) -> bool:
    """Whether the distribution lives on integers (counts or classes)."""
    return bool(getattr(dist.support, "is_discrete", False))


TAIL = 1e-12  # probability left beyond the count sums stop at
MAX_COUNT = 10**7


def tail_bound(dist: Distribution) -> int:
    """A count above which every distribution of the batch leaves less than TAIL: the one rule for
    truncating sums over counts (pmf sums, quadrature, the discrete CRPS).

    Start at mean + 12 sd + 12, which suffices for Poisson-like tails; where a CDF is at hand (a
    heavy negative binomial decays only geometrically, with ratio near 1), double until the tail left
    is below TAIL.
    """
    upper = getattr(dist.support, "upper_bound", None)
    if upper is not None:  # a bounded support (classes): its last value
        return int(torch.as_tensor(upper).max())
    if dist.support is D.constraints.boolean:
        return 1
    mean, var = dist.mean, dist.variance
    k = int(torch.ceil((mean + 12 * var.sqrt()).max() + 12).item())
    if cdf.closed_form(type(dist)) is None:
        return k
    while k < MAX_COUNT and float((1 - cdf(dist, torch.full_like(mean, float(k)))).max()) > TAIL:
        k *= 2
    return min(k, MAX_COUNT)


def count_grid(dist: Distribution, upto: int | None = None) -> Tensor:
    """Counts 0..K as a [K+1, *batch] tensor, K from tail_bound (or `upto` if larger)."""
    top = max(tail_bound(dist), upto or 0)
    ks = torch.arange(top + 1, dtype=dist.mean.dtype, device=dist.mean.device)
    return ks.view(-1, *([1] * len(dist.batch_shape))).expand(-1, *dist.batch_shape)


def pmf(dist: Distribution, grid: Tensor) -> Tensor:
    """P(Y = k) on a grid of counts, 0 outside the support (log_prob is not checked there without validation)."""
    p = dist.log_prob(grid).exp()
    return torch.where(dist.support.check(grid), p, torch.zeros_like(p))


# ------------------------------------------------------------------------------------------------
# CDF
# ------------------------------------------------------------------------------------------------


def _cdf_generic(dist: Distribution, y: Tensor) -> Tensor:
    try:
        return dist.cdf(y)
    except NotImplementedError:
        pass
    if not is_discrete(dist):
        raise Unavailable(f"no cdf for {type(dist).__name__}")
    note("cdf", "pmf sum", dist)
    k = torch.floor(y)
    grid = count_grid(dist, int(k.max().item()) if k.numel() else 0)
    cum = torch.cumsum(pmf(dist, grid), 0)
    idx = k.clamp(0, grid.shape[0] - 1).long().expand(dist.batch_shape).unsqueeze(0)
    out = cum.gather(0, idx).squeeze(0).clamp(0, 1)
    return torch.where(k < 0, torch.zeros_like(out), out)


cdf = Operation("cdf", _cdf_generic)


# ------------------------------------------------------------------------------------------------
# Quantiles: the distribution's own icdf, else bracket + safeguarded Newton on the CDF
# ------------------------------------------------------------------------------------------------


def shared_levels(p: Tensor) -> Tensor | None:
    """The levels [L, 1, ...] of p [L, *batch] when every entry is asked the same level per row of the first
    axis (as the metrics ask: levels x entries), else None: per-level work can then be done once per level."""
    if p.dim() < 2:
        return None
    head = p[(slice(None),) + (slice(0, 1),) * (p.dim() - 1)]
    return head if bool((p == head).all()) else None


def _expand_bracket(dist: Distribution, p: Tensor) -> tuple[Tensor, Tensor]:
    """[lo, hi] around every quantile: from mean +- sd (or 0 +- 1), widened until the CDF brackets p."""
    try:
        centre, width = dist.mean.expand(p.shape), dist.variance.sqrt().expand(p.shape)
        width = torch.where(torch.isfinite(width) & (width > 0), width, torch.ones_like(width))
        centre = torch.where(torch.isfinite(centre), centre, torch.zeros_like(centre))
    except NotImplementedError:
        centre, width = torch.zeros_like(p), torch.ones_like(p)
    lo, hi = centre - width, centre + width
    for _ in range(200):
        low_bad, high_bad = cdf(dist, lo) > p, cdf(dist, hi) < p
        if not bool((low_bad | high_bad).any()):
            break
        lo = torch.where(low_bad, lo - 2 * (hi - lo), lo)
        hi = torch.where(high_bad, hi + 2 * (hi - lo), hi)
    return lo, hi


def _icdf_generic(dist: Distribution, p: Tensor) -> Tensor:
    try:
        return dist.icdf(p)
    except NotImplementedError:
        pass
    if is_discrete(dist):
        note("icdf", "pmf search", dist)
        grid = count_grid(dist)
        cum = torch.cumsum(pmf(dist, grid), 0)  # [K, *batch]
        return (cum.unsqueeze(0) < p.unsqueeze(1)).sum(1).to(cum.dtype).clamp(max=grid.shape[0] - 1)
    note("icdf", "Newton-bisection on the cdf", dist)
    p = p.expand(*p.shape[:1], *dist.batch_shape) if p.dim() else p.expand(dist.batch_shape)
    lo, hi = _expand_bracket(dist, p)
    return solve_pointwise(dist, p, lo, hi)


def solve_pointwise(dist: Distribution, p: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Quantiles of a [*batch] distribution at levels p [L, *batch], from brackets of the same shape."""
    # a generic distribution is evaluated on the whole grid, converged entries held at a valid point

    def Ff(x: Tensor, active: Tensor) -> tuple[Tensor, Tensor]:
        full = lo.reshape(-1).clone()
        full[active] = x
        full = full.reshape(p.shape)
        return cdf(dist, full).reshape(-1)[active], dist.log_prob(full).exp().reshape(-1)[active]

    return solve_quantiles(Ff, p, lo, hi)


icdf = Operation("icdf", _icdf_generic)


def quantile(dist: Distribution, levels: Tensor) -> Tensor:
    """Quantiles at levels [L] for a batch: [L, *batch]; discrete: the smallest k with F(k) >= p."""
    levels = torch.as_tensor(levels, dtype=dist.mean.dtype, device=dist.mean.device)
    p = levels.reshape(-1, *([1] * len(dist.batch_shape))).expand(-1, *dist.batch_shape)
    return icdf(dist, p)


def differentiable_quantile(dist: Distribution, levels: Tensor) -> Tensor:
    """Quantiles at levels [L]: [L, *batch], differentiable in the distribution's parameters by the implicit
    function theorem, dq/dtheta = -(dF/dtheta)(q) / f(q); for any continuous distribution with a
    differentiable CDF, whether or not its own icdf has a gradient (the value takes one Newton step)."""
    with torch.no_grad():
        q = quantile(dist, levels)
        density = torch.exp(dist.log_prob(q)).clamp_min(torch.finfo(q.dtype).tiny)
    p = torch.as_tensor(levels, dtype=q.dtype, device=q.device).reshape(-1, *([1] * (q.dim() - 1)))
    return q - (cdf(dist, q) - p) / density


# ------------------------------------------------------------------------------------------------
# PIT and continuous predictions of counts (the pmf of unit bins)
# ------------------------------------------------------------------------------------------------


def _binned_generic(dist: Distribution, y: Tensor) -> Tensor:
    note("binned_log_prob", "cdf differences", dist)
    y = y.double()
    # everything below 1/2 goes to 0: that bin's mass is F(1/2), which has no upper tail to lose digits in
    zero = torch.log(cdf(dist, torch.full_like(y, 0.5)).double())
    return torch.where(y <= 0, zero, log_interval_mass(dist, y - 0.5, y + 0.5))


binned_log_prob = Operation("binned_log_prob", _binned_generic)
binned_log_prob.__doc__ = """log P(y - 1/2 < Y <= y + 1/2) at integer counts y, all mass below 1/2 going to y = 0.

This makes a continuous prediction a proper pmf on 0, 1, 2, ..., so its NLL on count data compares
with a count distribution's (a density's NLL does not: it can fall below any pmf's)."""


def binned_cdf(dist: Distribution, k: Tensor) -> Tensor:
    """CDF of the binned pmf of binned_log_prob at integers k: P(Y <= k + 1/2), 0 below 0."""
    k = torch.floor(k)
    out = cdf(dist, k + 0.5)
    return torch.where(k < 0, torch.zeros_like(out), out)


def target_log_prob(dist: Distribution, y: Tensor, task: str) -> Tensor:
    """Log-likelihood of targets: the binned pmf for continuous predictions of counts, else log_prob."""
    if task == "count" and not is_discrete(dist):
        return binned_log_prob(dist, y)
    return dist.log_prob(y)


def interval_nll(dist: Distribution, y: Tensor, h: float | Tensor) -> Tensor:
    """-log[(F(hi) - F(lo)) / (hi - lo)] with (lo, hi] = y -+ h/2 as rounded: the NLL per unit width of the interval
    of width h around y, which a target recorded to resolution h really tells (>= log h, where a density's NLL is
    unbounded below); the mass in log space (log_interval_mass), so a target far in a tail scores its true, large NLL."""
    y = y.double()
    # h: one width, or one per entry broadcasting against y (a stack's models, each its own job's)
    if isinstance(h, (int, float)) and not h > 0:
        raise ValueError(f"the resolution h must be a positive width, got {h}")
    h = torch.as_tensor(h, dtype=torch.float64, device=y.device)
    lo, hi = y - h / 2, y + h / 2
    # per the width of the ends as rounded: their mass over h would be off by (hi - lo - h) / h, up to ulp(y) / h
    # (4e-3 for a bin 1e-12 wide at 30), where mass over width only moves with the density across an ulp
    width = torch.where(hi > lo, hi - lo, h)  # h below ulp(y): both ends round to y, and the NLL is +inf
    return torch.log(width) - log_interval_mass(dist, lo, hi)


def pit(dist: Distribution, y: Tensor, u: Tensor | None = None, counts: bool = False) -> Tensor:
    """Probability integral transform F(y); randomised F(y-1) + u (F(y) - F(y-1)) for discrete targets.

    ``counts=True`` treats a continuous prediction of count targets as its binned pmf.
    """
    if not is_discrete(dist) and not counts:
        return cdf(dist, y)
    if u is None:
        raise ValueError("discrete targets need uniform draws u for the randomised PIT")
    F = cdf if is_discrete(dist) else binned_cdf
    lower = F(dist, y - 1)
    return lower + u * (F(dist, y) - lower)


# ------------------------------------------------------------------------------------------------
# CRPS
# ------------------------------------------------------------------------------------------------

CRPS_LEVELS = 1000  # midpoint rule of the quantile integral: error O(1/L^2) for smooth quantile functions


def midpoint_levels(n: int, dtype: Any, device: Any) -> Tensor:
    """The n probability levels (i + 1/2) / n: the midpoint rule on (0, 1)."""
    return (torch.arange(n, dtype=dtype, device=device) + 0.5) / n


def crps_from_quantiles(q: Tensor, y: Tensor) -> Tensor:
    """CRPS(F, y) = 2 int_0^1 (1{y <= q(t)} - t)(q(t) - y) dt from quantiles q [L, *batch] at L midpoint levels."""
    t = midpoint_levels(q.shape[0], q.dtype, q.device).view(-1, *([1] * (q.dim() - 1)))
    return 2 * (((y <= q).to(q.dtype) - t) * (q - y)).mean(0)


def _crps_generic(dist: Distribution, y: Tensor) -> Tensor:
    if is_discrete(dist):
        note("crps", "ranked probability score by pmf sums", dist)
        grid = count_grid(dist, int(y.max().item()) if y.numel() else 0)
        F = torch.cumsum(pmf(dist, grid), 0)
        return ((F - (y.unsqueeze(0) <= grid).to(F.dtype)) ** 2).sum(0)
    note("crps", "quantile integral", dist)
    return crps_from_quantiles(quantile(dist, midpoint_levels(CRPS_LEVELS, dist.mean.dtype, dist.mean.device)), y)


crps = Operation("crps", _crps_generic)
crps.__doc__ = "Per-sample CRPS (continuous families) or ranked probability score (counts and classes)."


# ------------------------------------------------------------------------------------------------
# Quadrature and KL(truth || prediction)
# ------------------------------------------------------------------------------------------------

QUADRATURE_NODES = 64


def _quadrature_generic(dist: Distribution, nodes: int = QUADRATURE_NODES) -> tuple[Tensor, Tensor]:
    if is_discrete(dist):
        grid = count_grid(dist)
        return grid, pmf(dist, grid)
    note("quadrature", "midpoints of quantiles", dist)
    ys = quantile(dist, midpoint_levels(4 * nodes, dist.mean.dtype, dist.mean.device))
    return ys, torch.full_like(ys, 1.0 / ys.shape[0])


quadrature = Operation("quadrature", _quadrature_generic)
quadrature.__doc__ = "Nodes [Q, *batch] and weights [Q, *batch] with sum_q w f(y_q) ~ E[f(Y)]."


def kl_to_truth(truth: Distribution, pred: Distribution) -> Tensor:
    """Per-sample KL(truth || pred): torch's registered closed form where one exists, else quadrature over the truth."""
    if isinstance(truth, D.Bernoulli) and isinstance(pred, D.Categorical):
        truth = D.Categorical(probs=torch.stack([1 - truth.probs, truth.probs], -1))
    try:
        return D.kl_divergence(truth, pred)
    except NotImplementedError:
        pass
    ys, w = quadrature(truth)
    # a continuous prediction of counts is compared with the truth through its binned pmf
    log_q = binned_log_prob(pred, ys) if is_discrete(truth) and not is_discrete(pred) else pred.log_prob(ys)
    log_ratio = truth.log_prob(ys) - log_q
    # weights that are exactly zero (outside a truth's support) must not turn 0 * inf into NaN
    return torch.where(w > 0, w * log_ratio, torch.zeros_like(w)).sum(0)


# the spread operations (recalibration's) live in their own module; families register on them as ops.rescale
from densbench.distributions.spread import location_scale, rescale, spread_factor, standard_form  # noqa: E402, F401
# and the mass of an interval, whose generic method (two CDF values, or a rule on the log-density) is long
from densbench.distributions.interval_mass import log_interval_mass  # noqa: E402, F401

# ------------------------------------------------------------------------------------------------
# Shared closed-form pieces
# ------------------------------------------------------------------------------------------------


def std_normal_cdf(z: Tensor) -> Tensor:
    """Phi(z), accurate in both tails."""
    return 0.5 * torch.erfc(-z / math.sqrt(2.0))


def std_normal_pdf(z: Tensor) -> Tensor:
    """phi(z)."""
    return torch.exp(-0.5 * z * z - HALF_LOG_2PI)
