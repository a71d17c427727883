"""Named methods (conf/method/*.yaml): which recipe a run's config is, read from the recipes themselves.

A method is a loss x head pair and an ensemble size. The names come from the YAML files, so a new
method is one YAML here too, and a report can label a run `beta_nll` or `ensemble` without a table
kept by hand. A recipe with a `baseline` node (ngboost, catboost, gp) is not a network: it is left out
of recipes() and named by baselines().
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import OmegaConf

from densbench.config import config_dir


class Recipe(NamedTuple):
    """What a method fixes: the loss config (and the objective class it names), the head, the ensemble size, and
    whether its networks use dropout (MC dropout: the same loss and head as a method without)."""

    loss: str
    head: str
    members: int
    objective: str
    dropout: bool = False


@lru_cache(maxsize=1)
def _method_nodes() -> dict[str, dict[str, Any]]:
    """Every conf/method/*.yaml as a plain dict, by name (read once)."""
    return {path.stem: OmegaConf.to_container(OmegaConf.load(path)) for path in sorted(Path(config_dir(), "method").glob("*.yaml"))}


@lru_cache(maxsize=1)
def recipes() -> dict[str, Recipe]:
    """Every method of conf/method by name (read as YAML: a recipe is only group overrides and plain keys)."""
    out = {}
    for name, node in _method_nodes().items():
        if node.get("baseline"):
            continue
        picked = {}
        for entry in node.get("defaults") or []:  # e.g. {"override /loss": "nll"}
            for key, value in (entry.items() if isinstance(entry, dict) else ()):
                picked[key.removeprefix("override").strip().lstrip("/")] = value
        loss = picked.get("loss", "nll")
        members = int((node.get("ensemble") or {}).get("members", 1))
        out[name] = Recipe(loss, picked.get("head", "gaussian"), members, _objective(loss),
                                _uses_dropout((node.get("model") or {}).get("dropout")))
    return out


def _uses_dropout(rate: Any) -> bool:
    """Whether a model.dropout setting (a rate or a list of candidate rates) drops anything."""
    return any(float(r) > 0 for r in rate) if isinstance(rate, (list, tuple)) else bool(rate and float(rate) > 0)


def _objective(loss: str) -> str:
    # runs record the objective class a loss config names (several configs may name one class)
    return str(OmegaConf.load(Path(config_dir(), "loss", f"{loss}.yaml")).get("_target_", loss))


@lru_cache(maxsize=1)
def baselines() -> dict[str, str]:
    """The non-network methods of conf/method (those with a `baseline` node): name -> the class it instantiates."""
    return {name: str(node["baseline"]["_target_"]) for name, node in _method_nodes().items() if node.get("baseline")}


def baseline_of(config: dict[str, Any]) -> str | None:
    """The baseline method a run's config is (ngboost, catboost, gp), or None for a network."""
    target = ((config or {}).get("baseline") or {}).get("_target_")
    if target is None:
        return None
    return next((name for name, t in baselines().items() if t == target), str(target).rsplit(".", 1)[-1].lower())


def single_method(config: dict[str, Any], labels: dict[str, Any]) -> str | None:
    """The single-model network method with a run's objective and head, or None (a baseline is not one)."""
    if baseline_of(config) is not None:
        return None
    objective = ((config or {}).get("loss") or {}).get("_target_")
    for name, recipe in recipes().items():
        dropout = _uses_dropout(((config or {}).get("model") or {}).get("dropout"))
        if recipe.members == 1 and (recipe.objective, recipe.head, recipe.dropout) == (objective, labels.get("head"), dropout):
            return name
    return None


def method_of(config: dict[str, Any], labels: dict[str, Any]) -> str | None:
    """The method a run is: its baseline's name, `ensemble` for any ensemble (of whichever members), else its single-model method."""
    baseline = baseline_of(config)
    if baseline is not None:
        return baseline
    members = int(((config or {}).get("ensemble") or {}).get("members", 1) or 1)
    return "ensemble" if members > 1 else single_method(config, labels)
