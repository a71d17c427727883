"""Hand-written PyTorch training loops: the baseline densbench's training path is measured against.

Each loop trains the same modules (densbench's MLP backbone and head) on the same standardised
tensors with the same loss function and optimiser as the corresponding densbench run, and does
nothing else: no validation, logging or checkpoints. So densbench / plain is the cost of the
framework alone. `doc_*` loops are written the way the source documents write them (an
nn.Sequential whose last layer's columns are sliced) for reference.

Run the headline trainings as scripts to time them with interpreter start-up included:

    python scripts/plain_loops.py --loss nll
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from densbench.distributions.families.gaussian import Gaussian
from densbench.distributions.families.glm import CANONICAL
from densbench.distributions.families.mixture import Mixture
from densbench.training.networks import MLP, Head
from densbench.objectives.glm import GLM
from densbench.objectives.kl import KL
from densbench.objectives.nll import NLL


def train(model: nn.Module, head: nn.Module, loss_fn, data, optimizer: torch.optim.Optimizer, steps: int) -> float:
    """The plain loop: zero_grad, forward, loss, backward, step. Returns the last loss."""
    x, y = (t.unsqueeze(0) for t in data)  # one model: the stacked modules' leading model axis
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(head(model(x)), y).sum()
        loss.backward()
        optimizer.step()
    return loss.item()


def glm(data, family: str = "gaussian", steps: int = 5000, lr: float = 0.2, grad: str = "autograd", seed: int = 0) -> float:
    """The GLM document's workload: backbone 1-30-20 ReLU, canonical-link head, SGD, full batch."""
    torch.manual_seed(seed)
    model = MLP(data[0].shape[1], [30, 20], "relu", [seed])
    head = Head(CANONICAL[family](), 20, [seed])
    opt = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=lr)
    objective = GLM()
    return train(model, head, lambda raw, y: objective.loss(head.family, raw, y, (), grad), data, opt, steps)


def mdn(data, k: int = 5, steps: int = 8000, lr: float = 1e-3, grad: str = "autograd", seed: int = 0) -> float:
    """The MDN document's workload: one tanh hidden layer of 20, K components, Adam, full batch."""
    torch.manual_seed(seed)
    model = MLP(data[0].shape[1], [20], "tanh", [seed])
    head = Head(Mixture(k), 20, [seed])
    opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=lr)
    objective = NLL()
    return train(model, head, lambda raw, y: objective.loss(head.family, raw, y, (), grad), data, opt, steps)


def headline(data, loss: str, extra=None, steps: int = 3000, lr: float = 3e-3, seed: int = 0) -> float:
    """One training of the headline sweep: MLP 64-64 ReLU, Adam, full batch, kl / nll / mdn."""
    torch.manual_seed(seed)
    model = MLP(data[0].shape[1], [64, 64], "relu", [seed])
    head = Head(Mixture(5) if loss == "mdn" else Gaussian(), 64, [seed])
    opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=lr)
    objective = KL() if loss == "kl" else NLL()
    return train(model, head, lambda raw, y: objective.loss(head.family, raw, y, tuple(e.unsqueeze(0) for e in extra or ()), "autograd"), data, opt, steps)


def doc_glm(data, family: str = "gaussian", steps: int = 5000, lr: float = 0.2, seed: int = 0) -> float:
    """The GLM document's loop as written there: nn.Sequential 1-30-20-1."""
    torch.manual_seed(seed)
    x, y = data
    net = nn.Sequential(nn.Linear(x.shape[1], 30), nn.ReLU(), nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 1))
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    fam, objective = CANONICAL[family](), GLM()
    for _ in range(steps):
        opt.zero_grad()
        loss = objective.loss(fam, {"eta": net(x)}, y, (), "autograd")
        loss.backward()
        opt.step()
    return loss.item()


def doc_mdn(data, k: int = 5, steps: int = 8000, lr: float = 1e-3, seed: int = 0) -> float:
    """The MDN document's loop: one Sequential whose output columns are sliced into pi, mu, sigma."""
    torch.manual_seed(seed)
    x, y = data
    net = nn.Sequential(nn.Linear(x.shape[1], 20), nn.Tanh(), nn.Linear(20, 3 * k))
    fam, objective = Mixture(k), NLL()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        out = net(x)
        raw = {"logits": out[:, :k], "loc": out[:, k : 2 * k], "spread": out[:, 2 * k :]}
        loss = objective.loss(fam, raw, y, (), "autograd")
        loss.backward()
        opt.step()
    return loss.item()


def prepared(name: str, **sizes):
    """Standardised float32 training tensors of a synthetic dataset, as densbench prepares them."""
    from omegaconf import OmegaConf

    from densbench.data import datasets as D
    cfg = OmegaConf.create(dict(name=name, n_val=200, n_test=200, seed=0, **sizes))
    prep = D.prepare(D.load(cfg))
    x, y = (t.float() for t in prep.splits["train"])
    return prep, (x, y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loss", choices=["kl", "nll", "mdn"], required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    from densbench.data.datasets import gaussian_truth_scaled

    prep, data = prepared("hetero_sine", n_train=2000)
    extra = tuple(t.float() for t in gaussian_truth_scaled(prep, "train")) if args.loss == "kl" else None
    final = headline(data, args.loss, extra)
    print(f"{args.loss}: final training loss {final:.4f} in {time.perf_counter() - t0:.2f}s")


if __name__ == "__main__":
    main()
