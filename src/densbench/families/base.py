"""What every distribution family declares and provides; the registry. Torch-free at import.

A family is what a head outputs. It declares, at class level,

- ``name``: the registry key (its config file is conf/head/<name>.yaml, or a family chosen by one);
- ``tasks``: the targets it can model (regression, count, binary, multiclass);
- ``traits``: what objectives may ask of it (see TRAITS);

and provides

- ``fields()``: its raw output fields, name -> width, in output order; the maps from raw outputs to
  parameters (positivity maps with their derivatives, links);
- ``distribution(raw, loc, scale)``: the torch Distribution in original target units (standardised
  targets are mapped back through y = loc + scale * z);
- optionally analytic kernels for the objectives (``nll_kernel`` and friends, see
  densbench.objectives.base for their contract), and closed forms of its distribution's operations,
  registered with densbench.ops next to the family.

Raw fields are tensors shaped [..., B, width]: B samples, leading axes for stacked models. A family
object holds settings only (no tensors, no torch), so it can be built and checked before torch loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from densbench.registry import Registry

if TYPE_CHECKING:
    from torch import Tensor
    from torch.distributions import Distribution

TASKS = ("regression", "count", "binary", "multiclass")
TRAITS = {
    "location_scale": "fields `loc` and a positive spread: the predictive is loc + scale x (a fixed-shape variate)",
    "gaussian": "the predictive distribution is Gaussian",
    "natural": "a canonical exponential family: the NLL gradient at the natural parameters is E[T(y)] - T(y)",
    "mixture": "a mixture of components",
    "crps": "the predictive distribution's CRPS has a closed form (registered with densbench.ops), differentiable",
}

Raw = dict  # field name -> tensor [..., B, width]


def total(t: Tensor) -> Tensor:
    """Sum over the sample and width axes: a scalar, or one value per stacked model."""
    return t.sum() if t.dim() <= 2 else t.sum((-2, -1))


def weighted_total(terms: Tensor, weight: Any) -> Tensor:
    """sum_i w_i l_i: (sum l) w for one common weight (mean or sum reduction), sum (w l) for per-sample weights."""
    return total(terms) * weight if isinstance(weight, float) else total(weight * terms)

def _declared_words(cls: type) -> None:
    unknown = set(cls.traits) - set(TRAITS)
    if unknown or not set(cls.tasks) <= set(TASKS):
        raise TypeError(f"{cls.__name__}: unknown traits {sorted(unknown)} or tasks {cls.tasks}")


FAMILIES: Registry["Family"] = Registry("densbench.families", "distribution family", check=_declared_words)
register = FAMILIES.register


class Family:
    """Base class: see the module docstring. Subclasses set the class attributes and implement fields/distribution."""

    name: ClassVar[str] = ""
    tasks: ClassVar[tuple[str, ...]] = ("regression",)
    traits: ClassVar[frozenset[str]] = frozenset()
    has_floor: ClassVar[bool] = False  # some output passes through a positivity floor that can be hit

    # ---- settings -----------------------------------------------------------------------------
    def bind(self, task: str, n_classes: int | None = None) -> "Family":
        """The family to use for this data (a family with data-dependent choices settles them here)."""
        return self

    def fields(self) -> dict[str, int]:  # pragma: no cover - abstract
        """Raw output fields, name -> width, in output order."""
        raise NotImplementedError

    @property
    def label(self) -> str:
        """How reports name the predictive distribution."""
        return self.name

    # ---- tensors --------------------------------------------------------------------------------
    def init_bias(self, bias: Raw) -> None:
        """Set the initial output biases (views into the head's bias, by field)."""

    def buffers(self) -> dict[str, Tensor]:
        """Non-trained tensors the head keeps for the family (moved with the model, saved in checkpoints)."""
        return {}

    def distribution(self, raw: Raw, loc: Any = 0.0, scale: Any = 1.0) -> Distribution:  # pragma: no cover
        """Predictive distribution in original target units, batch shape [..., B]."""
        raise NotImplementedError

    def log_prob(self, raw: Raw, y: Tensor) -> Tensor:
        """Per-sample log-likelihood of standardised targets y [..., B, 1] (autograd path)."""
        return self.distribution(raw).log_prob(y[..., 0]).unsqueeze(-1)

    def moments(self, raw: Raw) -> tuple[Tensor, Tensor]:
        """Predictive mean and variance in standardised units, [..., B, 1] each."""
        d = self.distribution(raw)
        return d.mean.unsqueeze(-1), d.variance.unsqueeze(-1)

    def floor_hits(self, raw: Raw) -> Tensor:
        """Spread outputs sitting on the positivity floor (collapsed variances): a count, per model of a stack."""
        raise NotImplementedError("a family with has_floor = True counts its floor hits")

    def reference(self, dist: Distribution) -> Any:
        """The same distribution in scipy.stats (frozen, batch-shaped), for the conformance tests; None if scipy has none."""
        return None

    def training_statistics(self, raw: Raw, y: Tensor) -> dict[str, Tensor] | None:
        """Sums over the training data a family estimates parameters from after fitting (None: nothing)."""
        return None

    def update_buffers(self, buffers: dict[str, Tensor], sums: dict[str, Tensor]) -> None:
        """Set buffers from training_statistics summed over every rank."""
