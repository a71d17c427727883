"""The UCI suite: tuning mode never reads test rows, the optimiser search, named methods, the report's
published figures and paired comparison, and the suite command on a slice of the datasets."""

import csv
import json
import math
import re
import shutil
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import REPO, make_cfg
from densbench.report import uci as uci_report
from densbench.data.datasets import load
from densbench.errors import ConfigError
from densbench.methods import method_of, recipes
from densbench.results import read_result
from densbench.runs.labels import labels

sys.path.insert(0, str(REPO / "scripts"))
import uci_search  # noqa: E402

UCI_ROOT = REPO.parent / "shared" / "uci"
needs_layout = pytest.mark.skipif(not (UCI_ROOT / "yacht" / "data" / "data.txt").is_file(),
                                  reason=f"the UCI layout is not at {UCI_ROOT}")


def _published_rows(name, split, tuning, root=None):
    extra = [f"dataset.root={root}"] if root else []
    cfg = make_cfg(f"dataset={name}", f"dataset.split={split}", "dataset.val_fraction=0.1",
                   f"dataset.tuning={str(tuning).lower()}", *extra).dataset
    return load(cfg)


@pytest.mark.parametrize("name", ["boston", "concrete"])
def test_tuning_mode_sees_only_the_published_training_rows(name):
    plain, tuned = _published_rows(name, 3, False), _published_rows(name, 3, True)
    published_train = set(plain.train) | set(plain.val)
    parts = [set(tuned.train), set(tuned.val), set(tuned.test)]
    assert set().union(*parts) == published_train  # every row it sees is a training row of the split...
    assert not set(plain.test) & set().union(*parts)  # ...and not one test row
    assert sum(map(len, parts)) == len(published_train)  # disjoint
    assert len(tuned.test) == round(0.1 * len(published_train))


@needs_layout
def test_tuning_mode_from_the_standard_layout_never_touches_test_rows():
    plain, tuned = _published_rows("yacht", 7, False, UCI_ROOT), _published_rows("yacht", 7, True, UCI_ROOT)
    assert not set(plain.test) & (set(tuned.train) | set(tuned.val) | set(tuned.test))


def test_tuning_without_a_validation_fraction_is_refused():
    from densbench.runs.checks import check_config

    with pytest.raises(ConfigError, match="dataset.tuning=true needs dataset.val_fraction > 0"):
        check_config(make_cfg("dataset=boston", "dataset.tuning=true"))


def _result(dataset, lr, batch, nll, tuning=True, split=0, epochs=40):
    return {"status": "ok", "labels": {"dataset": dataset, "split": split}, "metrics": {"nll": nll},
            "config": {"dataset": {"name": dataset, "tuning": tuning}, "optimizer": {"lr": lr},
                       "loop": {"batch_size": batch, "max_epochs": epochs}}}


def test_the_search_scores_mean_held_out_nll_and_refuses_runs_that_saw_test_rows(tmp_path):
    runs = [("boston", 0.01, 32, 2.5), ("boston", 0.01, 32, 2.7), ("boston", 0.003, 32, 2.55), ("boston", 0.003, 32, 2.6),
            ("boston", 0.03, 128, float("nan")), ("boston", 0.03, 128, 1.0)]
    for i, (ds, lr, b, nll) in enumerate(runs):
        (tmp_path / f"r{i}").mkdir()
        (tmp_path / f"r{i}" / "result.json").write_text(json.dumps(_result(ds, lr, b, nll if math.isfinite(nll) else None)))
    found = uci_search.scores(tmp_path)
    assert sorted(found["boston"][(0.01, 32, 40)]) == [2.5, 2.7]
    assert uci_search.choose(found["boston"]) == (0.003, 32, 40)  # 2.575 < 2.6; a diverged split rules 0.03 out
    (tmp_path / "r9").mkdir()
    (tmp_path / "r9" / "result.json").write_text(json.dumps(_result("boston", 0.1, 8, 0.1, tuning=False)))
    with pytest.raises(SystemExit, match="not a tuning run"):
        uci_search.scores(tmp_path)


def test_the_search_scores_at_the_targets_resolution_where_they_have_one(tmp_path):
    # a setting that stacks mass on the grid wins by density NLL only; the search ranks by NLL@h
    for i, (lr, nll, binned) in enumerate([(0.01, -2.0, 1.10), (0.003, 0.95, 0.97)]):
        res = _result("wine", lr, 32, nll)
        res["metrics"]["nll_binned"] = binned
        (tmp_path / f"r{i}").mkdir()
        (tmp_path / f"r{i}" / "result.json").write_text(json.dumps(res))
    found = uci_search.scores(tmp_path)
    assert found["wine"][(0.01, 32, 40)] == [1.10] and uci_search.choose(found["wine"]) == (0.003, 32, 40)


