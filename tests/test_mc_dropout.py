"""MC dropout (method=mc_dropout): masks that depend only on the model, the predictive as Gal & Ghahramani
score it, the dropout rate and model precision chosen on validation rows, and refusals of what cannot work."""

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import assert_same, make_cfg
from densbench.errors import ConfigError
from densbench.evaluation import candidates
from densbench.evaluation.ensemble import uniform_mixture
from densbench.methods import method_of
from densbench.runs.checks import check_config
from densbench.runs.execution import JobSpec, run_group, run_job
from densbench.training.dropout import Masks, keep_mask
from densbench.training.networks import MLP
from test_stacked import F64, _numbers
from test_uci import UCI_ROOT, needs_layout


def test_masks_drop_the_rate_and_rescale_the_kept_units():
    seeds, passes = torch.tensor([3, 4]), torch.tensor([0, 0])
    mask = keep_mask(seeds, torch.tensor([0.3, 0.0], dtype=torch.float64), passes, layer=0, units=400, rows=500, dtype=torch.float64)
    dropped = (mask[0] == 0).double().mean().item()
    assert abs(dropped - 0.3) < 0.005  # 200,000 draws: 4.5 standard errors
    assert set(mask[0].unique().tolist()) == {0.0, 1 / 0.7}
    assert bool((mask[1] == 1).all())  # rate 0: every unit kept, unscaled


def _reference_keep(seed: int, rate: float, pass_: int, layer: int, index: int) -> bool:
    """One mask bit in Python integers: splitmix64's finaliser twice for the key, murmur3's fmix32 per element."""
    m64, m32 = (1 << 64) - 1, (1 << 32) - 1

    def mix(z):
        z = (z + 0x9E3779B97F4A7C15) & m64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m64
        return z ^ (z >> 31)

    z = ((mix(mix((seed * 1_000_003 + layer) & m64) ^ (pass_ & m64)) & m32) ^ index)
    z = ((z ^ (z >> 16)) * 0x85EBCA6B) & m32
    z = ((z ^ (z >> 13)) * 0xC2B2AE35) & m32
    z ^= z >> 16
    # the top 24 bits read as a signed number, plus 2^23 (uniform on [0, 2^24)), against rate * 2^24
    return ((z >> 8) ^ (1 << 23)) >= round(rate * (1 << 24))


def test_mask_bits_are_the_hash_computed_in_python_integers():
    seeds, rates, passes = torch.tensor([5, -77, 2**40 + 3]), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64), torch.tensor([0, -3, 12345])
    masks = Masks(seeds, rates, passes, layers=3, rows=7, dtype=torch.float32)
    for layer, units in ((0, 4), (2, 6)):
        mask = masks(layer, units)
        for m in range(3):
            want = [_reference_keep(int(seeds[m]), float(rates[m]), int(passes[m]), layer, i) for i in range(units * 7)]
            assert (mask[m].reshape(-1) > 0).tolist() == want
            assert mask[m].max().item() == pytest.approx(1 / (1 - float(rates[m])))


def test_a_mask_depends_on_the_model_pass_and_layer_not_on_the_stack():
    rates = torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)
    together = keep_mask(torch.tensor([11, 12, 13]), rates, torch.tensor([5, 5, 5]), 1, 30, 40, torch.float32)
    alone = keep_mask(torch.tensor([12]), rates[:1], torch.tensor([5]), 1, 30, 40, torch.float32)
    assert torch.equal(together[1], alone[0])
    assert not torch.equal(together[0], together[1])  # another seed
    assert not torch.equal(alone[0], keep_mask(torch.tensor([12]), rates[:1], torch.tensor([6]), 1, 30, 40, torch.float32)[0])
    assert not torch.equal(alone[0], keep_mask(torch.tensor([12]), rates[:1], torch.tensor([5]), 2, 30, 40, torch.float32)[0])
    # the same bits whatever the dtype of the activations
    assert torch.equal(alone[0] > 0, keep_mask(torch.tensor([12]), rates[:1], torch.tensor([5]), 1, 30, 40, torch.float64)[0] > 0)


