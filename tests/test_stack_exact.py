"""A model computes the same numbers alone and in a stack: the minibatch stream and every loss's elementwise path.

ATen evaluates the elements of a contiguous tensor in whole vector registers and the few left over
with scalar code, whose sigmoid, softplus, pow and logaddexp round differently; which elements are
left over depends on how many models share the tensor unless each model's rows fill whole registers.
So every minibatch holds exactly batch_size rows (densbench.training.batches), and with batch sizes
that are multiples of 32 every family's loss and gradient are computed alike for any stack size.
"""

from __future__ import annotations

import pytest
import torch

from conftest import make_cfg
from densbench import objectives
from densbench.runs.execution import JobSpec, run_group, run_job
from densbench.training.batches import Stack, TrainSource
from test_conformance import FAMILIES, _targets

OBJECTIVES = sorted(objectives.load_all().items())


def _source(n: int, batch: int, seeds: list[int]) -> TrainSource:
    x = torch.arange(float(n)).reshape(1, n, 1)
    return TrainSource(x, x.clone(), (), Stack([list(range(len(seeds)))], seeds), batch)


@pytest.mark.parametrize("n,batch", [(107, 32), (64, 32), (10, 3)])
def test_every_minibatch_is_full_and_each_pass_uses_every_row_once(n, batch):
    src = _source(n, batch, [0, 5])
    steps = 4 * n // batch + 3
    rows = [src.rows(s) for s in range(steps)]
    assert all(r.shape == (2, batch) for r in rows)
    stream = torch.cat(rows, dim=1)
    for p in range(stream.shape[1] // n):  # the stream is one permutation of the rows per pass
        assert sorted(stream[0, p * n : (p + 1) * n].tolist()) == list(range(n))
    assert not torch.equal(stream[0], stream[1])  # each model its own order
    for s in range(steps):  # the batch's values are the rows it names
        x, _, _ = src.batch(s)
        assert torch.equal(x[..., 0].long(), rows[s])


def test_a_models_minibatches_do_not_depend_on_its_stack():
    alone, stacked = _source(107, 32, [5]), _source(107, 32, [0, 5, 9])
    for s in range(12):
        assert torch.equal(alone.batch(s)[0][0], stacked.batch(s)[0][1])


def _raw(fam, head: torch.Tensor) -> dict:
    """Fields as a head hands them over: slices of one [N, B, width] view of its output."""
    t, out, i = head.transpose(-1, -2), {}, 0
    for field, width in fam.fields().items():
        out[field] = t[..., i : i + width]
        i += width
    out.update({k: v.float() for k, v in fam.buffers().items()})
    return out


def _loss_and_grad(fam, obj, head, y, grad):
    h = head.clone().requires_grad_(True)
    # a target Gaussian per row where the objective compares with one (loss=kl)
    extra = (y, 0.1 + y * y) if getattr(obj, "needs_truth", None) == "gaussian" else ()
    value = obj.loss(fam, _raw(fam, h), y, extra, grad)
    value.sum().backward()
    return value.detach()[0], h.grad[0]


@pytest.mark.parametrize("batch", [32, 128])
@pytest.mark.parametrize("fam,task", FAMILIES)
def test_every_loss_and_gradient_of_a_model_is_the_same_alone_and_in_a_stack(fam, task, batch):
    width = sum(fam.fields().values())
    head = torch.randn(3, width, batch, generator=torch.Generator().manual_seed(batch)) * 0.7
    with torch.no_grad():
        y = _targets(fam, task, fam.distribution(_raw(fam, head.double())))
    y = y if y.dtype == torch.long else y.float()
    checked = 0
    for name, cls in OBJECTIVES:
        obj = cls()
        if obj.accepts(fam) is not None:
            continue
        for grad in ("autograd", "analytic"):
            if grad == "analytic" and obj.analytic_refusal(fam) is not None:
                continue
            alone = _loss_and_grad(fam, obj, head[:1], y[:1], grad)
            stacked = _loss_and_grad(fam, obj, head, y, grad)
            assert torch.equal(alone[0], stacked[0]), (name, grad, "loss")
            assert torch.equal(alone[1], stacked[1]), (name, grad, "gradient")
            checked += 1
    assert checked > 0


def test_evidential_float32_stack_trains_as_alone_with_a_short_last_batch(tmp_path):
    # boston's 409 training and 45 validation rows are no multiple of 32: a short last minibatch and the
    # validation pass once made this stack differ from its jobs alone
    common = ["experiment=uci_boston", "method=evidential", "loop.max_epochs=8", "logger=none", "figures=false"]
    cfgs = [make_cfg(*common, f"dataset.split={i}") for i in range(3)]
    stacked = run_group([JobSpec(cfg, tmp_path / f"stack{i}", launcher="stacked") for i, cfg in enumerate(cfgs)])
    assert stacked[0]["train"]["n_train"] % 32 != 0
    for i, (s, cfg) in enumerate(zip(stacked, cfgs)):
        a = run_job(cfg, tmp_path / f"alone{i}")
        assert s["train"]["stack"]["models"] == 3
        assert s["metrics"]["nll"] == a["metrics"]["nll"] and s["curves"] == a["curves"]
