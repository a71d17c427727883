"""Every option of every config group composes, instantiates and passes (or is refused by) the checks.

In the spirit of lightning-hydra-template's config tests: a YAML that no longer composes (a key
renamed in one place, a broken interpolation, a _target_ that moved) fails here in seconds, not in
the middle of a sweep.
"""

from __future__ import annotations

import functools
from pathlib import Path

import lightning.pytorch as pl
import pytest
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from densbench.errors import DataError
from densbench.runs.checks import Incompatible, check_config
from densbench.config import compose_config, config_dir
from densbench.training import job_log
from densbench.training.job_log import entries
from densbench.training.loop import Loop

CONF = Path(config_dir())
DEFAULTS = {k: v for d in OmegaConf.load(CONF / "config.yaml").defaults if isinstance(d, dict) for k, v in d.items()}
OPTIONS = sorted((p.parent.name, p.stem) for p in CONF.glob("*/*.yaml"))


def test_every_group_is_covered():
    # a group added later is picked up by the glob; the defaults list names only existing groups
    groups = {g for g, _ in OPTIONS}
    assert {"dataset", "experiment", "head", "launcher", "logger", "loss", "method", "model", "optimizer",
            "trainer", "loop"} <= groups
    assert set(DEFAULTS) <= groups


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_instantiates_and_is_checked(group, option, tmp_path):
    cfg = compose_config([f"{group}={option}"], hydra_node=True)
    hydra_node = cfg.hydra
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    resolved = OmegaConf.to_container(job, resolve=True)  # every interpolation of the job's config resolves
    if "launcher" in hydra_node:
        OmegaConf.to_container(hydra_node.launcher, resolve=True)

    if DEFAULTS.get(group) != option:  # the option changes what a run is
        default = OmegaConf.to_container(compose_config([]), resolve=True)
        assert resolved != default or OmegaConf.to_container(hydra_node, resolve=False) != \
            OmegaConf.to_container(compose_config([], hydra_node=True).hydra, resolve=False)

    assert isinstance(instantiate(job.loop), Loop)
    trainer = instantiate(job.trainer)
    assert isinstance(trainer, functools.partial) and trainer.func is pl.Trainer
    optimizer = instantiate(job.optimizer)
    assert isinstance(optimizer, functools.partial)
    assert get_class(job.model._target_) is not None
    if any("MLFlow" in entry._target_ for entry in entries(job.get("logger"))):
        pytest.importorskip("mlflow")
    if job.get("baseline"):  # an optional extra (densbench[baselines]): refused before any work without its package
        from densbench.baselines import PACKAGES

        pytest.importorskip(PACKAGES[str(job.baseline._target_).rsplit(".", 2)[-2]])
    log = job_log.make(job.get("logger"), tmp_path / "run")  # as a job makes its loggers
    assert len(log.loggers) == len(entries(job.get("logger"))) and all(isinstance(lg, pl.loggers.Logger) for lg in log.loggers)

    try:
        plan = check_config(job)
    except Incompatible as exc:  # valid parts that do not fit (e.g. a count head on a regression default)
        assert str(exc)
    except DataError as exc:  # a dataset whose files the user names (a CSV, the UCI root): refused before any work
        assert str(exc) == "dataset=csv needs dataset.path=<file.csv>" or "set dataset.root=<folder> or DENSBENCH_UCI_ROOT" in str(exc)
    else:
        assert plan.loop == instantiate(job.loop)


def test_trainer_is_lightnings_with_extra_arguments_passed_through(tmp_path):
    from densbench.runs.assembly import trainer_for

    cfg = compose_config(["+trainer.reload_dataloaders_every_n_epochs=3", "trainer.precision=64-true"])
    trainer = trainer_for(cfg.trainer, tmp_path, max_epochs=7, callbacks=[], validate=False)
    assert isinstance(trainer, pl.Trainer)
    assert trainer.reload_dataloaders_every_n_epochs == 3 and trainer.max_epochs == 7
    assert str(trainer.precision) == "64-true" and trainer.logger is None and trainer.limit_val_batches == 0


def test_every_trainer_argument_the_engine_sets_is_refused_in_the_trainer_config(monkeypatch, tmp_path):
    # checks.ENGINE_OWNED (what a trainer config may not set) and assembly.trainer_for (what the
    # engine sets) are two lists of one fact: an argument added to the second must join the first
    from densbench.runs import assembly
    from densbench.runs.checks import ENGINE_OWNED

    passed = {}

    def capture(node, **kwargs):
        passed.update(kwargs)
        return lambda: None

    monkeypatch.setattr(assembly, "instantiate", capture)
    assembly.trainer_for(compose_config([]).trainer, tmp_path, max_epochs=1, callbacks=[], validate=True)
    assert passed and set(passed) <= set(ENGINE_OWNED)