@needs_layout
def test_the_search_tries_longer_budgets_on_the_long_datasets_only_and_breaks_ties_by_fewer_epochs(tmp_path):
    grids = uci_search.grid_of(["yacht", "protein"], [0.01], [32], [1, 10], {"yacht"}, UCI_ROOT)
    assert grids == {"yacht": [(0.01, 32, 40), (0.01, 32, 400)], "protein": [(0.01, 32, 20)]}  # n_epochs.txt: 40, 20
    # a budget whose validation chose an epoch within the shorter one gives the same runs: the shorter wins the tie
    for i, (epochs, nll) in enumerate([(400, 0.5), (40, 0.5), (400, 0.7), (40, 0.7)]):
        (tmp_path / f"r{i}").mkdir()
        (tmp_path / f"r{i}" / "result.json").write_text(json.dumps(_result("yacht", 0.01, 32, nll, epochs=epochs)))
    assert uci_search.choose(uci_search.scores(tmp_path)["yacht"]) == (0.01, 32, 40)
    (tmp_path / "r9").mkdir()
    (tmp_path / "r9" / "result.json").write_text(json.dumps(_result("yacht", 0.01, 32, 0.1, epochs=400)))
    assert uci_search.choose(uci_search.scores(tmp_path)["yacht"]) == (0.01, 32, 400)


def test_the_search_writes_its_choice_into_the_experiment_config(tmp_path):
    conf = tmp_path / "experiment"
    shutil.copytree(REPO / "conf" / "experiment", conf)
    uci_search.write_choice("protein", (0.003, 128, 200), conf)
    text = (conf / "uci_protein.yaml").read_text()
    assert re.search(r"^  lr: 0.003\s+# chosen by scripts/uci_search.py$", text, re.M)
    assert re.search(r"^  batch_size: 128\s+# chosen by scripts/uci_search.py$", text, re.M)
    assert re.search(r"^  max_epochs: 200\s+# chosen by scripts/uci_search.py$", text, re.M)
    assert "hidden: [100]" in text  # the rest of the file untouched
    (conf / "uci_yacht.yaml").write_text("loop:\n  batch_size: 32\n")
    with pytest.raises(SystemExit, match="expected one line"):
        uci_search.write_choice("yacht", (0.01, 32, 40), conf)


@pytest.mark.parametrize("name", sorted(recipes()))
def test_every_method_config_is_recognised_from_the_run_it_composes(name):
    cfg = make_cfg("dataset=boston", f"method={name}")
    from omegaconf import OmegaConf

    assert method_of(OmegaConf.to_container(cfg, resolve=True), labels(cfg)) == name


def test_published_figures_parse_as_printed():
    assert uci_report.published(uci_report.NLL, "kin8nm", "Deep Ens.") == (-1.20, 0.02)
    assert uci_report.published(uci_report.RMSE, "naval", "PBP") == (0.01, None)
    assert set(uci_report.NLL) == set(uci_report.RMSE) == set(uci_report.DATASETS)
    assert all(len(v) == len(uci_report.SOURCES) for v in (*uci_report.NLL.values(), *uci_report.RMSE.values()))


def test_paired_comparison_is_the_mean_and_se_of_per_split_differences():
    rng = np.random.default_rng(0)
    reference = rng.normal(2.4, 0.2, 20)
    ours = reference + rng.normal(-0.05, 0.1, 20)
    runs = [{"labels": {"split": s}, "metrics": {"nll": float(ours[s])}} for s in range(20)]
    p = uci_report.paired(runs, reference)
    diff = ours - reference
    assert p["splits"] == 20 and p["won"] == int((diff < 0).sum())
    assert p["mean"] == pytest.approx(diff.mean(), abs=1e-12)
    assert p["se"] == pytest.approx(diff.std(ddof=1) / math.sqrt(20), abs=1e-12)
    assert uci_report.paired(runs[:1], reference) is None  # one split is no comparison


@needs_layout
def test_the_4000_epoch_reference_is_read_from_the_layout_the_runs_read():
    runs = [{"provenance": {"data_source": [str(UCI_ROOT / "yacht" / "data" / "data.txt")]}}]
    nll = uci_report.mcd_4000("yacht", runs)
    ll = np.loadtxt(UCI_ROOT / "yacht" / "results" / uci_report.MCD_4000)
    assert np.array_equal(nll, -ll) and nll.mean() == pytest.approx(1.25, abs=0.01)  # MCD 2018's published 1.25


