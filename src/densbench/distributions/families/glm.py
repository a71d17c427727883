"""Natural exponential families with the canonical link (the GLM document).

The head outputs the natural parameter eta; the mean is the inverse link y_hat = f^-1(eta): identity
(Gaussian), sigmoid (Bernoulli), softmax (categorical), exp (Poisson). With log-partition A,
-log q(y | eta) = -log h(y) - eta y + A(eta), so the gradient at eta is y_hat - y for every family.
``head=glm`` picks the canonical family of the data's task (``head.distribution=auto``) or the one named.

The canonical Gaussian has unit dispersion; its predictive scale is the dispersion estimated from the
training residuals after fitting (mean squared residual), as a GLM fit reports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from densbench.distributions import ops
from densbench.errors import ConfigError, one_of
from densbench.distributions.families.base import Family, Raw, register, weighted_total
from densbench.lazy import D, F, torch
from densbench.distributions.ops import HALF_LOG_2PI

if TYPE_CHECKING:
    from torch import Tensor

TASK_DISTRIBUTION = {"regression": "gaussian", "count": "poisson", "binary": "bernoulli", "multiclass": "categorical"}


class Canonical(Family):
    """Shared shape of the canonical families: one natural-parameter field, NLL kernel y_hat - y."""

    traits = frozenset({"natural"})
    width: ClassVar[int] = 1

    def fields(self) -> dict[str, int]:
        return {"eta": self.width}

    def nll_terms(self, raw: Raw, y: Tensor) -> Tensor:  # pragma: no cover - per family
        """-log q(y | eta) without the base measure -log h(y) (nll_constant)."""
        raise NotImplementedError

    def residual(self, eta: Tensor, y: Tensor) -> Tensor:  # pragma: no cover - per family
        """y_hat - y: the mean of the sufficient statistic minus its observed value (a new tensor)."""
        raise NotImplementedError

    def nll_kernel(self, raw: Raw, y: Tensor, weight: Any):
        """Analytic path: the weighted NLL sum (without -log h) and (y_hat - y) times the weight."""
        eta = raw["eta"].detach()
        return weighted_total(self.nll_terms({"eta": eta}, y), weight), {"eta": self.residual(eta, y).mul_(weight)}


@register
class GaussianUnit(Canonical):
    """Gaussian with identity link and unit dispersion while training; the predictive scale is estimated after."""

    name = "gaussian_unit"
    tasks = ("regression", "count")
    distribution_type = "torch.distributions.Normal"

    def buffers(self) -> dict[str, Tensor]:
        return {"dispersion": torch.ones(1, 1, 1)}  # one per model of a stack: [N, 1, 1] against eta [N, B, 1]

    def residual(self, eta: Tensor, y: Tensor) -> Tensor:
        return eta - y

    def nll_terms(self, raw: Raw, y: Tensor) -> Tensor:
        return 0.5 * (y - raw["eta"]) ** 2 + HALF_LOG_2PI

    def nll_kernel(self, raw: Raw, y: Tensor, weight: Any):
        if not (isinstance(weight, float) and raw["eta"].dim() <= 2):
            return super().nll_kernel(raw, y, weight)
        resid = raw["eta"] - y
        r = resid.reshape(-1)
        return (0.5 * torch.dot(r, r) + r.numel() * HALF_LOG_2PI) * weight, {"eta": resid.mul_(weight)}

    def distribution(self, raw: Raw, loc: Any = 0.0, scale: Any = 1.0):
        eta = raw["eta"][..., 0]
        return D.Normal(loc + scale * eta, scale * raw["dispersion"][..., 0].sqrt().expand(eta.shape), validate_args=False)

    def reference(self, dist: Any) -> Any:
        from scipy import stats

        return stats.norm(dist.loc.numpy(), dist.scale.numpy())

    def training_statistics(self, raw: Raw, y: Tensor) -> dict[str, Tensor]:
        resid = (y - raw["eta"]).double()  # [N, B, 1]: per model of the stack
        return {"squares": (resid * resid).sum((-2, -1)), "count": torch.full((resid.shape[0],), float(resid.shape[-2]),
                                                                             dtype=torch.float64, device=y.device)}

    def update_buffers(self, buffers: dict[str, Tensor], sums: dict[str, Tensor]) -> None:
        buffers["dispersion"].copy_((sums["squares"] / sums["count"]).view_as(buffers["dispersion"]))


@register
class Bernoulli(Canonical):
    """Bernoulli with logit link: A(eta) = softplus(eta)."""

    name = "bernoulli"
    tasks = ("binary",)
    support = "classes"
    distribution_type = "torch.distributions.Bernoulli"

    def residual(self, eta: Tensor, y: Tensor) -> Tensor:
        return torch.sigmoid(eta).sub_(y)

    def nll_terms(self, raw: Raw, y: Tensor) -> Tensor:
        return F.softplus(raw["eta"]) - y * raw["eta"]

    def nll_kernel(self, raw: Raw, y: Tensor, weight: Any):
        eta = raw["eta"]
        if isinstance(weight, float) and eta.dim() <= 2:
            e, t = eta.reshape(-1), y.reshape(-1)
            return (F.softplus(eta).sum() - torch.dot(t, e)) * weight, {"eta": torch.sigmoid(eta).sub_(y).mul_(weight)}
        return super().nll_kernel(raw, y, weight)

    def distribution(self, raw: Raw, loc: Any = 0.0, scale: Any = 1.0):
        return D.Bernoulli(logits=raw["eta"][..., 0], validate_args=False)

    def reference(self, dist: Any) -> Any:
        from scipy import stats

        return stats.bernoulli(dist.probs.numpy())


@register
class Poisson(Canonical):
    """Poisson with log link: A(eta) = exp(eta); -log h(y) = lgamma(y + 1), exact (no Stirling term)."""

    name = "poisson"
    tasks = ("count",)
    support = "counts"
    distribution_type = "torch.distributions.Poisson"

    def residual(self, eta: Tensor, y: Tensor) -> Tensor:
        return torch.exp(eta).sub_(y)

    def nll_terms(self, raw: Raw, y: Tensor) -> Tensor:
        return torch.exp(raw["eta"]) - y * raw["eta"]

    def nll_constant(self, y: Tensor) -> Tensor:
        """-log h(y) = lgamma(y + 1), which depends on the targets alone."""
        return torch.lgamma(y + 1.0)

    def nll_kernel(self, raw: Raw, y: Tensor, weight: Any):
        eta = raw["eta"]
        if isinstance(weight, float) and eta.dim() <= 2:
            e, t = eta.reshape(-1), y.reshape(-1)
            rate = torch.exp(eta)
            return (rate.sum() - torch.dot(t, e)) * weight, {"eta": rate.sub_(y).mul_(weight)}
        return super().nll_kernel(raw, y, weight)

    def distribution(self, raw: Raw, loc: Any = 0.0, scale: Any = 1.0):
        return D.Poisson(torch.exp(raw["eta"][..., 0]), validate_args=False)

    def reference(self, dist: Any) -> Any:
        from scipy import stats

        return stats.poisson(dist.rate.numpy())


@register
class Categorical(Canonical):
    """Categorical with softmax link over C classes: A(eta) = logsumexp(eta); targets are class indices."""

    name = "categorical"
    tasks = ("binary", "multiclass")
    support = "classes"
    distribution_type = "torch.distributions.Categorical"
    class_targets = True

    def __init__(self, n_classes: int = 2) -> None:
        self.width = int(n_classes)

    def nll_terms(self, raw: Raw, y: Tensor) -> Tensor:
        eta = raw["eta"]
        onehot = F.one_hot(y.long(), eta.shape[-1]).to(eta.dtype)
        return (torch.logsumexp(eta, dim=-1) - (eta * onehot).sum(-1)).unsqueeze(-1)

    def residual(self, eta: Tensor, y: Tensor) -> Tensor:
        return torch.softmax(eta, -1).sub_(F.one_hot(y.long(), eta.shape[-1]).to(eta.dtype))

    def nll_kernel(self, raw: Raw, y: Tensor, weight: Any):
        eta = raw["eta"]
        if not (isinstance(weight, float) and eta.dim() <= 2):
            return super().nll_kernel(raw, y, weight)
        # [C, N] layout: reductions over a few classes along the first axis are plain vector adds
        et = eta.T.contiguous()
        top = et.amax(0, keepdim=True)
        p = (et - top).exp_()
        z = p.sum(0, keepdim=True)
        total = (z.log() + top).sum() - eta.gather(-1, y.long().unsqueeze(-1)).sum()
        p.mul_(z.reciprocal_())
        p[y.long(), torch.arange(eta.shape[0], device=eta.device)] -= 1.0
        return total * weight, {"eta": p.mul_(weight).T}

    def distribution(self, raw: Raw, loc: Any = 0.0, scale: Any = 1.0):
        return D.Categorical(logits=raw["eta"], validate_args=False)


CANONICAL = {"gaussian": GaussianUnit, "bernoulli": Bernoulli, "categorical": Categorical, "poisson": Poisson}
DISTRIBUTION_TASKS = {name: cls.tasks for name, cls in CANONICAL.items()}


@register
class GLM(Family):
    """The canonical family of the data's task (``distribution: auto``) or the one named."""

    name = "glm"
    tasks = ("regression", "count", "binary", "multiclass")
    traits = frozenset({"natural"})

    def __init__(self, distribution: str = "auto") -> None:
        one_of("head.distribution", distribution, ("auto",) + tuple(CANONICAL))
        self.choice = distribution

    def bind(self, task: str, n_classes: int | None = None) -> Family:
        choice = TASK_DISTRIBUTION[task] if self.choice == "auto" else self.choice
        if task not in CANONICAL[choice].tasks:
            raise ConfigError(
                f"head.distribution={choice} does not fit the data (task {task}); "
                f"for {task} use head.distribution={TASK_DISTRIBUTION[task]} or auto"
            )
        if choice == "categorical":
            if (n_classes or 0) < 2:
                raise ConfigError("head.distribution=categorical needs class labels; the data has none")
            return Categorical(n_classes)
        return CANONICAL[choice]()

    def fields(self) -> dict[str, int]:
        raise ConfigError("head=glm is settled by the data's task first (Family.bind)")


