"""Scores of joint predictive distributions over d >= 2 targets (head=mvn) as torchmetrics ``Metric``s.

Every state is a sum over rows, so DDP reduction is a plain sum. All values in original target units:

- ``nll``: -log p(y | x) of the joint density; ``nll_marginal_sum``: the sum of the per-target
  marginal NLLs (what independent targets with the same marginals would score);
- ``energy_score``: E|X - y| - 1/2 E|X - X'| (Euclidean norm; Gneiting & Raftery 2007), by Monte
  Carlo with ENERGY_SAMPLES (4000) draws eps_m ~ N(0, I) from a generator seeded with ENERGY_SEED, shared by
  every row: X_m = mu + L eps_m for the first term and, since X - X' ~ N(0, 2 Sigma), sqrt(2) |L eps_m|
  for the second (unbiased, the same draws in both terms);
- ``variogram_score``: sum over all ordered pairs (i, j) of (|y_i - y_j|^p - E|X_i - X_j|^p)^2, p = 0.5,
  weights 1 (Scheuerer & Hamill 2015), exact: X_i - X_j ~ N(m, s^2) has
  E|X_i - X_j|^p = s^p 2^(p/2) Gamma((p + 1)/2) / sqrt(pi) 1F1(-p/2; 1/2; -m^2 / (2 s^2));
- ``nll_target<i>``, ``crps_target<i>``: per target, of its marginal Normal (densbench.distributions.ops.crps);
  ``crps``: their mean over targets; ``rmse``: of the predictive mean over every target entry;
- ``coverage90_ellipsoid``: the share of rows inside the joint central 90% ellipsoid,
  (y - mu)^T Sigma^-1 (y - mu) <= chi2.ppf(0.9, d).
"""

from __future__ import annotations

import math

import torch
from scipy import special, stats
from torch import Tensor
from torch.distributions import Distribution, MultivariateNormal, Normal

import densbench.distributions.families.gaussian  # noqa: F401  (registers the Normal's closed-form CRPS)
from densbench.distributions.ops import crps
from densbench.evaluation.metrics import SummedMetric

ENERGY_SAMPLES = 4000  # one fixed draw for every row and model: Monte Carlo error about 1% of a row's score
ENERGY_ROWS = 256  # rows scored at once (memory: rows x samples x d doubles, twice)
ENERGY_SEED = 20150701
VARIOGRAM_P = 0.5
ELLIPSOID_LEVEL = 0.9


def energy_score(dist: MultivariateNormal, y: Tensor, samples: int = ENERGY_SAMPLES, seed: int = ENERGY_SEED) -> Tensor:
    """Monte Carlo energy score per row [n]: mean_m |mu + L eps_m - y| - sqrt(2)/2 mean_m |L eps_m| (batch [n])."""
    g = torch.Generator().manual_seed(seed)
    L, offset = dist.scale_tril.double(), (dist.loc - y).double()
    eps = torch.randn(samples, L.shape[-1], generator=g, dtype=torch.float64).to(L.device)
    out = []
    for rows in torch.split(torch.arange(len(L), device=L.device), ENERGY_ROWS):  # [rows, M, d] at a time
        spread = torch.einsum("nij,mj->nmi", L[rows], eps)  # L eps_m per row
        to_y = (offset[rows].unsqueeze(-2) + spread).norm(dim=-1).mean(-1)
        out.append(to_y - math.sqrt(2) / 2 * spread.norm(dim=-1).mean(-1))
    return torch.cat(out)


def expected_abs_power(m: Tensor, s: Tensor, p: float = VARIOGRAM_P) -> Tensor:
    """E|Z|^p of Z ~ N(m, s^2), by the confluent hypergeometric closed form (scipy, float64)."""
    ratio = (-(m * m) / (2 * s * s)).double().cpu().numpy()
    hyp = torch.as_tensor(special.hyp1f1(-p / 2, 0.5, ratio), dtype=torch.float64, device=m.device)
    return s.double().pow(p) * 2 ** (p / 2) * math.gamma((p + 1) / 2) / math.sqrt(math.pi) * hyp


def variogram_score(dist: MultivariateNormal, y: Tensor, p: float = VARIOGRAM_P) -> Tensor:
    """Variogram score of order p per row [...], weights 1, over all ordered pairs i != j (exact)."""
    mu, cov, y = dist.loc.double(), dist.covariance_matrix.double(), y.double()
    i, j = torch.triu_indices(mu.shape[-1], mu.shape[-1], 1, device=mu.device)
    var = cov[..., i, i] + cov[..., j, j] - 2 * cov[..., i, j]
    expected = expected_abs_power(mu[..., i] - mu[..., j], var.clamp_min(0).sqrt(), p)
    observed = (y[..., i] - y[..., j]).abs().pow(p)
    return 2 * (observed - expected).pow(2).sum(-1)  # each unordered pair counted twice, as sum_{i,j} does


