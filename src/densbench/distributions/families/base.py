"""What every distribution family declares and provides; the registry. Torch-free at import.

A family is what a head outputs. It declares, at class level,

- ``name``: the registry key (its config file is conf/head/<name>.yaml, or a family chosen by one);
- ``tasks``: the targets it can model (regression, count, binary, multiclass);
- ``support``: where its distribution puts mass (see SUPPORTS); regression targets are prepared for
  the family by the map its support allows (TARGET_MAPS), and targets outside it are refused;
- ``traits``: what objectives may ask of it (see TRAITS);
- ``distribution_type``: the dotted name of the torch Distribution class it builds; what the family can
  do beyond that class's own methods (a closed-form CRPS, quantiles, rescale) is what is registered
  for that name with densbench.distributions.ops (``has_closed_form``), not declared again here;

and provides

- ``fields()``: its raw output fields, name -> width, in output order; the maps from raw outputs to
  parameters (positivity maps with their derivatives, links);
- ``distribution(raw, loc, scale)``: the torch Distribution in original target units (standardised
  targets are mapped back through y = loc + scale * z);
- optionally ``fit_targets(z)``: the family with data-dependent settings fitted to a job's training targets
  (a histogram's edges), which reach the head as ``buffers()``, one job's per model of a stack;
- optionally ``chosen_on_validation``: buffers that evaluation sets from a grid on the validation rows
  (the homoscedastic Gaussian's noise level, MC dropout's tau), so a run without validation rows is refused;
- optionally analytic kernels for the objectives (``nll_kernel`` and friends, see
  densbench.objectives.base for their contract), and closed forms of its distribution's operations,
  registered with densbench.distributions.ops next to the family.

Raw fields are tensors shaped [..., B, width]: B samples, leading axes for stacked models. A family
object holds settings only (no tensors, no torch), so it can be built and checked before torch loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from densbench.registry import Registry

if TYPE_CHECKING:
    from torch import Tensor
    from torch.distributions import Distribution

TASKS = ("regression", "count", "binary", "multiclass", "multivariate")  # multivariate: y [N, d], d >= 2 real targets
TRAITS = {
    "location_scale": "fields `loc` and a positive spread: the predictive is loc + scale x (a fixed-shape variate)",
    "gaussian": "the predictive distribution is Gaussian",
    "natural": "a canonical exponential family: the NLL gradient at the natural parameters is E[T(y)] - T(y)",
    "mixture": "a mixture of components",
}

# where a family's distribution puts its mass, and how a target outside it is recognised (numpy arrays)
SUPPORTS: dict[str, tuple[str, Any]] = {
    "real": ("finite real values", lambda y: ~np.isfinite(y)),
    "positive": ("y > 0", lambda y: ~(y > 0)),
    "unit_interval": ("0 < y < 1", lambda y: ~((y > 0) & (y < 1))),
    "counts": ("integers y >= 0", lambda y: ~((y >= 0) & (y == np.round(y)))),
    "classes": ("class labels", lambda y: np.zeros(np.shape(y), dtype=bool)),
}
# how regression targets are prepared for a family with that support: standardising (an affine map)
# keeps the real line but would carry positive or unit-interval targets out of their support, so those
# are only scaled (a scale family stays one: LogNormal(mu, s) of y/c is LogNormal(mu - log c, s)) or
# kept as they are; counts and classes are never mapped
TARGET_MAPS = {"real": "affine", "positive": "scale", "unit_interval": "none", "counts": "none", "classes": "none"}

Raw = dict  # field name -> tensor [..., B, width]


def total(t: Tensor) -> Tensor:
    """Sum over the sample and width axes: a scalar, or one value per stacked model."""
    return t.sum() if t.dim() <= 2 else t.sum((-2, -1))


def weighted_total(terms: Tensor, weight: Any) -> Tensor:
    """sum_i w_i l_i: (sum l) w for one common weight (mean or sum reduction), sum (w l) for per-sample weights."""
    return total(terms) * weight if isinstance(weight, float) else total(weight * terms)

def _declared_words(cls: type) -> None:
    unknown = set(cls.traits) - set(TRAITS)
    if unknown or not set(cls.tasks) <= set(TASKS) or cls.support not in SUPPORTS:
        raise TypeError(f"{cls.__name__}: unknown traits {sorted(unknown)}, tasks {cls.tasks} or support {cls.support!r}")


FAMILIES: Registry["Family"] = Registry("densbench.distributions.families", "distribution family", check=_declared_words)
register = FAMILIES.register


class Family:
    """Base class: see the module docstring. Subclasses set the class attributes and implement fields/distribution."""

    name: ClassVar[str] = ""
    tasks: ClassVar[tuple[str, ...]] = ("regression",)
    traits: ClassVar[frozenset[str]] = frozenset()
    distribution_type: ClassVar[str] = ""  # dotted name of the Distribution class distribution() returns
    has_floor: ClassVar[bool] = False  # some output passes through a positivity floor that can be hit
    support: ClassVar[str] = "real"  # a key of SUPPORTS
    chosen_on_validation: ClassVar[tuple[str, ...]] = ()  # buffers evaluation sets from a grid on the validation rows

    # ---- the targets it models ------------------------------------------------------------------
    @property
    def target_map(self) -> str:
        """How regression targets are prepared for this family: affine, scale or none (TARGET_MAPS)."""
        return TARGET_MAPS[self.support]

    @property
    def continuous(self) -> bool:
        """Whether its distribution has a density on its support (quantiles, CDF and density all defined)."""
        return self.support in ("real", "positive", "unit_interval")

    def outside_support(self, y: Any) -> Any:
        """Which of the targets y (numpy) lie outside the family's support: a boolean array."""
        return SUPPORTS[self.support][1](np.asarray(y, dtype=np.float64))

    def has_closed_form(self, operation: str, differentiable: bool = False) -> bool:
        """Whether densbench.distributions.ops has a closed form of `operation` (crps, icdf, ...) for its
        distribution (one autograd can train through, if `differentiable`)."""
        from densbench.distributions import ops

        return getattr(ops, operation).registered(self.distribution_type, differentiable)

    # ---- settings -----------------------------------------------------------------------------
    def bind(self, task: str, n_classes: int | None = None) -> "Family":
        """The family to use for this data (a family with data-dependent choices settles them here)."""
        return self

    def fit_targets(self, z: Any) -> Family:
        """The family for these training targets (numpy, as it sees them: its target_map applied); by default itself."""
        # data-dependent settings (a histogram's bin edges) are settled here and reach the head through
        # buffers(): the assembly fits one family per job and writes each job's buffers into its models' rows
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


