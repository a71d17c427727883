"""Regenerate every committed report from scratch with the code checked out now: one command.

    python scripts/regenerate.py                   # everything, in order; reports/regenerate.{md,json}
    python scripts/regenerate.py --only suite,headline

In order (a step's outputs can be the next one's inputs):

1. ``search``: scripts/uci_search.py --write, the optimiser settings chosen on validation data and
   written into conf/experiment/uci_<dataset>.yaml (reports/uci_search.*);
2. ``suite``: scripts/uci_suite.py --publish --gap --baselines, the whole UCI suite with its gap splits and the
   non-network baselines (NGBoost on the five smallest datasets), and its report (reports/uci);
3. ``tables``: the suite's LaTeX tables from its runs, ``python -m densbench.report multirun/uci_suite --format latex``
   (reports/uci/leaderboard.tex, uci_leaderboard.tex);
4. ``headline``: the README's sweep, ``python -m densbench -m loss=kl,nll,mdn`` (reports/loss=kl,nll,mdn);
5. the benchmarks: bench_stacked, bench_eval, bench_grads, bench_overhead, bench_numerics, bench_counts, bench_families
   (reports/bench_*).

Every step runs with resume=false (nothing reused from an earlier run) in a fresh process; what ran,
how long each step took, its exit status and the source hash of the code are written to
reports/regenerate.md and reports/regenerate.json, which the README's figures quote. A step that
fails does not stop the others; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from densbench.provenance import code_revision

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
STEPS = {
    "search": [PY, "scripts/uci_search.py", "--write"],
    # with the gap splits and the baselines: CatBoost on all nine datasets, the GP where its row limit allows
    # (boston, concrete, energy, yacht), NGBoost on the five smallest: at its paper's settings (2000 trees) it
    # takes about 66 s a split of kin8nm's 7.4k training rows on this machine, so the four large datasets would
    # cost it over an hour; run them by hand (drop --baseline-only)
    "suite": [PY, "scripts/uci_suite.py", "--publish", "--gap", "--baselines", "--baseline-only",
              "ngboost=boston,concrete,energy,wine,yacht"],
    # from the runs the suite step just wrote (the suite's --publish writes the Markdown report only)
    "tables": [PY, "-m", "densbench.report", "multirun/uci_suite", "--format", "latex", "--out", "reports/uci"],
    # quoted: an override's value may not hold an unquoted '='
    "headline": [PY, "-m", "densbench", "-m", "loss=kl,nll,mdn", "resume=false", "report.dir='reports/loss=kl,nll,mdn'",
                 "hydra.sweep.dir='multirun/loss=kl,nll,mdn'"],
    # the benchmarks with fewer repeats and shorter workloads than their defaults, so that the whole
    # regeneration fits in minutes; each report says what it ran
    "bench_stacked": [PY, "scripts/bench_stacked.py", "--rounds", "1", "--pairs", "1"],
    "bench_eval": [PY, "scripts/bench_eval.py", "--threads", "--thread-steps", "60", "--thread-rounds", "1"],  # the README's thread figures
    "bench_grads": [PY, "scripts/bench_grads.py", "--repeats", "2", "--sizes", "100000"],  # where its goal is judged
    # the parallel launcher's sweeps (part 3) only by hand: python scripts/bench_overhead.py --sweeps seeds,losses,long
    "bench_overhead": [PY, "scripts/bench_overhead.py", "--repeats", "2", "--sweep-repeats", "1", "--steps-fraction", "0.2",
                       "--sweeps", "none"],
    "bench_numerics": [PY, "scripts/bench_numerics.py", "--pairs", "1"],
    "bench_counts": [PY, "scripts/bench_counts.py", "--pairs", "1"],  # the default runs, as a user waits for them
    "bench_families": [PY, "scripts/bench_families.py", "--seeds", "3", "--steps", "1500"],
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=",".join(STEPS), help=f"steps to run, in this order: {', '.join(STEPS)}")
    ap.add_argument("--root", default=str(ROOT.parent / "shared" / "uci"), help="the standard UCI layout")
    args = ap.parse_args(argv)
    chosen = args.only.split(",")
    unknown = [s for s in chosen if s not in STEPS]
    if unknown:
        ap.error(f"unknown steps {', '.join(unknown)}; steps: {', '.join(STEPS)}")
    env = {**os.environ, "DENSBENCH_UCI_ROOT": str(Path(args.root).resolve())}
    steps, failed = [], 0
    for name in (s for s in STEPS if s in chosen):
        cmd = STEPS[name]
        print(f"regenerate: {name}: {' '.join(cmd[1:])}", flush=True)
        t = time.perf_counter()
        code = subprocess.run(cmd, cwd=ROOT, env=env).returncode
        steps.append({"step": name, "command": " ".join(["python", *cmd[1:]]), "wall_s": time.perf_counter() - t, "exit": code,
                      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
        failed += code != 0
        print(f"regenerate: {name} took {steps[-1]['wall_s'] / 60:.1f} min (exit {code})", flush=True)
    out = ROOT / "reports" / "regenerate"
    command = "python scripts/regenerate.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if set(chosen) != set(STEPS) and out.with_suffix(".json").exists():
        # a rerun of some steps replaces theirs in the record and keeps the others' (each with its date)
        before = json.loads(out.with_suffix(".json").read_text())
        earlier = [s for s in before["steps"] if s["step"] not in chosen and s["step"] in STEPS]
        steps = sorted(earlier + steps, key=lambda s: list(STEPS).index(s["step"]))
        command = f"{before['command'].split(';')[0].strip()}; then {command.strip()}"
    total = sum(s["wall_s"] for s in steps)
    record = {"command": command.strip(),
              "wall_s": total, "steps": steps, "source_hash": code_revision()["source_hash"],
              "git_commit": code_revision().get("git_commit"),
              "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    lines = ["# Regenerating every committed report", "",
             f"`{record['command']}` on {record['machine']}, {record['date']}; code {record['source_hash']} "
             f"(every report below was written by this code, from scratch).", "",
             "| step | command | wall | exit | finished |", "|---|---|---|---|---|"]
    lines += [f"| {s['step']} | `{s['command']}` | {s['wall_s'] / 60:.1f} min | {s['exit']} | {s.get('date', record['date'])} |"
              for s in steps]
    lines += ["", f"Total: **{total / 60:.1f} min** (goal: at most 15 min)."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"regenerate: {len(steps)} steps in {total / 60:.1f} min; {out.with_suffix('.md')}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
