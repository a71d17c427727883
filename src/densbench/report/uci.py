"""The UCI section of a report: densbench's methods beside the published figures, paired per split.

Published figures are REFERENCE.md section 2, each source tagged with its protocol; the paired
comparison reads the per-split test log-likelihoods of the 4000-epoch MC-dropout runs that ship with
the standard layout (<dataset>/results/test_ll_100_xepochs_1_hidden_layers.txt).
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from densbench.methods import baselines, method_of, single_method
from densbench.metric_catalog import columns
from densbench.report.leaderboard import Cell, Leaderboard, best_of, mean_se, to_markdown
from densbench.data.uci import FOLDERS, ROOT_VARIABLE
from densbench.report.published import NLL, RMSE, SOURCES, published
from densbench.report.uci_recalibration import RECALIBRATIONS, pm, recalibration_section
from densbench.report.validation_choice import chosen_counts, tally, tally_text, validation_choices


DATASETS = tuple(FOLDERS)


SUITE_FILE = "suite.json"  # written into the sweep directory by scripts/uci_suite.py: its command and wall time


MCD_4000 = "test_ll_100_xepochs_1_hidden_layers.txt"


METRICS = columns("nll", "nll_binned", "rmse", "crps", "mace")


def collect(results: list[tuple[Path, dict]], recalibrate: str = "none", protocol: str = "uci") -> dict[str, dict[str, list[dict]]]:
    """Ok runs of the nine datasets under a protocol (uci: the published splits; gap: one split per input) with this
    recalibration, by dataset and method (tuning runs left out)."""
    out: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for _, r in results:
        cfg, lab = r.get("config") or {}, r.get("labels") or {}
        d = cfg.get("dataset") or {}
        if r.get("status") != "ok" or lab.get("dataset") not in FOLDERS or d.get("protocol") != protocol or d.get("tuning"):
            continue
        if cfg.get("recalibrate", "none") != recalibrate:
            continue
        method = method_of(cfg, lab)
        if method is None:
            method = f"{lab.get('loss')}/{lab.get('head')}"
        out[lab["dataset"]][method].append(r)
    return out


def _results_folder(dataset: str, runs: list[dict]) -> Path | None:
    """The dataset's results/ folder in the standard layout the runs read (or DENSBENCH_UCI_ROOT)."""
    for r in runs:
        source = (r.get("provenance") or {}).get("data_source")
        if isinstance(source, list) and source and Path(source[0]).name == "data.txt":
            return Path(source[0]).parent.parent / "results"
    root = os.environ.get(ROOT_VARIABLE)
    return Path(root) / FOLDERS[dataset] / "results" if root else None


def mcd_4000(dataset: str, runs: list[dict]) -> np.ndarray | None:
    """Per-split test NLL of the 4000-epoch MC-dropout runs, or None where the file is not at hand."""
    folder = _results_folder(dataset, runs)
    path = folder / MCD_4000 if folder else None
    if path is None or not path.is_file():
        return None
    return -np.atleast_1d(np.loadtxt(path, dtype=np.float64))


def paired(runs: list[dict], reference: np.ndarray, key: str = "nll") -> dict[str, Any] | None:
    """densbench NLL (or another metric) minus the reference, split by split: mean ± se, splits won, splits paired."""
    by_split = {int(r["labels"]["split"]): r["metrics"].get(key) for r in runs if r["labels"].get("split") is not None}
    common = sorted(s for s in by_split if s < len(reference) and by_split[s] is not None and np.isfinite(reference[s]))
    if len(common) < 2:
        return None
    diff = np.array([by_split[s] - reference[s] for s in common])
    return {"mean": float(diff.mean()), "se": float(diff.std(ddof=1) / math.sqrt(len(diff))),
            "won": int((diff < 0).sum()), "splits": len(common)}


ATOM_SHARE = 0.5  # a target is treated as discrete when at least this share of rows sits on values seen >= 10 times


def target_atoms(runs: list[dict]) -> dict[str, float] | None:
    """Rows, distinct target values and the share of rows on a value that occurs at least 10 times,
    from the data file the runs read (None when they did not read the standard layout)."""
    for r in runs:
        source = (r.get("provenance") or {}).get("data_source")
        if isinstance(source, list) and source and Path(source[0]).name == "data.txt":
            folder = Path(source[0]).parent
            try:
                column = int(np.loadtxt(folder / "index_target.txt", dtype=np.float64).reshape(-1)[0])
                y = np.loadtxt(folder / "data.txt", dtype=np.float64, ndmin=2)[:, column]
            except (OSError, ValueError):
                return None
            _, counts = np.unique(y, return_counts=True)
            return {"rows": len(y), "distinct": len(counts), "on_atoms": float(counts[counts >= 10].sum() / len(y))}
    return None


