"""Deep evidential regression (Amini et al., NeurIPS 2020): a normal-inverse-gamma head, Student-t predictive.

Fields: ``loc`` (gamma, free) and ``nu``, ``alpha``, ``beta`` through one positivity map v(r) (softplus
plus a floor by default, the paper's ``evidence`` function): nu = v, alpha = 1 + v, beta = v. The NIG
prior NIG(gamma, nu, alpha, beta) over (mu, sigma^2) of a Gaussian likelihood, integrated out, gives
the marginal the paper trains on (its Sec. 3.2; NIG_NLL in its code, losses/continuous.py): with
Omega = 2 beta (1 + nu),

    NLL = 1/2 log(pi/nu) - alpha log Omega + (alpha + 1/2) log((y - gamma)^2 nu + Omega) + lgamma(alpha) - lgamma(alpha + 1/2),

which is the NLL of the Student-t with df 2 alpha, loc gamma and scale^2 = beta (1 + nu) / (nu alpha)
(the paper's St(y; gamma, beta (1 + nu)/(nu alpha), 2 alpha); 2 alpha scale^2 = Omega / nu). It is
computed here as

    NLL = 1/2 log(pi Omega / nu) + (alpha + 1/2) log1p(q) + lgamma(alpha) - lgamma(alpha + 1/2),  q = nu (y - gamma)^2 / Omega,

the same value without the cancellation of two large logarithms. With w = (alpha + 1/2) q / (1 + q):
d/d gamma = -(2 alpha + 1) (nu/Omega) (y - gamma) / (1 + q), d/d alpha = log1p(q) + psi(alpha) - psi(alpha + 1/2),
d/d log beta = 1/2 - w and d/d log nu = (w - 1/2) / (1 + nu). The predictive is torch's StudentT, so
the closed forms student_t.py registers for it (CDF, quantiles, CRPS) apply as they are.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from densbench.distributions.families.base import (
    Family,
    Raw,
    register,
    total,
    weighted_total,
)
from densbench.distributions.families.student_t import StudentT
from densbench.distributions.positivity import head_positivity
from densbench.distributions.special import digamma_half_step, log_gamma_half_step
from densbench.lazy import D, torch

if TYPE_CHECKING:
    from torch import Tensor

LOG_2, LOG_PI = math.log(2.0), math.log(math.pi)


@register
class Evidential(Family):
    """Normal-inverse-gamma outputs (gamma, nu, alpha, beta); the predictive is their Student-t marginal."""

    name = "evidential"
    tasks = ("regression",)
    # gamma + scale * t_{2 alpha}: a location-scale predictive whose shape (df) varies, like student_t's
    traits = frozenset({"location_scale"})
    distribution_type = "torch.distributions.StudentT"
    has_floor = True

    def __init__(self, positivity: str = "softplus", floor: float = 1e-6) -> None:
        self.evidence_map = head_positivity(positivity, floor)

    def fields(self) -> dict[str, int]:
        return {"loc": 1, "nu": 1, "alpha": 1, "beta": 1}

    # ---- parameters -------------------------------------------------------------------------------
    def nig(self, raw: Raw) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(gamma, nu, alpha, beta) in standardised units, [..., B, 1] each."""
        v = self.evidence_map.value
        return raw["loc"], v(raw["nu"]), 1 + v(raw["alpha"]), v(raw["beta"])

    def _logs(self, raw: Raw) -> tuple[Tensor, Tensor, Tensor]:
        """(log nu, alpha, log Omega), Omega = 2 beta (1 + nu), from the maps' log forms (no overflow)."""
        m = self.evidence_map
        log_nu = m.log_value(raw["nu"])
        # log(1 + nu) = logaddexp(log nu, 0): finite however large or small nu is, and its autograd
        # derivative is sigmoid(log nu) throughout (F.softplus turns linear above 20, derivative 1)
        log_omega = LOG_2 + m.log_value(raw["beta"]) + torch.logaddexp(log_nu, log_nu.new_zeros(()))
        return log_nu, 1 + m.value(raw["alpha"]), log_omega

    def _derivative(self, r: Tensor) -> Tensor:
        """d v(r)/dr = v(r) d log v(r)/dr."""
        return self.evidence_map.value(r) * self.evidence_map.dlog(r)

    def evidence(self, raw: Raw) -> Tensor:
        """The total evidence 2 nu + alpha the paper's regulariser weighs |y - gamma| by, [..., B, 1]."""
        _, nu, alpha, _ = self.nig(raw)
        return 2 * nu + alpha

    def evidence_kernel(self, raw: Raw) -> tuple[Tensor, dict[str, Tensor]]:
        """2 nu + alpha (detached) and its derivatives by raw field (the others are zero)."""
        fixed = {f: raw[f].detach() for f in self.fields()}
        return self.evidence(fixed), {"nu": 2 * self._derivative(fixed["nu"]), "alpha": self._derivative(fixed["alpha"])}

    # ---- the predictive ---------------------------------------------------------------------------
    def distribution(self, raw: Raw, loc: Any = 0.0, scale: Any = 1.0):
        """StudentT(2 alpha, gamma, sqrt(beta (1 + nu) / (nu alpha))), batch shape [..., B], in original units."""
        log_nu, alpha, log_omega = self._logs(raw)
        sigma = torch.exp(0.5 * (log_omega - LOG_2 - log_nu - torch.log(alpha)))[..., 0]
        return D.StudentT(2 * alpha[..., 0], loc + scale * raw["loc"][..., 0], scale * sigma, validate_args=False)

    def moments(self, raw: Raw) -> tuple[Tensor, Tensor]:
        # Var = beta (1 + nu) / (nu (alpha - 1)): alpha - 1 is the map's value itself, where 2 alpha - 2
        # from the df would cancel in float32 for alpha near 1
        log_nu, _, log_omega = self._logs(raw)
        return raw["loc"], torch.exp(log_omega - LOG_2 - log_nu - self.evidence_map.log_value(raw["alpha"]))

    # the predictive is torch's StudentT, so scipy's t is its reference as for head=student_t
    reference = StudentT.reference

    def floor_hits(self, raw: Raw) -> Tensor:
        # beta on its floor is what collapses the predictive spread (nu or alpha - 1 there widen it)
        return total(self.evidence_map.at_floor(raw["beta"]))

    # ---- the NLL and its gradient ----------------------------------------------------------------
    def _nll(self, raw: Raw, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Per-sample NLL and what its gradient reuses: (nll, alpha, nu/Omega, y - gamma, q)."""
        log_nu, alpha, log_omega = self._logs(raw)
        k = torch.exp(log_nu - log_omega)
        d = y - raw["loc"]
        q = k * d * d
        # lgamma(alpha) - lgamma(alpha + 1/2) as one difference: for a large alpha the two are large and nearly equal
        nll = (-log_gamma_half_step(alpha)
               + 0.5 * (LOG_PI + log_omega - log_nu) + (alpha + 0.5) * torch.log1p(q))
        return nll, alpha, k, d, q

    def nll_terms(self, raw: Raw, y: Tensor) -> Tensor:
        """Per-sample NIG marginal NLL of standardised targets y (see the module docstring)."""
        return self._nll(raw, y)[0]

    def nll_kernel(self, raw: Raw, y: Tensor, weight: Any):
        """Analytic path: the weighted NLL sum and its gradients by field (see the module docstring)."""
        fixed = {f: raw[f].detach() for f in self.fields()}
        nll, alpha, k, d, q = self._nll(fixed, y)
        dlog = self.evidence_map.dlog
        w = (alpha + 0.5) * q / (1 + q)
        d_log_beta = 0.5 - w
        # 1 / (1 + nu) = sigmoid(-log nu)
        d_log_nu = -d_log_beta * torch.sigmoid(-self.evidence_map.log_value(fixed["nu"]))
        # psi(alpha) - psi(alpha + 1/2) as one difference, so that log1p(q) is not lost against psi(alpha) for a large alpha
        d_alpha = torch.log1p(q) - digamma_half_step(alpha)
        grads = {"loc": -(2 * alpha + 1) * k * d / (1 + q), "nu": d_log_nu * dlog(fixed["nu"]),
                 "alpha": d_alpha * self._derivative(fixed["alpha"]), "beta": d_log_beta * dlog(fixed["beta"])}
        return weighted_total(nll, weight), {f: g.mul_(weight) for f, g in grads.items()}
