"""Named methods (conf/method/*.yaml): which recipe a run's config is, read from the recipes themselves.

A method is a loss x head pair and an ensemble size. The names come from the YAML files, so a new
method is one YAML here too, and a report can label a run `beta_nll` or `ensemble` without a table
kept by hand.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import OmegaConf

from densbench.config import config_dir


class Recipe(NamedTuple):
    """What a method fixes: the loss config (and the objective class it names), the head and the ensemble size."""

    loss: str
    head: str
    members: int
    objective: str


@lru_cache(maxsize=1)
def recipes() -> dict[str, Recipe]:
    """Every method of conf/method by name (read as YAML: a recipe is only group overrides and plain keys)."""
    out = {}
    for path in sorted(Path(config_dir(), "method").glob("*.yaml")):
        node = OmegaConf.to_container(OmegaConf.load(path))
        picked = {}
        for entry in node.get("defaults") or []:  # e.g. {"override /loss": "nll"}
            for key, value in (entry.items() if isinstance(entry, dict) else ()):
                picked[key.removeprefix("override").strip().lstrip("/")] = value
        loss = picked.get("loss", "nll")
        members = int((node.get("ensemble") or {}).get("members", 1))
        out[path.stem] = Recipe(loss, picked.get("head", "gaussian"), members, _objective(loss))
    return out


def _objective(loss: str) -> str:
    # runs record the objective class a loss config names (several configs may name one class)
    return str(OmegaConf.load(Path(config_dir(), "loss", f"{loss}.yaml")).get("_target_", loss))


def single_method(config: dict[str, Any], labels: dict[str, Any]) -> str | None:
    """The single-model method with a run's objective and head, or None."""
    objective = ((config or {}).get("loss") or {}).get("_target_")
    for name, recipe in recipes().items():
        if recipe.members == 1 and (recipe.objective, recipe.head) == (objective, labels.get("head")):
            return name
    return None


def method_of(config: dict[str, Any], labels: dict[str, Any]) -> str | None:
    """The method a run is: `ensemble` for any ensemble (of whichever members), else its single-model method."""
    members = int(((config or {}).get("ensemble") or {}).get("members", 1) or 1)
    return "ensemble" if members > 1 else single_method(config, labels)
