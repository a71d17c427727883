"""log P(lo < Y <= hi) of a continuous predictive: the operation, and its generic method for families without a
closed form (two CDF values where they resolve the mass, else the log-density integrated in log space).
Re-exported by densbench.distributions.ops, where families register their closed forms on it."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from densbench.distributions.dispatch import Operation, note
from densbench.lazy import D, torch

if TYPE_CHECKING:
    from torch import Tensor
    from torch.distributions import Distribution


RELIABLE_MASS = 1e-10  # below this an interval's mass from two CDF values near 1 has lost its digits to rounding
# Each CDF value carries a rounding of about 1e-16 of itself, so their difference keeps a relative error of about
# 1e-16 F(hi) / mass: a bin narrow against the spread (df 5, y = 0.3, h = 1e-9: 2e-7 nats) loses most of its digits.
# Below this fraction of F(hi) (an error above ~2e-12) the mass is integrated instead.
RESOLVED_FRACTION = 1e-4
TAIL_NODES = 12  # Gauss-Legendre nodes per panel of the log-space rule for an interval far in a tail
TAIL_PANELS = 8
TAIL_EFOLDS = 40.0  # how far below the density's top the rule follows it (e^-40 of the mass: nothing left)


def _interval_generic(dist: Distribution, lo: Tensor, hi: Tensor) -> Tensor:
    """log P(lo < Y <= hi) from two CDF values; where they cannot resolve it (far in a tail, or a bin narrow against
    the spread), the log-density integrated over the interval by a Gauss-Legendre rule in log space."""
    from densbench.distributions.ops import cdf

    upper = cdf(dist, hi).double()
    mass = upper - cdf(dist, lo).double()
    resolved = mass > RELIABLE_MASS
    # with float32 parameters the log-density's constants are float32 (5e-3 nats at df 1e4): two CDF values it is
    if _float64_throughout(dist):
        resolved &= (mass > RESOLVED_FRACTION * upper) | ~torch.isfinite(hi - lo)  # the rule needs finite ends
    if bool(resolved.all()):
        return torch.log(mass)
    note("log_interval_mass", "log-density quadrature in a tail or a narrow bin", dist)
    return torch.where(resolved, torch.log(mass.clamp_min(RELIABLE_MASS)), _log_quadrature(dist, lo, hi))


def _float64_throughout(dist: Distribution) -> bool:
    """Whether every parameter of the distribution, and of the distributions it is built from, is float64."""
    params = [getattr(dist, name, None) for name in getattr(dist, "arg_constraints", {})]
    parts = [v for v in vars(dist).values() if isinstance(v, D.Distribution)]
    return (all(p.dtype == torch.float64 for p in params if isinstance(p, torch.Tensor))
            and all(_float64_throughout(part) for part in parts))


def _log_quadrature(dist: Distribution, lo: Tensor, hi: Tensor) -> Tensor:
    """log of the integral of the density over (lo, hi], by composite Gauss-Legendre on f in log space over the
    part of the interval that holds the mass (a point outside the support counts as no mass).

    Far in a tail the log-density can fall by hundreds of nats across the interval (a Laplace of scale 1e-3 over
    a unit bin), which one polynomial rule over the whole interval cannot follow (it was off by 2.7 nats of 500
    there). A line through log f at its higher end, the gentler of the tangent there and the secant, lies above
    log f (the tangent above a concave one, a Gaussian's tail; the secant above a convex one, a power law); past
    TAIL_EFOLDS below the top it leaves no digit of the mass, and TAIL_PANELS equal panels cover the rest.
    """
    import numpy as np

    from densbench.distributions.gauss_rules import legendre

    lo, hi = torch.broadcast_tensors(lo.double(), hi.double())
    width = hi - lo

    def log_f(x: Tensor) -> Tensor:
        return dist.log_prob(x).double().nan_to_num(-math.inf, posinf=math.inf, neginf=-math.inf)

    ends = log_f(torch.stack([lo, hi]))
    falls_up = ends[0] >= ends[1]  # log f falls from lo towards hi: lo is the higher end
    step = 1e-6 * width
    near = log_f(torch.where(falls_up, lo + step, hi - step))
    slope = torch.minimum((ends[0] - ends[1]).abs() / width, (ends.max(0).values - near) / step)
    span = torch.where(torch.isfinite(slope) & (slope > 0), torch.minimum(width, TAIL_EFOLDS / slope), width)
    t, w = legendre(TAIL_NODES)
    at = np.concatenate([(p + (t + 1) / 2) / TAIL_PANELS for p in range(TAIL_PANELS)])  # in [0, 1]
    shape = (-1, *([1] * lo.dim()))
    d = torch.as_tensor(at, dtype=torch.float64, device=lo.device).view(shape) * span
    log_w = torch.log(torch.as_tensor(np.tile(w / (2 * TAIL_PANELS), TAIL_PANELS), dtype=torch.float64, device=lo.device))
    return torch.logsumexp(log_f(torch.where(falls_up, lo + d, hi - d)) + log_w.view(shape), 0) + torch.log(span)


log_interval_mass = Operation("log_interval_mass", _interval_generic)
log_interval_mass.__doc__ = """log P(lo < Y <= hi) for a continuous predictive, accurate far in either tail (closed
forms registered where a family has one: Normal and its mixtures through log_ndtr)."""
