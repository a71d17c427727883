"""A job's loggers (any of Lightning's, several at once) behind one interface: scalars, hyperparameters, figures, the end.

Lightning's loggers share ``log_metrics``, ``log_hyperparams`` and ``finalize`` but differ in where
they write, how a resumed run avoids duplicate points, and whether and how they take a figure. Those
differences are registered next to each logger class here (``register``), as torch registers a KL
divergence per pair of types; a logger class nobody registered gets the defaults (its files in the
run directory, no figures: the PNGs beside result.json are every logger's figures).
"""

from __future__ import annotations

import csv
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger
from omegaconf import DictConfig
from torch.utils.tensorboard.summary import hparams

from densbench.atomic import dump_yaml, write_text
from densbench.errors import ConfigError


@dataclass(frozen=True)
class LoggerKind:
    """How densbench drives one class of Lightning logger."""

    name: str  # the artifacts key in result.json
    subdir: str = ""  # where under the run directory (or the sweep's, when shared) its files go (save_dir)
    requires: str | None = None  # the package it needs beyond Lightning (installed with the extra of that name)
    shared: bool = False  # one store for a whole sweep (a tracking store lists many runs), not one per run
    resume: Callable[[int], dict[str, Any]] = field(default=lambda step: {})  # constructor arguments when a run resumes
    reopen: Callable[[Logger, int], None] = field(default=lambda logger, step: None)  # after it is made, when a run resumes
    run_name: bool = False  # name its run after the run directory (a tracking server lists many)
    figure: Callable[[Logger, str, Any, int], None] | None = None
    log_dir: Callable[[Logger], str | None] = field(default=lambda logger: getattr(logger, "log_dir", None))
    prepare: Callable[[DictConfig, Path], None] = field(default=lambda entry, save_dir: None)  # before each one is made
    hparams: Callable[[Logger, dict[str, Any]], None] = field(default=lambda logger, params: logger.log_hyperparams(params))
    tag: Callable[[str, bool], str] = field(default=lambda name, final: name)  # a scalar's name here (final: one value per run)
    # after a sweep, "module:function" given the sweep and its runs' log directories; a name, not a
    # function: result.json records it, and the sweep's end calls it without importing the loggers
    sweep_end: str | None = None


KINDS: dict[type, LoggerKind] = {}


def register(cls: type, kind: LoggerKind) -> None:
    """Declare how densbench drives a Lightning logger class."""
    KINDS[cls] = kind


def kind_of(cls: type) -> LoggerKind:
    """The registered kind of a logger class (or of its nearest registered base class), else the defaults."""
    return next((KINDS[c] for c in cls.__mro__ if c in KINDS), LoggerKind(name=cls.__name__.lower()))


def _tensorboard_figure(logger: Logger, name: str, fig: Any, step: int) -> None:
    logger.experiment.add_figure(name, fig, global_step=step)
    logger.experiment.flush()


def _tensorboard_hparams(logger: Logger, params: dict[str, Any]) -> None:
    # The session's hyperparameters only: no hp/ copies of the final metrics (they are the test/
    # scalars already) and no experiment summary, which TensorBoard reads once per log directory and
    # so must cover every run of a sweep: the sweep writes it at its end (tb_experiment.declare).
    # hparams.yaml beside the events is written here as the logger would write it, but without its
    # pass through OmegaConf, which costs more than the job's evaluation in a stack of small jobs.
    write_text(Path(logger.log_dir) / "hparams.yaml", dump_yaml(params))
    _, start, end = hparams(params, {})
    writer = logger.experiment.file_writer
    writer.add_summary(start)
    writer.add_summary(end)  # written with the rest when the job's logger closes: a flush waits for the writer thread


def _tensorboard_tag(name: str, final: bool) -> str:
    # the Scalars page sorts its sections by name and opens the first two; under their own section
    # the training curves come before test/ and throughput/, whose charts hold a single point each
    # (those final values are the HParams table's columns, where they are read)
    return name if final else f"curves/{name}"


def _prepare_mlflow(entry: DictConfig, save_dir: Path) -> None:
    from mlflow.exceptions import MlflowException  # the optional dependency: imported only when asked for
    from mlflow.tracking import MlflowClient

    # MLflow 3 refuses a file store unless asked (it prefers a database server); a sweep's own store
    # is exactly what a benchmark wants, and a user's explicit setting still wins
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    # the parallel launcher's jobs start together: made here, the experiment is not created twice
    # (Lightning's logger would create it on first use, and the second job to try would fail)
    client = MlflowClient(tracking_uri=save_dir.resolve().as_uri())
    name = str(entry.get("experiment_name", "lightning_logs"))
    if client.get_experiment_by_name(name) is None:
        try:
            client.create_experiment(name)
        except MlflowException:
            if client.get_experiment_by_name(name) is None:  # not a lost race: a real failure
                raise


