"""`python -m densbench [overrides]` (one run) or `python -m densbench -m a=1,2 ...` (a sweep)."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException, MissingConfigException
from omegaconf import DictConfig

from densbench.config import CONFIG_NAME, config_dir
from densbench.errors import closest
from densbench.launching import parallel_stop
from densbench.signals import Interrupted, install_process_handlers, process_stage


@hydra.main(config_path=config_dir(), config_name=CONFIG_NAME, version_base="1.3")
def app(cfg: DictConfig) -> float | dict | None:
    """Hydra task function: one job, recorded in its run directory whatever happens."""
    single = HydraConfig.get().mode.name == "RUN"  # a bad config was refused before its folder (OutputCheck)
    run_dir = HydraConfig.get().runtime.output_dir
    try:
        with process_stage("importing torch and Lightning", deferred=True):
            from densbench.runs.execution import run_job  # torch and Lightning: seconds of imports
    except Interrupted as exc:  # before the job could record anything: its record says so
        interrupted_record(cfg, run_dir, exc)
        raise
    if parallel_stop.stopping():  # a parallel sweep told to stop: jobs not started stay unrun for the rerun
        return None
    try:
        result = run_job(cfg, run_dir)  # announces its outcome in one line
    except Interrupted as exc:
        if parallel_stop.in_worker():  # recorded; the parent, which passed the signal on, stops the sweep
            parallel_stop.stopped(exc.signum)
            return None
        raise
    if single and result.get("status") != "ok":  # a sweep records it and goes on
        sys.exit(1)
    if result.get("error_kind") == "disk" and parallel_stop.in_worker():  # no record: the parent must count it
        return {"unrecorded": result.get("error"), "run_dir": run_dir}
    return (result.get("metrics") or {}).get("nll")


def interrupted_record(cfg: DictConfig, run_dir: str, exc: Interrupted) -> None:
    """result.json of a job interrupted before it started, and its line (the job would write both itself)."""
    from omegaconf import OmegaConf

    from densbench.results import RESULT_FILE, write_json_atomic

    def name(node: DictConfig) -> str:  # torch may be half imported: the class's name from its path, not the class
        return str(node.get("_target_", "?")).rsplit(".", 1)[-1].lower()

    labels = {"dataset": cfg.dataset.name, "loss": name(cfg.loss), "head": name(cfg.head), "grad": cfg.grad,
              "device": cfg.trainer.accelerator, "seed": cfg.seed, "split": cfg.dataset.get("split")}

    error = f"interrupted by {signal.Signals(exc.signum).name} while {exc.stage}; nothing to keep yet; rerun the same command to resume"
    try:
        write_json_atomic(Path(run_dir) / RESULT_FILE, {"status": "interrupted", "error": error, "labels": labels,
                                                        "config": OmegaConf.to_container(cfg, resolve=False), "run_dir": run_dir})
    except (OSError, ValueError):
        pass  # the line still says what happened
    print(f"densbench: {error}  ->  {run_dir}", file=sys.stderr)
    exc.announced = True


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
    if sys.argv[1:] == ["list"]:  # what there is to run: losses, heads, the pairs that fit, datasets
        from densbench.runs.listing import listing

        print(listing())
        return
    install_process_handlers()
    multirun = any(a in ("-m", "--multirun") for a in sys.argv[1:])
    # Hydra prints a config it cannot compose in several lines (and a hint about HYDRA_FULL_ERROR);
    # asked to raise instead, it lets densbench say it in one line (unless the user asked for the trace)
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        with process_stage("running the sweep" if multirun else "starting the run"):
            app()
    except Interrupted as exc:  # a job records and announces its own; elsewhere, one line here
        if not exc.announced:
            print(exc.line(), file=sys.stderr)
        sys.exit(128 + exc.signum)
    except CompactHydraException as exc:
        if full_error:
            raise
        print(f"densbench: {one_line(exc)}", file=sys.stderr)
        sys.exit(1)


def one_line(exc: CompactHydraException) -> str:
    """Hydra's message for a config it cannot compose (an unknown key, option or override), as one line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if isinstance(exc, MissingConfigException) and exc.options:
        head = next((line for line in lines if line.startswith("In ") or "Could not" in line), lines[0] if lines else "")
        missing = re.search(r"Could not find '([\w/@.-]+)/([^'/]+)'", head)
        if missing:  # an option of a config group that does not exist: as the user wrote it, with the nearest
            group, name = missing.groups()
            head = f"{group}={name} is not an option{closest(name, exc.options)}"
        return f"{head.split(': ', 1)[-1] if head.startswith('In ') else head}; choose one of: {', '.join(exc.options)}"
    text = " ".join(line for line in lines if not line.startswith(("Config search path", "provider=")))
    cause = exc.__cause__
    if cause is not None and str(cause).strip():
        text += f" ({str(cause).strip().splitlines()[0]})"
    return text


if __name__ == "__main__":
    main()
