"""NGBoost (Duan et al. 2020): natural-gradient boosting of a Normal's location and log-scale with regression trees.

The paper's UCI settings: 2000 boosting iterations at learning rate 0.01, the number of trees chosen
on held-out rows; here the held-out rows are the job's validation rows, and the model is tested with
the trees up to its best validation iteration.
"""

from __future__ import annotations

import numpy as np

from densbench.baselines.common import Baseline, Fit, Rows


def light_normal() -> type:
    """ngboost's Normal without a frozen scipy distribution per instance (densbench.baselines.ngboost_normal)."""
    from densbench.baselines.ngboost_normal import LightNormal

    return LightNormal


class NGBoost(Baseline):
    """ngboost.NGBRegressor with a Normal distribution, early-stopped on the validation rows."""

    name = "ngboost"

    def __init__(self, n_estimators: int = 2000, learning_rate: float = 0.01, early_stopping_rounds: int | None = 100,
                 minibatch_frac: float = 1.0) -> None:
        super().__init__()
        self.n_estimators, self.learning_rate = int(n_estimators), float(learning_rate)
        self.early_stopping_rounds = None if early_stopping_rounds is None else int(early_stopping_rounds)
        self.minibatch_frac = float(minibatch_frac)
        self.model, self.kept = None, None

    def fit(self, rows: Rows, seed: int, threads: int) -> Fit:
        """Boost on the training rows; with validation rows, stop early and keep the trees up to the best iteration."""
        from ngboost import NGBRegressor

        self.model = NGBRegressor(Dist=light_normal(), n_estimators=self.n_estimators, learning_rate=self.learning_rate,
                                  minibatch_frac=self.minibatch_frac, random_state=seed, verbose=False)
        val = {"X_val": rows.x_val, "Y_val": rows.y_val, "early_stopping_rounds": self.early_stopping_rounds} if rows.has_val else {}
        self.model.fit(rows.x_train, rows.y_train, **val)
        best = self.model.best_val_loss_itr
        # pred_dist(max_iter=k) sums the first k trees; best_val_loss_itr indexes the tree after which validation was best
        self.kept = len(self.model.base_models) if best is None else best + 1
        selection = "best validation NLL (early stopping)" if rows.has_val else "all iterations (no validation rows)"
        return Fit(self.kept, self.n_estimators, selection, {"trees_grown": len(self.model.base_models)})

    def moments(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The Normal's mean and variance from the kept trees."""
        params = self.model.pred_dist(x, max_iter=self.kept).params
        return np.asarray(params["loc"], dtype=np.float64), np.asarray(params["scale"], dtype=np.float64) ** 2
