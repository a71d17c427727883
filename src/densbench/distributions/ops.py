"""Operations on predictive distributions, dispatched on the distribution's type, with generic fallbacks.

Each operation (``cdf``, ``icdf``, ``crps``, ``binned_log_prob``, ``quadrature``, ``rescale``) keeps a
registry from distribution types to closed forms, filled the way ``torch.distributions.register_kl``
is: next to the type, by the family module that produces it (``@ops.crps.register(...)``). Types
can be named by their dotted path ("torch.distributions.Laplace") so that family modules register
without importing torch; names are resolved on first use. Dispatch follows the class hierarchy.

Where no closed form is registered, a generic method takes over, so a missing formula degrades a
metric's cost or accuracy instead of failing the run: quantiles by a safeguarded Newton-bisection
solver on the CDF, CRPS by the quantile integral, binned probabilities from CDF differences, KL by
quadrature of the truth, and for discrete distributions sums of the pmf. Every such use is recorded
(``recording_fallbacks``) so result.json can say which metrics used one.
"""

from __future__ import annotations

import importlib
import math
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

from densbench.lazy import D, torch

if TYPE_CHECKING:
    from torch import Tensor
    from torch.distributions import Distribution

INV_SQRT_PI = 1.0 / math.sqrt(math.pi)
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)  # the one home of the Gaussian normalising constant
SQRT_2PI = math.sqrt(2 * math.pi)  # the same constant outside the log, where a density is needed directly


class Unavailable(NotImplementedError):
    """Neither a closed form nor a generic method exists for this distribution."""


_FALLBACKS: list[dict[str, str]] = []


@contextmanager
def recording_fallbacks() -> Iterator[dict[str, str]]:
    """Collect {operation: "method (Type)"} for every generic method used inside the block."""
    used: dict[str, str] = {}
    _FALLBACKS.append(used)
    try:
        yield used
    finally:
        _FALLBACKS.remove(used)


def _resolve(name: str) -> type:
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)


class Operation:
    """One operation: a registry from types to closed forms, and an optional generic method."""

    def __init__(self, name: str, generic: Callable | None = None, generic_name: str = "") -> None:
        self.name, self.generic, self.generic_name = name, generic, generic_name
        self._impls: dict[type, Callable] = {}
        self._pending: list[tuple[str, Callable]] = []

    def register(self, *types: type | str) -> Callable[[Callable], Callable]:
        """Decorator: `fn` is the closed form of this operation for these types (or dotted type names)."""

        def deco(fn: Callable) -> Callable:
            for t in types:
                if isinstance(t, str):
                    self._pending.append((t, fn))
                else:
                    self._impls[t] = fn
            return fn

        return deco

    def closed_form(self, cls: type) -> Callable | None:
        """The registered implementation for `cls` (or its nearest base class), if any."""
        _load_registrations()
        if self._pending:
            pending, self._pending = self._pending, []
            for name, fn in pending:
                self._impls[_resolve(name)] = fn
        for base in cls.__mro__:
            if base in self._impls:
                return self._impls[base]
        return None

    def __call__(self, dist: Any, *args: Any, **kwargs: Any) -> Any:
        fn = self.closed_form(type(dist))
        if fn is not None:
            return fn(dist, *args, **kwargs)
        if self.generic is None:
            raise Unavailable(f"no {self.name} for {type(dist).__name__}")
        return self.generic(dist, *args, **kwargs)


def _note(op: str, how: str, dist: Any) -> None:
    for used in _FALLBACKS:
        used.setdefault(op, f"{how} ({type(dist).__name__})")


_LOADED = False


# the modules that register closed forms (every family module, through its package's registry, and the
# distribution classes densbench defines): discovered by name on the first dispatch, as plugins are, so
# that this module, which they all import, imports none of them
REGISTRARS = ("densbench.distributions.classes", "densbench.distributions.mixtures", "densbench.distributions.families")


def _load_registrations() -> None:
    """Import the registering modules once (every family module through the families registry)."""
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for name in REGISTRARS:
            module = importlib.import_module(name)
            getattr(module, "load_all", lambda: None)()


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
    _note("cdf", "pmf sum", dist)
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


