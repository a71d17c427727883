"""Output heads: a linear layer to raw outputs, named raw fields, and the predictive distribution.

A head knows its family: how many raw outputs it needs, how they split into named fields, how the
fields become distribution parameters (positivity maps, canonical links) and how to build the
``torch.distributions`` object in original target units (undoing target standardisation).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Categorical, Distribution, Normal, Poisson

from densbench.distributions import NormalMixture
from densbench.losses import GLM_FAMILIES
from densbench.positivity import Positivity, Spread


class GaussianRaw(NamedTuple):
    """Raw outputs of a Gaussian head, [N, 1] each."""

    loc: Tensor
    spread: Tensor


class MixtureRaw(NamedTuple):
    """Raw outputs of a mixture head, [N, K] each."""

    logits: Tensor
    loc: Tensor
    spread: Tensor


class NaturalRaw(NamedTuple):
    """Natural parameter of a canonical-link GLM head, [N, 1] or [N, C]."""

    eta: Tensor


class Head(nn.Module):
    """Base: a linear map from features to `n_raw` outputs, split into named fields."""

    n_raw: int
    has_floor = False  # whether some output passes through a positivity floor that can be hit

    def __init__(self, in_features: int, n_raw: int):
        super().__init__()
        self.n_raw = n_raw
        self.linear = nn.Linear(in_features, n_raw)

    def forward(self, features: Tensor):
        """Named raw fields for a batch of backbone features."""
        # output-major memory ([n_raw, N], seen as an [N, n_raw] view): each field is then a dense
        # block, so per-field kernels and reductions over components need no strided access or copy
        out = torch.addmm(self.linear.bias.unsqueeze(1), self.linear.weight, features.T)
        return self.split(out.T)

    def split(self, out: Tensor):  # pragma: no cover - abstract
        raise NotImplementedError

    def distribution(self, raw, loc: float = 0.0, scale: float = 1.0) -> Distribution:  # pragma: no cover
        raise NotImplementedError

    def floor_hits(self, raw) -> Tensor:
        """Number of spread outputs sitting on the floor (0 for heads without one)."""
        return self.linear.weight.new_zeros((), dtype=torch.long)


class GaussianHead(Head):
    """N(mu, v): mu raw; the positivity map of the second raw output gives the variance or the scale (`spread`)."""

    has_floor = True

    def __init__(
        self,
        in_features: int,
        positivity: str = "softplus",
        floor: float = 1e-6,
        spread: str = "variance",
        init_scale: float | None = None,
    ):
        super().__init__(in_features, 2)
        self.spread = Spread(Positivity(positivity, floor), spread)
        if init_scale is not None:
            nn.init.constant_(self.linear.bias[1:], self.spread.raw_for_scale(init_scale))

    def split(self, out: Tensor) -> GaussianRaw:
        """Columns 0 and 1 as named fields."""
        return GaussianRaw(out[:, :1], out[:, 1:2])

    def distribution(self, raw: GaussianRaw, loc: float = 0.0, scale: float = 1.0) -> Normal:
        """Predictive Normal with batch shape [N] in original units."""
        return Normal(loc + scale * raw.loc[:, 0], scale * self.spread.scale(raw.spread[:, 0]))

    def floor_hits(self, raw: GaussianRaw) -> Tensor:
        """Count of samples whose spread is on the floor."""
        return self.spread.at_floor(raw.spread).sum()


class MixtureHead(Head):
    """Mixture of K Gaussians: logits, means and spread raw outputs (sigma = exp by default)."""

    has_floor = True

    def __init__(
        self,
        in_features: int,
        components: int = 5,
        positivity: str = "exp",
        floor: float = 1e-6,
        init_scale: float | None = None,
    ):
        if int(components) < 1:
            raise ValueError(f"head.components must be >= 1, got {components}")
        self.k = int(components)
        super().__init__(in_features, 3 * self.k)
        self.spread = Spread(Positivity(positivity, floor), "scale")
        if init_scale is not None:
            nn.init.constant_(self.linear.bias[2 * self.k :], self.spread.raw_for_scale(init_scale))

    def split(self, out: Tensor) -> MixtureRaw:
        """Logits, means and spreads as named fields."""
        k = self.k
        return MixtureRaw(out[:, :k], out[:, k : 2 * k], out[:, 2 * k :])

    def distribution(self, raw: MixtureRaw, loc: float = 0.0, scale: float = 1.0) -> NormalMixture:
        """Predictive Gaussian mixture with batch shape [N] in original units."""
        return NormalMixture(raw.logits, loc + scale * raw.loc, scale * self.spread.scale(raw.spread))

    def floor_hits(self, raw: MixtureRaw) -> Tensor:
        """Count of component spreads on the floor."""
        return self.spread.at_floor(raw.spread).sum()


class GLMHead(Head):
    """Natural parameter eta with the canonical inverse link of `family`.

    The Gaussian family's canonical form has unit dispersion; its predictive scale is the
    dispersion estimated from training residuals (`dispersion` buffer, set by the module),
    as a GLM fit would report it.
    """

    def __init__(self, in_features: int, family: str = "gaussian", n_classes: int | None = None):
        if family not in GLM_FAMILIES:
            raise ValueError(f"head.family must be one of {', '.join(GLM_FAMILIES)}, got {family!r}")
        self.family = family
        super().__init__(in_features, int(n_classes) if family == "categorical" else 1)
        self.register_buffer("dispersion", torch.ones(()))

    def split(self, out: Tensor) -> NaturalRaw:
        """The whole output is the natural parameter."""
        return NaturalRaw(out)

    def distribution(self, raw: NaturalRaw, loc: float = 0.0, scale: float = 1.0) -> Distribution:
        """Predictive distribution of the family, batch shape [N]."""
        eta = raw.eta
        if self.family == "gaussian":
            return Normal(loc + scale * eta[:, 0], scale * self.dispersion.sqrt().expand(eta.shape[0]))
        if self.family == "bernoulli":
            return Bernoulli(logits=eta[:, 0], validate_args=False)
        if self.family == "poisson":
            return Poisson(torch.exp(eta[:, 0]), validate_args=False)
        return Categorical(logits=eta, validate_args=False)

