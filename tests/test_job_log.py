"""A job's loggers: curve points held and written in bursts, one event per step; final values at once."""

from pathlib import Path

import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from conftest import make_cfg
from densbench.evaluation.metrics import ModelScores, PredictiveMetrics
from densbench.runs.execution import JobSpec, run_group
from densbench.training.job_log import JobLog


def _events(log_dir: Path) -> list:
    return [e for f in sorted(log_dir.rglob("events.out.tfevents*")) for e in EventFileLoader(str(f)).Load() if e.summary.value]


def test_curve_points_wait_for_flush_and_one_step_is_one_event(tmp_path):
    log = JobLog([TensorBoardLogger(str(tmp_path), name="tb", version="")])
    log.metrics({"train/loss": 1.5}, step=10)
    log.metrics({"val/nll": 2.5}, step=10)
    log.metrics({"train/loss": 1.0}, step=20)
    log.loggers[0].experiment.flush()
    assert _events(tmp_path) == []  # held: nothing written yet
    log.metrics({"test/nll": 3.0}, step=20, final=True)  # a final value goes out at once, after what was held
    log.loggers[0].experiment.flush()
    events = _events(tmp_path)
    assert [(e.step, sorted(v.tag for v in e.summary.value)) for e in events] == [
        (10, ["curves/train/loss", "curves/val/nll"]), (20, ["curves/train/loss"]), (20, ["test/nll"])]
    # the loader hands scalars back as tensors (TensorBoard's data-compat conversion)
    assert [v.tensor.float_val[0] if v.HasField("tensor") else v.simple_value for v in events[0].summary.value] == [1.5, 2.5]
    log.metrics({"val/nll": 2.0}, step=30)
    log.finalize()  # the end writes whatever is held
    assert _events(tmp_path)[-1].step == 30


def test_jobs_sharing_their_models_log_their_curves_once(tmp_path):
    common = ["experiment=fast", "loop.max_steps=60", "loop.eval_every=20", "logger=tensorboard", "figures=false"]
    cfgs = [make_cfg(*common), make_cfg(*common, "recalibrate=scale")]
    res = run_group([JobSpec(cfg, tmp_path / f"j{i}", launcher="stacked") for i, cfg in enumerate(cfgs)])
    assert [r["status"] for r in res] == ["ok", "ok"]
    plain, scaled = (_events(tmp_path / f"j{i}" / "tb") for i in range(2))
    tags = lambda events: {v.tag for e in events for v in e.summary.value}  # noqa: E731
    assert {"curves/val/nll", "curves/train/loss"} <= tags(plain)
    assert sorted({e.step for e in plain if any(v.tag == "curves/val/nll" for v in e.summary.value)}) == [20, 40, 60]
    assert not any(t.startswith("curves/") for t in tags(scaled))  # its curves are the plain job's
    assert "test/nll" in tags(scaled) and "test_uncalibrated/nll" in tags(scaled)


def test_a_metric_keeps_its_hash_as_its_state_changes():
    # nn.Module traversals keep submodules in sets: torchmetrics' own hash reads every state (a stack's
    # hundreds of metrics paid for it on every traversal) and changes when reset() puts new state tensors
    # in place, so a set that held the metric would lose it; densbench's metrics hash by identity
    scores = ModelScores("regression", 2)
    before, members = hash(scores), {scores}
    scores.update(torch.distributions.Normal(torch.zeros(2, 3), torch.ones(2, 3)), torch.zeros(2, 3))
    scores.compute()
    scores.reset()
    assert hash(scores) == before and scores in members
    assert hash(PredictiveMetrics("regression")) != hash(PredictiveMetrics("regression"))


def test_throttle_is_due_once_its_interval_has_passed_since_the_last_mark(monkeypatch):
    from densbench import timing

    now = [1000.0]
    monkeypatch.setattr(timing.time, "monotonic", lambda: now[0])
    throttle = timing.Throttle(10.0)
    now[0] += 9.99
    assert not throttle.due()
    now[0] += 0.01
    assert throttle.due()
    throttle.mark()
    assert not throttle.due()  # counted again from the mark
    assert timing.Throttle(0.0).due()  # every_s=0: every time
