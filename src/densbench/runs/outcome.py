"""What a trained and tested job leaves behind: its result.json record, best weights, figures, hyperparameters and flags."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import matplotlib.pyplot as plt
import torch
from omegaconf import DictConfig, OmegaConf

from densbench.training import checkpoints
from densbench.runs.assembly import Built, JobSpec
from densbench.atomic import save_figure
from densbench.report.calibration_plot import calibration_figure
from densbench.evaluation.figures import predictive_figure
from densbench.training.job_log import JobLog
from densbench.runs.labels import title
from densbench.training.loop import Loop
from densbench.results import read_result
from densbench.signals import JobSignals
from densbench.timing import JobClock


def job_outcome(spec: JobSpec, j: int, b: Built, signals: JobSignals, clock: JobClock) -> dict[str, Any]:
    """One job's share of a trained and tested stack: what result.json records, and its files."""
    module, state, data = b.module, b.module.state, b.datas[j]
    models = module.jobs[j].models
    diverged = [(i, module.diverged[m]) for i, m in enumerate(models) if m in module.diverged]
    if diverged:
        (spec.run_dir / "checkpoints" / checkpoints.LAST).unlink(missing_ok=True)  # non-finite weights must not seed a rerun
        member, message = diverged[0]
        return {"diverged": message if len(models) == 1 else f"ensemble member {member}: {message}"}
    history = [state.history[m] for m in models]
    metrics = dict(module.test_results[j])
    metrics.update(b.throughput.figures)
    curves = dict(module.test_curves[j])
    curves.update({f"train_{k}": v for k, v in history[0].items()})
    steps = history[0]["step"][-1] if history[0]["step"] else state.opt_steps
    artifacts: dict[str, str] = {}
    out: dict[str, Any] = {
        "metrics": metrics,
        # operations served by a generic method (a solver, a quadrature) instead of a closed form
        "fallbacks": module.fallbacks(j),
        "curves": curves,
        "train": _train_record(b, j, history, steps),
        "artifacts": artifacts,
    }
    if b.trained_by[j] is not None:  # trained once for the jobs that differ only in post-hoc keys
        out["trained_by"] = str(b.trained_by[j])
    if spec.weights_from is not None:  # trained by a finished run: its training record, not this one's
        trained = read_result(spec.weights_from) or {}
        out["train"] = {**trained.get("train", {}), "stack": out["train"]["stack"], "threads": out["train"]["threads"]}
        out["curves"].update({k: v for k, v in (trained.get("curves") or {}).items() if k.startswith("train_")})
    recalibration = module.jobs[j].recalibration
    if recalibration.active:
        out["metrics_uncalibrated"] = module.uncalibrated_results[j]
        out["curves_uncalibrated"] = module.uncalibrated_curves[j]
        out["recalibration"] = {"method": recalibration.name, "fitted_on": f"validation split ({len(data.val)} rows)",
                                "changes_density": recalibration.changes_density, **recalibration.fitted()}
    if len(models) > 1:
        out["train"]["members"] = history
    if module.jobs[j].ensemble:
        out["metrics_members"] = module.member_results[j]
    if module.choices[j] is not None:
        out["chosen"] = chosen_record(module, j)
    if module.mixture_val_nll[j] is not None:
        out["validation"] = {"nll": module.mixture_val_nll[j], "of": "the members' uniform mixture, each at its selected epoch",
                             "on": "validation rows"}
    if b.trainer.is_global_zero:
        _write_files(spec, j, b, out, steps, signals, clock)
    out["trivial"] = trivial_scores(data)
    out["flags"] = flags(b.loop, out)
    return out


def chosen_record(module: Any, j: int) -> dict[str, Any]:
    """What a job chose on its validation rows: the candidate's dropout rate, the noise level (as MC dropout's tau)."""
    choice, job = module.choices[j], module.jobs[j]
    out: dict[str, Any] = {"on": "validation rows", "val_nll": choice.val_nll}
    rates = getattr(module.backbone, "dropout_rates", None)
    if rates is not None:
        out["dropout"] = float(rates[job.models[choice.index]])
    if choice.noise is not None:
        out["noise_std"] = choice.noise
        out["noise_precision"] = 1.0 / choice.noise ** 2
    return out


