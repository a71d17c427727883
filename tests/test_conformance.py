"""Every distribution family and every objective meets one contract.

Parametrised over the registries (densbench.distributions.families, densbench.objectives) and over the config
files in conf/head and conf/loss, so a family or objective added as one module and one YAML is
covered here without editing this file:

- the family's training formula is the log-likelihood of the distribution it produces, which agrees
  with scipy where scipy has the distribution (log_prob, cdf, mean, variance);
- quantiles invert the CDF; a registered closed-form CRPS agrees with the generic quantile integral
  (or the pmf sum); the binned pmf of a continuous family on counts is consistent with its CDF;
- every analytic gradient passes a float64 gradcheck, and trains exactly as autograd does;
- every loss x head config pair either runs an experiment=fast job to `ok` or is recorded `skipped`
  with the reason.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torch.autograd import gradcheck

from conftest import make_cfg
from densbench import objectives
from densbench.distributions import families
from densbench.distributions import dispatch, ops
from densbench.evaluation import recalibration
from densbench.runs.checks import Incompatible, check_config
from densbench.config import config_dir
from densbench.errors import ConfigError
from densbench.training.networks import MLP, Head
from densbench.runs.execution import run_job

F64 = torch.float64
CLASSES = {"regression": None, "count": None, "binary": 2, "multiclass": 3}
# synthetic data with a known truth for each (task, support) a family can declare
# (counts: with excess zeros, the case count heads break on)
DATASET_FOR = {("regression", "real"): "hetero_sine", ("regression", "positive"): "sine_lognormal",
               ("regression", "unit_interval"): "sine_beta", ("count", "real"): "sine_poisson",
               ("count", "counts"): "sine_zip", ("binary", "classes"): "sine_bernoulli"}


def _bound_families():
    """Every registered family with default settings, bound to each task it models."""
    seen, out = set(), []
    for name, cls in sorted(families.load_all().items()):
        fam = cls()
        for task in fam.tasks:
            if task not in CLASSES:  # several targets per row (multivariate): checked in tests/test_mvn.py
                continue
            try:
                bound = fam.bind(task, CLASSES[task])
            except ConfigError:
                continue
            if (bound.name, task) not in seen:
                seen.add((bound.name, task))
                out.append(pytest.param(bound, task, id=f"{bound.name}-{task}"))
    return out


FAMILIES = _bound_families()
CONTINUOUS = [p for p in FAMILIES if p.values[1] in ("regression", "count")]
OBJECTIVES = [pytest.param(cls(), id=name) for name, cls in sorted(objectives.load_all().items())]


def _raw(fam, n=64, seed=0, grad=False):
    """Raw outputs of a stack of one model, [1, n, width] by field, as a head produces them."""
    g = torch.Generator().manual_seed(seed)
    raw = {f: (torch.randn(1, n, w, generator=g, dtype=F64) * 0.7).requires_grad_(grad) for f, w in fam.fields().items()}
    raw.update({k: v.to(F64) for k, v in fam.buffers().items()})
    return raw


def _targets(fam, task, dist, seed=1):
    """Targets drawn from the distribution itself, in the shape training passes them."""
    torch.manual_seed(seed)
    s = dist.sample()
    if getattr(fam, "class_targets", False) or task == "multiclass":
        return s.long()
    if task == "count" and not ops.is_discrete(dist):
        s = s.round().clamp(min=0)
    return s.to(F64).unsqueeze(-1)


def _per_sample(y):
    """Targets as the distribution takes them: class indices as they are, others without the width axis."""
    return y if y.dtype == torch.long else y[..., 0]


@pytest.mark.parametrize("fam,task", FAMILIES)
def test_training_formula_is_the_distributions_log_likelihood(fam, task):
    raw = _raw(fam)
    dist = fam.distribution(raw)
    y = _targets(fam, task, dist)
    nll = objectives.get("nll")()
    terms = nll.terms(fam, raw, y, ())
    const = nll.constant(fam, y, ())
    if const is not None:
        terms = terms + const[1](const[2])
    expected = -dist.log_prob(_per_sample(y))
    torch.testing.assert_close(terms.reshape(-1), expected.reshape(-1), rtol=1e-10, atol=1e-10)
    ref = fam.reference(dist)
    if ref is not None:  # torch's distribution against scipy's
        yy = _per_sample(y).detach().numpy()
        logp = ref.logpmf(yy) if ops.is_discrete(dist) else ref.logpdf(yy)
        np.testing.assert_allclose(dist.log_prob(_per_sample(y)).detach().numpy(), logp, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(ops.cdf(dist, _per_sample(y)).detach().numpy(), ref.cdf(yy), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(dist.mean.detach().numpy(), ref.mean(), rtol=1e-9)
        np.testing.assert_allclose(dist.variance.detach().numpy(), ref.var(), rtol=1e-9)


@pytest.mark.parametrize("fam,task", CONTINUOUS)
def test_quantiles_invert_the_cdf(fam, task):
    with torch.no_grad():
        dist = fam.distribution(_raw(fam))
        levels = torch.tensor([0.005, 0.1, 0.37, 0.5, 0.9, 0.995], dtype=F64)
        q = ops.quantile(dist, levels)
        F = ops.cdf(dist, q)
        p = levels.view(-1, *([1] * (F.dim() - 1))).expand_as(F)
    if ops.is_discrete(dist):  # the smallest count whose CDF reaches the level
        assert bool((F >= p - 1e-12).all()) and bool((ops.cdf(dist, q - 1) < p).all())
    else:
        torch.testing.assert_close(F, p, rtol=0, atol=1e-9)


@pytest.mark.parametrize("fam,task", FAMILIES)
def test_a_family_names_the_distribution_it_builds_and_its_capabilities_are_what_is_registered_for_it(fam, task):
    with torch.no_grad():
        dist = fam.distribution(_raw(fam, n=4))
    assert dispatch._resolve(fam.distribution_type) is type(dist)
    for operation in ("crps", "cdf", "icdf", "rescale", "binned_log_prob", "quadrature"):
        registered = getattr(ops, operation).closed_form(type(dist))
        assert fam.has_closed_form(operation) == (registered is not None), operation


@pytest.mark.parametrize("fam,task", FAMILIES)
def test_a_closed_form_crps_agrees_with_the_generic_one(fam, task):
    with torch.no_grad():
        dist = fam.distribution(_raw(fam, n=40))
        y = _per_sample(_targets(fam, task, dist))
        if ops.crps.closed_form(type(dist)) is None:
            pytest.skip(f"{type(dist).__name__} has no closed-form CRPS (the generic one is its CRPS)")
        closed, generic = ops.crps(dist, y), ops.crps.generic(dist, y)
    # the quantile integral's midpoint rule: O(1/L^2) for smooth quantile functions
    tol = 1e-10 if ops.is_discrete(dist) else 2e-4
    torch.testing.assert_close(closed, generic, rtol=tol, atol=tol)


@pytest.mark.parametrize("fam,task", [p for p in CONTINUOUS if p.values[1] == "count"])
def test_binned_pmf_of_a_continuous_family_agrees_with_its_cdf(fam, task):
    with torch.no_grad():
        dist = fam.distribution(_raw(fam, n=20))
        if ops.is_discrete(dist):
            pytest.skip("a count distribution is scored by its own pmf")
        k = torch.arange(0, 40, dtype=F64).view(-1, 1, 1).expand(-1, 1, 20)
        mass = ops.binned_log_prob(dist, k).exp().sum(0)
        tail = 1 - ops.cdf(dist, torch.full((1, 20), 39.5, dtype=F64))
    torch.testing.assert_close(mass + tail, torch.ones(1, 20, dtype=F64), rtol=0, atol=1e-9)


REGRESSION = [p for p in FAMILIES if p.values[1] == "regression"]


def _central_width(dist):
    """The width of the central 80% interval."""
    q = ops.quantile(dist, torch.tensor([0.1, 0.9], dtype=F64))
    return q[1] - q[0]


@pytest.mark.parametrize("fam,task", REGRESSION)
def test_rescaling_the_spread_is_consistent(fam, task):
    # recalibrate=scale is offered for every regression head: its rescale must exist, keep the
    # distribution at factor 1, compose (a then b is a b) and widen the central intervals for a > 1
    with torch.no_grad():
        dist = fam.distribution(_raw(fam, n=30))
        y = _per_sample(_targets(fam, task, dist))
        same, there_and_back, wider = ops.rescale(dist, 1.0), ops.rescale(ops.rescale(dist, 2.0), 0.5), ops.rescale(dist, 2.0)
        torch.testing.assert_close(same.log_prob(y), dist.log_prob(y), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(there_and_back.log_prob(y), dist.log_prob(y), rtol=1e-10, atol=1e-10)
        assert bool((_central_width(wider) > _central_width(dist)).all())


@pytest.mark.parametrize("recalibrate", sorted(recalibration.METHODS))
@pytest.mark.parametrize("fam,task", REGRESSION)
def test_every_recalibration_fits_and_applies_to_every_regression_family(fam, task, recalibrate):
    # fitted on draws from the distribution itself: a calibrated predictive, so the fitted map stays close
    # to the identity and the recalibrated predictive gives finite scores at the targets
    with torch.no_grad():
        dist = fam.distribution(_raw(fam, n=200))
        y = _per_sample(_targets(fam, task, dist))
        method = recalibration.make(recalibrate)
        method.fit(dist, y)
        out = method.apply(dist)
        F = ops.cdf(out, y)
        assert bool(((F >= 0) & (F <= 1)).all())
        if method.changes_density:
            assert bool(torch.isfinite(out.log_prob(y)).all()) and bool(torch.isfinite(ops.crps(out, y)).all())


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_every_objective_accepts_some_family(objective):
    # an objective no family meets would make every pair below skip, and the suite pass vacuously
    accepted = [fam.name for fam, _ in (p.values for p in FAMILIES) if objective.accepts(fam) is None]
    assert accepted, f"loss={objective.name} accepts no registered family"


def _analytic_pairs():
    out = []
    for o in OBJECTIVES:
        for f in FAMILIES:
            objective, (fam, task) = o.values[0], f.values
            if objective.accepts(fam) is None and objective.analytic_refusal(fam) is None:
                out.append(pytest.param(objective, fam, task, id=f"{o.id}-{f.id}"))
    return out


ANALYTIC = _analytic_pairs()


def _batch(objective, fam, task, n, seed):
    """(targets, extra) for an objective: samples, or the true Gaussian's mean and variance."""
    g = torch.Generator().manual_seed(seed)
    if objective.needs_truth == "gaussian":
        return None, (torch.randn(1, n, 1, generator=g, dtype=F64), torch.rand(1, n, 1, generator=g, dtype=F64) + 0.2)
    with torch.no_grad():
        return _targets(fam, task, fam.distribution(_raw(fam, n, seed=seed + 7)), seed), ()


