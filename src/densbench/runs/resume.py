"""Provenance and resume: a job's key, whether a run directory's earlier work can be reused, who may work in it now.

A finished result is reused, and an unfinished run continued from its checkpoint, only when the
config, the code and the data are the ones that produced them; otherwise the run starts over and one
line says why. A lock file keeps two processes (two identical sweeps, say) out of one run
directory at the same time; the second waits, then finds the first one's result.
"""

from __future__ import annotations

import fcntl
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

from densbench import numerics, provenance

from densbench.training import checkpoints
from densbench.data.datasets import fingerprint
from densbench.progress import announce, say
from densbench.results import KEY_FIELDS, config_hash, read_result

LOCK_FILE = ".densbench.lock"
# bookkeeping switches: they change where and whether a run is written, never its numbers
NOT_IN_KEY = ("resume", "report", "name")
# post-hoc: fitted on a trained model, so jobs that differ only in these train the same weights
NOT_IN_TRAINING = ("recalibrate",)


def job_key(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    """The resolved config, the key a reusable result must match, and the provenance to record."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    code = provenance.code_revision()
    data = fingerprint(cfg.dataset)
    key = {"config_hash": config_hash({k: v for k, v in resolved.items() if k not in NOT_IN_KEY}),
           "source_hash": code["source_hash"], "data_hash": data["data_hash"]}
    prov = dict(code, **data, versions=provenance.library_versions(), numerics=numerics.describe())
    return resolved, key, prov


def training_key(resolved: dict[str, Any]) -> str:
    """The hash of what a job trains: its resolved config without bookkeeping and post-hoc keys."""
    return config_hash({k: v for k, v in resolved.items() if k not in NOT_IN_KEY + NOT_IN_TRAINING})


def trained_weights(run_dir: Path, result: dict[str, Any]) -> Path | None:
    """The run directory beside this one that trained the weights a post-hoc job needs, if it finished.

    Post-hoc jobs (recalibrate=...) of a sweep are named after their overrides, so the job that
    trained their weights is the folder without the recalibrate item, or with recalibrate=none. It
    counts only if its result is ok and was trained with the same training key, code and data.
    """
    if ((result.get("config") or {}).get("recalibrate") or "none") == "none":
        return None
    name = run_dir.name
    candidates = [re.sub(r"(^|,)recalibrate=[^,]*", "", name).strip(","), re.sub(r"recalibrate=[^,]*", "recalibrate=none", name)]
    prov = result.get("provenance") or {}
    for candidate in dict.fromkeys(c for c in candidates if c and c != name):
        folder = run_dir.parent / candidate
        other = read_result(folder)
        if not other or other.get("status") != "ok" or other.get("train_key") != result.get("train_key"):
            continue
        theirs = key_of(other)
        if (theirs["source_hash"], theirs["data_hash"]) == (prov.get("source_hash"), prov.get("data_hash")) \
                and (folder / "checkpoints" / checkpoints.BEST).is_file():
            return folder
    return None


def reusable(cfg: DictConfig, run_dir: Path, key: dict[str, str], rank0: bool) -> dict | None:
    """The earlier result to reuse, or None (after one line saying why an ok result is not reused)."""
    previous = read_result(run_dir)
    if not cfg.resume:
        if rank0:  # a forced rerun starts from scratch
            (run_dir / "checkpoints" / checkpoints.LAST).unlink(missing_ok=True)
        return None
    reuse, why = reuse_verdict(previous, key)
    if reuse:
        if rank0:
            announce(previous, run_dir, reused=True)
        previous["resumed"] = "reused: result.json is ok for this config, code and data"
        return previous
    if why and previous and previous.get("status") == "ok":
        say(f"densbench: rerunning {run_dir}: {why}")
    return None


def previous_checkpoint(run_dir: Path, key: dict[str, str]) -> dict | None:
    """The last checkpoint of an unfinished run with this key; anything else is reported and set aside."""
    path = run_dir / "checkpoints" / checkpoints.LAST
    if not path.exists():
        return None
    try:
        return checkpoints.load(path, key)
    except checkpoints.CheckpointError as exc:
        say(f"densbench: ignoring {path}: {exc}; the run starts over")
        path.unlink(missing_ok=True)
        return None


def key_of(result: dict) -> dict[str, str | None]:
    """The run key recorded in a result.json."""
    prov = result.get("provenance") or {}
    return {"config_hash": result.get("config_hash"), "source_hash": prov.get("source_hash"), "data_hash": prov.get("data_hash")}


def reuse_verdict(previous: dict | None, key: dict[str, str]) -> tuple[bool, str | None]:
    """(reuse?, why not) for a run directory's earlier result.json."""
    if previous is None:
        return False, None
    if previous.get("status") != "ok":
        return False, f"the earlier run ended {previous.get('status')}"
    old = key_of(previous)
    changed = [KEY_FIELDS[k] for k in KEY_FIELDS if old.get(k) != key[k]]
    if changed:
        return False, f"the {' and '.join(changed)} changed since the earlier result"
    return True, None


@contextmanager
def locked(run_dir: Path, announce=print) -> Iterator[bool]:
    """Hold the run directory's lock; yields whether another process held it first (we waited)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK_FILE, "a+") as f:
        waited = False
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            announce(f"densbench: {run_dir} is being run by another process (pid {holder}); waiting for it to finish")
            fcntl.flock(f, fcntl.LOCK_EX)
            waited = True
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield waited
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)
