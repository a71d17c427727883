"""Dropout masks that depend only on what they drop: the model's seed, the pass, the layer, the unit and the row.

A stack trains N models in one batched product, so masks drawn from one generator would depend on
which models share the stack (and a model would train differently alone than in a stack of 80). Each
mask bit here is a counter-based hash of (model seed, pass, layer, unit, row) instead: integer
arithmetic, exact on every machine, the same for a model in any stack (rows are keyed by their place in
the process's batch, so under DDP the masks depend on the world size as the batches do). Training passes count the
optimisation steps (0, 1, ...); the T evaluation passes of MC dropout use their own keys (-1, ..., -T),
so evaluation never repeats a training mask.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

_MASK64 = (1 << 64) - 1
# splitmix64's constants (Steele et al. 2014) as signed 64-bit integers: torch has no uint64 arithmetic
_GOLDEN, _MIX1, _MIX2 = ((c + (1 << 63)) % (1 << 64) - (1 << 63) for c in
                         (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))
PASS_ELEMENTS = 1 << 22  # activations one batched forward of MC dropout's passes may hold (16 MiB in float32)
_FMIX1, _FMIX2 = 0x85EBCA6B - (1 << 32), 0xC2B2AE35 - (1 << 32)  # murmur3's finaliser constants as int32
_BITS = 24  # a unit is kept when 24 hash bits, read as an integer, reach rate * 2^24


def _shift(z: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic: mask the sign's copies away)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def _mix(z: Tensor) -> Tensor:
    """splitmix64's finaliser on int64, wrapping as unsigned arithmetic would."""
    z = z + _GOLDEN
    z = (z ^ _shift(z, 30)) * _MIX1
    z = (z ^ _shift(z, 27)) * _MIX2
    return z ^ _shift(z, 31)


class Masks:
    """The dropout masks of one forward pass, one call per layer: mask(layer, units) -> [N, units, rows].

    What depends only on the models (each layer's key, the thresholds, the scales) is computed once per
    pass, for every layer at once: those tensors hold a few numbers each, and each of their operations
    costs as much as one over a whole layer's mask.
    """

    def __init__(self, seeds: Tensor, rates: Tensor, passes: Tensor, layers: int, rows: int, dtype: torch.dtype) -> None:
        n = seeds.shape[0]
        layer = torch.arange(layers, dtype=torch.int64, device=seeds.device).view(-1, 1)
        # one well-mixed key per (layer, model, pass) in 64 bits, of which the low 32 key the layer's elements
        head = _mix(_mix(seeds.to(torch.int64) * 1_000_003 + layer) ^ passes.to(torch.int64))
        self.keys = (((head & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000).to(torch.int32).view(layers, n, 1, 1)
        self.threshold = torch.round(rates.to(torch.float64) * (1 << _BITS)).to(torch.int32).view(n, 1, 1) - (1 << (_BITS - 1))
        self.scale = (1.0 / (1.0 - rates.to(torch.float64))).to(dtype).view(n, 1, 1)
        self.zero = torch.zeros((), dtype=dtype, device=seeds.device)
        self.rows = rows

    def __call__(self, layer: int, units: int) -> Tensor:
        """Inverted-dropout multipliers [N, units, rows] of layer `layer`'s input: 0 dropped, 1 / (1 - rate) kept."""
        # per element, the layer's key xor the element's index through murmur3's 32-bit finaliser, whose top
        # 24 bits decide: 32-bit lanes, and in place, because the masks are most of a dropout network's training time
        z = self.keys[layer] ^ _index(units, self.rows, self.keys.device)
        for bits, multiplier in ((16, _FMIX1), (13, _FMIX2), (16, None)):
            z ^= _shift32(z, bits)
            if multiplier is not None:
                z *= multiplier
        z >>= 32 - _BITS  # arithmetic: the top 24 bits read as a signed number, in [-2^23, 2^23)
        return torch.where(z >= self.threshold, self.scale, self.zero)


def keep_mask(seeds: Tensor, rates: Tensor, passes: Tensor, layer: int, units: int, rows: int, dtype: torch.dtype) -> Tensor:
    """Inverted-dropout multipliers [N, units, rows]: 0 for a dropped unit, 1 / (1 - rate) for a kept one.

    seeds, rates, passes: one per model ([N]); a model with rate 0 keeps every unit (multiplier 1).
    """
    return Masks(seeds, rates, passes, layer + 1, rows, dtype)(layer, units)


def _shift32(z: Tensor, bits: int) -> Tensor:
    """Logical right shift of int32 (a new tensor)."""
    out = z >> bits
    out &= (1 << (32 - bits)) - 1
    return out


@lru_cache(maxsize=8)
def _index(units: int, rows: int, device: torch.device) -> Tensor:
    """Each element's index in a [units, rows] layer input, [1, units, rows] int32 (shared: it is never written to)."""
    return torch.arange(units * rows, dtype=torch.int32, device=device).view(1, units, rows)


def stochastic_passes(module: Any, x: Tensor, models: Tensor | None, samples: int) -> list[dict[str, Tensor]]:
    """Raw outputs of MC dropout's evaluation passes -1, ..., -samples, for inputs [N, B, d]: one dict per pass.

    Several passes go through one batched forward (models repeated, each slice with its pass's masks),
    as many as fit in PASS_ELEMENTS activations.
    """
    n, rows = x.shape[0], x.shape[1]
    models = torch.arange(n, device=x.device) if models is None else models
    width = max([x.shape[-1], *(layer.weight.shape[1] for layer in module.backbone.layers)])
    group = max(1, PASS_ELEMENTS // (n * rows * width))
    out = []
    for first in range(0, samples, group):
        g = min(group, samples - first)
        keys = -1 - torch.arange(first, first + g, device=x.device).repeat_interleave(n)  # pass-major slices
        raw = module(x.repeat(g, 1, 1), models.repeat(g), keys)
        out += [{k: v[t * n:(t + 1) * n] for k, v in raw.items()} for t in range(g)]
    return out
