"""Where a result came from: the code, the data and the library versions that produced it.

A result is reused (resume) or averaged with others (report) only when all three match, so the
fingerprints must change whenever the numbers could: the code fingerprint hashes every source and
config file of the package (a git commit alone misses uncommitted edits), the data fingerprint hashes
the bytes of the files a dataset is read from, or the generator settings of synthetic data.
Torch-free: it runs before any training library is imported.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

PACKAGE_DIR = Path(__file__).resolve().parent


def _sha256_files(paths: Iterable[Path], root: Path | None = None) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        # the relative name is hashed too: a moved or renamed file is a different revision
        h.update(str(p.relative_to(root) if root else p.name).encode())
        h.update(b"\0")
        h.update(_digest(p))
        h.update(b"\0")
    return h.hexdigest()[:16]


def _digest(path: Path) -> bytes:
    """The SHA-256 of a file's bytes, computed once per process while the file is unchanged (every job of
    a sweep over one dataset hashes its data file)."""
    st = path.stat()
    return _digest_of(str(path), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=256)
def _digest_of(path: str, mtime_ns: int, size: int) -> bytes:
    return hashlib.sha256(Path(path).read_bytes()).digest()


def _config_dir() -> Path:
    from densbench.config import config_dir

    return Path(config_dir())


@lru_cache(maxsize=1)
def code_revision() -> dict[str, Any]:
    """Version, a hash of the package's source and configs, and the git commit (dirty flag) of a checkout."""
    sources = [p for p in PACKAGE_DIR.rglob("*.py") if "__pycache__" not in p.parts]
    conf = _config_dir()
    configs = list(conf.rglob("*.yaml"))
    source_hash = hashlib.sha256(
        (_sha256_files(sources, PACKAGE_DIR) + _sha256_files(configs, conf)).encode()
    ).hexdigest()[:16]
    out: dict[str, Any] = {"version": _version("densbench"), "source_hash": source_hash}
    out.update(_git(PACKAGE_DIR))
    return out


def _git(where: Path) -> dict[str, Any]:
    """Commit and dirty flag when the package runs from a git checkout (editable install)."""
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=where, capture_output=True, text=True, timeout=5)
        if top.returncode != 0 or not (PACKAGE_DIR.is_relative_to(Path(top.stdout.strip()))):
            return {}
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {}
    if commit.returncode != 0:
        return {}
    return {"git_commit": commit.stdout.strip(), "git_dirty": bool(status.stdout.strip())}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str | None]:
    """Python and the libraries whose numerics a result depends on (from package metadata, no imports)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("torch", "lightning", "numpy", "torchmetrics"):
        out[dist] = _version(dist)
    return out


def file_fingerprint(paths: Iterable[str | Path]) -> str:
    """Hash of the bytes of the files a dataset is read from."""
    return _sha256_files([Path(p).resolve() for p in paths], None)


def settings_fingerprint(settings: dict) -> str:
    """Hash of the settings that generate a synthetic dataset (the generator code is in the code hash)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
