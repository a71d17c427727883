"""Non-network baselines run as methods of the benchmark: NGBoost, CatBoost with virtual ensembles, an exact GP.

Each is one module (densbench.baselines.ngboost, .catboost, .gp) and one recipe (conf/method/<name>.yaml,
whose `baseline` node it instantiates); densbench.baselines.common runs any of them on a job's data and
scores its predictive distribution with densbench's own metrics. Torch-free at import, so the checks of a
config can refuse a missing package before anything loads.
"""

from __future__ import annotations

import importlib.util

from densbench.errors import ConfigError

INSTALL = 'pip install "densbench[baselines]"'
# the package each baseline module needs, by module name (= the method's name in conf/method)
PACKAGES = {"ngboost": "ngboost", "catboost": "catboost", "gp": "gpytorch"}


class MissingPackage(ConfigError):
    """A baseline whose optional package is not installed."""


def missing_message(method: str) -> str:
    """The one line that refuses a baseline without its package."""
    return f"method={method} needs the package {PACKAGES[method]}, which is not installed: {INSTALL}"


def require(target: str) -> None:
    """Refuse the baseline class `target` (a baseline node's _target_) when its package is not installed."""
    method = target.rsplit(".", 2)[-2] if target.count(".") >= 2 else target
    if method not in PACKAGES:
        raise ConfigError(f"baseline._target_={target} is not a densbench baseline; the modules are: "
                          + ", ".join(f"densbench.baselines.{m}" for m in PACKAGES))
    try:
        found = importlib.util.find_spec(PACKAGES[method]) is not None
    except (ImportError, ValueError):  # a package whose import is blocked or broken
        found = False
    if not found:
        raise MissingPackage(missing_message(method))