@pytest.mark.slow
@needs_layout
def test_the_suite_command_on_a_slice_writes_the_report_with_published_rows(tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "uci_suite.py"), "--root", str(UCI_ROOT),
                           "--datasets", "yacht", "--methods", "gaussian_nll,student_t",
                           "--sweep-dir", str(tmp_path / "mr"), "--out", str(out),
                           "--extra", "loop.max_epochs=2", "logger=none"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    suite = json.loads((tmp_path / "mr" / uci_report.SUITE_FILE).read_text())
    assert suite["jobs"] == 60 + 60 and suite["wall_s"] > 0  # 3 methods and 3 recalibrations of gaussian_nll, 20 splits
    # the stages' wall times: what the report says the networks alone cost
    assert [(s["stage"], s["jobs"]) for s in suite["stages"]] == [("single models", 100), ("deep ensembles", 20)]
    assert 0 < sum(s["wall_s"] for s in suite["stages"]) <= suite["wall_s"]
    networks = sum(s["wall_s"] for s in suite["stages"]) / 60
    assert f"the neural networks alone (every stage but the baselines): **{networks:.1f} min**" in (out / "report.md").read_text()
    results = [json.loads(p.read_text()) for p in (tmp_path / "mr").rglob("result.json")]
    assert all(r["status"] == "ok" and r["launcher"] == "stacked" for r in results)
    # on each split, the ensemble's members are the single-model method with the lower NLL on that split's
    # own validation rows, and the ensemble run there trains that method's networks
    val = {(method_of(r["config"], r["labels"]), r["labels"]["split"]): r["train"]["best_val_nll"] for r in results
           if r["config"]["ensemble"]["members"] == 1 and r["config"]["recalibrate"] == "none"}
    expected = {str(i): min(("gaussian_nll", "student_t"), key=lambda m: val[(m, i)]) for i in range(20)}
    assert suite["ensemble_members"] == {"yacht": expected}
    ensembles = {r["labels"]["split"]: r for r in results if r["config"]["ensemble"]["members"] == 5}
    assert all(ensembles[i]["labels"]["head"] == recipes()[expected[str(i)]].head for i in range(20))
    assert all(r["validation"]["nll"] < r["train"]["best_val_nll"] for r in ensembles.values())  # Jensen
    # the report's row of the ensemble names its members with their counts of splits
    counts = sorted(Counter(expected.values()).items(), key=lambda kv: (-kv[1], kv[0]))
    label = f"ensemble of 5 {counts[0][0]}" if len(counts) == 1 else \
        "ensemble of 5 (" + ", ".join(f"{m} {n}" for m, n in counts) + ")"
    assert f"| densbench {label} | 20 |" in (out / "report.md").read_text()
    rows = list(csv.DictReader(open(out / "summary.csv")))
    # a row per configuration: the ensemble's 20 splits are split among its member methods' rows
    single = [r for r in rows if r["method"] != "ensemble"]
    assert {r["dataset"] for r in rows} == {"yacht"} and all(r["runs"] == "20" for r in single)
    assert sum(int(r["runs"]) for r in rows if r["method"] == "ensemble") == 20
    assert sorted(r["method"] for r in single if r["recalibrate"] == "none") == ["gaussian_nll", "student_t"]
    assert sorted((r["method"], r["recalibrate"]) for r in rows if r["recalibrate"] != "none") == [
        ("gaussian_nll", "conformal"), ("gaussian_nll", "isotonic"), ("gaussian_nll", "scale")]
    recalibrated = [r for r in results if r["config"]["recalibrate"] != "none"]
    plain = {r["labels"]["split"]: r["metrics"]["nll"] for r in results
             if r["config"]["recalibrate"] == "none" and method_of(r["config"], r["labels"]) == "gaussian_nll"}
    # recalibration is post-hoc: the models it starts from are the plain gaussian_nll ones, split by split
    assert all(r["metrics_uncalibrated"]["nll"] == pytest.approx(plain[r["labels"]["split"]], rel=1e-6) for r in recalibrated)
    text = (out / "report.md").read_text()
    assert "| MCD 2016 (published) | 20 | 1.55 ± 0.03 | - | 1.11 ± 0.09 |" in text
    cell = r"[-*0-9.]+(?: ± [0-9.]+\**)?"  # a leaderboard cell: mean ± SE, bold when best
    assert re.search(rf"\| yacht \| (?:{cell} \| ){{3}}1\.63 ± 0\.02 \| 1\.55 ± 0\.03 \| 1\.25 ± 0\.01 \| 1\.18 ± 0\.21 \| "
                     r"\*\*0\.20 ± 0\.26\*\* \| 1\.03 ± 0\.19 \|", text)
    assert "Paired per split with the 4000-epoch MC-dropout runs" in text
    assert re.search(r"^\| student_t \| [+-]\d+\.\d{3} ± \d+\.\d{3} \| \d+ \| 20 \|$", text, re.M)
    assert f"{suite['wall_s'] / 60:.1f} min" in text
    assert re.search(r"^\| yacht \| 20 \| \d+ / 31 \| [0-9.]+ ± [0-9.]+ \| [0-9.]+ ± [0-9.]+ \| [0-9.]+ ± [0-9.]+ \| 0\.0\d\d \|"
                     r".*\| \[0\.900, 0\.9\d\d\] \|", text, re.M)
    assert "Goals for `gaussian_nll`: isotonic halves the mean calibration error on" in text


