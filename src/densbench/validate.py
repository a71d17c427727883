"""Checks a composed config, and the config against its data, before anything trains.

Each problem raises ``ConfigError`` with one line naming the key, the value and what is allowed.
Unknown keys and unknown config-group options are refused earlier by Hydra itself.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig

from densbench.data import Data
from densbench.losses import GLM_FAMILIES, GRADS, REDUCTIONS
from densbench.positivity import KINDS, SPREAD_TARGETS

FAMILY_HEADS = {"kl": "GaussianHead", "nll": "GaussianHead", "mdn": "MixtureHead", "glm": "GLMHead"}
HEAD_OPTIONS = {"GaussianHead": "gaussian, gaussian_exp", "MixtureHead": "mixture", "GLMHead": "glm"}
# which targets each loss can model
FAMILY_TASKS = {
    "kl": ("regression",),
    "nll": ("regression", "count"),
    "mdn": ("regression", "count"),
    "glm": ("regression", "count", "binary", "multiclass"),
}
GLM_TASK_FAMILY = {"regression": "gaussian", "count": "poisson", "binary": "bernoulli", "multiclass": "categorical"}
GLM_FAMILY_TASKS = {
    "gaussian": ("regression", "count"),
    "poisson": ("count",),
    "bernoulli": ("binary",),
    "categorical": ("binary", "multiclass"),
}
PRECISIONS = ("32-true", "64-true", "16-mixed", "bf16-mixed", "32", "64")
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")


class ConfigError(ValueError):
    """A config value or combination that densbench refuses, with the allowed values."""


def _one_of(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}")


def _positive(key: str, value, integer: bool = False, allow_null: bool = False) -> None:
    if value is None and allow_null:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if ok and integer:
        ok = float(value) == int(value)
    if not ok:
        kind = "a positive integer" if integer else "a positive number"
        raise ConfigError(f"{key}={value!r} must be {kind}" + (" or null" if allow_null else ""))


def head_class_name(cfg: DictConfig) -> str:
    """The head class named by head._target_."""
    return str(cfg.head._target_).rsplit(".", 1)[-1]


def check_config(cfg: DictConfig) -> None:
    """Everything that can be checked without loading data."""
    _one_of("grad", cfg.grad, GRADS)
    family = cfg.loss.name
    _one_of("loss", family, tuple(FAMILY_HEADS))
    _one_of("loss.reduction", cfg.loss.reduction, REDUCTIONS)
    head = head_class_name(cfg)
    if head != FAMILY_HEADS[family]:
        want = FAMILY_HEADS[family]
        raise ConfigError(f"loss={family} needs a {want} (head={HEAD_OPTIONS[want]}), but head is a {head}")
    h = cfg.head
    if "positivity" in h:
        _one_of("head.positivity", h.positivity, KINDS)
    if "floor" in h:
        _positive("head.floor", h.floor)
    if "spread" in h:
        _one_of("head.spread", h.spread, SPREAD_TARGETS)
    if "components" in h:
        _positive("head.components", h.components, integer=True)
    if "init_scale" in h:
        _positive("head.init_scale", h.init_scale, allow_null=True)
    if "family" in h:
        _one_of("head.family", h.family, ("auto",) + GLM_FAMILIES)

    t = cfg.trainer
    _one_of("trainer.accelerator", t.accelerator, ACCELERATORS)
    _one_of("trainer.precision", str(t.precision), PRECISIONS)
    _positive("trainer.max_steps", t.max_steps, integer=True, allow_null=t.max_epochs is not None)
    _positive("trainer.max_epochs", t.max_epochs, integer=True, allow_null=True)
    _positive("trainer.batch_size", t.batch_size, integer=True, allow_null=True)
    _positive("trainer.eval_every", t.eval_every, integer=True, allow_null=True)
    _positive("trainer.steps_per_call", t.steps_per_call, integer=True)
    _positive("trainer.early_stopping_patience", t.early_stopping_patience, integer=True, allow_null=True)
    _positive("trainer.threads", t.threads, integer=True)
    _positive("trainer.flag_margin", t.flag_margin)
    _positive("trainer.absurd_loss", t.absurd_loss)
    _positive("trainer.devices", t.devices, integer=True)
    _positive("trainer.num_nodes", t.num_nodes, integer=True)
    _positive("optimizer.lr", cfg.optimizer.lr)
    _one_of("trainer.compile_mode", t.compile_mode, ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"))

    d = cfg.dataset
    for key in ("val_fraction", "test_fraction"):
        if key in d and not (0 <= d[key] < 1):
            raise ConfigError(f"dataset.{key}={d[key]!r} must be in [0, 1)")
    if "val_fraction" in d and "test_fraction" in d and d.get("protocol") != "uci" and d.val_fraction + d.test_fraction >= 1:
        raise ConfigError("dataset.val_fraction + dataset.test_fraction must be below 1 (nothing left to train on)")
    for key in ("n_train", "n_test"):
        if key in d:
            _positive(f"dataset.{key}", d[key], integer=True)
    if "n_val" in d and not (isinstance(d.n_val, int) and d.n_val >= 0):
        raise ConfigError(f"dataset.n_val={d.n_val!r} must be a non-negative integer")
    _positive("dataset.max_train", d.get("max_train"), integer=True, allow_null=True)
    _positive("dataset.max_eval", d.get("max_eval"), integer=True, allow_null=True)
    if d.get("protocol") not in (None, "uci", "random"):
        _one_of("dataset.protocol", d.protocol, ("uci", "random"))
    if d.get("protocol") == "uci" and not (isinstance(d.split, int) and 0 <= d.split < 20):
        raise ConfigError(f"dataset.split={d.split!r} must be an integer in 0..19 for the UCI protocol")
    hidden = cfg.model.get("hidden", [])
    if any(not (isinstance(w, int) and w >= 1) for w in hidden):
        raise ConfigError(f"model.hidden={list(hidden)} must be a list of positive integers")


def resolve_glm_family(cfg: DictConfig, data: Data) -> str:
    """The GLM head family for this dataset (auto = the task's canonical family)."""
    fam = cfg.head.family
    return GLM_TASK_FAMILY[data.task] if fam == "auto" else fam


def check_against_data(cfg: DictConfig, data: Data) -> None:
    """Combinations of loss, head and dataset that cannot work."""
    family, task = cfg.loss.name, data.task
    if task not in FAMILY_TASKS[family]:
        raise ConfigError(
            f"loss={family} cannot model dataset={data.name} (task {task}); "
            f"for {task} targets use loss={'glm' if family != 'glm' else 'nll'}"
            + ("" if family == "glm" else f" (loss={family} supports tasks: {', '.join(FAMILY_TASKS[family])})")
        )
    if family == "kl" and not data.truth_is_gaussian:
        raise ConfigError(
            f"loss=kl trains on the true Gaussian p(y|x), which dataset={data.name} does not have; "
            "datasets with a Gaussian truth: hetero_sine, sine_gaussian"
        )
    if family == "glm":
        fam = resolve_glm_family(cfg, data)
        if task not in GLM_FAMILY_TASKS[fam]:
            extra = ""
            if fam == "poisson" and task == "regression":
                y = data.y[data.train]
                if (y < 0).any():
                    extra = f": targets include negative values (min {y.min():g})"
                elif (y != y.round()).any():
                    extra = ": targets are not integer counts"
            raise ConfigError(
                f"head.family={fam} does not fit dataset={data.name} (task {task}){extra}; "
                f"for {task} use head.family={GLM_TASK_FAMILY[task]} or auto"
            )
        if fam == "categorical" and (data.n_classes or 0) < 2:
            raise ConfigError(f"head.family=categorical needs class labels; dataset={data.name} has none")
    if len(data.test) == 0:
        raise ConfigError(f"dataset={data.name}: the test split is empty")