def solve_quantiles(Ff: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], p: Tensor, lo: Tensor, hi: Tensor,
                    x0: Tensor | None = None, max_iter: int = 200, slope: Tensor | None = None,
                    rtol: float | None = None) -> Tensor:
    """x with F(x) = p for every entry, given brackets F(lo) <= p <= F(hi) (and optionally first guesses x0).

    ``Ff(x, idx)`` evaluates the CDF and the density at points x for the entries with flat indices
    idx. Newton steps x - (F(x) - p) / f(x) inside the bracket, which shrinks around the root every
    step; a step that would leave it, is not finite, or is not at least half the previous step
    (Newton bouncing between the modes of a mixture) is replaced by bisection (rtsafe of Numerical
    Recipes), so every entry converges at least as fast as bisection and quadratically near its root.
    Converged entries leave the active set, and the loop ends when none is left: accuracy is relative,
    1e-10 in float64 (or ``rtol``) and two ulps in float32 (a component narrower than that must be resolved too).

    ``slope`` (an estimate of the density's derivative near each root, e.g. a secant over the cell
    that brackets it) lets an entry stop without evaluating the point a Newton step lands on: that
    point lies within about dx^2 |f'| / (2 f) of the root, and where ten times this bound is a
    thousandth of the tolerance (in x and in F), a further evaluation could only confirm it. Later
    steps update the slope by the secant of the last two densities.
    """
    x = 0.5 * (lo + hi) if x0 is None else x0
    tol = (rtol or 1e-10) if x.dtype == torch.float64 else 2 * torch.finfo(x.dtype).eps
    # float32 resolves a CDF only to ~1e-7: where it equals p to a few ulps no step can do better,
    # and in the tails (small density) the step criterion would leave such entries bisecting
    resolved = 0.0 if x.dtype == torch.float64 else 4 * torch.finfo(x.dtype).eps
    shape = x.shape
    x, lo, hi, p = (t.expand(shape).reshape(-1).clone() for t in (x, lo, hi, p))
    active = torch.arange(x.numel(), device=x.device)
    xa, loa, hia, pa, last = x, lo, hi, p, (hi - lo).abs()
    sa = None if slope is None else slope.expand(shape).reshape(-1).clone()
    prev: tuple[Tensor, Tensor] | None = None
    for _ in range(max_iter):
        F, f = Ff(xa, active)
        gap = F - pa
        below = gap < 0
        loa, hia = torch.where(below, xa, loa), torch.where(below, hia, xa)
        dx = gap / f
        newton = xa - dx
        use = (newton >= loa) & (newton <= hia) & (2 * dx.abs() <= last)  # False for NaN or infinite steps too
        new = torch.where(use, newton, 0.5 * (loa + hia))
        new = torch.where(gap == 0, xa, new)  # an exact root stays where it is
        last = (new - xa).abs()
        scale = 1 + new.abs()
        # in x to tol, and in the CDF to tol too where a narrow component makes the density large
        # (there x alone would leave F off by density x tol x |x|), as far as float resolution allows
        f_ok = gap.abs() <= torch.clamp(4 * torch.finfo(x.dtype).eps * scale * f, min=tol)
        done = (((last <= tol * scale) | (hia - loa <= tol * scale)) & f_ok) | (gap.abs() <= resolved)
        if sa is not None:
            if prev is not None:
                secant = (f - prev[1]) / (xa - prev[0])
                sa = torch.where(torch.isfinite(secant), secant, sa)
            landed = 10 * 0.5 * dx * dx * sa.abs() / f
            # far inside the tolerance, so an early stop costs no accuracy against a confirmed one
            done |= use & (dx.abs() <= 1e-4 * scale) & (landed <= 1e-3 * tol * scale) & (landed * f <= 1e-3 * tol)
            prev = (xa, f)
        x[active] = new
        keep = (~done).nonzero().squeeze(1)
        if not len(keep):
            break
        active, xa, loa, hia, pa, last = (t.index_select(0, keep) for t in (active, new, loa, hia, pa, last))
        if sa is not None:
            sa, prev = sa.index_select(0, keep), (prev[0].index_select(0, keep), prev[1].index_select(0, keep))
    return x.reshape(shape)


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
        _note("icdf", "pmf search", dist)
        grid = count_grid(dist)
        cum = torch.cumsum(pmf(dist, grid), 0)  # [K, *batch]
        return (cum.unsqueeze(0) < p.unsqueeze(1)).sum(1).to(cum.dtype).clamp(max=grid.shape[0] - 1)
    _note("icdf", "Newton-bisection on the cdf", dist)
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
    _note("binned_log_prob", "cdf differences", dist)
    upper = cdf(dist, y + 0.5).double()
    lower = torch.where(y <= 0, torch.zeros_like(upper), cdf(dist, y - 0.5).double())
    return torch.log((upper - lower).clamp_min(0))


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
        _note("crps", "ranked probability score by pmf sums", dist)
        grid = count_grid(dist, int(y.max().item()) if y.numel() else 0)
        F = torch.cumsum(pmf(dist, grid), 0)
        return ((F - (y.unsqueeze(0) <= grid).to(F.dtype)) ** 2).sum(0)
    _note("crps", "quantile integral", dist)
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
    _note("quadrature", "midpoints of quantiles", dist)
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


