"""The UCI report's comparisons with the literature and across datasets: the record table, MC dropout's rerun
against its published figures, and the ranking (average ranks, Friedman, Nemenyi's critical difference)."""

import math

import numpy as np
import pytest
from scipy import stats

from densbench.report import uci_ranking, uci_records
from densbench.report.published import NLL, RECORDS, published

DATASETS = ["boston", "concrete", "energy", "kin8nm", "power", "yacht"]


def _runs(nlls, binned=None):
    return [{"labels": {"split": i}, "metrics": {"nll": v, "nll_binned": v if binned is None else binned[i], "rmse": 1.0},
             "train": {}} for i, v in enumerate(nlls)]


def _found(table):
    return {ds: {m: _runs(v) for m, v in methods.items()} for ds, methods in table.items()}


def test_ranks_and_the_critical_difference_are_demsars():
    rng = np.random.default_rng(3)
    means = {ds: {m: float(rng.normal(i * 0.1, 0.2)) for i, m in enumerate(["a", "b", "c", "d"])} for ds in DATASETS}
    found = _found({ds: {m: [v, v] for m, v in row.items()} for ds, row in means.items()})
    found["boston"]["e"] = _runs([0.0, 0.0])  # a method missing from other datasets takes no part
    result = uci_ranking.ranking(found, DATASETS)
    ranks = np.mean([stats.rankdata([means[ds][m] for m in "abcd"]) for ds in DATASETS], axis=0)
    assert dict(result.rankdf["meanrank"]) == pytest.approx(dict(zip("abcd", ranks)), abs=1e-12)
    k, n = 4, len(DATASETS)
    q = stats.studentized_range.ppf(0.95, k, np.inf) / math.sqrt(2)
    assert result.cd == pytest.approx(q * math.sqrt(k * (k + 1) / (6 * n)), rel=1e-3)
    chi2 = stats.friedmanchisquare(*[[means[ds][m] for ds in DATASETS] for m in "abcd"])
    assert result.pvalue == pytest.approx(chi2.pvalue, rel=1e-6)
    text = "\n".join(uci_ranking.ranking_section(found, DATASETS))
    assert f"**{result.cd:.2f}** ranks" in text and "| e |" not in text
    assert uci_ranking.ranking(found, DATASETS[:4]) is None  # too few datasets to rank
    two = {ds: {m: found[ds][m] for m in "ab"} for ds in DATASETS}
    assert uci_ranking.ranking(two, DATASETS) is None and uci_ranking.ranking_section(two, DATASETS) == []


def test_the_ranking_uses_the_resolution_aware_nll_where_a_resolution_is_set():
    found = _found({ds: {"a": [1.0], "b": [2.0]} for ds in DATASETS})
    for runs, binned in ((found["yacht"]["a"], 3.0), (found["yacht"]["b"], 2.5)):
        runs[0]["train"]["target_resolution"] = 0.01
        runs[0]["metrics"]["nll_binned"] = binned
    methods, rows = uci_ranking.score_table(found, DATASETS)
    assert methods == ["a", "b"] and rows[-1] == [3.0, 2.5] and rows[0] == [1.0, 2.0]