def without_spikes(methods: dict[str, list[dict]], discrete: bool) -> dict[str, list[dict]]:
    """A dataset's methods, less those with a mixture head on any split where its targets are discrete: there a
    mixture can stack narrow components on the values and its density NLL has no floor (an ensemble counts as a
    mixture where its members are one on some split)."""
    if not discrete:
        return methods
    return {m: runs for m, runs in methods.items() if not any((r.get("labels") or {}).get("head") == "mixture" for r in runs)}


def section(results: list[tuple[Path, dict]], sweep_dir: Path) -> list[str]:
    """The UCI part of a report (empty when the sweep has no UCI-protocol runs)."""
    found = collect(results)
    if not found:
        return []
    datasets = [d for d in DATASETS if d in found]
    methods = _methods(found, datasets)
    lines = ["## UCI regression benchmark", ""]
    suite = _suite(sweep_dir)
    if suite:
        lines += [f"The whole suite ran in **{suite['wall_s'] / 60:.1f} min** wall ({suite['wall_s']:.0f} s, "
                  f"{suite.get('jobs', '?')} jobs) on {suite.get('machine', 'this machine')}: `{suite['command']}`.", ""]
        lines += stage_times(suite.get("stages") or [])
    lines += evaluation_cost(results)
    lines += _leaderboard(found, datasets, methods)
    atoms = {ds: target_atoms([r for runs in found[ds].values() for r in runs]) for ds in datasets}
    discrete = [ds for ds in datasets if atoms[ds] and atoms[ds]["on_atoms"] >= ATOM_SHARE]
    lines += _goals(found, datasets, discrete)
    # they build on this module's helpers
    from densbench.report.uci_records import records_section, reproduction_section
    from densbench.report.uci_ranking import paired_section, ranking_section

    lines += records_section(found, datasets, discrete) + ranking_section(found, datasets) + paired_section(found, datasets)
    lines += reproduction_section(found, datasets)
    from densbench.report.uci_gap import gap_section

    lines += gap_section(found, collect(results, protocol="gap"))
    lines += _atoms_table(atoms, datasets, discrete)
    lines += ["### Published protocols", "", "| source | protocol | ± |", "|---|---|---|"]
    lines += [f"| {s.name} | {s.protocol} | {'standard error' if s.se else 'as printed (not a standard error)'} |" for s in SOURCES]
    lines += ["", "densbench (all methods): the published splits and the protocol's width (n_hidden.txt); inputs and "
              "targets standardised on the training rows; 10% of each training split held out to choose the epoch by "
              "validation NLL; optimiser settings and the epoch budget per dataset (the protocol's n_epochs.txt, or ten "
              "times it on the five smallest datasets where the search finds that better) from `scripts/uci_search.py` "
              "(validation data carved from training splits 0-2, never test data); ± is a standard error over splits.", ""]
    lines += recalibration_section({name: collect(results, name) for name in RECALIBRATIONS}, datasets)
    for ds in datasets:
        lines += _dataset_table(ds, found[ds], methods)
    return lines


def evaluation_cost(results: list[tuple[Path, dict]]) -> list[str]:
    """Test evaluation against training per stack (a stack's jobs share its times), the largest ratio first."""
    stacks: dict[tuple, tuple[float, float, str]] = {}
    for _, r in results:
        t, lab = r.get("timing") or {}, r.get("labels") or {}
        if r.get("status") != "ok" or not t.get("train_s") or lab.get("dataset") not in FOLDERS:
            continue
        name = method_of(r.get("config") or {}, lab) or f"{lab.get('loss')}/{lab.get('head')}"
        key = (lab["dataset"], name, t["train_s"], t.get("test_s"))
        stacks[key] = (t["train_s"], t.get("test_s") or 0.0, name)
    if not stacks:
        return []
    ratios = sorted(((test / train, ds, name, train, test) for (ds, *_), (train, test, name) in stacks.items()), reverse=True)
    worst = ratios[0]
    lines = [f"Test evaluation (every metric, ensembles' members and the recalibrations stacked with their models "
             f"included) against training, per stack: at most **{100 * worst[0]:.0f}%** ({worst[1]} / {worst[2]}: "
             f"{worst[4]:.2f} s of testing for {worst[3]:.2f} s of training; goal: at most 10%); "
             f"{sum(r[0] <= 0.1 for r in ratios)} of {len(ratios)} stacks within 10%. The largest:", "",
             "| dataset | method | train (s) | test (s) | test / train |", "|---|---|---|---|---|"]
    lines += [f"| {ds} | {name} | {train:.2f} | {test:.2f} | {ratio:.3f} |" for ratio, ds, name, train, test in ratios[:5]]
    return lines + [""]


