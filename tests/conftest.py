"""Shared helpers: compose densbench configs in-process and run the real command in a subprocess."""

from __future__ import annotations

import atexit
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from densbench import numerics
from densbench.config import compose_config
from prewarmed import Server

REPO = Path(__file__).resolve().parents[1]
# Figures that must not depend on a stack's size or the launcher agree bit for bit where MKL's strict
# reproducibility branch holds (pinned kernels on an Intel CPU). Elsewhere MKL picks its kernels by
# how many products a batched call holds (measured on an AMD EPYC: last-bit differences, 1e-7 after a
# few hundred float32 steps), so there they must agree to the reports' 1e-6.
EXACT = numerics.mkl_strict()


def assert_same(got, want, path: str = "") -> None:
    """Assert nested figures (dicts, lists, numbers) equal: bit for bit where EXACT, else to 1e-6 relative."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), path
        for k in want:
            assert_same(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{path}[{i}]")
    elif isinstance(want, float) and isinstance(got, float):
        same = got == want or (got != got and want != want)
        assert same or (not EXACT and math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9)), f"{path}: {got!r} != {want!r}"
    else:
        assert got == want, path


def make_cfg(*overrides: str):
    """Compose the config as `python -m densbench <overrides>` would (without the hydra node)."""
    return compose_config(list(overrides))


@pytest.fixture(autouse=True)
def _environment_restored():
    """Each test leaves the process environment as it found it: a worker runs tests of many modules in an order
    that depends on timing, and a variable one test left behind (a script's main() run in-process sets the UCI
    root for its workers) would change what a later test loads."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def cfg_factory():
    return make_cfg


_PREWARMED = Server()
atexit.register(_PREWARMED.close)


def run_cli(args: list[str], cwd: Path, timeout: int = 600, env: dict | None = None,
            fresh: bool = False) -> subprocess.CompletedProcess:
    """Run `python -m densbench ARGS` in cwd and return the completed process: in a fork of a prewarmed interpreter
    (prewarmed.py), or in a fresh one where the test is about what happens before or during the imports or at the
    interpreter's exit (fresh=True), or where the environment differs from the one the prewarmed imports saw."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="0")
    full_env.update(env or {})
    if not fresh and _PREWARMED.serves(full_env):
        return _PREWARMED.run(args, cwd, full_env, timeout)
    return subprocess.run(
        [sys.executable, "-m", "densbench", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )
