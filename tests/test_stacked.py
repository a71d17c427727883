"""Stacked training: jobs that differ only in seed or data split train as one stack of models and
every job ends exactly as if it had run alone; deep ensembles are stacks scored as mixtures."""

import json
import math
import re
from pathlib import Path

import pytest
import torch

from conftest import assert_same, make_cfg, run_cli
from densbench.distributions.classes import NormalMixture
from densbench.evaluation.ensemble import uniform_mixture
from densbench.results import EXECUTION_METRICS
from densbench.runs.execution import JobSpec, run_group, run_job
from densbench.signals import Interrupted

TESTS = str(Path(__file__).parent)
F64 = ["trainer.precision=64-true", "logger=none", "figures=false"]
# minibatches, early stopping and a short last period: every per-model mechanism is exercised
LOOP = ["experiment=fast", "loop.max_steps=90", "loop.eval_every=20", "loop.steps_per_call=7", "loop.batch_size=32",
        "loop.early_stopping_patience=2", *F64]


def _numbers(res):
    return ({k: v for k, v in res["metrics"].items() if k not in EXECUTION_METRICS}, res["curves"],
            {k: res["train"][k] for k in ("opt_steps", "best_val_nll", "last_val_nll", "stopped_early")})


def _stacked_vs_alone(tmp_path, variants, *common):
    # bit for bit where MKL's strict reproducibility branch holds (densbench.numerics: each product of a
    # batched call computed as a single one) and the padded flat parameter buffer rounds every element alike
    cfgs = [make_cfg(*common, *v) for v in variants]
    stacked = run_group([JobSpec(cfg, tmp_path / f"stack{i}", launcher="stacked") for i, cfg in enumerate(cfgs)])
    alone = [run_job(cfg, tmp_path / f"alone{i}") for i, cfg in enumerate(cfgs)]
    for s, a in zip(stacked, alone):
        assert s["status"] == a["status"] == "ok", (s.get("error"), a.get("error"))
        assert s["train"]["stack"]["models"] == len(variants) and a["train"]["stack"]["models"] == 1
        assert_same(_numbers(s), _numbers(a))
    return stacked, alone


@pytest.mark.parametrize("grad", ["autograd", "analytic"])
def test_seeds_stacked_train_exactly_as_alone(tmp_path, grad):
    stacked, _ = _stacked_vs_alone(tmp_path, [["seed=0"], ["seed=1"], ["seed=2"]], *LOOP, f"grad={grad}")
    assert len({s["metrics"]["nll"] for s in stacked}) == 3  # three different models


@pytest.mark.parametrize("grad", ["autograd", "analytic"])
def test_splits_stacked_train_exactly_as_alone(tmp_path, grad):
    common = ["experiment=uci_boston", "loop.max_epochs=4", "loop.early_stopping_patience=1", f"grad={grad}", *F64]
    stacked, _ = _stacked_vs_alone(tmp_path, [[f"dataset.split={i}"] for i in range(3)], *common)
    assert len({tuple(s["curves"]["train_val_nll"]) for s in stacked}) == 3


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="batch-size-independent products come from MKL's reproducibility mode")
def test_float32_stacks_train_bit_for_bit_as_alone(tmp_path):
    # MKL_CBWR=AVX2,STRICT (set when densbench is imported) and the padded flat buffer of the fused
    # Adam step round every element the same whatever the stack size
    common = ["experiment=uci_boston", "loop.max_epochs=6", "logger=none", "figures=false"]
    cfgs = [make_cfg(*common, f"dataset.split={i}") for i in range(3)]
    stacked = run_group([JobSpec(cfg, tmp_path / f"stack{i}") for i, cfg in enumerate(cfgs)])
    for i, (s, cfg) in enumerate(zip(stacked, cfgs)):
        assert _numbers(s) == _numbers(run_job(cfg, tmp_path / f"alone{i}"))


def test_a_mixed_group_of_seeds_and_splits_and_a_mixture_head(tmp_path):
    common = ["experiment=uci_concrete", "loop.max_epochs=3", "loss=mdn", "head.components=3", *F64]
    _stacked_vs_alone(tmp_path, [["dataset.split=0", "seed=0"], ["dataset.split=1", "seed=0"], ["dataset.split=0", "seed=5"]], *common)


