"""`python -m densbench [overrides]` (one run) or `python -m densbench -m a=1,2 ...` (a sweep)."""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from densbench.config import CONFIG_NAME, config_dir
from densbench.signals import Interrupted


@hydra.main(config_path=config_dir(), config_name=CONFIG_NAME, version_base="1.3")
def app(cfg: DictConfig) -> float | None:
    """Hydra task function: one job, recorded in its run directory whatever happens."""
    from densbench.run import run_job

    result = run_job(cfg, HydraConfig.get().runtime.output_dir)
    status = result.get("status")
    if status != "ok":
        print(f"densbench: {status}: {result.get('error')}", file=sys.stderr)
    if HydraConfig.get().mode.name == "RUN" and status != "ok":  # a sweep records it and goes on
        sys.exit(1)
    return (result.get("metrics") or {}).get("nll")


def main() -> None:
    """Console entry point."""
    try:
        app()
    except Interrupted as exc:  # already recorded and announced by the job: exit as the signal asks
        sys.exit(128 + exc.signum)


if __name__ == "__main__":
    main()
