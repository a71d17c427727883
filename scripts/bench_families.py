"""The new families against the ones already there, on real data of their support, with the same budget.

Each comparison is one stacked multirun per dataset: every head on the same five random splits
(`dataset.seed=0..4`, the replicates train together), the default loop (at most 3000 steps, early
stopping on validation NLL) and the default optimiser; test NLL and CRPS are averaged over the splits.

- positive targets: ames (sale price) with gaussian, lognormal, gamma, weibull;
- unit interval: readingskills (accuracy) and gasolineyield (yield) with gaussian and beta;
- counts with excess zeros: biochemists (articles) with negbin, zip, zinb and the Poisson GLM.

    python scripts/bench_families.py [--seeds 5] [--steps N]

Writes reports/bench_families.md and reports/bench_families.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from densbench.report.leaderboard import mean_se
from densbench.results import scan_results

ROOT = Path(__file__).resolve().parents[1]
COMPARISONS = {
    "ames": ["head=gaussian", "head=lognormal", "head=gamma", "head=weibull"],
    "readingskills": ["head=gaussian", "head=beta"],
    "gasolineyield": ["head=gaussian", "head=beta"],
    "biochemists": ["head=negbin", "head=zip", "head=zinb", "loss=glm"],
}


def sweep(dataset: str, variants: list[str], seeds: int, where: Path,
          budget: tuple[str, ...] = ()) -> tuple[dict[str, dict[str, list[float]]], float]:
    """One dataset's heads on `seeds` random splits (one stacked multirun): test NLL and CRPS per head, and its
    seconds (`budget`: overrides of the loop for every run, e.g. a short one for a test)."""
    heads = ",".join(v.split("=", 1)[1] for v in variants if v.startswith("head="))
    extra = [v for v in variants if not v.startswith("head=")]
    scores: dict[str, dict[str, list[float]]] = {}
    started = time.perf_counter()
    for overrides in ([f"head={heads}"], *([e] for e in extra)):
        cmd = [sys.executable, "-m", "densbench", "-m", f"dataset={dataset}", *overrides, f"dataset.seed=range({seeds})",
               "launcher=stacked", "logger=none", "figures=false", "report.enabled=false", "resume=false", *budget,
               f"hydra.sweep.dir={where / dataset / overrides[0].replace('=', '-').replace(',', '-')}"]
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _, r in scan_results(where / dataset)[0]:
        if r.get("status") != "ok":
            continue
        lab = r["labels"]
        name = "poisson (loss=glm)" if lab.get("loss") == "glm" else lab["head"]
        for metric in ("nll", "crps"):
            scores.setdefault(name, {}).setdefault(metric, []).append(r["metrics"][metric])
    return scores, time.perf_counter() - started


def table(dataset: str, scores: dict[str, dict[str, list[float]]]) -> list[str]:
    """A dataset's rows: each head's mean ± standard error of test NLL and CRPS, the best of each in bold."""
    stats = {h: {m: mean_se(v) for m, v in s.items()} for h, s in scores.items()}
    best = {m: min(stats, key=lambda h: stats[h][m][0]) for m in ("nll", "crps")}
    lines = []
    for h, s in stats.items():
        cells = [(f"**{s[m][0]:.3f} ± {s[m][1]:.3f}**" if best[m] == h else f"{s[m][0]:.3f} ± {s[m][1]:.3f}") for m in ("nll", "crps")]
        lines.append(f"| {dataset} | {h} | {len(scores[h]['nll'])} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5, help="random splits per dataset (dataset.seed=0..N-1)")
    ap.add_argument("--steps", type=int, default=None, help="at most this many steps per run (default: the loop's 3000)")
    args = ap.parse_args(argv)
    budget = (f"loop.max_steps={args.steps}",) if args.steps else ()
    results, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for dataset, variants in COMPARISONS.items():
            results[dataset], seconds[dataset] = sweep(dataset, variants, args.seeds, Path(tmp), budget)
    out = {"command": "python scripts/bench_families.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": platform.platform(), "seeds": args.seeds, "scores": results, "seconds": seconds}
    (ROOT / "reports" / "bench_families.json").write_text(json.dumps(out, indent=1) + "\n")
    lines = ["# The new families against the ones already there", "",
             f"`{out['command']}` on {out['machine']}: each dataset's heads on the same {args.seeds} random splits "
             f"(train/validation/test 80/10/10, `dataset.seed=0..`), default loop (at most {args.steps or 3000} steps, "
             "early stopping on validation NLL) and optimiser; mean ± standard error over the splits; the best of a dataset in bold "
             "(lower is better for both).", "",
             "| dataset | head | splits | test NLL | test CRPS |", "|---|---|---|---|---|"]
    for dataset, scores in results.items():
        lines += table(dataset, scores)
    lines += ["", "Seconds per dataset (all its heads): " + ", ".join(f"{d} {s:.0f}" for d, s in seconds.items()) + ".", ""]
    (ROOT / "reports" / "bench_families.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
