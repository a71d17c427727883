"""Quantiles by safeguarded Newton steps on a CDF (rtsafe of Numerical Recipes), vectorised over entries.

An optional ``slope`` (an estimate of the density's derivative near each root, e.g. a secant over the
cell that brackets it) lets an entry stop without evaluating the point a Newton step lands on: that
point lies within about dx^2 |f'| / (2 f) of the root, and where ten times this bound is a thousandth
of the tolerance (in x and in F), a further evaluation could only confirm it. Later steps update the
slope by the secant of the last two densities.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from densbench.lazy import torch

if TYPE_CHECKING:
    from torch import Tensor


def solve_quantiles(Ff: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], p: Tensor, lo: Tensor, hi: Tensor,
                    x0: Tensor | None = None, max_iter: int = 200, slope: Tensor | None = None,
                    rtol: float | None = None) -> Tensor:
    """x with F(x) = p for every entry, given brackets F(lo) <= p <= F(hi) (and optionally first guesses x0).

    ``Ff(x, idx)`` evaluates the CDF and the density at points x for the entries with flat indices
    idx. Newton steps x - (F(x) - p) / f(x) inside the bracket, which shrinks around the root every
    step; a step that would leave it, is not finite, or is not at least half the previous step
    (Newton bouncing between the modes of a mixture) is replaced by bisection (rtsafe of Numerical
    Recipes), so every entry converges at least as fast as bisection and quadratically near its root.
    Converged entries leave the active set, and the loop ends when none is left: accuracy is relative,
    1e-10 in float64 (or ``rtol``) and two ulps in float32 (a component narrower than that must be resolved too).

    ``slope``: see the module docstring.
    """
    x = 0.5 * (lo + hi) if x0 is None else x0
    tol = (rtol or 1e-10) if x.dtype == torch.float64 else 2 * torch.finfo(x.dtype).eps
    # float32 resolves a CDF only to ~1e-7: where it equals p to a few ulps no step can do better,
    # and in the tails (small density) the step criterion would leave such entries bisecting
    resolved = 0.0 if x.dtype == torch.float64 else 4 * torch.finfo(x.dtype).eps
    shape = x.shape
    x, lo, hi, p = (t.expand(shape).reshape(-1).clone() for t in (x, lo, hi, p))
    active = torch.arange(x.numel(), device=x.device)
    xa, loa, hia, pa, last = x, lo, hi, p, (hi - lo).abs()
    sa = None if slope is None else slope.expand(shape).reshape(-1).clone()
    prev: tuple[Tensor, Tensor] | None = None
    for _ in range(max_iter):
        F, f = Ff(xa, active)
        gap = F - pa
        below = gap < 0
        loa, hia = torch.where(below, xa, loa), torch.where(below, hia, xa)
        dx = gap / f
        newton = xa - dx
        use = (newton >= loa) & (newton <= hia) & (2 * dx.abs() <= last)  # False for NaN or infinite steps too
        new = torch.where(use, newton, 0.5 * (loa + hia))
        new = torch.where(gap == 0, xa, new)  # an exact root stays where it is
        last = (new - xa).abs()
        scale = 1 + new.abs()
        # in x to tol, and in the CDF to tol too where a narrow component makes the density large
        # (there x alone would leave F off by density x tol x |x|), as far as float resolution allows
        f_ok = gap.abs() <= torch.clamp(4 * torch.finfo(x.dtype).eps * scale * f, min=tol)
        done = (((last <= tol * scale) | (hia - loa <= tol * scale)) & f_ok) | (gap.abs() <= resolved)
        if sa is not None:
            if prev is not None:
                secant = (f - prev[1]) / (xa - prev[0])
                sa = torch.where(torch.isfinite(secant), secant, sa)
            landed = 10 * 0.5 * dx * dx * sa.abs() / f
            # far inside the tolerance, so an early stop costs no accuracy against a confirmed one
            done |= use & (dx.abs() <= 1e-4 * scale) & (landed <= 1e-3 * tol * scale) & (landed * f <= 1e-3 * tol)
            prev = (xa, f)
        x[active] = new
        keep = (~done).nonzero().squeeze(1)
        if not len(keep):
            break
        active, xa, loa, hia, pa, last = (t.index_select(0, keep) for t in (active, new, loa, hia, pa, last))
        if sa is not None:
            sa, prev = sa.index_select(0, keep), (prev[0].index_select(0, keep), prev[1].index_select(0, keep))
    return x.reshape(shape)
