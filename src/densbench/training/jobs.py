"""What the module needs to know of one job of a stack (a run directory): its models, scaling, logger and choices."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import Tensor
from torch.distributions import Distribution

from densbench.evaluation.recalibration import Recalibration
from densbench.training.job_log import JobLog


@dataclass
class Job:
    """What the module needs to know of one job of the stack."""

    models: list[int]  # its models' indices in the stack
    target_loc: float | list[float] = 0.0  # the target standardisation of its training split (per column: several targets)
    target_scale: float | list[float] = 1.0
    truth: Callable[[Tensor], Distribution] | None = None  # x (original units) -> p(y | x), where known
    log: JobLog = field(default_factory=JobLog)  # its loggers (none: no logging)
    key: dict[str, str] = field(default_factory=dict)  # what its checkpoints must match
    recalibration: Recalibration = field(default_factory=Recalibration)  # fitted on its validation split before its test
    resolution: float | None = None  # its targets' recording grid (the interval NLL's width), where set
    choose: bool = False  # its models are candidates: the one with the best validation NLL is tested (MC dropout's rates)
    noise_grid: list[float] | None = None  # noise levels (original units) chosen on validation, for a family with a `noise` buffer

    @property
    def chooses(self) -> bool:
        """Whether something of it (a candidate, a noise level) is chosen on its validation rows before its test."""
        return self.choose or bool(self.noise_grid)

    @property
    def ensemble(self) -> bool:
        """Whether its models are an ensemble's members (scored as their mixture), not candidates."""
        return len(self.models) > 1 and not self.choose

    @property
    def sees_validation(self) -> bool:
        """Whether its validation rows come before its test rows in the test loop: to fit its recalibration, to
        choose a candidate, or to score an ensemble's mixture where no single model's selection has."""
        return self.recalibration.active or self.chooses or self.ensemble