def test_a_network_without_dropout_has_the_tensors_it_always_had():
    net = MLP(3, [8], seeds=[0, 1])
    assert set(net.state_dict()) == {"layers.0.weight", "layers.0.bias"} and net.mc_samples == 0
    with_dropout = MLP(3, [8], seeds=[0, 1], dropout=0.1, mc_samples=5)
    assert torch.equal(with_dropout.layers[0].weight, net.layers[0].weight)  # dropout changes no initial weight
    x = torch.randn(2, 6, 3)
    with_dropout.eval()
    assert torch.equal(with_dropout(x), net(x))  # evaluation without passes: the mean network


def test_the_pass_mixture_is_gal_and_ghahramanis_predictive():
    # log p(y) = logsumexp_t(-tau/2 (y - yhat_t)^2) - log T - 1/2 log 2 pi + 1/2 log tau (their experiment code)
    gen = torch.Generator().manual_seed(0)
    yhat, y, tau = torch.randn(50, 7, generator=gen, dtype=torch.float64), torch.randn(7, generator=gen, dtype=torch.float64), 2.5
    sigma = torch.full((7,), 1 / math.sqrt(tau), dtype=torch.float64)
    mixture = uniform_mixture([torch.distributions.Normal(yhat[t], sigma) for t in range(50)])
    want = (torch.logsumexp(-0.5 * tau * (y - yhat) ** 2, 0) - math.log(50) - 0.5 * math.log(2 * math.pi) + 0.5 * math.log(tau))
    torch.testing.assert_close(mixture.log_prob(y), want, rtol=1e-12, atol=1e-12)


def test_the_choice_is_the_lowest_validation_nll_of_every_candidate_and_noise_level():
    gen = torch.Generator().manual_seed(1)
    y = torch.randn(200, generator=gen, dtype=torch.float64) * 0.7 + 0.2
    locs = [torch.zeros(200, dtype=torch.float64), torch.full((200,), 0.2, dtype=torch.float64)]
    grid = [0.3, 0.7, 1.5]

    def candidate(i, noise):
        return torch.distributions.Normal(locs[i], torch.full_like(locs[i], noise))

    got = candidates.choose(candidate, 2, grid, y)
    brute = {(i, s): float(-candidate(i, s).log_prob(y).mean()) for i in range(2) for s in grid}
    assert (got.index, got.noise) == min(brute, key=brute.get) == (1, 0.7)
    assert got.val_nll == pytest.approx(brute[(1, 0.7)], rel=1e-12)
    assert candidates.noise_levels([4.0, 0.25], 3.0) == [0.5, 2.0]
    default = candidates.noise_levels(None, 3.0)
    assert default[0] == pytest.approx(0.03) and default[-1] == pytest.approx(6.0)


def test_choices_on_validation_rows_are_refused_without_them():
    from densbench.runs.checks import Incompatible

    with pytest.raises(Incompatible, match=r"model.dropout=\[0.005, 0.01, 0.05, 0.1\] \(one candidate per rate\) and "
                                           r"head=homoscedastic's noise are chosen on the validation rows, which dataset=boston"):
        check_config(make_cfg("dataset=boston", "method=mc_dropout"))


@pytest.mark.parametrize("bad, message", [
    (["model.dropout=1.0"], "model.dropout=1.0 must be a rate in [0, 1)"),
    (["model.dropout=[0.1,-0.2]"], "must be a rate in [0, 1) or a non-empty list"),
    (["model.dropout=[0.1,0.2]", "ensemble.members=3"], "cannot be combined with ensemble.members=3"),
    (["model.mc_samples=-1"], "model.mc_samples=-1 must be an integer >= 0"),
])
def test_bad_dropout_settings_are_refused_before_training(bad, message):
    with pytest.raises(ConfigError) as err:
        check_config(make_cfg("experiment=fast", *bad))
    assert message in str(err.value)


