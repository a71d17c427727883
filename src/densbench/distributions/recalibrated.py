"""A predictive recalibrated after training: its CDF composed with a monotone map R fitted on validation PIT
values (densbench.evaluation.recalibration's isotonic method), as a torch Distribution the metrics score."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from densbench.distributions import ops
from densbench.distributions.dispatch import Unavailable
from densbench.distributions.standard_segments import StandardSegments


def piecewise_linear(x: Tensor, xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
    """Interpolation through strictly increasing knots (xs, ys) at x clamped to [xs[0], xs[-1]], and its slope."""
    x = x.clamp(xs[0], xs[-1])
    i = (torch.searchsorted(xs, x.contiguous(), right=True) - 1).clamp(0, len(xs) - 2)
    x0, y0 = xs[i], ys[i]
    slope = (ys[i + 1] - y0) / (xs[i + 1] - x0)
    return y0 + slope * (x - x0), slope


class Recalibrated(Distribution):
    """G(y) = R(F(y)): a base predictive F composed with a recalibration map R, a continuous CDF on [0, 1]
    through knots (p, R(p)) that increase strictly from (0, 0) to (1, 1)."""

    arg_constraints: dict = {}
    support = constraints.real
    has_rsample = False

    def __init__(self, base: Distribution, knots_p: Tensor, knots_r: Tensor):
        self.base, self.knots_p, self.knots_r = base, knots_p, knots_r
        self._grid: Tensor | None = None
        self._standard: StandardSegments | None = None
        self._mean_var: tuple[Tensor, Tensor] | None = None
        super().__init__(base.batch_shape, validate_args=False)

    def cdf(self, value: Tensor) -> Tensor:
        """R(F(y))."""
        return piecewise_linear(ops.cdf(self.base, value).double(), self.knots_p, self.knots_r)[0]

    def log_prob(self, value: Tensor) -> Tensor:
        """log R'(F(y)) + log f(y)."""
        _, slope = piecewise_linear(ops.cdf(self.base, value).double(), self.knots_p, self.knots_r)
        return slope.log() + self.base.log_prob(value).double()

    def icdf(self, value: Tensor) -> Tensor:
        """F^-1(R^-1(q)); R^-1 interpolates the same knots with the axes swapped."""
        # every entry asked the same levels (the metrics' level axis): R^-1 once per level, not per entry
        levels = ops.shared_levels(value)
        u, _ = piecewise_linear((value if levels is None else levels).double(), self.knots_r, self.knots_p)
        # a validation PIT value within an ulp of 1 in the base's dtype (a float32 Gaussian's F(y) beyond 5.3
        # sigma) makes a knot there, and R^-1 maps the top levels above it: rounded to 1 they were infinite
        # quantiles and an infinite mean. Levels are kept to [eps, 1 - eps/2] of that dtype, the widest where
        # quantile formulas through 2u - 1 or log1p(-2|u - 1/2|) stay finite: the mass R puts beyond them,
        # which the base cannot place, sits at their quantiles (in mean, variance and CRPS; cdf and log_prob
        # keep R(F(y)) as it is)
        fi = torch.finfo(self.base.mean.dtype)
        u = u.clamp(fi.eps, 1 - fi.eps / 2).expand_as(value).to(self.base.mean.dtype)
        return ops.icdf(self.base, u).double()

    def quantile_grid(self) -> Tensor:
        """Quantiles at the CRPS's ops.CRPS_LEVELS midpoints, [L, *batch], computed once for mean, variance and CRPS."""
        if self._grid is None:
            levels = ops.midpoint_levels(ops.CRPS_LEVELS, torch.float64, self.knots_p.device)
            # not ops.quantile, which reads the mean (this grid) for its dtype
            self._grid = self.icdf(levels.view(-1, *([1] * len(self.batch_shape))).expand(-1, *self.batch_shape))
        return self._grid

    def standard_segments(self) -> StandardSegments:
        """R's segments in the base's standard units (densbench.distributions.standard_segments), once; Unavailable
        where the base is not location-scale with one standard form for every entry."""
        if self._standard is None:
            self._standard = StandardSegments(self.base, self.knots_p, self.knots_r)
        return self._standard

    def _moments(self) -> tuple[Tensor, Tensor]:
        """(mean, variance): exact as sums over R's segments where the base has quantile averages (G's density is
        R's slope times f between two knots' quantiles), else by the quantile midpoint rule."""
        if self._mean_var is None:
            try:
                self._mean_var = self.standard_segments().moments()
            except Unavailable:
                q = self.quantile_grid()
                mean = q.mean(0)
                self._mean_var = (mean, (q - mean).pow(2).mean(0))
        return self._mean_var

    @property
    def mean(self) -> Tensor:
        """Exact through the base's quantile averages, else by the quantile midpoint rule."""
        return self._moments()[0]

    @property
    def variance(self) -> Tensor:
        """Exact through the base's quantile averages, else by the quantile midpoint rule."""
        return self._moments()[1]


@ops.crps.register(Recalibrated)
def _recalibrated_crps(d: Recalibrated, y: Tensor) -> Tensor:
    """Exact where the base has quantile averages, else the generic quantile integral on the grid of the mean.

    CRPS = 2 int_0^1 (1{y < G^-1(tau)} - tau)(G^-1(tau) - y) dtau; with tau = R(u) = r_k + d_k lambda on R's
    segment k of rise d_k, and G^-1(tau) = Q(u), segment k adds 2 d_k [A0+_k - r_k A0_k - d_k A1_k] about y: rises
    times averages, which neither overflow nor cancel. A segment wholly above y has A0+ = A0, one wholly below
    A0+ = 0; both are then linear in y, and their sums are prefix sums of Z's averages (StandardSegments.crps).
    """
    try:
        return d.standard_segments().crps(y)
    except Unavailable:
        return ops.crps_from_quantiles(d.quantile_grid(), y.double())


@ops.log_interval_mass.register(Recalibrated)
def _recalibrated_interval(d: Recalibrated, lo: Tensor, hi: Tensor) -> Tensor:
    """log sum_k s_k P_F(bin within segment k's quantiles): the base's own interval masses, so a bin across a knot's
    quantile (where G's density jumps) keeps the digits a rule on the log-density would lose there; for a
    location-scale base only over the segments the interval overlaps."""
    try:
        return d.standard_segments().log_interval_mass(lo, hi)
    except Unavailable:
        pass
    shape = (-1, *([1] * lo.dim()))
    p, r = d.knots_p.double(), d.knots_r.double()
    edges = ops.icdf(d.base, p.view(shape).expand(-1, *lo.shape)).double()  # [S + 1, *batch]
    a, b = torch.maximum(lo.double(), edges[:-1]), torch.minimum(hi.double(), edges[1:])
    inside = b > a
    log_mass = ops.log_interval_mass(d.base, torch.where(inside, a, lo.double()), torch.where(inside, b, hi.double()))
    log_slope = (torch.log(r[1:] - r[:-1]) - torch.log(p[1:] - p[:-1])).view(shape)
    return torch.logsumexp(torch.where(inside, log_slope + log_mass, torch.full_like(log_mass, -math.inf)), 0)
