"""How much does densbench's training path cost over a hand-written PyTorch loop?

1. The seed workloads in one process: the GLM document's (400 points, 1-30-20-1, SGD lr 0.2, 5000
   full-batch steps) and the MDN document's (1000 points, K = 5, Adam, 8000 steps). Each is trained
   by the plain loop of scripts/plain_loops.py and by densbench (Trainer built and fitted, with its
   validation every 1000 steps, TensorBoard logging and checkpoints), alternating, median of repeats.
2. The headline sweep `python -m densbench -m loss=kl,nll,mdn` against the same three trainings as
   plain-loop scripts, each timed as a whole process (interpreter start-up and imports included).
3. A 4-job sweep with `launcher=parallel` against the same sweep run sequentially.

    python scripts/bench_overhead.py [--repeats 9] [--skip-sweeps]
    python scripts/bench_overhead.py --repeats 2 --sweep-repeats 1 --steps-fraction 0.2 --sweeps none   # regenerate.py's

`--steps-fraction` trains the seed workloads for that share of their steps (both sides alike: the
ratio then weighs densbench's fixed per-run costs more, not less); `--sweeps` picks the sweeps of part 3.

Writes reports/bench_overhead.md and reports/bench_overhead.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import plain_loops  # noqa: E402

from densbench.config import compose_config  # noqa: E402


def densbench_fit(overrides: list[str]) -> float:
    """Seconds to build and fit one densbench run (validation, logging, checkpoints included)."""
    from densbench.runs.assembly import build
    from densbench.runs.execution import JobSpec

    cfg = compose_config(overrides + ["figures=false"])
    gc.collect()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        b = build([JobSpec(cfg, Path(tmp))])
        b.trainer.fit(b.module, datamodule=b.datamodule)
        return time.perf_counter() - t0


def timed(fn) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


STEPS = {"GLM": 5000, "MDN": 8000}  # the documents' full-batch steps
WORKLOADS = {
    # name: (densbench overrides, plain-loop callable factory of (data, steps))
    "GLM document, autograd": (["experiment=glm_doc", "dataset=sine_gaussian"], lambda d, n: lambda: plain_loops.glm(d, steps=n)),
    "GLM document, analytic": (
        ["experiment=glm_doc", "dataset=sine_gaussian", "grad=analytic"],
        lambda d, n: lambda: plain_loops.glm(d, grad="analytic", steps=n),
    ),
    "MDN document, autograd": (["experiment=mdn_doc"], lambda d, n: lambda: plain_loops.mdn(d, steps=n)),
    "MDN document, analytic": (["experiment=mdn_doc", "grad=analytic"], lambda d, n: lambda: plain_loops.mdn(d, grad="analytic", steps=n)),
}
DOC_LOOPS = {"GLM document, autograd": lambda d, n: lambda: plain_loops.doc_glm(d, steps=n),
             "MDN document, autograd": lambda d, n: lambda: plain_loops.doc_mdn(d, steps=n)}
# part 3's sweeps; the longer one shows how the speed-up grows once training outweighs a sweep's fixed costs
SWEEPS = {"seeds": ("4 seeds of loss=nll", ["loss=nll", "seed=0,1,2,3"]), "losses": ("loss=kl,nll,mdn,glm", ["loss=kl,nll,mdn,glm"]),
          "long": ("4 seeds of loss=nll, 4x longer", ["loss=nll", "seed=0,1,2,3", "loop.max_steps=12000"])}


def in_process(repeats: int, only: list[str] | None = None, fraction: float = 1.0) -> list[dict]:
    """Part 1: plain loop vs densbench on the seed workloads (fraction of their steps), alternating."""
    torch.set_num_threads(1)
    data = {"GLM": plain_loops.prepared("sine_gaussian", n_train=400)[1], "MDN": plain_loops.prepared("inverse_sine", n_train=1000)[1]}
    rows = []
    for name, (overrides, plain_factory) in WORKLOADS.items():
        if only and not any(name.startswith(o) for o in only):
            continue
        d, steps = data[name.split()[0]], round(STEPS[name.split()[0]] * fraction)
        impls = {"plain": plain_factory(d, steps), "densbench": lambda o=overrides + [f"loop.max_steps={steps}"]: densbench_fit(o)}
        if name in DOC_LOOPS:
            impls["document-style loop"] = DOC_LOOPS[name](d, steps)
        for fn in impls.values():  # warm-up (imports, allocator, lazy initialisation)
            fn()
        times: dict[str, list[float]] = {k: [] for k in impls}
        for r in range(repeats):
            order = list(impls) if r % 2 == 0 else list(reversed(impls))
            for k in order:
                times[k].append(timed(impls[k]) if k != "densbench" else impls[k]())
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"workload": name, "steps": steps, "median_s": med, "all_s": times, "ratio": med["densbench"] / med["plain"],
               "ratio_of_minima": min(times["densbench"]) / min(times["plain"]), "paired_ratio": paired_ratio(times)}
        rows.append(row)
        print(f"{name}: " + "  ".join(f"{k}={v:.2f}s" for k, v in med.items()) + f"  densbench/plain={row['ratio']:.3f}", flush=True)
    return rows


def paired_ratio(times: dict[str, list[float]]) -> float:
    """Median over repeats of densbench / plain, each pair timed back to back.

    The machine's speed drifts between repeats; a pair shares its drift, so this ratio is the least
    noisy of the three shown.
    """
    return statistics.median(d / p for d, p in zip(times["densbench"], times["plain"]))


def run(cmd: list[str], cwd: Path) -> float:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return dt


def headline(repeats: int) -> dict:
    """Part 2: the headline sweep against three plain-loop processes, start-up included."""
    py = sys.executable
    out = {"densbench": [], "plain": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for r in range(repeats):
            for which in (["densbench", "plain"] if r % 2 == 0 else ["plain", "densbench"]):
                if which == "densbench":
                    # every step trained, as the plain loops do (early stopping would make densbench's side shorter)
                    cmd = [py, "-m", "densbench", "-m", "loss=kl,nll,mdn", "loop.early_stopping_patience=null",
                           f"hydra.sweep.dir={tmp}/sweep{r}", f"report.dir={tmp}/reports"]
                    out["densbench"].append(run(cmd, tmp))
                else:
                    out["plain"].append(sum(run([py, str(ROOT / "scripts" / "plain_loops.py"), "--loss", loss], tmp) for loss in ("kl", "nll", "mdn")))
            print(f"headline repeat {r}: densbench {out['densbench'][-1]:.1f}s, plain {out['plain'][-1]:.1f}s", flush=True)
    med = {k: statistics.median(v) for k, v in out.items()}
    return {"median_s": med, "all_s": out, "ratio": med["densbench"] / med["plain"]}


def parallel(repeats: int, chosen: list[str]) -> dict:
    """Part 3: 4-job sweeps (SWEEPS' chosen ones), sequential vs the joblib launcher on all cores."""
    py = sys.executable
    sweeps = dict(SWEEPS[k] for k in chosen)
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for label, args in sweeps.items():
            times = {"sequential": [], "parallel": []}
            for r in range(repeats):
                for which in (["sequential", "parallel"] if r % 2 == 0 else ["parallel", "sequential"]):
                    launcher = "launcher=parallel" if which == "parallel" else "launcher=basic"
                    d = tmp / f"{len(out)}{which}{r}"
                    cmd = [py, "-m", "densbench", "-m", *args, launcher, "loop.early_stopping_patience=null", f"hydra.sweep.dir={d}",
                           f"report.dir={tmp}/reports"]
                    times[which].append(run(cmd, tmp))
                    if which == "sequential":
                        jobs = sorted(json.loads(p.read_text())["wall_time_s"] for p in d.rglob("result.json"))
                print(f"{label} repeat {r}: sequential {times['sequential'][-1]:.1f}s, parallel {times['parallel'][-1]:.1f}s", flush=True)
            med = {k: statistics.median(v) for k, v in times.items()}
            # two workers cannot beat the longest chain of jobs: the best split of the job times
            bound = min(max(sum(a), sum(b)) for a, b in _splits(jobs))
            out[label] = {"median_s": med, "all_s": times, "speedup": med["sequential"] / med["parallel"],
                          "fixed_s": med["sequential"] - sum(jobs),
                          "job_wall_s": jobs, "best_two_worker_makespan_s": bound}
    return out


def _splits(jobs: list[float]):
    """Every way to share the jobs between two workers."""
    n = len(jobs)
    for mask in range(2 ** (n - 1)):
        a = [j for i, j in enumerate(jobs) if mask >> i & 1]
        b = [j for i, j in enumerate(jobs) if not mask >> i & 1]
        yield a, b


def render(meta: dict, rows: list[dict], head: dict | None, par: dict | None) -> str:
    """The Markdown report."""
    lines = [
        "# Training overhead: densbench vs a hand-written PyTorch loop",
        "",
        f"Produced by `python scripts/bench_overhead.py` on {meta['cpus']} CPU core(s), torch {meta['torch']}, one torch thread",
        f"per training; medians of {meta['repeats']} repeats (the sweeps: {meta.get('sweep_repeats', meta['repeats'])}), implementations "
        "alternating. Ratios compare figures of one run.",
        f"Part 1 ran {meta.get('date', '?')}; the sweeps (part 2{' and 3' if par else ''}) ran {meta.get('sweeps_run', meta.get('date', '?'))}.",
        "The machine is a shared virtual machine whose speed drifts by 10-20 % within seconds. Three estimates",
        "are shown: the ratio of the medians, the ratio of the fastest runs, and the median of the per-repeat",
        "ratios of runs timed back to back (`paired`), which cancels most of the drift; the goal is judged on it.",
        "",
        "## Seed workloads, one process",
        "",
        "`plain`: the loop of scripts/plain_loops.py with densbench's own backbone and head modules, loss and optimiser,",
        "and nothing else. `densbench`: the Trainer built and fitted (data on the device, chunked optimisation steps,",
        "validation every 1000 steps, TensorBoard logging, best/last checkpoints). `document-style loop`: the source",
        "documents' own loop (nn.Sequential, sliced outputs), for reference.",
        "",
        "`steps`: full-batch steps trained, of the document's (`--steps-fraction`; densbench's fixed per-run costs weigh more",
        "in a shorter run).",
        "",
        "| workload | steps | plain (s) | densbench (s) | document-style loop (s) | ratio of medians | ratio of the fastest runs | paired ratio | goal |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["median_s"]
        doc = f"{m['document-style loop']:.2f}" if "document-style loop" in m else "-"
        paired = paired_ratio(r["all_s"])
        full = STEPS[r["workload"].split()[0]]
        lines.append(f"| {r['workload']} | {r.get('steps', full)} of {full} | {m['plain']:.2f} | {m['densbench']:.2f} | {doc} | {r['ratio']:.3f} | "
                     f"{r['ratio_of_minima']:.3f} | {paired:.3f} | {'met' if paired <= 1.15 else 'NOT met'} (<= 1.15) |")
    if head:
        m = head["median_s"]
        lines += [
            "",
            "## Headline sweep, whole processes",
            "",
            "`python -m densbench -m loss=kl,nll,mdn` (three trainings of 3000 steps, validation, test metrics, figures,",
            "TensorBoard, the report) against `python scripts/plain_loops.py --loss kl|nll|mdn` run one after another",
            "(the same three trainings, nothing else). Interpreter start-up and imports included on both sides.",
            "",
            "| densbench sweep (s) | three plain processes (s) | ratio | goal |",
            "|---|---|---|---|",
            f"| {m['densbench']:.1f} | {m['plain']:.1f} | {head['ratio']:.3f} | {'met' if head['ratio'] <= 1.3 else 'NOT met'} (<= 1.3) |",
        ]
    if par:
        lines += [
            "",
            "## Parallel sweeps",
            "",
            "The same 4-job sweep with `launcher=basic` (one job after another) and `launcher=parallel` (joblib/loky",
            "worker processes on all cores, one torch thread each), whole processes. With 2 workers a sweep cannot",
            "finish before its longest chain of jobs: `best split` is that lower bound from the measured job times.",
            "`fixed` is the sequential sweep's time outside its jobs (interpreter start, Hydra, the first import of",
            "torch and Lightning, about 5 s on this machine, and the report). Every parallel worker pays the import",
            "again, so the speed-up approaches 2 only when training outweighs these costs. `bound` = sequential /",
            "(fixed + best split) estimates the speed-up two workers would reach if starting them cost nothing; part",
            "of the fixed cost overlaps in parallel (each worker imports on its own core), so it can be beaten slightly.",
            "",
            "| sweep | sequential (s) | parallel (s) | speed-up | job wall times (s) | fixed (s) | best split of the jobs over 2 workers (s) | bound | goal |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for label, p in par.items():
            m = p["median_s"]
            jobs = ", ".join(f"{j:.1f}" for j in p["job_wall_s"])
            lines.append(f"| `{label}` | {m['sequential']:.1f} | {m['parallel']:.1f} | {p['speedup']:.2f} | {jobs} | "
                         f"{p['fixed_s']:.1f} | {p['best_two_worker_makespan_s']:.1f} | "
                         f"{m['sequential'] / (p['fixed_s'] + p['best_two_worker_makespan_s']):.2f} | {'met' if p['speedup'] >= 1.6 else 'NOT met'} (>= 1.6) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--sweep-repeats", type=int, default=3)
    ap.add_argument("--steps-fraction", type=float, default=1.0, help="share of the seed workloads' steps to train")
    ap.add_argument("--sweeps", default=",".join(SWEEPS), help=f"part 3's sweeps, of {', '.join(SWEEPS)} (none: skip part 3)")
    ap.add_argument("--skip-sweeps", action="store_true")
    ap.add_argument("--reuse-sweeps", action="store_true", help="keep parts 2 and 3 from the existing JSON, rerun part 1")
    ap.add_argument("--sweeps-only", action="store_true", help="keep part 1 from the existing JSON, rerun parts 2 and 3")
    ap.add_argument("--render", action="store_true", help="rewrite the Markdown from the existing JSON, run nothing")
    ap.add_argument("--only", default=None, help="comma-separated workload name prefixes to run (e.g. GLM)")
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench_overhead"))
    args = ap.parse_args()
    meta = {"torch": torch.__version__, "cpus": os.cpu_count(), "machine": platform.machine(), "repeats": args.repeats,
            "sweep_repeats": args.sweep_repeats,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out = Path(args.out)
    if args.render:
        old = json.loads(out.with_suffix(".json").read_text())
        out.with_suffix(".md").write_text(render(old["meta"], old["seed_workloads"], old["headline"], old["parallel"]))
        return
    if args.sweeps_only:
        old = json.loads(out.with_suffix(".json").read_text())
        rows, meta["date"], meta["repeats"] = old["seed_workloads"], old["meta"]["date"], old["meta"]["repeats"]
    else:
        rows = in_process(args.repeats, args.only.split(",") if args.only else None, args.steps_fraction)
    head = par = None
    if args.reuse_sweeps:
        old = json.loads(out.with_suffix(".json").read_text())
        head, par = old["headline"], old["parallel"]
        meta["sweeps_run"] = old["meta"].get("sweeps_run", old["meta"].get("date", "an earlier run"))
    elif not args.skip_sweeps:
        head = headline(args.sweep_repeats)
        chosen = [k for k in args.sweeps.split(",") if k and k != "none"]
        par = parallel(args.sweep_repeats, chosen) if chosen else None
        meta["sweeps_run"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "seed_workloads": rows, "headline": head, "parallel": par}, indent=1))
    out.with_suffix(".md").write_text(render(meta, rows, head, par))
    print(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
