"""ngboost's Normal, the same model and natural gradient, without a frozen scipy distribution per instance.

Imported only when NGBoost runs (ngboost is an optional dependency). The classes live at module level
so that a fitted model pickles.
"""

from __future__ import annotations

import functools

import numpy as np
from ngboost.distns import Normal
from ngboost.distns.distn import RegressionDistn
from ngboost.distns.normal import NormalCRPScore, NormalLogScore
from ngboost.scores import LogScore

from densbench.distributions.ops import HALF_LOG_2PI


# ngboost builds a Normal for every line-search trial and every validation check; freezing scipy's norm in
# each (it rebuilds the distribution's docstrings and signatures) was over a third of a fit's time.
class LightNormalLogScore(NormalLogScore, LogScore):  # LogScore last: ngboost maps scores by their last base
    """The Normal's log score computed from the log-scale, in numpy."""

    def score(self, Y: np.ndarray) -> np.ndarray:
        """Negative log density of each target."""
        return 0.5 * ((Y - self.loc) / self.scale) ** 2 + self.log_scale + HALF_LOG_2PI


class LightNormal(Normal):
    """ngboost's Normal whose scipy distribution is built only when asked for."""

    scores = [LightNormalLogScore, NormalCRPScore]

    def __init__(self, params: np.ndarray) -> None:
        RegressionDistn.__init__(self, params)
        self.loc, self.log_scale = params[0], params[1]
        self.scale = np.exp(params[1])
        self.var = self.scale**2

    @functools.cached_property
    def dist(self):  # noqa: ANN201 - scipy's frozen norm, for the few callers that ask for it (pred_dist(...).logpdf)
        """scipy's frozen Normal of these parameters."""
        from scipy.stats import norm

        return norm(loc=self.loc, scale=self.scale)