def test_mc_dropout_runs_are_named_apart_from_the_methods_with_their_loss_and_head():
    def cfg(*overrides):
        return OmegaConf.to_container(make_cfg(*overrides), resolve=True)

    assert method_of(cfg("method=mc_dropout"), {"head": "homoscedastic"}) == "mc_dropout"
    assert method_of(cfg("method=mc_dropout_het"), {"head": "gaussian"}) == "mc_dropout_het"
    assert method_of(cfg("method=gaussian_nll"), {"head": "gaussian"}) == "gaussian_nll"


DROPOUT = ["experiment=fast", "loop.max_steps=60", "loop.eval_every=20", "loop.batch_size=32", "model.dropout=0.2",
           "model.mc_samples=6", *F64]


def test_dropout_stacks_train_exactly_as_alone(tmp_path):
    cfgs = [make_cfg(*DROPOUT, f"seed={s}") for s in (0, 1)]
    stacked = run_group([JobSpec(c, tmp_path / f"s{i}", launcher="stacked") for i, c in enumerate(cfgs)])
    alone = [run_job(c, tmp_path / f"a{i}") for i, c in enumerate(cfgs)]
    for s, a in zip(stacked, alone):
        assert s["status"] == a["status"] == "ok", (s.get("error"), a.get("error"))
        assert_same(_numbers(s), _numbers(a))
    assert stacked[0]["metrics"]["nll"] != stacked[1]["metrics"]["nll"]


def test_dropout_changes_training_and_mc_passes_change_the_predictive(tmp_path):
    plain = run_job(make_cfg(*DROPOUT, "model.dropout=0.0"), tmp_path / "plain")
    mean_net = run_job(make_cfg(*DROPOUT, "model.mc_samples=0"), tmp_path / "mean")
    mc = run_job(make_cfg(*DROPOUT), tmp_path / "mc")
    assert plain["train"]["best_val_nll"] != mc["train"]["best_val_nll"]
    assert mean_net["train"]["best_val_nll"] == mc["train"]["best_val_nll"]  # the mean network chooses the epoch
    assert mean_net["metrics"]["nll"] != mc["metrics"]["nll"]


@needs_layout
def test_mc_dropout_on_a_uci_split_chooses_its_rate_and_precision_on_validation(tmp_path):
    common = ["experiment=uci_yacht", f"dataset.root={UCI_ROOT}", "dataset.split=0", "loop.max_epochs=3",
              "model.mc_samples=10", "logger=none"]
    res = run_job(make_cfg(*common, "method=mc_dropout"), tmp_path / "mcd")
    ref = run_job(make_cfg(*common, "method=gaussian_nll"), tmp_path / "nll")
    assert res["status"] == ref["status"] == "ok", res.get("error")
    assert res["metrics"].keys() == ref["metrics"].keys()
    chosen = res["chosen"]
    taus = np.loadtxt(UCI_ROOT / "yacht" / "data" / "tau_values.txt").tolist()
    assert chosen["dropout"] in (0.005, 0.01, 0.05, 0.1)
    assert min(abs(chosen["noise_precision"] - t) for t in taus) < 1e-9
    assert "metrics_members" not in res and len(res["train"]["members"]) == 4


def test_quantiles_of_a_mixture_of_many_passes_invert_its_cdf():
    # MC dropout's predictive has 100 components: its quantile grid is thinned, its quantiles must stay exact
    from densbench.distributions import ops

    gen = torch.Generator().manual_seed(4)
    loc = torch.randn(30, 120, generator=gen, dtype=torch.float64) * 0.3
    scale = torch.full_like(loc, 0.2)
    mixture = uniform_mixture([torch.distributions.Normal(loc[:, t], scale[:, t]) for t in range(120)])
    levels = torch.tensor([1e-6, 0.025, 0.5, 0.9, 0.999999], dtype=torch.float64)
    q = ops.quantile(mixture, levels)  # [5, 30]
    cdf = torch.distributions.Normal(loc, scale).cdf(q.unsqueeze(-1)).mean(-1)
    torch.testing.assert_close(cdf, levels.view(5, 1).expand(5, 30), rtol=1e-7, atol=1e-12)