def stage_times(stages: list[dict]) -> list[str]:
    """The suite's stages with their wall times, and the networks' share (the stages not marked networks: false)."""
    parts = ", ".join(f"{s['stage']} {s['wall_s'] / 60:.1f} min ({s['jobs']} jobs)" for s in stages)
    # suite files from before the flag tell the baselines' stage by its name
    networks = sum(s["wall_s"] for s in stages if s.get("networks", "baseline" not in s["stage"]))
    return [f"By stage: {parts}; the neural networks alone (every stage but the baselines): "
            f"**{networks / 60:.1f} min**.", ""] if stages else []


def _suite(sweep_dir: Path) -> dict | None:
    try:
        return json.loads((Path(sweep_dir) / SUITE_FILE).read_text())
    except (OSError, ValueError):
        return None


def _nll(runs: list[dict], key: str = "nll") -> tuple[float, float | None]:
    return mean_se([(r.get("metrics") or {}).get(key) for r in runs])


def resolution(runs: list[dict]) -> float | None:
    """The recording grid h of a dataset's targets, as its runs detected it (None: not set)."""
    return next(((r.get("train") or {}).get("target_resolution") for r in runs
                 if (r.get("train") or {}).get("target_resolution")), None)


def ranking_key(methods: dict[str, list[dict]]) -> str:
    """The metric a dataset's methods are ranked by: NLL@h where its targets have a resolution h, else the density NLL
    (on a recorded grid a density's NLL can fall without bound by mass on the grid's values, an interval's cannot)."""
    return "nll_binned" if resolution([r for runs in methods.values() for r in runs]) else "nll"


def ranked_best(methods: dict[str, list[dict]]) -> str | None:
    """The best method by mean test NLL at the targets' resolution where it is set, else by density NLL (ranking_key)."""
    key = ranking_key(methods)
    scores = {m: _nll(runs, key)[0] for m, runs in methods.items()}
    finite = {m: v for m, v in scores.items() if math.isfinite(v)}
    return min(finite, key=finite.get) if finite else None


def baseline_note(methods: list[str]) -> str:
    """The sentence that tells the non-network baselines among a table's methods apart ('' when there are none)."""
    shown = [m for m in methods if m in baselines()]
    return (f" Not networks: {', '.join(shown)} (non-network baselines run on the same splits, rows and scoring); every "
            "other densbench method is a neural network." if shown else "")


def leaderboard(found, datasets: list[str], methods: list[str]) -> Leaderboard:
    """Test NLL per dataset: densbench's methods (mean ± SE over splits) beside the published figures, best in bold."""
    names = [s.name for s in SOURCES]
    board = Leaderboard(
        caption="UCI regression: test NLL (lower is better), mean ± standard error over splits",
        row_header="dataset", columns=methods + names, label="tab:densbench-uci",
        notes="Bold: the best of the row, densbench methods and published figures together; where the targets are "
              "recorded on a grid, the only densbench method that may be bold is the best by NLL@h (the "
              "resolution-aware leaderboard), so none is bold for mass stacked on the grid's values. Published figures "
              "as printed (Deep Ens., NGBoost and DER: ± is not a standard error); their protocols differ (see the report)."
              + baseline_note(methods))
    for ds in datasets:
        values = [_nll(found[ds][m]) if m in found[ds] else (float("nan"), None) for m in methods]
        values += [published(NLL, ds, n) for n in names]
        gridded = resolution([r for runs in found[ds].values() for r in runs]) is not None
        eligible = [not gridded or m == ranked_best(found[ds]) for m in methods] + [True] * len(names)
        best = best_of([v if ok else float("nan") for (v, _), ok in zip(values, eligible)], board.digits)
        board.rows.append((ds, [Cell(m, pm, b) for (m, pm), b in zip(values, best)]))
    return board


def leaderboard_of(results: list[tuple[Path, dict]]) -> Leaderboard | None:
    """The UCI leaderboard of a sweep's results, or None when it has no UCI-protocol runs."""
    found = collect(results)
    if not found:
        return None
    datasets = [d for d in DATASETS if d in found]
    return leaderboard(found, datasets, _methods(found, datasets))


def _methods(found, datasets: list[str]) -> list[str]:
    return sorted({m for d in datasets for m in found[d]}, key=lambda m: (m == "ensemble", m))


