"""Count heads at the speed of the Gaussian head: `python -m densbench dataset=doctorvisits head=negbin`
against `head=gaussian` and `loss=glm` (Poisson) on the same data, whole processes (start-up included),
alternating, plus each run's own training step time from its result.json.

    python scripts/bench_counts.py [--pairs 2] [--steps N]

Without --steps every run is the default one (at most 3000 steps, early stopping on validation NLL),
which is what a user waits for; --steps N trains exactly N steps (early stopping off) to compare steps.

Writes reports/bench_counts.md and reports/bench_counts.json. The goal (issue: what a newcomer meets):
the negative binomial run takes at most 3x the Gaussian's time on the same data.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADS = {"gaussian": ["head=gaussian"], "negbin": ["head=negbin"], "poisson (loss=glm)": ["loss=glm"]}


def one_run(overrides: list[str], steps: int | None = None) -> dict[str, float]:
    """Wall seconds of one whole run, its training step time (ms), steps trained and test NLL."""
    fixed = [f"loop.max_steps={steps}", "loop.early_stopping_patience=null"] if steps else []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "densbench", "dataset=doctorvisits", *overrides, *fixed,
                        "logger=none", "figures=false", f"hydra.run.dir={tmp}/run"], check=True, cwd=tmp,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        result = json.loads((Path(tmp) / "run" / "result.json").read_text())
    return {"wall_s": wall, "step_time_ms": result["metrics"]["step_time_ms"], "steps": result["train"]["opt_steps"],
            "nll": result["metrics"]["nll"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=2, help="rounds of all heads, in alternating order")
    ap.add_argument("--steps", type=int, default=None, help="exactly this many steps per run (default: the default run)")
    args = ap.parse_args(argv)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in HEADS}
    for r in range(args.pairs):
        for name in (list(HEADS) if r % 2 == 0 else list(reversed(HEADS))):
            runs[name].append(one_run(HEADS[name], args.steps))
    med = {name: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for name, rs in runs.items()}
    base = med["gaussian"]
    out = {"command": "python scripts/bench_counts.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": platform.platform(), "steps": args.steps, "pairs": args.pairs, "runs": runs, "median": med,
           "ratio_wall": {n: m["wall_s"] / base["wall_s"] for n, m in med.items()},
           "ratio_step": {n: m["step_time_ms"] / base["step_time_ms"] for n, m in med.items()}}
    reports = ROOT / "reports"
    (reports / "bench_counts.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["# Count heads against the Gaussian head (doctorvisits)", "",
             f"`{out['command']}` on {out['machine']}: whole processes (start-up included), "
             + (f"{args.steps} optimisation steps each" if args.steps else
                "each the default run (at most 3000 steps, stopped early after 10 validations without a better "
                "validation NLL)")
             + f", median of {args.pairs} alternating rounds; ratios are to `head=gaussian` on the same data in the "
             "same rounds.", "",
             "| run | wall s | / gaussian | steps | step ms | / gaussian | test NLL |", "|---|---|---|---|---|---|---|"]
    for name, m in med.items():
        lines.append(f"| {name} | {m['wall_s']:.1f} | {out['ratio_wall'][name]:.2f} | {m['steps']:.0f} | "
                     f"{m['step_time_ms']:.2f} | {out['ratio_step'][name]:.2f} | {m['nll']:.3f} |")
    goal = out["ratio_wall"]["negbin"] <= 3
    lines += ["", f"Goal: `head=negbin` within 3x the Gaussian's time: {'met' if goal else 'not met'} "
              f"({out['ratio_wall']['negbin']:.2f}x the whole run, {out['ratio_step']['negbin']:.2f}x per step).", ""]
    (reports / "bench_counts.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
