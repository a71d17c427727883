"""Hydra callbacks for launcher presets."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class ReleaseWorkers(Callback):
    """After a parallel sweep, stop joblib's idle worker processes at once.

    They hold torch and Lightning in memory; left to the interpreter's exit handlers, shutting them
    down takes seconds that add to every sweep's wall time.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True, kill_workers=True)
