"""Proper scores and calibration of predictive distributions as torchmetrics ``Metric``s.

Every state is a sum over samples, so DDP reduction is a plain sum and the result on N processes
equals the result on one. Definitions follow REFERENCE.md section 3; the calibration grid and the
interval/check score levels are those of uncertainty-toolbox, ECE binning that of torchmetrics.
All values are in original target units.
"""

from __future__ import annotations


import torch
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Distribution
from torchmetrics import Metric

from densbench.distributions.dispatch import Unavailable, recording_fallbacks
from densbench.distributions.ops import crps, interval_nll, is_discrete, kl_to_truth, pit, quantile, target_log_prob

CAL_LEVELS = 100  # expected proportions linspace(0, 1, 100)
SCORE_LEVELS = 99  # interval and check scores over linspace(0.01, 0.99, 99)
PIT_BINS = 20
ECE_BINS = 15
COVERAGES = (0.5, 0.9, 0.95)
# every quantile level any score needs: multiples of 0.005 in [0.005, 0.995]
_Q_LEVELS = torch.arange(1, 200, dtype=torch.float64) / 200


# which metrics each part of an update produces (NaN when the part cannot be computed)
MISSING_METRICS = {
    "crps": ("crps",),
    "reliability": ("ece",),
    "pit": ("pit_ks", "mace", "rmsce", "miscal_area", "quantile_mace"),
    "sharpness": ("sharpness",),
    "binned": ("nll_binned",),
    "intervals": ("interval_score", "check_score", "coverage50", "coverage90", "coverage95", "width50", "width90", "width95"),
}


def _q_index(p: Tensor) -> Tensor:
    return torch.round(p * 200).long() - 1


class SummedMetric(Metric):
    """A torchmetrics Metric whose states are sums (DDP reduces them exactly), hashed by identity."""

    full_state_update = False
    higher_is_better = False
    # torchmetrics hashes a metric by its id and every state; each nn.Module traversal (train(), eval(),
    # parameters(): Lightning makes several per validation) puts every submodule in a set, and a
    # stack's hundreds of metric objects then cost 326,758 hash calls in one Boston stack of 80 jobs
    # (cProfile). The id alone is as unique.
    __hash__ = object.__hash__