def test_a_diverging_model_fails_its_job_alone(tmp_path):
    import sys

    sys.path.insert(0, TESTS)  # the callback's module
    poison = ["+callbacks.poison._target_=helpers.PoisonModel", "+callbacks.poison.model=1", "+callbacks.poison.step=14"]  # a chunk edge (7 steps a call)
    cfgs = [make_cfg(*LOOP, f"seed={i}", *poison) for i in range(3)]
    res = run_group([JobSpec(cfg, tmp_path / f"j{i}") for i, cfg in enumerate(cfgs)])
    assert [r["status"] for r in res] == ["ok", "failed", "ok"]
    assert res[1]["error_kind"] == "diverged" and "non-finite loss at optimisation step 14" in res[1]["error"]
    # its neighbours trained on as if alone
    for i in (0, 2):
        assert_same(_numbers(res[i]), _numbers(run_job(make_cfg(*LOOP, f"seed={i}"), tmp_path / f"alone{i}")))


def test_jobs_with_different_data_sizes_run_one_after_the_other(tmp_path, capsys):
    cfgs = [make_cfg("experiment=fast", "logger=none"), make_cfg("experiment=fast", "logger=none", "dataset.max_train=100")]
    res = run_group([JobSpec(cfg, tmp_path / f"j{i}") for i, cfg in enumerate(cfgs)])
    assert [r["status"] for r in res] == ["ok", "ok"] and all(r["train"]["stack"]["models"] == 1 for r in res)
    assert "2 jobs run one after the other, not as one stack: their splits differ in size" in capsys.readouterr().err


def test_several_devices_and_a_stack_exclude_each_other(tmp_path):
    res = run_job(make_cfg("experiment=fast", "trainer=ddp", "ensemble.members=2"), tmp_path)
    assert res["status"] == "failed" and "exclude each other" in res["error"]


