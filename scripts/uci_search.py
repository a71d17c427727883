"""Choose the UCI suite's optimiser settings and epoch budget on validation data carved from the training splits only.

For every dataset of the UCI suite this trains the suite's base method (mean-variance Gaussian NLL)
on a grid of learning rates, batch sizes and epoch budgets, on the first splits, in tuning mode
(`dataset.tuning=true`): the published split's test rows are never read; a stand-in test set is
carved from the training rows (as large as the validation set), the validation set that chooses the
best epoch within the budget from the rest. A setting is scored by its mean stand-in NLL
over the splits; the best one per dataset is shared by every method on that dataset (the experiment
configs hold it) unless the method has settings of its own (--method, below). With --method, the same search tunes another method on its own: the
chosen settings go to conf/settings/<method>/<dataset>.yaml, which that method then trains with in place
of the shared ones (its record: reports/uci_search_<method>.md).

The budgets are the protocol's epochs (n_epochs.txt) times each of --epoch-factors, on the datasets
of --long-datasets (the small ones, where ten times the protocol costs about what the protocol costs
on kin8nm); the others keep the protocol's epochs.

    python scripts/uci_search.py                 # the search; reports/uci_search.{md,json}
    python scripts/uci_search.py --write         # ... and write the chosen settings into conf/experiment
    python scripts/uci_search.py --datasets yacht,boston --splits 0 --lrs 0.01 --batches 32  # a slice
    python scripts/uci_search.py --method student_t --write   # student_t's own settings (conf/settings)
    python scripts/uci_search.py --method student_t --around-shared --write   # ... near the shared ones only

With --method M --around-shared, M's search is local: per dataset, the settings every method shares (the
base method's choice) and the learning rates next to theirs in --lrs (one step down and one up, where --lrs
has them), at their batch size and epochs, writing the learning rate alone (batch and epochs follow the
shared settings, whatever a later base search chooses), so M trains with its own learning rate, never a
worse one on the stand-in data than the shared setting. A search that would overwrite settings no search
wrote (MC dropout's published budget) is refused before it runs.

The protocol's width is not searched (n_hidden.txt); weight decay stays at the protocol's 1e-3.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from densbench.methods import recipes
from densbench.report.leaderboard import mean_se
from densbench.results import read_result
from densbench.data.uci import FOLDERS, ROOT_VARIABLE, protocol

ROOT = Path(__file__).resolve().parents[1]
DATASETS = list(FOLDERS)
MARK = "# chosen by scripts/uci_search.py"
BASE = "gaussian_nll"  # the method whose settings every method shares (conf/experiment)
LONG = "boston,concrete,energy,wine,yacht"  # at most 1,600 rows each
EPOCH_FACTORS = (1, 10)
Setting = tuple[float, int, int]  # learning rate, batch size, epoch budget


def sweep_command(grids: dict[str, list[Setting]], splits: list[int], sweep_dir: Path, method: str = BASE) -> list[str]:
    """The one multirun that trains every grid point of every dataset (stacked over splits).

    The grid points are listed (hydra/sweeper=list, written beside the runs as grid.json), so the
    stacked launcher composes them while its workers train the ones already composed."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    grid = [[f"experiment=uci_{d}", f"optimizer.lr={lr}", f"loop.batch_size={b}", f"loop.max_epochs={e}"]
            for d, points in grids.items() for lr, b, e in points]
    (sweep_dir / "grid.json").write_text(json.dumps(grid, indent=0) + "\n")
    return [sys.executable, "-m", "densbench", "-m", "hydra/sweeper=list", f"hydra.sweeper.jobs_file={sweep_dir / 'grid.json'}",
            f"method={method}",
            "++dataset.tuning=true",  # ++: the master config, before a listed experiment picks the dataset, lacks the key
            # several splits are a sweep (stacked); one is an override of the master config, so ++ as above
            ("dataset.split=" if len(splits) > 1 else "++dataset.split=") + ",".join(map(str, splits)),
            "launcher=stacked", "hydra.launcher.workers=auto", "resume=false", "report.enabled=false", "logger=none",
            f"hydra.sweep.dir={sweep_dir}"]