# ------------------------------------------------------------------------------------------------
# Spread: location-scale parameters, and the spread multiplied by a factor (post-hoc recalibration)
# ------------------------------------------------------------------------------------------------


def location_scale(dist: Distribution) -> tuple[Tensor, Tensor] | None:
    """(loc, scale) of a location-scale distribution on the real line (Normal, Laplace, Student-t), else None.

    Read from the parametrisation: a real-support distribution whose arguments include loc and scale
    (a mixture's batch-shaped loc would be its components', so mixtures are excluded).
    """
    args = getattr(dist, "arg_constraints", {})
    if isinstance(dist, D.MixtureSameFamily) or "loc" not in args or "scale" not in args:
        return None
    if dist.support is not D.constraints.real:
        return None
    return dist.loc, dist.scale


def _rescale_generic(dist: Distribution, factor: float) -> Distribution:
    if location_scale(dist) is None:
        raise Unavailable(f"no rescale for {type(dist).__name__}: it is neither location-scale nor a registered mixture")
    params = {name: getattr(dist, name) for name in dist.arg_constraints}
    params["scale"] = params["scale"] * factor
    return type(dist)(**params, validate_args=False)


rescale = Operation("rescale", _rescale_generic)
rescale.__doc__ = """The same distribution with its spread multiplied by `factor`: sigma -> factor * sigma for
location-scale families, every component's for mixtures (weights and locations unchanged)."""


def _nll(dist: Distribution, y: Tensor, factor: float) -> float:
    return float(-rescale(dist, factor).log_prob(y).double().mean())


def _search_factor(dist: Distribution, y: Tensor) -> float:
    """The spread factor with the lowest NLL: a grid over log s in [-5, 5], then golden sections around its best."""
    grid = [-5 + 0.1 * i for i in range(101)]
    values = [_nll(dist, y, math.exp(t)) for t in grid]
    best = min(range(len(grid)), key=lambda i: (not math.isfinite(values[i]), values[i]))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = _nll(dist, y, math.exp(a)), _nll(dist, y, math.exp(b))
    for _ in range(40):  # the bracket shrinks to 0.2 * 0.618^40, far below float resolution
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = _nll(dist, y, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = _nll(dist, y, math.exp(b))
    return math.exp((lo + hi) / 2)


spread_factor = Operation("spread_factor", _search_factor)
spread_factor.__doc__ = "The factor s on the predictive spread that minimises the mean NLL of targets y."


# ------------------------------------------------------------------------------------------------
# Shared closed-form pieces
# ------------------------------------------------------------------------------------------------


def std_normal_cdf(z: Tensor) -> Tensor:
    """Phi(z), accurate in both tails."""
    return 0.5 * torch.erfc(-z / math.sqrt(2.0))


def std_normal_pdf(z: Tensor) -> Tensor:
    """phi(z)."""
    return torch.exp(-0.5 * z * z - HALF_LOG_2PI)
