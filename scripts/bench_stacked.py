"""What does training a stack of models in one batched step buy?

1. Per-model training throughput of the UCI protocol net (Boston, one hidden layer of 50 ReLU units,
   batch 32, Adam) with N = 1, 5, 20, 100 models in one stack (an N-member ensemble on split 0, so
   every stack runs the same number of steps), in this process, sizes alternating between rounds.
   Throughput is densbench's own figure: training chunks only, the first evaluation period left out.
2. Whole processes: `python -m densbench -m experiment=uci_boston 'dataset.split=range(20)' loop.max_epochs=40` with
   `launcher=basic` against `launcher=stacked`, timed as alternating pairs (start-up, evaluation,
   checkpoints and the report included), with the mean test NLL of both.
3. A 5-member deep ensemble on each of the 20 Boston splits (100 networks) with `launcher=stacked`.

    python scripts/bench_stacked.py [--rounds 3] [--pairs 3]

Writes reports/bench_stacked.md and reports/bench_stacked.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from densbench.config import compose_config

ROOT = Path(__file__).resolve().parents[1]
SIZES = (1, 5, 20, 100)
# the published protocol's 40 epochs, whatever budget the search gives boston: figures comparable across releases
EPOCHS = "loop.max_epochs=40"
SWEEP = ["-m", "experiment=uci_boston", "dataset.split=range(20)", EPOCHS, "resume=false"]
GOALS = {"per_model_20": 12.0, "per_model_100": 20.0, "sweep": 4.0, "ensemble_s": 30.0}


def stack_throughput(models: int, tmp: Path) -> dict[str, float]:
    """Train one stack of `models` protocol nets for 40 epochs; densbench's throughput figures."""
    from densbench.runs.execution import run_job

    cfg = compose_config(["experiment=uci_boston", "dataset.split=0", EPOCHS, f"ensemble.members={models}", "logger=none",
                   "figures=false", "loop.early_stopping_patience=null"])
    res = run_job(cfg, tmp / f"n{models}-{time.monotonic_ns()}")
    if res["status"] != "ok":
        raise RuntimeError(f"stack of {models}: {res.get('error')}")
    return {k: res["metrics"][k] for k in ("train_samples_per_s", "stack_samples_per_s", "step_time_ms")}


def per_model(rounds: int) -> dict:
    """Part 1: stacks of SIZES models; the cost of a model-step against N = 1 of the same round."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        stack_throughput(1, Path(tmp))  # warm-up: imports, allocator, lazy initialisation
        runs: dict[int, list[dict[str, float]]] = {n: [] for n in SIZES}
        for r in range(rounds):
            for n in (SIZES if r % 2 == 0 else tuple(reversed(SIZES))):
                runs[n].append(stack_throughput(n, Path(tmp)))
                print(f"round {r}: N={n} {runs[n][-1]['stack_samples_per_s']:.0f} samples/s for the stack", flush=True)
    rows = []
    for n in SIZES:
        # a model-step costs step time / N: the stack's samples/s over a lone model's
        ratios = [x["stack_samples_per_s"] / one["stack_samples_per_s"] for x, one in zip(runs[n], runs[1])]
        step_ms = statistics.median(x["step_time_ms"] for x in runs[n])
        rows.append({"models": n, "step_time_ms": step_ms, "us_per_model_step": 1e3 * step_ms / n,
                     "stack_samples_per_s": statistics.median(x["stack_samples_per_s"] for x in runs[n]),
                     "per_model_samples_per_s": statistics.median(x["train_samples_per_s"] for x in runs[n]),
                     "speedup": statistics.median(ratios), "all": runs[n]})
    return {"rows": rows}


def process(args: list[str], cwd: Path) -> float:
    """Wall seconds of one densbench process (fails loudly)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "densbench", *args], cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"densbench {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return dt


def results(sweep: Path) -> list[dict]:
    """Every result.json under a sweep directory."""
    return [json.loads(p.read_text()) for p in sorted(sweep.rglob("result.json"))]


def startup(repeats: int = 3) -> float:
    """Seconds a bare interpreter needs to import what every densbench job imports."""
    code = "import torch, lightning.pytorch, hydra, omegaconf, densbench.runs.execution, densbench.training.module"
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def composition_s() -> float:
    """Seconds Hydra needs to compose the sweep's 20 job configs (the sweeper's validation pass)."""
    compose_config(["experiment=uci_boston"])  # warm caches
    t0 = time.perf_counter()
    for split in range(20):
        compose_config(["experiment=uci_boston", f"dataset.split={split}"])
    return time.perf_counter() - t0


