"""Bad input is refused before training with one line that names the key and what is allowed."""

import json

import pytest

from conftest import make_cfg, run_cli
from densbench import data as D
from densbench.run import run_job
from densbench.validate import ConfigError, check_against_data, check_config


def _check(*overrides):
    cfg = make_cfg(*overrides)
    check_config(cfg)
    check_against_data(cfg, D.load(cfg.dataset))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["loss=kl", "dataset=two_sines"], r"loss=kl trains on the true Gaussian .* datasets with a Gaussian truth: hetero_sine, sine_gaussian"),
        (["loss=glm", "head.family=poisson"], r"head.family=poisson does not fit dataset=hetero_sine .*negative values"),
        (["loss=nll", "dataset=sine_bernoulli"], r"loss=nll cannot model dataset=sine_bernoulli \(task binary\)"),
        (["loss=glm", "dataset=sine_poisson", "head.family=bernoulli"], r"head.family=bernoulli does not fit .* use head.family=poisson or auto"),
        (["loss=nll", "head=mixture"], r"loss=nll needs a GaussianHead \(head=gaussian, gaussian_exp\)"),
        (["grad=numeric"], r"grad='numeric' is not allowed; choose one of: analytic, autograd"),
        (["head.floor=0"], r"head.floor=0 must be a positive number"),
        (["head.floor=-1e-3"], r"head.floor=-0.001 must be a positive number"),
        (["loss=mdn", "head.components=0"], r"head.components=0 must be a positive integer"),
        (["head.positivity=relu"], r"head.positivity='relu' is not allowed; choose one of: softplus, exp"),
        (["trainer.batch_size=0"], r"trainer.batch_size=0 must be a positive integer or null"),
        (["model.hidden=[16,0]"], r"model.hidden=\[16, 0\] must be a list of positive integers"),
        (["trainer.eval_every=-5"], r"trainer.eval_every=-5 must be a positive integer or null"),
        (["trainer.compile_mode=fast"], r"trainer.compile_mode='fast' is not allowed; choose one of: default, reduce-overhead"),
        (["optimizer.lr=-1"], r"optimizer.lr=-1 must be a positive number"),
    ],
)
def test_incompatible_or_invalid_config_is_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _check(*overrides)


def test_failed_job_records_the_error_and_trains_nothing(tmp_path):
    cfg = make_cfg("loss=kl", "dataset=two_sines", "experiment=fast")
    res = run_job(cfg, tmp_path)
    saved = json.loads((tmp_path / "result.json").read_text())
    assert res["status"] == saved["status"] == "failed"
    assert "loss=kl trains on the true Gaussian" in saved["error"] and saved["error_kind"] == "invalid input"
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
        (["loss=foo"], "Could not find 'loss/foo'"),
        (["trainer.foo=1"], "Key 'foo' is not in struct"),
        (["dataset=nope"], "Could not find 'dataset/nope'"),
    ],
)
def test_unknown_option_or_key_fails_before_training(tmp_path, args, message):
    proc = run_cli(args, cwd=tmp_path, timeout=120)
    assert proc.returncode != 0
    assert message in proc.stderr
    if "Could not find" in message:
        assert "Available options in" in proc.stderr
    assert not list(tmp_path.rglob("result.json"))
