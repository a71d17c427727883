"""The whole UCI regression suite in one command: nine datasets, every method of conf/method, every published split.

    python scripts/uci_suite.py                        # -> multirun/uci_suite, report in multirun/uci_suite/report
    python scripts/uci_suite.py --publish              # the report into reports/uci (the committed one)
    python scripts/uci_suite.py --root ~/UCI_Datasets --resume

The suite is two multirun commands, run in this process on one pool of worker processes
(launcher=stacked, hydra.launcher.workers: one per core by default), so torch and Lightning are
imported once per worker and the stacks of a stage keep every core busy. Each stage lists its jobs
(hydra/sweeper=list: every dataset with its own number of published splits):

1. the single-model methods on every split (the splits of a dataset and method train as one stack;
   mc_dropout_het, as costly as mc_dropout again, only when --methods names it), and gaussian_nll recalibrated (recalibrate=scale,isotonic,conformal, fitted on the
   validation rows), whose jobs share the models of gaussian_nll in its stack: nothing trains twice;
2. per split, a 5-member deep ensemble of the single-model method with the lowest NLL on that split's own
   validation rows in stage 1 (carved from its training rows: no test data in the choice; the splits'
   validation rows pooled would hold other splits' test rows, so the choice is never pooled).

With --gap, gap splits (one per input, the middle third of its range tested) join for a few methods: their
single models in stage 1, their ensembles (members chosen per gap split likewise) in stage 2. With
--baselines, a third stage runs the non-network baselines (method=ngboost, catboost, gp) on every split,
the exact GP only on datasets whose training split fits its row limit (conf/method/gp.yaml).

The report, with the suite's wall time and the cost of evaluation against training, is written once at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from densbench.__main__ import sweep
from densbench.data.uci import FOLDERS, ROOT_VARIABLE, gap_split_count, protocol
from densbench.distributions import families
from densbench.launching import stack_plan
from densbench.config import config_dir
from densbench.methods import baselines, recipes
from densbench.report.leaderboard import mean_se
from densbench.report.sweep import sweep_end, write_report
from densbench.report.uci import SUITE_FILE, collect
from densbench.report.validation_choice import validation_choices
from densbench.report.uci_recalibration import pm
from densbench.results import scan_results

ROOT = Path(__file__).resolve().parents[1]
SINGLE = [m for m, r in recipes().items() if r.members == 1]
DEFAULT = [m for m in SINGLE if m != "mc_dropout_het"]


def n_splits(dataset: str, root: str) -> int:
    """The number of published splits, from the layout's n_splits.txt."""
    return protocol(Path(root) / FOLDERS[dataset] / "data")["splits"]


def jobs(datasets: dict[str, int], variants: list[list[str]]) -> list[list[str]]:
    """Every split of every dataset (name: number of splits) with each variant's overrides: hydra/sweeper=list's jobs."""
    return [[f"experiment=uci_{d}", *v, f"dataset.split={i}"] for d, n in datasets.items() for v in variants for i in range(n)]


def baseline_jobs(splits: dict[str, int], root: str, only: dict[str, list[str]] | None = None) -> list[list[str]]:
    """The --baselines stage: every baseline on every split of every dataset, the GP where its training split fits its
    limit, and a baseline named in `only` (method: datasets) on those datasets alone."""
    from omegaconf import OmegaConf

    limit = int(OmegaConf.load(Path(config_dir(), "method", "gp.yaml")).baseline.max_train_rows)

    def fits(d: str) -> bool:  # the published training split, before validation rows are carved from it
        return len((Path(root) / FOLDERS[d] / "data" / "index_train_0.txt").read_text().split()) <= limit

    def runs(m: str, d: str) -> bool:
        return (m != "gp" or fits(d)) and d in (only or {}).get(m, [d])

    return [job for d, n in splits.items() for m in baselines() if runs(m, d) for job in jobs({d: n}, [[f"method={m}"]])]


