"""The mixture density network (Bishop 1994): the NLL objective, trained with a Gaussian-mixture head by default.

Its own objective only so that a run keeps its name: reports, HParams and ``results.load`` label a
``loss=mdn`` run ``mdn``, not ``nll``. Everything it computes is the NLL's.
"""

from __future__ import annotations

from densbench.objectives.base import register
from densbench.objectives.nll import NLL


@register
class MDN(NLL):
    """-log p(y | x) under a mixture head (any head is accepted, as for nll)."""

    name = "mdn"
