"""Machine-independent figures: what differs between machines (ATen's CPU kernels, MKL's branch, threads,
the stack a model trains in, the launcher) must not change a run's numbers.

Each rule is tested by varying on this machine what varies between machines; a negative control shows
the variation would be caught: with DENSBENCH_NUMERICS=native the same change of ATen's kernels
changes the figures.
"""

import json

import pytest
import torch

from conftest import assert_same, make_cfg, run_cli
from densbench import numerics
from densbench.results import EXECUTION_METRICS
from densbench.runs.execution import JobSpec, run_group, run_job

AVX2 = {"avx2", "fma"} <= numerics.cpu_flags()
needs_avx2 = pytest.mark.skipif(not AVX2, reason="the pinned kernels need a CPU with AVX2 and FMA")
# minibatches, several evaluation periods and a selection among them: chaos has room to show
RUN = ["experiment=fast", "loop.max_steps=240", "loop.eval_every=40", "loop.batch_size=32", "logger=none"]


def _figures(res: dict) -> dict:
    return {k: v for k, v in res["metrics"].items() if k not in EXECUTION_METRICS}


def test_pinning_replaces_the_callers_kernel_choices():
    record, changes = numerics.plan({"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}, "x86_64",
                                    {"avx2", "fma", "avx512f"}, torch_loaded=False)
    assert changes == {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT", "MKL_ENABLE_INSTRUCTIONS": None}
    assert record["mode"] == "portable" and record["caller"] == {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}


@pytest.mark.parametrize("env, machine, flags, loaded, why", [
    ({"DENSBENCH_NUMERICS": "native"}, "x86_64", {"avx2", "fma"}, False, "DENSBENCH_NUMERICS=native"),
    ({}, "x86_64", {"avx2", "fma"}, True, "torch was imported before densbench"),
    ({}, "x86_64", {"sse4_2"}, False, "no AVX2 and FMA"),
    ({}, "aarch64", {"asimd"}, False, "no AVX2 and FMA"),
])
def test_where_kernels_cannot_be_pinned_nothing_is_changed_and_provenance_says_why(env, machine, flags, loaded, why):
    record, changes = numerics.plan(env, machine, flags, torch_loaded=loaded)
    assert changes == {} and record["mode"] != "portable" and why in record["why"]


@needs_avx2
def test_this_test_process_computes_with_the_pinned_kernels():
    # conftest imports densbench before torch, so in-process comparisons below are pinned too
    assert numerics.describe()["mode"] == "portable"
    assert torch.backends.cpu.get_cpu_capability() == "AVX2"


@needs_avx2
@pytest.mark.slow
def test_figures_do_not_depend_on_the_callers_cpu_kernels_or_threads(tmp_path):
    def run(name, env=None, extra=()):
        # the reference in a fork of the tests' prewarmed interpreter; the variations' environments make them fresh
        proc = run_cli([*RUN, *extra, f"hydra.run.dir={tmp_path / name}"], cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads((tmp_path / name / "result.json").read_text())

    reference = run("ref")
    assert reference["provenance"]["numerics"]["mode"] == "portable"
    # the scalar kernels alone (the control below uses them); then the other kernels, MKL's branch and a second
    # thread at once: a process costs seconds, and a change that moved the figures would not be cancelled by another
    variations = {
        "aten_default": ({"ATEN_CPU_CAPABILITY": "default"}, ()),
        "avx512_sse42_threads": ({"ATEN_CPU_CAPABILITY": "avx512", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}, ("loop.threads=2",)),
    }
    results = {name: run(name, env, extra) for name, (env, extra) in variations.items()}
    for name, res in results.items():
        assert _figures(res) == _figures(reference), name
    assert results["aten_default"]["provenance"]["numerics"]["caller"] == {"ATEN_CPU_CAPABILITY": "default"}
    # the control: left to the caller's choice, the scalar kernels train another model
    native = run("native", {"DENSBENCH_NUMERICS": "native", "ATEN_CPU_CAPABILITY": "default"})
    assert native["provenance"]["numerics"]["mode"] == "native"
    assert native["metrics"]["nll"] != reference["metrics"]["nll"]


@needs_avx2
def test_a_model_trains_to_the_same_bits_in_stacks_of_1_5_and_20(tmp_path):
    cfgs = [make_cfg(*RUN, f"seed={s}") for s in range(20)]
    big = run_group([JobSpec(c, tmp_path / f"s20_{i}") for i, c in enumerate(cfgs)])
    five = run_group([JobSpec(c, tmp_path / f"s5_{i}") for i, c in enumerate(cfgs[:5])])
    for i in (0, 3):
        alone = run_job(cfgs[i], tmp_path / f"alone_{i}")
        assert_same(_figures(big[i]), _figures(alone))
        assert_same(_figures(five[i]), _figures(alone))
        assert_same(big[i]["curves"]["train_train_loss"], alone["curves"]["train_train_loss"])
    assert big[0]["train"]["stack"]["models"] == 20 and five[0]["train"]["stack"]["models"] == 5


def test_a_near_tie_in_validation_does_not_move_the_selected_epoch():
    from densbench.training.engine import SELECTION_TOLERANCE, Selection

    class Module:  # what Selection reads of the module
        def __init__(self):
            from densbench.training.engine import EngineState

            self.state = EngineState(10, 1, models=1)
            self.w = torch.zeros(1, 2)

        def weights(self):
            return {"w": self.w}

    m, sel = Module(), Selection(1)
    sel.update(m, torch.tensor([2.0], dtype=torch.float64))
    m.w = torch.ones(1, 2)
    # better only in the last digits (float64: in float32 this would round to 2.0 and prove nothing)
    nearly = torch.tensor([2.0 * (1 - SELECTION_TOLERANCE / 4)], dtype=torch.float64)
    assert nearly < 2.0
    sel.update(m, nearly)
    assert torch.equal(sel.selected(m)["w"], torch.zeros(1, 2))
    m.w = torch.full((1, 2), 2.0)
    sel.update(m, torch.tensor([1.9], dtype=torch.float64))
    assert torch.equal(sel.selected(m)["w"], torch.full((1, 2), 2.0))


@needs_avx2
@pytest.mark.slow
def test_the_basic_stacked_and_parallel_launchers_give_the_same_figures(tmp_path):
    args = ["-m", *RUN, "seed=0,1", "loss=nll,mdn"]
    runs = {}
    # the stacked sweep, whose worker pool lives until the interpreter's exit, as a user starts it; the others in
    # forks of the tests' prewarmed interpreter (the parallel launcher's jobs run in fresh worker processes anyway)
    for name, launcher in (("basic", []), ("stacked", ["launcher=stacked", "hydra.launcher.workers=2"]),
                           ("parallel", ["launcher=parallel"])):
        proc = run_cli([*args, *launcher, f"hydra.sweep.dir={tmp_path / name}"], cwd=tmp_path, fresh=name == "stacked")
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = {p.parent.name: _figures(json.loads(p.read_text())) for p in (tmp_path / name).rglob("result.json")}
    assert len(runs["basic"]) == 4
    assert_same(runs["stacked"], runs["basic"])
    assert_same(runs["parallel"], runs["basic"])
