"""Training objectives (``loss=``): one module per objective, found and registered on import. Torch-free."""

from __future__ import annotations

import importlib
import pkgutil

from densbench.objectives.base import Objective, register, registry

__all__ = ["Objective", "register", "registry", "get", "load_all"]

_LOADED = False


def load_all() -> dict[str, type[Objective]]:
    """Import every objective module once; returns the registry (name -> class)."""
    global _LOADED
    if not _LOADED:
        for info in pkgutil.iter_modules(__path__):
            if info.name != "base":
                importlib.import_module(f"{__name__}.{info.name}")
        _LOADED = True
    return registry()


def get(name: str) -> type[Objective]:
    """The objective class registered under `name`."""
    reg = load_all()
    if name not in reg:
        raise KeyError(f"no objective {name!r}; registered: {', '.join(sorted(reg))}")
    return reg[name]