@pytest.mark.parametrize("objective,fam,task", [p for p in ANALYTIC if not p.values[0].stops_gradients])
def test_analytic_gradient_passes_float64_gradcheck(objective, fam, task):
    raw = _raw(fam, n=6, seed=3, grad=True)
    y, extra = _batch(objective, fam, task, 6, seed=4)
    names = list(fam.fields())
    buffers = {k: v for k, v in raw.items() if k not in names}

    def loss(*fields):
        return objective.loss(fam, {**dict(zip(names, fields)), **buffers}, y, extra, "analytic")

    assert gradcheck(loss, [raw[n] for n in names], eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("objective,fam,task", ANALYTIC)
def test_analytic_and_autograd_train_identically_in_float64(objective, fam, task):
    curves = {}
    for grad in ("analytic", "autograd"):
        backbone = MLP(1, [8], "tanh").double()
        head = Head(fam, 8, detached=objective.detached_fields(fam)).double()
        opt = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.05)
        x = torch.linspace(-2, 2, 32, dtype=F64).view(1, -1, 1)
        y, extra = _batch(objective, fam, task, 32, seed=5)
        losses = []
        for _ in range(40):
            opt.zero_grad()
            loss = objective.loss(fam, head(backbone(x)), y, extra, grad)
            loss.sum().backward()
            opt.step()
            losses.append(loss.sum().item())
        curves[grad] = torch.tensor(losses, dtype=F64)
    assert bool(torch.isfinite(curves["autograd"]).all())
    torch.testing.assert_close(curves["analytic"], curves["autograd"], rtol=1e-9, atol=1e-9)


