"""Training objectives (``loss=``): one module per objective, found and registered on import. Torch-free."""

from __future__ import annotations

from densbench.objectives.base import OBJECTIVES, Objective, register

__all__ = ["Objective", "register", "get", "load_all"]

load_all = OBJECTIVES.load_all
get = OBJECTIVES.get
