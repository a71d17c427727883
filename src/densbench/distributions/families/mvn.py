"""Multivariate Gaussian N(mu, L L^T) of d >= 2 real targets per row, through its Cholesky factor L.

Raw outputs: ``loc`` [d]; ``diag`` [d], L's diagonal through a positivity map (softplus or exp, plus a
floor: densbench.distributions.positivity); ``tril`` [d (d - 1) / 2], L's strictly lower triangle, free
(row-major, torch.tril_indices order). Any such L is a valid Cholesky factor, so every raw output is
a covariance. Targets are standardised per column (y = loc + scale z), so in original units the
factor is diag(scale) L. The NLL solves the triangular system once: with z = L^-1 (y - mu),

    NLL = 1/2 |z|^2 + sum_i log L_ii + d/2 log 2 pi,

and its gradient is closed-form (nll_kernel): with w = L^-T z, d/d mu = -w, d/d L_ij = -w_i z_j
(i > j), d/d L_ii = 1/L_ii - w_i z_i, times d L_ii/d raw on the diagonal.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from densbench.distributions.families.base import Family, Raw, register, total, weighted_total
from densbench.distributions.positivity import head_positivity
from densbench.errors import ConfigError
from densbench.lazy import D, torch

if TYPE_CHECKING:
    from torch import Tensor

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@register
class MultivariateGaussian(Family):
    """N(mu, L L^T) over d targets: loc, positive Cholesky diagonal, free strictly lower triangle."""

    name = "mvn"
    tasks = ("multivariate",)
    distribution_type = "torch.distributions.MultivariateNormal"
    has_floor = True

    def __init__(self, positivity: str = "softplus", floor: float = 1e-6, targets: int = 2) -> None:
        if not (isinstance(targets, int) and targets >= 2):
            raise ConfigError(f"head.targets={targets!r} must be an integer >= 2 (mvn needs at least two targets)")
        self.positivity = head_positivity(positivity, floor)
        self.targets = targets

    @property
    def continuous(self) -> bool:
        # a joint distribution has a density but no CDF or quantiles of its own (one target at a time has)
        return False

    def for_targets(self, d: int) -> "MultivariateGaussian":
        """The same head for data with d target columns (its output widths follow d)."""
        if d < 2:
            raise ConfigError(f"head={self.name}: mvn needs at least two targets, the data has {d}")
        return MultivariateGaussian(self.positivity.kind, self.positivity.floor, d)

    def fields(self) -> dict[str, int]:
        d = self.targets
        return {"loc": d, "diag": d, "tril": d * (d - 1) // 2}

    def init_bias(self, bias: Raw) -> None:
        bias["diag"].fill_(self.positivity.inverse(1.0))  # unit marginal scales of the standardised targets

    def cholesky(self, raw: Raw) -> Tensor:
        """L [..., B, d, d] in standardised units: positive diagonal, raw strictly lower triangle."""
        d, diag, tril = self.targets, raw["diag"], raw["tril"]
        L = diag.new_zeros(*diag.shape, d)
        rows, cols = torch.tril_indices(d, d, -1, device=diag.device)
        L[..., rows, cols] = tril
        return L + torch.diag_embed(self.positivity.value(diag))

    def distribution(self, raw: Raw, loc: Any = 0.0, scale: Any = 1.0):
        """Predictive MultivariateNormal with batch shape [..., B], event [d], in original units."""
        ref = raw["loc"]
        loc = torch.as_tensor(loc, dtype=ref.dtype, device=ref.device)
        scale = torch.as_tensor(scale, dtype=ref.dtype, device=ref.device)
        # per target column y_i = loc_i + scale_i z_i: the factor's row i is scaled by scale_i
        return D.MultivariateNormal(loc + scale * ref, scale_tril=scale.unsqueeze(-1) * self.cholesky(raw),
                                    validate_args=False)

    def _solve(self, raw: Raw, y: Tensor) -> tuple[Tensor, Tensor]:
        """(L, z = L^-1 (y - mu)) for standardised targets y [..., B, d]."""
        L = self.cholesky(raw)
        z = torch.linalg.solve_triangular(L, (y - raw["loc"]).unsqueeze(-1), upper=False).squeeze(-1)
        return L, z

    def nll_terms(self, raw: Raw, y: Tensor) -> Tensor:
        """Per-sample NLL [..., B, 1]: 1/2 |L^-1 (y - mu)|^2 + sum log L_ii + d/2 log 2 pi."""
        _, z = self._solve(raw, y)
        log_det = self.positivity.log_value(raw["diag"]).sum(-1, keepdim=True)
        return 0.5 * z.pow(2).sum(-1, keepdim=True) + log_det + self.targets * HALF_LOG_2PI

    def log_prob(self, raw: Raw, y: Tensor) -> Tensor:
        return -self.nll_terms(raw, y)

    def nll_kernel(self, raw: Raw, y: Tensor, weight: Any):
        """Analytic NLL: (weighted sum, gradients by field)."""
        raw = {k: v.detach() for k, v in raw.items()}
        L, z = self._solve(raw, y)
        w = torch.linalg.solve_triangular(L.transpose(-1, -2), z.unsqueeze(-1), upper=True).squeeze(-1)  # L^-T z
        r = raw["diag"]
        value = 0.5 * z.pow(2).sum(-1, keepdim=True) + self.positivity.log_value(r).sum(-1, keepdim=True) \
            + self.targets * HALF_LOG_2PI
        rows, cols = torch.tril_indices(self.targets, self.targets, -1, device=r.device)
        g_tril = -(w[..., rows] * z[..., cols])
        # d/d raw of the diagonal: (1/L_ii - w_i z_i) L_ii dlog L_ii/d raw = (1 - w_i z_i L_ii) dlog
        g_diag = (1 - w * z * self.positivity.value(r)) * self.positivity.dlog(r)
        return weighted_total(value, weight), {"loc": -w * weight, "diag": g_diag * weight, "tril": g_tril * weight}

    def moments(self, raw: Raw) -> tuple[Tensor, Tensor]:
        """Mean [..., B, d] and marginal variances [..., B, d] in standardised units."""
        L = self.cholesky(raw)
        return raw["loc"], L.pow(2).sum(-1)

    def reference(self, dist: Any) -> Any:
        return None  # scipy's multivariate_normal takes one mean at a time: tests/test_mvn.py compares row by row

    def floor_hits(self, raw: Raw) -> Tensor:
        return total(self.positivity.at_floor(raw["diag"]))