def _supports(family, task):
    """The supports a family has on a task's data (a head like glm binds to a family per task)."""
    try:
        return [family.bind(task, CLASSES[task]).support] if task in CLASSES else []
    except ConfigError:
        return []


def test_every_family_support_has_data_to_check_it_on():
    # a family whose (task, support) has no synthetic data would be checked on nothing
    for fam, task in (p.values for p in FAMILIES):
        if task in ("regression", "count", "binary"):
            assert (task, fam.support) in DATASET_FOR, f"{fam.name} on {task}: no data with {fam.support} targets"


def _config_options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(config_dir()) / group).glob("*.yaml"))


@pytest.mark.parametrize("head", _config_options("head"))
@pytest.mark.parametrize("loss", _config_options("loss"))
def test_every_loss_head_pair_runs_a_fast_job_or_is_skipped_with_the_reason(tmp_path, loss, head):
    family = instantiate(make_cfg(f"head={head}").head)
    pair = next(((t, DATASET_FOR[t, s]) for t in family.tasks for s in _supports(family, t) if (t, s) in DATASET_FOR), None)
    if pair is None:
        pytest.skip(f"head={head} models no task with synthetic data here ({', '.join(family.tasks)}: its own tests)")
    task, dataset = pair
    args = ["experiment=fast", f"loss={loss}", f"head={head}", f"dataset={dataset}", "logger=none"]
    cfg = make_cfg(*args)
    try:
        check_config(cfg)
        compatible = None
    except Incompatible as exc:
        compatible = str(exc)
    res = run_job(cfg, tmp_path)
    if compatible is None:
        assert res["status"] == "ok", res.get("error")
        assert math.isfinite(res["metrics"]["nll"]) and math.isfinite(res["metrics"]["crps"])
        # result.json names the metrics computed by a generic method: quantiles exactly when the
        # predictive distribution has no icdf of its own
        bound = check_config(cfg).bound_family()
        dist = bound.distribution({k: torch.zeros(1, 2, w, dtype=F64) for k, w in bound.fields().items()} | bound.buffers())
        try:
            own_icdf = ops.icdf.closed_form(type(dist)) is not None or dist.icdf(torch.full((1, 2), 0.5, dtype=F64)) is not None
        except NotImplementedError:
            own_icdf = False
        assert ("icdf" in res["fallbacks"]) == (not own_icdf and task != "binary"), res["fallbacks"]
    else:
        assert res["status"] == "skipped" and compatible in res["error"]