def sweeps(pairs: int) -> dict:
    """Part 2 and 3: the 20-split sweep basic vs stacked, alternating; then the 5-member ensembles."""
    times: dict[str, list[float]] = {"basic": [], "stacked": []}
    nll: dict[str, list[float]] = {"basic": [], "stacked": []}
    parts: dict[str, list[dict[str, float]]] = {"basic": [], "stacked": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for r in range(pairs):
            for launcher in (("basic", "stacked") if r % 2 == 0 else ("stacked", "basic")):
                sweep = tmp / f"{launcher}{r}"
                times[launcher].append(process([*SWEEP, f"launcher={launcher}", f"hydra.sweep.dir={sweep}",
                                                f"report.dir={tmp}/reports"], tmp))
                res = results(sweep)
                if len(res) != 20 or any(x["status"] != "ok" for x in res):
                    raise RuntimeError(f"{launcher}: {len(res)} results, statuses {sorted({x['status'] for x in res})}")
                nll[launcher].append(statistics.fmean(x["metrics"]["nll"] for x in res))
                parts[launcher].append(breakdown(res, times[launcher][-1]))
                print(f"pair {r}: {launcher} {times[launcher][-1]:.1f}s, mean test NLL {nll[launcher][-1]:.4f}", flush=True)
        # one run: a time and its results, not a comparison
        ens_times = [process([*SWEEP, "launcher=stacked", "ensemble.members=5", f"hydra.sweep.dir={tmp / 'ensemble'}",
                              f"report.dir={tmp}/reports"], tmp)]
        ens = results(tmp / "ensemble")
        print(f"ensemble: {ens_times[-1]:.1f}s", flush=True)
        fixed, composing = startup(), composition_s()
    paired = [b / s for b, s in zip(times["basic"], times["stacked"])]
    return {
        "sweep": {"times_s": times, "median_s": {k: statistics.median(v) for k, v in times.items()},
                  "paired_speedup": statistics.median(paired), "mean_test_nll": nll,
                  "import_s": fixed, "compose_s": composing,
                  "parts": {k: {p: statistics.median(x[p] for x in v) for p in v[0]} for k, v in parts.items()}},
        "ensemble": {"times_s": ens_times, "median_s": statistics.median(ens_times), "jobs": len(ens),
                     "ok": sum(x["status"] == "ok" for x in ens),
                     "mean_test_nll": statistics.fmean(x["metrics"]["nll"] for x in ens),
                     "mean_member_test_nll": statistics.fmean(x["metrics_members"]["nll"] for x in ens),
                     "mean_test_rmse": statistics.fmean(x["metrics"]["rmse"] for x in ens)},
    }


def breakdown(res: list[dict], wall: float) -> dict[str, float]:
    """Where a sweep's wall time went, from its jobs' timing: before the first job trains (interpreter,
    imports, Hydra, data, the first job's set-up), training, validation, testing, and the rest (every
    later job's set-up and records, Hydra's records, the report)."""
    stacked = len({x["timing"]["train_s"] for x in res}) == 1 and res[0]["train"]["stack"]["models"] > 1
    jobs = res[:1] if stacked else res  # a stack's jobs share its times
    first = min(res, key=lambda x: x.get("started", ""))
    out = {"startup": first["timing"]["startup_s"]}
    for part in ("train", "validation", "test"):
        out[part] = sum(x["timing"][f"{part}_s"] for x in jobs)
    out["rest"] = wall - sum(out.values())
    return out


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def render(meta: dict, part1: dict, part23: dict) -> str:
    """The Markdown report."""
    lines = [
        "# Stacked training: many small models in one batched step",
        "",
        f"Produced by `python scripts/bench_stacked.py` on {meta['cpus']} CPU core(s), torch {meta['torch']}, "
        f"one torch thread; {meta['date']}. The machine is a shared virtual machine whose speed drifts by 10-30 % "
        "within seconds, so every comparison is a ratio of runs timed close together, sizes and launchers alternating.",
        "",
        "## Per-model training throughput",
        "",
        "The UCI protocol net (Boston, 13 inputs, one hidden layer of 50 ReLU units, Gaussian head, batch 32, Adam) "
        "as a stack of N models (an N-member ensemble on split 0, 40 epochs, every model its own minibatch order). "
        "Times cover the training chunks only (validation, checkpoints and the first evaluation period left out). "
        "A model-step is one optimisation step of one model; its cost is the stacked step's time over N. "
        f"Speed-up: median over {meta['rounds']} rounds of the stack's training samples/s at N over the lone "
        "model's of the same round (= the lone model's µs per model-step over the stack's). Each member's own "
        "progress is the last column: a member of a stack trains a little slower than a lone model, "
        "N of them much faster together.",
        "",
        "| N models | ms per stacked step | µs per model-step | whole-stack samples/s | speed-up per model-step | goal | samples/s of each member |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in part1["rows"]:
        goal = GOALS.get(f"per_model_{row['models']}")
        lines.append(f"| {row['models']} | {row['step_time_ms']:.2f} | {row['us_per_model_step']:.0f} | "
                     f"{row['stack_samples_per_s']:,.0f} | {row['speedup']:.1f}x | "
                     f"{'-' if goal is None else _verdict(row['speedup'] >= goal) + f' (>= {goal:g}x)'} | "
                     f"{row['per_model_samples_per_s']:,.0f} |")
    if part23:
        s, e = part23["sweep"], part23["ensemble"]
        nb, ns = statistics.fmean(s["mean_test_nll"]["basic"]), statistics.fmean(s["mean_test_nll"]["stacked"])
        lines += [
            "",
            "## The 20-split Boston sweep, whole processes",
            "",
            "`python -m densbench -m experiment=uci_boston 'dataset.split=range(20)' loop.max_epochs=40 resume=false launcher=basic|stacked`: "
            "20 trainings of up to 40 epochs with per-epoch validation, best/last checkpoints per job, test metrics, "
            "TensorBoard events and the sweep report; interpreter start-up and imports included. "
            f"Speed-up: median over {len(s['times_s']['basic'])} back-to-back pairs of basic / stacked.",
            "",
            "| launcher=basic (s) | launcher=stacked (s) | paired speed-up | goal | mean test NLL, basic | mean test NLL, stacked |",
            "|---|---|---|---|---|---|",
            f"| {s['median_s']['basic']:.1f} | {s['median_s']['stacked']:.1f} | {s['paired_speedup']:.2f}x | "
            f"{_verdict(s['paired_speedup'] >= GOALS['sweep'])} (>= {GOALS['sweep']:g}x) | {nb:.4f} | {ns:.4f} |",
            "",
            "Where the time goes (median seconds; start-up: from the interpreter's start to the first optimisation step, "
            "imports, Hydra, data and set-up included; rest: every later job's set-up and records, Hydra's records of "
            "the jobs and the report):",
            "",
            "| launcher | wall | start-up | train | validation | test | rest |",
            "|---|---|---|---|---|---|---|",
            *[f"| {k} | {s['median_s'][k]:.1f} | {v['startup']:.1f} | {v['train']:.1f} | {v['validation']:.1f} | "
              f"{v['test']:.1f} | {v['rest']:.1f} |" for k, v in s["parts"].items()],
            "",
            f"Importing torch, Lightning (which pulls in torch._dynamo, torchmetrics and scipy.signal), Hydra and densbench "
            f"alone takes {s['import_s']:.1f} s of every process, and composing 20 job configs {s['compose_s']:.1f} s "
            "(the stacked launcher composes one and derives the others). What the stack divides is the training loop "
            "itself (part 1) and each job's fixed cost.",
            "",
            "## A 5-member deep ensemble on every split",
            "",
            "`python -m densbench -m experiment=uci_boston 'dataset.split=range(20)' loop.max_epochs=40 ensemble.members=5 launcher=stacked "
            "resume=false`: 100 networks in one stack, each split's ensemble scored as the uniform mixture of its members.",
            "",
            "| wall (s) | goal | jobs ok | mean test NLL (mixture) | mean of members' test NLL | mean test RMSE |",
            "|---|---|---|---|---|---|",
            f"| {e['median_s']:.1f} | {_verdict(e['median_s'] < GOALS['ensemble_s'])} (< {GOALS['ensemble_s']:g} s) | "
            f"{e['ok']}/{e['jobs']} | {e['mean_test_nll']:.4f} | {e['mean_member_test_nll']:.4f} | {e['mean_test_rmse']:.4f} |",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--skip-sweeps", action="store_true", help="part 1 only")
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench_stacked"))
    args = ap.parse_args()
    meta = {"torch": torch.__version__, "cpus": os.cpu_count(), "machine": platform.machine(), "rounds": args.rounds,
            "pairs": args.pairs, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    part1 = per_model(args.rounds)
    part23 = None if args.skip_sweeps else sweeps(args.pairs)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "per_model": part1, "processes": part23}, indent=1))
    out.with_suffix(".md").write_text(render(meta, part1, part23))
    print(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
