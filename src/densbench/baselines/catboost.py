"""CatBoost with RMSEWithUncertainty (a mean and a variance per row) and virtual ensembles (Malinin et al. 2021).

One model trained with posterior sampling is split into virtual members (truncations of its sequence
of trees); each member predicts a mean and a variance, and the predictive is the uniform mixture of
the members' Normals (densbench.evaluation.ensemble.uniform_mixture), as a deep ensemble is scored.
"""

from __future__ import annotations

import numpy as np

from densbench.baselines.common import Baseline, Fit, Rows


class CatBoost(Baseline):
    """catboost.CatBoostRegressor(loss_function="RMSEWithUncertainty"), early-stopped on the validation rows."""

    name = "catboost"

    def __init__(self, iterations: int = 2000, learning_rate: float = 0.03, depth: int = 6,
                 early_stopping_rounds: int | None = 100, virtual_ensembles_count: int = 10,
                 posterior_sampling: bool = True) -> None:
        super().__init__()
        self.iterations, self.learning_rate, self.depth = int(iterations), float(learning_rate), int(depth)
        self.early_stopping_rounds = None if early_stopping_rounds is None else int(early_stopping_rounds)
        self.members = int(virtual_ensembles_count)
        self.posterior_sampling = bool(posterior_sampling)
        self.model = None

    def fit(self, rows: Rows, seed: int, threads: int) -> Fit:
        """Boost on the training rows; with validation rows, stop early and keep the model of the best iteration."""
        from catboost import CatBoostRegressor

        self.model = CatBoostRegressor(loss_function="RMSEWithUncertainty", iterations=self.iterations,
                                       learning_rate=self.learning_rate, depth=self.depth, random_seed=seed,
                                       thread_count=threads, posterior_sampling=self.posterior_sampling,
                                       verbose=False, allow_writing_files=False)
        if rows.has_val:  # use_best_model (CatBoost's default with an eval set) shrinks the model to its best iteration
            self.model.fit(rows.x_train, rows.y_train, eval_set=(rows.x_val, rows.y_val),
                           early_stopping_rounds=self.early_stopping_rounds, use_best_model=True)
            selection = "best validation RMSEWithUncertainty (early stopping)"
        else:
            self.model.fit(rows.x_train, rows.y_train)
            selection = "all iterations (no validation rows)"
        kept = int(self.model.tree_count_)
        facts = {"virtual_ensembles": self.members, "best_iteration": self.model.get_best_iteration()}
        return Fit(kept, self.iterations, selection, facts)

    def moments(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each virtual member's mean and variance, [n, members] each."""
        threads = self.model.get_params()["thread_count"]
        out = self.model.virtual_ensembles_predict(x, prediction_type="VirtEnsembles", virtual_ensembles_count=self.members,
                                                   thread_count=threads)
        out = np.asarray(out, dtype=np.float64)  # [n, members, 2]: mean, variance
        return out[..., 0], out[..., 1]
