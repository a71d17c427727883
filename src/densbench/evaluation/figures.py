"""Figures of a trained model's predictive distribution over the data (per run)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.distributions import Bernoulli, Categorical  # noqa: E402

from densbench.data.datasets import Prepared  # noqa: E402
from densbench.distributions.classes import NormalMixture  # noqa: E402
from densbench.distributions.ops import quantile  # noqa: E402

DATA_COLOR, MODEL_COLOR, TRUTH_COLOR = "#5DA899", "#2E2585", "#C26A77"


def _band(ax, x, dist, color, label, truth=False):
    lo, hi = quantile(dist, torch.tensor([0.025, 0.975]))
    mean = dist.mean
    ls = "--" if truth else "-"
    ax.plot(x, mean.numpy(), ls, color=color, lw=1.8, label=f"{label} mean")
    if truth:
        ax.plot(x, lo.numpy(), ":", color=color, lw=1.2, label=f"{label} 95% interval")
        ax.plot(x, hi.numpy(), ":", color=color, lw=1.2)
    else:
        ax.fill_between(x, lo.numpy(), hi.numpy(), color=color, alpha=0.25, lw=0, label=f"{label} 95% interval")


# TensorBoard shows an image scaled to its card, about 500 px wide, where a point of a figure W inches
# wide is 500 / (72 W) px: the mixture's four panels, two a row on 9 inches, with these sizes keep its
# text at least 8 px high and its curves 1.5 px wide there (four in a row on 18 inches drew 3-4 px text)
MIXTURE_SIZE = (9.0, 7.5)
TITLE_PT, LABEL_PT, TICK_PT, LEGEND_PT, LINE_PT, MARKER_PT2 = 14, 13, 12, 11, 2.5, 14


def _mixture_figure(g: np.ndarray, dist: NormalMixture, data, title: str):
    """A mixture's conditional density over the data, its components' means and spreads, weights and samples: a 2x2 grid."""
    fig, axes = plt.subplots(2, 2, figsize=MIXTURE_SIZE)
    density, components, weights, samples = axes.ravel()
    lo, hi = np.percentile(data.y, [0.5, 99.5])
    pad = 0.1 * (hi - lo)
    ys = torch.linspace(lo - pad, hi + pad, 200, dtype=dist.loc.dtype)
    dens = dist.log_prob(ys.view(-1, 1)).exp().numpy()  # [Y, X]
    # each column scaled to its own maximum: sharp and broad conditionals stay visible side by side
    dens = dens / np.maximum(dens.max(0, keepdims=True), 1e-300)
    density.imshow(dens, origin="lower", aspect="auto", extent=(g[0], g[-1], ys[0], ys[-1]), cmap="Blues", alpha=0.9)
    density.scatter(data.x[data.test, 0], data.y[data.test], s=MARKER_PT2, alpha=0.35, color=DATA_COLOR, label="test data")
    density.set_ylim(float(ys[0]), float(ys[-1]))
    density.set_ylabel(data.target_name, fontsize=LABEL_PT)
    w, mu, sd = dist.weights.numpy(), dist.loc.numpy(), dist.scale.numpy()
    for k in range(w.shape[1]):
        components.plot(g, mu[:, k], lw=LINE_PT, label=f"k={k}")
        components.fill_between(g, mu[:, k] - sd[:, k], mu[:, k] + sd[:, k], alpha=0.2, lw=0)
        weights.plot(g, w[:, k], lw=LINE_PT)
    weights.set_ylim(-0.02, 1.02)
    gen = torch.Generator().manual_seed(0)
    comp = torch.multinomial(dist.weights, 1, generator=gen)[:, 0]
    idx = torch.arange(len(g))
    samp = dist.loc[idx, comp] + dist.scale[idx, comp] * torch.randn(len(g), generator=gen, dtype=dist.loc.dtype)
    samples.scatter(data.x[data.test, 0], data.y[data.test], s=MARKER_PT2, alpha=0.3, color=DATA_COLOR, label="test data")
    samples.scatter(g, samp.numpy(), s=MARKER_PT2, color=MODEL_COLOR, label="model samples")
    names = ("p(y|x), each x scaled to its peak", "component means +- sigma", "mixing weights pi_k", "samples from the mixture")
    for ax, name in zip(axes.ravel(), names):
        ax.set_title(name, fontsize=TITLE_PT)
        ax.set_xlabel(data.feature_names[0], fontsize=LABEL_PT)
        ax.tick_params(labelsize=TICK_PT)
    for ax in (density, samples):
        ax.legend(loc="best", fontsize=LEGEND_PT)
    fig.suptitle(title, fontsize=TITLE_PT)
    fig.tight_layout()
    return fig


def predictive_figure(predict, prep: Prepared, title: str = "", points: int = 300):
    """`predict(x in original units) -> predictive distribution`, drawn over the data: bands (Gaussian, counts), density and components
    (mixtures), class probabilities (classification); predicted vs observed for several inputs."""
    data = prep.data
    test = data.test
    if data.n_features != 1:
        return _predicted_vs_observed(predict, prep, title)
    xs = data.x[:, 0]
    grid = np.linspace(xs.min(), xs.max(), points).reshape(-1, 1)
    dist = predict(grid)
    g = grid[:, 0]
    if isinstance(dist, NormalMixture):
        return _mixture_figure(g, dist, data, title)
    truth = data.truth(torch.as_tensor(grid, dtype=torch.float64)) if data.truth is not None else None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(data.x[test, 0], data.y[test], s=6, alpha=0.35, color=DATA_COLOR, label="test data")
    if isinstance(dist, (Bernoulli, Categorical)):
        probs = dist.probs if isinstance(dist, Categorical) else torch.stack([1 - dist.probs, dist.probs], -1)
        for c in range(probs.shape[-1]):
            ax.plot(g, probs[:, c].numpy(), lw=1.8, label=f"P(class {c})")
        if truth is not None:
            tp = truth.probs if isinstance(truth, Categorical) else torch.stack([1 - truth.probs, truth.probs], -1)
            ax.plot(g, tp[:, -1].numpy(), "--", color=TRUTH_COLOR, label=f"true P(class {tp.shape[-1] - 1})")
    else:
        _band(ax, g, dist, MODEL_COLOR, "model")
    if truth is not None and not isinstance(truth, (Bernoulli, Categorical)):
        _band(ax, g, truth, TRUTH_COLOR, "truth", truth=True)
    ax.set_xlabel(data.feature_names[0])
    ax.set_ylabel(data.target_name)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    return fig


def _predicted_vs_observed(predict, prep: Prepared, title: str):
    data = prep.data
    dist = predict(data.x[data.test])
    y = data.y[data.test]
    fig, ax = plt.subplots(figsize=(6.5, 5))
    if isinstance(dist, (Bernoulli, Categorical)):
        p = dist.probs if isinstance(dist, Bernoulli) else dist.probs.max(-1).values
        ax.hist(p.numpy(), bins=20, color=MODEL_COLOR, alpha=0.7)
        ax.set_xlabel("predicted probability (top class)")
        ax.set_ylabel("test samples")
    else:
        mean = dist.mean.numpy()
        lo, hi = (q.numpy() for q in quantile(dist, torch.tensor([0.025, 0.975])))
        order = np.argsort(mean)
        # the interval as a segment, not error bars around the mean: for skewed predictions (counts
        # with most mass at 0) the mean can lie outside its own central interval
        ax.hlines(y[order], lo[order], hi[order], color=MODEL_COLOR, alpha=0.3, lw=0.8, label="test: 95% interval")
        ax.plot(mean[order], y[order], "o", ms=2.5, color=MODEL_COLOR, alpha=0.6, label="test: mean")
        lims = [min(lo.min(), y.min()), max(hi.max(), y.max())]
        ax.plot(lims, lims, "--", color="grey", lw=1)
        ax.set_xlabel(f"predicted {data.target_name}")
        ax.set_ylabel(f"observed {data.target_name}")
        ax.legend(loc="best", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
