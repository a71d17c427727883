"""The axes a run is known by in reports, titles and TensorBoard: dataset, objective, family, gradient path, devices."""

from __future__ import annotations

from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig

from densbench.methods import baseline_of
from densbench.runs.checks import Plan, check_config
from densbench.runs.devices import world_size

# the predictive a baseline run is scored by (its `head` label): a Normal, or a uniform mixture of Normals
BASELINE_PREDICTIVE = {"catboost": "normal_mixture"}


def labels(cfg: DictConfig, plan: Plan | None = None) -> dict[str, Any]:
    """The axes a report groups by: dataset, objective, predictive family, gradient path, devices."""
    baseline = baseline_of(cfg)
    if baseline is not None:  # not a network: no loss or head of densbench's; named by its method and predictive
        loss, head = baseline, BASELINE_PREDICTIVE.get(baseline, "normal")
    elif plan is not None:
        loss, head = plan.objective.label, plan.bound_family().label
    else:
        # the jobs of a sweep share their loss and head: checked once per distinct pair, not per job
        loss, head = _names(str(cfg.loss), str(cfg.head), f"{cfg.dataset.name}/{cfg.dataset.get('task')}", cfg)
    t = cfg.trainer
    n = world_size(t)
    return {
        "dataset": cfg.dataset.name,
        "loss": loss,
        "head": head,
        "grad": cfg.grad,
        "device": t.accelerator if n == 1 else f"{t.accelerator}x{n}",
        "seed": int(cfg.seed),
        "split": int(cfg.dataset.get("split", 0) or 0) if cfg.dataset.get("protocol") == "uci" else None,
    }


_NAMES: dict[tuple[str, str, str], tuple[str, str]] = {}


def _names(loss: str, head: str, dataset: str, cfg: DictConfig) -> tuple[str, str]:
    """(objective label, family label) of a config, by its loss, head and dataset nodes."""
    key = (loss, head, dataset)
    if key not in _NAMES:
        try:
            plan = check_config(cfg)
            _NAMES[key] = (plan.objective.label, plan.bound_family().label)
        except Exception:  # noqa: BLE001 - a config that fails its checks is still labelled from its names
            _NAMES[key] = (_registered_name(cfg.loss), _registered_name(cfg.head))
    return _NAMES[key]


def _registered_name(node: DictConfig) -> str:
    """The registry name of a loss or head config's class, even when its values fail the checks."""
    try:
        return str(get_class(node._target_).name)
    except Exception:  # noqa: BLE001 - an unknown class: the last part of its path
        return str(node.get("_target_", "?")).rsplit(".", 1)[-1].lower()


def title(lab: dict[str, Any], recal: str = "none") -> str:
    """One line naming a run (its labels and recalibration), for its figures."""
    return (f"{lab['dataset']} | loss={lab['loss']} | head={lab['head']} | grad={lab['grad']}"
            + (f" | recalibrate={recal}" if recal != "none" else ""))
