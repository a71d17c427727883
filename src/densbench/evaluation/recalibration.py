"""Post-hoc recalibration (``recalibrate=``): fitted on the validation split, applied to the test predictive.

A recalibration sees the trained model's predictive distribution on the validation rows and their
targets (``fit``), then changes the test predictive (``apply``) or only its intervals
(``intervals``). It never sees test targets: the test batch reaches it only through ``apply`` and
``intervals``, which take a distribution and no targets.

- ``none``: the model as trained.
- ``scale``: one factor s on the predictive spread (sigma -> s sigma; every component of a mixture),
  s minimising the validation NLL: in closed form where the family registers one
  (``ops.spread_factor``, the Gaussian's s^2 = mean z^2), else by a grid and golden-section search on log s.
- ``isotonic``: Kuleshov, Fenner & Ermon (2018). R maps a validation PIT value p to the share of
  validation PIT values <= p; that empirical CDF is already monotone at the data points, so the
  isotonic fit is the points themselves. R interpolates them linearly (as scikit-learn's
  IsotonicRegression predicts), at every k-th point (see ``isotonic_knots``), so that R is a
  continuous CDF on [0, 1] and R(F(y)) has a density whose log is not biased by single gaps.
  The recalibrated predictive is a ``densbench.distributions.recalibrated.Recalibrated`` distribution (cdf, icdf,
  log_prob), which every metric scores through the generic operations.
- ``conformal``: split conformal intervals (Lei et al. 2018) with the normalised score |y - mu| / sigma
  for location-scale families and the PIT score |F(y) - 1/2| otherwise, at the finite-sample
  quantile ceil((n + 1) c) / n of the n validation scores. It defines intervals, not a density: NLL,
  CRPS and the calibration curve stay those of the model; coverage and widths are the conformal ones.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from densbench.distributions import ops
from densbench.lazy import torch

if TYPE_CHECKING:
    from torch import Tensor
    from torch.distributions import Distribution

MIN_POINTS = 20  # fewer validation rows than this cannot place a 95% conformal bound, nor an honest isotonic map

METHODS: dict[str, type[Recalibration]] = {}


def register(cls: type[Recalibration]) -> type[Recalibration]:
    """Class decorator: make a recalibration selectable as recalibrate=<cls.name>."""
    METHODS[cls.name] = cls
    return cls


def make(name: str) -> Recalibration:
    """A fresh, unfitted recalibration by its config name."""
    return METHODS[name]()


class Recalibration:
    """The identity: the model's predictive as trained (recalibrate=none)."""

    name = "none"
    changes_density = False  # whether apply() changes NLL, CRPS and the calibration curve

    @property
    def active(self) -> bool:
        """Whether this recalibration needs the validation split (everything but none)."""
        return self.name != "none"

    def fit(self, dist: Distribution, y: Tensor) -> None:
        """Fit on the validation predictive and targets (original units)."""

    def apply(self, dist: Distribution) -> Distribution:
        """The recalibrated test predictive."""
        return dist

    def intervals(self, dist: Distribution, levels: tuple[float, ...]) -> dict[float, tuple[Tensor, Tensor]] | None:
        """Central intervals at these levels where the recalibration defines its own (else None: the quantiles')."""
        return None

    def fitted(self) -> dict[str, Any]:
        """What was fitted, for result.json."""
        return {}


register(Recalibration)


# ------------------------------------------------------------------------------------------------
# scale
# ------------------------------------------------------------------------------------------------


@register
class Scale(Recalibration):
    """sigma -> s sigma with s minimising the validation NLL."""

    name = "scale"
    changes_density = True

    def fit(self, dist: Distribution, y: Tensor) -> None:
        """s from the registered closed form of the family, else by search."""
        self.how = "closed form" if ops.spread_factor.closed_form(type(dist)) is not None else "search on log s"
        self.factor = float(ops.spread_factor(dist, y))

    def apply(self, dist: Distribution) -> Distribution:
        """The predictive with its spread times s."""
        return ops.rescale(dist, self.factor)

    def fitted(self) -> dict[str, Any]:
        """The factor and how it was found."""
        return {"factor": self.factor, "how": self.how}


# ------------------------------------------------------------------------------------------------
# isotonic
# ------------------------------------------------------------------------------------------------


