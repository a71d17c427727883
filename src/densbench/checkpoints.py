"""Checkpoints: the complete training state, written atomically, read back with care.

A checkpoint holds the weights, the optimiser state, the engine state (step count, the running
period's losses, history) and the model selection state, plus the key (config, code and data
fingerprints) of the run that wrote it. It is written to a temporary file beside the target and
renamed over it, so a full disk or a kill leaves the previous checkpoint intact; a file that cannot
be read back (empty, truncated, another version) is reported in one line and ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from densbench.atomic import replacing
from densbench.signals import Interrupted

LAST = "last.ckpt"  # the latest consistent state: after every evaluation period and at an interruption
BEST = "best.ckpt"  # the selected weights of a finished run, for users
FORMAT = 2


def save_atomic(obj: Any, path: str | Path) -> Path:
    """torch.save to a temporary file in the same directory, then rename it over `path`."""
    with replacing(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


class CheckpointError(Exception):
    """A checkpoint that cannot be used (unreadable, or written by another run)."""


def load(path: str | Path, key: dict[str, str]) -> dict[str, Any]:
    """A checkpoint written by a run with this key; CheckpointError says why not."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError("the file is empty")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated or foreign files fail in many ways (EOFError, pickle, zip errors)
        raise CheckpointError(f"it cannot be read ({type(exc).__name__}: {exc or 'truncated'})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError("it was written by another densbench version")
    if ckpt.get("key") != key:
        from densbench.resume import KEY_FIELDS

        changed = [KEY_FIELDS.get(k, k) for k in key if (ckpt.get("key") or {}).get(k) != key[k]]
        raise CheckpointError(f"it was written with another {' and '.join(changed) or 'run'}")
    return ckpt


def training_state(module: Any, selection: Any) -> dict[str, Any]:
    """The state a resumed run needs, on the CPU."""
    opt = module.optimizers()
    optimizer = opt.optimizer if hasattr(opt, "optimizer") else opt
    return {
        "format": FORMAT,
        "key": module.run_key,
        "model": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "engine": module.state.state_dict(),
        "selection": selection.state_dict(),
    }


def restore(module: Any, selection: Any, ckpt: dict[str, Any], optimizer: bool = True) -> None:
    """Load a checkpoint's model, engine and selection state, and the optimiser's once it exists.

    The module must already have the training dtype, or float64 weights would pass through float32.
    """
    module.load_state_dict(ckpt["model"])
    if optimizer:
        opt = module.optimizers()
        (opt.optimizer if hasattr(opt, "optimizer") else opt).load_state_dict(ckpt["optimizer"])
    module.state.load_state_dict(ckpt["engine"])
    selection.load_state_dict(ckpt["selection"])


class Checkpoints(pl.Callback):
    """Writes last.ckpt after every evaluation period (validation and selection done) and when a run is
    interrupted between two steps. Only global rank zero writes."""

    def __init__(self, directory: str | Path, selection: Any) -> None:
        self.directory = Path(directory)
        self.selection = selection

    @property
    def path(self) -> Path:
        """Where the latest state goes."""
        return self.directory / LAST

    def save(self, trainer: pl.Trainer, pl_module: Any) -> None:
        """Write the current training state (rank zero)."""
        if trainer.is_global_zero:
            save_atomic(training_state(pl_module, self.selection), self.path)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        # runs after the period's validation and model selection
        self.save(trainer, pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: Any, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        # the engine raises Interrupted only between two steps, Lightning its SIGTERMException only
        # between two chunks: both leave a consistent state to keep
        if trainer.state.fn == "fit" and isinstance(exception, (Interrupted, SIGTERMException)):
            self.save(trainer, pl_module)