def restrictions(items: list[str]) -> dict[str, list[str]]:
    """--baseline-only's METHOD=DATASETS items as {method: [datasets]}; an unknown method or dataset is an error."""
    known, out = baselines(), {}
    for item in items:
        method, _, names = item.partition("=")
        if method not in known or not names or any(d not in FOLDERS for d in names.split(",")):
            raise SystemExit(f"uci_suite: --baseline-only {item!r}: want METHOD=DATASETS with METHOD one of "
                             f"{', '.join(known)} and datasets among {', '.join(FOLDERS)}")
        out[method] = names.split(",")
    return out


def ensemble_able(method: str) -> bool:
    """Whether a single-model method's networks can be a deep ensemble's members (check_config's rule; MC dropout's
    candidates are chosen, not mixed)."""
    recipe = recipes().get(method)
    return bool(recipe and not recipe.dropout and {"location_scale", "mixture"} & families.get(recipe.head).traits)


GAP_METHODS = "gaussian_nll,mc_dropout,evidential,ensemble"  # a point estimate's spread and three kinds of epistemic one
# not protein (9 gap splits of 45,730 rows) nor naval (two of its 16 inputs are constant: no gap to speak of)
GAP_DATASETS = "boston,concrete,energy,kin8nm,power,wine,yacht"


def ensemble_overrides(member: str, dataset: str) -> list[str]:
    """A deep ensemble of `member`'s networks: method=ensemble with that method's loss and head, trained as that
    method trains on the dataset (its own settings, conf/settings/<member>/<dataset>.yaml, where it has them)."""
    own = Path(config_dir(), "settings", member, f"{dataset}.yaml").exists()
    return ["method=ensemble", f"loss={recipes()[member].loss}", f"head={recipes()[member].head}",
            *([f"settings={member}/{dataset}"] if own else [])]


def gap_jobs(datasets: list[str], methods: list[str], root: str) -> list[list[str]]:
    """The --gap stage's single-model jobs: each method on every gap split (one per input) of each dataset (an
    ensemble among `methods` trains in stage 2, with the members its split's validation rows choose)."""
    return [[f"experiment=uci_{d}", f"method={m}", "dataset.protocol=gap", f"dataset.split={i}"]
            for d in datasets for m in methods if m != "ensemble" for i in range(gap_splits(d, root))]


def gap_splits(dataset: str, root: str) -> int:
    """A dataset's number of gap splits: one per input with a gap (a binary or bunched input has none)."""
    return gap_split_count(Path(root) / FOLDERS[dataset] / "data")


def ensemble_jobs(found: dict[str, dict[str, list[dict]]], datasets: list[str], gap: bool = False) -> tuple[list[list[str]], dict]:
    """Stage 2: per split, a 5-member deep ensemble of the single-model method with the lowest NLL on that split's own
    validation rows (no other split's rows, some of them this split's test rows); the jobs and {dataset: {split: method}}."""
    out, members = [], {}
    for d in datasets:
        choices = validation_choices({m: runs for m, runs in found.get(d, {}).items() if ensemble_able(m)})
        if not choices:
            print(f"uci_suite: no single-model {'gap ' if gap else ''}run of {d} finished; no ensemble for it", file=sys.stderr)
            continue
        members[d] = {i: m for i, (m, _) in sorted(choices.items())}
        out += [[f"experiment=uci_{d}", *ensemble_overrides(m, d), *(["dataset.protocol=gap"] if gap else []), f"dataset.split={i}"]
                for i, m in members[d].items()]
    return out, members


def suite_total(splits: dict[str, int], variants: list[list[str]]) -> int:
    """The suite's jobs in all: stage 1's, and one ensemble job per split of every dataset for stage 2."""
    return len(jobs(splits, variants)) + sum(splits.values())


def progress(total: int, offset: int, start: float) -> list[str]:
    """Overrides that make a stage's progress lines count and time the whole suite."""
    return [f"hydra.callbacks.progress.total={total}", f"hydra.callbacks.progress.offset={offset}",
            f"hydra.callbacks.progress.start={start}"]


