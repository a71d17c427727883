"""The multivariate Gaussian head (head=mvn), multi-target data and the joint scores of evaluation.multivariate."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from conftest import make_cfg
from densbench import objectives
from densbench.data import datasets
from densbench.distributions.families.mvn import MultivariateGaussian
from densbench.errors import DataError
from densbench.evaluation import multivariate as mv
from densbench.runs.checks import Incompatible, check_against_data, check_config
from densbench.runs.execution import run_job

F64 = torch.float64


def _raw(fam, n=32, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    return {f: (torch.randn(1, n, w, generator=g, dtype=F64) * 0.7).requires_grad_(grad) for f, w in fam.fields().items()}


@pytest.fixture(scope="module")
def two_targets_csv(tmp_path_factory):
    """A CSV with one input, two targets with correlated noise (0.8) and a third independent one."""
    import pandas as pd

    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, 300)
    e = rng.multivariate_normal([0, 0], [[1, 0.8], [0.8, 1]], 300) * 0.2
    path = tmp_path_factory.mktemp("mvn") / "two.csv"
    pd.DataFrame({"x": x, "a": np.sin(x) + e[:, 0], "b": 3 * np.cos(x) + e[:, 1] + 10,
                  "c": rng.normal(size=300) * 5 - 2}).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("d", [2, 3])
def test_nll_is_scipys_multivariate_normal_in_original_units(d):
    from scipy import stats

    fam = MultivariateGaussian(targets=d)
    raw = _raw(fam, n=12)
    loc, scale = torch.arange(1.0, d + 1, dtype=F64), torch.linspace(0.5, 3.0, d, dtype=F64)
    dist = fam.distribution(raw, loc, scale)
    y = dist.sample((1,))[0]
    z = (y - loc) / scale  # standardised targets: the training formula, plus the Jacobian of the scaling
    nll = fam.nll_terms(raw, z)[..., 0] + torch.log(scale).sum()
    for i in range(12):
        ref = stats.multivariate_normal(dist.loc[0, i].numpy(), dist.covariance_matrix[0, i].numpy())
        assert float(-dist.log_prob(y)[0, i]) == pytest.approx(-ref.logpdf(y[0, i].numpy()), rel=1e-10)
        assert float(nll[0, i]) == pytest.approx(-ref.logpdf(y[0, i].numpy()), rel=1e-10)


def test_analytic_nll_gradient_passes_gradcheck_and_matches_autograd():
    fam, nll = MultivariateGaussian(targets=3), objectives.get("nll")()
    raw = _raw(fam, n=5, seed=3, grad=True)
    y = torch.randn(1, 5, 3, dtype=F64, generator=torch.Generator().manual_seed(4))
    names = list(fam.fields())

    def loss(*fields):
        return nll.loss(fam, dict(zip(names, fields)), y, (), "analytic")

    assert gradcheck(loss, [raw[n] for n in names], eps=1e-6, atol=1e-7, rtol=1e-5)
    auto = torch.autograd.grad(nll.loss(fam, raw, y, (), "autograd").sum(), [raw[n] for n in names])
    mine = torch.autograd.grad(nll.loss(fam, raw, y, (), "analytic").sum(), [raw[n] for n in names])
    for a, b in zip(auto, mine):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _predictive(n=6, d=3, seed=0):
    fam = MultivariateGaussian(targets=d)
    with torch.no_grad():
        dist = fam.distribution({k: v[0] for k, v in _raw(fam, n=n, seed=seed).items()})
        y = torch.distributions.MultivariateNormal(dist.loc + 0.3, dist.covariance_matrix * 1.5).sample()
    return dist, y


def test_energy_score_agrees_with_scoringrules_on_many_samples():
    sr = pytest.importorskip("scoringrules")
    torch.manual_seed(0)
    dist, y = _predictive(n=4)
    mine = mv.energy_score(dist, y, samples=200000)
    # scoringrules' ensemble score takes every pair of members: the mean over 16 ensembles of 1000
    ref = np.mean([sr.energy_score(y.numpy(), np.moveaxis(dist.sample((1000,)).numpy(), 0, -2), m_axis=-2, v_axis=-1,
                                   backend="numpy") for _ in range(16)], axis=0)
    # two Monte Carlo estimates of the same value: standard errors of about 0.008 and 0.002 here
    np.testing.assert_allclose(mine.numpy(), ref, atol=0.03)


def test_variogram_score_is_the_direct_computation_with_sampled_expectations():
    torch.manual_seed(0)
    dist, y = _predictive(n=4)
    mine = mv.variogram_score(dist, y).numpy()
    x = dist.sample((400000,)).numpy()  # [M, n, d]
    yn, d = y.numpy(), y.shape[-1]
    ref = np.zeros(len(yn))
    for i in range(d):
        for j in range(d):  # every ordered pair, weights 1, p = 0.5
            expected = np.mean(np.abs(x[..., i] - x[..., j]) ** 0.5, axis=0)
            ref += (np.abs(yn[:, i] - yn[:, j]) ** 0.5 - expected) ** 2
    np.testing.assert_allclose(mine, ref, rtol=2e-2, atol=1e-3)


def test_the_joint_90_percent_ellipsoid_covers_90_percent_of_draws_from_the_predictive():
    torch.manual_seed(0)
    fam = MultivariateGaussian(targets=3)
    with torch.no_grad():
        dist = fam.distribution({k: v[0] for k, v in _raw(fam, n=5000, seed=5).items()})
        y = dist.sample()
        metric = mv.MultivariateMetrics(3)
        metric.update(dist, y)
        out = metric.compute()
    # binomial standard error sqrt(0.09 / 5000) = 0.0042: three of them (the energy score's draws make more rows slow)
    assert abs(float(out["coverage90_ellipsoid"]) - 0.9) < 0.0127
    torch.testing.assert_close(out["nll_marginal_sum"], sum(out[f"nll_target{i}"] for i in range(3)))


def _csv_cfg(path, *extra):
    return make_cfg("experiment=fast", "dataset=csv", f"dataset.path={path}", "logger=none", *extra)


def test_single_target_heads_refuse_multi_target_data(two_targets_csv):
    with pytest.raises(Incompatible, match="head=gaussian models one target.*several"):
        check_config(_csv_cfg(two_targets_csv, "dataset.target=[a,b]"))


def test_mvn_refuses_single_target_data(two_targets_csv):
    with pytest.raises(Incompatible, match="mvn needs at least two targets"):
        check_config(_csv_cfg(two_targets_csv, "dataset.target=a", "head=mvn"))


def test_multi_target_data_are_standardised_per_column_and_the_head_takes_their_count(two_targets_csv):
    cfg = _csv_cfg(two_targets_csv, "dataset.target=[a,b,c]", "head=mvn")
    data = datasets.load(cfg.dataset)
    assert data.task == "multivariate" and data.y.shape == (300, 3)
    prep = datasets.prepare(data)
    y = prep.splits["train"][1].numpy()
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(y.std(0), 1, atol=1e-12)
    assert len(prep.target_loc) == 3
    assert data.feature_names == ["x"]
    assert check_against_data(check_config(cfg), data, "analytic").fields() == {"loc": 3, "diag": 3, "tril": 3}
    with pytest.raises(DataError, match="both targets and features"):
        datasets.load(_csv_cfg(two_targets_csv, "dataset.target=[a,b]", "dataset.features=[x,a]").dataset)


@pytest.mark.parametrize("grad", ["autograd", "analytic"])
def test_a_fast_run_on_two_targets_writes_the_joint_scores(tmp_path, two_targets_csv, grad):
    res = run_job(_csv_cfg(two_targets_csv, "dataset.target=[a,b]", "head=mvn", f"grad={grad}"), tmp_path)
    assert res["status"] == "ok", res.get("error")
    written = json.loads((tmp_path / "result.json").read_text())["metrics"]
    for name in ("nll", "energy_score", "variogram_score", "coverage90_ellipsoid", "nll_target0", "nll_target1",
                 "crps_target0", "crps_target1", "crps", "rmse"):
        assert math.isfinite(written[name]), name