@needs_layout
def test_the_suite_lists_mc_dropout_but_never_ensembles_it_and_runs_gap_splits_per_input():
    import sys

    from conftest import REPO
    sys.path.insert(0, str(REPO / "scripts"))
    import uci_suite

    assert "mc_dropout" in uci_suite.DEFAULT and "evidential" in uci_suite.DEFAULT
    assert "mc_dropout_het" in uci_suite.SINGLE and "mc_dropout_het" not in uci_suite.DEFAULT
    assert not uci_suite.ensemble_able("mc_dropout") and uci_suite.ensemble_able("student_t")
    jobs = uci_suite.gap_jobs(["yacht"], ["gaussian_nll", "ensemble"], str(UCI_ROOT))
    inputs = uci_suite.gap_splits("yacht", str(UCI_ROOT))
    assert inputs == 3  # of yacht's six inputs, three have rows strictly inside the gap (the others bunch)
    # the single models only: the ensembles train in stage 2, on members their gap split's validation rows choose
    assert jobs == [["experiment=uci_yacht", "method=gaussian_nll", "dataset.protocol=gap", f"dataset.split={i}"]
                    for i in range(inputs)]

    def run(split, val_nll):  # a gap run's split is in its config (its label is the published splits')
        return {"labels": {"split": None}, "config": {"dataset": {"protocol": "gap", "split": split}},
                "train": {"best_val_nll": val_nll}}

    found = {"yacht": {"gaussian_nll": [run(0, 1.0), run(1, 2.0)], "student_t": [run(0, 1.5), run(1, 0.5)],
                       "mc_dropout": [run(0, 0.1), run(1, 0.1)]}}  # not ensemble-able: never members
    chosen, members = uci_suite.ensemble_jobs(found, ["yacht"], gap=True)
    assert members == {"yacht": {0: "gaussian_nll", 1: "student_t"}}
    # each with its members' loss and head (and their method's own settings on yacht, where it has a file)
    own = [f"settings={m}/yacht" for m in ("gaussian_nll", "student_t")
           if (REPO / "conf" / "settings" / m / "yacht.yaml").is_file()]
    assert [[o for o in job if not o.startswith("settings=")] for job in chosen] == \
        [["experiment=uci_yacht", "method=ensemble", "loss=nll", "head=gaussian", "dataset.protocol=gap", "dataset.split=0"],
         ["experiment=uci_yacht", "method=ensemble", "loss=nll", "head=student_t", "dataset.protocol=gap", "dataset.split=1"]]
    assert [o for job in chosen for o in job if o.startswith("settings=")] == own


def test_a_validation_choice_ranks_mc_dropout_by_the_nll_of_what_it_tests():
    from densbench.report.validation_choice import chosen_counts, validation_choices, validation_nll

    mcd = {"labels": {"split": 0}, "train": {"best_val_nll": 9.0}, "chosen": {"val_nll": 1.0}}
    plain = {"labels": {"split": 0}, "train": {"best_val_nll": 2.0}}
    assert validation_nll(mcd) == 1.0 and validation_nll(plain) == 2.0
    assert validation_choices({"mc_dropout": [mcd], "gaussian_nll": [plain]}) == {0: ("mc_dropout", mcd)}
    # an ensemble by its mixture's validation NLL, never by its members' mean (train.best_val_nll); only when asked
    members = [{"val_nll": [3.0]}, {"val_nll": [4.0]}]
    ens = {"labels": {"split": 0}, "train": {"best_val_nll": 3.5, "members": members}, "validation": {"nll": 0.5}}
    old = {"labels": {"split": 0}, "train": {"best_val_nll": 0.1, "members": members}}  # before the mixture's was kept
    assert validation_nll(ens) == 0.5 and validation_nll(old) is None
    assert validation_choices({"ensemble": [ens], "mc_dropout": [mcd]})[0][0] == "mc_dropout"
    assert validation_choices({"ensemble": [ens], "mc_dropout": [mcd]}, ensembles=True)[0][0] == "ensemble"
    assert validation_choices({"ensemble": [old], "mc_dropout": [mcd]}, ensembles=True)[0][0] == "mc_dropout"
    # split by split: each split's own validation rows choose, whatever the other splits' means say
    a = [{"labels": {"split": i}, "train": {"best_val_nll": v}} for i, v in enumerate([1.0, 9.0, 1.0])]
    b = [{"labels": {"split": i}, "train": {"best_val_nll": v}} for i, v in enumerate([2.0, 2.0, 2.0])]
    picks = validation_choices({"a": a, "b": b})
    assert {i: m for i, (m, _) in picks.items()} == {0: "a", 1: "b", 2: "a"} and chosen_counts(picks) == "a 2, b 1"


