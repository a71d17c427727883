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
    single = HydraConfig.get().mode.name == "RUN"
    if single:
        refuse_bad_config(cfg)
    from densbench.run import run_job  # torch and Lightning: seconds of imports

    result = run_job(cfg, HydraConfig.get().runtime.output_dir)  # announces its outcome in one line
    if single and result.get("status") != "ok":  # a sweep records it and goes on
        sys.exit(1)
    return (result.get("metrics") or {}).get("nll")


def refuse_bad_config(cfg: DictConfig) -> None:
    """Exit with one line if the config is invalid or its parts do not fit, before torch is imported.

    A sweep instead records such a job (failed, or skipped when incompatible) and goes on.
    """
    from densbench.checks import Incompatible, check_config
    from densbench.errors import ConfigError

    try:
        check_config(cfg)
    except Incompatible as exc:
        print(f"densbench: incompatible: {exc}", file=sys.stderr)
        sys.exit(1)
    except ConfigError as exc:
        print(f"densbench: {exc}", file=sys.stderr)
        sys.exit(1)


def sweep(overrides: list[str]) -> int:
    """Run `python -m densbench -m <overrides>` in this process and return its exit status.

    Several sweeps in one process share its stacked launcher's worker pool (hydra.launcher.workers),
    so a suite of multiruns imports torch and Lightning once per worker.
    """
    argv = sys.argv
    sys.argv = ["densbench", "-m", *overrides]
    try:
        app()
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv


def main() -> None:
    """Console entry point."""
    try:
        app()
    except Interrupted as exc:  # already recorded and announced by the job: exit as the signal asks
        sys.exit(128 + exc.signum)


if __name__ == "__main__":
    main()