@needs_layout
def test_discrete_targets_are_recognised_from_the_data_the_runs_read():
    def atoms(folder):
        return uci_report.target_atoms([{"provenance": {"data_source": [str(UCI_ROOT / folder / "data" / "data.txt")]}}])

    wine, yacht = atoms("wine-quality-red"), atoms("yacht")
    assert (wine["rows"], wine["distinct"], wine["on_atoms"]) == (1599, 6, 1.0)  # quality scores 3..8
    assert yacht["on_atoms"] < uci_report.ATOM_SHARE
    assert uci_report.target_atoms([{"provenance": {"data_source": "synthetic hetero_sine"}}]) is None


@pytest.mark.slow
@needs_layout
def test_the_search_tunes_one_method_on_its_own_and_writes_its_settings_file(tmp_path, monkeypatch):
    written, original = {}, uci_search.write_settings
    monkeypatch.setattr(uci_search, "write_settings",  # into a scratch conf/settings, not the repository's
                        lambda method, ds, setting, record, **kw: written.setdefault(
                            (method, ds), original(method, ds, setting, record, tmp_path / "settings", **kw)))
    status = uci_search.main(["--method", "student_t", "--datasets", "yacht", "--splits", "0", "--lrs", "0.01,0.03",
                              "--batches", "32", "--epoch-factors", "1", "--root", str(UCI_ROOT), "--write",
                              "--sweep-dir", str(tmp_path / "sweep"), "--out", str(tmp_path / "out")])
    assert status == 0
    record = json.loads((tmp_path / "out" / "uci_search_student_t.json").read_text())
    runs = [read_result(p.parent) for p in (tmp_path / "sweep").glob("*/result.json")]
    assert {r["labels"]["head"] for r in runs} == {"student_t"} and len(runs) == 2  # the method's own runs
    best = min(runs, key=lambda r: r["metrics"].get("nll_binned") or r["metrics"]["nll"])["config"]
    assert record["method"] == "student_t" and record["chosen"]["yacht"]["lr"] == best["optimizer"]["lr"]
    path = written[("student_t", "yacht")]
    assert path == tmp_path / "settings" / "student_t" / "yacht.yaml"
    assert path.read_text().startswith("# @package _global_\n") and "reports/uci_search_student_t.md" in path.read_text()
    loaded = OmegaConf.load(path)
    assert (loaded.optimizer.lr, loaded.loop.batch_size, loaded.loop.max_epochs) == (best["optimizer"]["lr"], 32, 40)
    assert "# UCI optimiser search: student_t" in (tmp_path / "out" / "uci_search_student_t.md").read_text()
    for refused in ("no_such", "ngboost"):  # an unknown method, or a baseline (no optimiser), is refused before any run
        with pytest.raises(SystemExit):
            uci_search.main(["--method", refused, "--datasets", "yacht", "--sweep-dir", str(tmp_path / refused)])
        assert not (tmp_path / refused).exists()