class PredictiveMetrics(SummedMetric):
    """NLL, accuracy, CRPS, PIT, calibration, sharpness, intervals and truth gaps of one split.

    ``update(dist, y, truth=None, u=None, intervals=None)`` takes the predictive distribution (batch
    [N]) and targets in original units, the true distribution where known, uniforms for the
    randomised PIT of discrete targets, and central intervals {level: (lo, hi)} that replace the
    predictive's own at those COVERAGES levels (conformal intervals). ``full=False`` keeps only what
    validation needs (NLL and the point error); ``intervals=False`` leaves out the scores built on
    quantiles at 199 levels (interval and check scores, coverages and widths), which cost a quantile
    search per row and level for a mixture (an ensemble's members are scored without them).
    """

    def __init__(self, task: str, full: bool = True, intervals: bool = True, resolution: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.task, self.full, self.intervals = task, full, intervals
        self.resolution = resolution  # the targets' recording grid h: nll_binned scores the interval y +- h/2
        self.fallbacks: dict[str, str] = {}  # operations served by a generic method instead of a closed form
        self.missing: dict[str, str] = {}  # metric parts no method could compute for this distribution
        self.classification = task in ("binary", "multiclass")
        scalars = ["n", "nll", "sq_err", "correct", "n_truth", "oracle_nll", "kl_truth"]
        if full:
            scalars += ["crps", "var", "interval_score", "check_score", "nll_binned"]
        for name in scalars:
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        if full:
            vectors = {"pit_hist": PIT_BINS, "ece_count": ECE_BINS + 1, "ece_conf": ECE_BINS + 1, "ece_acc": ECE_BINS + 1}
            if not self.classification:
                vectors.update(interval_hits=CAL_LEVELS, quantile_hits=CAL_LEVELS)
                vectors.update(cover_hits=len(COVERAGES), width=len(COVERAGES))
            for name, size in vectors.items():
                self.add_state(name, torch.zeros(size, dtype=torch.float64), dist_reduce_fx="sum")

    # ----------------------------------------------------------------------------------------
    def update(self, dist: Distribution, y: Tensor, truth: Distribution | None = None, u: Tensor | None = None,
               intervals: dict[float, tuple[Tensor, Tensor]] | None = None) -> None:
        """Accumulate one batch."""
        with recording_fallbacks() as used:
            self._update(dist, y, truth, u, intervals)
        self.fallbacks.update(used)
        self.fallbacks.update({part: f"unavailable: {why}" for part, why in self.missing.items()})

    def _update(self, dist: Distribution, y: Tensor, truth: Distribution | None, u: Tensor | None,
                intervals: dict[float, tuple[Tensor, Tensor]] | None) -> None:
        y = y.reshape(dist.batch_shape) if not isinstance(dist, Categorical) else y.reshape(-1)
        self.n += y.shape[0]
        self.nll += -target_log_prob(dist, y, self.task).double().sum()
        if self.classification:
            probs = dist.probs
            pred = (probs > 0.5).to(y.dtype) if isinstance(dist, Bernoulli) else probs.argmax(-1)
            self.correct += (pred == y).double().sum()
        else:
            self.sq_err += ((dist.mean - y).double() ** 2).sum()
        if truth is not None:
            self.n_truth += y.shape[0]
            self.oracle_nll += -truth.log_prob(y).double().sum()
            self.kl_truth += kl_to_truth(truth, dist).double().sum()
        if not self.full:
            return
        parts = {"crps": lambda: self._add("crps", crps(dist, y).double().sum())}
        if self.classification:
            parts["reliability"] = lambda: self._update_reliability(dist, y)
        if self.task != "multiclass":
            parts["pit"] = lambda: self._update_pit(dist, y, u)
        if not self.classification:
            parts["sharpness"] = lambda: self._add("var", dist.variance.double().sum())
            if self.resolution:
                parts["binned"] = lambda: self._add("nll_binned", interval_nll(dist, y, self.resolution).sum())
            if self.intervals:
                parts["intervals"] = lambda: self._update_intervals(dist, y, intervals or {})
        for name, part in parts.items():
            # a distribution without an operation a part needs (a CDF, say) loses that part's
            # metrics, not the run: they come out NaN and result.json's fallbacks say why
            try:
                part()
            except Unavailable as exc:
                self.missing[name] = str(exc)

    def _add(self, name: str, value: Tensor) -> None:
        setattr(self, name, getattr(self, name) + value)

    def _update_pit(self, dist: Distribution, y: Tensor, u: Tensor | None) -> Tensor:
        counts = self.task == "count"  # continuous heads on counts: the PIT of their binned pmf
        randomised = is_discrete(dist) or counts
        if randomised and u is None:
            u = torch.rand(y.shape, dtype=y.dtype, device=y.device)
        v = pit(dist, y, u if randomised else None, counts=counts).double().clamp(0, 1)
        self.pit_hist += torch.bincount((v * PIT_BINS).long().clamp(max=PIT_BINS - 1), minlength=PIT_BINS).double()
        if not self.classification:
            levels = torch.linspace(0, 1, CAL_LEVELS, dtype=torch.float64, device=v.device)
            # inside the central p interval  <=>  |F(y) - 1/2| <= p/2
            self.interval_hits += ((v - 0.5).abs().unsqueeze(-1) <= levels / 2).double().sum(0)
            self.quantile_hits += (v.unsqueeze(-1) <= levels).double().sum(0)
        return v

    def _update_intervals(self, dist: Distribution, y: Tensor, given: dict[float, tuple[Tensor, Tensor]]) -> None:
        levels = _Q_LEVELS.to(y.device, y.dtype)
        q = quantile(dist, levels).double()  # [199, N]
        yd = y.double()
        ps = torch.linspace(0.01, 0.99, SCORE_LEVELS, dtype=torch.float64, device=y.device)
        # check (pinball) score at the 99 quantile levels
        # (1{q >= y} - p)(q - y) = relu(q - y) - p (q - y): two passes over [99, N] instead of five
        d = q[_q_index(ps)] - yd
        self.check_score += (torch.relu(d).sum() - (ps @ d).sum()) / SCORE_LEVELS
        # interval score of the central p intervals: width + 2/(1 - p) x the distance outside
        lo, hi = q[_q_index(0.5 - ps / 2)], q[_q_index(0.5 + ps / 2)]
        outside = torch.relu(lo - yd) + torch.relu(yd - hi)
        self.interval_score += ((hi - lo).sum() + (2.0 / (1 - ps) @ outside).sum()) / SCORE_LEVELS
        for j, c in enumerate(COVERAGES):
            lo_c, hi_c = given.get(c) or (q[_q_index(torch.tensor(0.5 - c / 2))], q[_q_index(torch.tensor(0.5 + c / 2))])
            lo_c, hi_c = lo_c.reshape(yd.shape).double(), hi_c.reshape(yd.shape).double()
            self.cover_hits[j] += ((yd >= lo_c) & (yd <= hi_c)).double().sum()
            self.width[j] += (hi_c - lo_c).sum()

    def _update_reliability(self, dist: Distribution, y: Tensor) -> None:
        if isinstance(dist, Bernoulli):  # torchmetrics' binary definition: P(y = 1) against the label
            conf, acc = dist.probs.double(), y.double()
        else:  # top-label confidence
            conf, pred = dist.probs.double().max(-1)
            acc = (pred == y).double()
        bounds = torch.linspace(0, 1, ECE_BINS + 1, dtype=torch.float64, device=conf.device)
        idx = torch.bucketize(conf, bounds, right=True) - 1
        self.ece_count.scatter_add_(0, idx, torch.ones_like(conf))
        self.ece_conf.scatter_add_(0, idx, conf)
        self.ece_acc.scatter_add_(0, idx, acc)

    # ----------------------------------------------------------------------------------------
    def compute(self) -> dict[str, Tensor]:
        """Scalar metrics; names are those documented in the README."""
        n = self.n.clamp_min(1)
        out = {"nll": self.nll / n}
        if self.classification:
            out["accuracy"] = self.correct / n
        else:
            out["rmse"] = (self.sq_err / n).sqrt()
        if self.n_truth > 0:
            out["oracle_nll"] = self.oracle_nll / self.n_truth
            out["kl_truth"] = self.kl_truth / self.n_truth
            out["nll_gap"] = out["nll"] - out["oracle_nll"]
        if not self.full:
            return out
        out["crps"] = self.crps / n
        if self.classification:
            out["ece"] = self._ece()
        else:
            expected = torch.linspace(0, 1, CAL_LEVELS, dtype=torch.float64, device=self.n.device)
            observed = self.interval_hits / n
            diff = observed - expected
            out["mace"] = diff.abs().mean()
            out["rmsce"] = diff.pow(2).mean().sqrt()
            out["miscal_area"] = _area_between(expected, diff)
            out["quantile_mace"] = (self.quantile_hits / n - expected).abs().mean()
            out["sharpness"] = (self.var / n).sqrt()
            if self.resolution:
                out["nll_binned"] = self.nll_binned / n
            if self.intervals:
                out["interval_score"] = self.interval_score / n
                out["check_score"] = self.check_score / n
                for j, c in enumerate(COVERAGES):
                    out[f"coverage{int(round(100 * c))}"] = self.cover_hits[j] / n
                    out[f"width{int(round(100 * c))}"] = self.width[j] / n
        if self.task != "multiclass":
            out["pit_ks"] = self._pit_uniformity()
        nan = torch.full((), float("nan"), dtype=torch.float64)
        missing = {name for part in self.missing for name in MISSING_METRICS[part]}
        for name in missing & out.keys():
            out[name] = nan
        # a formula that fails without raising (NaN, or an infinite score) is said so beside the value, which
        # result.json writes as null: averaged over the other splits, a silent null would pass unnoticed
        self.fallbacks.update({f"{name} value": "not finite" for name, v in out.items()
                               if name not in missing and not bool(torch.isfinite(v))})
        return out

    def _ece(self) -> Tensor:
        count = self.ece_count
        gap = torch.where(count > 0, (self.ece_acc - self.ece_conf) / count.clamp_min(1), torch.zeros_like(count))
        return (gap.abs() * count).sum() / count.sum().clamp_min(1)

    def _pit_uniformity(self) -> Tensor:
        """Largest gap between the binned PIT CDF and the uniform CDF (a binned KS distance)."""
        cdf = torch.cumsum(self.pit_hist, 0) / self.pit_hist.sum().clamp_min(1)
        grid = torch.arange(1, PIT_BINS + 1, dtype=torch.float64, device=cdf.device) / PIT_BINS
        return (cdf - grid).abs().max()

    def curves(self) -> dict[str, list[float]]:
        """Histograms and calibration curves for figures and result.json."""
        if not self.full:
            return {}
        n = float(self.n.clamp_min(1))
        out: dict[str, list[float]] = {}
        if self.task != "multiclass":
            out["pit_hist"] = (self.pit_hist / n).tolist()
        if self.classification:
            c = self.ece_count.clamp_min(1)
            out["reliability_conf"] = (self.ece_conf / c).tolist()
            out["reliability_acc"] = (self.ece_acc / c).tolist()
            out["reliability_count"] = self.ece_count.tolist()
        else:
            out["calibration_expected"] = torch.linspace(0, 1, CAL_LEVELS, dtype=torch.float64).tolist()
            out["calibration_observed"] = (self.interval_hits / n).tolist()
        return out


def _area_between(x: Tensor, d: Tensor) -> Tensor:
    """Area between a curve and the diagonal from differences d at x (segments that cross split in two)."""
    h = x[1:] - x[:-1]
    dl, dr = d[:-1], d[1:]
    cross = (dl * dr) < 0
    trap = (h * 0.5 * (dl + dr)).abs()
    denom = (dl.abs() + dr.abs()).clamp_min(torch.finfo(d.dtype).tiny)
    hour = h * (dl * dl + dr * dr) / (2 * denom)
    return torch.where(cross, hour, trap).sum()


def validation_nll(dist: Distribution, y: Tensor, task: str, resolution: float | Tensor | None) -> Tensor:
    """Per-row NLL every validation choice ranks by (the epoch, a candidate, an ensemble's members): the NLL at
    the targets' resolution h where they have one (interval_nll: no mass stacked on a grid's values wins a
    choice), the density's elsewhere. `resolution` may hold one h per model, broadcasting against y [N, n]."""
    if resolution is None:
        return -target_log_prob(dist, y, task)
    return interval_nll(dist, y, resolution)


class ModelScores(SummedMetric):
    """Validation scores of every model of a stack, [N] each: NLL and RMSE (accuracy for classes).

    ``update(dist, y)`` takes a predictive distribution with batch shape [N, n] (each model on its
    own job's validation split) and targets [N, n] in original units. Sums, so DDP reduces exactly.
    The NLL is at each model's targets' resolution where its job has one (validation_nll).
    """

    def __init__(self, task: str, models: int, resolutions: list[float | None] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.task, self.classification = task, task in ("binary", "multiclass")
        resolutions = resolutions or [None] * models
        # [N, 1] widths (1 where a model has none: its rows take the density NLL); not a buffer, which a
        # half-precision trainer would cast (h = 0.001 is 0.0010004 in float16); the mask is one
        self.binned = [h is not None for h in resolutions]
        self.widths = torch.tensor([[h or 1.0] for h in resolutions], dtype=torch.float64)
        self.register_buffer("binned_rows", torch.tensor(self.binned).unsqueeze(-1), persistent=False)
        for name in ("n", "nll", "err"):
            self.add_state(name, torch.zeros(models, dtype=torch.float64), dist_reduce_fx="sum")

    def _nll(self, dist: Distribution, y: Tensor) -> Tensor:
        """Per model and row, [N, n]: NLL@h for the models whose jobs have a resolution, the density NLL for the others."""
        if not any(self.binned):
            return validation_nll(dist, y, self.task, None)
        binned = validation_nll(dist, y, self.task, self.widths.to(y.device))
        if all(self.binned):
            return binned
        density = validation_nll(dist, y, self.task, None).double()
        return torch.where(self.binned_rows, binned, density)

    def update(self, dist: Distribution, y: Tensor, rows: int | None = None) -> None:
        """Accumulate one stacked batch (its first `rows` rows: the rest are padding)."""
        real = slice(None, rows)
        self.n += y[..., real].shape[-1]
        self.nll += self._nll(dist, y)[..., real].double().sum(-1)
        if self.classification:
            pred = (dist.probs > 0.5).to(y.dtype) if isinstance(dist, Bernoulli) else dist.probs.argmax(-1)
            self.err += (pred == y)[..., real].double().sum(-1)
        else:
            self.err += ((dist.mean - y).double() ** 2)[..., real].sum(-1)

    def compute(self) -> dict[str, Tensor]:
        """Per model: nll and rmse (or accuracy)."""
        n = self.n.clamp_min(1)
        return {"nll": self.nll / n, ("accuracy" if self.classification else "rmse"): self.err / n if self.classification
                else (self.err / n).sqrt()}
