"""A job's candidate models chosen on its validation rows: MC dropout's dropout rate and noise level.

MC dropout (Gal & Ghahramani 2016) trains one network per dropout rate of a grid and picks, per
split, the rate and the model precision tau whose predictive has the best validation log-likelihood.
Here a job trains its candidates as models of one stack (``model.dropout`` a list: one rate per
model) and, before its test rows, scores each candidate at each noise level of the grid on its
validation rows; the test scores the winner alone. tau moves no weight in training (its L2 term is
negligible, see conf/method/mc_dropout.yaml), so the noise grid costs evaluations, not trainings.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor
from torch.distributions import Distribution

from densbench.evaluation.metrics import validation_nll


class Choice(NamedTuple):
    """The winning candidate (its index among the job's models), its noise level (original units) and validation NLL."""

    index: int
    noise: float | None
    val_nll: float


def choose(candidate: Callable[[int, float | None], Distribution], count: int, noise_grid: list[float] | None,
           y: Tensor, resolution: float | None = None) -> Choice:
    """The candidate and noise level with the lowest mean validation NLL (at the targets' resolution where they
    have one: metrics.validation_nll); ties go to the earlier (smaller) setting.

    ``candidate(i, noise)``: candidate i's predictive with that noise level (None: as it is).
    """
    best = Choice(0, None, math.inf)
    for i in range(count):
        for noise in noise_grid or [None]:
            nll = float(validation_nll(candidate(i, noise), y, "regression", resolution).double().mean())
            if nll < best.val_nll:  # a NaN never wins
                best = Choice(i, noise, nll)
    if not math.isfinite(best.val_nll):
        raise ValueError("no candidate has a finite validation NLL")
    return best


def with_noise(passes: list[dict[str, Tensor]], noise: float, target_scale: float) -> list[dict[str, Tensor]]:
    """Raw outputs with the `noise` buffer set to a level given in original units."""
    level = torch.tensor(noise / target_scale, dtype=passes[0]["noise"].dtype, device=passes[0]["noise"].device)
    return [{**raw, "noise": level.expand_as(raw["noise"])} for raw in passes]


def noise_levels(precisions: list[float] | None, target_scale: float, default: int = 33) -> list[float]:
    """Noise standard deviations in original units: 1 / sqrt(tau) for the layout's precisions, else a
    log-spaced grid from 0.01 to 2 target standard deviations."""
    if precisions:
        return [1.0 / math.sqrt(t) for t in precisions]
    return [float(target_scale * s) for s in torch.logspace(-2, math.log10(2.0), default, dtype=torch.float64)]
