"""Shared helpers: compose densbench configs in-process and run the real command in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from densbench.config import compose_config

REPO = Path(__file__).resolve().parents[1]


def make_cfg(*overrides: str):
    """Compose the config as `python -m densbench <overrides>` would (without the hydra node)."""
    return compose_config(list(overrides))


@pytest.fixture
def cfg_factory():
    return make_cfg


def run_cli(args: list[str], cwd: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m densbench ARGS` in cwd and return the completed process."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="0")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "densbench", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )
