"""Deep ensembles: the uniform mixture of the members' predictive distributions (Lakshminarayanan et al. 2017).

The ensemble is scored as the mixture it is, never as a moment-matched Gaussian: its NLL is
-log (1/M sum_m p_m(y)) by logsumexp, its CDF the mean of the members' CDFs, its quantiles found on
that CDF. Gaussian members make a NormalMixture (closed-form CRPS and all); mixture members a
NormalMixture of all their components; other location-scale members (Student-t, Laplace) a torch
MixtureSameFamily, whose operations densbench.distributions.mixtures registers through the components' own.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Categorical, Distribution, MixtureSameFamily, Normal

from densbench.distributions.classes import NormalMixture


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


def over_passes(family: Any, passes: list[dict[str, Tensor]], loc: Tensor | float, scale: Tensor | float) -> Distribution:
    """A model's predictive over its evaluation passes: the one pass's distribution, or the uniform mixture of MC dropout's."""
    dists = [family.distribution(raw, loc, scale) for raw in passes]
    return dists[0] if len(dists) == 1 else uniform_mixture(dists)