def _train_record(b: Built, j: int, history: list[dict], steps: int) -> dict[str, Any]:
    """How a job trained: steps, model selection, data sizes, the stack it was part of."""
    module, state, data = b.module, b.module.state, b.datas[j]
    best = [float(b.selection.best_score[m]) for m in module.jobs[j].models]
    return {
        "opt_steps": steps,
        "max_steps": state.total_steps,
        "eval_every": state.eval_every,
        "steps_per_call": b.steps_per_call,
        "batch_size": b.batch_size,
        "stopped_early": steps < state.total_steps,
        "best_val_nll": (best[0] if len(best) == 1 else sum(best) / len(best)) if b.has_val else None,
        "last_val_nll": history[0]["val_nll"][-1] if history[0]["val_nll"] else None,
        "model_selection": "best val/nll" if b.has_val else "last weights (no validation split)",
        "n_train": len(data.train),
        "n_val": len(data.val),
        "n_test": len(data.test),
        "target_resolution": data.resolution,
        "parameters": sum(p[0].numel() for p in module.weights().values()),
        "stack": {"models": module.stack.size, "jobs": len(module.jobs), "members": len(module.jobs[j].models)},
        "threads": torch.get_num_threads(),
    }


def _write_files(spec: JobSpec, j: int, b: Built, out: dict[str, Any], steps: int, signals: JobSignals,
                 clock: JobClock) -> None:
    """On rank 0: the selected weights, the loggers' hyperparameters and end, the figures; their paths into `out`."""
    module, models, artifacts = b.module, b.module.jobs[j].models, out["artifacts"]
    recalibration = module.jobs[j].recalibration
    selected = b.selection.selected(module)
    checkpoints.save_atomic({"state_dict": {k: v[models].cpu() for k, v in selected.items()},
                             "config": spec.result.get("config") or OmegaConf.to_container(spec.cfg, resolve=True)},
                            spec.run_dir / "checkpoints" / checkpoints.BEST)
    signals.enter("writing figures")
    log = b.logs[j]
    if log:
        log.hyperparams(flat_hparams(spec.cfg, spec.result["labels"]))
        artifacts.update(log.locations(spec.run_dir))
        out["sweep_end"] = log.sweep_hooks()
    figures_started = time.perf_counter()
    if spec.cfg.figures and b.datas[j].task != "multivariate":  # the figures draw one target's predictive
        name = title(spec.result["labels"], str(spec.cfg.recalibrate))
        artifacts.update(write_figures(name, predictor(module, j, b.preps[j]), b.preps[j], module.test_curves[j],
                                       spec.run_dir, log, steps,
                                       module.uncalibrated_curves[j] if recalibration.changes_density else None))
    if log:
        log.finalize("success")
    out["timing"] = clock.summary(figures_s=time.perf_counter() - figures_started)


# a run this much worse than predicting the training targets' mean and spread has not learned, whatever
# the scale of its targets (absolute thresholds miss a run at RMSE 1e5 on targets of order 1)
TRIVIAL_RMSE_FACTOR = 10.0
TRIVIAL_NLL_MARGIN = 10.0  # nats


def trivial_scores(data: Any) -> dict[str, float] | None:
    """Test NLL and RMSE of the trivial predictive, a Gaussian with the training targets' mean and
    standard deviation (regression and counts; None for classes or an empty split)."""
    if data.task == "multiclass" or not len(data.test) or not len(data.train):
        return None
    if data.y.ndim == 2:  # several targets: one Gaussian per column, the row's NLL their sum
        train, test = data.y[data.train].astype("float64"), data.y[data.test].astype("float64")
        per = [trivial_scores_of(train[:, c], test[:, c], max(float(train[:, c].std()), 1e-12)) for c in range(train.shape[1])]
        return {"nll": sum(p["nll"] for p in per), "rmse": math.sqrt(sum(p["rmse"] ** 2 for p in per) / len(per))}
    train, test = data.y[data.train].astype("float64").ravel(), data.y[data.test].astype("float64").ravel()
    return trivial_scores_of(train, test, max(float(train.std()), 1e-12))


