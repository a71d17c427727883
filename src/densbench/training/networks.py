"""The networks, as stacks: N models of one architecture whose weights lie along a leading model axis.

A run trains a stack of N >= 1 models with batched matrix products (``torch.baddbmm``): the jobs of a
sweep that differ only in seed or data split, or the members of a deep ensemble, train together in
one process, and a single job is a stack of one. Every model is initialised from its own seed exactly
as ``nn.Linear`` would be, and the batched kernels compute each model's product on its own, so a
model trains to the same numbers in a stack of 100 as alone.

Shapes: inputs [N, B, d] -> features [N, h, B] -> raw fields [N, B, width] by name. Every layer works
output-major (a feature is a row of B samples): activations and their gradients are then contiguous,
and so is each output field of the head, which the per-field kernels want.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from densbench.distributions.families import Family
from densbench.training.dropout import Masks

ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "gelu": nn.functional.gelu, "silu": nn.functional.silu}


def _uniform(seeds: list[int], shape: tuple[int, ...], bound: float, dtype: torch.dtype, salt: int) -> Tensor:
    """One tensor per model from its own generator: U(-bound, bound), [N, *shape]."""
    out = torch.empty(len(seeds), *shape, dtype=dtype)
    for i, seed in enumerate(seeds):
        g = torch.Generator().manual_seed(seed * 1_000_003 + salt)
        out[i].uniform_(-bound, bound, generator=g)
    return out


class StackedLinear(nn.Module):
    """N affine maps on output-major batches: [N, in, B] -> [N, out, B].

    Initialised as nn.Linear would be: weight [out, in] and bias from U(-1/sqrt(in), 1/sqrt(in)), per
    model from its own seed.
    """

    def __init__(self, seeds: list[int], in_features: int, out_features: int, layer: int):
        super().__init__()
        bound = 1 / math.sqrt(in_features)
        self.weight = nn.Parameter(_uniform(seeds, (out_features, in_features), bound, torch.float32, 2 * layer))
        self.bias = nn.Parameter(_uniform(seeds, (out_features, 1), bound, torch.float32, 2 * layer + 1))

    def forward(self, x: Tensor, models: Tensor | None = None) -> Tensor:
        """x [N, in, B] -> [N, out, B]; `models` picks a subset of the stack (then x has one slice per pick)."""
        w, b = (self.weight, self.bias) if models is None else (self.weight[models], self.bias[models])
        return torch.baddbmm(b, w, x)


class MLP(nn.Module):
    """N fully connected networks with one activation; `hidden=[]` gives the identity (a linear model).

    ``dropout`` (a rate, or one per model of the stack) drops units of every layer's input and of the
    features the head reads, as MC dropout does (Gal & Ghahramani 2016), with masks that depend only on
    the model (densbench.training.dropout); ``mc_samples``: how many stochastic passes evaluation averages
    over (0: evaluation runs the mean network, dropout off).
    """

    def __init__(self, in_features: int, hidden: list[int] = (64, 64), activation: str = "relu", seeds: list[int] = (0,),
                 dropout: float | list[float] = 0.0, mc_samples: int = 0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"model.activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        self.act = ACTIVATIONS[activation]
        layers, width = [], in_features
        for i, h in enumerate(hidden):
            if int(h) < 1:
                raise ValueError(f"model.hidden widths must be >= 1, got {list(hidden)}")
            layers.append(StackedLinear(list(seeds), width, int(h), layer=i))
            width = int(h)
        self.layers = nn.ModuleList(layers)
        self.out_features = width
        self.n_models = len(seeds)
        rates = [float(dropout)] * len(seeds) if isinstance(dropout, (int, float)) else [float(r) for r in dropout]
        if len(rates) != len(seeds) or any(not 0.0 <= r < 1.0 for r in rates):
            raise ValueError(f"model.dropout must be a rate in [0, 1) (or one per model), got {dropout}")
        self.mc_samples = int(mc_samples) if any(rates) else 0
        if any(rates):  # only then: a network without dropout keeps exactly the tensors it always had
            self.dropout_rates = rates  # settings, not state: a float buffer would be cast with the weights' precision
            self.register_buffer("dropout_seeds", torch.tensor([int(s) for s in seeds], dtype=torch.int64))
            # training passes so far, per model: selection and checkpoints keep every tensor row by row
            self.register_buffer("dropout_calls", torch.zeros(len(seeds), dtype=torch.int64))

    def forward(self, x: Tensor, models: Tensor | None = None, passes: Tensor | None = None) -> Tensor:
        """Inputs [N, B, d] -> features [N, h, B] (output-major); `passes`: the MC-dropout pass of each slice."""
        x = x.transpose(-1, -2)
        drop = self._dropper(models, passes, x) if hasattr(self, "dropout_seeds") else None
        for i, layer in enumerate(self.layers):
            x = self.act(layer(x if drop is None else x * drop(i, x.shape[-2]), models))
        return x if drop is None else x * drop(len(self.layers), x.shape[-2])

    def _dropper(self, models: Tensor | None, passes: Tensor | None, x: Tensor):
        """mask(layer, units) for this forward pass, or None when it runs the mean network."""
        if not self.training and passes is None:
            return None
        seeds, calls = self.dropout_seeds, self.dropout_calls
        rates = torch.tensor(self.dropout_rates, dtype=torch.float64, device=x.device)
        if models is not None:
            seeds, rates, calls = seeds[models], rates[models], calls[models]
        if self.training:
            passes = calls.clone()
            self.dropout_calls += 1
        return Masks(seeds, rates, passes, len(self.layers) + 1, x.shape[-1], x.dtype)


class Head(nn.Module):
    """N linear maps from features to the family's raw output fields, returned by name.

    Fields named in `detached` are computed from features whose gradient is stopped, so their loss
    trains the head's rows for them but not the backbone (faithful heteroscedastic regression).
    """

    def __init__(self, family: Family, in_features: int, seeds: list[int] = (0,), detached: frozenset[str] = frozenset(),
                 layer: int = 99):
        super().__init__()
        self.family = family
        self.sizes = family.fields()
        self.linear = StackedLinear(list(seeds), in_features, sum(self.sizes.values()), layer=layer)
        with torch.no_grad():
            family.init_bias(self.split(self.linear.bias.transpose(-1, -2)))
        self._buffers_of_family = list(family.buffers())
        for name, value in family.buffers().items():
            self.register_buffer(name, value.expand(len(seeds), *value.shape[1:]).clone())
        self.detached = frozenset(detached)

    def split(self, t: Tensor) -> dict[str, Tensor]:
        """Views of the last axis of `t`, one per field."""
        out, at = {}, 0
        for name, width in self.sizes.items():
            out[name] = t[..., at : at + width]
            at += width
        return out

    def forward(self, features: Tensor, models: Tensor | None = None) -> dict[str, Tensor]:
        """Named raw fields [N, B, width] (and the family's buffers) for output-major features [N, h, B]."""
        raw = self.split(self.linear(features, models).transpose(-1, -2))
        if self.detached:
            stopped = self.split(self.linear(features.detach(), models).transpose(-1, -2))
            raw.update({name: stopped[name] for name in self.detached})
        raw.update({name: getattr(self, name) if models is None else getattr(self, name)[models] for name in self._buffers_of_family})
        return raw

    def floor_hits(self, raw: dict[str, Tensor]) -> Tensor:
        """Spread outputs sitting on the positivity floor, per model [N] (0 for families without one)."""
        if not self.family.has_floor:
            return raw[next(iter(self.sizes))].new_zeros(raw[next(iter(self.sizes))].shape[0], dtype=torch.long)
        return self.family.floor_hits(raw)
