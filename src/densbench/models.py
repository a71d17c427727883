"""Backbones: networks from inputs to features; heads add the last linear layer."""

from __future__ import annotations

from torch import Tensor, nn

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
