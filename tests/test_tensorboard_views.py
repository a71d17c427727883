"""What a newcomer sees in TensorBoard: a sweep's runs without an empty run "." beside them, and a
predictive figure whose panels stay readable at the card width TensorBoard shows images at."""

import time

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter


def _fake_run(root, name, loss, nll):
    """A finished job as a sweep's end sees it: its TensorBoard folder (hyperparameters, session, a final
    metric) and result.json's record of it."""
    from tensorboard.plugins.hparams import summary_v2

    tb = root / name / "tb"
    tb.mkdir(parents=True)
    (tb / "hparams.yaml").write_text(f"loss: {loss}\nlr: 0.01\n")
    writer = EventFileWriter(str(tb))
    writer.add_event(Event(wall_time=time.time(), summary=summary_v2.hparams_pb({"loss": loss, "lr": 0.01})))
    writer.add_event(Event(wall_time=time.time(), step=40, summary=Summary(value=[Summary.Value(tag="test/nll", simple_value=nll)])))
    writer.close()
    result = {"status": "ok", "metrics": {"nll": nll}, "artifacts": {"tensorboard": "tb"},
              "sweep_end": {"tensorboard": "densbench.report.tb_experiment:declare"}}
    return root / name, result


def _tensorboard(logdir):
    """The runs TensorBoard lists for a log directory, each one's hparams tags, and the experiment its HParams tab shows."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider
    from tensorboard.backend.event_processing import (
        plugin_event_multiplexer as multiplexer,
    )
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context

    mux = multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(logdir))
    ctx = backend_context.Context(base_plugin.TBContext(data_provider=provider, logdir=str(logdir)))
    rc = context.RequestContext()
    hp = ctx.hparams_metadata(rc, "")
    experiment = ctx.experiment_from_metadata(rc, "", True, hp, ctx.hparams_from_data_provider(rc, "", 100))
    return set(mux.Runs()), hp, experiment


def test_a_sweeps_hparams_experiment_lands_in_a_run_not_in_the_sweep_root_as_a_run_named_dot(tmp_path):
    from tensorboard.plugins.hparams import metadata

    from densbench.report import tb_experiment
    from densbench.report.sweep import sweep_end

    sweep = tmp_path / "multirun"
    runs = [_fake_run(sweep, "loss=nll", "nll", 0.9), _fake_run(sweep, "loss=kl", "kl", 0.8)]
    (sweep / tb_experiment.FILE).write_bytes(b"")  # a declaration an earlier version left at the root
    sweep_end(sweep, runs)
    for _ in range(2):  # and a second sweep end (the sweep extended) declares it again, in the same place
        assert not [p.name for p in sweep.iterdir() if "tfevents" in p.name]
        names, hp, experiment = _tensorboard(sweep)
        assert names == {"loss=nll/tb", "loss=kl/tb"}  # no "." (the sweep root) among them
        assert [run for run, tags in hp.items() if metadata.EXPERIMENT_TAG in tags] == ["loss=kl/tb"]
        assert all(metadata.SESSION_START_INFO_TAG in hp[run] for run in names)  # every job is still a session
        # the declared experiment, not one TensorBoard inferred: the swept key first, test/nll a metric
        assert [h.name for h in experiment.hparam_infos] == ["loss", "lr"] and experiment.hparam_infos[0].differs
        assert [m.name.tag for m in experiment.metric_infos] == ["test/nll"]
        sweep_end(sweep, runs)
    assert len(list(sweep.rglob(tb_experiment.FILE))) == 1


def _mixture_figure():
    """The predictive figure of a two-component mixture over a tiny one-feature data set."""
    from densbench.data import datasets as D
    from densbench.distributions.classes import NormalMixture
    from densbench.evaluation.figures import predictive_figure

    prep = D.prepare(D.load(OmegaConf.create({"name": "two_sines", "n_train": 60, "n_val": 20, "n_test": 40, "seed": 0, "offset": 1.0, "noise": 0.2})))

    def predict(x):
        x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
        loc = torch.cat([torch.sin(x), -torch.sin(x)], -1)
        return NormalMixture(torch.zeros_like(loc), loc, torch.full_like(loc, 0.3))

    return predictive_figure(predict, prep, title="experiment=fast,loss=mdn")


CARD_PX = 500  # about the width TensorBoard's image card scales a figure to


def test_the_mixture_figure_stays_readable_at_tensorboards_card_width():
    import matplotlib.pyplot as plt

    fig = _mixture_figure()
    try:
        axes = [a for a in fig.axes if a.get_visible()]
        assert len(axes) == 4  # density, components, weights, samples: the same panels as before
        scale = CARD_PX / (fig.get_figwidth() * 72)  # points in the figure -> pixels on the card
        rows = {}
        for a in axes:
            rows.setdefault(round(a.get_position().y0, 2), []).append(a)
        assert max(len(row) for row in rows.values()) <= 2  # two panels a row at most: each half the card wide
        texts = [t for a in axes for t in (a.xaxis.label, a.yaxis.label, a.title, *a.get_xticklabels(), *a.get_yticklabels())]
        texts += [t for a in axes if a.get_legend() for t in a.get_legend().get_texts()]
        small = sorted({round(t.get_fontsize() * scale, 1) for t in texts if t.get_text() and t.get_visible()})
        assert small[0] >= 8, f"text shown {small[0]} px high on a {CARD_PX} px card"
        widths = [ln.get_linewidth() * scale for a in axes for ln in a.get_lines() if ln.get_xdata().size > 1]
        assert widths and min(widths) >= 1.5, "curves thinner than 1.5 px on the card"
    finally:
        plt.close(fig)


@pytest.fixture(autouse=True)
def _no_open_figures():
    import matplotlib.pyplot as plt

    yield
    plt.close("all")