def test_an_interrupted_stack_resumes_exactly_stacked_or_alone(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(TESTS)
    marker = tmp_path / "marker"
    sig = ["+callbacks.sig._target_=helpers.SignalAtStep", "+callbacks.sig.step=33", f"+callbacks.sig.marker={marker}"]
    cfgs = [make_cfg(*LOOP, f"seed={s}", *sig) for s in (0, 1)]
    marker.write_text("no signal")
    ref = [run_job(cfg, tmp_path / f"ref{i}") for i, cfg in enumerate(cfgs)]
    marker.unlink()
    dirs = [tmp_path / f"run{i}" for i in range(2)]
    with pytest.raises(Interrupted):
        run_group([JobSpec(cfg, d) for cfg, d in zip(cfgs, dirs)])
    for d in dirs:
        assert json.loads((d / "result.json").read_text())["status"] == "interrupted"
        assert torch.load(d / "checkpoints" / "last.ckpt", weights_only=False)["engine"]["opt_steps"] == 34
    # job 0 goes on as part of a stack again, job 1 alone from its share of the stack's checkpoint
    again = [run_group([JobSpec(cfgs[0], dirs[0])])[0], run_job(cfgs[1], dirs[1])]
    for a, r in zip(again, ref):
        assert a["status"] == "ok" and a["resumed_from_step"] == 34
        assert_same(_numbers(a), _numbers(r))


def test_an_ensemble_is_scored_as_the_mixture_of_its_members(tmp_path):
    res = run_job(make_cfg("experiment=fast", "ensemble.members=3", *F64), tmp_path / "ens")
    assert res["status"] == "ok" and res["train"]["stack"] == {"models": 3, "jobs": 1, "members": 3}
    m, mm = res["metrics"], res["metrics_members"]
    # a mixture's NLL is below its members' mean (Jensen), and each member starts from its own seed
    assert m["nll"] < mm["nll"] and len(res["train"]["members"]) == 3
    assert len({tuple(h["val_nll"]) for h in res["train"]["members"]}) == 3
    # member m is the plain job with seed + 7919 m, selected on its own validation curve
    alone = [run_job(make_cfg("experiment=fast", f"seed={7919 * i}", *F64), tmp_path / f"m{i}") for i in range(3)]
    for member, one in zip(res["train"]["members"], alone):
        assert_same(member["val_nll"], one["curves"]["train_val_nll"])
    for name in ("nll", "crps", "rmse"):
        assert mm[name] == pytest.approx(sum(a["metrics"][name] for a in alone) / 3, rel=1e-9)
    # its validation NLL is its mixture's on the validation rows, below the members' mean at the same epochs (Jensen)
    # and below the best member's by at most log 3 (the mixture's density is at least a third of each member's)
    bests = [min(h["val_nll"]) for h in res["train"]["members"]]
    assert res["train"]["best_val_nll"] == pytest.approx(sum(bests) / 3, rel=1e-12)
    mixture = res["validation"]["nll"]
    assert mixture < sum(bests) / 3 and mixture <= min(bests) + math.log(3)
    assert "validation" not in alone[0]


def test_uniform_mixture_keeps_every_component_and_weight():
    g = torch.Generator().manual_seed(0)
    normals = [torch.distributions.Normal(torch.randn(5, generator=g), torch.rand(5, generator=g) + 0.1) for _ in range(3)]
    y = torch.randn(5, generator=g)
    mix = uniform_mixture(normals)
    assert isinstance(mix, NormalMixture)
    expected = torch.logsumexp(torch.stack([d.log_prob(y) for d in normals]), 0) - math.log(3)
    torch.testing.assert_close(mix.log_prob(y), expected)
    mixtures = [NormalMixture(torch.randn(5, 2, generator=g), torch.randn(5, 2, generator=g), torch.rand(5, 2, generator=g) + 0.1)
                for _ in range(2)]
    both = uniform_mixture(mixtures)
    assert both.loc.shape == (5, 4)
    torch.testing.assert_close(both.log_prob(y), torch.logsumexp(torch.stack([d.log_prob(y) for d in mixtures]), 0) - math.log(2))
    laplaces = [torch.distributions.Laplace(torch.randn(5, generator=g), torch.rand(5, generator=g) + 0.1) for _ in range(2)]
    lmix = uniform_mixture(laplaces)
    torch.testing.assert_close(lmix.log_prob(y), torch.logsumexp(torch.stack([d.log_prob(y) for d in laplaces]), 0) - math.log(2))


@pytest.mark.parametrize("head", ["negbin", "glm"])
def test_an_ensemble_needs_a_location_scale_or_mixture_head(tmp_path, head):
    res = run_job(make_cfg("experiment=fast", "dataset=sine_poisson", f"head={head}", "ensemble.members=2"), tmp_path)
    assert res["status"] == "skipped" and "needs a location-scale or mixture head" in res["error"]


@pytest.mark.slow
def test_the_stacked_launcher_trains_a_sweep_as_one_stack(tmp_path):
    args = ["-m", "experiment=fast", "seed=0,1,2", "loss=nll,mdn", "figures=true", "trainer.precision=64-true"]
    stacked = run_cli([*args, "launcher=stacked", f"hydra.sweep.dir={tmp_path}/stacked"], cwd=tmp_path)
    assert stacked.returncode == 0, stacked.stderr[-3000:]
    assert stacked.stderr.count("densbench: training 3 jobs as one stack") == 2  # one stack per loss
    basic = run_cli([*args, f"hydra.sweep.dir={tmp_path}/basic"], cwd=tmp_path)
    assert basic.returncode == 0, basic.stderr[-3000:]

    def results(root):
        return {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / root).rglob("result.json")}

    s, b = results("stacked"), results("basic")
    assert sorted(s) == sorted(b) and len(s) == 6
    for name in s:
        run = tmp_path / "stacked" / name
        assert s[name]["launcher"] == "stacked" and b[name]["launcher"] == "basic"
        assert s[name]["train"]["stack"]["models"] == 3
        assert (run / ".hydra" / "config.yaml").exists() and (run / "predictive.png").exists()
        assert list((run / "tb").glob("events.out.tfevents.*"))
        assert_same(_numbers(s[name]), _numbers(b[name]))
        # the launcher derives the configs of a stack's later jobs from its first: Hydra's record of every
        # job must be what composing it afresh gives (the basic launcher composes each job)
        assert _record(tmp_path / "stacked" / name) == _record(tmp_path / "basic" / name)



def _record(run: Path) -> dict:
    """Hydra's record of a job (.hydra/*.yaml) without what differs by construction: folders and the launcher."""
    import yaml

    def load(name):
        text = (run / ".hydra" / name).read_text().replace(str(run.parent), "<sweep>")
        return yaml.safe_load(re.sub(r"\n *- launcher=\w+", "", text))  # given to one sweep only

    hydra = load("hydra.yaml")["hydra"]
    for key in ("launcher", "run", "sweep"):
        hydra.pop(key, None)
    hydra["runtime"].pop("output_dir", None)
    hydra["runtime"]["choices"].pop("hydra/launcher", None)
    hydra["runtime"]["choices"].pop("launcher", None)
    return {"config": load("config.yaml"), "overrides": load("overrides.yaml"), "hydra": hydra}


