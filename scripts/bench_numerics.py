"""What pinning the CPU kernels does and costs (densbench.numerics), measured in whole processes.

1. What it prevents: concrete / gaussian_nll / split 19 (UCI protocol) in float32 and float64, with the
   caller's `ATEN_CPU_CAPABILITY` set to `default` (scalar kernels) or `avx2`, pinned (densbench's
   default) and left native (`DENSBENCH_NUMERICS=native`): the test NLL of each.
2. What it costs: the 5-member ensembles of all 20 naval splits (100 networks in one stack, 3 epochs),
   pinned against native kernels (this CPU's own choice, AVX-512 where it has it), and float64 against
   float32 (both pinned), each as alternating pairs of fresh processes; the ratio of the stack's
   training seconds (result.json `timing.train_s`), median over the pairs.

    DENSBENCH_UCI_ROOT=../shared/uci python scripts/bench_numerics.py [--pairs 3]

Writes reports/bench_numerics.md and reports/bench_numerics.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ONE = ["experiment=uci_concrete", "method=gaussian_nll", "dataset.split=19", "logger=none", "figures=false", "resume=false"]
STACK = ["-m", "experiment=uci_naval", "dataset.split=range(20)", "ensemble.members=5", "loop.max_epochs=3",
         "launcher=stacked", "logger=none", "figures=false", "report.enabled=false", "resume=false"]
PRECISION = {"float32": [], "float64": ["trainer.precision=64-true"]}


def _env(pinned: bool, capability: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DENSBENCH_NUMERICS", "ATEN_CPU_CAPABILITY", "MKL_CBWR")}
    if not pinned:
        env["DENSBENCH_NUMERICS"] = "native"
    if capability:
        env["ATEN_CPU_CAPABILITY"] = capability
    return env


def _run(args: list[str], env: dict[str, str], where: Path) -> list[dict]:
    """One fresh process of `python -m densbench args`; the result.json files it wrote."""
    target = [f"hydra.sweep.dir={where}"] if args[:1] == ["-m"] else [f"hydra.run.dir={where}"]
    proc = subprocess.run([sys.executable, "-m", "densbench", *args, *target], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    results = [json.loads(p.read_text()) for p in sorted(where.rglob("result.json"))]
    if not results or any(r["status"] != "ok" for r in results):
        raise RuntimeError(f"{' '.join(args)}: statuses {[r['status'] for r in results]}")
    return results


def prevented(tmp: Path) -> list[dict]:
    """Part 1: test NLL of one run under each caller's kernels, pinned and native, in both precisions."""
    cases = [(precision, pinned, capability) for precision in PRECISION for pinned in (True, False) for capability in ("default", "avx2")]

    def one(case: tuple[str, bool, str]) -> dict:
        precision, pinned, capability = case
        (res,) = _run([*ONE, *PRECISION[precision]], _env(pinned, capability), tmp / f"one-{precision}-{pinned}-{capability}")
        print(f"part 1: {precision} pinned={pinned} caller={capability}: nll {res['metrics']['nll']:.6f}", flush=True)
        return {"precision": precision, "pinned": pinned, "caller": capability, "nll": res["metrics"]["nll"],
                "rmse": res["metrics"]["rmse"], "numerics": res["provenance"]["numerics"]}

    # test NLLs, not timings: the runs share the cores (each trains on one thread)
    with ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2) as pool:
        return list(pool.map(one, cases))


def cost(tmp: Path, pairs: int) -> dict:
    """Part 2: the stack's training seconds, native against pinned and float64 against float32, alternating."""
    variants = {"pinned": ([], _env(True)), "native": ([], _env(False)),
                "float64": (PRECISION["float64"], _env(True))}
    times: dict[str, list[float]] = {k: [] for k in variants}
    comparisons = (("native", "pinned"), ("float64", "pinned"))
    for r in range(pairs):
        for a, b in comparisons:
            for name in ((a, b) if r % 2 == 0 else (b, a)):
                extra, env = variants[name]
                results = _run([*STACK, *extra], env, tmp / f"stack-{name}-{r}-{a}")
                times[name].append(results[0]["timing"]["train_s"])  # the stack's jobs share its times
                print(f"part 2, pair {r}: {name} train {times[name][-1]:.2f} s", flush=True)
    # pinned runs twice a pair (once beside each other variant): pair each with its neighbour
    pinned_by = {c: times["pinned"][i::len(comparisons)] for i, c in enumerate(comparisons)}
    ratio = {a: statistics.median(x / y for x, y in zip(times[a], pinned_by[(a, b)])) for a, b in comparisons}
    return {"train_s": times, "ratio_to_pinned": ratio}


def render(meta: dict, rows: list[dict], costs: dict) -> str:
    """The Markdown report."""
    lines = ["# Pinned numerics: what they prevent and what they cost", "",
             f"`python scripts/bench_numerics.py` on {meta['machine']}, {meta['date']}; every figure from fresh processes.", "",
             "## What pinning prevents", "",
             f"`python -m densbench {' '.join(ONE[:3])}` (test NLL), with the caller's `ATEN_CPU_CAPABILITY` as given:", "",
             "| precision | kernels | caller: default | caller: avx2 | same? |", "|---|---|---|---|---|"]
    for precision in PRECISION:
        for pinned in (True, False):
            got = {r["caller"]: r["nll"] for r in rows if r["precision"] == precision and r["pinned"] == pinned}
            lines.append(f"| {precision} | {'pinned' if pinned else 'native'} | {got['default']:.6f} | {got['avx2']:.6f} | "
                         f"{'identical' if got['default'] == got['avx2'] else 'differ by ' + format(abs(got['default'] - got['avx2']), '.2g')} |")
    t = costs["train_s"]
    lines += ["", "## What it costs", "",
              f"`python -m densbench {' '.join(STACK[:6])}` (100 networks in one stack), training seconds of the stack, "
              f"alternating pairs of fresh processes (median ratio over {meta['pairs']} pairs):", "",
              "| variant | train s (each run) | against pinned float32 |", "|---|---|---|",
              f"| pinned, float32 (the default) | {', '.join(f'{x:.2f}' for x in t['pinned'])} | 1 |",
              f"| native kernels, float32 | {', '.join(f'{x:.2f}' for x in t['native'])} | {costs['ratio_to_pinned']['native']:.2f}x |",
              f"| pinned, float64 | {', '.join(f'{x:.2f}' for x in t['float64'])} | {costs['ratio_to_pinned']['float64']:.2f}x |", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench_numerics"))
    args = ap.parse_args()
    cpuinfo = Path("/proc/cpuinfo")
    model = next((line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
                  if line.startswith("model name")), platform.processor())
    meta = {"machine": f"{os.cpu_count()} cores, {platform.machine()}, {model}",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "pairs": args.pairs}
    with tempfile.TemporaryDirectory() as tmp:
        rows = prevented(Path(tmp))
        costs = cost(Path(tmp), args.pairs)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "prevented": rows, "cost": costs}, indent=1) + "\n")
    out.with_suffix(".md").write_text(render(meta, rows, costs))
    print(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