# ---- closed forms of torch's discrete distributions --------------------------------------------


@ops.cdf.register("torch.distributions.Poisson")
def _poisson_cdf(d: Any, y: Tensor) -> Tensor:
    k = torch.floor(y)
    out = torch.special.gammaincc(k.clamp_min(0) + 1, d.rate.expand_as(k))
    return torch.where(k < 0, torch.zeros_like(out), out)


@ops.icdf.register("torch.distributions.Poisson")
def _poisson_icdf(d: Any, p: Tensor) -> Tensor:
    """Smallest k with F(k) >= p."""
    grid = ops.count_grid(d)  # [K, *batch]
    cum = _poisson_cdf(d, grid)
    return (cum.unsqueeze(0) < p.unsqueeze(1)).sum(1).to(cum.dtype)


@ops.crps.register("torch.distributions.Poisson")
def _poisson_crps(d: Any, y: Tensor) -> Tensor:
    """Discrete CRPS sum_k (F(k) - 1{y <= k})^2 over k = 0, 1, ..., truncated where F = 1."""
    grid = ops.count_grid(d, int(y.max().item()) if y.numel() else 0)
    Fk = torch.special.gammaincc(grid + 1, d.rate.unsqueeze(0).expand_as(grid))
    return ((Fk - (y.unsqueeze(0) <= grid).to(Fk.dtype)) ** 2).sum(0)


