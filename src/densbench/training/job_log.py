"""A job's loggers (any of Lightning's, several at once) behind one interface: scalars, hyperparameters, figures, the end.

Lightning's loggers share ``log_metrics``, ``log_hyperparams`` and ``finalize`` but differ in where
they write, how a resumed run avoids duplicate points, and whether and how they take a figure. Those
differences are registered next to each logger class here (``register``), as torch registers a KL
divergence per pair of types; a logger class nobody registered gets the defaults (its files in the
run directory, no figures: the PNGs beside result.json are every logger's figures).
"""

from __future__ import annotations

import csv
import fcntl
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger
from omegaconf import DictConfig
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard.summary import hparams

from densbench.atomic import dump_yaml, write_text
from densbench.errors import ConfigError
from densbench.timing import Throttle


@dataclass(frozen=True)
class LoggerKind:
    """How densbench drives one class of Lightning logger."""

    name: str  # the artifacts key in result.json
    subdir: str = ""  # where under the run directory (or the sweep's, when shared) its files go (save_dir)
    requires: str | None = None  # the package it needs beyond Lightning (installed with the extra of that name)
    shared: bool = False  # one store for a whole sweep (a tracking store lists many runs), not one per run
    # constructor arguments: where it writes (from its directory), and more when a run resumes (the step
    # of the checkpoint, its directory, the run's name)
    store: Callable[[Path], dict[str, Any]] = field(default=lambda where: {"save_dir": str(where)})
    resume: Callable[[int, Path, str], dict[str, Any]] = field(default=lambda step, where, name: {})
    reopen: Callable[[Logger, int], None] = field(default=lambda logger, step: None)  # after it is made, when a run resumes
    run_name: bool = False  # name its run after the run directory (a tracking server lists many)
    figure: Callable[[Logger, str, Any, int], None] | None = None
    log_dir: Callable[[Logger], str | None] = field(default=lambda logger: getattr(logger, "log_dir", None))
    prepare: Callable[[DictConfig, Path], None] = field(default=lambda entry, save_dir: None)  # before each one is made
    hparams: Callable[[Logger, dict[str, Any]], None] = field(default=lambda logger, params: logger.log_hyperparams(params))
    tag: Callable[[str, bool], str] = field(default=lambda name, final: name)  # a scalar's name here (final: one value per run)
    scalars: Callable[[Logger, dict[str, float], int], None] = field(default=lambda logger, values, step: logger.log_metrics(values, step=step))
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


def _tensorboard_scalars(logger: Logger, values: dict[str, float], step: int) -> None:
    # one event holding every value of the call, where Lightning writes one per scalar: the writer
    # thread opens the event file again for each event, and a stack's jobs log each validation
    logger.experiment.file_writer.add_summary(Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in values.items()]),
                                              global_step=step)


def _tensorboard_tag(name: str, final: bool) -> str:
    # the Scalars page sorts its sections by name and opens the first two; under their own section
    # the training curves come before test/ and throughput/, whose charts hold a single point each
    # (those final values are the HParams table's columns, where they are read)
    return name if final else f"curves/{name}"


MLFLOW_DB = "mlflow.db"  # the sweep's (or single run's) MLflow store: SQLite, as MLflow recommends over files
MLFLOW_ARTIFACTS = "mlartifacts"  # beside it: the figures of its runs


def _mlflow_store(where: Path) -> dict[str, Any]:
    return {"tracking_uri": f"sqlite:///{(where / MLFLOW_DB).resolve()}"}


def _mlflow_client(where: Path) -> Any:
    import logging

    from mlflow.tracking import MlflowClient  # the optional dependency: imported only when asked for

    for name in ("mlflow.store.db.utils", "alembic"):  # creating the store's tables is not news
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=_mlflow_store(where)["tracking_uri"])


def _prepare_mlflow(entry: DictConfig, where: Path) -> None:
    from mlflow.exceptions import MlflowException

    where.mkdir(parents=True, exist_ok=True)
    # the parallel launcher's jobs start together: one at a time, the first creates the store's tables
    # (two at once collide in its schema migration) and the experiment (Lightning's logger would create
    # it on first use, and the second job to try would fail), with its artifacts beside the store, not
    # under the current directory
    with open(where / f"{MLFLOW_DB}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = _mlflow_client(where)
        name = str(entry.get("experiment_name", "lightning_logs"))
        if client.get_experiment_by_name(name) is None:
            try:
                client.create_experiment(name, artifact_location=(where / MLFLOW_ARTIFACTS).resolve().as_uri())
            except MlflowException:
                if client.get_experiment_by_name(name) is None:  # not a lost race: a real failure
                    raise


def _mlflow_resume(step: int, where: Path, name: str) -> dict[str, Any]:
    """The MLflow run a resumed job continues: the latest one of its name (an interrupt leaves it RUNNING)."""
    client = _mlflow_client(where)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string=f"tags.`mlflow.runName` = {_quoted(name)}", order_by=["attributes.start_time DESC"],
                              max_results=1)
    return {"run_id": runs[0].info.run_id} if runs else {}