@pytest.mark.parametrize("task,support", sorted(DATASET_FOR))
def test_each_supports_data_lies_in_it_and_its_truth_scores_like_scipy(task, support):
    from scipy import stats

    from densbench.config import compose_config
    from densbench.data import datasets
    from densbench.distributions.families.base import SUPPORTS

    data = datasets.load(compose_config([f"dataset={DATASET_FOR[task, support]}"]).dataset)
    assert data.task == task and not SUPPORTS[support][1](data.y).any()
    x, y = torch.as_tensor(data.x[:300]), torch.as_tensor(data.y[:300])
    truth = data.truth(x)
    mine = truth.log_prob(y).double().numpy()
    assert np.isfinite(mine).all()
    if data.name == "sine_zip":  # densbench's own truth class, against scipy's Poisson
        gate, rate = truth.gate.numpy(), truth.rate.numpy()
        ref = np.log(np.where(data.y[:300] == 0, gate, 0) + (1 - gate) * stats.poisson.pmf(data.y[:300], rate))
        np.testing.assert_allclose(mine, ref, rtol=1e-10, atol=1e-12)
        assert 0.3 < (data.y == 0).mean() < 0.5  # the excess zeros are there


@pytest.mark.parametrize("fam,task", CONTINUOUS)
def test_a_crps_registered_as_differentiable_has_finite_gradients_in_every_field(fam, task):
    # loss=crps trains every family whose closed form is registered as differentiable: it must be
    if not fam.has_closed_form("crps", differentiable=True):
        pytest.skip(f"{fam.name}: no differentiable closed-form CRPS (loss=crps refuses it)")
    raw = _raw(fam, n=16, grad=True)
    dist = fam.distribution(raw)
    with torch.no_grad():
        y = _per_sample(_targets(fam, task, dist))
    ops.crps(dist, y).sum().backward()
    for name in fam.fields():
        assert raw[name].grad is not None and bool(torch.isfinite(raw[name].grad).all()), name


def test_a_closed_form_registered_as_not_differentiable_is_refused_to_training_but_kept_for_metrics():
    op = dispatch.Operation("demo")
    op.register("some.module.Shape", differentiable=False)(lambda d, y: y)
    op.register("some.module.Smooth")(lambda d, y: y)
    assert op.registered("some.module.Shape") and not op.registered("some.module.Shape", differentiable=True)
    assert op.registered("some.module.Smooth", differentiable=True) and not op.registered("some.module.Other")