@ops.cdf.register("torch.distributions.Bernoulli")
def _bernoulli_cdf(d: Any, y: Tensor) -> Tensor:
    k = torch.floor(y)
    p0 = 1 - d.probs
    return torch.where(k < 0, torch.zeros_like(p0), torch.where(k < 1, p0, torch.ones_like(p0)))


def rps(y: Tensor, probs: Tensor) -> Tensor:
    """Ranked probability score over ordered classes, sum_k (F_k - 1{y <= k})^2."""
    cum = torch.cumsum(probs, -1)
    ks = torch.arange(probs.shape[-1], device=probs.device)
    step = (y.long().unsqueeze(-1) <= ks).to(probs.dtype)
    return ((cum - step) ** 2).sum(-1)


@ops.crps.register("torch.distributions.Bernoulli")
def _bernoulli_crps(d: Any, y: Tensor) -> Tensor:
    return rps(y, torch.stack([1 - d.probs, d.probs], -1))


@ops.cdf.register("torch.distributions.Categorical")
def _categorical_cdf(d: Any, y: Tensor) -> Tensor:
    cum = torch.cumsum(d.probs, -1)
    k = torch.floor(y).long()
    inside = cum.gather(-1, k.clamp(0, cum.shape[-1] - 1).unsqueeze(-1)).squeeze(-1)
    return torch.where(k < 0, torch.zeros_like(inside), inside)


@ops.crps.register("torch.distributions.Categorical")
def _categorical_crps(d: Any, y: Tensor) -> Tensor:
    return rps(y, d.probs)


@ops.quadrature.register("torch.distributions.Bernoulli")
def _bernoulli_quadrature(d: Any, nodes: int = 0) -> tuple[Tensor, Tensor]:
    return torch.stack([torch.zeros_like(d.probs), torch.ones_like(d.probs)]), torch.stack([1 - d.probs, d.probs])


@ops.quadrature.register("torch.distributions.Categorical")
def _categorical_quadrature(d: Any, nodes: int = 0) -> tuple[Tensor, Tensor]:
    c = d.probs.shape[-1]
    ys = torch.arange(c, device=d.probs.device).view(-1, *([1] * (d.probs.dim() - 1))).expand(c, *d.batch_shape)
    return ys, d.probs.movedim(-1, 0)
