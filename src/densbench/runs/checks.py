"""Checks of a composed config, before anything heavy loads, and of the config against its data after.

Everything here is torch-free: a bad value, key or combination is refused within a second of
starting. Each problem raises one line naming the key, the value and what is allowed:

- ``ConfigError``: a value densbench refuses (the run fails as invalid input);
- ``Incompatible``: valid parts that do not fit together (a loss that cannot train a head, a head
  that cannot model the data's targets, an analytic gradient that does not exist for a pair). A
  single run stops; a sweep records the job as ``skipped`` with the reason and goes on, so a grid over
  loss x head just works.

Unknown keys and unknown config-group options are refused earlier by Hydra itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from densbench.baselines import require
from densbench.errors import ConfigError, natural, one_of, positive
from densbench.training.loop import Loop
from densbench.distributions.families import Family
from densbench.objectives import Objective
from densbench.objectives.base import GRADS

PRECISIONS = ("32-true", "64-true", "16-mixed", "bf16-mixed", "32", "64")
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")
# Trainer arguments the engine sets itself (the loop's length, logging per job, its own callbacks and
# checkpoints); a trainer config must leave them alone
ENGINE_OWNED = ("max_epochs", "max_steps", "max_time", "logger", "callbacks", "enable_progress_bar", "enable_model_summary",
                "enable_checkpointing", "num_sanity_val_steps", "limit_train_batches", "limit_val_batches",
                "val_check_interval", "check_val_every_n_epoch", "default_root_dir", "use_distributed_sampler")


class Incompatible(ConfigError):
    """Valid parts of a config that do not fit together: a sweep skips the job instead of failing it."""


def instantiate_checked(node: DictConfig, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, with a ConfigError raised inside the constructor passed on unwrapped."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(str(exc).splitlines()[-1]) from None


@dataclass(frozen=True)
class Plan:
    """The objects a checked config stands for: what trains what, on which task."""

    objective: Objective
    family: Family  # as configured; bind it to the data (a head like glm picks its canonical family)
    task: str
    truth: str | None
    loop: Loop

    def bound_family(self) -> Family:
        """The family bound to the task, as far as the task alone settles it (the class count of
        multiclass data is known only once it is loaded)."""
        if self.task == "multiclass":
            return self.family
        return self.family.bind(self.task, 2 if self.task == "binary" else None)


def check_config(cfg: DictConfig) -> Plan:
    """Everything that can be checked without loading data or torch; returns the plan of the run."""
    from densbench.data import datasets as data
    if cfg.get("baseline"):  # a missing optional package is refused before anything else
        require(str(cfg.baseline.get("_target_")))
    one_of("grad", cfg.grad, GRADS)
    natural("seed", cfg.get("seed"))
    if "seed" in cfg.dataset:
        natural("dataset.seed", cfg.dataset.seed)
    _check_trainer(cfg.trainer)
    loop: Loop = instantiate_checked(cfg.loop)
    _check_dataset(cfg.dataset)
    hidden = cfg.model.get("hidden", [])
    if any(not (isinstance(w, int) and w >= 1) for w in hidden):
        raise ConfigError(f"model.hidden={list(hidden)} must be a list of positive integers")
    positive("optimizer.lr", cfg.optimizer.lr)

    members = cfg.ensemble.members
    positive("ensemble.members", members, integer=True)
    _check_dropout(cfg.model, members)

    objective: Objective = instantiate_checked(cfg.loss)
    head: Family = instantiate_checked(cfg.head)
    kind = data.describe(cfg.dataset)
    data.tables.check_source(cfg.dataset)  # a missing file is refused here, before torch loads
    plan = Plan(objective, head, kind.task, kind.truth, loop)
    check_pair(plan, str(cfg.grad), cfg.dataset.name)
    check_recalibration(cfg, plan.task)
    check_validation_choices(cfg, head)
    if cfg.get("baseline"):
        _check_baseline(cfg, plan.task)
    if members > 1 and not ({"location_scale", "mixture"} & plan.bound_family().traits):
        raise Incompatible(f"ensemble.members={members} scores the members' mixture, which needs a location-scale or "
                           f"mixture head; head={head.name} is neither")
    return plan


def _check_dropout(model: DictConfig, members: int) -> None:
    """model.dropout: a rate in [0, 1), or a list of them (candidates chosen on validation, not an ensemble's members)."""
    rate = model.get("dropout", 0.0)
    rates = list(rate) if OmegaConf.is_list(rate) else [rate]
    if not rates or any(not (isinstance(r, (int, float)) and not isinstance(r, bool) and 0 <= r < 1) for r in rates):
        raise ConfigError(f"model.dropout={rate} must be a rate in [0, 1) or a non-empty list of them")
    if OmegaConf.is_list(rate) and members > 1:
        raise ConfigError(f"model.dropout={list(rate)} trains one candidate per rate and tests the one chosen on "
                          f"validation; it cannot be combined with ensemble.members={members}")
    natural("model.mc_samples", model.get("mc_samples", 0))


def heads_that_fit(objective: Objective, task: str) -> list[str]:
    """The heads (conf/head names of registered families, default settings) `objective` trains on `task`'s data."""
    from pathlib import Path

    from densbench.config import config_dir
    from densbench.distributions.families import load_all

    offered = {p.stem for p in Path(config_dir(), "head").glob("*.yaml")}
    fit = []
    for name, cls in sorted(load_all().items()):
        try:
            family = cls()
            if name in offered and task in family.tasks and objective.accepts(family.bind(task, 3)) is None:
                fit.append(name)
        except ConfigError:
            continue
    return fit


def _refuse_pair(objective: Objective, family: Family, task: str) -> None:
    """Incompatible, naming the heads that fit, if `objective` cannot train `family`."""
    why = objective.accepts(family)
    if why:
        fit = heads_that_fit(objective, task)
        raise Incompatible(why + (f"; heads that fit loss={objective.name} on {task} data: {', '.join(fit)}" if fit else ""))


def _check_baseline(cfg: DictConfig, task: str) -> None:
    """A baseline job: one model of one real target, nothing post-hoc (its predictive is scored as fitted)."""
    if int(cfg.ensemble.members) != 1:
        raise ConfigError(f"ensemble.members={cfg.ensemble.members}: a baseline (method={cfg.baseline._target_}) is one model; "
                          "use ensemble.members=1")
    if str(cfg.recalibrate) != "none":
        raise ConfigError(f"recalibrate={cfg.recalibrate}: the baselines are scored as fitted; use recalibrate=none")
    if task != "regression":
        raise Incompatible(f"the baselines (ngboost, catboost, gp) fit one real target; dataset {cfg.dataset.name} is a {task} task")


def check_pair(plan: Plan, grad: str, dataset: str) -> Plan:
    """The loss, the head and the data's task fit together (Incompatible if not)."""
    objective, task, head = plan.objective, plan.task, plan.family
    if task not in head.tasks:
        _refuse_target_count(head, task, dataset)
        raise Incompatible(f"head={head.name} cannot model dataset={dataset} (task {task}); "
                           f"head={head.name} models: {', '.join(head.tasks)}")
    if objective.needs_truth and plan.truth != objective.needs_truth:
        raise Incompatible(f"loss={objective.name} trains on the true {objective.needs_truth} p(y|x), which "
                           f"dataset={dataset} does not have; datasets with one: {', '.join(_with_truth(objective.needs_truth))}")
    _refuse_pair(objective, head, task)
    if task != "multiclass":
        try:
            bound = plan.bound_family()
        except ConfigError as exc:
            raise Incompatible(f"{exc} (dataset={dataset})") from None
        _refuse_pair(objective, bound, task)
        if grad == "analytic":
            why = objective.analytic_refusal(bound)
            if why:
                raise Incompatible(f"grad=analytic is not available for loss={objective.name} with head={bound.name}: {why}")
    return plan


def _refuse_target_count(head: Family, task: str, dataset: str) -> None:
    """Incompatible, in words, when the head and the data differ in how many targets a row has."""
    if task == "multivariate":
        raise Incompatible(f"head={head.name} models one target; dataset={dataset} has several (task multivariate): "
                           "use a joint head (head=mvn) or name one target")
    if "multivariate" in head.tasks:
        raise Incompatible(f"head={head.name} needs at least two targets; dataset={dataset} has one (task {task}): "
                           "name several, e.g. dataset.target=[a,b]")


def _with_truth(kind: str) -> list[str]:
    from densbench.data.datasets import SYNTHETIC

    return [name for name, (_, k) in SYNTHETIC.items() if k.truth == kind]


def _check_trainer(t: DictConfig) -> None:
    one_of("trainer.accelerator", t.accelerator, ACCELERATORS)
    one_of("trainer.precision", str(t.precision), PRECISIONS)
    positive("trainer.devices", t.devices, integer=True)
    positive("trainer.num_nodes", t.num_nodes, integer=True)
    owned = [k for k in t if k in ENGINE_OWNED]
    if owned:
        raise ConfigError(f"trainer.{owned[0]} is set by densbench's loop, not by the trainer config"
                          + (f": use loop.{owned[0]}" if owned[0] in ("max_steps", "max_epochs") else "")
                          + f" (the loop's settings: loop.*; the trainer's own keys: {', '.join(k for k in t if k not in ENGINE_OWNED and not k.startswith('_'))})")


def _check_dataset(d: DictConfig) -> None:
    for key in ("val_fraction", "test_fraction"):
        if key in d and not (0 <= d[key] < 1):
            raise ConfigError(f"dataset.{key}={d[key]!r} must be in [0, 1)")
    if "val_fraction" in d and "test_fraction" in d and d.get("protocol") != "uci" and d.val_fraction + d.test_fraction >= 1:
        raise ConfigError("dataset.val_fraction + dataset.test_fraction must be below 1 (nothing left to train on)")
    for key in ("n_train", "n_test"):
        if key in d:
            positive(f"dataset.{key}", d[key], integer=True)
    if "n_val" in d and not (isinstance(d.n_val, int) and d.n_val >= 0):
        raise ConfigError(f"dataset.n_val={d.n_val!r} must be a non-negative integer")
    positive("dataset.max_train", d.get("max_train"), integer=True, allow_null=True)
    positive("dataset.max_eval", d.get("max_eval"), integer=True, allow_null=True)
    if d.get("protocol") not in (None, "uci", "random", "gap"):
        one_of("dataset.protocol", d.protocol, ("uci", "random", "gap"))
    if d.get("protocol") == "uci" and not (isinstance(d.split, int) and 0 <= d.split < 20):
        raise ConfigError(f"dataset.split={d.split!r} must be an integer in 0..19 for the UCI protocol")
    if d.get("protocol") == "gap":
        natural("dataset.split", d.split)  # an input's index: gap split i tests the middle third of input i's range
    if d.get("tuning") and not d.get("val_fraction"):
        raise ConfigError("dataset.tuning=true needs dataset.val_fraction > 0: the stand-in test set and the "
                          "validation set are carved from the training split with that fraction")


def known_validation_rows(dataset: DictConfig, n_val: int | None) -> int | None:
    """The validation rows as far as known: the loaded count, else 0 where the config rules any out, else None."""
    if n_val is None and (dataset.get("val_fraction") == 0 or dataset.get("n_val") == 0):
        return 0
    return n_val


def check_recalibration(cfg: DictConfig, task: str, n_val: int | None = None) -> None:
    """recalibrate= names a method that applies: a regression task with enough validation rows to fit it on."""
    from densbench.evaluation import recalibration
    name = cfg.recalibrate
    one_of("recalibrate", name, recalibration.METHODS)
    if name == "none":
        return
    if task != "regression":
        raise Incompatible(f"recalibrate={name} recalibrates continuous predictive distributions; dataset={cfg.dataset.name} "
                           f"is a {task} task (recalibrate=none there)")
    d = cfg.dataset
    n_val = known_validation_rows(d, n_val)
    if n_val is not None and n_val < recalibration.MIN_POINTS:
        raise Incompatible(f"recalibrate={name} is fitted on the validation split, which has {n_val} rows for "
                           f"dataset={d.name}; it needs at least {recalibration.MIN_POINTS} (raise dataset.val_fraction or n_val)")


def check_validation_choices(cfg: DictConfig, head: Family, n_val: int | None = None) -> None:
    """Candidates (model.dropout as a list) and a noise level (head=homoscedastic) are chosen on the validation
    rows: refuse a run that has none, instead of testing an arbitrary candidate or noise."""
    d = cfg.dataset
    n_val = known_validation_rows(d, n_val)
    what = [f"model.dropout={list(cfg.model.dropout)} (one candidate per rate)"] if OmegaConf.is_list(cfg.model.get("dropout")) else []
    what += [f"head={head.name}'s {', '.join(head.chosen_on_validation)}"] if head.chosen_on_validation else []
    if what and n_val == 0:
        raise Incompatible(f"{' and '.join(what)} {'are' if len(what) > 1 else 'is'} chosen on the validation rows, which "
                           f"dataset={d.name} does not have: "
                           "set dataset.val_fraction > 0 (the UCI experiments set 0.1)")


def check_against_data(plan: Plan, data: Any, grad: str) -> Family:
    """Combinations only the loaded data can rule out; returns the family bound to the data."""
    task = data.task
    try:
        family = plan.family.bind(task, data.n_classes)
    except ConfigError as exc:
        extra = ""
        if task == "regression" and "poisson" in str(exc):
            y = data.y[data.train]
            extra = f"; the targets include negative values (min {y.min():g})" if (y < 0).any() else \
                "; the targets are not integer counts" if (y != y.round()).any() else ""
        raise Incompatible(f"{exc}{extra} (dataset={data.name})") from None
    if task == "multivariate":  # a joint head's output widths follow the data's number of targets
        family = family.for_targets(data.n_targets)
    _refuse_pair(plan.objective, family, task)
    if grad == "analytic":
        why = plan.objective.analytic_refusal(family)
        if why:
            raise Incompatible(f"grad=analytic is not available for loss={plan.objective.name} with head={family.name}: {why}")
    if len(data.test) == 0:
        raise ConfigError(f"dataset={data.name}: the test split is empty")
    if task == "regression":
        check_support(family, data)
    return family


def check_support(family: Family, data: Any) -> None:
    """Refuse regression targets outside the family's support, saying how many and where."""
    from densbench.distributions.families.base import SUPPORTS

    counts, first = [], None
    for split in ("train", "val", "test"):
        rows = getattr(data, split)
        if not len(rows):  # an empty split (no validation rows) has nothing outside
            continue
        outside = rows[family.outside_support(data.y[rows]).reshape(len(rows), -1).any(1)]
        if len(outside):
            counts.append(f"{split} {len(outside)} of {len(rows)}")
            first = first if first is not None else int(outside[0])
    if counts:
        raise Incompatible(f"head={family.name} models targets with {SUPPORTS[family.support][0]}, but dataset={data.name} has "
                           f"targets outside that ({', '.join(counts)}; the first at row {first}: y = {data.y[first]:g})")