def test_the_networks_time_leaves_out_the_stages_the_suite_marks_as_not_networks():
    stages = [{"stage": "single models", "jobs": 10, "wall_s": 60.0, "networks": True},
              {"stage": "gradient boosting", "jobs": 5, "wall_s": 600.0, "networks": False},  # no "baseline" in the name
              {"stage": "deep ensembles", "jobs": 2, "wall_s": 30.0},  # an older suite file: by its name
              {"stage": "non-network baselines", "jobs": 3, "wall_s": 120.0}]
    line = uci_report.stage_times(stages)[0]
    assert "networks alone (every stage but the baselines): **1.5 min**" in line and "gradient boosting 10.0 min (5 jobs)" in line
    assert "non-network baselines 2.0 min (3 jobs)" in line
    assert uci_report.stage_times([]) == []


def test_a_local_search_tries_the_shared_setting_and_its_neighbouring_learning_rates(tmp_path):
    lrs = [0.001, 0.003, 0.01, 0.03]
    assert uci_search.around((0.01, 128, 40), lrs) == [(0.003, 128, 40), (0.01, 128, 40), (0.03, 128, 40)]
    assert uci_search.around((0.03, 32, 400), lrs) == [(0.01, 32, 400), (0.03, 32, 400)]  # the grid's edge
    assert uci_search.around((0.002, 32, 40), lrs) == [(0.001, 32, 40), (0.002, 32, 40), (0.003, 32, 40)]  # off the grid
    shared = OmegaConf.load(REPO / "conf" / "experiment" / "uci_yacht.yaml")
    assert uci_search.shared_setting("yacht") == (shared.optimizer.lr, shared.loop.batch_size, shared.loop.max_epochs)
    with pytest.raises(SystemExit):  # the base method is the one the others are refined from
        uci_search.main(["--around-shared", "--datasets", "yacht", "--sweep-dir", str(tmp_path / "base")])
    assert not (tmp_path / "base").exists()


def test_an_ensemble_trains_with_its_members_methods_own_settings_where_it_has_them():
    import uci_suite

    own = uci_suite.ensemble_overrides("mc_dropout", "boston")  # conf/settings/mc_dropout/boston.yaml exists
    assert own[-1] == "settings=mc_dropout/boston"
    assert not any(o.startswith("settings=") for o in uci_suite.ensemble_overrides("gaussian_nll", "boston"))
    cfg = make_cfg("experiment=uci_boston", *own)
    mine = make_cfg("experiment=uci_boston", "method=mc_dropout")
    assert (cfg.optimizer.lr, cfg.loop.max_epochs) == (mine.optimizer.lr, mine.loop.max_epochs)
    assert cfg.ensemble.members == 5


def test_a_local_search_writes_the_learning_rate_alone_scores_only_its_own_runs_and_keeps_published_settings(tmp_path):
    path = uci_search.write_settings("student_t", "yacht", (0.03, 32, 400), "record.md", tmp_path, lr_only=True)
    loaded = OmegaConf.load(path)
    assert loaded.optimizer.lr == 0.03 and "loop" not in loaded  # batch and epochs follow the shared settings
    assert uci_search.own_settings("student_t", tmp_path) == []  # written by a search: a search may replace it
    # MC dropout's published budget was written by hand, every file of it: a search that would overwrite it is
    # refused before any run
    by_hand = sorted((REPO / "conf" / "settings" / "mc_dropout").glob("*.yaml"))
    assert by_hand and uci_search.own_settings("mc_dropout") == by_hand
    with pytest.raises(SystemExit):
        uci_search.main(["--method", "mc_dropout", "--around-shared", "--write", "--datasets", "yacht",
                         "--sweep-dir", str(tmp_path / "mcd")])
    assert not (tmp_path / "mcd").exists()
    # a sweep folder holding an earlier grid's or other splits' runs: only this search's are scored
    runs = {"a": (0.01, 0, 1.0), "b": (0.03, 0, 2.0), "old_grid": (0.001, 0, -9.0), "other_split": (0.01, 5, -9.0)}
    for name, (lr, split, nll) in runs.items():
        (tmp_path / "sweep" / name).mkdir(parents=True)
        (tmp_path / "sweep" / name / "result.json").write_text(json.dumps({
            "status": "ok", "metrics": {"nll": nll},
            "config": {"dataset": {"name": "yacht", "tuning": True, "split": split},
                       "optimizer": {"lr": lr}, "loop": {"batch_size": 32, "max_epochs": 400}}}))
    grid = {"yacht": uci_search.around((0.03, 32, 400), [0.01, 0.03])}
    found = uci_search.scores(tmp_path / "sweep", grid, [0])
    assert found["yacht"] == {(0.01, 32, 400): [1.0], (0.03, 32, 400): [2.0]}
    assert uci_search.choose(found["yacht"]) == (0.01, 32, 400)