def test_a_listed_job_that_does_not_compose_ends_a_streamed_sweep_with_hydras_message(tmp_path):
    # with workers, the stacked launcher composes a listed sweep as it trains it: a job that does not
    # compose must still end the sweep (the stack already running finishes), naming the bad value
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps([["seed=0"], ["seed=1"], ["loss=nlll"]]))
    proc = run_cli(["-m", "experiment=fast", "hydra/sweeper=list", f"hydra.sweeper.jobs_file={jobs}", "launcher=stacked",
                    "hydra.launcher.workers=2", "figures=false", "logger=none", f"hydra.sweep.dir={tmp_path}/mr"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "nlll" in proc.stderr and "Traceback" not in proc.stderr
    assert not [p for p in (tmp_path / "mr").rglob("result.json") if "nlll" in str(p)]


def test_a_job_refused_on_its_own_leaves_its_stack_mates_as_they_would_be_alone(tmp_path):
    # recalibrations need validation rows the small max_eval leaves too few of: isotonic and scale are
    # refused, each with its own reason; the plain job trains and tests exactly as alone
    cfgs = [make_cfg("experiment=fast", "dataset.max_eval=10", f"recalibrate={r}", *F64) for r in ("none", "isotonic", "scale")]
    stacked = run_group([JobSpec(cfg, tmp_path / f"stack{i}", launcher="stacked") for i, cfg in enumerate(cfgs)])
    assert [r["status"] for r in stacked] == ["ok", "skipped", "skipped"]
    assert "recalibrate=isotonic" in stacked[1]["error"] and "recalibrate=scale" in stacked[2]["error"]
    assert_same(_numbers(stacked[0]), _numbers(run_job(cfgs[0], tmp_path / "alone")))


@pytest.mark.skipif(not (Path(TESTS).parents[1] / "shared" / "uci" / "yacht" / "data" / "data.txt").is_file(),
                    reason="the UCI layout is not at ../shared/uci")
def test_one_splits_bad_index_file_fails_only_its_own_job(tmp_path):
    import shutil

    shutil.copytree(Path(TESTS).parents[1] / "shared" / "uci" / "yacht", tmp_path / "uci" / "yacht")
    index = tmp_path / "uci" / "yacht" / "data" / "index_test_1.txt"
    rows = index.read_text().split()
    index.write_text("\n".join([rows[1], rows[0], *rows[2:]]) + "\n")
    cfgs = [make_cfg("experiment=uci_yacht", f"dataset.root={tmp_path / 'uci'}", f"dataset.split={i}", "loop.max_epochs=2", *F64)
            for i in range(3)]
    stacked = run_group([JobSpec(cfg, tmp_path / f"stack{i}", launcher="stacked") for i, cfg in enumerate(cfgs)])
    assert [r["status"] for r in stacked] == ["ok", "failed", "ok"]
    assert "index_*_1.txt differ from the protocol's regeneration" in stacked[1]["error"]
    assert stacked[0]["train"]["stack"]["models"] == 2
    assert_same(_numbers(stacked[2]), _numbers(run_job(cfgs[2], tmp_path / "alone")))


def test_a_listed_sweep_keeps_the_prefixes_of_the_command_lines_overrides(tmp_path):
    # +key adds a key the config lacks: crossed with the listed jobs without its prefix, it could not compose
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps([["seed=0"], ["seed=1"]]))
    proc = run_cli(["-m", "experiment=fast", "hydra/sweeper=list", f"hydra.sweeper.jobs_file={jobs}", "+note=hi",
                    "++loop.max_steps=20,40", "logger=none", "figures=false", "report.enabled=false",
                    f"hydra.sweep.dir={tmp_path}/mr"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    configs = [json.loads(p.read_text())["config"] for p in (tmp_path / "mr").rglob("result.json")]
    assert sorted((c["seed"], c["loop"]["max_steps"]) for c in configs) == [(0, 20), (0, 40), (1, 20), (1, 40)]
    assert all(c["note"] == "hi" for c in configs)
