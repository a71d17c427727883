"""What every objective declares and provides; the registry; the contract of the analytic path.

An objective (``loss=``) is a function of a family's raw outputs and the targets. It declares, at
class level, ``name`` (its registry key and config file conf/loss/<name>.yaml) and ``needs_truth``
(trains on the known true distribution instead of samples), and answers

- ``accepts(family)``: None, or why it cannot train that family (a sweep records the pair as skipped);
- ``analytic_refusal(family)``: None, or why grad=analytic has no closed form for the pair (an
  objective whose analytic path is a family's closed form names that method in ``family_kernel``).

It provides the per-sample loss for the autograd path (``terms``, plus ``constant``: the part that
depends on the targets alone, computed once per target tensor) and, for grad=analytic, ``kernel``.

The analytic contract (densbench.objectives.analytic.AnalyticLoss): ``kernel(family, raw, y, extra, weight)``
returns ``(value, grads)`` with value = sum_i w_i l_i (one value per stacked model) and grads[field] =
d value / d raw[field] for every field of ``family.fields()``, already multiplied by the weight w
(1/B for a mean, 1 for a sum, a tensor [..., B, 1] for per-sample weights). The raw fields are the only
differentiable arguments; targets and settings are closed over. The kernel may overwrite tensors it
created, never its inputs. Torch-free at import.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Callable, ClassVar

from densbench.errors import one_of
from densbench.registry import Registry

if TYPE_CHECKING:
    from torch import Tensor

    from densbench.distributions.families import Family

REDUCTIONS = ("mean", "sum")
GRADS = ("analytic", "autograd")

OBJECTIVES: Registry["Objective"] = Registry("densbench.objectives", "objective")
register = OBJECTIVES.register


def reduce(t: Tensor, reduction: str) -> Tensor:
    """Mean or sum over samples (and width): a scalar, or one value per stacked model."""
    if t.dim() <= 2:
        return t.mean() if reduction == "mean" else t.sum()
    return t.mean((-2, -1)) if reduction == "mean" else t.sum((-2, -1))


_CONSTANTS: dict[tuple, tuple] = {}


def target_constant(name: str, fn: Callable[[Tensor], Tensor], t: Tensor, reduction: str) -> Tensor:
    """reduce(fn(t)) for a target tensor t, remembered while t is unchanged.

    Terms that depend on the targets alone (lgamma(y + 1), the target Gaussian's entropy) cost more
    than the rest of the loss, and full-batch training passes the same target tensor every step.
    """
    key = (t.data_ptr(), t._version, tuple(t.shape), t.dtype, t.device, reduction)
    hit = _CONSTANTS.get(name)
    if hit is not None and hit[0] == key and hit[1]() is t:
        return hit[2]
    value = reduce(fn(t), reduction).detach()
    _CONSTANTS[name] = (key, weakref.ref(t), value)
    return value


class Objective:
    """Base class: see the module docstring."""

    name: ClassVar[str] = ""
    needs_truth: ClassVar[str | None] = None  # "gaussian": trains on the true Gaussian's mean and variance
    # the loss holds stop-gradient terms (beta-NLL's weights, faithful's mean): its gradient is by
    # design not the derivative of its value, so it is checked against autograd, not finite differences
    stops_gradients: ClassVar[bool] = False
    # the family method whose closed form grad=analytic uses, and what it computes (for the refusal)
    family_kernel: ClassVar[tuple[str, str] | None] = None

    def __init__(self, reduction: str = "mean") -> None:
        one_of("loss.reduction", reduction, REDUCTIONS)
        self.reduction = reduction

    @property
    def label(self) -> str:
        """How reports name the objective."""
        return self.name

    # ---- declarations --------------------------------------------------------------------------
    def accepts(self, family: Family) -> str | None:
        """None, or why this objective cannot train `family`."""
        return None

    def analytic_refusal(self, family: Family) -> str | None:
        """None, or why grad=analytic has no closed form for this pair."""
        if self.family_kernel is not None:
            method, what = self.family_kernel
            if callable(getattr(family, method, None)):
                return None
            return f"head={family.name} has no closed-form {what} gradient; use grad=autograd"
        return None if callable(getattr(self, "kernel", None)) else f"loss={self.name} has no analytic gradient"

    def detached_fields(self, family: Family) -> frozenset[str]:
        """Fields computed from detached backbone features (their gradient stops at the head)."""
        return frozenset()

    # ---- the loss --------------------------------------------------------------------------------
    def terms(self, family: Family, raw: dict, y: Tensor, extra: tuple) -> Tensor:  # pragma: no cover
        """Per-sample loss [..., B, 1] (autograd path), without `constant`."""
        raise NotImplementedError

    def constant(self, family: Family, y: Tensor, extra: tuple) -> tuple[str, Callable, Tensor] | None:
        """(name, fn, tensor): a per-sample term fn(tensor) of the targets alone, or None."""
        return None

    def loss(self, family: Family, raw: dict, y: Tensor, extra: tuple, grad: str) -> Tensor:
        """The reduced loss: a scalar, or one value per stacked model."""
        if grad == "analytic":
            from densbench.objectives.analytic import analytic_loss, kernel_of

            kernel = kernel_of(self)
            weight = 1.0 / raw[next(iter(family.fields()))].shape[-2] if self.reduction == "mean" else 1.0
            value = analytic_loss(lambda r: kernel(family, {**raw, **r}, y, extra, weight), raw, list(family.fields()))
        elif grad == "autograd":
            value = reduce(self.terms(family, raw, y, extra), self.reduction)
        else:
            one_of("grad", grad, GRADS)
        const = self.constant(family, y, extra)
        if const is not None:
            value = value + target_constant(f"{self.name}:{const[0]}", const[1], const[2], self.reduction)
        return value