def binned_leaderboard(found, datasets: list[str], methods: list[str]) -> Leaderboard:
    """Test NLL per unit width at each dataset's recording resolution h (NLL@h), densbench's methods, best in bold."""
    board = Leaderboard(
        caption="UCI regression, resolution-aware: test NLL@h = -log[(F(y + h/2) - F(y - h/2)) / h] (lower is better; "
                "at least log h), mean ± standard error over splits",
        row_header="dataset (h)", columns=methods, label="tab:densbench-uci-binned",
        notes="h: the coarsest power of ten every training target is a whole multiple of (none: the density NLL). "
              "Equal to the density NLL for predictives smooth at scale h; published figures are density NLLs only.")
    for ds in datasets:
        h, key = resolution([r for runs in found[ds].values() for r in runs]), ranking_key(found[ds])
        values = [_nll(found[ds][m], key) if m in found[ds] else (float("nan"), None) for m in methods]
        best = best_of([m for m, _ in values], board.digits)
        board.rows.append((f"{ds} ({h:g})" if h else f"{ds} (none)", [Cell(m, pm, b) for (m, pm), b in zip(values, best)]))
    return board


def _leaderboard(found, datasets: list[str], methods: list[str]) -> list[str]:
    return ["### Leaderboard: test NLL (lower is better)", "", to_markdown(leaderboard(found, datasets, methods)), "",
            "### Leaderboard at the targets' resolution (NLL@h)", "", to_markdown(binned_leaderboard(found, datasets, methods))]


