"""The analytic gradient path: a torch.autograd.Function whose backward is a closed form.

The forward runs an objective's kernel (see densbench.objectives.base for its contract), which
returns the loss and its gradients with respect to the raw output fields in one fused pass; the
backward hands those gradients over, scaled by the incoming gradient. With ``loop.compile=true``
the kernel runs through torch.compile.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

Kernel = Callable[[dict], tuple]
_COMPILE = {"enabled": False}
_COMPILED: dict[int, Callable] = {}


def use_compiled_kernels(enabled: bool = True) -> None:
    """Run the analytic kernels through torch.compile (each becomes one fused loop) or eagerly."""
    _COMPILE["enabled"] = enabled


class AnalyticLoss(torch.autograd.Function):
    """Forward: a kernel's loss and gradients; backward: those gradients times the incoming one."""

    @staticmethod
    def forward(ctx, kernel: Kernel, names: list[str], *fields: Tensor) -> Tensor:  # type: ignore[override]
        value, grads = kernel(dict(zip(names, fields)))
        ctx.kernel, ctx.names = kernel, names
        ctx.save_for_backward(*fields)
        ctx.grads = [grads[n] for n in names]
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):  # type: ignore[override]
        grads, ctx.grads = ctx.grads, None  # handed over without a copy
        if grads is None:  # a second backward through a retained graph: compute them again
            _, again = ctx.kernel(dict(zip(ctx.names, ctx.saved_tensors)))
            grads = [again[n] for n in ctx.names]
        # differentiating the loss itself (g = 1) is the usual case: skip a pass over every gradient
        if not (g.device.type == "cpu" and g.numel() == 1 and g.item() == 1.0):
            grads = [t * g.reshape(g.shape + (1, 1)) for t in grads]
        return (None, None, *grads)


def kernel_of(objective) -> Callable:
    """The objective's kernel, compiled once per objective when compiled kernels are on."""
    if not _COMPILE["enabled"]:
        return objective.kernel
    key = id(objective)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(objective.kernel, dynamic=True)
    return _COMPILED[key]


def analytic_loss(kernel: Kernel, raw: dict, names: list[str]) -> Tensor:
    """The kernel's loss, differentiable in the raw fields `names` through its closed-form gradients."""
    return AnalyticLoss.apply(kernel, names, *(raw[n] for n in names))
