"""``from densbench.lazy import torch``: torch, imported the first time an attribute is used.

Family and objective modules declare what they accept (tasks, traits, parameters) at class level,
and densbench checks a config against every registered family and objective before training. That
check must not pay torch's import (1.2-2 s on a 2-core machine), so those modules reach torch through
this handle: the declarations import nothing heavy, and the first tensor operation imports torch. An
attribute, once looked up, is stored on the handle, so later uses cost what a module attribute costs.
"""

from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    """A module imported on first attribute access."""

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "_lazy_name", name)

    def __getattr__(self, attr: str) -> Any:
        value = getattr(importlib.import_module(object.__getattribute__(self, "_lazy_name")), attr)
        object.__setattr__(self, attr, value)
        return value

    def __repr__(self) -> str:
        return f"<lazy module {object.__getattribute__(self, '_lazy_name')}>"


torch = LazyModule("torch")
F = LazyModule("torch.nn.functional")
D = LazyModule("torch.distributions")
