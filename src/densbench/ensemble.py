"""Deep ensembles: the uniform mixture of the members' predictive distributions (Lakshminarayanan et al. 2017).

The ensemble is scored as the mixture it is, never as a moment-matched Gaussian: its NLL is
-log (1/M sum_m p_m(y)) by logsumexp, its CDF the mean of the members' CDFs, its quantiles found on
that CDF. Gaussian members make a NormalMixture (closed-form CRPS and all); mixture members a
NormalMixture of all their components; other location-scale members (Student-t, Laplace) a torch
MixtureSameFamily, whose CDF and quantiles are registered here through the components' operations.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Categorical, Distribution, MixtureSameFamily, Normal

from densbench import mixtures, ops
from densbench.distributions import NormalMixture


def uniform_mixture(members: list[Distribution]) -> Distribution:
    """The equal-weight mixture of M distributions of one kind with the same batch shape."""
    first = members[0]
    if all(type(d) is Normal for d in members):
        loc, scale = torch.stack([d.loc for d in members], -1), torch.stack([d.scale for d in members], -1)
        return NormalMixture(torch.zeros_like(loc), loc, scale)
    if all(isinstance(d, NormalMixture) for d in members):
        # every member's components, each weighted by its member's weight / M
        logits = torch.cat([torch.log_softmax(d.mixture_distribution.logits, -1) - math.log(len(members)) for d in members], -1)
        return NormalMixture(logits, torch.cat([d.loc for d in members], -1), torch.cat([d.scale for d in members], -1))
    cls = type(first)
    if any(type(d) is not cls for d in members):
        raise TypeError(f"an ensemble needs members of one family, got {sorted({type(d).__name__ for d in members})}")
    params = {name: torch.stack([getattr(d, name) for d in members], -1) for name in cls.arg_constraints}
    component = cls(**params, validate_args=False)
    weights = Categorical(logits=torch.zeros(*first.batch_shape, len(members), dtype=params["loc"].dtype, device=params["loc"].device),
                          validate_args=False)
    return MixtureSameFamily(weights, component, validate_args=False)


@ops.cdf.register(MixtureSameFamily)
def _mixture_cdf(d: MixtureSameFamily, y: Tensor) -> Tensor:
    """sum_k w_k F_k(y), through the components' own CDFs (torch's needs component.cdf, Student-t has none)."""
    return (d.mixture_distribution.probs * ops.cdf(d.component_distribution, y.unsqueeze(-1))).sum(-1)


@ops.icdf.register(MixtureSameFamily)
def _mixture_icdf(d: MixtureSameFamily, p: Tensor) -> Tensor:
    """Quantiles on the mixture's CDF, vectorised over rows (densbench.mixtures), through the components' cdf and icdf."""
    return mixtures.batch_quantiles(d, p)


@ops.crps.register(MixtureSameFamily)
def _mixture_crps(d: MixtureSameFamily, y: Tensor) -> Tensor:
    """The integral of (F - 1{x >= y})^2 on nodes at the components' quantiles (densbench.mixtures)."""
    return mixtures.batch_crps(d, y)


@ops.rescale.register(MixtureSameFamily)
def _mixture_rescale(d: MixtureSameFamily, factor: float) -> MixtureSameFamily:
    """Every member's spread times the factor, through the members' own rescale."""
    return MixtureSameFamily(d.mixture_distribution, ops.rescale(d.component_distribution, factor), validate_args=False)