def _quoted(value: str) -> str:
    """A string literal for an MLflow search filter: a run directory's name may hold either quote."""
    quote = '"' if "'" in value else "'"
    if quote in value:  # both kinds: the filter grammar has no escape, so no filter can name it
        raise ValueError(f"an MLflow run name with both quote characters cannot be searched for: {value}")
    return f"{quote}{value}{quote}"


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
register(TensorBoardLogger, LoggerKind("tensorboard", resume=lambda step, where, name: {"purge_step": step + 1}, figure=_tensorboard_figure,
                                       hparams=_tensorboard_hparams, tag=_tensorboard_tag, scalars=_tensorboard_scalars, sweep_end="densbench.report.tb_experiment:declare"))
register(CSVLogger, LoggerKind("csv", reopen=_csv_reopen))
register(MLFlowLogger, LoggerKind("mlflow", requires="mlflow", shared=True, run_name=True, figure=_mlflow_figure,
                                  log_dir=lambda logger: None, store=_mlflow_store, resume=_mlflow_resume, prepare=_prepare_mlflow))


class JobLog:
    """Every logger of one job; empty (and false) when logging is off."""

    def __init__(self, loggers: list[Logger] | None = None, stores: list[Path] | None = None) -> None:
        self.loggers = list(loggers or [])
        self.stores = list(stores or [None] * len(self.loggers))  # the folder each was given, where known
        # curve points not yet handed to the loggers (flush): a stack's jobs each log every validation,
        # and a logger's writes one call at a time (TensorBoard's thread wakes and reopens its file for
        # each) cost a UCI stack twice its training; written in bursts, next to nothing
        self.pending: list[tuple[dict[str, float], int, bool]] = []

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def metrics(self, values: dict[str, Any], step: int, final: bool = False) -> None:
        """Scalars at an optimisation step (final: the run's end values, written at once; else a curve's point, held until flush)."""
        if self.loggers:
            self.pending.append(({k: float(v) for k, v in values.items()}, step, final))
        if final:
            self.flush()

    def flush(self) -> None:
        """Hand the held scalars to every logger, in the order they came, those of one step together."""
        held, self.pending = self.pending, []
        merged: list[tuple[dict[str, float], int, bool]] = []
        for values, step, final in held:  # a period's training and validation values: one event, not two
            if merged and merged[-1][1:] == (step, final):
                merged[-1][0].update(values)
            else:
                merged.append((dict(values), step, final))
        for values, step, final in merged:
            for logger in self.loggers:
                kind = kind_of(type(logger))
                kind.scalars(logger, {kind.tag(k, final): v for k, v in values.items()}, step)

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
        for logger, store in zip(self.loggers, self.stores):
            kind = kind_of(type(logger))
            where = kind.log_dir(logger) or store
            if where:
                out[kind.name] = os.path.relpath(where, run_dir)
        return out

    def sweep_hooks(self) -> dict[str, str]:
        """What each logger wants called when the sweep ends ("module:function" by logger name), for result.json."""
        kinds = [kind_of(type(logger)) for logger in self.loggers]
        return {kind.name: kind.sweep_end for kind in kinds if kind.sweep_end}

    def finalize(self, status: str = "success") -> None:
        """Flush and close every logger."""
        self.flush()
        for logger in self.loggers:
            logger.finalize(status)


class CurveFlush(pl.Callback):
    """Writes the curve points a stack's jobs hold (JobLog.metrics) after a validation at most every
    `every_s` seconds (a live TensorBoard follows training), at the end of training and when it fails."""

    def __init__(self, every_s: float) -> None:
        self._throttle = Throttle(every_s)

    def _flush(self, pl_module: Any) -> None:
        for job in pl_module.jobs:
            job.log.flush()
        self._throttle.mark()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if self._throttle.due():
            self._flush(pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._flush(pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: Any, exception: BaseException) -> None:
        self._flush(pl_module)


def entries(node: DictConfig | None) -> list[DictConfig]:
    """The logger configs of `logger=`: none, one, or several (`logger=[tensorboard,csv]`)."""
    if not node:
        return []
    return [entry for entry in node.values() if isinstance(entry, DictConfig) and "_target_" in entry]


def make(node: DictConfig | None, run_dir: Path, resumed_at: int | None = None) -> JobLog:
    """A job's loggers from the logger config, writing under its run directory."""
    loggers, stores = [], []
    for entry in entries(node):
        kind = kind_of(get_class(entry._target_))
        if kind.requires and importlib.util.find_spec(kind.requires) is None:
            raise ConfigError(f"logger={kind.name} needs the {kind.requires} package, which is not installed: "
                              f'pip install "densbench[{kind.requires}]"')
        save_dir = (_store_root(run_dir) if kind.shared else run_dir) / kind.subdir
        kind.prepare(entry, save_dir)
        kwargs: dict[str, Any] = kind.store(save_dir)
        if kind.run_name:
            kwargs["run_name"] = run_dir.name
        if resumed_at is not None:
            kwargs.update(kind.resume(resumed_at, save_dir, run_dir.name))
        logger = instantiate(entry, **kwargs)
        if resumed_at is not None:
            kind.reopen(logger, resumed_at)
        loggers.append(logger)
        stores.append(save_dir)
    return JobLog(loggers, stores)
