"""Loss forward+backward time: analytic vs autograd vs torch.compile'd autograd vs PyTorch built-ins.

For each loss family (and head variant), batch sizes 1e3 ... 1e6 (K = 5, 20 for mdn), on CPU and on
CUDA when present. Implementations of one case are timed alternately within each repeat and the
median is kept, so machine noise hits all of them alike; ratios are within one run.

    python scripts/bench_grads.py [--sizes 1000,10000,100000,1000000] [--repeats 15] [--threads 1]

Writes reports/bench_grads.md and reports/bench_grads.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.distributions import Categorical, MixtureSameFamily, Normal, Poisson, kl_divergence

from densbench.objectives import analytic
from densbench.distributions.families.gaussian import Gaussian
from densbench.distributions.families.glm import CANONICAL, Categorical as CategoricalFamily
from densbench.distributions.families.mixture import Mixture
from densbench.objectives.glm import GLM
from densbench.objectives.kl import KL
from densbench.objectives.nll import NLL

REPORTS = Path(__file__).resolve().parents[1] / "reports"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_case(family: str, n: int, device: torch.device, k: int = 5, classes: int = 10):
    """Inputs (leaf tensors needing grad first) and a dict name -> fn(*inputs) -> scalar loss."""
    g = torch.Generator().manual_seed(0)

    def leaf(n, k, scale=1.0):
        # the layout heads produce: [n, k] views of output-major [k, n] memory
        return (torch.randn(k, n, generator=g) * scale).to(device).T.requires_grad_(True)

    def const(t):
        return t.to(device)

    def path(objective, fam, names, y, extra=()):
        """The objective's loss of the family's raw fields, on one gradient path (what training runs)."""
        buffers = {k: v.to(device) for k, v in fam.buffers().items()}
        return {grad: (lambda *fields, grad=grad: objective.loss(fam, {**dict(zip(names, fields)), **buffers}, y, extra, grad))
                for grad in ("analytic", "autograd")}

    if family in ("nll", "kl"):
        mu, raw = leaf(n, 1), leaf(n, 1)
        y = const(torch.randn(n, 1, generator=g))
        s2 = const(torch.rand(n, 1, generator=g) + 0.1)
        if family == "nll":
            fns = {
                **path(NLL(), Gaussian(), ["loc", "spread"], y),
                "F.gaussian_nll_loss": lambda a, b: F.gaussian_nll_loss(a, y, F.softplus(b) + 1e-6, full=True),
                "Normal.log_prob": lambda a, b: -Normal(a, (F.softplus(b) + 1e-6).sqrt()).log_prob(y).mean(),
            }
        else:
            fns = {
                **path(KL(), Gaussian(), ["loc", "spread"], None, (y, s2)),
                "kl_divergence": lambda a, b: kl_divergence(Normal(y, s2.sqrt()), Normal(a, (F.softplus(b) + 1e-6).sqrt())).mean(),
            }
        return (mu, raw), fns
    if family == "mdn":
        logits, mu, raw = leaf(n, k), leaf(n, k), leaf(n, k, scale=0.5)
        y = const(torch.randn(n, 1, generator=g))
        fns = {
            **path(NLL(), Mixture(k), ["logits", "loc", "spread"], y),
            "MixtureSameFamily": lambda a, b, c: -MixtureSameFamily(
                Categorical(logits=a), Normal(b, torch.exp(c) + 1e-6)
            ).log_prob(y[:, 0]).mean(),
        }
        return (logits, mu, raw), fns
    fam = family.split("_", 1)[1]
    if fam == "categorical":
        eta = leaf(n, classes)
        y = const(torch.randint(0, classes, (n,), generator=g))
        builtin = {"F.cross_entropy": lambda e: F.cross_entropy(e, y)}
    else:
        eta = leaf(n, 1)
        if fam == "gaussian":
            y = const(torch.randn(n, 1, generator=g))
            builtin = {"F.mse_loss": lambda e: 0.5 * F.mse_loss(e, y)}
        elif fam == "bernoulli":
            y = const(torch.randint(0, 2, (n, 1), generator=g).float())
            builtin = {"F.binary_cross_entropy_with_logits": lambda e: F.binary_cross_entropy_with_logits(e, y)}
        else:
            y = const(torch.poisson(torch.full((n, 1), 3.0), generator=g))
            builtin = {
                "F.poisson_nll_loss": lambda e: F.poisson_nll_loss(e, y, log_input=True, full=True),
                "Poisson.log_prob": lambda e: -Poisson(e.exp()).log_prob(y).mean(),
            }
    canonical = CategoricalFamily(classes) if fam == "categorical" else CANONICAL[fam]()
    fns = {**path(GLM(), canonical, ["eta"], y), **builtin}
    return (eta,), fns


def time_case(inputs, fns: dict[str, Callable], repeats: int, device: torch.device, inner: int) -> dict[str, float]:
    """Median seconds per forward+backward for each implementation, timed alternately."""

    def once(fn):
        for t in inputs:
            t.grad = None
        loss = fn(*inputs)
        loss.backward()

    for fn in fns.values():  # warm-up (and compilation)
        for _ in range(3):
            once(fn)
    _sync(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(inner):
                once(fn)
            _sync(device)
            samples[name].append((time.perf_counter() - t0) / inner)
    return {name: statistics.median(v) for name, v in samples.items()}


def add_compiled(fns: dict[str, Callable]) -> dict[str, Callable]:
    """torch.compile'd variants: the whole autograd loss, and the analytic path's kernels."""

    def analytic_compiled(*args):
        analytic.use_compiled_kernels(True)
        try:
            return fns["analytic"](*args)
        finally:
            analytic.use_compiled_kernels(False)

    return {**fns, "autograd+compile": torch.compile(fns["autograd"], dynamic=False), "analytic+compile": analytic_compiled}


CASES = ["nll", "kl", "mdn", "glm_gaussian", "glm_bernoulli", "glm_categorical", "glm_poisson"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,100000,1000000")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile variants")
    ap.add_argument("--devices", default="cpu,cuda")
    ap.add_argument("--out", default=str(REPORTS / "bench_grads"))
    ap.add_argument("--render-only", action="store_true", help="rebuild the Markdown from the JSON")
    args = ap.parse_args()
    out = Path(args.out)
    if args.render_only:
        saved = json.loads(out.with_suffix(".json").read_text())
        out.with_suffix(".md").write_text(render(saved["meta"], saved["rows"]))
        return
    torch.set_num_threads(args.threads)
    # compiled kernels from a cache of its own: a stale or damaged shared cache (/tmp/torchinductor_<user>)
    # has crashed the compiled backward here ("double free or corruption"), and a reused one hides compile work
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_grads_inductor_")
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    devices = [torch.device(d) for d in args.devices.split(",") if d != "cuda" or torch.cuda.is_available()]
    rows = []
    for device in devices:
        for case in args.cases.split(","):
            for k in ([5, 20] if case == "mdn" else [None]):
                for n in sizes:
                    inputs, fns = make_case(case, n, device, k=k or 5)
                    if not args.no_compile:
                        fns = add_compiled(fns)
                    inner = max(1, int(2e5 // n)) if device.type == "cpu" else max(1, int(2e6 // n))
                    t = time_case(inputs, fns, args.repeats, device, inner)
                    row = {"device": device.type, "case": case if k is None else f"mdn K={k}", "n": n, "seconds": t}
                    row["analytic_speedup_vs_autograd"] = t["autograd"] / t["analytic"]
                    if "autograd+compile" in t:
                        row["analytic_speedup_vs_compiled_autograd"] = t["autograd+compile"] / t["analytic"]
                    if "analytic+compile" in t:
                        row["compiled_analytic_speedup_vs_compiled_autograd"] = t["autograd+compile"] / t["analytic+compile"]
                    fastest = min(t, key=t.get)
                    row["fastest"] = fastest
                    rows.append(row)
                    print(f"{device.type:4s} {row['case']:16s} n={n:>8d}  " + "  ".join(f"{k}={v * 1e3:.3f}ms" for k, v in t.items())
                          + f"  analytic x{row['analytic_speedup_vs_autograd']:.2f} vs autograd  fastest={fastest}", flush=True)
    meta = {
        "torch": torch.__version__,
        "threads": args.threads,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "repeats": args.repeats,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(render(meta, rows))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


def summary(rows: list[dict], min_n: int = 100_000) -> list[str]:
    """The goal check: at batch >= min_n, is the analytic path the fastest, >= 2x eager autograd,
    and no slower than compiled autograd?"""
    lines = [
        "## Summary",
        "",
        "Speed-up = time of the other implementation / time of the analytic one (> 1: analytic is faster).",
        "`best analytic` is the faster of eager and compiled analytic kernels.",
        "",
        "| device | loss | n | analytic vs eager autograd | best analytic vs compiled autograd | fastest of all |",
        "|---|---|---|---|---|---|",
    ]
    short = []
    for r in rows:
        t = r["seconds"]
        best = min(t["analytic"], t.get("analytic+compile", math.inf))
        vs_compiled = t["autograd+compile"] / best if "autograd+compile" in t else float("nan")
        lines.append(f"| {r['device']} | {r['case']} | {r['n']:.0e} | {r['analytic_speedup_vs_autograd']:.2f} | "
                     f"{vs_compiled:.2f} | {r['fastest']} |")
        if r["n"] >= min_n:
            if r["analytic_speedup_vs_autograd"] < 2:
                short.append(f"- {r['case']} at n={r['n']:.0e} ({r['device']}): eager analytic is "
                             f"{r['analytic_speedup_vs_autograd']:.2f}x eager autograd (goal 2x)")
            if vs_compiled < 1:
                short.append(f"- {r['case']} at n={r['n']:.0e} ({r['device']}): best analytic is "
                             f"{vs_compiled:.2f}x compiled autograd (goal >= 1)")
            if not r["fastest"].startswith("analytic"):
                short.append(f"- {r['case']} at n={r['n']:.0e} ({r['device']}): fastest is {r['fastest']}")
    lines += ["", f"Where the goal (batch >= {min_n:.0e}) is not met:", ""] + (short or ["- nowhere"]) + [""]
    return lines


def render(meta: dict, rows: list[dict]) -> str:
    """Markdown tables of the figures."""
    lines = [
        "# Loss gradients: analytic vs autograd",
        "",
        "Produced by `python scripts/bench_grads.py` "
        f"(torch {meta['torch']}, {meta['threads']} thread(s), {meta['machine']} {meta['processor'] or ''}"
        + (f", CUDA: {meta['cuda']}" if meta.get("cuda") else ", no GPU") + f", median of {meta['repeats']} repeats).",
        "Time of one forward + backward of the reduced loss (ms); the implementations of one row are timed",
        "alternately, so machine noise hits them alike. `analytic` = closed-form gradients computed in a fused",
        "kernel (torch.autograd.Function); `autograd` = the same per-sample formula differentiated by autograd;",
        "`+compile` = torch.compile (of the whole autograd loss; of the analytic kernels); the rest are PyTorch",
        "built-ins computing the same loss. Inputs have the layout heads produce ([n, k] views of [k, n] memory).",
        "",
    ]
    lines += summary(rows)
    for device in sorted({r["device"] for r in rows}):
        for case in dict.fromkeys(r["case"] for r in rows if r["device"] == device):
            sub = [r for r in rows if r["device"] == device and r["case"] == case]
            names = list(sub[0]["seconds"])
            lines += [f"## {case} ({device})", "", "| n | " + " | ".join(names) + " | analytic / autograd speed-up | fastest |",
                      "|---|" + "---|" * (len(names) + 2)]
            for r in sub:
                cells = [f"{r['seconds'][k] * 1e3:.3f}" for k in names]
                lines.append(f"| {r['n']:.0e} | " + " | ".join(cells) + f" | {r['analytic_speedup_vs_autograd']:.2f} | {r['fastest']} |")
            lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
