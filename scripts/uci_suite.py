"""The whole UCI regression suite in one command: nine datasets, seven methods, every published split.

    python scripts/uci_suite.py                        # -> multirun/uci_suite, report in multirun/uci_suite/report
    python scripts/uci_suite.py --publish              # the report into reports/uci (the committed one)
    python scripts/uci_suite.py --root ~/UCI_Datasets --resume

Every stage is a multirun with launcher=stacked, run in this process one after the other on one pool
of worker processes (hydra.launcher.workers, default: one per core), so torch and Lightning are
imported once per worker for the whole suite and the stacks of every stage keep all cores busy.
Stage 1 trains the six single-model methods (the splits of a dataset and method as one stack;
protein has 5 splits, so its datasets form a multirun of their own). Stage 2 recalibrates
gaussian_nll (recalibrate=scale,isotonic,conformal, fitted on the validation rows) on the weights
stage 1 trained, which it finds beside them: nothing is trained twice. Stage 3 trains, per dataset,
a 5-member deep ensemble of the single-model method with the lowest mean validation NLL in stage 1
(validation rows are carved from the training split: no test data in the choice). The report, with
the suite's wall time and the cost of evaluation against training, is written once at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

from densbench.__main__ import sweep
from densbench.methods import recipes
from densbench.report import sweep_end, write_report
from densbench.results import scan_results
from densbench.uci import FOLDERS, ROOT_VARIABLE, protocol
from densbench.uci_report import SUITE_FILE, collect, validation_best

ROOT = Path(__file__).resolve().parents[1]
SINGLE = [m for m, r in recipes().items() if r.members == 1]


def n_splits(dataset: str, root: str) -> int:
    """The number of published splits, from the layout's n_splits.txt."""
    return protocol(Path(root) / FOLDERS[dataset] / "data")["splits"]


def multirun(datasets: list[str], n: int, overrides: list[str], common: list[str]) -> list[str]:
    """The overrides of one stacked multirun over datasets (all with n splits)."""
    return ["experiment=" + ",".join(f"uci_{d}" for d in datasets), *overrides, f"dataset.split=range({n})", *common]


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
    ap.add_argument("--out", default=None, help="report folder (default: <sweep dir>/report; --publish: reports/uci)")
    ap.add_argument("--publish", action="store_true", help="write the report into reports/uci, the committed one")
    ap.add_argument("--resume", action="store_true", help="reuse finished jobs (default: train everything anew)")
    ap.add_argument("--recalibrate", default="scale,isotonic,conformal", help="recalibrations of --recalibrated ('' for none)")
    ap.add_argument("--recalibrated", default="gaussian_nll", help="the single-model methods that are recalibrated")
    ap.add_argument("--workers", default="auto", help="worker processes training stacks (default: one per core)")
    ap.add_argument("--extra", nargs="*", default=[], help="more overrides for every job (e.g. loop.max_epochs=2)")
    args = ap.parse_args(argv)
    datasets = args.datasets.split(",")
    unknown = [d for d in datasets if d not in FOLDERS] + [m for m in args.methods.split(",") if m not in SINGLE]
    if unknown:
        ap.error(f"unknown {', '.join(unknown)}; datasets: {', '.join(FOLDERS)}; methods: {', '.join(SINGLE)}")
    sweep_dir = Path(args.sweep_dir)
    out = args.out or (str(ROOT / "reports" / "uci") if args.publish else str(sweep_dir / "report"))
    os.environ[ROOT_VARIABLE] = str(Path(args.root).resolve())  # the workers read the layout from here
    common = ["launcher=stacked", f"hydra.launcher.workers={args.workers}", f"resume={str(args.resume).lower()}",
              "report.enabled=false", f"hydra.sweep.dir={sweep_dir}", *args.extra]
    commands: list[str] = []
    started = time.perf_counter()
    failed = 0

    def run(overrides: list[str]) -> None:
        nonlocal failed
        commands.append("-m " + " ".join(overrides))
        failed += sweep(overrides) != 0

    groups = by_splits(datasets, args.root)
    for n, group in groups.items():
        run(multirun(group, n, [f"method={args.methods}"], common))
    if args.recalibrate and args.recalibrated:
        for n, group in groups.items():
            run(multirun(group, n, [f"method={args.recalibrated}", f"recalibrate={args.recalibrate}"], common))
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
            run(multirun(group, n, ["method=ensemble", f"loss={recipe.loss}", f"head={recipe.head}"], common))
    wall = time.perf_counter() - started
    results, skipped = scan_results(sweep_dir)
    suite = {"command": "python scripts/uci_suite.py " + " ".join(argv if argv is not None else sys.argv[1:]),
             "wall_s": wall, "jobs": len(results), "multiruns": commands, "workers": args.workers,
             "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
             "ensemble_members": {d: m for m, ds in members.items() for d in ds}}
    (sweep_dir / SUITE_FILE).write_text(json.dumps(suite, indent=2) + "\n")
    written = write_report(sweep_dir, out, title="UCI regression suite", scanned=(results, skipped))
    sweep_end(sweep_dir, results)  # TensorBoard's HParams table over the whole suite
    print(f"uci_suite: {len(results)} jobs in {wall / 60:.1f} min; report {written.path}")
    return 1 if failed or skipped else 0


if __name__ == "__main__":
    sys.exit(main())
