"""Distribution families a head can output: one module per family, found and registered on import.

``families.get("student_t")`` returns the class; ``families.load_all()`` imports every module of this
package so that each registers itself (and its closed forms, see densbench.ops). Torch-free.
"""

from __future__ import annotations

import importlib
import pkgutil

from densbench.families.base import Family, register, registry

__all__ = ["Family", "register", "registry", "get", "load_all"]

_LOADED = False


def load_all() -> dict[str, type[Family]]:
    """Import every family module once; returns the registry (name -> class)."""
    global _LOADED
    if not _LOADED:
        for info in pkgutil.iter_modules(__path__):
            if info.name != "base":
                importlib.import_module(f"{__name__}.{info.name}")
        _LOADED = True
    return registry()


def get(name: str) -> type[Family]:
    """The family class registered under `name`."""
    reg = load_all()
    if name not in reg:
        raise KeyError(f"no distribution family {name!r}; registered: {', '.join(sorted(reg))}")
    return reg[name]
