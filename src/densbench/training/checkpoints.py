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
from densbench.results import KEY_FIELDS
from densbench.signals import Interrupted
from densbench.timing import Throttle

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
        changed = [KEY_FIELDS.get(k, k) for k in key if (ckpt.get("key") or {}).get(k) != key[k]]
        raise CheckpointError(f"it was written with another {' and '.join(changed) or 'run'}")
    if "same_as" in ckpt:  # a job that shares its models: the training state is its stack-mate's
        try:
            other = torch.load(ckpt["same_as"], map_location="cpu", weights_only=False)
        except Exception as exc:  # gone, truncated or foreign, like any checkpoint
            raise CheckpointError(f"the checkpoint it shares, {ckpt['same_as']}, cannot be read ({type(exc).__name__})") from None
        theirs = (other.get("key") or {}) if isinstance(other, dict) else {}
        if not isinstance(other, dict) or other.get("format") != FORMAT or any(theirs.get(k) != key[k] for k in ("source_hash", "data_hash")):
            raise CheckpointError(f"the checkpoint it shares, {ckpt['same_as']}, was written by another run")
        return {**other, "key": key}
    return ckpt


def _rows(value: Any, models: list[int], n: int) -> Any:
    # per-model optimiser state (Adam's moments, momentum buffers) has the parameters' leading model
    # axis; step counts and the like are shared by the stack
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n:
        return value[models].cpu()
    return value


def job_states(module: Any, selection: Any) -> list[dict[str, Any]]:
    """Every job's share of the training state (its models' rows of everything), on the CPU."""
    n = module.stack.size
    weights = {k: v.detach().cpu() for k, v in module.weights().items()}
    opt = module.optimizer_state()
    out = []
    for job in module.jobs:
        models = job.models
        out.append({
            "format": FORMAT,
            "key": job.key,
            "model": {k: v[models] for k, v in weights.items()},
            "optimizer": {"state": {i: {k: _rows(v, models, n) for k, v in st.items()} for i, st in opt["state"].items()},
                          "param_groups": opt["param_groups"]},
            "engine": module.state.state_dict(models),
            "selection": selection.state_dict(models),
        })
    return out


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One training state for a stack from its jobs' shares, saved at the same step, in job order."""
    from densbench.training.engine import EngineState, Selection

    def cat(values: list[Any]) -> Any:
        if isinstance(values[0], torch.Tensor) and values[0].dim() > 0:
            return torch.cat(values)
        return values[0]  # shared by the stack (a step count)

    first = parts[0]["optimizer"]
    optimizer = {"state": {i: {k: cat([p["optimizer"]["state"][i][k] for p in parts]) for k in st} for i, st in first["state"].items()},
                 "param_groups": first["param_groups"]}
    return {
        "model": {k: torch.cat([p["model"][k] for p in parts]) for k in parts[0]["model"]},
        "optimizer": optimizer,
        "engine": EngineState.merge([p["engine"] for p in parts]),
        "selection": Selection.merge([p["selection"] for p in parts]),
    }


def restore(module: Any, selection: Any, ckpt: dict[str, Any], optimizer: bool = True) -> None:
    """Load a (merged) checkpoint's model, engine and selection state, and the optimiser's once it exists.

    The module must already have the training dtype, or float64 weights would pass through float32.
    """
    module.load_weights(ckpt["model"])
    if optimizer:
        module.load_optimizer_state(ckpt["optimizer"])
    module.state.load_state_dict(ckpt["engine"])
    selection.load_state_dict(ckpt["selection"])


class Checkpoints(pl.Callback):
    """Writes each job's last.ckpt after an evaluation period (validation and selection done) at most
    every `every_s` seconds, at the end of training, and when a run is interrupted between two steps.
    Only global rank zero writes."""

    def __init__(self, directories: list[Path], selection: Any, every_s: float = 0.0) -> None:
        self.directories = [Path(d) for d in directories]
        self.selection = selection
        # a stack of 20 jobs validated every epoch would otherwise spend half its training time
        # writing checkpoints; an orderly interrupt writes one anyway, only a kill loses up to this much
        self._throttle, self._step = Throttle(every_s), -1

    def save(self, trainer: pl.Trainer, pl_module: Any) -> None:
        """Write the current training state of every job (rank zero); a job that shares its models with an
        earlier one of the stack (they differ only in post-hoc keys) gets a pointer to that one's file."""
        if trainer.is_global_zero:
            written: dict[tuple[int, ...], Path] = {}
            for job, state, directory in zip(pl_module.jobs, job_states(pl_module, self.selection), self.directories):
                models = tuple(job.models)
                if models in written:
                    save_atomic({"format": FORMAT, "key": state["key"], "same_as": str(written[models])}, directory / LAST)
                else:
                    written[models] = save_atomic(state, directory / LAST)
        self._throttle.mark()
        self._step = pl_module.state.opt_steps

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        # runs after the period's validation and model selection
        if self._throttle.due():
            self.save(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        # the final state, so a run stopped while testing or writing figures is not trained again
        if pl_module.state.opt_steps != self._step:
            self.save(trainer, pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: Any, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        # the engine raises Interrupted only between two steps, Lightning its SIGTERMException only
        # between two chunks: both leave a consistent state to keep
        if trainer.state.fn == "fit" and isinstance(exception, (Interrupted, SIGTERMException)):
            self.save(trainer, pl_module)
