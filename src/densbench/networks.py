"""The networks: a backbone from inputs to features, and the head that maps features to a family's raw outputs."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from densbench.families import Family

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU}


class MLP(nn.Module):
    """Fully connected layers with one activation; `hidden=[]` gives the identity (a linear model)."""

    def __init__(self, in_features: int, hidden: list[int] = (64, 64), activation: str = "relu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"model.activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            if int(h) < 1:
                raise ValueError(f"model.hidden widths must be >= 1, got {list(hidden)}")
            layers += [nn.Linear(width, int(h)), ACTIVATIONS[activation]()]
            width = int(h)
        self.net = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Head(nn.Module):
    """A linear layer from features to the family's raw output fields, returned by name.

    Fields named in `detached` are computed from features whose gradient is stopped, so their loss
    trains the head's rows for them but not the backbone (faithful heteroscedastic regression).
    """

    def __init__(self, family: Family, in_features: int, detached: frozenset[str] = frozenset()):
        super().__init__()
        self.family = family
        self.sizes = family.fields()
        self.linear = nn.Linear(in_features, sum(self.sizes.values()))
        with torch.no_grad():
            family.init_bias(self.split(self.linear.bias))
        self._buffers_of_family = list(family.buffers())
        for name, value in family.buffers().items():
            self.register_buffer(name, value)
        self.detached = frozenset(detached)

    def split(self, t: Tensor) -> dict[str, Tensor]:
        """Views of the last axis of `t`, one per field."""
        out, at = {}, 0
        for name, width in self.sizes.items():
            out[name] = t[..., at : at + width]
            at += width
        return out

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        """Named raw fields (and the family's buffers) for a batch of backbone features."""
        w, b = self.linear.weight, self.linear.bias.unsqueeze(1)
        # output-major memory ([n_raw, N], seen as an [N, n_raw] view): each field is then a dense
        # block, so per-field kernels and reductions over components need no strided access or copy
        raw = self.split(torch.addmm(b, w, features.T).T)
        if self.detached:
            stopped = self.split(torch.addmm(b, w, features.detach().T).T)
            raw.update({name: stopped[name] for name in self.detached})
        raw.update({name: getattr(self, name) for name in self._buffers_of_family})
        return raw

    def floor_hits(self, raw: dict[str, Tensor]) -> Tensor:
        """Spread outputs sitting on the positivity floor (0 for families without one)."""
        if not self.family.has_floor:
            return self.linear.weight.new_zeros((), dtype=torch.long)
        return self.family.floor_hits(raw)