def _store_root(run_dir: Path) -> Path:
    """Where a shared store goes: the sweep's directory in a Hydra multirun, else the run's own."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().sweep.dir)
    return run_dir


def _mlflow_figure(logger: Logger, name: str, fig: Any, step: int) -> None:
    logger.experiment.log_figure(logger.run_id, fig, f"{name}.png")


def _csv_reopen(logger: Logger, step: int) -> None:
    """Keep the rows a resumed run logged up to its checkpoint's step (CSVLogger deletes metrics.csv as it starts)."""
    path = Path(logger.log_dir) / "metrics.csv"
    try:
        with open(path, newline="") as f:
            kept = [row for row in csv.DictReader(f) if row.get("step") and float(row["step"]) <= step]
    except OSError:
        return
    writer = logger.experiment  # the writer is made (and the old file removed) on first use
    writer.metrics = [{k: v for k, v in row.items() if v != ""} | {"step": int(float(row["step"]))} for row in kept]
    logger.save()  # at once: an interrupt before the next save must not lose them


# events a killed run wrote after its last checkpoint are hidden, not shown twice
register(TensorBoardLogger, LoggerKind("tensorboard", resume=lambda step: {"purge_step": step + 1}, figure=_tensorboard_figure,
                                       hparams=_tensorboard_hparams, tag=_tensorboard_tag, sweep_end="densbench.tb_experiment:declare"))
register(CSVLogger, LoggerKind("csv", reopen=_csv_reopen))
register(MLFlowLogger, LoggerKind("mlflow", requires="mlflow", subdir="mlruns", shared=True, run_name=True, figure=_mlflow_figure,
                                  log_dir=lambda logger: logger.save_dir, prepare=_prepare_mlflow))


class JobLog:
    """Every logger of one job; empty (and false) when logging is off."""

    def __init__(self, loggers: list[Logger] | None = None) -> None:
        self.loggers = list(loggers or [])

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def metrics(self, values: dict[str, float], step: int, final: bool = False) -> None:
        """Scalars at an optimisation step, to every logger (final: the run's end values, not a curve's point)."""
        for logger in self.loggers:
            tag = kind_of(type(logger)).tag
            logger.log_metrics({tag(k, final): v for k, v in values.items()}, step=step)

    def hyperparams(self, params: dict[str, Any]) -> None:
        """The run's hyperparameters, in each logger's own record of them (the final metrics are its test/ scalars)."""
        for logger in self.loggers:
            kind_of(type(logger)).hparams(logger, params)

    def figure(self, name: str, fig: Any, step: int) -> None:
        """A matplotlib figure to every logger that takes figures."""
        for logger in self.loggers:
            draw = kind_of(type(logger)).figure
            if draw is not None:
                draw(logger, name, fig, step)

    def locations(self, run_dir: Path) -> dict[str, str]:
        """Where each logger wrote, relative to the run directory (result.json's artifacts)."""
        out = {}
        for logger in self.loggers:
            kind = kind_of(type(logger))
            where = kind.log_dir(logger)
            if where:
                out[kind.name] = os.path.relpath(where, run_dir)
        return out

    def sweep_hooks(self) -> dict[str, str]:
        """What each logger wants called when the sweep ends ("module:function" by logger name), for result.json."""
        kinds = [kind_of(type(logger)) for logger in self.loggers]
        return {kind.name: kind.sweep_end for kind in kinds if kind.sweep_end}

    def finalize(self, status: str = "success") -> None:
        """Flush and close every logger."""
        for logger in self.loggers:
            logger.finalize(status)


def entries(node: DictConfig | None) -> list[DictConfig]:
    """The logger configs of `logger=`: none, one, or several (`logger=[tensorboard,csv]`)."""
    if not node:
        return []
    return [entry for entry in node.values() if isinstance(entry, DictConfig) and "_target_" in entry]


def make(node: DictConfig | None, run_dir: Path, resumed_at: int | None = None) -> JobLog:
    """A job's loggers from the logger config, writing under its run directory."""
    loggers = []
    for entry in entries(node):
        kind = kind_of(get_class(entry._target_))
        if kind.requires and importlib.util.find_spec(kind.requires) is None:
            raise ConfigError(f"logger={kind.name} needs the {kind.requires} package, which is not installed: "
                              f'pip install "densbench[{kind.requires}]"')
        save_dir = (_store_root(run_dir) if kind.shared else run_dir) / kind.subdir
        kind.prepare(entry, save_dir)
        kwargs: dict[str, Any] = {"save_dir": str(save_dir)}
        if kind.run_name:
            kwargs["run_name"] = run_dir.name
        if resumed_at is not None:
            kwargs.update(kind.resume(resumed_at))
        logger = instantiate(entry, **kwargs)
        if resumed_at is not None:
            kind.reopen(logger, resumed_at)
        loggers.append(logger)
    return JobLog(loggers)
