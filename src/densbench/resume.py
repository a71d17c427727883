"""Whether a run directory's earlier work can be reused, and who may work in it now.

A finished result is reused, and an unfinished run continued from its checkpoint, only when the
config, the code and the data are the ones that produced them; otherwise the run starts over and one
line says why. A lock file keeps two processes (two identical sweeps, say) out of one run
directory at the same time; the second waits, then finds the first one's result.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK_FILE = ".densbench.lock"
KEY_FIELDS = {"config_hash": "config", "source_hash": "code", "data_hash": "data"}


def run_key(config_hash: str, source_hash: str, data_hash: str) -> dict[str, str]:
    """What a result or checkpoint must match to be reused."""
    return {"config_hash": config_hash, "source_hash": source_hash, "data_hash": data_hash}


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