def marginals(dist: MultivariateNormal) -> Normal:
    """The per-target marginal Normals, batch [..., d]."""
    return Normal(dist.loc, dist.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt(), validate_args=False)


def mahalanobis2(dist: MultivariateNormal, y: Tensor) -> Tensor:
    """(y - mu)^T Sigma^-1 (y - mu) per row, by the triangular solve with the Cholesky factor."""
    z = torch.linalg.solve_triangular(dist.scale_tril, (y - dist.loc).unsqueeze(-1), upper=False)
    return z.squeeze(-1).pow(2).sum(-1)


class MultivariateMetrics(SummedMetric):
    """Joint and per-target scores of one split's joint predictive (see the module docstring).

    ``update(dist, y, truth=None, u=None, intervals=None)`` takes a MultivariateNormal with batch [n]
    and targets [n, d] in original units; the extra arguments of PredictiveMetrics are accepted and
    unused (no truth is known for multi-target data, and no recalibration applies to it).
    """

    def __init__(self, targets: int, **kwargs):
        super().__init__(**kwargs)
        self.targets = targets
        self.threshold = float(stats.chi2.ppf(ELLIPSOID_LEVEL, targets))
        self.fallbacks: dict[str, str] = {}
        for name in ("n", "nll", "sq_err", "energy", "variogram", "inside"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("marginal_nll", "marginal_crps"):
            self.add_state(name, torch.zeros(targets, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, dist: Distribution, y: Tensor, truth: Distribution | None = None, u: Tensor | None = None,
               intervals: dict | None = None) -> None:
        """Accumulate one batch."""
        y = y.to(dist.loc.dtype).reshape(dist.loc.shape)
        self.n += y.shape[0]
        self.nll += -dist.log_prob(y).double().sum()
        self.sq_err += (dist.mean - y).double().pow(2).sum()
        self.energy += energy_score(dist, y).sum()
        self.variogram += variogram_score(dist, y).sum()
        self.inside += (mahalanobis2(dist, y).double() <= self.threshold).double().sum()
        margin = marginals(dist)
        self.marginal_nll += -margin.log_prob(y).double().sum(0)
        self.marginal_crps += crps(margin, y).double().sum(0)

    def compute(self) -> dict[str, Tensor]:
        """Scalar metrics by name (result.json's)."""
        n = self.n.clamp_min(1)
        out = {"nll": self.nll / n, "rmse": (self.sq_err / (n * self.targets)).sqrt(),
               "crps": self.marginal_crps.mean() / n, "energy_score": self.energy / n,
               "variogram_score": self.variogram / n, "coverage90_ellipsoid": self.inside / n,
               "nll_marginal_sum": self.marginal_nll.sum() / n}
        for i in range(self.targets):
            out[f"nll_target{i}"] = self.marginal_nll[i] / n
            out[f"crps_target{i}"] = self.marginal_crps[i] / n
        return out

    def curves(self) -> dict[str, list[float]]:
        """No histograms or calibration curves for a joint predictive."""
        return {}


class JointModelScores(SummedMetric):
    """Validation scores of every model of a stack, [N] each: joint NLL and RMSE over every target entry.

    ``update(dist, y)``: a joint predictive with batch [N, n] and targets [N, n, d] in original units.
    """

    def __init__(self, models: int, **kwargs):
        super().__init__(**kwargs)
        for name in ("n", "nll", "err"):
            self.add_state(name, torch.zeros(models, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, dist: Distribution, y: Tensor, rows: int | None = None) -> None:
        """Accumulate one stacked batch (its first `rows` rows: the rest are padding)."""
        y, real = y.to(dist.loc.dtype), slice(None, rows)
        self.n += y[..., real, :].shape[-2]
        self.nll += -dist.log_prob(y)[..., real].double().sum(-1)
        self.err += (dist.mean - y)[..., real, :].double().pow(2).mean(-1).sum(-1)

    def compute(self) -> dict[str, Tensor]:
        """Per model: nll and rmse."""
        n = self.n.clamp_min(1)
        return {"nll": self.nll / n, "rmse": (self.err / n).sqrt()}