class PositiveField(Family):
    """A family with one output kept positive by a positivity map (a scale, a variance, a shape).

    What such families share: the map built from ``positivity`` and ``floor``, the initial bias set
    from a constructor setting (``init``, named ``init_name`` in its config), and the count of outputs
    on the floor. A subclass names its field and says how the setting becomes the mapped value.
    """

    positive_field: ClassVar[str] = "spread"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # a spread on its floor is a collapsed variance, worth flagging; a shape or a precision on its floor
        # is the widest member of its family: whether the floor matters is a property of the field
        if "has_floor" not in cls.__dict__:
            cls.has_floor = cls.positive_field == "spread"

    def __init__(self, positivity: str = "softplus", floor: float = 1e-6, init: float | None = None,
                 init_name: str = "init_std") -> None:
        from densbench.errors import positive
        from densbench.distributions.positivity import head_positivity

        positive(f"head.{init_name}", init, allow_null=True)
        self.positivity_map = head_positivity(positivity, floor)
        self.init = init

    def init_value(self, init: float) -> float:
        """The value of the positive output that the initial setting asks for (by default the setting)."""
        return init

    def init_bias(self, bias: Raw) -> None:
        if self.init is not None:
            bias[self.positive_field].fill_(self.positivity_map.inverse(self.init_value(self.init)))

    def floor_hits(self, raw: Raw) -> Tensor:
        return total(self.positivity_map.at_floor(raw[self.positive_field]))
