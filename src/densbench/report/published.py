"""Published UCI figures (REFERENCE.md section 2), each source tagged with the protocol it was produced under."""

from __future__ import annotations

from typing import NamedTuple


class Source(NamedTuple):
    """A published result: its name, the protocol it was produced under, and whether its ± is an SE."""

    name: str
    protocol: str
    se: bool


SOURCES = (
    Source("PBP", "HL&A 2015: 40 epochs (protein 20), no model selection, the published splits", True),
    Source("MCD 2016", "Gal & Ghahramani 2016: their published code trains 400 epochs (10x the 40 of HL&A's "
                       "protocol), Adam, batch 32; τ and the dropout rate by Bayesian optimisation (the paper's account); "
                       "the published splits", True),
    Source("MCD 2018", "MC-dropout repository rerun: 4000 epochs, batch 128, dropout and τ by grid search on an "
                       "inner 80/20 split, the published splits", True),
    Source("Deep Ens.", "Lakshminarayanan et al. 2017: 5 nets with adversarial training, 40 epochs (protein 20), "
                        "the published splits; ± behaves like a standard deviation (÷√20 for an SE)", False),
    Source("NGBoost", "Duan et al. 2020: gradient-boosted trees, its own regenerated splits, 20% of training data "
                      "to choose the number of trees; quoted from a later paper's table", False),
    Source("DER", "Amini et al. 2020 (deep evidential regression): quoted from a later paper's table", False),
)


# REFERENCE.md section 2, in SOURCES order: test NLL and RMSE as printed (mean, ±; None: printed without one)
NLL = {
    "boston": ["2.57±.09", "2.46±.06", "2.40±.04", "2.41±.25", "2.43±.15", "2.35±.06"],
    "concrete": ["3.16±.02", "3.04±.02", "2.93±.02", "3.06±.18", "3.04±.17", "3.01±.02"],
    "energy": ["2.04±.02", "1.99±.02", "1.21±.01", "1.38±.22", "0.60±.45", "1.39±.06"],
    "kin8nm": ["-0.90±.01", "-0.95±.01", "-1.14±.01", "-1.20±.02", "-0.49±.02", "-1.24±.01"],
    "naval": ["-3.73±.01", "-3.80±.01", "-4.45±.00", "-5.63±.05", "-5.34±.04", "-5.73±.07"],
    "power": ["2.84±.01", "2.80±.01", "2.80±.01", "2.79±.04", "2.79±.11", "2.81±.07"],
    "protein": ["2.97±.00", "2.89±.00", "2.87±.00", "2.83±.02", "2.81±.03", "2.63±.00"],
    "wine": ["0.97±.01", "0.93±.01", "0.93±.01", "0.94±.12", "0.91±.06", "0.89±.05"],
    "yacht": ["1.63±.02", "1.55±.03", "1.25±.01", "1.18±.21", "0.20±.26", "1.03±.19"],
}


RMSE = {
    "boston": ["3.01±.18", "2.97±.19", "2.90±.18", "3.28±1.00", "2.94±.53", "3.06±.16"],
    "concrete": ["5.67±.09", "5.23±.12", "4.82±.16", "6.03±.58", "5.06±.61", "5.85±.15"],
    "energy": ["1.80±.05", "1.66±.04", "0.54±.06", "2.09±.29", "0.46±.06", "2.06±.10"],
    "kin8nm": ["0.10", "0.10", "0.08", "0.09", "0.16", "0.09"],
    "naval": ["0.01", "0.01", "0.00", "0.00", "0.00", "0.00"],
    "power": ["4.12±.03", "4.02±.04", "4.01±.04", "4.11±.17", "3.79±.18", "4.23±.09"],
    "protein": ["4.73±.01", "4.36±.01", "4.27±.02", "4.71±.06", "4.33±.03", "4.64±.03"],
    "wine": ["0.64±.01", "0.62±.01", "0.62±.01", "0.64±.04", "0.63±.04", "0.61±.02"],
    "yacht": ["1.02±.05", "1.11±.09", "0.67±.05", "1.58±.48", "0.50±.20", "1.57±.56"],
}


def published(table: dict[str, list[str]], dataset: str, source: str) -> tuple[float, float | None]:
    """(mean, ±) of a published figure."""
    text = table[dataset][[s.name for s in SOURCES].index(source)]
    mean, _, pm = text.partition("±")
    return float(mean), (float(pm) if pm else None)


class Record(NamedTuple):
    """The best published figure for a dataset under an HL&A-style protocol (REFERENCE.md section 2b)."""

    nll: str  # as printed, e.g. "2.35±.06"
    holder: str


RECORDS = {
    "boston": Record("2.35±.06", "deep evidential regression (Amini et al. 2020)"),
    "concrete": Record("2.83±.11", "Wasserstein gradient boosting (Matsubara 2024)"),
    "energy": Record("0.53±.08", "Wasserstein gradient boosting (Matsubara 2024)"),
    "kin8nm": Record("-1.24±.01", "deep evidential regression (Amini et al. 2020)"),
    "naval": Record("-6.29±.04", "deterministic variational inference (Wu et al. 2019)"),
    "power": Record("2.60±.04", "Wasserstein gradient boosting (Matsubara 2024)"),
    "protein": Record("2.63±.00", "deep evidential regression (Amini et al. 2020)"),
    "wine": Record("0.89±.05", "deep evidential regression (Amini et al. 2020)"),
    "yacht": Record("0.16±.24", "Wasserstein gradient boosting (Matsubara 2024)"),
}
