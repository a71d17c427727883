"""The spread of a predictive: its location-scale parameters, and the same predictive with its spread multiplied
by a factor (``rescale``) or by the factor that minimises the NLL of given targets (``spread_factor``): the
operations post-hoc recalibration uses, registered by the families next to their types like every operation
of densbench.distributions.ops (which re-exports them)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from densbench.distributions.dispatch import Operation, Unavailable
from densbench.lazy import D, torch

if TYPE_CHECKING:
    from torch import Tensor
    from torch.distributions import Distribution


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


def standard_form(dist: Distribution) -> tuple[Tensor, Tensor, Distribution] | None:
    """(loc, scale, Z) with Y = loc + scale Z for a location-scale distribution (Z: loc 0, scale 1, its other
    parameters kept, in float64), else None."""
    ls = location_scale(dist)
    if ls is None:
        return None
    loc, scale = ls
    one = torch.ones((), dtype=torch.float64, device=loc.device)
    others = {name: getattr(dist, name) for name in dist.arg_constraints if name not in ("loc", "scale")}
    return loc, scale, type(dist)(loc=0 * one, scale=one, **others, validate_args=False)


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
