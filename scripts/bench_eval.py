"""How long does scoring a trained model take, next to training it?

0. Test evaluation against training, per family and per 5-member ensemble of each family, on the UCI
   protocol (concrete, split 0, one job each, every metric): the goal is test at most 10% of training.
1. Mixture quantiles (K = 5, 100 levels, the calibration and interval metrics' inputs) on one thread,
   in test samples per second, for mixtures like a trained MDN's and for sharp stress mixtures
   (very unequal weights, scales from 1e-4 to 1e3), float32 and float64.
2. The KL to the MDN document's exact posterior (1000 rows): the panel rule against the posterior's
   4001-point grid that scored it before, with both errors against a rule of 100x narrower panels.
3. Whole runs: `python -m densbench experiment=mdn_doc` (and with --diamonds `dataset=diamonds
   loss=mdn`), with result.json's `timing` (start-up, train, validation, test, figures).
4. With --threads (or --diamonds), what a second thread buys: densbench's step time on the diamonds MDN (64-64,
   K = 5) at one thread and at all cores, for batches from 256 rows to full batch, the measurement
   behind loop.threads=auto's threshold (run.AUTO_THREADS_MIN_ROWS).

    python scripts/bench_eval.py [--diamonds] [--threads]     # regenerate.py runs --threads

Writes reports/bench_eval.md and reports/bench_eval.json.
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

import torch

from densbench.distributions import ops
from densbench.config import compose_config
from densbench.distributions.classes import InverseSinePosterior, NormalMixture, _kl_posterior, legendre_panels
from densbench.runs.devices import AUTO_THREADS_MIN_ROWS
from densbench.cores import usable_cores

ROOT = Path(__file__).resolve().parents[1]
ROWS, LEVELS, K = 1000, 100, 5
GOALS = {"quantile_samples_per_s": 50_000, "mdn_doc_test_over_train": 0.10, "test_over_train": 0.10}


def mixtures(kind: str, dtype: torch.dtype, seed: int = 0) -> NormalMixture:
    """ROWS mixtures of K components: 'typical' (a trained MDN's spread) or 'sharp' (stress)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "typical":
        logits, loc, scale = torch.randn(ROWS, K, generator=g), 2 * torch.randn(ROWS, K, generator=g), 0.1 + torch.rand(ROWS, K, generator=g)
    else:
        logits, loc, scale = 4 * torch.randn(ROWS, K, generator=g), 10 * torch.randn(ROWS, K, generator=g), torch.exp(3 * torch.randn(ROWS, K, generator=g) - 2)
    return NormalMixture(logits.to(dtype), loc.to(dtype), scale.to(dtype))


def rate(fn, rows: int, seconds: float = 2.0) -> float:
    """Rows per second of fn, after one warm-up call, over at least `seconds`."""
    fn()
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return rows * calls / (time.perf_counter() - start)


def quantile_rates() -> dict[str, float]:
    """Test samples per second of the mixture quantiles at LEVELS levels, one thread."""
    torch.set_num_threads(1)
    out = {}
    for kind in ("typical", "sharp"):
        for dtype in (torch.float32, torch.float64):
            d = mixtures(kind, dtype)
            levels = torch.linspace(0.005, 0.995, LEVELS, dtype=dtype)
            out[f"{kind}_{str(dtype)[6:]}"] = rate(lambda d=d, levels=levels: ops.quantile(d, levels), ROWS)
    return out


def kl_comparison() -> dict[str, float]:
    """Seconds and error of the posterior KL by panels against the old grid, on MDN-like predictions."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1)
    post = InverseSinePosterior(torch.linspace(-12, 12, ROWS, dtype=torch.float64))
    q = NormalMixture(torch.randn(ROWS, K, generator=g, dtype=torch.float64), 6 * torch.randn(ROWS, K, generator=g, dtype=torch.float64),
                      0.2 + torch.rand(ROWS, K, generator=g, dtype=torch.float64))
    rows = torch.arange(0, ROWS, 10)  # the reference on every 10th row: 100,000 nodes each
    x, w = (torch.as_tensor(a) for a in legendre_panels(post.lo, post.hi, 0.005, 24))
    sub = InverseSinePosterior(post.y[rows])
    log_p = sub.log_lik(x.unsqueeze(0))
    log_p = log_p - torch.logsumexp(log_p + w.log(), -1, keepdim=True)
    q_sub = NormalMixture(q.mixture_distribution.logits[rows], q.loc[rows], q.scale[rows])
    ref = (w * log_p.exp() * (log_p - q_sub.log_prob(x.unsqueeze(-1).expand(-1, len(rows))).T)).sum(-1)
    out = {}
    for name, fn in (("panels", lambda: torch.distributions.kl_divergence(post, q)), ("grid_4001", lambda: _kl_posterior(post, q))):
        start = time.perf_counter()
        kl = fn()
        out[f"{name}_s"] = time.perf_counter() - start
        out[f"{name}_max_error"] = float((kl[rows] - ref).abs().max())
    return out


def whole_run(overrides: list[str], tmp: Path) -> dict:
    """One densbench process; its wall time, timing breakdown and key metrics."""
    run_dir = tmp / f"run-{time.monotonic_ns()}"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "densbench", *overrides, "resume=false", f"hydra.run.dir={run_dir}"],
                          capture_output=True, text=True, cwd=tmp)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    res = json.loads((run_dir / "result.json").read_text())
    metrics = {k: res["metrics"][k] for k in ("nll", "crps", "rmse", "eval_samples_per_s") if k in res["metrics"]}
    return {"overrides": overrides, "wall_s": wall, "timing": res["timing"], "metrics": metrics, "threads": res["train"].get("threads")}


BATCHES = (256, 1024, 2048, 4096, 16384, None)  # rows per step; None: full batch


def thread_gain(tmp: Path, rounds: int = 2, steps: int = 400) -> list[dict]:
    """Step time (ms) of the diamonds MDN at one thread and at all cores, per batch size, rounds alternating
    (each run `steps` steps; the step time leaves out the first of its two evaluation periods)."""
    from densbench.runs.execution import run_job

    cores = usable_cores()
    times: dict[tuple, list[float]] = {}
    rows: dict[int | None, int] = {}
    for r in range(rounds):
        for batch in BATCHES:
            for threads in ((1, cores) if r % 2 == 0 else (cores, 1)):
                cfg = compose_config(["dataset=diamonds", "loss=mdn", f"loop.batch_size={'null' if batch is None else batch}",
                                      f"loop.max_steps={steps}", f"loop.eval_every={steps // 2}", f"loop.threads={threads}",
                                      "dataset.max_eval=1000", "logger=none", "figures=false", "resume=false"])
                res = run_job(cfg, tmp / f"threads-{batch}-{threads}-{r}")
                if res["status"] != "ok":
                    raise RuntimeError(res.get("error"))
                times.setdefault((batch, threads), []).append(res["metrics"]["step_time_ms"])
                rows[batch] = res["train"]["n_train"] if batch is None else batch
    out = []
    for batch in BATCHES:
        one, many = min(times[(batch, 1)]), min(times[(batch, cores)])
        out.append({"batch": batch, "rows": rows[batch], "one_ms": one, "all_ms": many, "cores": cores, "gain": one / many})
    return out


FAMILY_DATASET = "concrete"


def families(tmp: Path) -> list[dict]:
    """Per UCI method (a family and its objective) alone and as a 5-member ensemble: train and test seconds of one job."""
    from densbench.methods import recipes
    from densbench.runs.execution import run_job

    out = []
    for name, recipe in recipes().items():
        if recipe.members != 1:
            continue
        for members in (1,) if recipe.dropout else (1, 5):  # MC dropout's models are candidates, not members
            cfg = compose_config([f"experiment=uci_{FAMILY_DATASET}", f"method={name}", "dataset.split=0", f"ensemble.members={members}",
                                  "loop.max_epochs=40",  # the published protocol's, whatever budget the search gives the dataset
                                  "logger=none", "resume=false"])
            res = run_job(cfg, tmp / f"family-{name}-{members}")
            if res["status"] != "ok":
                raise RuntimeError(f"{name} x{members}: {res.get('error')}")
            t = res["timing"]
            out.append({"method": name, "head": res["labels"]["head"], "members": members, "train_s": t["train_s"],
                        "test_s": t["test_s"], "ratio": t["test_s"] / t["train_s"], "n_test": res["train"]["n_test"]})
    return out


def render(meta: dict, quant: dict, kl: dict, runs: list[dict], gains: list[dict], fams: list[dict]) -> str:
    """The Markdown report."""
    best = quant["typical_float32"]
    worst = max(fams, key=lambda f: f["ratio"])
    lines = [
        "# Evaluation speed", "",
        f"`python scripts/bench_eval.py{' --diamonds' if len(runs) > 1 else ''}` on {meta['machine']}, torch {meta['torch']}, {meta['date']}.", "",
        f"## Test evaluation against training, per family and ensemble (UCI protocol, {FAMILY_DATASET}, split 0)", "",
        f"One job each, `python -m densbench experiment=uci_{FAMILY_DATASET} method=<method> dataset.split=0 "
        "[ensemble.members=5] loop.max_epochs=40`: training (the published 40 epochs, validation excluded) against the test evaluation of every metric "
        f"on its {fams[0]['n_test']} test rows (an ensemble also scores each member). Goal: test at most "
        f"{GOALS['test_over_train']:.0%} of training for every one: "
        f"{'met' if worst['ratio'] <= GOALS['test_over_train'] else 'not met'} (largest: {worst['method']} x{worst['members']}, "
        f"{worst['ratio']:.1%}).", "",
        "| method | family | members | train s | test s | test / train |", "|---|---|---|---|---|---|",
    ]
    lines += [f"| {f['method']} | {f['head']} | {f['members']} | {f['train_s']:.2f} | {f['test_s']:.3f} | {f['ratio']:.1%} |" for f in fams]
    lines += ["",
        f"## Mixture quantiles (K = {K}, {LEVELS} levels, {ROWS} rows, one thread)", "",
        "| mixtures | float32 samples/s | float64 samples/s |", "|---|---|---|",
    ]
    for kind in ("typical", "sharp"):
        lines.append(f"| {kind} | {quant[f'{kind}_float32']:,.0f} | {quant[f'{kind}_float64']:,.0f} |")
    lines += ["", f"Goal: {GOALS['quantile_samples_per_s']:,} samples/s: {'met' if best >= GOALS['quantile_samples_per_s'] else 'not met'} "
              f"({best:,.0f} for MDN-like mixtures in float32). 'typical': weights softmax(N(0,1)), locations N(0,4), scales "
              "0.1-1.1; 'sharp': scales exp(N(-2, 9)), the solver's hard case, where every level needs a few more safeguarded "
              "Newton steps on a CDF that jumps within a few float32 ulps.", "",
              f"## KL to the exact posterior (MDN document, {ROWS} rows, one thread)", "",
              "| rule | seconds | max error vs uniform panels 100x narrower (every 10th row) |", "|---|---|---|",
              f"| Gauss-Legendre panels, refined around narrow components, checked by a coarser rule | {kl['panels_s']:.3f} | {kl['panels_max_error']:.1e} |",
              f"| the posterior's 4001-point trapezoid grid (before) | {kl['grid_4001_s']:.3f} | {kl['grid_4001_max_error']:.1e} |", "",
              "## Whole runs", "",
              "| run | wall s | start-up | train | validation | test | figures | test/train | threads | NLL | eval samples/s |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        t = r["timing"]
        lines.append(f"| `{' '.join(r['overrides'])}` | {r['wall_s']:.1f} | {t['startup_s']:.1f} | {t['train_s']:.1f} | {t['validation_s']:.1f} | "
                     f"{t['test_s']:.2f} | {t['figures_s']:.1f} | {t['test_s'] / t['train_s']:.3f} | {r['threads']} | "
                     f"{r['metrics']['nll']:.4f} | {r['metrics'].get('eval_samples_per_s', float('nan')):,.0f} |")
    ratio = runs[0]["timing"]["test_s"] / runs[0]["timing"]["train_s"]
    lines += ["", f"Goal: mdn_doc test evaluation at most {GOALS['mdn_doc_test_over_train']:.0%} of training: "
              f"{'met' if ratio <= GOALS['mdn_doc_test_over_train'] else 'not met'} ({ratio:.1%})."]
    if gains:
        per_run = f", {meta['thread_steps']} steps per run" if meta.get("thread_steps") else ""
        rounds = f"best of {meta['thread_rounds']} alternating rounds" if meta.get("thread_rounds", 2) > 1 else "one round"
        lines += ["", f"## Threads (diamonds MDN, densbench's step time, {rounds}{per_run})", "",
                  f"| rows per step | 1 thread ms | {gains[0]['cores']} threads ms | speed-up |", "|---|---|---|---|"]
        lines += [f"| {g['rows']:,}{' (full batch)' if g['batch'] is None else ''} | {g['one_ms']:.2f} | {g['all_ms']:.2f} | {g['gain']:.2f}x |"
                  for g in gains]
        lines += ["", f"loop.threads=auto gives a job all cores from {AUTO_THREADS_MIN_ROWS:,} rows per step, one thread below."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--diamonds", action="store_true", help="also time the diamonds MDN default run (a few minutes), and --threads")
    ap.add_argument("--threads", action="store_true", help="also time the diamonds MDN's steps at one thread and at all cores")
    ap.add_argument("--thread-steps", type=int, default=400, help="training steps of each run timed by --threads")
    ap.add_argument("--thread-rounds", type=int, default=2, help="rounds of --threads (thread counts alternating)")
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench_eval"))
    args = ap.parse_args()
    meta = {"machine": f"{platform.machine()} {torch.get_num_threads()} threads", "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"), "python": platform.python_version(), "thread_steps": args.thread_steps,
            "thread_rounds": args.thread_rounds}
    quant, kl = quantile_rates(), kl_comparison()
    torch.set_num_threads(usable_cores())
    with tempfile.TemporaryDirectory() as tmp:
        fams = families(Path(tmp))
        runs = [whole_run(["experiment=mdn_doc"], Path(tmp))]
        gains = []
        if args.diamonds:
            runs.append(whole_run(["dataset=diamonds", "loss=mdn"], Path(tmp)))
        if args.diamonds or args.threads:
            gains = thread_gain(Path(tmp), rounds=args.thread_rounds, steps=args.thread_steps)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "families": fams, "quantiles": quant, "kl": kl, "runs": runs,
                                                    "threads": gains}, indent=2) + "\n")
    out.with_suffix(".md").write_text(render(meta, quant, kl, runs, gains, fams))
    print(f"wrote {out}.md")


if __name__ == "__main__":
    main()