def final_table(results: list[tuple[Path, dict]]) -> str:
    """One line per dataset: the method with the lowest mean test NLL (± se over splits), and its runs by status."""
    found = collect(results)
    statuses: dict[str, Counter] = defaultdict(Counter)
    for _, r in results:
        statuses[str((r.get("labels") or {}).get("dataset"))][r.get("status", "?")] += 1
    lines = ["uci_suite: best test NLL per dataset (mean ± se over splits); runs by status"]
    for d, by in sorted(statuses.items()):
        scores = {m: mean_se([(r.get("metrics") or {}).get("nll") for r in runs]) for m, runs in found.get(d, {}).items()}
        best = min((m for m in scores if math.isfinite(scores[m][0])), key=lambda m: scores[m][0], default=None)
        shown = f"{best:<16} {pm(*scores[best], digits=3):>15}" if best else f"{'-':<16} {'-':>15}"
        lines.append(f"  {d:<10} {shown}   " + ", ".join(f"{n} {s}" for s, n in sorted(by.items())))
    return "\n".join(lines)


def listed(name: str, job_list: list[list[str]], sweep_dir: Path, common: list[str]) -> list[str]:
    """The overrides of a multirun over the listed jobs (written beside the runs as <name>.yaml)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = sweep_dir / f"{name}.yaml"
    path.write_text(json.dumps(job_list, indent=0) + "\n")  # JSON is YAML
    return ["hydra/sweeper=list", f"hydra.sweeper.jobs_file={path}", *common]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=str(ROOT.parent / "shared" / "uci"), help="the standard UCI layout")
    ap.add_argument("--datasets", default=",".join(FOLDERS))
    ap.add_argument("--methods", default=",".join(DEFAULT), help="single-model methods of stage 1")
    ap.add_argument("--sweep-dir", default="multirun/uci_suite")
    ap.add_argument("--out", default=None, help="report folder (default: <sweep dir>/report; --publish: reports/uci)")
    ap.add_argument("--publish", action="store_true", help="write the report into reports/uci, the committed one")
    ap.add_argument("--resume", action="store_true", help="reuse finished jobs (default: train everything anew)")
    ap.add_argument("--recalibrate", default="scale,isotonic,conformal", help="recalibrations of --recalibrated ('' for none)")
    ap.add_argument("--recalibrated", default="gaussian_nll", help="the single-model methods that are recalibrated")
    ap.add_argument("--workers", default="auto", help="worker processes training stacks (default: one per core)")
    ap.add_argument("--extra", nargs="*", default=[], help="more overrides for every job (e.g. loop.max_epochs=2)")
    ap.add_argument("--baselines", action="store_true", help="a third stage: the non-network baselines (ngboost, catboost, gp)")
    ap.add_argument("--baseline-datasets", default=",".join(FOLDERS), help="the datasets of the --baselines stage")
    ap.add_argument("--baseline-only", nargs="*", default=[], metavar="METHOD=DATASETS",
                    help="run that baseline on these datasets only (e.g. ngboost=boston,yacht: its cost grows with the rows)")
    ap.add_argument("--gap", action="store_true", help="a further stage: gap splits (Foong et al. 2019) for --gap-methods")
    ap.add_argument("--gap-methods", default=GAP_METHODS)
    ap.add_argument("--gap-datasets", default=GAP_DATASETS)
    args = ap.parse_args(argv)
    datasets = args.datasets.split(",")
    unknown = [d for d in datasets if d not in FOLDERS] + [m for m in args.methods.split(",") if m not in SINGLE]
    if unknown:
        ap.error(f"unknown {', '.join(unknown)}; datasets: {', '.join(FOLDERS)}; methods: {', '.join(SINGLE)}")
    sweep_dir = Path(args.sweep_dir)
    out = args.out or (str(ROOT / "reports" / "uci") if args.publish else str(sweep_dir / "report"))
    common = ["launcher=stacked", f"hydra.launcher.workers={args.workers}", f"resume={str(args.resume).lower()}",
              "report.enabled=false", f"hydra.sweep.dir={sweep_dir}", *args.extra]
    commands: list[str] = []
    stages: list[dict] = []  # each stage's wall time, so the report can say what the networks alone cost
    started, epoch = time.perf_counter(), time.time()
    failed = 0

    def run(name: str, job_list: list[list[str]], overrides: list[str], networks: bool = True) -> None:
        nonlocal failed
        commands.append("-m " + " ".join(overrides))
        begun = time.perf_counter()
        failed += sweep(overrides) != 0
        stages.append({"stage": name, "jobs": len(job_list), "wall_s": time.perf_counter() - begun, "networks": networks})

    splits = {d: n_splits(d, args.root) for d in datasets}
    variants = [[f"method={m}"] for m in args.methods.split(",")]
    if args.recalibrate and args.recalibrated:
        variants += [[f"method={m}", f"recalibrate={r}"] for m in args.recalibrated.split(",") for r in args.recalibrate.split(",")]
    chosen = {d: n for d, n in splits.items() if d in args.baseline_datasets.split(",")}
    only = restrictions(args.baseline_only)
    if only and not args.baselines:
        ap.error("--baseline-only restricts the baselines stage: add --baselines")
    dropped = sorted({d for names in only.values() for d in names} - set(chosen))
    if dropped:
        ap.error(f"--baseline-only names {', '.join(dropped)}, not among --baseline-datasets ({', '.join(chosen)})")
    os.environ[ROOT_VARIABLE] = str(Path(args.root).resolve())  # the workers read the layout from here (once args are checked)
    extra_stage = baseline_jobs(chosen, args.root, only) if args.baselines else []
    gap_datasets = [d for d in args.gap_datasets.split(",") if d in datasets] if args.gap else []
    gap_methods = args.gap_methods.split(",")
    gap_singles = gap_jobs(gap_datasets, gap_methods, args.root)
    gap_ensembles = sum(gap_splits(d, args.root) for d in gap_datasets) if "ensemble" in gap_methods else 0
    total = suite_total(splits, variants) + len(gap_singles) + gap_ensembles + len(extra_stage)  # one count and ETA
    stage1 = jobs(splits, variants) + gap_singles  # the gap splits' single models need nothing of the published ones
    run("single models", stage1, listed("stage1", stage1, sweep_dir, common + progress(total, 0, epoch)))
    results = scan_results(sweep_dir)[0]
    ensembles, members = ensemble_jobs(collect(results), datasets)
    if gap_ensembles:
        more, gap_members = ensemble_jobs(collect(results, protocol="gap"), gap_datasets, gap=True)
        ensembles += more
        members.update({f"{d} (gap)": chosen for d, chosen in gap_members.items()})
    if ensembles:
        run("deep ensembles", ensembles, listed("stage2", ensembles, sweep_dir, common + progress(total, len(stage1), epoch)))
    if extra_stage:
        run("non-network baselines", extra_stage,
            listed("baselines", extra_stage, sweep_dir, common + progress(total, len(stage1) + len(ensembles), epoch)), networks=False)
    stack_plan.shutdown()  # the workers' job is done; the report draws its figures on every core
    wall = time.perf_counter() - started
    results, skipped = scan_results(sweep_dir)
    suite = {"command": "python scripts/uci_suite.py " + " ".join(argv if argv is not None else sys.argv[1:]),
             "wall_s": wall, "jobs": len(results), "stages": stages, "multiruns": commands, "workers": args.workers,
             "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
             "ensemble_members": members}
    (sweep_dir / SUITE_FILE).write_text(json.dumps(suite, indent=2) + "\n")
    written = write_report(sweep_dir, out, title="UCI regression suite", scanned=(results, skipped))
    sweep_end(sweep_dir, results)  # TensorBoard's HParams table over the whole suite
    print(final_table(results))
    print(f"uci_suite: {len(results)} jobs in {wall / 60:.1f} min; report {written.path}")
    return 1 if failed or skipped else 0


if __name__ == "__main__":
    sys.exit(main())