def test_the_draw_writes_the_diagram(tmp_path):
    found = _found({ds: {"a": [1.0], "b": [1.5], "c": [0.5]} for ds in DATASETS})
    assert uci_ranking.draw_cd(found, DATASETS, tmp_path / "cd.png")
    assert (tmp_path / "cd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mc_dropout_agrees_with_its_published_figure_within_two_combined_standard_errors():
    ours = [2.40, 2.50, 2.44, 2.46]  # boston: MCD 2016 2.46 ± .06
    far = [3.40, 3.50, 3.44, 3.46]
    found = {"boston": {"mc_dropout": _runs(ours)}, "concrete": {"mc_dropout": _runs(far)}}
    for r in found["boston"]["mc_dropout"]:
        r["config"] = {"model": {"mc_samples": 40}, "optimizer": {"lr": 0.001, "weight_decay": 0.0},
                       "loop": {"batch_size": 32, "max_epochs": 400}}
    text = "\n".join(uci_records.reproduction_section(found, ["boston", "concrete"]))
    assert "T = 40 passes" in text  # the runs' own number of passes
    mean, se = np.mean(ours), np.std(ours, ddof=1) / 2
    band = 2 * math.hypot(se, published(NLL, "boston", "MCD 2016")[1])
    assert f"| boston | 0.001, 0, 32, 400 | {mean:.2f} ± {se:.2f} | 2.46±.06 | {mean - 2.46:+.2f} | ±{band:.2f} | yes |" in text
    assert "| concrete | -, -, -, - |" in text and "Agreement on 1 of 2 datasets." in text


def test_the_record_table_compares_networks_with_the_record_and_the_baselines():
    found = {"boston": {"gaussian_nll": _runs([2.30, 2.36]), "ngboost": _runs([2.50, 2.52])},
             "yacht": {"student_t": _runs([0.50, 0.52]), "ngboost": _runs([0.20, 0.22]), "gp": _runs([0.40, 0.40])}}
    text = "\n".join(uci_records.records_section(found, ["boston", "yacht"]))
    assert f"| boston | {RECORDS['boston'].nll} ({RECORDS['boston'].holder}) | gaussian_nll | 2.330 | 2.330 | yes | ngboost | 2.510 | yes |" in text
    assert "| yacht |" in text and "| no | ngboost | 0.210 | no (ngboost by 0.30) |" in text
    assert "record on 1 of 2 datasets; at or below the best non-network baseline on 1 of 2." in text


def test_every_method_is_paired_split_by_split_with_the_best_network():
    a, b, c = [1.0, 1.2, 1.1, 1.3], [1.1, 1.1, 1.4, 1.5], [0.2, 0.3, 0.1, 0.2]
    found = {"boston": {"a": _runs(a), "b": _runs(b), "ngboost": _runs(c)}}
    text = "\n".join(uci_ranking.paired_section(found, ["boston"]))
    diff = np.subtract(b, a)
    assert "| method | boston (vs a) |" in text  # the best network, not the (better) baseline
    assert f"| b | {diff.mean():+.3f} ± {diff.std(ddof=1) / 2:.3f} (1/4) |" in text
    assert "| a | best |" in text and "| ngboost | -0.950 ±" in text and "(4/4) |" in text


def test_on_discrete_targets_a_method_with_a_mixture_head_on_any_split_is_left_out():
    # wine-like: an ensemble whose members are a mixture on split 1 only, and an mdn, both "beating" the record
    # by density NLL; the honest comparison is among the other networks
    found = {"wine": {"ensemble": _runs([0.95, 0.50]), "mdn": _runs([0.40, 0.40]), "student_t": _runs([0.93, 0.95])}}
    for r, head in zip(found["wine"]["ensemble"], ("gaussian", "mixture")):
        r["labels"]["head"] = head
    for r in found["wine"]["mdn"]:
        r["labels"]["head"] = "mixture"
    honest = "\n".join(uci_records.records_section(found, ["wine"], discrete=["wine"]))
    assert "| wine (discrete) |" in honest and "| student_t | 0.940 | 0.940 | no |" in honest
    assert "record on 0 of 1 datasets" in honest
    counted = "\n".join(uci_records.records_section(found, ["wine"]))
    assert "| mdn | 0.400 |" in counted and "record on 1 of 1 datasets" in counted


def test_the_comparison_with_mc_dropout_leaves_mixtures_out_on_discrete_targets():
    from densbench.report.uci import _goals

    found = {"wine": {"mdn": _runs([0.40, 0.40]), "student_t": _runs([0.99, 0.97])}}
    for m, runs in found["wine"].items():
        for r in runs:
            r["labels"]["head"] = "mixture" if m == "mdn" else "student_t"
            r["train"]["best_val_nll"] = 0.5 if m == "mdn" else 0.9  # validation would pick the mdn on every split
    text = "\n".join(_goals(found, ["wine"], ["wine"]))
    assert "| wine (discrete) | student_t | 0.980 | no | no | student_t 2 | 0.980 | no | no |" in text
    assert "Best method at least as good as MC dropout (2016) on 0 of 1" in text
    assert "Counting mixture heads on wine too: best method 1 and 1 of 1; validation-chosen single model 1 and 1" in text
