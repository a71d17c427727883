"""A stack's parameters as views of one flat buffer (and their gradients of another), so the optimiser steps them all at once.

A stack's networks have a handful of parameter tensors (weights and biases per layer), and an
optimiser step runs about ten elementwise operations per tensor: on these tiny networks each costs
its dispatch, not its arithmetic, and Adam was a third of a training step. With every parameter a
view of one buffer, the optimiser is handed that buffer as its single parameter: the same
elementwise arithmetic (every model's numbers are those of its own tensors, in a stack or alone),
one tenth of the calls. Autograd still sees the layers' own parameters; their gradients are views
of a second buffer, which it accumulates into in place. Checkpoints keep the optimiser state per
parameter tensor (``per_parameter`` / ``flat``), so they do not depend on this layout.

The buffer is padded to a multiple of PAD elements (zeros that stay zero): a fused optimiser kernel
(Adam's ``fused=True``) rounds the last elements of a tensor that do not fill a vector register
differently, and without the padding which elements those are would depend on how many models
share the stack; with it every element is computed by the same vector instructions, in a stack or alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


PAD = 64  # elements: a multiple of every vector width (AVX-512 holds 16 float32) times an unrolling of four


class FlatParameters:
    """Views of one data buffer and one gradient buffer behind a list of parameters; ``param`` is what the optimiser steps."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        self.params = params
        first = params[0]
        total = sum(p.numel() for p in params)
        data = torch.zeros(-(-total // PAD) * PAD, dtype=first.dtype, device=first.device)
        grad = torch.zeros_like(data)
        self.layout: list[tuple[int, int, torch.Size]] = []
        self.grads: list[Tensor] = []
        at = 0
        for p in params:
            n = p.numel()
            data[at : at + n].copy_(p.detach().reshape(-1))
            p.data = data[at : at + n].view_as(p)
            self.grads.append(grad[at : at + n].view_as(p))
            self.layout.append((at, n, p.shape))
            at += n
        # a plain attribute, not a module's: the buffer must not become a parameter of the network
        self.param = nn.Parameter(data)
        self.param.grad = grad

    def zero_grad(self) -> None:
        """Zero every gradient in place, and hand autograd the views to accumulate into (Lightning may have
        set a parameter's gradient to None since the last step)."""
        self.param.grad.zero_()
        for p, g in zip(self.params, self.grads):
            if p.grad is not g:
                p.grad = g

    def per_parameter(self, state: dict[str, Any]) -> dict[str, Any]:
        """An optimiser state_dict of the flat parameter as the same optimiser over the parameter list would have it."""
        group = state["param_groups"][0]
        out = {}
        for key, value in state["state"].get(0, {}).items():
            for i, (at, n, shape) in enumerate(self.layout):
                out.setdefault(i, {})[key] = _slice(value, at, n, shape, self.param.numel())
        return {"state": out, "param_groups": [{**group, "params": list(range(len(self.layout)))}]}

    def flat(self, state: dict[str, Any]) -> dict[str, Any]:
        """The inverse of per_parameter: a state_dict for the optimiser over the flat parameter."""
        group = state["param_groups"][0]
        parts = [state["state"].get(i, {}) for i in range(len(self.layout))]
        merged: dict[str, Any] = {}
        for key, value in (parts[0] if parts else {}).items():
            if isinstance(value, Tensor) and value.dim() > 0:
                flat = torch.cat([p[key].reshape(-1) for p in parts])
                merged[key] = torch.cat([flat, flat.new_zeros(self.param.numel() - flat.numel())])  # the padding
            else:
                merged[key] = value  # shared by the group (Adam's step count)
        return {"state": {0: merged} if merged else {}, "param_groups": [{**group, "params": [0]}]}


def _slice(value: Any, at: int, n: int, shape: torch.Size, total: int) -> Any:
    if isinstance(value, Tensor) and value.dim() == 1 and value.numel() == total:
        return value[at : at + n].view(shape).clone()  # a view would carry the whole buffer into a checkpoint
    return value
