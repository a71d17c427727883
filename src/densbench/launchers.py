"""Hydra callbacks for launcher presets."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class ReleaseWorkers(Callback):
    """After a parallel sweep, stop joblib's idle worker processes at once.

    Left to the interpreter's exit handlers, the workers (each holding torch and Lightning) take
    seconds to go, added to every sweep's wall time. The executor is looked up, not requested:
    asking loky for one would start fresh workers when the sweep's were configured differently.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from joblib.externals.loky import reusable_executor

        executor = getattr(reusable_executor, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=True, kill_workers=True)