def trivial_scores_of(train: Any, test: Any, sd: float) -> dict[str, float]:
    """NLL and RMSE on `test` of the Gaussian with `train`'s mean and standard deviation sd (one target column)."""
    mean = float(train.mean())
    z = (test - mean) / sd
    return {"nll": float((0.5 * z * z).mean() + math.log(sd) + 0.5 * math.log(2 * math.pi)),
            "rmse": float(math.sqrt(((test - mean) ** 2).mean()))}


def predictor(module: Any, job: int, prep: Any) -> Callable[[Any], Any]:
    """x in original units (numpy) -> a job's predictive distribution, for figures."""

    @torch.no_grad()
    def predict(x_orig):
        models = module.tested_models(job)
        dtype = next(module.parameters()).dtype
        x = torch.as_tensor(prep.x_scaler(x_orig), dtype=dtype, device=module.device)
        module.eval()
        pred, _ = module.predictive(job, module.passes_on(x, models))
        return pred

    return predict


def write_figures(name: str, predict: Callable[[Any], Any], prep: Any, curves: dict, run_dir: Path, log: JobLog,
                  step: int, before: dict | None = None) -> dict[str, str]:
    """Predictive-distribution and calibration figures: PNGs in the run directory, and to every logger that takes figures."""
    out = {}
    figs = {"figure": ("predictive", predictive_figure(predict, prep, title=name))}
    if curves:
        figs["calibration_figure"] = ("calibration", calibration_figure([curves], title=name, before=[before] if before else None))
    for key, (name, fig) in figs.items():
        save_figure(fig, run_dir / f"{name}.png", dpi=110)
        log.figure(name, fig, step)
        plt.close(fig)
        out[key] = f"{name}.png"
    return out


def flat_hparams(cfg: DictConfig, lab: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters TensorBoard's HParams tab lists beside a run's test metrics (lab: the run's labels)."""
    flat = {f"{k}": v for k, v in lab.items() if v is not None}
    flat.update(
        {
            "lr": float(cfg.optimizer.lr),
            "optimizer": str(cfg.optimizer._target_).rsplit(".", 1)[-1],
            "hidden": str(list(cfg.model.hidden)),
            "max_steps": cfg.loop.max_steps if cfg.loop.max_epochs is None else f"{cfg.loop.max_epochs} epochs",
            "batch_size": str(cfg.loop.batch_size),
        }
    )
    return flat


def flags(loop: Loop, out: dict[str, Any]) -> list[str]:
    """Warnings a report must show beside a finished run: validation NLL that ran away, absurd values."""
    found = []
    train = out["train"]
    best, last = train.get("best_val_nll"), train.get("last_val_nll")
    margin = loop.flag_margin
    if best is not None and last is not None and last > best + margin:
        found.append(f"val_nll_rose: the last validation NLL {last:.4g} is more than {margin:g} above the best {best:.4g}")
    absurd = loop.absurd_loss
    worst = max((abs(v) for v in out["curves"].get("train_train_loss", []) if math.isfinite(v)), default=0.0)
    if worst > absurd:
        found.append(f"exploded: a period's mean training loss reached {worst:.3g} (above {absurd:g})")
    for name in ("nll", "crps", "rmse"):
        v = out["metrics"].get(name)
        if v is not None and math.isfinite(v) and abs(v) > absurd:
            found.append(f"exploded: test {name} is {v:.3g} (above {absurd:g})")
    trivial, metrics = out.get("trivial"), out["metrics"]
    if trivial:
        rmse, nll = metrics.get("rmse"), metrics.get("nll")
        if rmse is not None and math.isfinite(rmse) and rmse > TRIVIAL_RMSE_FACTOR * trivial["rmse"]:
            found.append(f"worse_than_trivial: test rmse {rmse:.4g} is more than {TRIVIAL_RMSE_FACTOR:g}x that of "
                         f"predicting the training mean ({trivial['rmse']:.4g})")
        if nll is not None and math.isfinite(nll) and nll > trivial["nll"] + TRIVIAL_NLL_MARGIN:
            found.append(f"worse_than_trivial: test nll {nll:.4g} is more than {TRIVIAL_NLL_MARGIN:g} nats above the "
                         f"training targets' Gaussian ({trivial['nll']:.4g})")
    return found
