"""The whole UCI regression suite in one command: nine datasets, seven methods, every published split.

    python scripts/uci_suite.py                       # -> multirun/uci_suite, report in reports/uci
    python scripts/uci_suite.py --root ~/UCI_Datasets --out reports/uci --resume

Every job runs with launcher=stacked (the splits of a dataset and method train as one stack of
models). Stage 1 trains the six single-model methods (protein has 5 splits, so it is a multirun of
its own), and the recalibrated method (gaussian_nll) once more with recalibrate=scale,isotonic,conformal
(post-hoc, fitted on the validation rows; the three jobs of a split stack with the splits); stage 2 trains, per dataset, a 5-member deep ensemble of the single-model method with the
lowest mean validation NLL in stage 1 (validation rows are carved from the training split: no test
data in the choice). The report, with the suite's wall time, is written once at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from densbench.methods import recipes
from densbench.report import write_report
from densbench.results import scan_results
from densbench.uci import FOLDERS, ROOT_VARIABLE, protocol
from densbench.uci_report import SUITE_FILE, collect, validation_best

ROOT = Path(__file__).resolve().parents[1]
SINGLE = [m for m, r in recipes().items() if r.members == 1]
def n_splits(dataset: str, root: str) -> int:
    """The number of published splits, from the layout's n_splits.txt."""
    return protocol(Path(root) / FOLDERS[dataset] / "data")["splits"]


def multirun(datasets: list[str], n: int, overrides: list[str], sweep_dir: Path, resume: bool) -> list[str]:
    """One stacked multirun over datasets (all with n splits)."""
    return [sys.executable, "-m", "densbench", "-m", "experiment=" + ",".join(f"uci_{d}" for d in datasets),
            *overrides, f"dataset.split=range({n})", "launcher=stacked", f"resume={str(resume).lower()}",
            "report.enabled=false", f"hydra.sweep.dir={sweep_dir}"]


def by_splits(datasets: list[str], root: str) -> dict[int, list[str]]:
    """The datasets grouped by their number of splits (one multirun each)."""
    groups: dict[int, list[str]] = defaultdict(list)
    for d in datasets:
        groups[n_splits(d, root)].append(d)
    return dict(groups)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=str(ROOT.parent / "shared" / "uci"), help="the standard UCI layout")
    ap.add_argument("--datasets", default=",".join(FOLDERS))
    ap.add_argument("--methods", default=",".join(SINGLE), help="single-model methods of stage 1")
    ap.add_argument("--sweep-dir", default="multirun/uci_suite")
    ap.add_argument("--out", default="reports/uci")
    ap.add_argument("--resume", action="store_true", help="reuse finished jobs (default: train everything anew)")
    ap.add_argument("--recalibrate", default="scale,isotonic,conformal", help="recalibrations of --recalibrated ('' for none)")
    ap.add_argument("--recalibrated", default="gaussian_nll", help="the single-model methods that are recalibrated")
    ap.add_argument("--extra", nargs="*", default=[], help="more overrides for every job (e.g. loop.max_epochs=2)")
    args = ap.parse_args(argv)
    datasets = args.datasets.split(",")
    unknown = [d for d in datasets if d not in FOLDERS] + [m for m in args.methods.split(",") if m not in SINGLE]
    if unknown:
        ap.error(f"unknown {', '.join(unknown)}; datasets: {', '.join(FOLDERS)}; methods: {', '.join(SINGLE)}")
    sweep_dir = Path(args.sweep_dir)
    env = {**os.environ, ROOT_VARIABLE: str(Path(args.root).resolve())}
    commands = []
    started = time.perf_counter()
    failed = 0

    def run(cmd: list[str]) -> None:
        nonlocal failed
        commands.append(" ".join(cmd[1:]))
        failed += subprocess.run(cmd, env=env).returncode != 0

    for n, group in by_splits(datasets, args.root).items():
        run(multirun(group, n, [f"method={args.methods}", *args.extra], sweep_dir, args.resume))
        if args.recalibrate and args.recalibrated:
            run(multirun(group, n, [f"method={args.recalibrated}", f"recalibrate={args.recalibrate}", *args.extra],
                         sweep_dir, args.resume))
    found = collect(scan_results(sweep_dir)[0])
    members: dict[str, list[str]] = defaultdict(list)
    for d in datasets:
        best = validation_best(found.get(d, {}))
        if best is None:
            print(f"uci_suite: no single-model run of {d} finished; no ensemble for it", file=sys.stderr)
            continue
        members[best].append(d)
    for method, ds in sorted(members.items()):
        recipe = recipes()[method]
        for n, group in by_splits(ds, args.root).items():
            run(multirun(group, n, ["method=ensemble", f"loss={recipe.loss}", f"head={recipe.head}", *args.extra],
                         sweep_dir, args.resume))
    wall = time.perf_counter() - started
    results, skipped = scan_results(sweep_dir)
    suite = {"command": "python scripts/uci_suite.py " + " ".join(argv if argv is not None else sys.argv[1:]),
             "wall_s": wall, "jobs": len(results), "multiruns": commands,
             "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
             "ensemble_members": {d: m for m, ds in members.items() for d in ds}}
    (sweep_dir / SUITE_FILE).write_text(json.dumps(suite, indent=2) + "\n")
    written = write_report(sweep_dir, args.out, title="UCI regression suite", scanned=(results, skipped))
    print(f"uci_suite: {len(results)} jobs in {wall / 60:.1f} min; report {written.path}")
    return 1 if failed or skipped else 0


if __name__ == "__main__":
    sys.exit(main())
