"""Maps from an unconstrained raw output r to a positive value (a variance or a scale).

Every map is value(r) = base(r) + floor with base in {softplus, exp}. Losses never need the value
itself, only its logarithm and d log(value)/dr, and both have forms that stay finite for any finite r
in float32: that is what lets the analytic and autograd paths agree at the floor and far from it.
Torch-free at import (see densbench.lazy): families declare their maps before torch is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from densbench.errors import one_of, positive
from densbench.lazy import F, torch

if TYPE_CHECKING:
    from torch import Tensor

KINDS = ("softplus", "exp")


@dataclass(frozen=True)
class Positivity:
    """value(r) = base(r) + floor, base = softplus or exp, floor > 0."""

    kind: str = "softplus"
    floor: float = 1e-6

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"positivity must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not (self.floor > 0 and math.isfinite(self.floor)):
            raise ValueError(f"floor must be a positive finite number, got {self.floor!r}")

    @property
    def log_floor(self) -> float:
        """log(floor), a Python float."""
        return math.log(self.floor)

    def value(self, r: Tensor) -> Tensor:
        """The positive value base(r) + floor."""
        return self.log_value(r).exp()

    def log_value(self, r: Tensor) -> Tensor:
        """log(base(r) + floor), computed without forming base(r) when it would overflow or underflow."""
        if self.kind == "exp":
            return torch.logaddexp(r, r.new_tensor(self.log_floor))
        # log(softplus(r) + f): for r far below zero softplus(r) ~ exp(r) underflows, which is harmless
        # because the floor dominates; for large r softplus(r) ~ r, no overflow.
        return torch.log(F.softplus(r) + self.floor)

    def dlog(self, r: Tensor) -> Tensor:
        """d log(value)/dr, in a form that is finite for any finite r."""
        if self.kind == "exp":
            # exp(r) / (exp(r) + f) = sigmoid(r - log f)
            return torch.sigmoid(r - self.log_floor)
        return torch.sigmoid(r) / (F.softplus(r) + self.floor)

    def at_floor(self, r: Tensor) -> Tensor:
        """Boolean mask: the floor dominates the value (base(r) < floor), i.e. a collapsed spread."""
        # base is increasing, so base(r) < floor  <=>  r < base^-1(floor): one comparison per output
        threshold = self.log_floor if self.kind == "exp" else math.log(math.expm1(self.floor))
        return r < threshold

    def inverse(self, value: float) -> float:
        """The raw output r with value(r) = value (for initialising biases)."""
        base = value - self.floor
        if base <= 0:
            raise ValueError(f"value {value} is not above the floor {self.floor}")
        if self.kind == "exp":
            return math.log(base)
        return base + math.log(-math.expm1(-base))  # softplus^-1


SPREAD_TARGETS = ("variance", "std")


@dataclass(frozen=True)
class Spread:
    """A positivity map applied either to a Gaussian's variance or to its standard deviation."""

    positivity: Positivity = Positivity()
    on: str = "variance"

    def __post_init__(self) -> None:
        if self.on not in SPREAD_TARGETS:
            raise ValueError(f"head.spread must be one of {', '.join(SPREAD_TARGETS)}, got {self.on!r}")

    @property
    def _power(self) -> float:
        # variance = value**power: power 1 when the map gives the variance, 2 when it gives the std
        return 1.0 if self.on == "variance" else 2.0

    def log_var(self, r: Tensor) -> Tensor:
        """log variance for raw output r."""
        return self._power * self.positivity.log_value(r)

    def dlog_var(self, r: Tensor) -> Tensor:
        """d log(variance)/dr."""
        return self._power * self.positivity.dlog(r)

    def terms(self, r: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(log v, 1/v, d log v/dr) as fresh tensors, sharing work between them (analytic kernels)."""
        pos, p = self.positivity, self._power
        if pos.kind == "softplus":
            val = F.softplus(r).add_(pos.floor)
            inv = torch.reciprocal(val)
            dlog = torch.sigmoid(r).mul_(inv)
            log_v = val.log_()
        else:
            log_v = torch.logaddexp(r, r.new_tensor(pos.log_floor))
            dlog = (r - pos.log_floor).sigmoid_()
            inv = torch.exp(-log_v)
        if p != 1.0:  # the map gives the std: v = value^2
            inv.square_()
            dlog.mul_(p)
            log_v.mul_(p)
        return log_v, inv, dlog

    def std(self, r: Tensor) -> Tensor:
        """Standard deviation for raw output r."""
        return (0.5 * self.log_var(r)).exp()

    def at_floor(self, r: Tensor) -> Tensor:
        """Mask of raw outputs whose spread sits on the floor."""
        return self.positivity.at_floor(r)

    def raw_for_std(self, std: float) -> float:
        """Raw output giving this standard deviation."""
        return self.positivity.inverse(std**2 if self.on == "variance" else std)


def head_positivity(kind: str, floor: float) -> Positivity:
    """The map of a head's positive output from head.positivity and head.floor, refused by those names."""
    one_of("head.positivity", kind, KINDS)
    positive("head.floor", floor)
    return Positivity(kind, float(floor))
