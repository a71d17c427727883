"""Rerun randomly chosen runs of a committed report and compare them with its per-run figures.

Every report has a runs.csv: per run, the overrides that rerun it, the hashes of its config, code and
data, and its metrics. This script picks some finished runs, reruns each from scratch in a temporary
directory (a fresh process, resume=false) and checks that

- the code that produced the report is the code checked out now (else the report is stale),
- the rerun resolves to the same config and reads the same data,
- every metric matches the committed figure to the tolerance (timings excepted); the first that does
  not is named first. The rerun is a fresh process whose CPU kernels densbench pins before torch loads
  (densbench.numerics), so a report made on another x86-64 machine with AVX2 reproduces here, whatever
  ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS or thread count this shell sets.

    python scripts/check_reports.py reports/uci [--runs 3] [--seed 7] [--tolerance 1e-6]

Exit status 0 when every chosen run reproduces, 1 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from densbench.results import EXECUTION_METRICS

HASHES = ("config_hash", "source_hash", "data_hash")


def _float(text: str) -> float | None:
    return float(text) if text not in ("", "None") else None


def rerun(row: dict, workdir: Path, python: str = sys.executable) -> dict:
    """Run one committed run again from scratch; its new result.json."""
    overrides = json.loads(row["overrides"])
    if not overrides and overrides != []:
        raise ValueError(f"{row['run']}: no overrides recorded, cannot rerun it")
    run_dir = workdir / "run"
    cmd = [python, "-m", "densbench", *overrides, f"hydra.run.dir={run_dir}", "resume=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{row['run']}: the rerun failed:\n{proc.stderr[-2000:]}")
    return json.loads((run_dir / "result.json").read_text())


def compare(row: dict, res: dict, tolerance: float) -> tuple[float, list[str]]:
    """Largest metric difference and the problems found (hash mismatches, metrics out of tolerance)."""
    problems = []
    prov = res.get("provenance") or {}
    got = {"config_hash": res.get("config_hash"), "source_hash": prov.get("source_hash"), "data_hash": prov.get("data_hash")}
    mode = (prov.get("numerics") or {}).get("mode")
    if row.get("numerics") and row["numerics"] != mode:
        problems.append(f"numerics: the report's runs computed with {row['numerics']} kernels, the rerun with {mode} "
                        f"({(prov.get('numerics') or {}).get('why') or ''})")
    for h in HASHES:
        if row.get(h) and row[h] != got[h]:
            what = {"config_hash": "config", "source_hash": "code", "data_hash": "data"}[h]
            problems.append(f"the {what} differs from the one that produced the report ({row[h]} then, {got[h]} now)")
    worst = 0.0
    for name, text in row.items():
        committed = _float(text) if name in res.get("metrics", {}) and name not in EXECUTION_METRICS else None
        now = res["metrics"].get(name) if committed is not None else None
        if committed is None or now is None:
            continue
        diff = abs(now - committed) if math.isfinite(now) and math.isfinite(committed) else (0.0 if now == committed else math.inf)
        worst = max(worst, diff)
        if diff > tolerance * max(1.0, abs(committed)):
            problems.append(f"{name}: committed {committed!r}, rerun {now!r} (difference {diff:.3g})")
    return worst, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="a report folder with runs.csv (e.g. reports/uci)")
    parser.add_argument("--runs", type=int, default=3, help="how many runs to rerun")
    parser.add_argument("--seed", type=int, default=None, help="random seed for the choice (default: from the clock, printed)")
    parser.add_argument("--tolerance", type=float, default=1e-6, help="largest allowed difference (relative above 1)")
    args = parser.parse_args(argv)
    table = args.report / "runs.csv"
    if not table.exists():
        parser.error(f"{table} not found: reports written by this densbench version list their runs there")
    rows = [r for r in csv.DictReader(open(table)) if r["status"] == "ok"]
    if not rows:
        parser.error(f"{table} lists no finished run")
    seed = args.seed if args.seed is not None else int(time.time()) % 100_000
    chosen = random.Random(seed).sample(rows, min(args.runs, len(rows)))
    print(f"checking {len(chosen)} of {len(rows)} runs of {args.report} (--seed {seed})")
    failed, overall = 0, 0.0
    for row in chosen:
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            try:
                worst, problems = compare(row, rerun(row, Path(tmp)), args.tolerance)
            except (RuntimeError, ValueError) as exc:
                worst, problems = math.inf, [str(exc)]
        overall = max(overall, worst)
        status = "reproduced" if not problems else f"DIFFERS, first: {problems[0].split(':')[0]}"
        print(f"  {row['run']}: {status}, largest difference {worst:.3g} ({time.perf_counter() - started:.0f} s)")
        for p in problems:
            print(f"    - {p}")
        failed += bool(problems)
    print(f"{len(chosen) - failed} of {len(chosen)} reproduced; largest difference over all metrics {overall:.3g}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
