"""Gauss quadrature rules on the reference interval, computed once per size (NumPy's nodes and weights).

Every rule in densbench comes from here: Gauss-Legendre on [-1, 1] (integrals over a bin, a tail, a panel)
and Gauss-Hermite for weight exp(-t^2) (expectations over a Normal). Torch-free at import.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=16)
def legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights of n points on [-1, 1]."""
    return np.polynomial.legendre.leggauss(n)


@lru_cache(maxsize=8)
def hermite(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Hermite nodes and weights of n points for weight exp(-t^2)."""
    return np.polynomial.hermite.hermgauss(n)
