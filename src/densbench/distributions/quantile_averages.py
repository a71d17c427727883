"""Averages of a predictive's quantile function over segments of levels, where a family has them in closed form.

A predictive recalibrated by a piecewise-linear map R of its CDF (densbench.distributions.recalibrated) has
its mean, variance and CRPS as sums over R's segments (lo, hi] of four averages, over u uniform on the
segment, of the base's quantile function Q about a point c:

    A0 = avg (Q(u) - c),   A1 = avg lambda(u) (Q(u) - c),   A2 = avg (Q(u) - c)^2,   A0+ = avg max(Q(u) - c, 0),

with lambda = (u - lo) / (hi - lo) (A0+ is the CRPS's part of the segment above c: its level F(c) can lie within
1e-16 of a knot at 1 - 1e-13, so the family places c itself, from its upper tail where it lies there).

Averages rather than integrals: R's slope over a segment is its rise over the segment's width, and a width
can be anything down to a subnormal (a validation point 37 sigma out), so slope times integral would
overflow and cancel where rise times average does neither. Families register them next to their types
(the Normal: torch.distributions.Normal in families/gaussian.py); there is no generic method, and a caller
without one integrates on a grid of quantiles instead.
"""

from __future__ import annotations

from densbench.distributions.dispatch import Operation

NARROW = 0.1  # a segment narrower than this fraction of its distance to 0 or 1: Q is smooth across it
NARROW_NODES = 8  # Gauss-Legendre nodes there: Q's nearest singularity is 10 widths away, so they are exact

quantile_averages = Operation("quantile_averages")
quantile_averages.__doc__ = """(A0, A1, A2, A0+) of `dist` over level segments lo <= hi [S, *batch] about c [*batch], in
float64 (see the module): exact where a family registers them; Unavailable where none does."""
