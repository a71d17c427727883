"""Student-t(nu, mu, sigma): a heavy-tailed location-scale family, with learned or fixed degrees of freedom.

Fields: ``loc``, ``spread`` (sigma through a positivity map) and, when ``df`` is learned, ``df`` with
nu = 2 + softplus(raw): the variance sigma^2 nu / (nu - 2) then exists (beta-NLL weights, sharpness),
and so does the CRPS (nu > 1). With z = (y - mu)/sigma the NLL is

    -lgamma((nu+1)/2) + lgamma(nu/2) + 1/2 log(nu pi) + log sigma + (nu+1)/2 log(1 + z^2/nu),

whose gradients are d/d mu = -(nu+1) z / (sigma (nu + z^2)), d/d log sigma = 1 - (nu+1) z^2/(nu + z^2)
and d/d nu = 1/2 [psi(nu/2) - psi((nu+1)/2) + 1/nu + log(1 + z^2/nu) - (nu+1) z^2 / (nu (nu + z^2))].
The CDF comes from the regularised incomplete beta function, the CRPS from Jordan, Kruger & Lerch
(2019), the quantiles from SciPy's stdtrit.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from densbench.distributions import ops
from densbench.errors import ConfigError, positive
from densbench.distributions.families.base import PositiveField, Raw, register, weighted_total
from densbench.distributions.special import digamma_half_step, log_gamma_half_step
from densbench.lazy import D, F, torch

if TYPE_CHECKING:
    from torch import Tensor

DF_MIN = 2.0  # learned degrees of freedom stay above 2: finite variance


def _log_density(z: Tensor, nu: Tensor) -> Tensor:
    """log f_nu(z) of the standard t."""
    return (log_gamma_half_step(nu / 2) - 0.5 * torch.log(nu * math.pi)
            - (nu + 1) / 2 * torch.log1p(z * z / nu))


def standard_cdf(z: Tensor, nu: Tensor) -> Tensor:
    """F_nu(z) = 1 - I_{nu/(nu+z^2)}(nu/2, 1/2) / 2 for z >= 0, by symmetry below (SciPy's stdtr without a gradient)."""
    from densbench.distributions.special import betainc, needs_grad, student_t_cdf

    if not needs_grad(z, nu):
        return student_t_cdf(z, nu)
    zd = z.detach()
    tail = 0.5 * betainc(nu / 2, torch.full_like(nu, 0.5), nu / (nu + zd * zd))
    # d/dz is the density, added by hand: through the incomplete beta it is 0 x inf at z = 0 (the median)
    return torch.where(zd > 0, 1 - tail, tail) + (z - zd) * torch.exp(_log_density(zd, nu))


@register
class StudentT(PositiveField):
    """Student-t with loc, a positive scale and (head.df=null) learned degrees of freedom above 2."""

    name = "student_t"
    tasks = ("regression", "count")
    traits = frozenset({"location_scale"})
    distribution_type = "torch.distributions.StudentT"

    def __init__(self, df: float | None = None, positivity: str = "softplus", floor: float = 1e-6,
                 init_std: float | None = None, init_df: float = 5.0) -> None:
        super().__init__(positivity, floor, init_std, "init_std")
        positive("head.df", df, allow_null=True)
        if not (isinstance(init_df, (int, float)) and init_df > DF_MIN):
            raise ConfigError(f"head.init_df={init_df!r} must be a number above {DF_MIN:g}")
        self.df = None if df is None else float(df)
        self.init_df = float(init_df)

    def fields(self) -> dict[str, int]:
        return {"loc": 1, "spread": 1, **({"df": 1} if self.df is None else {})}

    def init_bias(self, bias: Raw) -> None:
        super().init_bias(bias)
        if self.df is None:
            excess = self.init_df - DF_MIN
            bias["df"].fill_(excess + math.log(-math.expm1(-excess)))  # softplus^-1

    def degrees(self, raw: Raw) -> Tensor:
        """nu, [..., B, 1]."""
        if self.df is None:
            return DF_MIN + F.softplus(raw["df"])
        return torch.full_like(raw["loc"], self.df)

    def distribution(self, raw: Raw, loc: Any = 0.0, scale: Any = 1.0):
        sigma = self.positivity_map.value(raw["spread"][..., 0])
        return D.StudentT(self.degrees(raw)[..., 0], loc + scale * raw["loc"][..., 0], scale * sigma, validate_args=False)

    def nll_terms(self, raw: Raw, y: Tensor) -> Tensor:
        nu, log_sigma = self.degrees(raw), self.positivity_map.log_value(raw["spread"])
        z = (y - raw["loc"]) * torch.exp(-log_sigma)
        return log_sigma - _log_density(z, nu)

    def nll_kernel(self, raw: Raw, y: Tensor, weight: Any):
        """Analytic path: the weighted NLL sum and its gradients by field (see the module docstring)."""
        r = raw["spread"]
        nu = self.degrees(raw).detach()
        log_sigma, dlog = self.positivity_map.log_value(r.detach()), self.positivity_map.dlog(r.detach())
        inv_sigma = torch.exp(-log_sigma)
        z = (y - raw["loc"].detach()) * inv_sigma
        z2 = z * z
        nll = log_sigma - _log_density(z, nu)
        w = (nu + 1) / (nu + z2)
        grads = {"loc": (-w * z * inv_sigma).mul_(weight), "spread": ((1 - w * z2) * dlog).mul_(weight)}
        if self.df is None:
            d_nu = 0.5 * (1 / nu - digamma_half_step(nu / 2) + torch.log1p(z2 / nu) - w * z2 / nu)
            grads["df"] = (d_nu * torch.sigmoid(raw["df"].detach())).mul_(weight)
        return weighted_total(nll, weight), grads

    def moments(self, raw: Raw) -> tuple[Tensor, Tensor]:
        nu = self.degrees(raw)
        var = self.positivity_map.value(raw["spread"]) ** 2 * nu / (nu - 2)
        return raw["loc"], torch.where(nu > 2, var, torch.full_like(var, math.inf))

    def reference(self, dist: Any) -> Any:
        from scipy import stats

        return stats.t(dist.df.numpy(), dist.loc.numpy(), dist.scale.numpy())


@ops.cdf.register("torch.distributions.StudentT")
def _student_t_cdf(d: Any, y: Tensor) -> Tensor:
    return standard_cdf((y - d.loc) / d.scale, d.df.expand(torch.broadcast_shapes(y.shape, d.df.shape)))


@ops.icdf.register("torch.distributions.StudentT")
def _student_t_icdf(d: Any, p: Tensor) -> Tensor:
    shape = torch.broadcast_shapes(p.shape, d.loc.shape)
    return d.loc + d.scale * standard_quantiles(p.expand(shape), d.df.expand(shape))


def standard_quantiles(p: Tensor, nu: Tensor) -> Tensor:
    """t_nu^-1(p) (no gradient); on a level axis, levels p and 1 - p from one evaluation (the standard t is
    symmetric), which halves the metrics' 199 levels at half a microsecond an entry."""
    from densbench.distributions.special import student_t_icdf, student_t_icdf_levels

    levels = ops.shared_levels(p)
    if levels is None or not bool((nu == nu[:1]).all()):
        return student_t_icdf(p, nu)
    # levels equal to 14 decimals share one evaluation (1 - (1 - p) is not p in the last bit)
    half, back = torch.unique(torch.minimum(levels, 1 - levels).flatten().double().round(decimals=14), return_inverse=True)
    if len(half) == len(back):
        return student_t_icdf(p, nu)
    t = student_t_icdf_levels(half, nu[0].reshape(-1).double()).reshape(len(half), *p.shape[1:]).index_select(0, back)
    return torch.where(p < 0.5, t, -t).to(p.dtype)


@ops.crps.register("torch.distributions.StudentT")
def crps_student_t(d: Any, y: Tensor) -> Tensor:
    """sigma [z (2 F(z) - 1) + 2 f(z) (nu + z^2)/(nu - 1) - 2 sqrt(nu) B(1/2, nu - 1/2) / ((nu - 1) B(1/2, nu/2)^2)], nu > 1."""
    nu = d.df
    z = (y - d.loc) / d.scale
    # log B(1/2, b) = log sqrt(pi) - [lgamma(b + 1/2) - lgamma(b)]: the differences, not the lgammas, keep their
    # digits for a large nu (the last term tends to the Gaussian's 1/sqrt(pi))
    ratio = torch.exp(2 * log_gamma_half_step(nu / 2) - log_gamma_half_step(nu - 0.5))
    last = 2 * ops.INV_SQRT_PI * torch.sqrt(nu) * ratio / (nu - 1)
    crps = z * (2 * standard_cdf(z, nu.expand_as(z)) - 1) + 2 * torch.exp(_log_density(z, nu)) * (nu + z * z) / (nu - 1) - last
    return d.scale * torch.where(nu > 1, crps, torch.full_like(crps, math.inf))
