"""A run's progress lines: the time left is told from the step rate after the first (warm-up) period."""

from __future__ import annotations

import re
from types import SimpleNamespace

from densbench.training import progress_bar
from densbench.training.progress_bar import Progress


def _lines_of_a_run(monkeypatch, capsys, periods):
    """Drive Progress through validations at the given (seconds, steps) ends; the lines it said."""
    clock = {"t": 0.0}
    monkeypatch.setattr(progress_bar.time, "perf_counter", lambda: clock["t"])
    monkeypatch.setattr(progress_bar, "LINE_EVERY_S", 0.0)
    state = SimpleNamespace(opt_steps=0, total_steps=1000, history=[{"val_nll": [0.5]}], active=[True])
    module, trainer = SimpleNamespace(state=state), SimpleNamespace(is_global_zero=True, sanity_checking=False)
    bar = Progress("run", interactive=False)
    bar.on_train_start(trainer, module)
    for t, steps in periods:
        clock["t"], state.opt_steps = t, steps
        bar.on_validation_end(trainer, module)
    return [x for x in capsys.readouterr().err.splitlines() if x.startswith("densbench: run:")]


def test_the_time_left_comes_from_the_steps_after_warm_up(monkeypatch, capsys):
    # 10 s for the first 100 steps (imports, first validation), then 1 s per 100 steps: 700 steps left
    # after step 300 take 7 s, where the average since the start (12 s for 300 steps) would say 28 s
    lines = _lines_of_a_run(monkeypatch, capsys, [(10.0, 100), (11.0, 200), (12.0, 300)])
    assert "left" not in lines[0]  # one period measures nothing but warm-up
    assert re.search(r"100 steps/s, val_nll 0\.5000, 7\.0 s left$", lines[-1]), lines[-1]
