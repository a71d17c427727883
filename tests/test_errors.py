"""Bad input is refused before training with one line that names the key and what is allowed."""

import json

import pytest

from conftest import REPO, make_cfg, run_cli
from densbench.data import datasets as D
from densbench.runs.execution import run_job
from densbench.runs.checks import Incompatible, check_against_data, check_config
from densbench.errors import ConfigError


def _check(*overrides):
    cfg = make_cfg(*overrides)
    plan = check_config(cfg)
    check_against_data(plan, D.load(cfg.dataset), str(cfg.grad))


INCOMPATIBLE = [  # valid parts that do not fit together: a sweep skips them
    (["loss=kl", "dataset=two_sines"], r"loss=kl trains on the true gaussian p\(y\|x\), which dataset=two_sines does not have; datasets with one: hetero_sine, sine_gaussian"),
    (["loss=glm", "head.distribution=poisson"], r"head.distribution=poisson does not fit the data \(task regression\); for regression use head.distribution=gaussian or auto \(dataset=hetero_sine\)"),
    (["loss=nll", "dataset=sine_bernoulli"], r"head=gaussian cannot model dataset=sine_bernoulli \(task binary\); head=gaussian models: regression, count"),
    (["loss=glm", "dataset=sine_poisson", "head.distribution=bernoulli"], r"head.distribution=bernoulli does not fit .* use head.distribution=poisson or auto"),
    (["loss=kl", "head=mixture"], r"loss=kl compares Gaussians in closed form; head=mixture is not Gaussian"),
    (["loss=glm", "head=gaussian"], r"loss=glm needs a canonical exponential family \(head=glm\); head=gaussian is not one"),
]
INVALID = [  # values densbench refuses
    (["grad=numeric"], r"grad='numeric' is not allowed; choose one of: analytic, autograd"),
    (["head.floor=0"], r"head.floor=0 must be a positive number"),
    (["head.floor=-1e-3"], r"head.floor=-0.001 must be a positive number"),
    (["loss=mdn", "head.components=0"], r"head.components=0 must be a positive integer"),
    (["head.positivity=relu"], r"head.positivity='relu' is not allowed; choose one of: softplus, exp"),
    (["loop.batch_size=0"], r"loop.batch_size=0 must be a positive integer or null"),
    (["model.hidden=[16,0]"], r"model.hidden=\[16, 0\] must be a list of positive integers"),
    (["loop.eval_every=-5"], r"loop.eval_every=-5 must be a positive integer or null"),
    (["loop.compile_mode=fast"], r"loop.compile_mode='fast' is not allowed; choose one of: default, reduce-overhead"),
    (["optimizer.lr=-1"], r"optimizer.lr=-1 must be a positive number"),
    # a seed of 1.5 ran as seed 1 under a name of its own (a report counted it as another seed)
    (["seed=1.5"], r"seed=1.5 must be an integer >= 0"),
    (["seed=-1"], r"seed=-1 must be an integer >= 0"),
    (["seed=abc"], r"seed='abc' must be an integer >= 0"),
    (["dataset.seed=0.5"], r"dataset.seed=0.5 must be an integer >= 0"),
    (["loop.checkpoint_every_s=-1"], r"loop.checkpoint_every_s=-1 must be a number >= 0"),
    # the loop owns these Trainer arguments: the old spelling points to its new home
    (["+trainer.max_steps=5"], r"trainer.max_steps is set by densbench's loop, not by the trainer config: use loop.max_steps"),
    (["+trainer.callbacks=[]"], r"trainer.callbacks is set by densbench's loop, not by the trainer config.*the trainer's own keys: accelerator, devices"),
]


@pytest.mark.parametrize("overrides,message,incompatible",
                         [(o, m, True) for o, m in INCOMPATIBLE] + [(o, m, False) for o, m in INVALID])
def test_incompatible_or_invalid_config_is_named(overrides, message, incompatible):
    with pytest.raises(ConfigError, match=message) as caught:
        _check(*overrides)
    assert isinstance(caught.value, Incompatible) == incompatible


def test_failed_job_records_the_error_and_trains_nothing(tmp_path):
    cfg = make_cfg("loss=kl", "dataset=two_sines", "experiment=fast")
    res = run_job(cfg, tmp_path)
    saved = json.loads((tmp_path / "result.json").read_text())
    assert res["status"] == saved["status"] == "skipped"
    assert "loss=kl trains on the true gaussian" in saved["error"] and saved["error_kind"] == "incompatible"
    assert saved["config"]["dataset"]["name"] == "two_sines"
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "tb").exists()


def test_ddp_spawn_is_refused_with_what_to_use(tmp_path):
    res = run_job(make_cfg("experiment=fast", "trainer=ddp", "trainer.strategy=ddp_spawn"), tmp_path)
    assert res["status"] == "failed" and "trainer.strategy=ddp_spawn is not supported" in res["error"] and "use trainer=ddp" in res["error"]


def test_gpu_job_without_gpu_is_skipped(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    res = run_job(make_cfg("trainer=gpu", "experiment=fast"), tmp_path)
    assert res["status"] == "skipped" and "CUDA device" in res["error"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["loss=foo"], "loss=foo is not an option; choose one of: " + ", ".join(sorted(p.stem for p in (REPO / "conf" / "loss").glob("*.yaml")))),
        (["loss=nlll"], "loss=nlll is not an option (did you mean nll?); choose one of: beta_nll,"),  # a typo: the nearest
        (["trainer.foo=1"], "Key 'foo' is not in struct"),
        (["trainer.batch_size=32"], "Key 'batch_size' is not in struct"),  # a loop key before the loop group
        (["dataset=nope"], "dataset=nope is not an option; choose one of: "),
    ],
)
def test_unknown_option_or_key_fails_before_training(tmp_path, args, message):
    proc = run_cli(args, cwd=tmp_path, timeout=120, fresh=True)  # all a user sees
    assert proc.returncode != 0
    assert message in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("densbench: "), proc.stderr  # one line
    if "is not an option" in message:
        assert "; choose one of: " in proc.stderr  # the options, on the same line
    assert not list(tmp_path.rglob("result.json"))
