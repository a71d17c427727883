"""GPU checks; skipped cleanly on machines without CUDA (CI has none)."""

import pytest
import torch

from conftest import make_cfg
import adapters as losses
from densbench.objectives.base import GRADS
from densbench.distributions.positivity import Positivity, Spread
from densbench.runs.execution import run_job

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.mark.parametrize("grad", GRADS)
def test_gpu_run_matches_cpu_run(tmp_path, grad):
    common = ("experiment=fast", f"grad={grad}", "trainer.precision=64-true", "logger=none", "figures=false")
    cpu = run_job(make_cfg(*common), tmp_path / "cpu")
    gpu = run_job(make_cfg(*common, "trainer=gpu"), tmp_path / "gpu")
    assert gpu["status"] == "ok", gpu.get("error")
    assert gpu["labels"]["device"] == "gpu"
    assert gpu["metrics"]["nll"] == pytest.approx(cpu["metrics"]["nll"], rel=1e-6)
    assert gpu["metrics"]["peak_memory_mb"] > 0


def test_analytic_kernels_on_cuda_match_autograd():
    g = torch.Generator(device="cuda").manual_seed(0)
    n, k = 4096, 5
    logits, mu, raw = (torch.randn(k, n, generator=g, device="cuda", dtype=torch.float64).T.requires_grad_() for _ in range(3))
    y = torch.randn(n, 1, generator=g, device="cuda", dtype=torch.float64)
    sp = Spread(Positivity("exp", 1e-6), "std")
    grads = {}
    for grad in GRADS:
        val = losses.mixture_nll(logits, mu, raw, y, sp, grad)
        grads[grad] = torch.autograd.grad(val, (logits, mu, raw))
    for a, b in zip(grads["analytic"], grads["autograd"]):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-14)
