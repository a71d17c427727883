"""Two tables of the UCI report that hold densbench against the literature: MC dropout rerun in its own
protocol against its published figures, and the best method per dataset against the published record
and against the non-network baselines run on the same splits."""

from __future__ import annotations

import math
from collections.abc import Collection

from densbench.methods import baselines
from densbench.report.published import NLL, RECORDS, RMSE, published
from densbench.report.uci import _nll, ranked_best, ranking_key, without_spikes
from densbench.report.uci_recalibration import pm

MCD = "mc_dropout"


def reproduction_section(found: dict, datasets: list[str]) -> list[str]:
    """densbench's mc_dropout beside MCD 2016's published test NLL and RMSE: within two combined standard errors?"""
    rows, agree, passes = [], 0, set()
    for ds in datasets:
        runs = found[ds].get(MCD)
        if not runs:
            continue
        passes |= {str(t) for r in runs if (t := ((r.get("config") or {}).get("model") or {}).get("mc_samples"))}
        (ours, se), (theirs, their_se) = _nll(runs), published(NLL, ds, "MCD 2016")
        rmse, rmse_se = _nll(runs, "rmse")
        band = 2 * math.hypot(se or 0.0, their_se or 0.0)
        close = abs(ours - theirs) <= band
        agree += close
        rows.append(f"| {ds} | {_budget(runs)} | {pm(ours, se)} | {NLL[ds][1]} | {ours - theirs:+.2f} | ±{band:.2f} "
                    f"| {'yes' if close else 'no'} | {pm(rmse, rmse_se)} | {RMSE[ds][1]} |")
    if not rows:
        return []
    return ["### MC dropout rerun against its published figures (Gal & Ghahramani 2016)", "",
            "densbench's `mc_dropout` (dropout rate and τ chosen per split on validation rows from the layout's grids, "
            f"{'T = ' + ' or '.join(sorted(passes, key=int)) if passes else 'T'} passes) against the published MCD 2016 test NLL; agreement: the difference within two combined "
            "standard errors. Differences from their protocol: the epoch is chosen on 10% of the training rows (they "
            "train their whole budget on all of them after the grid search). The budget column is Adam's learning rate, "
            "the weight decay, the batch and the epochs as the runs' configs record them: their published code's "
            "(conf/settings/mc_dropout/gal2016.yaml) where conf/settings/mc_dropout has a file for the dataset, else the "
            "one every densbench method uses on it (conf/experiment).", "",
            "| dataset | budget | densbench NLL | MCD 2016 NLL | difference | 2 SE | agrees | densbench RMSE | MCD 2016 RMSE |",
            "|---|---|---|---|---|---|---|---|---|", *rows, "",
            f"Agreement on {agree} of {len(rows)} datasets.", ""]


def _budget(runs: list[dict]) -> str:
    """The optimiser settings and epoch budget the runs trained with: lr, weight decay, batch, epochs."""
    budgets = set()
    for r in runs:
        cfg = r.get("config") or {}
        opt, loop = cfg.get("optimizer") or {}, cfg.get("loop") or {}
        values = (opt.get("lr"), opt.get("weight_decay"), loop.get("batch_size"), loop.get("max_epochs"))
        budgets.add(", ".join("-" if v is None else f"{v:g}" for v in values))
    return " or ".join(sorted(budgets))


def records_section(found: dict, datasets: list[str], discrete: Collection[str] = ()) -> list[str]:
    """Per dataset: the published record, the best network and the best non-network baseline (NLL@h where set;
    without mixture heads where the targets are discrete)."""
    lines = ["### Against the published records and the non-network baselines", "",
             "Best by mean test NLL at the targets' resolution (NLL@h where it is set, else the density NLL), networks "
             "and baselines apart; the record is the best published figure under an HL&A-style protocol "
             "(REFERENCE.md §2b; other papers, codes and sometimes splits), compared at its printed two decimals with "
             "the density NLL it reports; where the targets are discrete (marked) mixture heads are left out, as a mixture's "
             "density NLL there has no floor. A network is *worth it* where the best network's NLL is at or below the "
             "best baseline's.", "",
             "| dataset | record (holder) | best network | its NLL | its NLL@h | ≤ record | best baseline | its NLL@h | network worth it |",
             "|---|---|---|---|---|---|---|---|---|"]
    tally = {"record": 0, "worth": 0, "compared": 0}
    for ds in datasets:
        networks = without_spikes({m: r for m, r in found[ds].items() if m not in baselines()}, ds in discrete)
        others = {m: r for m, r in found[ds].items() if m in baselines()}
        key = ranking_key(found[ds])
        best, rival = ranked_best(networks), ranked_best(others)
        record = RECORDS[ds]
        row = [f"{ds} (discrete)" if ds in discrete else ds, f"{record.nll} ({record.holder})"]
        if best is None:
            lines.append("| " + " | ".join(row + ["-"] * 7) + " |")
            continue
        nll, ranked = _nll(networks[best])[0], _nll(networks[best], key)[0]
        beats = round(nll, 2) <= float(record.nll.partition("±")[0])
        tally["record"] += beats
        row += [best, f"{nll:.3f}", f"{ranked:.3f}", "yes" if beats else "no"]
        if rival is None:
            row += ["-", "-", "-"]
        else:
            theirs = _nll(others[rival], key)[0]
            worth = ranked <= theirs
            tally["worth"] += worth
            tally["compared"] += 1
            row += [rival, f"{theirs:.3f}", "yes" if worth else f"no ({rival} by {ranked - theirs:.2f})"]
        lines.append("| " + " | ".join(row) + " |")
    n = len(datasets)
    lines += ["", f"Best network at or below the published record on {tally['record']} of {n} datasets"
              + (f"; at or below the best non-network baseline on {tally['worth']} of {tally['compared']}." if tally["compared"] else "."),
              ""]
    return lines
