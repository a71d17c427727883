"""Integrals of a predictive's quantile function over segments of levels, where a family has them in closed form.

A predictive recalibrated by a piecewise-linear map R of its CDF (densbench.distributions.recalibrated) has
its mean, variance and CRPS as sums over R's segments of three integrals of the base's quantile function Q:

    I0 = int (Q(u) - c) du,   I1 = int u (Q(u) - c) du,   I2 = int (Q(u) - c)^2 du   over (lo, hi].

Families register them next to their types (the Normal: torch.distributions.Normal in families/gaussian.py);
there is no generic method, and a caller without one integrates on a grid of quantiles instead.
"""

from __future__ import annotations

from densbench.distributions.dispatch import Operation

quantile_integrals = Operation("quantile_integrals")
quantile_integrals.__doc__ = """(I0, I1, I2) of `dist` over level segments lo < hi [S, *batch] about c [*batch], in
float64 (see the module): exact where a family registers them; Unavailable where none does."""
