"""Synthetic datasets: shapes, splits, standardisation and the exposed true distributions."""

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.distributions import Bernoulli, LogNormal, Normal, Poisson

from densbench.data import datasets as D
from densbench.distributions.classes import InverseSinePosterior, NormalMixture
from densbench.distributions.ops import cdf

SIZES = dict(n_train=3000, n_val=500, n_test=1500, seed=3)


def load(name, **kw):
    cfg = OmegaConf.create(dict(name=name, **SIZES, **kw))
    return D.load(cfg)


def _x(data, split="train"):
    idx = getattr(data, split)
    return torch.as_tensor(data.x[idx], dtype=torch.float64), torch.as_tensor(data.y[idx], dtype=torch.float64)


@pytest.mark.parametrize(
    "name,task,truth_type,kw",
    [
        ("hetero_sine", "regression", Normal, {}),
        ("two_sines", "regression", NormalMixture, {"offset": 1.0, "noise": 0.1}),
        ("sine_gaussian", "regression", Normal, {}),
        ("sine_bernoulli", "binary", Bernoulli, {}),
        ("sine_poisson", "count", Poisson, {}),
        ("inverse_sine", "regression", InverseSinePosterior, {}),
        ("sine_lognormal", "regression", LogNormal, {}),
    ],
)
def test_shapes_splits_and_truth_type(name, task, truth_type, kw):
    d = load(name, **kw)
    n = sum(SIZES[k] for k in ("n_train", "n_val", "n_test"))
    assert d.task == task and d.x.shape == (n, 1) and d.y.shape == (n,)
    assert (len(d.train), len(d.val), len(d.test)) == (3000, 500, 1500)
    assert not set(d.train) & set(d.test) and not set(d.train) & set(d.val) and not set(d.val) & set(d.test)
    x, _ = _x(d, "test")
    t = d.truth(x)
    assert isinstance(t, truth_type) and t.batch_shape == (1500,)
    assert (D.describe(OmegaConf.create({"name": name})).truth == "gaussian") == (truth_type is Normal)


def test_same_seed_same_data_other_seed_other_data():
    a, b = load("hetero_sine"), load("hetero_sine")
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    c = D.load(OmegaConf.create(dict(name="hetero_sine", **{**SIZES, "seed": 4})))
    assert not np.array_equal(a.x, c.x)


def _pit_is_uniform(u, tol=0.04):
    u = np.sort(np.asarray(u))
    ks = np.max(np.abs(u - (np.arange(1, len(u) + 1) / len(u))))
    return ks < tol


@pytest.mark.parametrize("name,kw", [("hetero_sine", {}), ("two_sines", {"offset": 1.0, "noise": 0.1}),
                                     ("sine_gaussian", {}), ("inverse_sine", {}), ("sine_lognormal", {})])
def test_targets_are_draws_from_the_exposed_truth(name, kw):
    # PIT of the generated targets under the exposed truth is uniform iff the truth is right
    d = load(name, **kw)
    x, y = _x(d)
    assert _pit_is_uniform(cdf(d.truth(x), y).numpy())


def test_hetero_sine_truth_formula():
    d = load("hetero_sine")
    x, _ = _x(d, "test")
    t = d.truth(x)
    assert torch.allclose(t.loc, torch.sin(x[:, 0])) and torch.allclose(t.scale, 0.1 * (3 - x[:, 0].abs()))
    assert x.min() >= -3 and x.max() <= 3


def test_glm_document_processes():
    b, p = load("sine_bernoulli"), load("sine_poisson")
    xb, yb = _x(b)
    assert set(np.unique(yb.numpy())) == {0.0, 1.0}
    assert abs(yb.mean() - b.truth(xb).probs.mean()) < 0.03
    assert torch.allclose(b.truth(xb).probs, torch.sigmoid(3.5 * torch.sin(10 * xb[:, 0])))
    xp, yp = _x(p)
    rate = p.truth(xp).rate
    assert torch.allclose(rate, 2 * torch.exp(torch.sin(10 * xp[:, 0])))
    assert (yp >= 0).all() and (yp == yp.round()).all()
    assert abs(float(yp.mean() - rate.mean())) < 0.1
    # Poisson: E[(y - rate)^2 / rate] = 1
    assert abs(float(((yp - rate) ** 2 / rate).mean()) - 1) < 0.1