def isotonic_knots(pit: Tensor) -> tuple[Tensor, Tensor]:
    """Knots (p, R(p)) of the recalibration map from validation PIT values, both strictly increasing from (0, 0) to (1, 1).

    R(p) is the share of PIT values <= p, taken as count / (n + 1) so that it stays below 1 before
    the last knot (tied PIT values: one point at their highest count). The map interpolates every
    k-th of these points, k = ceil(sqrt(n)): between two knots R's slope, the recalibrated density
    factor, is then estimated from k gaps instead of one. Interpolating every point would make the
    log density biased: each slope would be 1 / ((n + 1) gap), and a test point falls in a gap with
    probability proportional to its length, so the expected log slope is off by psi(2) = 0.42 nats.
    """
    v = pit.double().flatten().sort().values
    n = v.numel()
    counts = torch.arange(1, n + 1, dtype=torch.float64, device=v.device)
    last = torch.ones(n, dtype=torch.bool, device=v.device)
    last[:-1] = v[1:] != v[:-1]  # the highest count of each tie group
    p, c = v[last], counts[last]
    k = math.ceil(math.sqrt(n))
    block = torch.div(c, k, rounding_mode="floor")
    keep = block > torch.cat([block.new_zeros(1), block[:-1]])  # the first point of every new block of k
    keep[-1] = True
    p, r = p[keep], c[keep] / (n + 1)
    inside = (p > 0) & (p < 1)
    zero, one = torch.zeros(1, dtype=torch.float64, device=v.device), torch.ones(1, dtype=torch.float64, device=v.device)
    return torch.cat([zero, p[inside], one]), torch.cat([zero, r[inside], one])


@register
class Isotonic(Recalibration):
    """Kuleshov et al. (2018): the recalibrated CDF R(F(y)), R fitted on validation PIT values."""

    name = "isotonic"
    changes_density = True

    def fit(self, dist: Distribution, y: Tensor) -> None:
        """The knots of R from the validation PIT values F(y)."""
        self.knots_p, self.knots_r = isotonic_knots(ops.pit(dist, y))

    def apply(self, dist: Distribution) -> Distribution:
        """R(F(.)) as a distribution."""
        from densbench.distributions.recalibrated import Recalibrated  # torch-heavy: not imported by the config checks

        device = dist.mean.device
        return Recalibrated(dist, self.knots_p.to(device), self.knots_r.to(device))

    def fitted(self) -> dict[str, Any]:
        """The map's knots (PIT value, recalibrated probability)."""
        return {"knots": len(self.knots_p), "pit": [round(float(v), 6) for v in self.knots_p],
                "recalibrated": [round(float(v), 6) for v in self.knots_r]}


# ------------------------------------------------------------------------------------------------
# conformal
# ------------------------------------------------------------------------------------------------


@register
class Conformal(Recalibration):
    """Split conformal intervals: the normalised score for location-scale predictives, the PIT score otherwise."""

    name = "conformal"

    def fit(self, dist: Distribution, y: Tensor) -> None:
        """Sorted validation conformity scores."""
        ls = ops.location_scale(dist)
        self.normalised = ls is not None
        if self.normalised:
            scores = (y.double() - ls[0].double()).abs() / ls[1].double()
        else:
            scores = (ops.pit(dist, y).double() - 0.5).abs()
        self.scores = scores.flatten().sort().values.cpu()

    def threshold(self, level: float) -> float:
        """The ceil((n + 1) c)-th smallest score (infinite when that exceeds n: no finite interval has the guarantee)."""
        n = len(self.scores)
        k = math.ceil((n + 1) * level - 1e-9)
        return float("inf") if k > n else float(self.scores[k - 1])

    def intervals(self, dist: Distribution, levels: tuple[float, ...]) -> dict[float, tuple[Tensor, Tensor]]:
        """mu -+ q sigma, or the predictive quantiles at 1/2 -+ q for the PIT score."""
        out = {}
        ls = ops.location_scale(dist) if self.normalised else None
        for c in levels:
            q = self.threshold(c)
            if ls is not None:
                loc, scale = ls[0].double(), ls[1].double()
                out[c] = (loc - q * scale, loc + q * scale)
            elif q >= 0.5:
                inf = torch.full(dist.batch_shape, float("inf"), dtype=torch.float64, device=dist.mean.device)
                out[c] = (-inf, inf)
            else:
                bounds = ops.quantile(dist, torch.tensor([0.5 - q, 0.5 + q])).double()
                out[c] = (bounds[0], bounds[1])
        return out

    def fitted(self) -> dict[str, Any]:
        """The score, the number of validation points and the score threshold at each reported level."""
        from densbench.evaluation.metrics import COVERAGES

        return {"score": "|y - mu| / sigma" if self.normalised else "|F(y) - 1/2|", "n": len(self.scores),
                "thresholds": {f"{round(100 * c)}": self.threshold(c) for c in COVERAGES}}

