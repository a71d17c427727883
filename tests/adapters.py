"""The loss functions the loss tests call, expressed through the family and objective registries.

Each adapter builds the family the arguments describe and asks the objective for its loss, so the
tests exercise exactly the code a training run uses.
"""

from densbench.distributions.families.gaussian import Gaussian
from densbench.distributions.families.glm import CANONICAL, Categorical
from densbench.distributions.families.mixture import Mixture
from densbench.objectives.glm import GLM
from densbench.objectives.kl import KL
from densbench.objectives.nll import NLL
from densbench.distributions.positivity import Spread

GLM_FAMILIES = tuple(CANONICAL)


def _gaussian(spread: Spread) -> Gaussian:
    return Gaussian(spread.positivity.kind, spread.positivity.floor, spread.on)


def gaussian_nll(mu, raw, y, spread, grad="autograd", reduction="mean"):
    return NLL(reduction).loss(_gaussian(spread), {"loc": mu, "spread": raw}, y, (), grad)


def gaussian_kl(mu, raw, m, s2, spread, grad="autograd", reduction="mean"):
    return KL(reduction).loss(_gaussian(spread), {"loc": mu, "spread": raw}, None, (m, s2), grad)


def mixture_nll(logits, mu, raw, y, spread, grad="autograd", reduction="mean"):
    family = Mixture(logits.shape[-1], spread.positivity.kind, spread.positivity.floor)
    return NLL(reduction).loss(family, {"logits": logits, "loc": mu, "spread": raw}, y, (), grad)


def glm_family(name, eta):
    return Categorical(eta.shape[-1]) if name == "categorical" else CANONICAL[name]()


def glm_nll(eta, y, family, grad="autograd", reduction="mean"):
    fam = glm_family(family, eta)
    raw = {"eta": eta, **{k: v.to(eta.dtype) for k, v in fam.buffers().items()}}
    return GLM(reduction).loss(fam, raw, y, (), grad)