def test_inverse_sine_posterior_is_a_normalised_density():
    post = InverseSinePosterior(torch.tensor([-8.0, 0.0, 3.3, 9.0], dtype=torch.float64))
    xs = torch.linspace(-10.5, 10.5, 400001, dtype=torch.float64)
    mass = torch.trapezoid(post.log_prob(xs.unsqueeze(-1)).exp(), xs, dim=0)
    assert torch.allclose(mass, torch.ones(4, dtype=torch.float64), atol=1e-6)
    assert torch.isinf(post.log_prob(torch.full((4,), 11.0, dtype=torch.float64))).all()  # outside the prior


def test_standardisation_is_fitted_on_train_only():
    d = load("hetero_sine")
    prep = D.prepare(d)
    xtr, ytr = prep.splits["train"]
    assert abs(float(xtr.mean())) < 1e-12 and abs(float(xtr.std(unbiased=False)) - 1) < 1e-12
    assert abs(float(ytr.mean())) < 1e-12 and abs(float(ytr.std(unbiased=False)) - 1) < 1e-12
    assert math.isclose(prep.target_loc, float(d.y[d.train].mean())) and math.isclose(prep.target_scale, float(d.y[d.train].std()))
    xte, _ = prep.splits["test"]
    assert abs(float(xte.mean())) > 1e-6  # test statistics were not used


def test_counts_and_classes_are_not_standardised():
    prep = D.prepare(load("sine_poisson"))
    assert prep.target_loc == 0.0 and prep.target_scale == 1.0
    _, y = prep.splits["train"]
    assert (y == y.round()).all()


def test_positive_targets_are_only_scaled_and_stay_positive():
    # a family with positive support gets y / c (c the training targets' mean absolute value): an affine
    # map would carry some targets below zero, out of the family's support
    d = load("sine_lognormal")
    prep = D.prepare(d, target_map="scale")
    assert prep.target_loc == 0.0 and math.isclose(prep.target_scale, float(np.abs(d.y[d.train]).mean()))
    for name in ("train", "val", "test"):
        _, y = prep.splits[name]
        assert bool((y > 0).all())
        torch.testing.assert_close(y[:, 0] * prep.target_scale, torch.as_tensor(d.y[getattr(d, name)]), rtol=1e-15, atol=0)
    assert float(D.prepare(d).splits["train"][1].min()) < 0  # the affine map would not have kept them


def test_targets_outside_a_familys_support_are_refused_in_one_line_saying_how_many_and_where():
    from densbench.runs.checks import Incompatible, check_support
    from densbench.distributions.families.base import Family

    class Positive(Family):
        name, support = "positive_test", "positive"

    d = load("sine_lognormal")
    check_support(Positive(), d)  # all positive: accepted
    check_support(Positive(), type(d)(**{**d.__dict__, "val": d.val[:0]}))  # an empty split has nothing outside
    d.y[d.val[3]] = -2.5
    d.y[d.test[:2]] = 0.0
    with pytest.raises(Incompatible) as exc:
        check_support(Positive(), d)
    msg = str(exc.value)
    assert "\n" not in msg and "head=positive_test models targets with y > 0" in msg
    assert f"(val 1 of 500, test 2 of 1500; the first at row {int(d.val[3])}: y = -2.5)" in msg


def test_nan_in_data_is_named():
    d = load("hetero_sine")
    d.x[5, 0] = np.nan
    with pytest.raises(D.DataError, match=r"feature column 'x' has 1 NaN"):
        D.prepare(d)
    d = load("hetero_sine")
    d.y[7] = np.inf
    with pytest.raises(D.DataError, match=r"target column 'y' has 1 NaN or infinite"):
        D.prepare(d)


def test_unknown_dataset_lists_the_allowed():
    with pytest.raises(D.DataError, match="allowed: .*hetero_sine.*inverse_sine"):
        D.load(OmegaConf.create(dict(name="nope")))


def test_caps_for_quick_runs():
    d = D.load(OmegaConf.create(dict(name="hetero_sine", **SIZES, max_train=50, max_eval=20)))
    assert (len(d.train), len(d.val), len(d.test)) == (50, 20, 20)


def test_a_column_constant_up_to_rounding_is_standardised_as_constant():
    # naval's column of 0.998s has a standard deviation of 2e-13 from rounding alone: dividing by it mapped a
    # value of 0.999 to 9e12
    from densbench.data.datasets import Standardizer

    column = np.full((500, 1), 0.998) + np.where(np.arange(500) % 7 == 0, 1e-16, 0.0).reshape(-1, 1)
    assert 0 < column.std() < 1e-12
    s = Standardizer.fit(np.hstack([column, np.arange(500.0).reshape(-1, 1)]))
    z = s(np.array([[0.999, 250.0]]))
    assert s.scale[0] == 1.0 and abs(z[0, 0] - 0.001) < 1e-9 and np.isclose(s.scale[1], np.arange(500.0).std())