def grid_of(datasets: list[str], lrs: list[float], batches: list[int], factors: list[int], long: set[str],
            root: Path) -> dict[str, list[Setting]]:
    """Every dataset's grid: lr x batch x epoch budget (the protocol's epochs times each factor on the long datasets)."""
    grids = {}
    for d in datasets:
        epochs = protocol(root / FOLDERS[d] / "data")["epochs"]
        budgets = sorted({epochs * f for f in factors}) if d in long else [epochs]
        grids[d] = [(lr, b, e) for lr in lrs for b in batches for e in budgets]
    return grids


def shared_setting(dataset: str, conf: Path = ROOT / "conf" / "experiment") -> Setting:
    """The settings every method shares on a dataset: the base method's choice in experiment/uci_<dataset>.yaml."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(conf / f"uci_{dataset}.yaml")
    return float(cfg.optimizer.lr), int(cfg.loop.batch_size), int(cfg.loop.max_epochs)


def around(setting: Setting, lrs: list[float]) -> list[Setting]:
    """The shared setting and, at its batch size and epoch budget, the learning rates next to its own in lrs."""
    lr, batch, epochs = setting
    ladder = sorted(set(lrs) | {lr})
    i = ladder.index(lr)
    return [(x, batch, epochs) for x in ladder[max(0, i - 1):i + 2]]


def scores(sweep_dir: Path, grids: dict[str, list[Setting]] | None = None,
           splits: list[int] | None = None) -> dict[str, dict[Setting, list[float]]]:
    """Stand-in test NLL (NLL@h where the targets have a resolution) per dataset and setting, one value per split;
    with grids and splits, only the runs of this search (a sweep folder may hold an earlier grid's runs)."""
    out: dict[str, dict[Setting, list[float]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(sweep_dir.glob("*/result.json")):
        res = read_result(path.parent)
        cfg = res["config"]
        if not cfg["dataset"].get("tuning"):
            raise SystemExit(f"{path}: not a tuning run; refusing to score it")
        metrics = res.get("metrics") or {}
        # at the targets' resolution where they have one, as every validation choice is (metrics.validation_nll)
        nll = (metrics.get("nll_binned") if metrics.get("nll_binned") is not None else metrics.get("nll")) \
            if res.get("status") == "ok" else None
        setting = (float(cfg["optimizer"]["lr"]), int(cfg["loop"]["batch_size"]), int(cfg["loop"]["max_epochs"]))
        if (grids is not None and setting not in grids.get(cfg["dataset"]["name"], [])) or \
                (splits is not None and int(cfg["dataset"]["split"]) not in splits):
            continue
        out[cfg["dataset"]["name"]][setting].append(
            nll if nll is not None and math.isfinite(nll) else math.inf)
    return out


def choose(grid: dict[Setting, list[float]]) -> Setting:
    """The setting with the lowest mean stand-in NLL (a diverged split counts as infinite; a tie goes to the fewer epochs)."""
    return min(grid, key=lambda k: (sum(grid[k]) / len(grid[k]), k[2], k))


def write_choice(dataset: str, setting: Setting, conf: Path = ROOT / "conf" / "experiment") -> Path:
    """Put the chosen settings into experiment/uci_<dataset>.yaml (the values on its marked lines)."""
    path = conf / f"uci_{dataset}.yaml"
    text = path.read_text()
    for key, value in zip(("lr", "batch_size", "max_epochs"), setting):
        text, n = re.subn(rf"^(  {key}: )\S+(\s+{re.escape(MARK)})$", rf"\g<1>{value}\g<2>", text, flags=re.M)
        if n != 1:
            raise SystemExit(f"{path}: expected one line '  {key}: ...  {MARK}', found {n}")
    path.write_text(text)
    return path


def write_settings(method: str, dataset: str, setting: Setting, record: str, conf: Path = ROOT / "conf" / "settings",
                   lr_only: bool = False) -> Path:
    """Write one method's chosen settings on one dataset to settings/<method>/<dataset>.yaml (Hydra's settings group);
    lr_only (a search around the shared settings): the learning rate alone, so batch and epochs follow the shared ones."""
    lr, batch, epochs = setting
    path = conf / method / f"{dataset}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    budget = "" if lr_only else f"loop:\n  batch_size: {batch}\n  max_epochs: {epochs}\n"
    how = " --around-shared" if lr_only else ""
    path.write_text(f"# @package _global_\n# {method} on {dataset}: {MARK[2:]} --method {method}{how} ({record}); the rest\n"
                    f"# of its training is the dataset's (conf/experiment/uci_{dataset}.yaml)\n"
                    f"optimizer:\n  lr: {lr}\n{budget}")
    return path


def own_settings(method: str, conf: Path = ROOT / "conf" / "settings") -> list[Path]:
    """A method's settings files that no search wrote (MC dropout's published budget): a search must not replace them."""
    return [p for p in sorted((conf / method).glob("*.yaml")) if MARK[2:] not in p.read_text()]


def report(found: dict, chosen: dict, splits: list[int], seconds: float, command: list[str],
           factors: list[int], long: set[str], method: str = BASE, around_shared: bool = False) -> str:
    """The search as Markdown: every grid point's stand-in NLL per dataset, the chosen one in bold."""
    longer = " or ".join(f"{f} times" for f in factors if f != 1)
    if around_shared:
        budgets = (f"the one every method shares on the dataset; the grid: those shared settings, {BASE}'s choice in "
                   "conf/experiment/uci_<dataset>.yaml, and the learning rates next to theirs, at their batch size and epochs")
    elif longer and long:
        budgets = f"the protocol's epochs, or {longer} them on {', '.join(sorted(long))}"
    else:
        budgets = "the protocol's epochs"
    tuned = "Base method: mean-variance Gaussian NLL" if method == BASE else f"Method: {method}"
    lines = ["# UCI optimiser search" + ("" if method == BASE else f": {method}"), "",
             f"{tuned}, the UCI protocol's width. Every run is in "
             "tuning mode (`dataset.tuning=true`): the published test rows of a split are never read; 10% of the "
             "training rows stand in as a test set and 10% of the rest choose the epoch within the budget "
             f"({budgets}). Score: mean stand-in "
             f"NLL, at the targets' resolution where they have one (NLL@h), over splits {', '.join(map(str, splits))} (± standard error); lowest wins, and "
             + ("the suite uses it for every method on that dataset (conf/experiment/uci_<dataset>.yaml)." if method == BASE
                else f"{method} trains with it on that dataset (conf/settings/{method}/<dataset>.yaml).")
             + " The rows held out from these splits are test rows of other published splits, so settings shared by "
             "all 20 splits are not blind to every split's test rows (per-split choices are: the epoch, MC dropout's "
             "rate and τ, the ensemble's members).", "",
             f"Command ({seconds:.0f} s wall): `{' '.join(command[1:])}`", ""]
    for ds in sorted(found):
        lines += [f"## {ds}", "", "| lr | batch | epochs | stand-in NLL |", "|---|---|---|---|"]
        for (lr, batch, epochs), vals in sorted(found[ds].items()):
            m, se = mean_se(vals) if all(map(math.isfinite, vals)) else (sum(vals) / len(vals), None)  # a diverged one shows
            se = float("nan") if se is None else se
            cell = f"{m:.4f} ± {se:.4f}"
            if (lr, batch, epochs) == chosen[ds]:
                cell = f"**{cell}**"
            lines.append(f"| {lr:g} | {batch} | {epochs} | {cell} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--splits", default="0,1,2")
    ap.add_argument("--lrs", default="0.001,0.003,0.01,0.03")
    ap.add_argument("--batches", default="32,128")
    ap.add_argument("--epoch-factors", default=",".join(map(str, EPOCH_FACTORS)), help="epoch budgets tried on the long datasets, in protocol epochs")
    ap.add_argument("--long-datasets", default=LONG, help="datasets whose epoch budget is searched")
    ap.add_argument("--root", default=str(ROOT.parent / "shared" / "uci"))
    ap.add_argument("--sweep-dir", default=None, help="default: multirun/uci_search, or multirun/uci_search_<method>")
    ap.add_argument("--out", default="reports")
    ap.add_argument("--method", default=BASE, help=f"the method to tune (default {BASE}, whose settings every method shares)")
    ap.add_argument("--around-shared", action="store_true",
                    help="with --method: try only the shared settings of conf/experiment (the base method's choice) and the "
                         "learning rates next to theirs in --lrs, at their batch size and epochs (a cheaper, local search)")
    ap.add_argument("--write", action="store_true", help="write the chosen settings into conf/experiment (conf/settings/<method> with --method)")
    args = ap.parse_args(argv)
    datasets = args.datasets.split(",")
    unknown = [d for d in datasets if d not in FOLDERS]
    if unknown:
        ap.error(f"unknown dataset(s) {', '.join(unknown)}; the UCI suite has {', '.join(DATASETS)}")
    methods = recipes()  # the network methods of conf/method
    if args.method not in methods:
        ap.error(f"--method {args.method!r} is not a network method of conf/method (a baseline has no optimiser to "
                 f"tune); they are {', '.join(sorted(methods))}")
    if args.around_shared and args.method == BASE:
        ap.error(f"--around-shared refines another method from {BASE}'s settings; {BASE} is searched on the whole grid")
    kept = own_settings(args.method) if args.write else []
    if kept:
        ap.error(f"{args.method} has settings no search wrote ({', '.join(p.name for p in kept)} in conf/settings/"
                 f"{args.method}); --write would replace them: move them away first")
    splits = [int(s) for s in args.splits.split(",")]
    lrs = [float(x) for x in args.lrs.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    factors = [int(f) for f in args.epoch_factors.split(",")]
    sweep_dir = Path(args.sweep_dir or ("multirun/uci_search" if args.method == BASE else f"multirun/uci_search_{args.method}"))
    long = set(args.long_datasets.split(",")) & set(datasets)
    if args.around_shared:
        grids = {d: around(shared_setting(d), lrs) for d in datasets}
    else:
        grids = grid_of(datasets, lrs, batches, factors, long, Path(args.root))
    command = sweep_command(grids, splits, sweep_dir, args.method)
    started = time.perf_counter()
    # the data folder through the environment: dataset.root cannot be set before a swept experiment picks the dataset
    proc = subprocess.run(command, env={**os.environ, ROOT_VARIABLE: args.root})
    seconds = time.perf_counter() - started
    found = scores(sweep_dir, grids, splits)
    missing = [d for d in datasets if d not in found]
    if missing:
        print(f"uci_search: no results for {', '.join(missing)} (exit status {proc.returncode})", file=sys.stderr)
        return 1
    chosen = {ds: choose(found[ds]) for ds in datasets}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "uci_search" if args.method == BASE else f"uci_search_{args.method}"
    (out / f"{stem}.md").write_text(report({d: found[d] for d in datasets}, chosen, splits, seconds, command, factors,
                                           long, args.method, args.around_shared) + "\n")
    (out / f"{stem}.json").write_text(json.dumps(
        {"method": args.method, "around_shared": args.around_shared, "splits": splits, "seconds": seconds, "command": command[1:],
         "chosen": {d: {"lr": lr, "batch_size": b, "max_epochs": e} for d, (lr, b, e) in chosen.items()},
         "scores": {d: {f"lr={lr:g},batch={b},epochs={e}": v for (lr, b, e), v in found[d].items()} for d in datasets}},
        indent=2) + "\n")
    for ds, setting in chosen.items():
        lr, batch, epochs = setting
        if not args.write:
            written = ""
        elif args.method == BASE:
            written = f" -> {write_choice(ds, setting)}"
        else:
            written = f" -> {write_settings(args.method, ds, setting, f'reports/{stem}.md', lr_only=args.around_shared)}"
        print(f"uci_search: {args.method} on {ds}: lr {lr:g}, batch {batch}, epochs {epochs}{written}")
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