def test_masks_are_the_same_bits_whatever_kernels_the_cpu_dispatches_to():
    # integer arithmetic that wraps: the vectorised (avx2) and the scalar (default) kernels must agree bit for bit
    import hashlib
    import os
    import subprocess
    import sys

    code = ("import hashlib, torch; from densbench.training.dropout import keep_mask; "
            "m = keep_mask(torch.arange(7) * 977, torch.linspace(0, 0.5, 7, dtype=torch.float64), torch.arange(7) - 3, "
            "2, 61, 133, torch.float64); print(hashlib.sha256(m.numpy().tobytes()).hexdigest())")
    digests = set()
    for capability in ("default", "avx2"):
        env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
        digests.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout)
    here = keep_mask(torch.arange(7) * 977, torch.linspace(0, 0.5, 7, dtype=torch.float64), torch.arange(7) - 3, 2, 61, 133,
                     torch.float64)
    assert digests == {hashlib.sha256(here.numpy().tobytes()).hexdigest() + "\n"}


def test_a_methods_own_settings_replace_the_datasets_only_where_it_has_a_file():
    def budget(*overrides):
        cfg = make_cfg(*overrides)
        return cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.loop.batch_size, cfg.loop.max_epochs

    shared = budget("experiment=uci_concrete", "method=gaussian_nll")
    assert shared == (0.03, 1e-3, 32, 40)  # conf/experiment/uci_concrete.yaml, for every method without its own file
    assert budget("experiment=uci_concrete", "method=mc_dropout") == (1e-3, 0.0, 32, 400)  # conf/settings/mc_dropout
    assert budget("experiment=uci_concrete", "method=mc_dropout", "~settings") == shared
    assert budget("experiment=uci_concrete", "method=mc_dropout", "loop.max_epochs=7")[3] == 7  # the command line wins
    kin8nm = budget("experiment=uci_kin8nm", "method=gaussian_nll")
    assert budget("experiment=uci_kin8nm", "method=mc_dropout") == kin8nm  # no file for kin8nm


def test_the_gap_section_counts_an_ensembles_members_on_gap_and_published_splits():
    from densbench.methods import recipes
    from densbench.report.uci_gap import gap_section

    def ensemble_run(member, split, nll):
        r = recipes()[member]
        return {"config": {"loss": {"_target_": r.objective}, "model": {}, "ensemble": {"members": 5}},
                "labels": {"split": split, "head": r.head, "loss": "nll"}, "metrics": {"nll": nll, "coverage90": 0.9}}

    gap = {"yacht": {"ensemble": [ensemble_run("gaussian_nll", 0, 1.0), ensemble_run("evidential", 1, 2.0),
                                  ensemble_run("gaussian_nll", 2, 3.0)]}}
    published = {"yacht": {"ensemble": [ensemble_run("student_t", i, 0.1) for i in range(3)] + [ensemble_run("gaussian_nll", 3, 0.2)]}}
    row = next(line for line in gap_section(published, gap) if line.startswith("| yacht | ensemble"))
    assert row.startswith("| yacht | ensemble (gaussian_nll 2 / 1, student_t 0 / 3, evidential 1 / 0) | 3 | 2.00 ± 0.58 | 0.12 ± 0.03 |")
