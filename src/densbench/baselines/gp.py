"""An exact Gaussian process (GPyTorch): constant mean, ARD Matérn-5/2 kernel with an output scale, Gaussian noise.

Hyperparameters maximise the exact marginal likelihood of the training rows in float64, by L-BFGS with a
strong-Wolfe line search (as scikit-learn's and GPflow's GPs do) or, optionally, a fixed number of Adam steps
(GPyTorch's tutorials; 200 of them at 0.05 ended at a lower marginal likelihood on energy's splits 0-2 and,
over its 20 splits, gave test NLL 0.65 against L-BFGS's 0.52 and took 2.8x as long:
`baseline.optimizer=adam baseline.iterations=200`); the predictive of a row is Normal(mean, sqrt(latent
variance + noise)). Exact
inference costs O(n^3) in the training rows, so jobs with more than `max_train_rows` are skipped, with
the reason in their result.json.
"""

from __future__ import annotations

import numpy as np
import torch

from densbench.baselines.common import Baseline, Fit, Refused, Rows
from densbench.errors import one_of

MAX_TRAIN_ROWS = 1000  # conf/method/gp.yaml says what a split costs near it
OPTIMIZERS = ("lbfgs", "adam")


class GP(Baseline):
    """Exact GP regression on the standardised rows; the validation rows are only scored (no early stopping)."""

    name = "gp"

    def __init__(self, iterations: int = 50, learning_rate: float = 0.05, max_train_rows: int = MAX_TRAIN_ROWS,
                 optimizer: str = "lbfgs") -> None:
        super().__init__()
        one_of("baseline.optimizer", optimizer, OPTIMIZERS)
        self.iterations, self.learning_rate, self.max_train_rows = int(iterations), float(learning_rate), int(max_train_rows)
        self.optimizer = optimizer
        self.model, self.likelihood = None, None

    def check(self, rows: Rows) -> None:
        """Refuse a job with more training rows than exact inference is run on here."""
        if len(rows.y_train) > self.max_train_rows:
            raise Refused(f"method=gp: exact GP inference is limited to {self.max_train_rows} training rows "
                          f"(baseline.max_train_rows); this job has {len(rows.y_train)}")

    def _settings(self):
        import gpytorch

        # Cholesky up to the row limit (gpytorch's default switches to conjugate gradients above 800 rows)
        return gpytorch.settings.max_cholesky_size(max(self.max_train_rows, 800) + 1)

    def fit(self, rows: Rows, seed: int, threads: int) -> Fit:
        """Maximise the exact marginal likelihood (L-BFGS: at most `iterations` steps; Adam: that many steps)."""
        import gpytorch

        torch.manual_seed(seed)
        x, y = torch.as_tensor(rows.x_train, dtype=torch.float64), torch.as_tensor(rows.y_train, dtype=torch.float64)
        self.likelihood = gpytorch.likelihoods.GaussianLikelihood().double()
        self.model = _exact_gp(x, y, self.likelihood).double()
        self.model.train()
        self.likelihood.train()
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(self.likelihood, self.model)
        losses = []

        def closure():
            optimizer.zero_grad()
            loss = -mll(self.model(x), y)
            loss.backward()
            losses.append(float(loss.detach()))
            return loss

        with self._settings():
            if self.optimizer == "lbfgs":
                optimizer = torch.optim.LBFGS(self.model.parameters(), lr=1.0, max_iter=self.iterations,
                                              max_eval=self.iterations * 5 // 4, line_search_fn="strong_wolfe")
                optimizer.step(closure)
                # its steps (the line search evaluates more often, trial points included)
                steps = int(optimizer.state[next(iter(self.model.parameters()))].get("n_iter", 0))
            else:
                optimizer = torch.optim.Adam(self.model.parameters(), lr=self.learning_rate)  # the likelihood's noise is a model parameter
                for _ in range(self.iterations):
                    optimizer.step(closure)
                steps = self.iterations
            with torch.no_grad():  # at the hyperparameters kept (a line search's last evaluation may be a rejected trial)
                final = float(-mll(self.model(x), y))
        self.model.eval()
        self.likelihood.eval()
        kernel = self.model.covar_module
        facts = {"final_neg_mll_per_row": final, "evaluations": len(losses), "noise": float(self.likelihood.noise.detach()),
                 "outputscale": float(kernel.outputscale.detach()),
                 "lengthscales": kernel.base_kernel.lengthscale.detach().reshape(-1).tolist()}
        rule = "L-BFGS steps until converged (or its step limit)" if self.optimizer == "lbfgs" else "fixed Adam steps"
        return Fit(steps, self.iterations, f"{rule} on the marginal likelihood", facts)

    def moments(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The posterior mean and the latent variance plus the noise."""
        with torch.no_grad(), self._settings():
            f = self.model(torch.as_tensor(x, dtype=torch.float64))
            mean, var = f.mean, f.variance + self.likelihood.noise
        return mean.numpy(), var.numpy()


def _exact_gp(x: torch.Tensor, y: torch.Tensor, likelihood):
    """The GPyTorch ExactGP model: constant mean, ScaleKernel(ARD Matérn-5/2)."""
    import gpytorch

    class ExactGP(gpytorch.models.ExactGP):
        def __init__(self) -> None:
            super().__init__(x, y, likelihood)
            self.mean_module = gpytorch.means.ConstantMean()
            self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.MaternKernel(nu=2.5, ard_num_dims=x.shape[1]))

        def forward(self, v: torch.Tensor):
            return gpytorch.distributions.MultivariateNormal(self.mean_module(v), self.covar_module(v))

    return ExactGP()
