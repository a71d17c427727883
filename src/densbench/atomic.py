"""Atomic file writes: a temporary file beside the target, renamed over it when complete.

A signal, a kill or a full disk in the middle of a write then leaves the previous file (or none),
never half of one. Torch-free, so reports can use it.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def replacing(path: str | Path, mode: str = "w", sync: bool = False, **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; on success it replaces `path` (mode 0666 minus the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are as readable as any other file
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically."""
    with replacing(path) as f:
        f.write(text)
    return Path(path)


def save_figure(fig: Any, path: str | Path, **kwargs: Any) -> Path:
    """Save a matplotlib figure atomically."""
    path = Path(path)
    with replacing(path, "wb") as f:
        fig.savefig(f, format=path.suffix.lstrip("."), **kwargs)
    return path


def dump_yaml(data: Any) -> str:
    """Plain data (dicts, lists, scalars) as block YAML in insertion order, by libyaml's C emitter where present.

    Hydra's records of a sweep's jobs (.hydra/*.yaml) are written this way: what OmegaConf.to_yaml
    writes, read back the same, at a fraction of its cost.
    """
    import yaml

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(data, Dumper=dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)
