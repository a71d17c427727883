"""Distribution families a head can output: one module per family, found and registered on import.

``families.get("student_t")`` returns the class; ``families.load_all()`` imports every module of this
package so that each registers itself (and its closed forms, see densbench.distributions.ops). Torch-free.
"""

from __future__ import annotations

from densbench.distributions.families.base import FAMILIES, Family, register

__all__ = ["Family", "register", "get", "load_all"]

load_all = FAMILIES.load_all
get = FAMILIES.get