def _goals(found, datasets: list[str], discrete: list[str]) -> list[str]:
    # a comparison of networks: the non-network baselines stay in the leaderboards
    found = {ds: {m: runs for m, runs in found[ds].items() if m not in baselines()} for ds in datasets}
    lines = ["### Against MC dropout (2016) and Deep Ensembles", "",
             "Networks only. Best densbench method by mean test NLL at the targets' resolution (NLL@h where the "
             "targets are recorded on a grid, the density NLL elsewhere), and the method a user would pick without test data "
             "(on each split, the lowest NLL on that split's own validation rows, at the targets' resolution where they "
             "have one, as every validation choice is; the mean test NLL of the splits' choices): among the single-model "
             "methods, and among every network method, the deep ensemble included (scored on the validation rows as it "
             "is tested: its members' mixture). Each is compared by its density NLL, the published figures' measure; "
             "where the targets are discrete (marked; see Target resolution) mixture heads are left out, as a mixture's "
             "density NLL there has no floor. A choice is listed with the number of splits it won.", "",
             "| dataset | best method | its NLL | ≤ MCD 2016 | ≤ Deep Ens. | single model chosen by validation | their NLL "
             "| ≤ MCD 2016 | ≤ Deep Ens. | any network chosen by validation | their NLL | ≤ MCD 2016 | ≤ Deep Ens. |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    tallies = {}
    for spikes in (False, True):
        tally = tallies[spikes] = defaultdict(int)
        for ds in datasets:
            methods = without_spikes(found[ds], ds in discrete and not spikes)
            picks = {"best": ranked_best(methods), "chosen": validation_choices(methods),
                     "any": validation_choices(methods, ensembles=True)}
            mcd, de = published(NLL, ds, "MCD 2016")[0], published(NLL, ds, "Deep Ens.")[0]
            row = [f"{ds} (discrete)" if ds in discrete else ds]
            for tag, pick in picks.items():
                if not pick:
                    row += ["-"] * 4
                    continue
                name, runs = (pick, methods[pick]) if tag == "best" else (chosen_counts(pick), [r for _, r in pick.values()])
                v = _nll(runs)[0]
                beats = (round(v, 2) <= mcd, round(v, 2) <= de)
                tally[(tag, "mcd")] += beats[0]
                tally[(tag, "de")] += beats[1]
                row += [name, f"{v:.3f}", "yes" if beats[0] else "no", "yes" if beats[1] else "no"]
            if not spikes:
                lines.append("| " + " | ".join(row) + " |")
    n = len(datasets)
    t = tallies[False]
    lines += ["", f"Best method at least as good as MC dropout (2016) on {t[('best', 'mcd')]} of {n} datasets and as "
              f"Deep Ensembles on {t[('best', 'de')]} of {n}; the validation-chosen single model on "
              f"{t[('chosen', 'mcd')]} and {t[('chosen', 'de')]} of {n}, the validation-chosen network (ensembles "
              f"included) on {t[('any', 'mcd')]} and {t[('any', 'de')]} of {n} (means compared at the published two decimals)."]
    if discrete:
        t = tallies[True]
        lines.append(f"Counting mixture heads on {', '.join(discrete)} too: best method {t[('best', 'mcd')]} and "
                     f"{t[('best', 'de')]} of {n}; validation-chosen single model {t[('chosen', 'mcd')]} and "
                     f"{t[('chosen', 'de')]} of {n}, validation-chosen network {t[('any', 'mcd')]} and {t[('any', 'de')]} of {n}.")
    lines.append("")
    return lines


def _atoms_table(atoms: dict, datasets: list[str], discrete: list[str]) -> list[str]:
    known = [ds for ds in datasets if atoms[ds]]
    if not known:
        return []
    lines = ["### Target resolution", "",
             "A density's NLL rewards mass placed exactly on values that repeat: on a target with few distinct values a "
             "mixture can put ever narrower components on them and its NLL has no lower bound, so there it measures "
             "that, not predictive quality. Datasets with at least "
             f"{ATOM_SHARE:.0%} of rows on values seen 10 times or more are marked discrete: "
             f"{', '.join(discrete) if discrete else 'none'}.", "",
             "| dataset | rows | distinct target values | rows on values seen ≥ 10 times |", "|---|---|---|---|"]
    for ds in known:
        a = atoms[ds]
        lines.append(f"| {ds}{' (discrete)' if ds in discrete else ''} | {a['rows']} | {a['distinct']} | {a['on_atoms']:.1%} |")
    lines.append("")
    return lines


def _dataset_table(ds: str, methods_runs: dict[str, list[dict]], methods: list[str]) -> list[str]:
    lines = [f"### {ds}", "", "| method | splits | " + " | ".join(h for _, h in METRICS) + " | protocol |",
             "|---|---|" + "---|" * len(METRICS) + "---|"]
    n_splits = max(len(r) for r in methods_runs.values())
    for s in SOURCES:
        (nm, nse), (rm, rse) = published(NLL, ds, s.name), published(RMSE, ds, s.name)
        splits = {"NGBoost": "own", "DER": "as quoted"}.get(s.name, str(5 if ds == "protein" else 20))
        lines.append(f"| {s.name} (published) | {splits} | {pm(nm, nse)} | - | {pm(rm, rse)} | - | - | {s.name} |")
    for m in methods:
        runs = methods_runs.get(m)
        if not runs:
            continue
        cells = [pm(*mean_se([(r.get("metrics") or {}).get(k) for r in runs]), 3) for k, _ in METRICS]
        label = f"{m} (not a network)" if m in baselines() else m
        if m == "ensemble":  # its members' method, chosen split by split
            members = ensemble_members(runs)
            label = f"ensemble of 5 {next(iter(members))}" if len(members) == 1 else \
                f"ensemble of 5 ({tally_text(members)})"
        lines.append(f"| densbench {label} | {len(runs)} | " + " | ".join(cells) + f" | {_protocol(runs[0])} |")
    reference = mcd_4000(ds, [r for runs in methods_runs.values() for r in runs])
    lines.append("")
    if reference is None:
        lines += [f"Paired comparison with the 4000-epoch MC-dropout runs: their per-split file ({MCD_4000}) is not at hand.", ""]
        return lines
    lines += [f"Paired per split with the 4000-epoch MC-dropout runs (MCD 2018's per-split test NLL, mean "
              f"{reference.mean():.3f} over {len(reference)} splits): densbench NLL minus theirs.", "",
              "| method | mean difference ± se | splits won | splits |", "|---|---|---|---|"]
    for m in methods:
        p = paired(methods_runs.get(m) or [], reference)
        if p:
            lines.append(f"| {m} | {p['mean']:+.3f} ± {p['se']:.3f} | {p['won']} | {p['splits']} |")
    lines.append("")
    if n_splits < len(reference):
        lines += [f"(densbench ran {n_splits} of the {len(reference)} splits.)", ""]
    return lines


def ensemble_members(runs: list[dict]) -> dict[str, int]:
    """The member methods of ensemble runs with their counts of runs (splits), most frequent first."""
    return tally(single_method(r.get("config") or {}, r.get("labels") or {})
                 or f"{(r.get('labels') or {}).get('loss')}/{(r.get('labels') or {}).get('head')}" for r in runs)


def _protocol(res: dict) -> str:
    c = res.get("config") or {}
    if c.get("baseline"):  # its own settings: the network's epochs, batch and lr do not apply
        return ", ".join(f"{k} {v}" for k, v in c["baseline"].items() if k != "_target_")
    t, o = c.get("loop") or {}, c.get("optimizer") or {}
    return f"{t.get('max_epochs')} ep, batch {t.get('batch_size')}, lr {o.get('lr')}"
